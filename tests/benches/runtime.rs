//! The lapsing rule on a realistic profile (20 orders among 200 events, cut by the declared
//! input filter), natively and through the Wasm plugin, reused and fresh per call; then
//! 1,000 hot swaps under two calling threads.
//!
//! `cargo bench -p rekindle-tests --bench runtime`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use rekindle_runtime::{Plugin, PluginInfo, Registry, Runtime, RuntimeConfig, filter_profile, merge_params};
use rekindle_sdk::Rule;
use rekindle_tests::native::{to_sdk_context, to_sdk_profile};
use rekindle_tests::{DAY, component, components, context, realistic_profile};
use rule_lapsing_repeat_buyer::LapsingRepeatBuyer;

fn lapsing(c: &mut Criterion) {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("engine");
    let plugin = Plugin::load(&runtime, &component(components::RULE_LAPSING_REPEAT_BUYER)).expect("plugin");
    let PluginInfo::Rule(info) = plugin.info() else { unreachable!() };
    let now = 800 * DAY;
    let mut ctx = context(now, &[]);
    ctx.params = merge_params(&info.params, &[]).expect("defaults");
    let full = realistic_profile(now);
    let cut = filter_profile(&full, &info.input, now);
    let (native_ctx, native_profile) = (to_sdk_context(&ctx), to_sdk_profile(&cut));

    let mut group = c.benchmark_group("lapsing");
    group.bench_function("native", |b| b.iter(|| LapsingRepeatBuyer::evaluate(black_box(&native_ctx), black_box(&native_profile))));
    let mut instance = plugin.rule_instance().expect("instance");
    group.bench_function("wasm-reused-instance", |b| b.iter(|| instance.evaluate(black_box(&ctx), black_box(&cut)).expect("verdict")));
    group.bench_function("wasm-fresh-instance", |b| b.iter(|| plugin.evaluate(black_box(&ctx), black_box(&cut)).expect("verdict")));
    group.bench_function("declared-input-filter", |b| b.iter(|| filter_profile(black_box(&full), &info.input, now)));
    group.bench_function("wasm-fresh-instance-unfiltered", |b| b.iter(|| plugin.evaluate(black_box(&ctx), black_box(&full)).expect("verdict")));
    group.finish();
}

/// 1,000 activations alternating two versions while two threads call without pause.
fn hot_swap() {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("engine");
    let registry = Registry::new(runtime);
    let rule = component(components::RULE_LAPSING_REPEAT_BUYER);
    let mut rule_b = rule.clone();
    rule_b.extend_from_slice(&[0, 3, 1, b'x', b'y']);
    registry.install("lapsing", &rule).expect("v1");
    let v2 = registry.upload("lapsing", &rule_b).expect("v2").version;
    let now = 800 * DAY;
    let PluginInfo::Rule(info) = registry.get("lapsing").expect("active").info().clone() else { unreachable!() };
    let mut ctx = context(now, &[]);
    ctx.params = merge_params(&info.params, &[]).expect("defaults");
    let profile = filter_profile(&realistic_profile(now), &info.input, now);
    let (stop, ok, failed) = (Arc::new(AtomicBool::new(false)), AtomicUsize::new(0), AtomicUsize::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match registry.get("lapsing").and_then(|p| p.evaluate(&ctx, &profile)) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        for i in 0..1000 {
            registry.activate("lapsing", if i % 2 == 0 { v2 } else { 1 }).expect("activate");
            // Space the swaps so calls interleave with them rather than all landing after.
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        stop.store(true, Ordering::Relaxed);
    });
    println!(
        "hot-swap: 1000 swaps in {:.2?} under 2 calling threads: {} calls ok, {} failed",
        started.elapsed(),
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a call failed during hot swaps");
}

criterion_group!(benches, lapsing);

fn main() {
    benches();
    hot_swap();
    Criterion::default().configure_from_args().final_summary();
}
