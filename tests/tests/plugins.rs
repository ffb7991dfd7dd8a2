//! The reference plugins built from `plugins/`, loaded and called through the real runtime,
//! plus the registry's swaps and the compiled-artifact cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rekindle_runtime::invoke;
use rekindle_runtime::json::profile_from_json;
use rekindle_runtime::wit::{Offer, TileRequest, Value};
use rekindle_runtime::{Kind, Plugin, PluginInfo, Registry, Runtime, RuntimeConfig, filter_profile, merge_params};
use rekindle_tests::native::{to_sdk_context, to_sdk_profile};
use rekindle_tests::{DAY, buyer, component, components, context, realistic_profile};
use serde_json::json;

fn runtime() -> Runtime {
    rekindle_tests::patient_runtime()
}

fn lapsing(runtime: &Runtime) -> Plugin {
    Plugin::load(runtime, &component(components::RULE_LAPSING_REPEAT_BUYER)).unwrap()
}

/// The rule's defaults, merged as the host does.
fn defaults(plugin: &Plugin, now: i64) -> rekindle_runtime::wit::Context {
    let PluginInfo::Rule(info) = plugin.info() else { panic!("not a rule") };
    let mut ctx = context(now, &[]);
    ctx.params = merge_params(&info.params, &[]).unwrap();
    ctx
}

#[test]
fn lapsing_rule_boundaries_through_wasm_match_native() {
    let runtime = runtime();
    let plugin = lapsing(&runtime);
    assert_eq!(plugin.kind(), Kind::Rule);
    assert_eq!(plugin.imports(), ["rekindle:plugin/log@0.1.0", "rekindle:plugin/types@0.1.0"]);
    for (day, expected) in [(187, false), (188, true), (400, true)] {
        let ctx = defaults(&plugin, day * DAY);
        let profile = buyer("ann", &[0, 60, 120]);
        let wasm = plugin.evaluate(&ctx, &profile).unwrap();
        assert_eq!(wasm.member, expected, "day {day}: {}", wasm.reason);
        let native = <rule_lapsing_repeat_buyer::LapsingRepeatBuyer as rekindle_sdk::Rule>::evaluate(&to_sdk_context(&ctx), &to_sdk_profile(&profile)).unwrap();
        assert_eq!(native.member, wasm.member);
        assert_eq!(native.reason, wasm.reason);
    }
}

/// `place` (membership and label, no reason) answers what `evaluate` does, reused and fresh,
/// for every shipped rule around its boundaries (the SDK's own test checks the reason is skipped).
#[test]
fn every_shipped_rule_places_as_it_evaluates_without_building_the_reason() {
    let runtime = runtime();
    let rules: Vec<_> = components::ALL.iter().filter(|(name, _)| name.starts_with("rule-")).collect();
    assert!(rules.len() >= 8, "{rules:?}");
    for (name, path) in rules {
        let plugin = Plugin::load(&runtime, &component(path)).unwrap();
        assert!(plugin.can_place(), "{name}: export_rule! builds the placement export");
        let mut instance = plugin.rule_instance().unwrap();
        for day in [0, 30, 60, 100, 187, 188, 400] {
            let ctx = defaults(&plugin, day * DAY);
            for profile in [buyer("one", &[0]), buyer("three", &[0, 60, 120]), realistic_profile(day * DAY)] {
                let verdict = plugin.evaluate(&ctx, &profile).unwrap();
                let expected = rekindle_runtime::wit::Placed { member: verdict.member, label: verdict.label.clone() };
                assert_eq!(instance.place(&ctx, &profile).unwrap(), expected, "{name} on day {day} for {}", profile.id);
                assert_eq!(plugin.place(&ctx, &profile).unwrap(), expected, "{name} fresh on day {day} for {}", profile.id);
                assert!(!verdict.reason.is_empty(), "{name}: evaluate still gives its reason");
            }
        }
    }
}

