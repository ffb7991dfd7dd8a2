//! The `rekindle` binary as a user meets it: inspect and run real components, and scaffold
//! plugins of every kind that build, pass their test, and load into `rekindle serve`.

mod support;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use rekindle_tests::components;
use serde_json::{Value, json};
use support::{rekindle, run, serve, shipped_plugins, text, workspace_root};

#[test]
fn inspect_shows_world_describe_imports_and_digest() {
    let out = run(rekindle().args(["plugin", "inspect", "--deadline-ms", "5000", "--json", components::RULE_LAPSING_REPEAT_BUYER]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["world"], "segment-rule");
    assert_eq!(report["describe"]["name"], "lapsing-repeat-buyer");
    assert_eq!(report["describe"]["params"][1]["name"], "grace_days");
    assert_eq!(report["imports"], json!(["rekindle:plugin/log@0.1.0", "rekindle:plugin/types@0.1.0"]));
    assert_eq!(report["sha256"].as_str().unwrap().len(), 64);
    assert!(report["size"].as_u64().unwrap() > 1000);

    let out = run(rekindle().args(["plugin", "inspect", components::HOSTILE_FORBIDDEN_IMPORT]));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("hostile_forbidden_import.wasm cannot be loaded"), "{err}");
    assert!(err.contains("`acme:net/http-client`"), "{err}");

    let out = run(rekindle().args(["plugin", "inspect", "Cargo.toml"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not a WebAssembly file"), "{}", text(&out.stderr));
}

#[test]
fn run_calls_a_component_with_a_json_case() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case.json");
    std::fs::write(
        &case,
        json!({
            "context": {"now": "2026-05-09T00:00:00Z", "params": {"grace_days": 8}},
            "profile": {"id": "ann", "events": [
                {"name": "Order Completed", "timestamp": "2026-01-01T00:00:00Z"},
                {"name": "Order Completed", "timestamp": "2026-03-02T00:00:00Z"}]}
        })
        .to_string(),
    )
    .unwrap();
    let out = run(rekindle().args(["plugin", "run", "--deadline-ms", "5000", components::RULE_LAPSING_REPEAT_BUYER, "--input"]).arg(&case));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["verdict"]["member"], true, "{answer}");

    std::fs::write(&case, r#"{"context": {"now": 0}, "profile": {"id": 5}}"#).unwrap();
    let out = run(rekindle().args(["plugin", "run", "--deadline-ms", "5000", components::RULE_LAPSING_REPEAT_BUYER, "--input"]).arg(&case));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("profile.id: must be a string"), "{}", text(&out.stderr));
}

/// Kills the server when the test ends, pass or fail.
fn cargo(dir: &Path, args: &[&str]) {
    let target = workspace_root().join("target/scaffold");
    let out = Command::new(env!("CARGO")).args(args).current_dir(dir).env("CARGO_TARGET_DIR", &target).output().expect("running cargo");
    assert!(out.status.success(), "cargo {args:?} in {} failed:\n{}", dir.display(), text(&out.stderr));
}

#[tokio::test]
async fn scaffolded_plugins_build_pass_their_tests_and_load_into_serve() {
    let work = tempfile::tempdir().unwrap();
    let plugins = work.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for kind in ["rule", "channel", "tiles"] {
        let name = format!("my-{kind}");
        let dir = work.path().join(&name);
        let out = run(rekindle().args(["plugin", "new", &name, "--kind", kind, "--dir"]).arg(&dir));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let printed = text(&out.stdout);
        assert!(printed.contains("cargo build --release --target wasm32-wasip2"), "{printed}");
        cargo(&dir, &["test", "--quiet"]);
        cargo(&dir, &["build", "--release", "--target", "wasm32-wasip2", "--quiet"]);
        let wasm = workspace_root().join(format!("target/scaffold/wasm32-wasip2/release/my_{kind}.wasm"));
        std::fs::copy(&wasm, plugins.join(format!("my_{kind}.wasm"))).unwrap();
    }
    let again = run(rekindle().args(["plugin", "new", "my-rule", "--kind", "rule", "--dir"]).arg(work.path().join("my-rule")));
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already exists"), "{}", text(&again.stderr));

    // Generous deadlines: the cargo builds above may still be winding down on two cores.
    let config = work.path().join("rekindle.toml");
    std::fs::write(&config, "[limits]\nrule_deadline_ms = 5000\ntiles_deadline_ms = 5000\nchannel_deadline_ms = 5000\n").unwrap();
    let bad = run(rekindle().args(["serve", "--config"]).arg(work.path().join("my-rule/Cargo.toml")));
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("is not a valid Rekindle config"), "{}", text(&bad.stderr));
    let data = work.path().join("data");
    let args = [OsStr::new("--config"), config.as_os_str(), OsStr::new("--plugins"), plugins.as_os_str(), OsStr::new("--data-dir"), data.as_os_str()];
    let (_server, base) = serve(&args, "scaffold-token-0123456789").await;
    let http = reqwest::Client::new();
    let health: Value = http.get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["active_slots"], 3, "{health}");
    let invoke = |slot: &str, body: Value| {
        let request = http.post(format!("{base}/admin/slots/{slot}/invoke")).bearer_auth("scaffold-token-0123456789").json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let verdict = invoke(
        "my-rule",
        json!({"context": {"now": "2026-02-01T00:00:00Z"}, "profile": {"id": "a", "events": [
        {"name": "Order Completed", "timestamp": "2026-01-20T00:00:00Z"},
        {"name": "Order Completed", "timestamp": "2026-01-25T00:00:00Z"}]}}),
    )
    .await;
    assert_eq!(verdict["verdict"]["member"], true, "{verdict}");
    let tiles = invoke(
        "my-tiles",
        json!({"context": {"now": 0}, "request": {"slot": "home", "max_tiles": 1},
        "offers": [{"id": "o1", "slot": "home", "title": "Hi {{first_name|there}}", "link": "/"}]}),
    )
    .await;
    assert_eq!(tiles["tiles"][0]["title"], "Hi there", "{tiles}");
    let requests = invoke(
        "my-channel",
        json!({"context": {"now": 0}, "message": {"idempotency_key": "k",
        "profile_id": "a", "to": "+15551234567", "text": "hello"}}),
    )
    .await;
    assert_eq!(requests["requests"][0]["url"], "https://api.acme-sms.example/v1/messages", "{requests}");
}

