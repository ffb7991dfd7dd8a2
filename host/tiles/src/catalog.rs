//! The tile catalog: offers and page slots as operators define them, validated field by
//! field, with the link rule every tile a page shows must pass.

use std::collections::HashMap;

use rekindle_runtime::json::{JsonError, fields_from_json, offer_from_json, timestamp_from_json};
use rekindle_runtime::wit::Offer;
use rekindle_runtime::{PluginInfo, Registry, merge_params};
use serde_json::{Value, json};

use crate::TilesError;

/// The registry slot a page slot uses when its definition names none.
pub const DEFAULT_PLUGIN: &str = "tiles-basic";

/// An offer as the operator defined it: the contract's offer plus what the host checks
/// before the plugin sees it (the start of validity and trait conditions).
#[derive(Debug, Clone)]
pub struct OfferDef {
    pub offer: Offer,
    /// Not shown before this time.
    pub valid_from: Option<i64>,
    /// Traits the visitor must have, with these exact values.
    pub traits: Vec<(String, Value)>,
    /// The definition as stored and listed.
    pub json: Value,
}

/// A tile served when the plugin cannot decide.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FallbackTile {
    pub offer_id: Option<String>,
    pub title: String,
    pub body: String,
    pub image: Option<String>,
    pub link: String,
}

/// A page slot, the place on a page where tiles show: which plugin decides it, how many
/// tiles it shows, and what to show when the plugin cannot decide. ("Slot" alone is the
/// registry's: where a plugin is installed, named by `plugin` here.)
#[derive(Debug, Clone)]
pub struct PageSlot {
    pub name: String,
    /// The registry slot of the promo-tiles plugin that decides.
    pub plugin: String,
    pub max_tiles: u32,
    pub params: Value,
    pub fallback: Vec<FallbackTile>,
    pub json: Value,
}

/// Every page slot and its offers, as the decision endpoint reads them.
#[derive(Debug, Default)]
pub struct Catalog {
    pub page_slots: HashMap<String, PageSlot>,
    /// Offers by page slot, in id order.
    pub offers: HashMap<String, Vec<OfferDef>>,
}

fn field_error(e: JsonError) -> TilesError {
    TilesError::field(e.path.clone(), e.to_string())
}

/// Validates an offer definition; errors name the field.
pub fn parse_offer(json: &Value) -> Result<OfferDef, TilesError> {
    let offer = offer_from_json(json, "offer").map_err(field_error)?;
    let map = json.as_object().ok_or_else(|| TilesError::field("offer", "an offer is a JSON object"))?;
    if offer.id.trim().is_empty() || offer.id.len() > 200 {
        return Err(TilesError::field("offer.id", "`id` must be a non-empty string of at most 200 characters"));
    }
    if offer.slot.trim().is_empty() {
        return Err(TilesError::field("offer.slot", "`slot` must name a page slot"));
    }
    for (name, value) in [("link", Some(&offer.link)), ("image", offer.image.as_ref())] {
        if let Some(url) = value
            && !is_safe_link(url)
        {
            return Err(TilesError::field(format!("offer.{name}"), format!("`{name}` {SAFE_LINK}")));
        }
    }
    let valid_from = match map.get("valid_from") {
        None | Some(Value::Null) => None,
        at => Some(timestamp_from_json(at, "offer.valid_from").map_err(field_error)?),
    };
    if let (Some(from), Some(until)) = (valid_from, offer.valid_until)
        && from >= until
    {
        return Err(TilesError::field("offer.valid_until", "`valid_until` must be after `valid_from`"));
    }
    let traits = match map.get("traits") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(conditions)) => conditions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(_) => return Err(TilesError::field("offer.traits", "`traits` must be an object of trait name to required value")),
    };
    const KNOWN: [&str; 16] = [
        "id",
        "slot",
        "priority",
        "include_segments",
        "exclude_segments",
        "traits",
        "category",
        "valid_from",
        "valid_until",
        "title",
        "body",
        "image",
        "link",
        "voucher",
        "holdout_percent",
        "attributes",
    ];
    if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(TilesError::field(format!("offer.{unknown}"), format!("unknown field `{unknown}`; offers take {}", KNOWN.join(", "))));
    }
    Ok(OfferDef { offer, valid_from, traits, json: json.clone() })
}

