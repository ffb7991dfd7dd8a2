//! The hostile suite: misbehaving components built from `tests/hostile/`, loaded and called
//! through the real runtime. Each must yield its typed error within its deadline, and a
//! healthy plugin called right after must still answer correctly.

use std::time::{Duration, Instant};

use rekindle_runtime::wit::Value;
use rekindle_runtime::{CallError, LoadError, Plugin, Registry, RegistryError, Runtime, RuntimeConfig};
use rekindle_tests::{DAY, buyer, component, components, context, patient_runtime, profile};

/// Production limits: the endless loop must stop at the real 10 ms deadline.
fn production_runtime() -> Runtime {
    Runtime::new(RuntimeConfig { max_instances: 50, ..RuntimeConfig::default() }).expect("engine")
}

/// Generous deadlines for the failures that are not about time, so a busy machine cannot
/// turn an out-of-memory or a bad output into a timeout.
fn runtime() -> Runtime {
    patient_runtime()
}

/// Calls the lapsing rule on a 60-day buyer at day 188: must say member.
fn assert_healthy(runtime: &Runtime) {
    let healthy = Plugin::load(runtime, &component(components::RULE_LAPSING_REPEAT_BUYER)).expect("healthy plugin loads");
    let ctx = context(188 * DAY, &[("min_orders", Value::Integer(2)), ("grace_days", Value::Number(8.0))]);
    let verdict = healthy.evaluate(&ctx, &buyer("ann", &[0, 60, 120])).expect("healthy plugin answers");
    assert!(verdict.member, "{}", verdict.reason);
}

/// Loads a hostile rule and calls it once, returning the error and how long it took.
fn call_hostile(runtime: &Runtime, path: &str) -> (CallError, Duration) {
    let plugin = Plugin::load(runtime, &component(path)).expect("hostile plugin loads; it misbehaves only when called");
    let started = Instant::now();
    let err = plugin.evaluate(&context(0, &[]), &profile("ann")).expect_err("hostile call must fail");
    (err, started.elapsed())
}

