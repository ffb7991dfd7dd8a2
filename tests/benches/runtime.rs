//! The lapsing rule on a realistic profile (20 orders among 200 events, cut by the declared
//! input filter), natively, through the Wasm plugin reused and fresh per call, and as the
//! same rule in Lua 5.4 (mlua) with a reused and a fresh state, the embedded-scripting
//! peer; then 1,000 hot swaps under two calling threads.
//!
//! `cargo bench -p rekindle-tests --bench runtime`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use rekindle_runtime::wit::{Profile, Value};
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
    group.bench_function("native-no-reason", |b| {
        b.iter(|| rekindle_sdk::without_reasons(|| LapsingRepeatBuyer::evaluate(black_box(&native_ctx), black_box(&native_profile))))
    });
    let mut instance = plugin.rule_instance().expect("instance");
    assert!(plugin.can_place(), "the SDK builds the placement export");
    group.bench_function("wasm-reused-instance", |b| b.iter(|| instance.evaluate(black_box(&ctx), black_box(&cut)).expect("verdict")));
    // What a batch or real-time run asks of everyone: membership and label, no reason.
    group.bench_function("wasm-reused-instance-place", |b| b.iter(|| instance.place(black_box(&ctx), black_box(&cut)).expect("placed")));
    group.bench_function("wasm-fresh-instance", |b| b.iter(|| plugin.evaluate(black_box(&ctx), black_box(&cut)).expect("verdict")));
    group.bench_function("wasm-fresh-instance-place", |b| b.iter(|| plugin.place(black_box(&ctx), black_box(&cut)).expect("placed")));
    group.bench_function("declared-input-filter", |b| b.iter(|| filter_profile(black_box(&full), &info.input, now)));
    group.bench_function("wasm-fresh-instance-unfiltered", |b| b.iter(|| plugin.evaluate(black_box(&ctx), black_box(&full)).expect("verdict")));

    // The peer: the same rule in Lua, handed the same parameters and aggregates as tables
    // built per call (its boundary), answering the member flag and, when asked, the same
    // reason. Every engine must agree on the verdict before it is timed.
    let wasm = plugin.evaluate(&ctx, &cut).expect("verdict");
    let lua = mlua::Lua::new();
    let rule: mlua::Function = lua.load(LAPSING_LUA).eval().expect("the Lua rule loads");
    let (member, reason) = lua_evaluate(&lua, &rule, now, &cut, true);
    assert_eq!((member, reason.as_deref()), (wasm.member, Some(wasm.reason.as_str())), "Lua and Wasm must agree, reason included");
    group.bench_function("lua-reused-state", |b| b.iter(|| lua_evaluate(&lua, &rule, black_box(now), black_box(&cut), true)));
    group.bench_function("lua-reused-state-no-reason", |b| b.iter(|| lua_evaluate(&lua, &rule, black_box(now), black_box(&cut), false)));
    group.bench_function("lua-fresh-state", |b| {
        b.iter(|| {
            let lua = mlua::Lua::new();
            let rule: mlua::Function = lua.load(LAPSING_LUA).eval().expect("the Lua rule loads");
            lua_evaluate(&lua, &rule, black_box(now), black_box(&cut), true)
        })
    });
    group.finish();
}

/// lapsing-repeat-buyer in Lua 5.4, line for line the plugin's logic and reason text.
const LAPSING_LUA: &str = r#"
local DAY = 86400000
return function(now, params, aggregates, explain)
  local min_orders, grace = params.min_orders, params.grace_days
  local orders = math.tointeger(aggregates.order_count or 0) or 0
  local first, last = aggregates.first_order_at, aggregates.last_order_at
  if first == nil or last == nil or orders < 2 then
    return false, explain and string.format("%d order(s); needs %d to have a usual gap", orders, min_orders) or nil
  end
  if orders < min_orders then
    return false, explain and string.format("%d order(s); needs %d", orders, min_orders) or nil
  end
  local gap = (last - first) / (orders - 1) / DAY
  local since = (now - last) / DAY
  local due = gap + grace
  return since >= due, explain and string.format("last order %.1f days ago; usual gap %.1f + %.1f grace = %.1f", since, gap, grace, due) or nil
end
"#;

/// One Lua evaluation: the parameters and the profile's aggregates become tables, as the
/// Wasm call lowers them into the guest's memory.
fn lua_evaluate(lua: &mlua::Lua, rule: &mlua::Function, now: i64, profile: &Profile, explain: bool) -> (bool, Option<String>) {
    let params = lua.create_table().expect("table");
    params.set("min_orders", 2).expect("param");
    params.set("grace_days", 8.0).expect("param");
    let aggregates = lua.create_table().expect("table");
    for field in profile.aggregates.iter().flatten() {
        match &field.value {
            Value::Integer(n) => aggregates.set(field.name.as_str(), *n),
            Value::Number(x) => aggregates.set(field.name.as_str(), *x),
            _ => Ok(()),
        }
        .expect("aggregate");
    }
    rule.call::<(bool, Option<String>)>((now, params, aggregates, explain)).expect("the Lua rule answers")
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
