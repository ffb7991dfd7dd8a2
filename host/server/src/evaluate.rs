//! Builds the contract's `Profile` for a rule from the store: only what the rule's input
//! query declares, with the computed traits as aggregates.

use rekindle_runtime::json::{fields_from_json, series_from, value_from_json};
use rekindle_runtime::wit::{Context, Field, InputQuery, Membership, Profile, Value};

use crate::batch::{Plan, WasmEvaluator, consents, contact_points};
use rekindle_runtime::{PluginInfo, Registry, filter_profile, merge_params};
use rekindle_store::{Computed, SegmentDefinition, Store, StoreError};

/// The computed traits as the aggregates rules read: times in ms, values as numbers.
pub(crate) fn aggregates(c: &Computed) -> Vec<Field> {
    let mut fields = vec![
        Field { name: "order_count".into(), value: Value::Integer(c.order_count) },
        Field { name: "lifetime_value".into(), value: Value::Number(c.lifetime_value) },
    ];
    let mut push = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            fields.push(Field { name: name.into(), value });
        }
    };
    push("first_order_at", c.first_order_at.map(Value::Integer));
    push("last_order_at", c.last_order_at.map(Value::Integer));
    push("avg_days_between_orders", c.avg_days_between_orders().map(Value::Number));
    push("favourite_category", c.favourite_category().map(Value::Text));
    fields
}

/// The profile `id` names, cut to `query` as seen at `now`; `None` when nobody matched.
pub(crate) async fn rule_profile(store: &Store, id: &str, query: &InputQuery, now: i64) -> Result<Option<Profile>, StoreError> {
    profile_at(store, id, query, now, false).await
}

/// As [`rule_profile`]; with `replay`, the computed traits are refolded from the events up
/// to `now`, so a past `now` sees the customer as they were then.
pub(crate) async fn profile_at(store: &Store, id: &str, query: &InputQuery, now: i64, replay: bool) -> Result<Option<Profile>, StoreError> {
    let Some(mut record) = store.profile(id, 0).await? else { return Ok(None) };
    if replay && !query.aggregates.is_empty() {
        record.computed = store.computed_as_of(&record.id, now).await?;
    }
    let mut events = Vec::new();
    for wanted in &query.events {
        let since = wanted
            .lookback_seconds
            .map_or(i64::MIN, |secs| now.saturating_sub(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)));
        let stored = store.events(&record.id, &wanted.name, since, now, wanted.limit).await?;
        if stored.is_empty() {
            continue;
        }
        let rows = stored
            .into_iter()
            .map(|event| {
                let properties = wanted
                    .properties
                    .iter()
                    .filter_map(|name| event.properties.get(name).map(|v| Field { name: name.clone(), value: value_from_json(v) }))
                    .collect();
                (event.timestamp, properties)
            })
            .collect();
        events.push(series_from(wanted.name.clone(), rows));
    }
    let full = Profile {
        id: record.id.clone(),
        traits: Some(record.traits.iter().map(|(name, value, _)| Field { name: name.clone(), value: value_from_json(value) }).collect()),
        events,
        consents: Some(consents(&record.consents)),
        contacts: Some(contact_points(&record.contacts)),
        segments: Some(
            store
                .memberships(&record.id)
                .await?
                .into_iter()
                .map(|m| Membership { segment: m.segment, label: m.label, since: m.since })
                .collect(),
        ),
        aggregates: Some(aggregates(&record.computed)),
        timezone: record.timezone.clone(),
    };
    Ok(Some(filter_profile(&full, query, now)))
}

/// Why a segment could not be evaluated for a profile.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The definition names a missing slot, a plugin of another kind or bad parameters.
    #[error("{0}")]
    Definition(String),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The rule trapped, timed out or returned bad output.
    #[error("the rule failed: {0}")]
    Call(#[from] rekindle_runtime::CallError),
}