#[test]
fn declared_input_filter_keeps_only_the_order_aggregates_and_the_verdict_is_unchanged() {
    let runtime = runtime();
    let plugin = lapsing(&runtime);
    let PluginInfo::Rule(info) = plugin.info() else { unreachable!() };
    let now = 800 * DAY;
    let full = realistic_profile(now);
    let cut = filter_profile(&full, &info.input, now);
    assert_eq!(full.events.iter().map(|s| s.timestamps.len()).sum::<usize>(), 200);
    assert!(cut.events.is_empty(), "the rule reads the order aggregates, which the edge's token carries, not the events");
    let names: Vec<&str> = cut.aggregates.iter().flatten().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["order_count", "first_order_at", "last_order_at"]);
    assert!(cut.traits.as_ref().is_none_or(Vec::is_empty));
    let ctx = defaults(&plugin, now);
    assert_eq!(plugin.evaluate(&ctx, &full).unwrap(), plugin.evaluate(&ctx, &cut).unwrap());
}

#[test]
fn tiles_plugin_ranks_and_personalises() {
    let runtime = runtime();
    let plugin = Plugin::load(&runtime, &component(components::TILES_BASIC)).unwrap();
    let answer = invoke(
        &plugin,
        &json!({
            "context": {"now": "2026-11-23T00:00:00Z"},
            "request": {"slot": "home", "max_tiles": 2},
            "profile": {"id": "ann", "traits": {"first_name": "Ann"}, "segments": ["lapsing"],
                        "aggregates": {"favourite_category": "shoes"}},
            "offers": [
                {"id": "generic", "slot": "home", "priority": 5, "title": "Hello {{first_name|there}}", "link": "/"},
                {"id": "winback", "slot": "home", "include_segments": ["lapsing"], "title": "{{first_name}}, 10% off",
                 "body": "Code {{voucher}}", "voucher": "BACK10", "link": "/back"},
                {"id": "other-slot", "slot": "footer", "priority": 99, "title": "x", "link": "/"}
            ]
        }),
    )
    .unwrap();
    let tiles = answer["tiles"].as_array().unwrap();
    assert_eq!(tiles.len(), 2);
    assert_eq!(tiles[0]["offer_id"], "winback");
    assert_eq!(tiles[0]["title"], "Ann, 10% off");
    assert_eq!(tiles[0]["body"], "Code BACK10");
    assert_eq!(tiles[1]["title"], "Hello Ann");
}

#[test]
fn tiles_plugin_output_is_checked_against_the_candidates() {
    let runtime = runtime();
    let plugin = Plugin::load(&runtime, &component(components::TILES_BASIC)).unwrap();
    let PluginInfo::Tiles(info) = plugin.info() else { unreachable!() };
    let mut ctx = context(0, &[]);
    ctx.params = merge_params(&info.params, &[]).unwrap();
    let offer = Offer {
        id: "a".into(),
        slot: "home".into(),
        priority: 1,
        include_segments: vec![],
        exclude_segments: vec![],
        category: None,
        title: "t".into(),
        body: String::new(),
        image: None,
        link: "/".into(),
        voucher: None,
        holdout_percent: 0,
        valid_until: None,
        attributes: vec![],
    };
    let request = TileRequest { slot: "home".into(), page_url: None, max_tiles: 3 };
    let tiles = plugin.decide(&ctx, &request, None, &[offer]).unwrap();
    assert_eq!(tiles.len(), 1);
}

#[test]
fn webhook_adapter_returns_requests_with_secret_placeholders() {
    let runtime = runtime();
    let plugin = Plugin::load(&runtime, &component(components::CHANNEL_WEBHOOK)).unwrap();
    let answer = invoke(
        &plugin,
        &json!({
            "context": {"now": 0, "params": {"url": "https://hooks.example.com/rekindle"}},
            "message": {"idempotency_key": "run-1:send:webhook", "profile_id": "ann", "to": "ann@example.com",
                        "text": "We miss you", "data": {"voucher": "BACK10"}}
        }),
    )
    .unwrap();
    let request = &answer["requests"][0];
    assert_eq!(request["method"], "POST");
    assert_eq!(request["url"], "https://hooks.example.com/rekindle");
    let body: serde_json::Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["data"]["voucher"], "BACK10");
    assert!(request["headers"].to_string().contains("{{secret:WEBHOOK_TOKEN}}"));

    let bad = invoke(&plugin, &json!({"context": {"now": 0, "params": {"url": 7}}, "message": {}})).unwrap_err();
    assert!(bad.to_string().contains("parameter `url` must be text"), "{bad}");
}