#[tokio::test]
async fn demo_generate_fills_a_running_host_and_is_idempotent() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let args = [OsStr::new("--server-source"), OsStr::new("demo=demo-key"), OsStr::new("--data-dir"), data.as_os_str()];
    let (_server, base) = serve(&args, "demo-admin-0123456789").await;
    let http = reqwest::Client::new();
    let generate = || {
        rekindle()
            .args(["demo", "generate", "--profiles", "60", "--seed", "1", "--now", "2026-11-23T00:00:00Z", "--url", &base])
            .args(["--write-key", "demo-key"])
            .env("REKINDLE_ADMIN_TOKEN", "demo-admin-0123456789")
            .output()
            .unwrap()
    };
    let first = generate();
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(text(&first.stdout).contains("for 60 customers"), "{}", text(&first.stdout));
    let order_counts = || async {
        let mut counts = Vec::new();
        for i in 0..60 {
            let response = http.get(format!("{base}/v1/profiles/user-{i}")).bearer_auth("demo-admin-0123456789").send().await.unwrap();
            assert_eq!(response.status(), 200);
            let profile: Value = response.json().await.unwrap();
            counts.push(profile["computed"]["order_count"].as_i64().unwrap());
        }
        counts
    };
    let before = order_counts().await;
    assert!(before.iter().filter(|n| **n >= 2).count() >= 10, "some repeat buyers: {before:?}");
    assert!(before.contains(&0), "some never bought: {before:?}");
    // Message ids derive from the seed, so a second run stores nothing new.
    assert!(generate().status.success());
    assert_eq!(order_counts().await, before);
    let bad_key = rekindle().args(["demo", "generate", "--profiles", "1", "--url", &base, "--write-key", "wrong"]).output().unwrap();
    assert!(!bad_key.status.success());
    assert!(text(&bad_key.stderr).contains("401"), "{}", text(&bad_key.stderr));
}

