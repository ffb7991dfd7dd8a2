//! What a component may import, and what its exports make it.

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::bindings::wit::{ADAPTER_EXPORT, RULE_EXPORT, TILES_EXPORT};
use crate::error::LoadError;
use crate::kind::Kind;

/// Interfaces of the contract every plugin may import, matched without their patch version.
const GRANTED: &[&str] = &["rekindle:plugin/types@0.1.", "rekindle:plugin/log@0.1."];

/// What channel adapters may import besides: their secret placeholders. Rules and tiles
/// have no secrets, and run at the edge, where no host would answer.
const GRANTED_TO_CHANNELS: &[&str] = &["rekindle:plugin/secrets@0.1."];

/// Checks the raw bytes before wasmtime sees them, so the common mistakes get plain words.
pub(crate) fn check_format(bytes: &[u8]) -> Result<(), LoadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm { magic: bytes.iter().take(4).copied().collect() });
    }
    // The 16-bit layer field after the version is 0 for core modules and 1 for components.
    if bytes.get(6..8) == Some(&[0, 0]) {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

/// Refuses the first import the host does not grant a plugin of `kind`, naming it.
pub(crate) fn check_imports(engine: &Engine, component: &Component, kind: Kind) -> Result<Vec<String>, LoadError> {
    let mut names = Vec::new();
    for (name, _) in component.component_type().imports(engine) {
        let granted = GRANTED.iter().chain(if kind == Kind::Channel { GRANTED_TO_CHANNELS } else { &[] });
        if !granted.clone().any(|granted| name.starts_with(granted)) {
            return Err(LoadError::ForbiddenImport { import: name.to_string(), hint: hint_for(name) });
        }
        names.push(name.to_string());
    }
    Ok(names)
}

fn hint_for(import: &str) -> &'static str {
    if import.starts_with("rekindle:plugin/secrets") {
        "only channel adapters have secrets; rules and tiles receive everything they read as arguments"
    } else if import.starts_with("wasi:sockets") || import.starts_with("wasi:http") {
        "plugins have no network; a channel adapter returns the HTTP requests to make and the \
         host performs them"
    } else if import.starts_with("wasi:filesystem") {
        "plugins have no filesystem; everything a plugin reads arrives in its arguments"
    } else if import.starts_with("wasi:clocks") {
        "plugins have no clock; read the time from `ctx.now`"
    } else if import.starts_with("wasi:") {
        "plugins import only the rekindle:plugin contract; build with `#![no_std]` and \
         `rekindle_sdk::prelude`, and log with `rekindle_sdk::log!` instead of printing"
    } else {
        "plugins may import only rekindle:plugin/types and rekindle:plugin/log (and channel adapters rekindle:plugin/secrets)"
    }
}

/// Whether a component's imports include the secret placeholders.
pub(crate) fn imports_secrets(imports: &[String]) -> bool {
    imports.iter().any(|name| GRANTED_TO_CHANNELS.iter().any(|granted| name.starts_with(granted)))
}

/// Names the plugin kind from the component's exports.
pub(crate) fn detect_kind(engine: &Engine, component: &Component) -> Result<Kind, LoadError> {
    let ty = component.component_type();
    let mut exports = Vec::new();
    for (name, _) in ty.exports(engine) {
        let kind = match name {
            RULE_EXPORT => Some(Kind::Rule),
            ADAPTER_EXPORT => Some(Kind::Channel),
            TILES_EXPORT => Some(Kind::Tiles),
            _ => None,
        };
        if let Some(kind) = kind {
            return Ok(kind);
        }
        exports.push(name.to_string());
    }
    let exports = if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") };
    Err(LoadError::NotAPlugin { exports })
}
