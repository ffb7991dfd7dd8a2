//! A full scheduled evaluation of five seed-campaign rules over a stored demo shop, through
//! the host's batch pipeline (bulk reads, both cores, verdict writes), with the rules run
//! as sandboxed Wasm (one instance per rule per page slice, and fresh per call) and as
//! native Rust on the same pipeline and data.
//!
//! `scripts/bench-segments` builds the shop with `rekindle demo generate` through a real
//! server, then runs this with `REKINDLE_BENCH_DB` (the shop's SQLite file, copied before
//! use) and `REKINDLE_BENCH_NOW` (the demo's "today", ms).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rekindle_runtime::wit::{Placed, Profile, Verdict};
use rekindle_runtime::{CallError, Registry};
use rekindle_sdk::Rule;
use rekindle_segments::batch::{Answer, Evaluator, Plan, RunReport, WasmEvaluator, Worker, run_all};
use rekindle_store::{EventMapping, Scope, SegmentDefinition, Store};
use rekindle_tests::native::{to_sdk_context, to_sdk_profile};
use rekindle_tests::{component, components};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The five rules: slot, component.
const RULES: [(&str, &str); 5] = [
    ("lapsing-repeat-buyer", components::RULE_LAPSING_REPEAT_BUYER),
    ("win-back-window", components::RULE_WIN_BACK_WINDOW),
    ("one-time-about-to-sleep", components::RULE_ONE_TIME_ABOUT_TO_SLEEP),
    ("high-ltv", components::RULE_HIGH_LTV),
    ("abandoned-cart", components::RULE_ABANDONED_CART),
];

/// The same rules compiled into this binary.
struct NativeEvaluator;

struct NativeWorker;

impl Evaluator for NativeEvaluator {
    type Worker = NativeWorker;

    fn worker(&self, _plan: &Plan) -> NativeWorker {
        NativeWorker
    }
}

impl Worker for NativeWorker {
    fn evaluate(&mut self, plan: &Plan, index: usize, profile: &Profile) -> Result<Verdict, CallError> {
        let segment = &plan.segments[index];
        let (ctx, profile) = (to_sdk_context(&segment.ctx), to_sdk_profile(profile));
        let verdict = match segment.def.slot.as_str() {
            "lapsing-repeat-buyer" => rule_lapsing_repeat_buyer::LapsingRepeatBuyer::evaluate(&ctx, &profile),
            "win-back-window" => rule_win_back_window::WinBackWindow::evaluate(&ctx, &profile),
            "one-time-about-to-sleep" => rule_one_time_about_to_sleep::OneTimeAboutToSleep::evaluate(&ctx, &profile),
            "high-ltv" => rule_high_ltv::HighLtv::evaluate(&ctx, &profile),
            "abandoned-cart" => rule_abandoned_cart::AbandonedCart::evaluate(&ctx, &profile),
            other => unreachable!("no native rule for {other}"),
        }
        .map_err(CallError::Plugin)?;
        Ok(Verdict { member: verdict.member, reason: verdict.reason, label: verdict.label })
    }

    // As the components' `placement` export does: the same rules, lazy reasons skipped.
    fn place(&mut self, plan: &Plan, index: usize, profile: &Profile) -> Result<Answer, CallError> {
        rekindle_sdk::without_reasons(|| self.evaluate(plan, index, profile)).map(|verdict| Answer::Placed(Placed::from(verdict)))
    }
}

/// The sandboxed rules with a fresh instance for every call, as tile decisions run.
struct FreshWasmEvaluator;

struct FreshWasmWorker;

impl Evaluator for FreshWasmEvaluator {
    type Worker = FreshWasmWorker;

    fn worker(&self, _plan: &Plan) -> FreshWasmWorker {
        FreshWasmWorker
    }
}

impl Worker for FreshWasmWorker {
    fn evaluate(&mut self, plan: &Plan, index: usize, profile: &Profile) -> Result<Verdict, CallError> {
        let segment = &plan.segments[index];
        segment.plugin.evaluate(&segment.ctx, profile)
    }
}