/// Each provider adapter, loaded by the real host: it describes the provider's host, its
/// secrets and consent, and formats a message or an audience change for the provider.
#[test]
fn provider_adapters_describe_themselves_and_format_for_their_provider() {
    let runtime = runtime();
    let message = json!({"idempotency_key": "run-1:send", "profile_id": "ann", "to": "ann@example.com", "subject": "Hi",
                         "text": "We miss you", "link": "https://shop.example/sale"});
    let audience = |id: &str| json!({"audience": id, "add": [{"profile_id": "ann", "emails": ["Ann@Example.com"], "phones": ["+15551234567"]}], "remove": []});
    let cases = [
        (components::CHANNEL_SENDGRID, "api.sendgrid.com", json!({"from_email": "shop@example.com"}), json!({"message": message}), "/v3/mail/send"),
        (
            components::CHANNEL_TWILIO,
            "api.twilio.com",
            json!({"from": "+15550000000"}),
            json!({"message": {"to": "+15551234567", "text": "Hi", "idempotency_key": "k", "profile_id": "ann"}}),
            "/Messages.json",
        ),
        (
            components::CHANNEL_FCM,
            "fcm.googleapis.com",
            json!({"project_id": "shop"}),
            json!({"message": {"to": "token-1", "text": "Hi", "idempotency_key": "k", "profile_id": "ann"}}),
            "/v1/projects/shop/messages:send",
        ),
        (components::CHANNEL_META_AUDIENCES, "graph.facebook.com", json!({}), json!({"audience_change": audience("1234")}), "/1234/users"),
        (
            components::CHANNEL_TIKTOK_AUDIENCES,
            "business-api.tiktok.com",
            json!({"advertiser_id": "7"}),
            json!({"audience_change": audience("a")}),
            "/segment/mapping/",
        ),
        (
            components::CHANNEL_GOOGLE_CUSTOMER_MATCH,
            "datamanager.googleapis.com",
            json!({"customer_id": "123"}),
            json!({"audience_change": audience("9")}),
            "/v1/audienceMembers:ingest",
        ),
    ];
    for (path, host, params, input, url_end) in cases {
        let plugin = Plugin::load(&runtime, &component(path)).unwrap();
        let PluginInfo::Channel(info) = plugin.info() else { panic!("{path} is not a channel adapter") };
        assert_eq!(info.hosts, [host], "{path}");
        assert!(!info.secrets.is_empty(), "{path} declares its secrets");
        let mut case = input.clone();
        case["context"] = json!({"now": 0, "params": params});
        let answer = invoke(&plugin, &case).unwrap_or_else(|e| panic!("{path}: {e}"));
        let request = &answer["requests"][0];
        assert!(request["url"].as_str().unwrap().starts_with(&format!("https://{host}")), "{path}: {request}");
        assert!(request["url"].as_str().unwrap().ends_with(url_end), "{path}: {request}");
        assert!(request.to_string().contains("{{secret:") || request.to_string().contains("{{basic-auth:"), "{path}: no secret placeholder");
        assert!(!request.to_string().contains("Ann@Example.com"), "{path}: identifiers leave only normalised and hashed");
    }
}

#[test]
fn invoke_errors_name_the_field() {
    let runtime = runtime();
    let plugin = lapsing(&runtime);
    let err = invoke(&plugin, &json!({"context": {"now": "soon"}, "profile": {"id": "a"}})).unwrap_err();
    assert!(err.to_string().starts_with("context.now:"), "{err}");
    let err = invoke(&plugin, &json!({"context": {"now": 0}, "profile": {"events": []}})).unwrap_err();
    assert_eq!(err.to_string(), "profile.id: is required");
    let err = invoke(&plugin, &json!({"context": {"now": 0, "params": {"grace": 3}}, "profile": {"id": "a"}})).unwrap_err();
    assert!(err.to_string().contains("unknown parameter `grace`"), "{err}");
}