/// Validates a page slot definition against the registry; errors name the field.
pub fn parse_page_slot(json: &Value, registry: &Registry) -> Result<PageSlot, TilesError> {
    let map = json.as_object().ok_or_else(|| TilesError::field("slot", "a slot is a JSON object"))?;
    let text = |key: &str, default: Option<&str>| -> Result<String, TilesError> {
        match (map.get(key), default) {
            (Some(Value::String(s)), _) if !s.trim().is_empty() && s.len() <= 200 => Ok(s.trim().to_string()),
            (None, Some(default)) => Ok(default.to_string()),
            _ => Err(TilesError::field(format!("slot.{key}"), format!("`{key}` must be a non-empty string of at most 200 characters"))),
        }
    };
    let name = text("name", None)?;
    let plugin = text("plugin", Some(DEFAULT_PLUGIN))?;
    let max_tiles = match map.get("max_tiles") {
        None => 1,
        Some(n) => {
            n.as_u64().filter(|n| (1..=20).contains(n)).ok_or_else(|| TilesError::field("slot.max_tiles", "`max_tiles` must be a whole number from 1 to 20"))?
                as u32
        }
    };
    let params = match map.get("params") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(p)) => Value::Object(p.clone()),
        Some(_) => return Err(TilesError::field("slot.params", "`params` must be an object")),
    };
    // A plugin may be uploaded after the slot is defined; one that is there must fit.
    if let Ok(found) = registry.get(&plugin) {
        let PluginInfo::Tiles(info) = found.info() else {
            return Err(TilesError::field("slot.plugin", format!("`{plugin}` holds a {} plugin, not a promo-tiles one", found.kind())));
        };
        let overrides = fields_from_json(Some(&params), "slot.params").map_err(field_error)?;
        merge_params(&info.params, &overrides).map_err(|e| TilesError::field("slot.params", e.to_string()))?;
    }
    let fallback = match map.get("fallback") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tiles)) => tiles.iter().enumerate().map(|(i, t)| fallback_tile(t, &format!("slot.fallback[{i}]"))).collect::<Result<_, _>>()?,
        Some(_) => return Err(TilesError::field("slot.fallback", "`fallback` must be a list of tiles")),
    };
    Ok(PageSlot { name, plugin, max_tiles, params, fallback, json: json.clone() })
}

fn fallback_tile(json: &Value, path: &str) -> Result<FallbackTile, TilesError> {
    let map = json.as_object().ok_or_else(|| TilesError::field(path, "a fallback tile is an object with title, link and optionally body, image, offer_id"))?;
    let get = |key: &str, required: bool| -> Result<Option<String>, TilesError> {
        match map.get(key) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            None | Some(Value::Null) if !required => Ok(None),
            _ => Err(TilesError::field(format!("{path}.{key}"), format!("`{key}` must be a string"))),
        }
    };
    let tile = FallbackTile {
        offer_id: get("offer_id", false)?,
        title: get("title", true)?.unwrap_or_default(),
        body: get("body", false)?.unwrap_or_default(),
        image: get("image", false)?,
        link: get("link", true)?.unwrap_or_default(),
    };
    for (name, value) in [("link", Some(&tile.link)), ("image", tile.image.as_ref())] {
        if let Some(url) = value
            && !is_safe_link(url)
        {
            return Err(TilesError::field(format!("{path}.{name}"), format!("`{name}` {SAFE_LINK}")));
        }
    }
    Ok(tile)
}

/// What a tile's link or image may be, in words for error messages.
pub const SAFE_LINK: &str = "must be an http(s) URL or a path on the site starting with a single /";

/// Whether `url` is safe for a shop's page to put in `href` or `src`: an absolute `http:` or
/// `https:` URL, or a path on the site. Anything else (`javascript:`, `data:`, a
/// protocol-relative `//evil.example`, `/\evil.example`, which browsers read the same way,
/// or text with control characters that browsers strip before reading the scheme) is
/// refused. The edge worker applies the same rule to the character; `tiles.js` checks the
/// scheme and the leading slashes again before it renders a tile.
pub fn is_safe_link(url: &str) -> bool {
    if url.is_empty() || url.len() > 2048 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    if let Some(rest) = url.strip_prefix('/') {
        return !rest.starts_with('/') && !rest.starts_with('\\');
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()))
}

/// Offers and slots listed for operators.
pub fn catalog_json(catalog: &Catalog) -> Value {
    let mut slots: Vec<&PageSlot> = catalog.page_slots.values().collect();
    slots.sort_by(|a, b| a.name.cmp(&b.name));
    let mut offers: Vec<&OfferDef> = catalog.offers.values().flatten().collect();
    offers.sort_by(|a, b| a.offer.id.cmp(&b.offer.id));
    json!({
        "slots": slots.iter().map(|s| &s.json).collect::<Vec<_>>(),
        "offers": offers.iter().map(|o| &o.json).collect::<Vec<_>>(),
    })
}

/// The canonical text stored for a definition (always an object, checked by the parsers):
/// serde_json keeps object keys sorted.
pub fn stored_text(json: &Value) -> String {
    json.to_string()
}

#[cfg(test)]
mod tests {
    use super::is_safe_link;

    #[test]
    fn only_http_urls_and_site_paths_are_safe_links() {
        for safe in ["https://shop.example/sale", "HTTP://shop.example", "/sale?x=1", "/", "https://shop.example:8443/a#b"] {
            assert!(is_safe_link(safe), "{safe}");
        }
        for unsafe_link in [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            " javascript:alert(1)",
            "java\tscript:alert(1)",
            "data:text/html,<script>",
            "vbscript:x",
            "//evil.example",
            "/\\evil.example",
            "https:evil.example",
            "https://",
            "",
            "sale",
            "mailto:a@b.c",
            "https://x.example/\nfoo",
        ] {
            assert!(!is_safe_link(unsafe_link), "{unsafe_link:?}");
        }
    }
}