#[tokio::test]
async fn segments_in_the_config_file_are_defined_at_start_up() {
    let work = tempfile::tempdir().unwrap();
    let plugins = work.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(components::RULE_LAPSING_REPEAT_BUYER, plugins.join("rule_lapsing_repeat_buyer.wasm")).unwrap();
    let config = work.path().join("rekindle.toml");
    std::fs::write(
        &config,
        r#"
[[segments]]
name = "Lapsing repeat buyers"
slot = "rule-lapsing-repeat-buyer"
schedule = "daily"
params = { grace_days = 10 }
"#,
    )
    .unwrap();
    let data = work.path().join("data");
    let args = [OsStr::new("--config"), config.as_os_str(), OsStr::new("--plugins"), plugins.as_os_str(), OsStr::new("--data-dir"), data.as_os_str()];
    let (server, base) = serve(&args, "cfg-admin-0123456789").await;
    let segments: Value =
        reqwest::Client::new().get(format!("{base}/v1/segments")).bearer_auth("cfg-admin-0123456789").send().await.unwrap().json().await.unwrap();
    assert_eq!(segments["segments"][0]["name"], "Lapsing repeat buyers", "{segments}");
    assert_eq!(segments["segments"][0]["params"]["grace_days"], 10);
    drop(server);

    std::fs::write(&config, "[[segments]]\nname = \"x\"\nslot = \"nope\"\n").unwrap();
    let bad = run(rekindle().arg("serve").arg("--config").arg(&config).arg("--data-dir").arg(&data).args(["--listen", "127.0.0.1:0"]));
    assert!(!bad.status.success());
    let err = text(&bad.stderr);
    assert!(err.contains("rekindle.toml: segments[0]: slot:"), "{err}");
}

/// The shipped demo configuration loads as it is: its segments, page slots and offers are
/// defined at start-up, and the home page slot answers a visitor.
#[tokio::test]
async fn the_shipped_demo_config_defines_tile_slots_and_offers() {
    let work = tempfile::tempdir().unwrap();
    let plugins = shipped_plugins(work.path());
    let config = workspace_root().join("examples/demo.toml");
    let data = work.path().join("data");
    let args = [OsStr::new("--config"), config.as_os_str(), OsStr::new("--plugins"), plugins.as_os_str(), OsStr::new("--data-dir"), data.as_os_str()];
    let (server, base) = serve(&args, "cfg-admin-0123456789").await;
    let http = reqwest::Client::new();
    let catalog: Value = http.get(format!("{base}/v1/offers")).bearer_auth("cfg-admin-0123456789").send().await.unwrap().json().await.unwrap();
    assert_eq!(catalog["slots"].as_array().unwrap().len(), 2, "{catalog}");
    assert_eq!(catalog["offers"].as_array().unwrap().len(), 7, "{catalog}");
    let tiles: Value = http.get(format!("{base}/v1/tiles?slot=home-hero&anonymousId=a1")).send().await.unwrap().json().await.unwrap();
    assert_eq!((tiles["fallback"].as_bool(), tiles["tiles"][0]["offer_id"].as_str()), (Some(false), Some("new-arrivals")), "{tiles}");
    drop(server);

    let broken = work.path().join("broken.toml");
    std::fs::write(&broken, "[[offers]]\nid = \"x\"\nslot = \"home\"\ntitle = \"t\"\nlink = \"/x\"\nholdout_percent = 200\n").unwrap();
    let bad = run(rekindle().arg("serve").arg("--config").arg(&broken).arg("--data-dir").arg(&data).args(["--listen", "127.0.0.1:0"]));
    assert!(!bad.status.success());
    let err = text(&bad.stderr);
    assert!(err.contains("broken.toml: offers[0]:") && err.contains("holdout_percent"), "{err}");
}