#[test]
fn swaps_are_atomic_in_flight_calls_never_fail_and_rollback_restores() {
    let runtime = runtime();
    let registry = Arc::new(Registry::new(runtime));
    let rule = component(components::RULE_LAPSING_REPEAT_BUYER);
    for bad in ["", "..", ".", "Lapsing", "a/b"] {
        assert!(matches!(registry.upload(bad, &rule), Err(rekindle_runtime::RegistryError::InvalidSlot(_))), "{bad:?}");
    }
    let v1 = registry.install("lapsing", &rule).unwrap();
    assert_eq!(v1.version, 1);
    // The same bytes again are the same version, not a new one.
    assert_eq!(registry.upload("lapsing", &rule).unwrap().version, 1);
    // A second, different component for the same slot: the hostile panicker is also a rule.
    let v2 = registry.upload("lapsing", &component(components::HOSTILE_HUGE_OUTPUT)).unwrap();
    assert_eq!(v2.version, 2);
    assert!(!v2.active);
    registry.activate("lapsing", 1).unwrap();

    // The same rule with a custom section appended: identical behaviour, another digest.
    let rule_b = with_custom_section(&rule, "rekindle-test", b"b");
    let v3 = registry.upload("lapsing", &rule_b).unwrap();
    assert_eq!(v3.version, 3);

    let stop = AtomicBool::new(false);
    let calls = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let ctx = context(188 * DAY, &[("min_orders", Value::Integer(2)), ("grace_days", Value::Number(8.0))]);
                let profile = buyer("ann", &[0, 60, 120]);
                while !stop.load(Ordering::Relaxed) {
                    let plugin = registry.get("lapsing").expect("slot never empties");
                    let verdict = plugin.evaluate(&ctx, &profile).expect("no call fails during swaps");
                    assert!(verdict.member);
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let started = std::time::Instant::now();
        while calls.load(Ordering::Relaxed) == 0 && started.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::yield_now();
        }
        for i in 0..1000 {
            registry.activate("lapsing", if i % 2 == 0 { 3 } else { 1 }).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(calls.load(Ordering::Relaxed) > 0, "the callers never ran");
    assert_eq!(registry.get("lapsing").unwrap().digest(), v1.digest);

    registry.activate("lapsing", 2).unwrap();
    assert_eq!(registry.get("lapsing").unwrap().info().name(), "hostile-huge-output");
    let back = registry.rollback("lapsing").unwrap();
    assert_eq!(back.version, 1);
    assert_eq!(registry.get("lapsing").unwrap().info().name(), "lapsing-repeat-buyer");
    let slots = registry.slots();
    assert_eq!(slots[0].active, Some(1));
    assert_eq!(slots[0].versions.len(), 3);
}

#[test]
fn compiled_artifacts_are_cached_on_disk_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let config = || RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        max_instances: 10,
        limits: rekindle_runtime::KindLimits::default().with_deadline(std::time::Duration::from_secs(5)),
        plugin_threads: 1,
    };
    let first = Runtime::new(config()).unwrap();
    let plugin = lapsing(&first);
    let cached: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(cached.len(), 1);
    let name = cached[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(plugin.digest()), "{name}");
    let written = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();

    // A new engine (a restart) loads the artifact instead of compiling and rewriting it.
    let second = Runtime::new(config()).unwrap();
    let again = lapsing(&second);
    assert_eq!(again.digest(), plugin.digest());
    assert_eq!(std::fs::metadata(&cached[0]).unwrap().modified().unwrap(), written);
    assert!(again.evaluate(&defaults(&again, 188 * DAY), &buyer("a", &[0, 60, 120])).unwrap().member);

    // A corrupt artifact is recompiled, not trusted.
    std::fs::write(&cached[0], b"garbage").unwrap();
    let third = Runtime::new(config()).unwrap();
    assert!(lapsing(&third).evaluate(&defaults(&plugin, 0), &buyer("a", &[0])).is_ok());
}

#[test]
fn profile_json_feeds_the_rule() {
    let runtime = runtime();
    let plugin = lapsing(&runtime);
    let profile = profile_from_json(&json!({
        "id": "ann",
        "aggregates": {"order_count": 2, "first_order_at": chrono_ms("2026-01-01T00:00:00Z"), "last_order_at": chrono_ms("2026-03-02T00:00:00Z")}
    }))
    .unwrap();
    // 60 days apart; day 68 after the last order is 2026-05-09.
    let at = |t: &str| chrono_ms(t);
    assert!(!plugin.evaluate(&defaults(&plugin, at("2026-05-08T23:59:59Z")), &profile).unwrap().member);
    assert!(plugin.evaluate(&defaults(&plugin, at("2026-05-09T00:00:00Z")), &profile).unwrap().member);
}

