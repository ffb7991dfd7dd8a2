//! Scheduled segment runs: one segment over every profile now, and the loop that runs
//! each segment when its period has passed.

use std::sync::Arc;

use rekindle_runtime::Registry;
use rekindle_store::{Clock, Lease, SegmentDefinition, Store, StoreError};

use crate::batch::{Plan, RunReport, WasmEvaluator, run_all};
use crate::definition::{Cutoffs, EvaluateError, period, resolve_auto_params};

/// What one run did: the batch's report, the segments it ran in its order, and those whose
/// run could not be recorded (they run again at the next tick).
pub struct SegmentRun {
    pub report: RunReport,
    pub segments: Vec<String>,
    pub unrecorded: Vec<(String, StoreError)>,
}

/// Runs planned segments over every stored profile, in pages on both cores, each page read
/// once for all of them, and records each segment as run at the plan's time. The schedule,
/// a new segment's backfill, the API's run-now and the CLI's simulation all run this way.
pub async fn run_planned(store: &Store, plan: Plan) -> Result<SegmentRun, StoreError> {
    let now = plan.now;
    let segments: Vec<String> = plan.segments.iter().map(|s| s.def.name.clone()).collect();
    let report = run_all(store, Arc::new(plan), Arc::new(WasmEvaluator)).await?;
    let mut unrecorded = Vec::new();
    for name in &segments {
        if let Err(e) = store.mark_run(name, now).await {
            unrecorded.push((name.clone(), e));
        }
    }
    Ok(SegmentRun { report, segments, unrecorded })
}

/// One segment of a run asked for now, and its members after it.
pub struct SegmentOutcome {
    pub segment: String,
    pub evaluated: usize,
    pub failed: usize,
    pub members: usize,
}

/// What running segments now did.
pub struct RunNow {
    pub profiles: usize,
    pub changes: usize,
    pub segments: Vec<SegmentOutcome>,
}

/// Runs `defs` over everyone now, as their schedule would, with RFM cutoffs refreshed (they
/// become the ones everything else uses); none runs if one cannot.
pub async fn run_now(registry: &Registry, store: &Store, defs: &[SegmentDefinition], now: i64) -> Result<RunNow, EvaluateError> {
    let (plan, refused) = Plan::new(registry, store, defs, now, Cutoffs::Refresh).await?;
    if let Some((segment, reason)) = refused.into_iter().next() {
        return Err(EvaluateError::Refused { segment, reason: Box::new(reason) });
    }
    let SegmentRun { report, segments, unrecorded } = run_planned(store, plan).await?;
    if let Some((_, e)) = unrecorded.into_iter().next() {
        return Err(e.into());
    }
    let mut outcomes = Vec::new();
    for (segment, (evaluated, failed)) in segments.into_iter().zip(report.per_segment) {
        let members = member_count(store, &segment).await?;
        outcomes.push(SegmentOutcome { segment, evaluated, failed, members });
    }
    Ok(RunNow { profiles: report.profiles, changes: report.changes, segments: outcomes })
}

/// Evaluates a segment over every stored profile at `now`, rebuilding every stored reason,
/// and records the run. Returns (evaluated, failed).
pub async fn run_segment(registry: &Registry, store: &Store, def: &SegmentDefinition, now: i64) -> Result<(usize, usize), EvaluateError> {
    let (mut plan, refused) = Plan::new(registry, store, std::slice::from_ref(def), now, Cutoffs::Refresh).await?;
    if let Some((_, e)) = refused.into_iter().next() {
        return Err(e);
    }
    // New parameters can change every member's reason without changing a membership.
    plan.refresh_reasons = true;
    let run = run_planned(store, plan).await?;
    if let Some((_, e)) = run.unrecorded.into_iter().next() {
        return Err(e.into());
    }
    Ok((run.report.evaluations(), run.report.failures()))
}

/// What defining a segment did: its backfill over every stored profile.
pub struct Backfill {
    pub evaluated: usize,
    pub failed: usize,
    pub members: usize,
}