/// `[[channels]]` and `journeys` in the config: a seed template deploys at start-up with its
/// secrets read from the environment, and mistakes stop the host with the file and reason.
#[tokio::test]
async fn journeys_and_channels_in_the_config_deploy_at_start_up() {
    let work = tempfile::tempdir().unwrap();
    let plugins = shipped_plugins(work.path());
    let usecase = workspace_root().join("usecases/win-back-45");
    let config = work.path().join("rekindle.toml");
    let write = |journeys_and_channels: &str| {
        let segments = std::fs::read_to_string(usecase.join("segments.toml")).unwrap();
        std::fs::write(&config, format!("journeys = [{:?}]\n{segments}\n{journeys_and_channels}", usecase.join("journey.toml"))).unwrap();
    };
    let channels = r#"
[[channels]]
name = "email"
slot = "channel-sendgrid"
params = { base_url = "http://127.0.0.1:9", from_email = "shop@example.com" }
allowed_hosts = ["http://127.0.0.1:9"]
secrets = { SENDGRID_API_KEY = "env:REKINDLE_TEST_SENDGRID_KEY" }
"#;
    let sms = r#"
[[channels]]
name = "sms"
slot = "channel-twilio"
params = { base_url = "http://127.0.0.1:9", from = "+15550000000" }
allowed_hosts = ["http://127.0.0.1:9"]
secrets = { TWILIO_ACCOUNT_SID = "AC1", TWILIO_AUTH_TOKEN = "env:REKINDLE_TEST_TWILIO_TOKEN" }
"#;
    write(&format!("{channels}{sms}"));
    let data = work.path().join("data");
    let args = [OsStr::new("--config"), config.as_os_str(), OsStr::new("--plugins"), plugins.as_os_str(), OsStr::new("--data-dir"), data.as_os_str()];
    let env = [("REKINDLE_TEST_SENDGRID_KEY", "sg"), ("REKINDLE_TEST_TWILIO_TOKEN", "tw")];
    let (server, base) = support::serve_with_env(&args, "j-admin-0123456789", &env).await;
    let journeys: Value =
        reqwest::Client::new().get(format!("{base}/v1/journeys")).bearer_auth("j-admin-0123456789").send().await.unwrap().json().await.unwrap();
    assert_eq!(journeys["journeys"][0]["name"], "Win back after 45 days", "{journeys}");
    drop(server);

    // A journey that needs a channel the config does not define.
    write(channels);
    let start = || {
        run(rekindle()
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--plugins")
            .arg(&plugins)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .envs(env))
    };
    let err = text(&start().stderr);
    assert!(err.contains("journey.toml") && err.contains("no channel `sms`"), "{err}");
    // A secret read from an unset variable.
    write(&format!("{channels}{sms}"));
    let bad = run(rekindle()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--plugins")
        .arg(&plugins)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("REKINDLE_TEST_SENDGRID_KEY", "sg"));
    let err = text(&bad.stderr);
    assert!(err.contains("channel `sms`: secret TWILIO_AUTH_TOKEN reads $REKINDLE_TEST_TWILIO_TOKEN"), "{err}");
    // A run lease shorter than a request may take: another host could take a run over
    // while its request is on its way.
    let segments = std::fs::read_to_string(usecase.join("segments.toml")).unwrap();
    std::fs::write(&config, format!("run_lease_seconds = 10\njourneys = [{:?}]\n{segments}\n{channels}{sms}", usecase.join("journey.toml"))).unwrap();
    let err = text(&start().stderr);
    assert!(err.contains("run_lease_seconds (10) must be longer than channel `email`'s request_timeout_seconds (15)"), "{err}");
}

