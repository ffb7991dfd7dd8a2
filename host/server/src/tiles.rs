//! Promo tiles: offers and page slots (validated, stored, and kept as an in-memory
//! snapshot), and the decision itself. A decision never fails the page: when the slot's
//! plugin is missing, traps, times out or returns bad output, the slot's configured
//! fallback tiles are served, marked as a fallback and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rekindle_runtime::json::{JsonError, fields_from_json, offer_from_json, timestamp_from_json};
use rekindle_runtime::wit::{Context, InputQuery, Offer, Profile, Tile, TileRequest};
use rekindle_runtime::{PluginInfo, Registry, filter_profile, merge_params};
use rekindle_store::{Scope, Store, StoreError, TileDocument};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::ApiError;
use rekindle_segments::batch::Reads;

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

/// A page slot: which plugin decides it, how many tiles it shows, and what to show when
/// the plugin cannot decide.
#[derive(Debug, Clone)]
pub struct SlotDef {
    pub name: String,
    pub plugin: String,
    pub max_tiles: u32,
    pub params: Value,
    pub fallback: Vec<FallbackTile>,
    pub json: Value,
}

/// Every slot and its offers, as the decision endpoint reads them.
#[derive(Debug, Default)]
pub struct Catalog {
    pub slots: HashMap<String, SlotDef>,
    /// Offers by slot, in id order.
    pub offers: HashMap<String, Vec<OfferDef>>,
}

/// The tile service's shared state.
pub struct TileService {
    catalog: ArcSwap<Catalog>,
    decisions: AtomicU64,
    fallbacks: AtomicU64,
    /// Tiles a plugin returned with a link or image a page must not use.
    dropped: AtomicU64,
    /// Serialises reloads, so a slow periodic one cannot overwrite a newer snapshot.
    reloading: tokio::sync::Mutex<()>,
    /// Origins allowed to call the tile and event endpoints from a browser.
    pub origins: Vec<String>,
    /// The key sealing segment tokens for the edge, and how long a token lasts (ms);
    /// `None` issues no tokens.
    pub token: Option<(crate::token::TokenKey, i64)>,
}

fn field_error(e: JsonError) -> ApiError {
    ApiError::field(e.path.clone(), e.to_string())
}

/// Validates an offer definition; errors name the field.
pub fn parse_offer(json: &Value) -> Result<OfferDef, ApiError> {
    let offer = offer_from_json(json, "offer").map_err(field_error)?;
    let map = json.as_object().ok_or_else(|| ApiError::field("offer", "an offer is a JSON object"))?;
    if offer.id.trim().is_empty() || offer.id.len() > 200 {
        return Err(ApiError::field("offer.id", "`id` must be a non-empty string of at most 200 characters"));
    }
    if offer.slot.trim().is_empty() {
        return Err(ApiError::field("offer.slot", "`slot` must name a page slot"));
    }
    for (name, value) in [("link", Some(&offer.link)), ("image", offer.image.as_ref())] {
        if let Some(url) = value
            && !is_safe_link(url)
        {
            return Err(ApiError::field(format!("offer.{name}"), format!("`{name}` {SAFE_LINK}")));
        }
    }
    let valid_from = match map.get("valid_from") {
        None | Some(Value::Null) => None,
        at => Some(timestamp_from_json(at, "offer.valid_from").map_err(field_error)?),
    };
    if let (Some(from), Some(until)) = (valid_from, offer.valid_until)
        && from >= until
    {
        return Err(ApiError::field("offer.valid_until", "`valid_until` must be after `valid_from`"));
    }
    let traits = match map.get("traits") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(conditions)) => conditions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(_) => return Err(ApiError::field("offer.traits", "`traits` must be an object of trait name to required value")),
    };
    const KNOWN: [&str; 16] = [
        "id", "slot", "priority", "include_segments", "exclude_segments", "traits", "category", "valid_from", "valid_until",
        "title", "body", "image", "link", "voucher", "holdout_percent", "attributes",
    ];
    if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::field(format!("offer.{unknown}"), format!("unknown field `{unknown}`; offers take {}", KNOWN.join(", "))));
    }
    Ok(OfferDef { offer, valid_from, traits, json: json.clone() })
}

