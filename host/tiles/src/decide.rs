//! Promo-tile decisions: the catalog kept as an in-memory snapshot, and the decision
//! itself. A decision never fails the page: when the slot's plugin is missing, traps,
//! times out or returns bad output, the slot's configured fallback tiles are served,
//! marked as a fallback and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rekindle_runtime::json::fields_from_json;
use rekindle_runtime::wit::{Context, InputQuery, Offer, Profile, Tile, TileRequest};
use rekindle_runtime::{PluginInfo, Registry, filter_profile, merge_params};
use rekindle_segments::batch::Reads;
use rekindle_store::{Scope, Store, StoreError, StoredDocument, TileDocument};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::TilesError;
use crate::catalog::{Catalog, OfferDef, PageSlot, is_safe_link, parse_offer, parse_page_slot, stored_text};

/// The tile service's shared state.
pub struct TileService {
    catalog: ArcSwap<Catalog>,
    decisions: AtomicU64,
    fallbacks: AtomicU64,
    /// Tiles a plugin returned with a link or image a page must not use.
    dropped: AtomicU64,
    /// Serialises reloads, so a slow periodic one cannot overwrite a newer snapshot.
    reloading: tokio::sync::Mutex<()>,
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
    pub fn id(&self) -> Option<&str> {
        self.verified.as_deref()
    }
}

impl Default for TileService {
    fn default() -> TileService {
        TileService::new()
    }
}

impl TileService {
    /// An empty service; call [`TileService::reload`] to load the store's catalog.
    pub fn new() -> TileService {
        TileService {
            catalog: ArcSwap::from_pointee(Catalog::default()),
            decisions: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reloading: tokio::sync::Mutex::new(()),
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
        for StoredDocument { id: name, definition: text, .. } in store.tile_documents(TileDocument::PageSlot).await? {
            match serde_json::from_str(&text).map_err(|e| e.to_string()).and_then(|v| parse_page_slot(&v, registry).map_err(|e| e.to_string())) {
                Ok(slot) => {
                    catalog.page_slots.insert(name, slot);
                }
                Err(e) => tracing::warn!(slot = name, "skipping a stored tile slot: {e}"),
            }
        }
        for StoredDocument { id, definition: text, .. } in store.tile_documents(TileDocument::Offer).await? {
            match serde_json::from_str(&text).map_err(|e| e.to_string()).and_then(|v| parse_offer(&v).map_err(|e| e.to_string())) {
                Ok(offer) => catalog.offers.entry(offer.offer.slot.clone()).or_default().push(offer),
                Err(e) => tracing::warn!(offer = id, "skipping a stored offer: {e}"),
            }
        }
        self.catalog.store(Arc::new(catalog));
        Ok(())
    }

    /// Loads the catalog now and re-reads it every `period`, for the life of the process:
    /// a host sharing its database with others sees the offers they change.
    pub async fn refresh_every(self: Arc<Self>, store: Arc<Store>, registry: Arc<Registry>, period: std::time::Duration) {
        let mut interval = tokio::time::interval(period);
        loop {
            interval.tick().await;
            if let Err(e) = self.reload(&store, &registry).await {
                tracing::warn!("could not refresh the tile catalog: {e}");
            }
        }
    }

    /// Validates and stores an offer given as JSON, then refreshes the snapshot; answers
    /// the offer as stored.
    pub async fn define_offer(&self, store: &Store, registry: &Registry, body: &Value) -> Result<Value, TilesError> {
        let offer = parse_offer(body)?;
        store.upsert_tile_document(TileDocument::Offer, &offer.offer.id, &offer.offer.slot, stored_text(&offer.json)).await?;
        self.reload(store, registry).await?;
        Ok(offer.json)
    }

    /// Validates and stores a page slot given as JSON, then refreshes the snapshot; answers
    /// the slot as stored.
    pub async fn define_page_slot(&self, store: &Store, registry: &Registry, body: &Value) -> Result<Value, TilesError> {
        let slot = parse_page_slot(body, registry)?;
        store.upsert_tile_document(TileDocument::PageSlot, &slot.name, "", stored_text(&slot.json)).await?;
        self.reload(store, registry).await?;
        Ok(slot.json)
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
        page_slot: &str,
        visitor: &Visitor,
        page_url: Option<String>,
        now: i64,
    ) -> Option<Value> {
        let catalog = self.catalog();
        let def = catalog.page_slots.get(page_slot)?;
        // Without a usable plugin the answer is the fallback: skip reading the visitor.
        let decidable = registry.get(&def.plugin).is_ok_and(|p| matches!(p.info(), PluginInfo::Tiles(_)));
        let full = match (store, visitor.id()) {
            (Some(store), Some(id)) if decidable => {
                let queries = self.queries(registry, &catalog, page_slot);
                full_profile(store, queries.iter().collect(), id, now).await.map_err(|e| format!("reading the visitor: {e}"))
            }
            _ => Ok(None),
        };
        Some(self.decide_for(registry, &catalog, def, full, page_url, now).await)
    }

    /// What a slot's decision reads: the plugin's declared input, and the traits the slot's
    /// offers are conditioned on.
    pub fn queries(&self, registry: &Registry, catalog: &Catalog, page_slot: &str) -> Vec<InputQuery> {
        let mut conditions = rekindle_runtime::empty_query();
        for offer in catalog.offers.get(page_slot).into_iter().flatten() {
            for (name, _) in &offer.traits {
                if !conditions.traits.contains(name) {
                    conditions.traits.push(name.clone());
                }
            }
        }
        let mut queries = vec![conditions];
        if let Some(def) = catalog.page_slots.get(page_slot)
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
        def: &PageSlot,
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
    def: &PageSlot,
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
        tracing::warn!(
            slot = def.name,
            plugin = def.plugin,
            "dropped {} tile(s) with a link or image that is not an http(s) URL or a site path",
            before - tiles.len()
        );
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
fn fallback_answer(def: &PageSlot) -> Value {
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
