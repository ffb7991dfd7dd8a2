//! What the CDN edge needs to decide without the origin: the catalog snapshot an edge
//! bundle is built from, the signed segment token, and the server's reference decision the
//! edge must reproduce byte for byte.
//!
//! A segment can run at the edge when its rule reads only traits and aggregates (no events,
//! consents, contacts or other segments): those travel in the token, so the edge evaluates
//! the rule with its own `now`, and a membership that changes with time alone is current
//! there even with a token issued days earlier.

use rekindle_runtime::json::fields_from_json;
use rekindle_runtime::wit::{Field, InputQuery, Membership, Profile, Verdict};
use rekindle_runtime::{CallError, Limits, PluginInfo, filter_profile, merge_params};
use rekindle_store::CONTACT_TRAITS;
use serde_json::{Value, json};

use rekindle_runtime::Registry;
use rekindle_segments::batch::{Plan, PlannedSegment};
use rekindle_store::Store;

use crate::TilesError;
use crate::catalog::Catalog;
use crate::decide::{TileService, full_profile};
use crate::token::{Claims, TokenCatalog, typed_fields};

/// What the edge's answers are made from: the plugins, the customer data and the tiles.
#[derive(Clone, Copy)]
pub struct EdgeSources<'a> {
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub tiles: &'a TileService,
}

/// Whether a rule's declared input travels in a token: no events, consents, contacts or
/// segments, and no trait that is a contact point, which a token never carries.
pub fn fits_token(query: &InputQuery) -> bool {
    query.events.is_empty() && !query.consents && !query.contacts && !query.segments && !reads_contact_trait(query)
}

/// Whether a query reads a trait that holds a contact point (`email`, `phone`).
fn reads_contact_trait(query: &InputQuery) -> bool {
    query.traits.iter().any(|t| CONTACT_TRAITS.contains(&t.as_str()))
}

/// The segments whose rules the edge evaluates itself, planned at `now`.
pub async fn edge_segments(registry: &Registry, store: &Store, now: i64) -> Result<Vec<PlannedSegment>, TilesError> {
    let defs = store.segments().await?;
    let (plan, _) = Plan::new(registry, store, &defs, now, rekindle_segments::Cutoffs::Recorded).await?;
    Ok(plan.segments.into_iter().filter(|s| fits_token(&s.query)).collect())
}

/// Every query a token must serve: each slot's decision and each edge rule.
fn token_queries<'a>(src: EdgeSources<'_>, catalog: &Catalog, edge_rules: impl IntoIterator<Item = &'a InputQuery>) -> Vec<InputQuery> {
    let mut slots: Vec<&String> = catalog.page_slots.keys().collect();
    slots.sort();
    let mut queries: Vec<InputQuery> = slots.into_iter().flat_map(|slot| src.tiles.queries(src.registry, catalog, slot)).collect();
    queries.extend(edge_rules.into_iter().cloned());
    queries
}

/// The input queries of the edge segments' rules: what a token must carry for them. Unlike
/// [`edge_segments`] this resolves no parameters, so issuing a token on every tile answer
/// never computes RFM quintiles over the whole population.
async fn edge_rule_queries(registry: &Registry, store: &Store) -> Result<Vec<InputQuery>, TilesError> {
    let mut queries = Vec::new();
    for def in store.segments().await? {
        if let Ok(plugin) = registry.get(&def.slot)
            && let PluginInfo::Rule(info) = plugin.info()
            && fits_token(&info.input)
        {
            queries.push(info.input.clone());
        }
    }
    Ok(queries)
}

/// The trait and aggregate names a token carries, in first-declared order; never a
/// contact point, whoever asks for one.
fn token_fields(queries: &[InputQuery]) -> (Vec<String>, Vec<String>) {
    let (mut traits, mut aggregates) = (Vec::<String>::new(), Vec::<String>::new());
    for q in queries {
        for name in &q.traits {
            if !traits.contains(name) && !CONTACT_TRAITS.contains(&name.as_str()) {
                traits.push(name.clone());
            }
        }
        for name in &q.aggregates {
            if !aggregates.contains(name) {
                aggregates.push(name.clone());
            }
        }
    }
    (traits, aggregates)
}

/// The claims for the person `id` names at `now`, valid for `ttl_ms`; `None` for someone
/// Rekindle has never seen. `clock` gives the time the token's catalog is read at.
pub async fn claims(src: EdgeSources<'_>, id: &str, now: i64, ttl_ms: i64, clock: &rekindle_store::Clock) -> Result<Option<Claims>, TilesError> {
    let store = src.store;
    let catalog = src.tiles.catalog();
    let queries = token_queries(src, &catalog, &edge_rule_queries(src.registry, store).await?);
    let Some(full) = full_profile(store, queries.iter().collect(), id, now).await? else { return Ok(None) };
    let (traits, aggregates) = token_fields(&queries);
    let user_ids = store.profile(&full.id, 0).await?.map(|record| record.user_ids).unwrap_or_default();
    // Read after the queries above, so every segment defined by `at` is in the memberships.
    let catalog = Some(TokenCatalog { at: clock.now(), traits: traits.clone(), aggregates: aggregates.clone() });
    let keep = |fields: &Option<Vec<Field>>, names: &[String]| -> Vec<Field> { fields.iter().flatten().filter(|f| names.contains(&f.name)).cloned().collect() };
    Ok(Some(Claims {
        profile_id: full.id.clone(),
        issued_at: now,
        expires_at: now.saturating_add(ttl_ms),
        segments: full.segments.clone().unwrap_or_default(),
        traits: keep(&full.traits, &traits),
        aggregates: keep(&full.aggregates, &aggregates),
        timezone: full.timezone.clone(),
        user_ids,
        catalog,
    }))
}