/// Every seed template deploys with `rekindle usecase deploy` onto a host holding the demo
/// shop, with the six shipped channels configured; an unknown template names the known ones.
#[tokio::test]
async fn all_five_seed_templates_deploy_on_the_demo_data() {
    let work = tempfile::tempdir().unwrap();
    let plugins = shipped_plugins(work.path());
    let config = work.path().join("rekindle.toml");
    // The providers are unreachable here: this is about deploying, not delivering.
    let channel = |name: &str, slot: &str, params: &str, secrets: &str| {
        format!(
            "[[channels]]\nname = {name:?}\nslot = {slot:?}\nparams = {{ base_url = \"http://127.0.0.1:9\", {params} }}\nallowed_hosts = [\"http://127.0.0.1:9\"]\nsecrets = {{ {secrets} }}\nmax_attempts = 1\n"
        )
    };
    std::fs::write(
        &config,
        [
            channel("email", "channel-sendgrid", "from_email = \"shop@example.com\"", "SENDGRID_API_KEY = \"k\""),
            channel("sms", "channel-twilio", "from = \"+15550000000\"", "TWILIO_ACCOUNT_SID = \"AC\", TWILIO_AUTH_TOKEN = \"t\""),
            channel("push", "channel-fcm", "project_id = \"shop\"", "FCM_ACCESS_TOKEN = \"f\""),
            channel("meta", "channel-meta-audiences", "default_country_code = \"1\"", "META_ACCESS_TOKEN = \"m\""),
            channel("tiktok", "channel-tiktok-audiences", "advertiser_id = \"7\"", "TIKTOK_ACCESS_TOKEN = \"t\""),
            channel("google", "channel-google-customer-match", "customer_id = \"123\"", "GOOGLE_ACCESS_TOKEN = \"g\""),
        ]
        .concat(),
    )
    .unwrap();
    let data = work.path().join("data");
    let args = [
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--plugins"),
        plugins.as_os_str(),
        OsStr::new("--data-dir"),
        data.as_os_str(),
        OsStr::new("--server-source"),
        OsStr::new("demo=demo-key"),
    ];
    let (_server, base) = serve(&args, "uc-admin-0123456789").await;
    let generated = rekindle()
        .args(["demo", "generate", "--profiles", "300", "--url", &base, "--write-key", "demo-key"])
        .env("REKINDLE_ADMIN_TOKEN", "uc-admin-0123456789")
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let usecases = workspace_root().join("usecases");
    for name in ["abandoned-cart", "lapsing-repeat-buyers", "about-to-sleep", "win-back-45", "rfm-win-back"] {
        let out = rekindle()
            .args(["usecase", "deploy", name, "--url", &base, "--dir"])
            .arg(&usecases)
            .env("REKINDLE_ADMIN_TOKEN", "uc-admin-0123456789")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("deployed with"), "{name}: {}", text(&out.stdout));
    }
    let journeys: Value =
        reqwest::Client::new().get(format!("{base}/v1/journeys")).bearer_auth("uc-admin-0123456789").send().await.unwrap().json().await.unwrap();
    assert_eq!(journeys["journeys"].as_array().unwrap().len(), 5, "{journeys}");
    let lapsing: Value = reqwest::Client::new()
        .get(format!("{base}/v1/segments/Lapsing%20repeat%20buyers/members"))
        .bearer_auth("uc-admin-0123456789")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!lapsing["members"].as_array().unwrap().is_empty(), "the demo shop has lapsing buyers: {lapsing}");
    let unknown = rekindle()
        .args(["usecase", "deploy", "nope", "--url", &base, "--dir"])
        .arg(&usecases)
        .env("REKINDLE_ADMIN_TOKEN", "uc-admin-0123456789")
        .output()
        .unwrap();
    assert!(text(&unknown.stderr).contains("no template `nope`") && text(&unknown.stderr).contains("win-back-45"), "{}", text(&unknown.stderr));
}

/// `rekindle journey simulate` replays a seed template over a copy of a host's demo data on
/// a virtual clock and prints the paths; the host's data is left as it was.
#[tokio::test]
async fn journey_simulate_replays_a_template_over_a_copy_of_the_data() {
    let work = tempfile::tempdir().unwrap();
    let plugins = shipped_plugins(work.path());
    let data = work.path().join("data");
    let args =
        [OsStr::new("--plugins"), plugins.as_os_str(), OsStr::new("--data-dir"), data.as_os_str(), OsStr::new("--server-source"), OsStr::new("demo=demo-key")];
    {
        let (_server, base) = serve(&args, "sim-admin-0123456789").await;
        let generated = rekindle().args(["demo", "generate", "--profiles", "200", "--url", &base, "--write-key", "demo-key"]).output().unwrap();
        assert!(generated.status.success(), "{}", text(&generated.stderr));
    }
    let journey = workspace_root().join("usecases/win-back-45/journey.toml");
    let out = rekindle()
        .args(["journey", "simulate"])
        .arg(&journey)
        .args(["--days", "3", "--start", "2026-11-23T12:00:00Z", "--data-dir"])
        .arg(&data)
        .arg("--plugins")
        .arg(&plugins)
        .output()
        .unwrap();
    let printed = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(printed.starts_with("Win back after 45 days over 3 days"), "{printed}");
    assert!(printed.contains("entry          entered") && printed.contains("discount       sent on"), "{printed}");
    // The host's own data has no trace of the simulation.
    let (_server, base) = serve(&args, "sim-admin-0123456789").await;
    let journeys: Value =
        reqwest::Client::new().get(format!("{base}/v1/journeys")).bearer_auth("sim-admin-0123456789").send().await.unwrap().json().await.unwrap();
    assert!(journeys["journeys"].as_array().unwrap().is_empty(), "{journeys}");
}

