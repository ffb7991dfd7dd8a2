//! Builds the contract's `Profile` for a rule from the store: only what the rule's input
//! query declares, with the computed traits as aggregates.

use rekindle_runtime::json::{fields_from_json, series_from, value_from_json};
use rekindle_runtime::wit::{Consent, ContactKind, ContactPoint, Context, Field, InputQuery, Membership, Profile, Purpose, Value};
use rekindle_runtime::{PluginInfo, Registry, filter_profile, merge_params};
use rekindle_store::{Change, Computed, SegmentDefinition, Store, StoreError};

fn purpose(p: rekindle_store::Purpose) -> Purpose {
    match p {
        rekindle_store::Purpose::Email => Purpose::Email,
        rekindle_store::Purpose::Sms => Purpose::Sms,
        rekindle_store::Purpose::Push => Purpose::Push,
        rekindle_store::Purpose::Ads => Purpose::Ads,
    }
}

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
        consents: Some(
            record.consents.iter().map(|c| Consent { purpose: purpose(c.purpose), granted: c.granted, updated_at: c.updated_at }).collect(),
        ),
        contacts: Some(
            record
                .contacts
                .iter()
                .filter_map(|c| {
                    let kind = match c.kind.as_str() {
                        "email" => ContactKind::Email,
                        "phone" => ContactKind::Phone,
                        "push_token" => ContactKind::PushToken,
                        _ => return None,
                    };
                    Some(ContactPoint { kind, address: c.address.clone(), active: c.active })
                })
                .collect(),
        ),
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
pub(crate) enum EvaluateError {
    #[error("{0}")]
    Definition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
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

/// Evaluates one segment for one profile and records the verdict; `None` when the profile
/// does not exist or nothing changed.
pub(crate) async fn evaluate_segment(
    registry: &Registry,
    store: &Store,
    def: &SegmentDefinition,
    profile_id: &str,
    now: i64,
) -> Result<Option<Change>, EvaluateError> {
    let (plugin, ctx) = segment_context(registry, def, now)?;
    let PluginInfo::Rule(info) = plugin.info() else { unreachable!("checked by segment_context") };
    let Some(profile) = rule_profile(store, profile_id, &info.input, now).await? else { return Ok(None) };
    let id = profile.id.clone();
    let call = plugin.clone();
    let verdict = tokio::task::spawn_blocking(move || call.evaluate(&ctx, &profile))
        .await
        .map_err(|e| EvaluateError::Definition(format!("evaluation task failed: {e}")))??;
    // Most verdicts change nothing; checking with a read first spares the writer, which
    // re-checks inside its transaction whenever something does change.
    let current = store.membership(&def.name, &id).await?;
    let unchanged = match &current {
        None => !verdict.member,
        Some(m) => verdict.member && m.label == verdict.label && m.reason == verdict.reason && m.digest == plugin.digest(),
    };
    if unchanged {
        return Ok(None);
    }
    Ok(store
        .record_verdict(&def.name, &id, verdict.member, verdict.label, verdict.reason, plugin.digest().to_string(), now)
        .await?)
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

/// Evaluates a segment over every stored profile at `now`, two profiles at a time so both
/// cores work (each call runs on a blocking thread). Returns (evaluated, failed).
pub(crate) async fn run_segment(registry: &Registry, store: &Store, def: &SegmentDefinition, now: i64) -> Result<(usize, usize), StoreError> {
    let def = &resolve_auto_params(store, def, now).await?;
    let (mut after, mut evaluated, mut failed) = (String::new(), 0usize, 0usize);
    loop {
        let page = store.profile_ids(&after, 500).await?;
        let Some(last) = page.last().cloned() else { break };
        let (left, right) = page.split_at(page.len() / 2);
        let lane = |ids: &'_ [String]| {
            let ids = ids.to_vec();
            async move {
                let (mut ok, mut bad) = (0, 0);
                for id in &ids {
                    match evaluate_segment(registry, store, def, id, now).await {
                        Ok(_) => ok += 1,
                        Err(e) => {
                            bad += 1;
                            tracing::warn!(segment = def.name, "evaluation skipped a profile: {e}");
                        }
                    }
                }
                (ok, bad)
            }
        };
        let ((a_ok, a_bad), (b_ok, b_bad)) = tokio::join!(lane(left), lane(right));
        evaluated += a_ok + b_ok;
        failed += a_bad + b_bad;
        after = last;
    }
    Ok((evaluated, failed))
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
        for def in segments {
            let now = clock.now();
            if def.last_run.is_some_and(|at| now - at < period(&def.schedule)) {
                continue;
            }
            match run_segment(&registry, &ingestion.store, &def, now).await {
                Ok((evaluated, failed)) => {
                    tracing::info!(segment = def.name, evaluated, failed, "scheduled run");
                    if let Err(e) = ingestion.store.mark_run(&def.name, now).await {
                        tracing::error!(segment = def.name, "could not record the run: {e}");
                    }
                }
                Err(e) => tracing::error!(segment = def.name, "scheduled run failed: {e}"),
            }
        }
    }
}

/// Re-evaluates the real-time segments of the people ingested messages touched, in the
/// background, so ingestion is acknowledged without waiting for rules.
pub(crate) async fn realtime_loop(
    registry: std::sync::Arc<Registry>,
    ingestion: std::sync::Arc<crate::Ingestion>,
    clock: crate::Clock,
    mut touched: tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
) {
    while let Some(mut ids) = touched.recv().await {
        // Take everything already queued, so a burst is evaluated once per person.
        while let Ok(more) = touched.try_recv() {
            ids.extend(more);
        }
        ids.sort();
        ids.dedup();
        let segments = match ingestion.store.segments().await {
            Ok(all) => all.into_iter().filter(|s| s.schedule == "realtime").collect::<Vec<_>>(),
            Err(e) => {
                tracing::error!("real-time evaluation cannot read segments: {e}");
                continue;
            }
        };
        let now = clock.now();
        for def in &segments {
            let def = match resolve_auto_params(&ingestion.store, def, now).await {
                Ok(def) => def,
                Err(e) => {
                    tracing::error!(segment = def.name, "real-time evaluation cannot compute cutoffs: {e}");
                    continue;
                }
            };
            let def = &def;
            for id in &ids {
                if let Err(e) = evaluate_segment(&registry, &ingestion.store, def, id, now).await {
                    tracing::warn!(segment = def.name, "real-time evaluation skipped a profile: {e}");
                }
            }
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