/// Appends a custom section to a component: a new digest, the same behaviour.
fn with_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name.as_bytes());
    section.extend_from_slice(payload);
    let mut out = component.to_vec();
    out.push(0);
    out.push(section.len() as u8);
    out.extend_from_slice(&section);
    out
}

fn chrono_ms(rfc3339: &str) -> i64 {
    rekindle_runtime::json::timestamp_from_json(Some(&json!(rfc3339)), "t").unwrap()
}

#[test]
fn every_shipped_plugin_loads_and_imports_only_the_contract() {
    let runtime = runtime();
    let shipped: Vec<_> = components::ALL.iter().filter(|(name, _)| !name.starts_with("hostile-")).collect();
    assert!(shipped.len() >= 10, "{shipped:?}");
    for (name, path) in shipped {
        let plugin = Plugin::load(&runtime, &component(path)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(plugin.imports().iter().all(|i| i.starts_with("rekindle:plugin/")), "{name} imports {:?}", plugin.imports());
    }
}

/// The seed rules' default thresholds, through the Wasm components as the host calls them.
#[test]
fn seed_rule_boundaries_hold_through_wasm() {
    let runtime = runtime();
    let verdict = |path: &str, now: &str, profile: serde_json::Value| {
        let plugin = Plugin::load(&runtime, &component(path)).unwrap();
        invoke(&plugin, &json!({"context": {"now": now}, "profile": profile})).unwrap()["verdict"]["member"].as_bool().unwrap()
    };
    let cart = |added: &str| json!({"id": "c", "events": [{"name": "Product Added", "timestamp": added}]});
    assert!(!verdict(components::RULE_ABANDONED_CART, "2026-11-23T10:29:00Z", cart("2026-11-23T10:00:00Z")), "29 minutes");
    assert!(verdict(components::RULE_ABANDONED_CART, "2026-11-23T10:31:00Z", cart("2026-11-23T10:00:00Z")), "31 minutes");
    let last_order = |at: &str| json!({"id": "w", "aggregates": {"last_order_at": chrono_ms(at), "order_count": 1, "lifetime_value": 501.0}});
    for (now, expected) in [("2026-02-14T00:00:00Z", false), ("2026-02-15T00:00:00Z", true), ("2026-04-01T00:00:00Z", true), ("2026-04-02T00:00:00Z", false)] {
        assert_eq!(verdict(components::RULE_WIN_BACK_WINDOW, now, last_order("2026-01-01T00:00:00Z")), expected, "win-back at {now}");
    }
    assert!(verdict(components::RULE_ONE_TIME_ABOUT_TO_SLEEP, "2026-07-01T00:00:00Z", last_order("2026-01-01T00:00:00Z")));
    assert!(!verdict(components::RULE_ONE_TIME_ABOUT_TO_SLEEP, "2026-06-29T00:00:00Z", last_order("2026-01-01T00:00:00Z")));
    assert!(verdict(components::RULE_HIGH_LTV, "2026-01-02T00:00:00Z", last_order("2026-01-01T00:00:00Z")));
}

#[test]
fn a_full_instance_pool_is_reported_as_busy_not_as_a_broken_plugin() {
    // A pool of two component instances and four core ones; a Rust component takes three
    // core instances, so while a batch worker holds one instance a second call finds the
    // pool full: the host at capacity (a 503), not the plugin's fault (a 502). Before, this
    // error's words ("maximum concurrent limit of 4 for core instances reached") matched
    // none the host looked for, and it was reported as a trap.
    let runtime = Runtime::new(RuntimeConfig { max_instances: 2, ..RuntimeConfig::default() }).unwrap();
    let plugin = lapsing(&runtime);
    let held = plugin.rule_instance().unwrap();
    let err = plugin.evaluate(&defaults(&plugin, 200 * DAY), &buyer("ann", &[0, 60])).unwrap_err();
    assert!(matches!(err, rekindle_runtime::CallError::Instantiate(_)), "{err:?}");
    drop(held);
    assert!(plugin.evaluate(&defaults(&plugin, 200 * DAY), &buyer("ann", &[0, 60])).is_ok());
}
