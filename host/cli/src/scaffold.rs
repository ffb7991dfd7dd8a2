//! `rekindle plugin new`: a plugin crate that builds and passes its test on the first try.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::PluginKind;

const CARGO_TOML: &str = include_str!("templates/Cargo.toml.tmpl");
/// The repository's own `.cargo/config.toml`: the plugin stack size the host is tuned for.
const CARGO_CONFIG: &str = include_str!("../../../.cargo/config.toml");
const RULE: &str = include_str!("templates/rule.rs.tmpl");
const CHANNEL: &str = include_str!("templates/channel.rs.tmpl");
const TILES: &str = include_str!("templates/tiles.rs.tmpl");

/// This checkout's guest SDK, the default dependency of a new plugin.
fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-sdk")
}

fn valid_crate_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

/// Names the prelude already brings into a plugin's scope.
const PRELUDE: &[&str] = &[
    "AdapterInfo",
    "AudienceChange",
    "AudienceMember",
    "Box",
    "Channel",
    "ChannelKind",
    "ContactKind",
    "Context",
    "EventQuery",
    "EventSeries",
    "Field",
    "HttpMethod",
    "HttpRequest",
    "HttpResponse",
    "InputQuery",
    "Message",
    "Occurrence",
    "Offer",
    "Outcome",
    "ParamKind",
    "ParamSpec",
    "Profile",
    "Purpose",
    "Rule",
    "RuleInfo",
    "String",
    "Tile",
    "TileRequest",
    "Tiles",
    "TilesInfo",
    "Timestamp",
    "ToOwned",
    "ToString",
    "Value",
    "Vec",
    "Verdict",
];

/// `rule-vip` becomes `RuleVip`; a name the prelude already uses gets `Plugin` appended.
fn type_name(name: &str) -> String {
    let ty = camel_case(name);
    if PRELUDE.contains(&ty.as_str()) { format!("{ty}Plugin") } else { ty }
}

fn camel_case(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

pub fn new_plugin(name: &str, kind: PluginKind, dir: Option<PathBuf>, sdk_path: Option<PathBuf>) -> anyhow::Result<()> {
    if !valid_crate_name(name) {
        bail!("`{name}` is not a usable crate name: start with a-z, then use a-z, 0-9, '-' or '_'");
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty", dir.display());
    }
    let sdk = sdk_path.unwrap_or_else(default_sdk_path);
    let sdk = sdk.canonicalize().with_context(|| format!("the guest SDK is not at {}; pass --sdk-path to a checkout's guest-sdk folder", sdk.display()))?;
    let source = match kind {
        PluginKind::Rule => RULE,
        PluginKind::Channel => CHANNEL,
        PluginKind::Tiles => TILES,
    };
    let fill =
        |template: &str| template.replace("@NAME@", name).replace("@TYPE@", &type_name(name)).replace("@SDK@", &sdk.display().to_string().replace('\\', "/"));
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("Cargo.toml"), fill(CARGO_TOML))?;
    std::fs::write(dir.join("src/lib.rs"), fill(source))?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    std::fs::write(dir.join(".cargo/config.toml"), CARGO_CONFIG)?;
    let wasm = format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_"));
    println!("Created {} in {}", name, dir.display());
    println!();
    println!("  cd {}", dir.display());
    println!("  cargo test                                        # run its unit test natively");
    println!("  cargo build --release --target wasm32-wasip2      # build the component");
    println!("  rekindle plugin inspect {wasm}");
    println!();
    println!("Then upload it to a running host:");
    println!("  curl -H \"Authorization: Bearer $REKINDLE_ADMIN_TOKEN\" --data-binary @{wasm} \\");
    println!("       'http://127.0.0.1:8080/admin/slots/{name}/versions?activate=true'");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(type_name("rule-vip_buyers"), "RuleVipBuyers");
        assert_eq!(type_name("rule"), "RulePlugin");
        assert_eq!(type_name("tiles"), "TilesPlugin");
        assert!(valid_crate_name("channel-acme"));
        assert!(!valid_crate_name("1rule"));
        assert!(!valid_crate_name("Rule"));
    }
}
