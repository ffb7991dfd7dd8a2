//! Builds the contract's `Profile` for a rule from the store: only what the rule's input
//! query declares, with the computed traits as aggregates.

use std::collections::{HashMap, HashSet, VecDeque};

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

/// Gives a JSON input's `profile` (as `/admin/slots/{slot}/invoke` and `rekindle plugin
/// run` take it) the aggregates the host would compute from its order events, when it has
/// events and names no aggregates of its own: a rule reading `order_count` sees the orders
/// the case lists, as it would once they were ingested.
pub fn derive_aggregates(input: &mut serde_json::Value) {
    let Some(profile) = input.get_mut("profile").and_then(serde_json::Value::as_object_mut) else { return };
    if profile.contains_key("aggregates") {
        return;
    }
    let Some(events) = profile.get("events").and_then(serde_json::Value::as_array) else { return };
    let mapping = rekindle_store::EventMapping::default();
    if !events.iter().any(|e| e.get("name").and_then(serde_json::Value::as_str) == Some(mapping.order_completed.as_str())) {
        return;
    }
    let mut computed = Computed::default();
    for event in events {
        if event.get("name").and_then(serde_json::Value::as_str) != Some(mapping.order_completed.as_str()) {
            continue;
        }
        // A malformed event is the profile parser's to report, with its path.
        let Ok(at) = rekindle_runtime::json::timestamp_from_json(event.get("timestamp"), "timestamp") else { return };
        let empty = serde_json::Map::new();
        computed.add_order(&mapping, at, event.get("properties").and_then(serde_json::Value::as_object).unwrap_or(&empty));
    }
    profile.insert("aggregates".into(), rekindle_runtime::json::fields_to_json(&aggregates(&computed)));
}