fn query_json(query: &InputQuery) -> Value {
    json!({"traits": query.traits, "aggregates": query.aggregates, "segments": query.segments,
           "events": query.events.iter().map(|e| &e.name).collect::<Vec<_>>(), "consents": query.consents, "contacts": query.contacts})
}

/// Everything an edge bundle decides from, taken at `now`: slots with their merged
/// parameters, offers in the contract's form, the plugins (by slot and digest), the edge
/// segments, and which traits and aggregates the token carries. Values are typed as in
/// the token.
pub async fn snapshot(src: EdgeSources<'_>, now: i64) -> Result<Value, TilesError> {
    let catalog = src.tiles.catalog();
    let edge = edge_segments(src.registry, src.store, now).await?;
    let mut plugins = serde_json::Map::new();
    let slots = slots_json(src, &catalog, &mut plugins)?;
    let offers = offers_json(&catalog)?;
    let mut segments = Vec::new();
    for s in &edge {
        plugins.insert(
            s.def.slot.clone(),
            json!({"kind": "rule", "digest": s.plugin.digest(), "version": s.plugin.info().version(), "input": query_json(&s.query)}),
        );
        segments.push(
            json!({"name": s.def.name, "slot": s.def.slot, "params": typed_fields(&s.ctx.params), "query": query_json(&s.query), "cutoffs_at": s.cutoffs_at}),
        );
    }
    let queries = token_queries(src, &catalog, edge.iter().map(|s| &s.query));
    let (traits, aggregates) = token_fields(&queries);
    let limits = src.registry.runtime().limits();
    Ok(json!({
        "version": SNAPSHOT_VERSION,
        "generated_at": now,
        "latest_timestamp": rekindle_runtime::json::LATEST_TIMESTAMP,
        "limits": {"rule": limits_json(limits.rule), "tiles": limits_json(limits.tiles)},
        // What a token must cover for the edge to answer from it: these names, and the
        // latest segment definition (the edge cannot know a membership the token does not
        // report), so its catalog must be read after this.
        "token": {"traits": traits, "aggregates": aggregates,
                  "segments_changed_at": src.store.segments_changed_at().await?},
        "plugins": plugins,
        "slots": slots,
        "offers": offers,
        "segments": segments,
    }))
}

/// The slots as the bundle reads them, each tile plugin recorded in `plugins`; a slot whose
/// plugin reads what a token does not carry cannot run at the edge.
fn slots_json(src: EdgeSources<'_>, catalog: &Catalog, plugins: &mut serde_json::Map<String, Value>) -> Result<Vec<Value>, TilesError> {
    let mut slots = Vec::new();
    let mut names: Vec<&String> = catalog.page_slots.keys().collect();
    names.sort();
    for name in names {
        let def = &catalog.page_slots[name];
        // A slot whose plugin is not loaded serves its fallback tiles, at the edge as here.
        let Ok(plugin) = src.registry.get(&def.plugin) else {
            slots.push(json!({"name": def.name, "plugin": def.plugin, "max_tiles": def.max_tiles, "params": [], "fallback": def.fallback}));
            continue;
        };
        let PluginInfo::Tiles(info) = plugin.info() else {
            return Err(TilesError::field("plugin", format!("slot `{name}`: `{}` is not a promo-tiles plugin", def.plugin)));
        };
        // A tile plugin may read segments: the token carries them.
        if !info.input.events.is_empty() || info.input.consents || info.input.contacts || reads_contact_trait(&info.input) {
            return Err(TilesError::field(
                "plugin",
                format!(
                    "slot `{name}`: `{}` reads events, consents, contacts or a contact trait (email, phone), which a token does not carry; it cannot run at the edge",
                    def.plugin
                ),
            ));
        }
        let overrides = fields_from_json(Some(&def.params), "params").map_err(|e| TilesError::field("params", e.to_string()))?;
        let params = merge_params(&info.params, &overrides).map_err(|e| TilesError::field("params", e.to_string()))?;
        plugins.insert(def.plugin.clone(), json!({"kind": "tiles", "digest": plugin.digest(), "version": info.version, "input": query_json(&info.input)}));
        slots.push(json!({
            "name": def.name, "plugin": def.plugin, "max_tiles": def.max_tiles, "params": typed_fields(&params),
            "fallback": def.fallback,
        }));
    }
    Ok(slots)
}