/// The segment's rule context at `now`: its parameters over the rule's defaults.
pub(crate) fn segment_context(registry: &Registry, def: &SegmentDefinition, now: i64) -> Result<(std::sync::Arc<rekindle_runtime::Plugin>, Context), EvaluateError> {
    let plugin = registry.get(&def.slot).map_err(|e| EvaluateError::Definition(format!("slot: {e}")))?;
    let PluginInfo::Rule(info) = plugin.info() else {
        return Err(EvaluateError::Definition(format!("slot: `{}` holds a {} plugin, not a segment rule", def.slot, plugin.kind())));
    };
    let overrides = fields_from_json(Some(&def.params), "params").map_err(|e| EvaluateError::Definition(e.to_string()))?;
    let params = merge_params(&info.params, &overrides).map_err(|e| EvaluateError::Definition(format!("params: {e}")))?;
    Ok((plugin, Context { now, params }))
}

/// Parameters an RFM rule takes as population quintile cutoffs; `"auto"` asks the host to
/// compute them, because a plugin sees one profile at a time.
const RFM_CUTOFFS: [&str; 3] = ["recency_days_cutoffs", "frequency_cutoffs", "monetary_cutoffs"];

/// Four cutoffs splitting `values` into quintiles, as "a,b,c,d".
fn quintile_cutoffs(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let at = |k: usize| values.get(values.len() * k / 5).copied().unwrap_or(0.0);
    (1..=4).map(|k| format!("{}", (at(k) * 100.0).round() / 100.0)).collect::<Vec<_>>().join(",")
}

/// The definition with every `"auto"` RFM cutoff replaced by the population's quintiles at
/// `now`; unchanged when it asks for none.
pub(crate) async fn resolve_auto_params(store: &Store, def: &SegmentDefinition, now: i64) -> Result<SegmentDefinition, StoreError> {
    let wants_auto = RFM_CUTOFFS.iter().any(|name| def.params.get(name).and_then(|v| v.as_str()) == Some("auto"));
    if !wants_auto {
        return Ok(def.clone());
    }
    let population = store.rfm_population(now).await?;
    let columns = [
        population.iter().map(|p| p.0).collect::<Vec<_>>(),
        population.iter().map(|p| p.1).collect(),
        population.iter().map(|p| p.2).collect(),
    ];
    let mut resolved = def.clone();
    for (name, values) in RFM_CUTOFFS.iter().zip(columns) {
        if resolved.params.get(name).and_then(|v| v.as_str()) == Some("auto") {
            resolved.params[*name] = serde_json::Value::String(quintile_cutoffs(values));
        }
    }
    tracing::debug!(segment = def.name, params = %resolved.params, "RFM cutoffs for this run");
    Ok(resolved)
}

/// Evaluates a segment over every stored profile at `now`, in pages on both cores.
/// Returns (evaluated, failed).
pub(crate) async fn run_segment(registry: &Registry, store: &Store, def: &SegmentDefinition, now: i64) -> Result<(usize, usize), EvaluateError> {
    let (plan, refused) = Plan::new(registry, store, std::slice::from_ref(def), now).await?;
    if let Some((_, e)) = refused.into_iter().next() {
        return Err(e);
    }
    let report = crate::batch::run_all(store, std::sync::Arc::new(plan), std::sync::Arc::new(WasmEvaluator)).await?;
    Ok((report.evaluations(), report.failures()))
}

/// How often a schedule re-evaluates everyone. Real-time segments are also swept, since
/// some change with time alone (a cart becomes abandoned 30 minutes after the last event).
pub(crate) fn period(schedule: &str) -> i64 {
    const MINUTE: i64 = 60_000;
    match schedule {
        "realtime" => 15 * MINUTE,
        "weekly" => 7 * 24 * 60 * MINUTE,
        "biweekly" => 14 * 24 * 60 * MINUTE,
        _ => 24 * 60 * MINUTE,
    }
}