fn line(label: &str, took: Duration, report: &RunReport) {
    let rate = report.evaluations() as f64 / took.as_secs_f64();
    println!(
        "{label:<34} {:>8.2} s  {:>9} profiles  {:>9} evaluations  {:>8} failed  {:>8} changes  {:>9.0} evaluations/s",
        took.as_secs_f64(),
        report.profiles,
        report.evaluations(),
        report.failures(),
        report.changes,
        rate
    );
}

fn main() {
    let Ok(source) = std::env::var("REKINDLE_BENCH_DB") else {
        eprintln!("set REKINDLE_BENCH_DB to a demo shop's SQLite file; scripts/bench-segments does it all");
        std::process::exit(2);
    };
    let now: i64 = std::env::var("REKINDLE_BENCH_NOW").expect("REKINDLE_BENCH_NOW, the demo's today in ms").parse().expect("ms");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("rekindle.sqlite");
    std::fs::copy(&source, &db).expect("copy the shop");
    for suffix in ["-wal", "-shm"] {
        let side = format!("{source}{suffix}");
        if std::path::Path::new(&side).exists() {
            std::fs::copy(&side, format!("{}{suffix}", db.display())).expect("copy the WAL");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    runtime.block_on(async {
        let store = Store::open_sqlite(&db, EventMapping::default()).expect("store");
        let registry = Arc::new(Registry::new(rekindle_tests::patient_runtime()));
        let mut defs = Vec::new();
        for (slot, path) in RULES {
            registry.install(slot, &component(path)).expect("install");
            let def =
                SegmentDefinition { name: slot.to_string(), slot: slot.to_string(), params: serde_json::json!({}), schedule: "daily".into(), last_run: None };
            store.upsert_segment(def.clone()).await.expect("define");
            defs.push(def);
        }
        let (plan, refused) = Plan::new(&registry, &store, &defs, now, rekindle_segments::batch::Cutoffs::Refresh).await.expect("plan");
        assert!(refused.is_empty(), "{}", refused.iter().map(|(n, e)| format!("{n}: {e}")).collect::<Vec<_>>().join("; "));
        let plan = Arc::new(plan);

        let started = Instant::now();
        let (mut profiles, mut after) = (0, String::new());
        loop {
            let page = store.rule_inputs(Scope::After { after: after.clone(), limit: 1000 }, plan.needs().clone()).await.expect("read");
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            profiles += page.len();
        }
        println!("storage reads only                 {:>8.2} s  {profiles:>9} profiles", started.elapsed().as_secs_f64());

        let timed = |label: &'static str, evaluator| {
            let (store, plan) = (&store, plan.clone());
            async move {
                let started = Instant::now();
                let report = run_all(store, plan, evaluator).await.expect("run");
                line(label, started.elapsed(), &report);
                report
            }
        };
        let first = timed("wasm, first run (all entries)", Arc::new(WasmEvaluator)).await;
        assert_eq!(first.failures(), 0);
        let native = {
            let started = Instant::now();
            let report = run_all(&store, plan.clone(), Arc::new(NativeEvaluator)).await.expect("run");
            line("native Rust, steady run", started.elapsed(), &report);
            report
        };
        // The native rules agree with the components on every profile: nothing to change.
        assert_eq!(native.changes, 0, "native verdicts differ from the Wasm ones");
        let steady = timed("wasm, steady run", Arc::new(WasmEvaluator)).await;
        assert_eq!(steady.changes, 0);
        let started = Instant::now();
        let fresh = run_all(&store, plan.clone(), Arc::new(FreshWasmEvaluator)).await.expect("run");
        line("wasm fresh instance/call, steady", started.elapsed(), &fresh);
        let members: Vec<String> = {
            let mut counts = Vec::new();
            for (slot, _) in RULES {
                let (mut n, mut after) = (0, String::new());
                loop {
                    let page = store.members(slot, &after, 10_000).await.expect("members");
                    let Some(last) = page.last() else { break };
                    after = last.profile_id.clone();
                    n += page.len();
                }
                counts.push(format!("{slot} {n}"));
            }
            counts
        };
        println!("members: {}", members.join(", "));
    });
}
