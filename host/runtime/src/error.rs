//! The errors a plugin can cause, each saying what the plugin did wrong.

use std::time::Duration;

use crate::kind::Kind;

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly file (it starts with {magic:02x?}, not \\0asm)")]
    NotWasm { magic: Vec<u8> },
    /// A core module where a component was expected.
    #[error(
        "this is a core WebAssembly module, not a component; build the plugin for the \
         wasm32-wasip2 target (`cargo build --target wasm32-wasip2`), which emits a component"
    )]
    CoreModule,
    /// The component imports something the host does not grant.
    #[error("the component imports `{import}`, which Rekindle does not grant: {hint}")]
    ForbiddenImport { import: String, hint: &'static str },
    /// The component exports none of the plugin interfaces.
    #[error(
        "the component exports none of rekindle:plugin/rule@0.1.0, rekindle:plugin/adapter@0.1.0 \
         or rekindle:plugin/tiles@0.1.0 (it exports: {exports})"
    )]
    NotAPlugin { exports: String },
    /// The component is a plugin of another kind than the slot holds.
    #[error("slot `{slot}` holds {expected} plugins, but this component is a {found}")]
    WrongWorld { slot: String, expected: Kind, found: Kind },
    /// A channel adapter declares secrets but does not take placeholders from the host.
    #[error(
        "the adapter declares secrets ({secrets}) but does not import rekindle:plugin/secrets: \
         it was built before that import existed, and writes `{{{{secret:NAME}}}}` into its \
         requests itself. The host no longer fills that text, because customer data can \
         contain it too. Rebuild it with a rekindle-sdk that has `secret()` and write \
         `secret(\"NAME\")` where the secret goes"
    )]
    UnmarkedSecrets { secrets: String },
    /// wasmtime could not compile or link it.
    #[error("the component is invalid: {0}")]
    Invalid(String),
    /// `describe()` failed when the plugin was loaded.
    #[error("describe() failed: {0}")]
    Describe(#[source] Box<CallError>),
    /// Reading or writing the compiled-artifact cache failed.
    #[error("compiled-artifact cache at {path}: {source}")]
    Cache { path: String, source: std::io::Error },
}

/// Why one call into a plugin failed. None of these take the host down.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The call ran past its deadline and was interrupted.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The plugin tried to grow its memory beyond the cap.
    #[error("out of memory: tried to grow linear memory to {wanted} bytes; the cap is {cap} bytes")]
    OutOfMemory { wanted: usize, cap: usize },
    /// The plugin trapped (a panic, a stack overflow, an out-of-bounds access).
    #[error("trapped: {0}")]
    Trap(String),
    /// The plugin returned something the host will not accept.
    #[error("bad output: {0}")]
    BadOutput(String),
    /// The plugin itself returned an error.
    #[error("the plugin returned an error: {0}")]
    Plugin(String),
    /// No plugin is active in the slot.
    #[error("no plugin is loaded in slot `{0}`")]
    NotLoaded(String),
    /// The function asked for belongs to another kind of plugin.
    #[error("`{function}` is not available: this is a {kind} plugin")]
    WrongKind { function: &'static str, kind: Kind },
    /// The sandbox could not be created (for example, every instance slot is busy).
    #[error("could not instantiate the plugin: {0}")]
    Instantiate(String),
    /// Every plugin thread stayed busy for as long as the caller would wait.
    #[error("every plugin thread stayed busy for {0:?}")]
    Busy(Duration),
}

impl CallError {
    /// A short stable name for metrics and JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::OutOfMemory { .. } => "out_of_memory",
            CallError::Trap(_) => "trap",
            CallError::BadOutput(_) => "bad_output",
            CallError::Plugin(_) => "plugin_error",
            CallError::NotLoaded(_) => "not_loaded",
            CallError::WrongKind { .. } => "wrong_kind",
            CallError::Instantiate(_) => "instantiate",
            CallError::Busy(_) => "busy",
        }
    }
}

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The slot name is empty or has characters outside `[a-z0-9._-]`.
    #[error("invalid slot name `{0}`: use 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit")]
    InvalidSlot(String),
    /// No slot of that name.
    #[error("no slot named `{0}`")]
    UnknownSlot(String),
    /// No such version in the slot.
    #[error("slot `{slot}` has no version {version}")]
    UnknownVersion { slot: String, version: u32 },
    /// Nothing to roll back to.
    #[error("slot `{0}` has no earlier active version to roll back to")]
    NothingToRollBack(String),
    /// The component could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
}