/// The offers in the contract's form, by slot and id; an offer conditioned on a contact
/// point cannot run at the edge.
fn offers_json(catalog: &Catalog) -> Result<Vec<Value>, TilesError> {
    let mut offers = Vec::new();
    let mut all: Vec<_> = catalog.offers.values().flatten().collect();
    all.sort_by(|a, b| (&a.offer.slot, &a.offer.id).cmp(&(&b.offer.slot, &b.offer.id)));
    for o in all {
        let offer = &o.offer;
        if let Some((name, _)) = o.traits.iter().find(|(name, _)| CONTACT_TRAITS.contains(&name.as_str())) {
            return Err(TilesError::field(
                "traits",
                format!("offer `{}` is conditioned on `{name}`, a contact point a token never carries; it cannot run at the edge", offer.id),
            ));
        }
        offers.push(json!({
            "valid_from": o.valid_from,
            "traits": typed_fields(&o.traits.iter().map(|(name, want)| Field { name: name.clone(), value: rekindle_runtime::json::value_from_json(want) }).collect::<Vec<_>>()),
            "offer": {
                "id": offer.id, "slot": offer.slot, "priority": offer.priority,
                "includeSegments": offer.include_segments, "excludeSegments": offer.exclude_segments,
                "category": offer.category, "title": offer.title, "body": offer.body, "image": offer.image,
                "link": offer.link, "voucher": offer.voucher, "holdoutPercent": offer.holdout_percent,
                "validUntil": offer.valid_until, "attributes": typed_fields(&offer.attributes),
            },
        }));
    }
    Ok(offers)
}

/// The snapshot's shape; `rekindle edge build` refuses any other, since its worker reads
/// exactly this one.
pub const SNAPSHOT_VERSION: u64 = 2;

/// What a call may use at the edge, as at the host, with the host's words for a timeout.
fn limits_json(limits: Limits) -> Value {
    json!({
        "deadline_ms": limits.deadline.as_millis() as u64,
        "memory_bytes": limits.memory_bytes,
        "output_bytes": limits.output_bytes,
        "timed_out": CallError::Timeout(limits.deadline).to_string(),
    })
}

/// Applies a fresh verdict to a membership list kept sorted by name: a member keeps the
/// date they entered, a new one enters at `now`.
pub fn apply_verdict(segments: &mut Vec<Membership>, name: &str, verdict: &Verdict, now: i64) {
    let at = segments.iter().position(|m| m.segment == name);
    match (at, verdict.member) {
        (Some(i), true) => segments[i].label = verdict.label.clone(),
        (None, true) => {
            segments.push(Membership { segment: name.to_string(), label: verdict.label.clone(), since: now });
            segments.sort_by(|a, b| a.segment.cmp(&b.segment));
        }
        (Some(i), false) => {
            segments.remove(i);
        }
        (None, false) => {}
    }
}

/// What the edge must answer for this visitor, slot and time: the edge segments
/// re-evaluated at `now`, then the slot's decision with those memberships.
pub async fn reference(src: EdgeSources<'_>, visitor: Option<&str>, slot: &str, now: i64) -> Result<Value, TilesError> {
    let store = src.store;
    let catalog = src.tiles.catalog();
    let def = catalog.page_slots.get(slot).ok_or_else(|| TilesError::NotFound(format!("no tile slot `{slot}`")))?;
    let edge = edge_segments(src.registry, store, now).await?;
    let queries = token_queries(src, &catalog, edge.iter().map(|s| &s.query));
    let mut full: Option<Profile> = match visitor {
        Some(id) => full_profile(store, queries.iter().collect(), id, now).await?,
        None => None,
    };
    let mut verdicts = Vec::new();
    if let Some(profile) = &mut full {
        for s in &edge {
            let cut = filter_profile(profile, &s.query, now);
            // Planned at `now` above, so the context already carries this time.
            let ctx = s.ctx.clone();
            match s.plugin.call(None, move |p| p.evaluate(&ctx, &cut)).await {
                Ok(verdict) => {
                    let mut segments = profile.segments.take().unwrap_or_default();
                    apply_verdict(&mut segments, &s.def.name, &verdict, now);
                    profile.segments = Some(segments);
                    let mut v = json!({"segment": s.def.name, "member": verdict.member, "label": verdict.label, "reason": verdict.reason});
                    // The cutoffs' version, so an RFM verdict says which ones it used.
                    if let Some(at) = s.cutoffs_at {
                        v["cutoffs_at"] = json!(at);
                    }
                    verdicts.push(v);
                }
                Err(e) => verdicts.push(json!({"segment": s.def.name, "error": e.to_string()})),
            }
        }
    }
    let decision = src.tiles.decide_for(src.registry, &catalog, def, Ok(full), None, now).await;
    Ok(json!({"verdicts": verdicts, "decision": decision}))
}
