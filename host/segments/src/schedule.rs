//! Scheduled segment runs: one segment over every profile now, and the loop that runs
//! each segment when its period has passed.

use std::sync::Arc;

use rekindle_runtime::Registry;
use rekindle_store::{Clock, SegmentDefinition, Store};

use crate::batch::{Plan, WasmEvaluator, run_all};
use crate::definition::{Cutoffs, EvaluateError, period, resolve_auto_params};

/// Evaluates a segment over every stored profile at `now`, in pages on both cores.
/// Returns (evaluated, failed).
pub async fn run_segment(registry: &Registry, store: &Store, def: &SegmentDefinition, now: i64) -> Result<(usize, usize), EvaluateError> {
    let (plan, refused) = Plan::new(registry, store, std::slice::from_ref(def), now, Cutoffs::Refresh).await?;
    if let Some((_, e)) = refused.into_iter().next() {
        return Err(e);
    }
    let report = run_all(store, Arc::new(plan), Arc::new(WasmEvaluator)).await?;
    Ok((report.evaluations(), report.failures()))
}

/// Every `tick`, runs the segments whose period has passed since their last run.
pub async fn schedule_loop(
    registry: Arc<Registry>,
    store: Arc<Store>,
    clock: Clock,
    tick: std::time::Duration,
) {
    // Segments with auto cutoffs and none recorded for their parameters (defined before
    // cutoffs were recorded) get them now, at the real clock.
    match store.segments().await {
        Ok(all) => {
            for def in all {
                let recorded = store.cutoffs(&def.name).await.ok().flatten().is_some_and(|(from, _, _)| from == def.params);
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
        let segments = match store.segments().await {
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
        let (plan, refused) = match Plan::new(&registry, &store, &due, now, Cutoffs::Refresh).await {
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
        match run_all(&store, Arc::new(plan), Arc::new(WasmEvaluator)).await {
            Ok(report) => {
                for (name, (evaluated, failed)) in names.iter().zip(&report.per_segment) {
                    tracing::info!(segment = name, evaluated, failed, "scheduled run");
                    if let Err(e) = store.mark_run(name, now).await {
                        tracing::error!(segment = name, "could not record the run: {e}");
                    }
                }
                tracing::info!(profiles = report.profiles, changes = report.changes, took = ?started.elapsed(), "scheduled run finished");
            }
            Err(e) => tracing::error!("scheduled run failed: {e}"),
        }
    }
}