/// Validates a page slot definition against the registry; errors name the field.
pub fn parse_slot(json: &Value, registry: &Registry) -> Result<SlotDef, ApiError> {
    let map = json.as_object().ok_or_else(|| ApiError::field("slot", "a slot is a JSON object"))?;
    let text = |key: &str, default: Option<&str>| -> Result<String, ApiError> {
        match (map.get(key), default) {
            (Some(Value::String(s)), _) if !s.trim().is_empty() && s.len() <= 200 => Ok(s.trim().to_string()),
            (None, Some(default)) => Ok(default.to_string()),
            _ => Err(ApiError::field(format!("slot.{key}"), format!("`{key}` must be a non-empty string of at most 200 characters"))),
        }
    };
    let name = text("name", None)?;
    let plugin = text("plugin", Some(DEFAULT_PLUGIN))?;
    let max_tiles = match map.get("max_tiles") {
        None => 1,
        Some(n) => n
            .as_u64()
            .filter(|n| (1..=20).contains(n))
            .ok_or_else(|| ApiError::field("slot.max_tiles", "`max_tiles` must be a whole number from 1 to 20"))? as u32,
    };
    let params = match map.get("params") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(p)) => Value::Object(p.clone()),
        Some(_) => return Err(ApiError::field("slot.params", "`params` must be an object")),
    };
    // A plugin may be uploaded after the slot is defined; one that is there must fit.
    if let Ok(found) = registry.get(&plugin) {
        let PluginInfo::Tiles(info) = found.info() else {
            return Err(ApiError::field("slot.plugin", format!("`{plugin}` holds a {} plugin, not a promo-tiles one", found.kind())));
        };
        let overrides = fields_from_json(Some(&params), "slot.params").map_err(field_error)?;
        merge_params(&info.params, &overrides).map_err(|e| ApiError::field("slot.params", e.to_string()))?;
    }
    let fallback = match map.get("fallback") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tiles)) => tiles
            .iter()
            .enumerate()
            .map(|(i, t)| fallback_tile(t, &format!("slot.fallback[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::field("slot.fallback", "`fallback` must be a list of tiles")),
    };
    Ok(SlotDef { name, plugin, max_tiles, params, fallback, json: json.clone() })
}

fn fallback_tile(json: &Value, path: &str) -> Result<FallbackTile, ApiError> {
    let map = json.as_object().ok_or_else(|| ApiError::field(path, "a fallback tile is an object with title, link and optionally body, image, offer_id"))?;
    let get = |key: &str, required: bool| -> Result<Option<String>, ApiError> {
        match map.get(key) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            None | Some(Value::Null) if !required => Ok(None),
            _ => Err(ApiError::field(format!("{path}.{key}"), format!("`{key}` must be a string"))),
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
            return Err(ApiError::field(format!("{path}.{name}"), format!("`{name}` {SAFE_LINK}")));
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
        && reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()))
}

/// What the tile endpoint has served since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TileCounts {
    pub decisions: u64,
    pub fallbacks: u64,
    /// Tiles a plugin returned with a link or image that is not an http(s) URL or a path.
    pub dropped_unsafe_links: u64,
}

/// Who is asking for tiles, as far as the request proves it. An id the host cannot
/// verify counts for nothing: that visitor gets the anonymous decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Visitor {
    /// The user id (signed by the site) or profile id (from a token this host issued)
    /// the request proved; `None` for the anonymous decision.
    pub verified: Option<String>,
}

impl Visitor {
    /// A visitor the request proved to be `id`.
    pub fn verified(id: impl Into<String>) -> Visitor {
        Visitor { verified: Some(id.into()) }
    }

    /// The id the visitor is known by, when proved.
    pub(crate) fn id(&self) -> Option<&str> {
        self.verified.as_deref()
    }
}

impl TileService {
    /// An empty service allowing `origins`, sealing tokens with `token` (key, lifetime in
    /// ms) when given; call [`TileService::reload`] to load the store's catalog.
    pub fn new(origins: Vec<String>, token: Option<(crate::token::TokenKey, i64)>) -> TileService {
        TileService {
            catalog: ArcSwap::from_pointee(Catalog::default()),
            decisions: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reloading: tokio::sync::Mutex::new(()),
            origins,
            token,
        }
    }

    /// The current snapshot.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Rebuilds the snapshot from the store. Stored documents were validated when written;
    /// one that no longer parses (a plugin changed) is skipped with a warning.
    pub async fn reload(&self, store: &Store, registry: &Registry) -> Result<(), StoreError> {
        let _one_at_a_time = self.reloading.lock().await;
        let mut catalog = Catalog::default();
        for (name, text, _) in store.tile_documents(TileDocument::Slot).await? {
            match serde_json::from_str(&text).map_err(|e| e.to_string()).and_then(|v| parse_slot(&v, registry).map_err(|e| e.to_string())) {
                Ok(slot) => {
                    catalog.slots.insert(name, slot);
                }
                Err(e) => tracing::warn!(slot = name, "skipping a stored tile slot: {e}"),
            }
        }
        for (id, text, _) in store.tile_documents(TileDocument::Offer).await? {
            match serde_json::from_str(&text).map_err(|e| e.to_string()).and_then(|v| parse_offer(&v).map_err(|e| e.to_string())) {
                Ok(offer) => catalog.offers.entry(offer.offer.slot.clone()).or_default().push(offer),
                Err(e) => tracing::warn!(offer = id, "skipping a stored offer: {e}"),
            }
        }
        self.catalog.store(Arc::new(catalog));
        Ok(())
    }