#[tokio::test]
async fn segment_preview_compares_a_candidate_with_the_live_segment() {
    let work = tempfile::tempdir().unwrap();
    let plugins = work.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(components::RULE_LAPSING_REPEAT_BUYER, plugins.join("rule_lapsing_repeat_buyer.wasm")).unwrap();
    let data = work.path().join("data");
    // Counts are compared exactly, and a 10 ms deadline can be missed on a machine busy
    // with the rest of the suite; deadlines are not what this test is about.
    let config = work.path().join("rekindle.toml");
    std::fs::write(&config, "[limits]\nrule_deadline_ms = 1000\n").unwrap();
    let args = [
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--plugins"),
        plugins.as_os_str(),
        OsStr::new("--server-source"),
        OsStr::new("demo=demo-key"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
    ];
    let (_server, base) = serve(&args, "pv-admin-0123456789").await;
    let now = chrono_now_day();
    let generate = run(rekindle().args(["demo", "generate", "--profiles", "300", "--seed", "3", "--now", &now, "--url", &base, "--write-key", "demo-key"]));
    assert!(generate.status.success(), "{}", text(&generate.stderr));
    let defined: Value = reqwest::Client::new()
        .post(format!("{base}/v1/segments"))
        .bearer_auth("pv-admin-0123456789")
        .json(&json!({"name": "lapsing", "slot": "rule-lapsing-repeat-buyer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let live = defined["members"].as_u64().unwrap();
    assert!(live > 0, "{defined}");

    let preview = run(rekindle()
        .args(["segment", "preview", "--slot", "rule-lapsing-repeat-buyer", "--param", "grace_days=0", "--compare", "lapsing"])
        .args(["--at", &now, "--url", &base, "--admin-token", "pv-admin-0123456789"]));
    assert!(preview.status.success(), "{}", text(&preview.stderr));
    let out = text(&preview.stdout);
    // A grace of 0 is looser than 8: everyone in the live segment stays, and more enter.
    assert!(out.contains("of 300 profiles would qualify"), "{out}");
    assert!(out.contains(&format!("compared with `lapsing` ({live} members)")), "{out}");
    assert!(out.contains(" 0 would leave"), "{out}");
    assert!(!out.contains(" 0 would enter"), "{out}");

    let bad = run(rekindle().args(["segment", "preview", "--slot", "nope", "--url", &base, "--admin-token", "pv-admin-0123456789"]));
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("400"), "{}", text(&bad.stderr));
}

/// Today at 00:00 UTC, as `demo generate` defaults to.
fn chrono_now_day() -> String {
    chrono::Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An admin token short enough to guess is refused before anything is served.
#[test]
fn a_short_or_empty_admin_token_is_refused_at_start_up() {
    let work = tempfile::tempdir().unwrap();
    let serve = || {
        let mut command = rekindle();
        command.arg("serve").args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(work.path()).env_remove("REKINDLE_ADMIN_TOKEN");
        command
    };
    for (what, bad) in [
        ("empty", run(serve().args(["--admin-token", ""]))),
        ("9 characters", run(serve().env("REKINDLE_ADMIN_TOKEN", "change-me"))),
        ("15 characters", run(serve().args(["--admin-token", "0123456789abcde"]))),
    ] {
        assert!(!bad.status.success(), "{what}: the host started");
        let err = text(&bad.stderr);
        assert!(err.contains(&format!("the admin token (--admin-token, REKINDLE_ADMIN_TOKEN or admin_token) is {what}")), "{err}");
        assert!(err.contains("at least 16 characters"), "{err}");
    }
    // So is an identity secret short enough to guess, since it proves who a visitor is.
    let config = work.path().join("rekindle.toml");
    std::fs::write(&config, "[[sources]]\nname = \"web\"\nwrite_key = \"k\"\nidentity_secret = \"too-short\"\n").unwrap();
    let bad = run(serve().arg("--config").arg(&config));
    assert!(!bad.status.success());
    let err = text(&bad.stderr);
    assert!(err.contains("sources[0] (web): identity_secret must be at least 32 characters"), "{err}");
}