#[test]
fn an_endless_loop_times_out_at_its_deadline() {
    let runtime = production_runtime();
    let (err, took) = call_hostile(&runtime, components::HOSTILE_ENDLESS_LOOP);
    assert_eq!(err, CallError::Timeout(Duration::from_millis(10)));
    // The deadline is 10 ms; the bound is loose because this machine is shared.
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_healthy(&patient_runtime());
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let runtime = runtime();
    let (err, _) = call_hostile(&runtime, components::HOSTILE_UNBOUNDED_ALLOC);
    match err {
        CallError::OutOfMemory { wanted, cap } => {
            assert_eq!(cap, 32 << 20);
            assert!(wanted > cap);
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert_healthy(&runtime);
}

#[test]
fn infinite_recursion_traps_with_stack_overflow() {
    let runtime = runtime();
    let (err, _) = call_hostile(&runtime, components::HOSTILE_INFINITE_RECURSION);
    let CallError::Trap(message) = err else { panic!("expected a trap, got {err:?}") };
    assert!(message.contains("stack overflow"), "{message}");
    assert_healthy(&runtime);
}

#[test]
fn a_panic_is_reported_with_its_message_and_location() {
    let runtime = runtime();
    let (err, _) = call_hostile(&runtime, components::HOSTILE_PANICS);
    let CallError::Trap(message) = err else { panic!("expected a trap, got {err:?}") };
    assert!(message.starts_with("panicked at"), "{message}");
    assert!(message.contains("src/lib.rs"), "{message}");
    assert!(message.ends_with("no verdict for ann"), "{message}");
    assert_healthy(&runtime);
}

#[test]
fn a_huge_output_is_refused() {
    let runtime = runtime();
    let (err, _) = call_hostile(&runtime, components::HOSTILE_HUGE_OUTPUT);
    let CallError::BadOutput(message) = err else { panic!("expected bad output, got {err:?}") };
    assert!(message.contains("the limit is 16384 bytes"), "{message}");
    assert_healthy(&runtime);
}

#[test]
fn a_forbidden_import_is_refused_at_load_naming_it() {
    let runtime = runtime();
    let err = Plugin::load(&runtime, &component(components::HOSTILE_FORBIDDEN_IMPORT)).unwrap_err();
    match &err {
        LoadError::ForbiddenImport { import, .. } => assert_eq!(import, "acme:net/http-client"),
        other => panic!("expected ForbiddenImport, got {other:?}"),
    }
    assert!(err.to_string().contains("`acme:net/http-client`"), "{err}");
    assert_healthy(&runtime);
}

#[test]
fn an_adapter_writing_its_own_secret_placeholders_is_refused_at_load() {
    let runtime = runtime();
    let err = Plugin::load(&runtime, &component(components::HOSTILE_LEGACY_SECRETS)).unwrap_err();
    assert!(matches!(&err, LoadError::UnmarkedSecrets { secrets } if secrets == "API_KEY"), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("does not import rekindle:plugin/secrets") && message.contains("secret(\"NAME\")"), "{message}");
    // One that declares no secret has nothing to fill, and still loads.
    Plugin::load(&runtime, &component(components::PLAIN_CHANNEL)).expect("an adapter without secrets loads");
    assert_healthy(&runtime);
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let runtime = runtime();
    let err = Plugin::load(&runtime, b"#!/bin/sh\necho not wasm\n").unwrap_err();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err:?}");
    let core_module = b"\0asm\x01\0\0\0";
    let err = Plugin::load(&runtime, core_module).unwrap_err();
    assert!(matches!(err, LoadError::CoreModule), "{err:?}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
    let truncated = &component(components::RULE_LAPSING_REPEAT_BUYER)[..1000];
    assert!(matches!(Plugin::load(&runtime, truncated).unwrap_err(), LoadError::Invalid(_)));
    assert_healthy(&runtime);
}

#[test]
fn a_component_of_the_wrong_world_is_refused_by_the_slot() {
    let runtime = runtime();
    let registry = Registry::new(runtime.clone());
    registry.install("lapsing", &component(components::RULE_LAPSING_REPEAT_BUYER)).unwrap();
    let err = registry.upload("lapsing", &component(components::CHANNEL_WEBHOOK)).unwrap_err();
    match err {
        RegistryError::Load(LoadError::WrongWorld { expected, found, .. }) => {
            assert_eq!(expected.world(), "segment-rule");
            assert_eq!(found.world(), "channel-adapter");
        }
        other => panic!("expected WrongWorld, got {other:?}"),
    }
    // A channel adapter asked to evaluate says what it is instead of trapping.
    let webhook = Plugin::load(&runtime, &component(components::CHANNEL_WEBHOOK)).unwrap();
    let err = webhook.evaluate(&context(0, &[]), &profile("ann")).unwrap_err();
    assert_eq!(err.code(), "wrong_kind");
    // The slot still serves its rule.
    let ctx = context(188 * DAY, &[("min_orders", Value::Integer(2)), ("grace_days", Value::Number(8.0))]);
    assert!(registry.get("lapsing").unwrap().evaluate(&ctx, &buyer("ann", &[0, 60, 120])).unwrap().member);
}

#[test]
fn hostile_calls_from_many_threads_leave_the_host_serving() {
    let runtime = production_runtime();
    let spin = Plugin::load(&runtime, &component(components::HOSTILE_ENDLESS_LOOP)).unwrap();
    // The panicking plugin gets a patient engine: on a busy machine a 10 ms deadline could
    // turn its trap into a timeout, and the trap is what this checks.
    let boom = Plugin::load(&patient_runtime(), &component(components::HOSTILE_PANICS)).unwrap();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..5 {
                    assert!(matches!(spin.evaluate(&context(0, &[]), &profile("x")), Err(CallError::Timeout(_))));
                    assert!(matches!(boom.evaluate(&context(0, &[]), &profile("x")), Err(CallError::Trap(_))));
                }
            });
        }
    });
    assert_healthy(&patient_runtime());
}

/// A plugin whose calls run past their deadline is confined to one thread fewer than the
/// pool has, so it can never hold every core. (A pool's calls use every thread otherwise:
/// `pool.rs`'s `concurrent_calls_use_every_thread`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_runs_out_of_time_is_confined_to_fewer_threads() {
    let runtime = Runtime::new(RuntimeConfig { plugin_threads: 3, ..RuntimeConfig::default() }).expect("engine");
    let burner = std::sync::Arc::new(Plugin::load(&runtime, &component(components::HOSTILE_TILES)).unwrap());
    let (timeouts, _) = burn_concurrently(&burner, 24).await;
    assert_eq!(timeouts, 24);
    // The first calls ran before any had timed out; from then on, two of the three threads.
    let (_, most) = burn_concurrently(&burner, 12).await;
    assert_eq!(most, 2, "a confined plugin may use one thread fewer than the pool's three");
}

/// Makes `calls` concurrent calls that each burn the deadline; returns how many timed out
/// and the most that ran at once.
async fn burn_concurrently(burner: &std::sync::Arc<Plugin>, calls: usize) -> (usize, usize) {
    use rekindle_runtime::wit::{TileRequest, Value};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let calls: Vec<_> = (0..calls)
        .map(|_| {
            let (burner, running, most) = (burner.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                burner
                    .call(Some(Duration::from_secs(5)), move |p| {
                        most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                        let ctx = context(0, &[("mode", Value::Text("loop".into()))]);
                        let request = TileRequest { slot: "s".into(), page_url: None, max_tiles: 1 };
                        let answer = p.decide(&ctx, &request, None, &[]);
                        running.fetch_sub(1, Ordering::SeqCst);
                        answer
                    })
                    .await
            })
        })
        .collect();
    let mut timeouts = 0;
    for call in calls {
        timeouts += usize::from(matches!(call.await.unwrap(), Err(CallError::Timeout(_))));
    }
    (timeouts, most.load(Ordering::SeqCst))
}