/// Stores a definition (checked by [`crate::definition::parse_definition`]) and backfills
/// it over every stored profile at `now`, recorded as its first run.
pub async fn define(registry: &Registry, store: &Store, def: &SegmentDefinition, now: i64) -> Result<Backfill, EvaluateError> {
    store.upsert_segment(def.clone()).await?;
    let (evaluated, failed) = run_segment(registry, store, def, now).await?;
    let members = member_count(store, &def.name).await?;
    Ok(Backfill { evaluated, failed, members })
}

/// How many members a segment has now.
pub async fn member_count(store: &Store, segment: &str) -> Result<usize, StoreError> {
    let (mut after, mut count) = (String::new(), 0);
    loop {
        let page = store.members(segment, &after, 1000).await?;
        let Some(last) = page.last() else { return Ok(count) };
        count += page.len();
        after = last.profile_id.clone();
    }
}

/// The lease under which one host at a time runs the scheduled segments of a shared store.
const SCHEDULE_LEASE: &str = "segments:schedule";
const SCHEDULE_LEASE_AT_LEAST: i64 = 10 * 60_000;

/// Every `tick`, runs the segments whose period has passed since their last run. Of hosts
/// sharing a store, the one holding the schedule's lease runs them, so each scheduled run
/// happens once; real-time evaluation stays on every host.
pub async fn schedule_loop(registry: Arc<Registry>, store: Arc<Store>, clock: Clock, tick: std::time::Duration, lease: Lease) {
    // A run can outlast a run lease; a host that dies holding this one delays the next
    // scheduled run (hourly at the most) by no more than this.
    let lease = Lease { length_ms: lease.length_ms.max(SCHEDULE_LEASE_AT_LEAST), ..lease };
    // Segments with auto cutoffs and none recorded for their parameters (defined before
    // cutoffs were recorded) get them now, at the real clock.
    match store.segments().await {
        Ok(all) => {
            for def in all {
                let recorded = store.cutoffs(&def.name).await.ok().flatten().is_some_and(|recorded| recorded.from == def.params);
                if !recorded && let Err(e) = resolve_auto_params(&store, &def, clock.now(), Cutoffs::Refresh).await {
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
        match store.take_lease(SCHEDULE_LEASE, &lease).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!("the scheduler cannot take its lease: {e}");
                continue;
            }
        }
        run_due(&registry, &store, clock.now()).await;
        if let Err(e) = store.release_lease(SCHEDULE_LEASE, &lease.owner).await {
            tracing::error!("the scheduler cannot release its lease: {e}");
        }
    }
}

/// Runs the segments whose period has passed at `now`, all in one run, so each page of
/// profiles is read once; what fails is logged.
async fn run_due(registry: &Registry, store: &Store, now: i64) {
    let segments = match store.segments().await {
        Ok(all) => all,
        Err(e) => {
            tracing::error!("the scheduler cannot read segments: {e}");
            return;
        }
    };
    // Every due segment goes into one run, so each page of profiles is read once.
    let due: Vec<_> = segments.into_iter().filter(|def| def.last_run.is_none_or(|at| now - at >= period(&def.schedule))).collect();
    if due.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let (plan, refused) = match Plan::new(registry, store, &due, now, Cutoffs::Refresh).await {
        Ok(planned) => planned,
        Err(e) => {
            tracing::error!("the scheduler cannot plan a run: {e}");
            return;
        }
    };
    for (segment, e) in refused {
        tracing::error!(segment, "scheduled run skipped: {e}");
    }
    match run_planned(store, plan).await {
        Ok(SegmentRun { report, segments, unrecorded }) => {
            for (name, (evaluated, failed)) in segments.iter().zip(&report.per_segment) {
                tracing::info!(segment = name, evaluated, failed, "scheduled run");
            }
            for (name, e) in unrecorded {
                tracing::error!(segment = name, "could not record the run: {e}");
            }
            tracing::info!(profiles = report.profiles, changes = report.changes, took = ?started.elapsed(), "scheduled run finished");
        }
        Err(e) => tracing::error!("scheduled run failed: {e}"),
    }
}