/// Every `tick`, runs the segments whose period has passed since their last run.
pub(crate) async fn schedule_loop(
    registry: std::sync::Arc<Registry>,
    ingestion: std::sync::Arc<crate::Ingestion>,
    clock: crate::Clock,
    tick: std::time::Duration,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let segments = match ingestion.store.segments().await {
            Ok(all) => all,
            Err(e) => {
                tracing::error!("the scheduler cannot read segments: {e}");
                continue;
            }
        };
        // Every due segment goes into one run, so each page of profiles is read once.
        let now = clock.now();
        let due: Vec<_> = segments.into_iter().filter(|def| def.last_run.is_none_or(|at| now - at >= period(&def.schedule))).collect();
        if due.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let (plan, refused) = match Plan::new(&registry, &ingestion.store, &due, now).await {
            Ok(planned) => planned,
            Err(e) => {
                tracing::error!("the scheduler cannot plan a run: {e}");
                continue;
            }
        };
        for (segment, e) in refused {
            tracing::error!(segment, "scheduled run skipped: {e}");
        }
        let names: Vec<String> = plan.segments.iter().map(|s| s.def.name.clone()).collect();
        match crate::batch::run_all(&ingestion.store, std::sync::Arc::new(plan), std::sync::Arc::new(WasmEvaluator)).await {
            Ok(report) => {
                for (name, (evaluated, failed)) in names.iter().zip(&report.per_segment) {
                    tracing::info!(segment = name, evaluated, failed, "scheduled run");
                    if let Err(e) = ingestion.store.mark_run(name, now).await {
                        tracing::error!(segment = name, "could not record the run: {e}");
                    }
                }
                tracing::info!(profiles = report.profiles, changes = report.changes, took = ?started.elapsed(), "scheduled run finished");
            }
            Err(e) => tracing::error!("scheduled run failed: {e}"),
        }
    }
}

/// Re-evaluates the real-time segments of the people ingested messages touched, in the
/// background, so ingestion is acknowledged without waiting for rules.
pub(crate) async fn realtime_loop(
    registry: std::sync::Arc<Registry>,
    ingestion: std::sync::Arc<crate::Ingestion>,
    clock: crate::Clock,
    mut touched: tokio::sync::mpsc::UnboundedReceiver<Vec<rekindle_store::Touch>>,
) {
    while let Some(mut touches) = touched.recv().await {
        // Take everything already queued, so a burst is evaluated once per person.
        while let Ok(more) = touched.try_recv() {
            touches.extend(more);
        }
        let segments = match ingestion.store.segments().await {
            Ok(all) => all.into_iter().filter(|s| s.schedule == "realtime").collect::<Vec<_>>(),
            Err(e) => {
                tracing::error!("real-time evaluation cannot read segments: {e}");
                continue;
            }
        };
        let now = clock.now();
        let (plan, refused) = match Plan::new(&registry, &ingestion.store, &segments, now).await {
            Ok(planned) => planned,
            Err(e) => {
                tracing::error!("real-time evaluation cannot plan: {e}");
                continue;
            }
        };
        for (segment, e) in refused {
            tracing::warn!(segment, "real-time evaluation skipped a segment: {e}");
        }
        let mut ids: Vec<String> = touches.into_iter().filter(|t| plan.reads(t)).map(|t| t.profile_id).collect();
        ids.sort();
        ids.dedup();
        let (people, started) = (ids.len(), std::time::Instant::now());
        match crate::batch::run_ids(&ingestion.store, std::sync::Arc::new(plan), std::sync::Arc::new(WasmEvaluator), ids).await {
            Ok(report) => tracing::debug!(people, changes = report.changes, took = ?started.elapsed(), "real-time evaluation"),
            Err(e) => tracing::error!("real-time evaluation failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quintile_cutoffs_split_the_population() {
        assert_eq!(quintile_cutoffs((1..=10).map(f64::from).collect()), "3,5,7,9");
        assert_eq!(quintile_cutoffs(vec![]), "0,0,0,0");
    }
}