/// The profile `id` names, cut to `query` as seen at `now`, `None` when nobody matched;
/// with `replay`, the computed traits are refolded from the events up
/// to `now`, so a past `now` sees the customer as they were then.
pub(crate) async fn profile_at(store: &Store, id: &str, query: &InputQuery, now: i64, replay: bool) -> Result<Option<Profile>, StoreError> {
    let Some(mut record) = store.profile(id, 0).await? else { return Ok(None) };
    if replay && !query.aggregates.is_empty() {
        record.computed = store.computed_as_of(&record.id, now).await?;
    }
    let mut events = Vec::new();
    for wanted in &query.events {
        let since = rekindle_runtime::event_since(wanted, now);
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
/// Where a run takes `auto` RFM cutoffs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoffs {
    /// Those recorded on the segment's schedule, so every evaluation between two
    /// scheduled runs (real time, reference decisions, the edge's bundle, other hosts on
    /// the same database) uses the same ones; computed for this run only while there are
    /// none for the segment's current parameters (the scheduler records them at start).
    /// Never recorded from here: an admin read at a chosen `now` must not set them.
    Recorded,
    /// Computed afresh at `now` and recorded: a scheduled run, a segment's first, a run
    /// asked for now.
    Refresh,
    /// Computed at `now` for this run only: a preview of another time.
    AtNow,
}

/// The definition with its `auto` parameters resolved, and when those cutoffs were
/// computed (`None` for a definition without any).
pub(crate) async fn resolve_auto_params(store: &Store, def: &SegmentDefinition, now: i64, cutoffs: Cutoffs) -> Result<(SegmentDefinition, Option<i64>), StoreError> {
    let wants_auto = RFM_CUTOFFS.iter().any(|name| def.params.get(name).and_then(|v| v.as_str()) == Some("auto"));
    if !wants_auto {
        return Ok((def.clone(), None));
    }
    if cutoffs == Cutoffs::Recorded
        && let Some((from, resolved, at)) = store.cutoffs(&def.name).await?
        && from == def.params
    {
        return Ok((SegmentDefinition { params: resolved, ..def.clone() }, Some(at)));
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
    if cutoffs == Cutoffs::Refresh {
        store.record_cutoffs(&def.name, &def.params, &resolved.params, now).await?;
    }
    Ok((resolved, Some(now)))
}

/// Evaluates a segment over every stored profile at `now`, in pages on both cores.
/// Returns (evaluated, failed).
pub(crate) async fn run_segment(registry: &Registry, store: &Store, def: &SegmentDefinition, now: i64) -> Result<(usize, usize), EvaluateError> {
    let (plan, refused) = Plan::new(registry, store, std::slice::from_ref(def), now, Cutoffs::Refresh).await?;
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
    // Segments with auto cutoffs and none recorded for their parameters (defined before
    // cutoffs were recorded) get them now, at the real clock.
    match ingestion.store.segments().await {
        Ok(all) => {
            for def in all {
                let recorded = ingestion.store.cutoffs(&def.name).await.ok().flatten().is_some_and(|(from, _, _)| from == def.params);
                if !recorded && let Err(e) = resolve_auto_params(&ingestion.store, &def, clock.now(), Cutoffs::Refresh).await {
                    tracing::error!(segment = def.name, "could not record RFM cutoffs: {e}");
                }
            }
        }
        Err(e) => tracing::error!("the scheduler cannot read segments: {e}"),
    }
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
        let (plan, refused) = match Plan::new(&registry, &ingestion.store, &due, now, Cutoffs::Refresh).await {
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

/// People read and evaluated together on the real-time path. Small, so the people touched
/// first are written first instead of waiting for everyone touched since; large enough to
/// use both cores.
const REALTIME_CHUNK: usize = 64;

/// Real-time verdict writes waiting to commit at once; more means the store is behind, and
/// reading on would only queue more.
const MAX_WRITES_IN_FLIGHT: usize = 4;

/// How long the real-time loop waits before retrying after the store failed it.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// How long real-time passes reuse RFM cutoffs: a population scan per pass would cost more
/// than the pass, and quintiles drift slowly.
const AUTO_PARAMS_FOR: i64 = 10 * 60_000;

/// Re-evaluates the real-time segments of the people ingested messages touched, in the
/// background, so ingestion is acknowledged without waiting for rules.
///
/// People wait in one queue in the order they were first touched, each once however many
/// events arrive meanwhile. They are taken a chunk at a time: a chunk is read while the
/// previous chunk's verdicts are being written, and a person whose verdict is still being
/// written waits for the next chunk, so no read sees a membership about to change.
pub(crate) async fn realtime_loop(
    registry: std::sync::Arc<Registry>,
    ingestion: std::sync::Arc<crate::Ingestion>,
    clock: crate::Clock,
    mut touched: tokio::sync::mpsc::UnboundedReceiver<Vec<rekindle_store::Touch>>,
) {
    let store = &ingestion.store;
    let mut waiting = Waiting::default();
    let mut auto_params = AutoParams::default();
    // Verdict writes in flight, with the people each changes. Writes for different people
    // may commit in any order; nobody is read again until their write has committed.
    let mut writing: VecDeque<(VerdictWrite, HashSet<String>)> = VecDeque::new();
    loop {
        while writing.front().is_some_and(|(write, _)| write.is_finished()) {
            finish_oldest(&mut writing, &mut waiting).await;
        }
        let mut arrived = Vec::new();
        if waiting.queue.is_empty() {
            // Nothing to read: let the writes finish, then sleep until someone is touched.
            if !writing.is_empty() {
                finish_oldest(&mut writing, &mut waiting).await;
                continue;
            }
            match touched.recv().await {
                Some(touches) => arrived.extend(touches),
                None => return,
            }
        }
        while let Ok(more) = touched.try_recv() {
            arrived.extend(more);
        }
        let now = clock.now();
        let plan = match realtime_plan(&registry, store, &mut auto_params, now).await {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!("real-time evaluation cannot plan: {e}");
                // Everyone touched stays queued for when the store answers again.
                waiting.push_back(arrived.into_iter().map(|t| t.profile_id));
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        waiting.push_back(arrived.into_iter().filter(|t| plan.reads(t)).map(|t| t.profile_id));
        let chunk = waiting.take(REALTIME_CHUNK, |id| writing.iter().any(|(_, ids)| ids.contains(id)));
        if chunk.is_empty() {
            // Everyone waiting is being written: wait for the oldest write.
            finish_oldest(&mut writing, &mut waiting).await;
            continue;
        }
        let (people, started) = (chunk.len(), std::time::Instant::now());
        let writes = match crate::batch::evaluate_ids(store, std::sync::Arc::new(plan), std::sync::Arc::new(WasmEvaluator), chunk.clone()).await {
            Ok((writes, report)) => {
                tracing::debug!(people, evaluations = report.evaluations(), writes = writes.len(), took = ?started.elapsed(), "real-time evaluation");
                writes
            }
            Err(e) => {
                tracing::error!("real-time evaluation failed: {e}");
                waiting.push_front(chunk);
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        if writing.len() >= MAX_WRITES_IN_FLIGHT {
            finish_oldest(&mut writing, &mut waiting).await;
        }
        if !writes.is_empty() {
            let ids = writes.iter().map(|w| w.profile_id.clone()).collect();
            let ingestion = ingestion.clone();
            writing.push_back((tokio::spawn(async move { ingestion.store.record_verdicts(writes, now).await }), ids));
        }
    }
}

/// Resolved definitions by segment name, with the parameters they were resolved from and when.
type AutoParams = HashMap<String, (serde_json::Value, i64, SegmentDefinition)>;

/// The real-time segments planned at `now`, with RFM cutoffs reused from `cache` while fresh.
async fn realtime_plan(registry: &Registry, store: &Store, cache: &mut AutoParams, now: i64) -> Result<Plan, StoreError> {
    let mut resolved = Vec::new();
    for def in store.segments().await?.into_iter().filter(|s| s.schedule == "realtime") {
        match cache.get(&def.name) {
            Some((params, at, done)) if *params == def.params && now - at < AUTO_PARAMS_FOR && done.slot == def.slot => resolved.push(done.clone()),
            _ => match resolve_auto_params(store, &def, now, Cutoffs::Recorded).await {
                Ok((done, _)) => {
                    cache.insert(def.name.clone(), (def.params.clone(), now, done.clone()));
                    resolved.push(done);
                }
                Err(e) => tracing::error!(segment = def.name, "real-time evaluation cannot resolve parameters: {e}"),
            },
        }
    }
    let (plan, refused) = Plan::new(registry, store, &resolved, now, Cutoffs::Recorded).await?;
    for (segment, e) in refused {
        tracing::warn!(segment, "real-time evaluation skipped a segment: {e}");
    }
    Ok(plan)
}

/// A real-time verdict write in flight: how many entries and exits it made.
type VerdictWrite = tokio::task::JoinHandle<Result<usize, StoreError>>;

/// People waiting for real-time evaluation, in the order they were first touched, each once.
#[derive(Default)]
struct Waiting {
    queue: VecDeque<String>,
    queued: HashSet<String>,
}

impl Waiting {
    /// Adds people at the back, unless already waiting.
    fn push_back(&mut self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            if self.queued.insert(id.clone()) {
                self.queue.push_back(id);
            }
        }
    }

    /// Puts people back at the front, in their order, unless already waiting.
    fn push_front(&mut self, ids: Vec<String>) {
        for id in ids.into_iter().rev() {
            if self.queued.insert(id.clone()) {
                self.queue.push_front(id);
            }
        }
    }

    /// Takes up to `n` people from the front, leaving those `busy` says to skip in place.
    fn take(&mut self, n: usize, busy: impl Fn(&String) -> bool) -> Vec<String> {
        let (mut chunk, mut later) = (Vec::with_capacity(n), Vec::new());
        while chunk.len() < n {
            let Some(id) = self.queue.pop_front() else { break };
            if busy(&id) { later.push(id) } else { chunk.push(id) }
        }
        for id in later.into_iter().rev() {
            self.queue.push_front(id);
        }
        for id in &chunk {
            self.queued.remove(id);
        }
        chunk
    }
}

/// Waits for the oldest verdict write in flight, if any, and logs how it went; the people of
/// a failed one go back to the front of the queue, to be evaluated and written again after
/// a pause.
async fn finish_oldest(writing: &mut VecDeque<(VerdictWrite, HashSet<String>)>, waiting: &mut Waiting) {
    let Some((write, ids)) = writing.pop_front() else { return };
    let failure = match write.await {
        Ok(Ok(changes)) => {
            tracing::debug!(changes, "real-time verdicts written");
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::error!(people = ids.len(), "real-time verdicts could not be written, will retry: {failure}");
    waiting.push_front(ids.into_iter().collect());
    tokio::time::sleep(RETRY_AFTER).await;
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