    /// Decisions, fallbacks and unsafe tiles dropped since start.
    pub fn counts(&self) -> TileCounts {
        TileCounts {
            decisions: self.decisions.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            dropped_unsafe_links: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// Decides one slot for a visitor at `now`; `None` when the slot is not defined. Every
    /// failure past that point becomes the slot's fallback tiles.
    pub async fn decide(
        &self,
        registry: &Registry,
        store: Option<&Store>,
        slot: &str,
        visitor: &Visitor,
        page_url: Option<String>,
        now: i64,
    ) -> Option<Value> {
        let catalog = self.catalog();
        let def = catalog.slots.get(slot)?;
        // Without a usable plugin the answer is the fallback: skip reading the visitor.
        let decidable = registry.get(&def.plugin).is_ok_and(|p| matches!(p.info(), PluginInfo::Tiles(_)));
        let full = match (store, visitor.id()) {
            (Some(store), Some(id)) if decidable => {
                let queries = self.queries(registry, &catalog, slot);
                full_profile(store, queries.iter().collect(), id, now).await.map_err(|e| format!("reading the visitor: {e}"))
            }
            _ => Ok(None),
        };
        Some(self.decide_for(registry, &catalog, def, full, page_url, now).await)
    }

    /// What a slot's decision reads: the plugin's declared input, and the traits the slot's
    /// offers are conditioned on.
    pub fn queries(&self, registry: &Registry, catalog: &Catalog, slot: &str) -> Vec<InputQuery> {
        let mut conditions = rekindle_runtime::empty_query();
        for offer in catalog.offers.get(slot).into_iter().flatten() {
            for (name, _) in &offer.traits {
                if !conditions.traits.contains(name) {
                    conditions.traits.push(name.clone());
                }
            }
        }
        let mut queries = vec![conditions];
        if let Some(def) = catalog.slots.get(slot)
            && let Ok(plugin) = registry.get(&def.plugin)
            && let PluginInfo::Tiles(info) = plugin.info()
        {
            queries.push(info.input.clone());
        }
        queries
    }

    /// Decides a slot for a visitor whose full profile (or the failure to read it) is
    /// already known: the part of a decision the edge repeats.
    pub async fn decide_for(
        &self,
        registry: &Registry,
        catalog: &Catalog,
        def: &SlotDef,
        full: Result<Option<Profile>, String>,
        page_url: Option<String>,
        now: i64,
    ) -> Value {
        self.decisions.fetch_add(1, Ordering::Relaxed);
        let offers = catalog.offers.get(&def.name).map(Vec::as_slice).unwrap_or_default();
        let decided = match full {
            Ok(full) => personalised(registry, def, offers, full, page_url, now, &self.dropped).await,
            Err(why) => Err(why),
        };
        match decided {
            Ok(answer) => answer,
            Err(why) => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(slot = def.name, "serving fallback tiles: {why}");
                fallback_answer(def)
            }
        }
    }
}

async fn personalised(
    registry: &Registry,
    def: &SlotDef,
    offers: &[OfferDef],
    full: Option<Profile>,
    page_url: Option<String>,
    now: i64,
    dropped: &AtomicU64,
) -> Result<Value, String> {
    let plugin = registry.get(&def.plugin).map_err(|e| format!("plugin: {e}"))?;
    let PluginInfo::Tiles(info) = plugin.info() else {
        return Err(format!("`{}` holds a {} plugin, not a promo-tiles one", def.plugin, plugin.kind()));
    };
    let overrides = fields_from_json(Some(&def.params), "params").map_err(|e| e.to_string())?;
    let params = merge_params(&info.params, &overrides).map_err(|e| e.to_string())?;
    let candidates: Vec<Offer> = offers
        .iter()
        .filter(|o| o.valid_from.is_none_or(|from| from <= now) && o.offer.valid_until.is_none_or(|until| now < until))
        .filter(|o| o.traits.iter().all(|(name, want)| full.as_ref().is_some_and(|p| has_trait(p, name, want))))
        .map(|o| o.offer.clone())
        .collect();
    let profile = full.as_ref().map(|p| filter_profile(p, &info.input, now));
    let who = profile.as_ref().map(|p| p.id.clone());
    let request = TileRequest { slot: def.name.clone(), page_url, max_tiles: def.max_tiles };
    let ctx = Context { now, params };
    // On the plugin threads, waiting for one no longer than a call may take: when every
    // thread is busy, the page is better served by the fallback now than by a queue.
    let mut tiles = plugin
        .call(Some(plugin.deadline()), move |p| p.decide(&ctx, &request, profile.as_ref(), &candidates))
        .await
        .map_err(|e| format!("the plugin failed: {e}"))?;
    // A plugin's link is the plugin's word, not the operator's: one the page must not put
    // in an href (javascript:, //elsewhere) is dropped and counted, and the rest served.
    let before = tiles.len();
    tiles.retain(|t| is_safe_link(&t.link) && t.image.as_deref().is_none_or(is_safe_link));
    if tiles.len() < before {
        dropped.fetch_add((before - tiles.len()) as u64, Ordering::Relaxed);
        tracing::warn!(slot = def.name, plugin = def.plugin, "dropped {} tile(s) with a link or image that is not an http(s) URL or a site path", before - tiles.len());
    }
    let tiles: Vec<Value> = tiles.iter().map(|t| tile_json(t, &def.name, who.as_deref().unwrap_or("anonymous"), &def.plugin, plugin.digest())).collect();
    Ok(json!({
        "slot": def.name,
        "fallback": false,
        "known_visitor": who.is_some(),
        "plugin": {"slot": def.plugin, "digest": plugin.digest(), "version": info.version},
        "tiles": tiles,
    }))
}

/// The contract profile of the person `id` names with everything `queries` read; `None`
/// for someone Rekindle has never seen.
pub async fn full_profile(store: &Store, queries: Vec<&InputQuery>, id: &str, now: i64) -> Result<Option<Profile>, StoreError> {
    let reads = Reads::new(queries, now);
    let inputs = store.rule_inputs(Scope::Ids(vec![id.to_string()]), reads.needs().clone()).await?;
    Ok(inputs.first().map(|input| {
        let mut profile = reads.profile(input);
        // By code point, whatever the database's collation: the edge sorts the same way.
        if let Some(segments) = &mut profile.segments {
            segments.sort_by(|a, b| a.segment.cmp(&b.segment));
        }
        profile
    }))
}

fn has_trait(profile: &Profile, name: &str, want: &Value) -> bool {
    let value = rekindle_runtime::json::value_from_json(want);
    profile.traits.iter().flatten().any(|f| f.name == name && f.value == value)
}

/// A stable id for one tile shown to one visitor by one plugin build, so impressions and
/// clicks can be joined to the decision, and repeated identical answers share an ETag.
fn decision_id(slot: &str, visitor: &str, offer: &str, digest: &str) -> String {
    let hash = Sha256::digest(format!("{slot}\n{visitor}\n{offer}\n{digest}").as_bytes());
    hex::encode(&hash[..12])
}

fn tile_json(tile: &Tile, slot: &str, visitor: &str, plugin_slot: &str, digest: &str) -> Value {
    json!({
        "decision_id": decision_id(slot, visitor, &tile.offer_id, digest),
        "offer_id": tile.offer_id,
        "title": tile.title,
        "body": tile.body,
        "image": tile.image,
        "link": tile.link,
        "voucher": tile.voucher,
        "plugin": {"slot": plugin_slot, "digest": digest},
    })
}

/// The slot's fallback tiles. They are the same for every visitor, so their decision ids
/// name no one: the origin (which knows a user id) and the edge (which knows a profile id)
/// give the same ids.
fn fallback_answer(def: &SlotDef) -> Value {
    let who = "anonymous";
    let tiles: Vec<Value> = def
        .fallback
        .iter()
        .take(def.max_tiles as usize)
        .enumerate()
        .map(|(i, t)| {
            let offer = t.offer_id.clone().unwrap_or_else(|| format!("fallback-{i}"));
            json!({
                "decision_id": decision_id(&def.name, who, &offer, "fallback"),
                "offer_id": offer,
                "title": t.title,
                "body": t.body,
                "image": t.image,
                "link": t.link,
                "voucher": null,
                "plugin": null,
            })
        })
        .collect();
    json!({"slot": def.name, "fallback": true, "known_visitor": false, "plugin": null, "tiles": tiles})
}

/// Offers and slots listed for operators.
pub fn catalog_json(catalog: &Catalog) -> Value {
    let mut slots: Vec<&SlotDef> = catalog.slots.values().collect();
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
            "javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)", "java\tscript:alert(1)", "data:text/html,<script>",
            "vbscript:x", "//evil.example", "/\\evil.example", "https:evil.example", "https://", "", "sale", "mailto:a@b.c", "https://x.example/\nfoo",
        ] {
            assert!(!is_safe_link(unsafe_link), "{unsafe_link:?}");
        }
    }
}
