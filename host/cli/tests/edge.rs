//! The edge bundle in `workerd`, against the server, on a generated corpus: `rekindle edge
//! build` transpiles the host's own components with jco, `workerd` serves the bundle on
//! loopback, and for every case (a visitor, a slot, a time, a token issued days before)
//! the edge's tile decision and edge-rule verdicts must equal the server's reference,
//! compared as canonical JSON. Forged and expired tokens must give the anonymous answer.
//!
//! jco and workerd come from npm (pinned in `rekindle::edge`); scripts/test installs them.

mod support;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use support::{free_port, rekindle, serve_with_env, shipped_plugins, text};

const ADMIN: &str = "edge-admin-token-0123";
const SECRET: &str = "conformance-secret-0123456789abcdef";
const DAY: i64 = 86_400_000;
const CASES: usize = 200;

struct Workerd(Child);

impl Drop for Workerd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pinned Node tools, or `None` outside CI when npm cannot provide them.
fn workerd_binary() -> Option<PathBuf> {
    match rekindle::edge::tool("workerd") {
        Ok(path) => Some(path),
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "the edge tools are missing in CI: {e:#}");
            eprintln!("skipping: {e:#}");
            None
        }
    }
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_bundle_in_workerd_agrees_with_the_server_on_a_generated_corpus() {
    let Some(workerd) = workerd_binary() else { return };
    let work = tempfile::tempdir().unwrap();
    let plugins = shipped_plugins(work.path());
    let data = work.path().join("data");
    let args = [OsStr::new("--plugins"), plugins.as_os_str(), OsStr::new("--data-dir"), data.as_os_str(), OsStr::new("--server-source"), OsStr::new("web=web-key")];
    let (_server, base) = serve_with_env(&args, ADMIN, &[("REKINDLE_TOKEN_SECRET", SECRET)]).await;
    let http = reqwest::Client::new();
    let admin = |path: &str, body: Value| {
        let request = http.post(format!("{base}{path}")).bearer_auth(ADMIN).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "{status}: {body}");
            body
        }
    };

    // A shop of 40 customers whose memberships move with time: buyers of every count,
    // value and recency around the corpus's times, with names, plans and categories.
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    // Today: segments are backfilled at the real clock, so tokens carry today's memberships
    // and the cases, up to 150 days on, see how far time alone moves them.
    let t0 = chrono::Utc::now().timestamp_millis() / DAY * DAY;
    let categories = ["shoes", "tops", "pants"];
    let mut batch = Vec::new();
    for c in 0..40 {
        let user = format!("c{c}");
        let name = ["Ann", "Bob", "Chloe", "Dev"][c % 4];
        let mut traits = json!({ "first_name": name });
        if rng.random_bool(0.5) {
            let plan = ["gold", "silver"][c % 2];
            traits["plan"] = json!(plan);
        }
        batch.push(json!({"type": "identify", "messageId": format!("{user}-i"), "userId": user, "traits": traits}));
        let orders = rng.random_range(0..5);
        for k in 0..orders {
            let at = t0 - rng.random_range(0..200) * DAY;
            batch.push(json!({"type": "track", "messageId": format!("{user}-o{k}"), "userId": user, "event": "Order Completed",
                "timestamp": iso(at), "properties": {"revenue": rng.random_range(20..400), "products": [{"category": categories[rng.random_range(0..3)]}]}}));
        }
    }
    let response = http.post(format!("{base}/v1/batch")).basic_auth("web-key", Some("")).json(&json!({"batch": batch})).send().await.unwrap();
    assert!(response.status().is_success());

    for (name, slot) in [("VIP", "rule-high-ltv"), ("Win back", "rule-win-back-window"), ("Sleepy", "rule-one-time-about-to-sleep"), ("Lapsing", "rule-lapsing-repeat-buyer")] {
        admin("/v1/segments", json!({"name": name, "slot": slot})).await;
    }
    let segments = ["VIP", "Win back", "Sleepy", "Lapsing"];
    let slots = [("hero", 1, json!({})), ("sidebar", 2, json!({"segment_weight": 30.0})), ("footer", 3, json!({"category_weight": 0.0}))];
    for (name, max, params) in &slots {
        admin("/v1/tile-slots", json!({"name": name, "max_tiles": max, "params": params, "fallback": [{"title": "Sale", "link": "/sale"}]})).await;
    }
    // A slot whose plugin is not loaded: its fallback, at the edge as at the server.
    admin("/v1/tile-slots", json!({"name": "ghost", "plugin": "not-loaded", "fallback": [{"title": "Sale", "link": "/sale"}]})).await;
    for o in 0..18 {
        let mut offer = json!({
            "id": format!("offer-{o}"), "slot": slots[o % 3].0, "priority": rng.random_range(0..20),
            "title": "Hi {{first_name|there}}", "body": "Use {{voucher}} now", "link": format!("/o{o}"),
        });
        if rng.random_bool(0.5) {
            offer["include_segments"] = json!([segments[rng.random_range(0..4)]]);
        }
        if rng.random_bool(0.2) {
            offer["exclude_segments"] = json!([segments[rng.random_range(0..4)]]);
        }
        if rng.random_bool(0.5) {
            offer["category"] = json!(categories[rng.random_range(0..3)]);
        }
        if rng.random_bool(0.3) {
            offer["voucher"] = json!(format!("CODE{o}"));
        }
        if rng.random_bool(0.2) {
            let percent = [30, 50, 100][rng.random_range(0..3)];
            offer["holdout_percent"] = json!(percent);
        }
        if rng.random_bool(0.2) {
            offer["traits"] = json!({"plan": "gold"});
        }
        if rng.random_bool(0.2) {
            offer["valid_from"] = json!(iso(t0 + rng.random_range(0..60) * DAY));
        }
        if rng.random_bool(0.2) {
            offer["valid_until"] = json!(iso(t0 + rng.random_range(61..200) * DAY));
        }
        if rng.random_bool(0.2) {
            offer["image"] = json!(format!("https://cdn.example/{o}.jpg"));
        }
        admin("/v1/offers", offer).await;
    }

    // The bundle, built by the CLI from the running host, served by workerd on loopback.
    let bundle = work.path().join("bundle");
    let built = rekindle()
        .args(["edge", "build", "--url", &base, "--out"])
        .arg(&bundle)
        .env("REKINDLE_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built.stderr));
    assert!(text(&built.stdout).contains("4 slot(s), 18 offer(s), 3 edge segment(s), 4 component(s)"), "{}", text(&built.stdout));
    for file in ["worker.js", "components.js", "snapshot.json", "workerd.capnp", "wrangler.toml"] {
        assert!(bundle.join(file).exists(), "{file} is missing from the bundle");
    }
    let port = free_port();
    let _workerd = Workerd(
        Command::new(&workerd)
            .arg("serve")
            .arg(bundle.join("workerd.capnp"))
            .args(["--socket-addr", &format!("http=127.0.0.1:{port}")])
            .env("REKINDLE_TOKEN_SECRET", SECRET)
            .env("REKINDLE_CONFORMANCE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let edge = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while http.get(format!("{edge}/__rekindle/health")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "workerd did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let conform = |token: Option<String>, slot: &str, now: i64| {
        let request = http.post(format!("{edge}/__rekindle/conformance")).json(&json!({"token": token, "slot": slot, "now": now}));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let (mut personal, mut moved, mut fallbacks) = (0, 0, 0);
    for case in 0..CASES {
        let now = t0 + rng.random_range(0..150) * DAY + rng.random_range(0..DAY);
        let slot = slots[rng.random_range(0..3)].0;
        let user = (rng.random_range(0..10) > 0).then(|| format!("c{}", rng.random_range(0..40)));
        let token = match &user {
            // Issued up to five days before the request: memberships may have moved since.
            Some(user) => Some(admin("/admin/tiles/token", json!({"userId": user, "at": now - rng.random_range(0..5 * DAY)})).await["token"].as_str().unwrap().to_string()),
            None => None,
        };
        let at_edge = conform(token.clone(), slot, now).await;
        let at_server = admin("/admin/edge/reference", json!({"userId": user, "slot": slot, "now": now})).await;
        assert_eq!(at_edge, at_server, "case {case}: {user:?} in {slot} at {}", iso(now));
        personal += usize::from(at_server["decision"]["known_visitor"] == true);
        fallbacks += usize::from(at_server["decision"]["fallback"] == true);
        // A verdict that differs from the membership the token carried: time alone moved it.
        if let Some(token) = &token {
            // Sealed: only the secret opens it (0 as "now", since only the claims matter here).
            let claims = rekindle_server::token::verify(token, SECRET.as_bytes(), 0).unwrap();
            let carried = |segment: &str| claims.segments.iter().any(|m| m.segment == segment);
            moved += at_server["verdicts"].as_array().unwrap().iter().filter(|v| v["member"].as_bool() != Some(carried(v["segment"].as_str().unwrap()))).count();
        }
    }
    assert!(personal >= 150, "{personal} of {CASES} cases were personal");
    assert!(moved >= 20, "only {moved} verdicts moved with time; the corpus should exercise edge rules");
    assert_eq!(fallbacks, 0);
    for user in [Some("c1"), None] {
        let now = t0 + 3 * DAY;
        let token = match user {
            Some(user) => Some(admin("/admin/tiles/token", json!({"userId": user, "at": now})).await["token"].as_str().unwrap().to_string()),
            None => None,
        };
        let at_server = admin("/admin/edge/reference", json!({"userId": user, "slot": "ghost", "now": now})).await;
        assert_eq!(at_server["decision"]["fallback"], true);
        assert_eq!(conform(token, "ghost", now).await, at_server);
    }

    // A forged, altered, expired or otherwise spelled token gets the anonymous decision, and
    // the edge then agrees with the server's answer for nobody.
    use base64::Engine as _;
    let now = t0 + 10 * DAY;
    let token = admin("/admin/tiles/token", json!({"userId": "c1", "at": now - DAY})).await["token"].as_str().unwrap().to_string();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap();
    let mut altered = raw.clone();
    altered[20] ^= 1;
    let expired = admin("/admin/tiles/token", json!({"userId": "c1", "at": now - 30 * DAY})).await["token"].as_str().unwrap().to_string();
    let anonymous = admin("/admin/edge/reference", json!({"slot": "hero", "now": now})).await;
    let spelled = [
        base64::engine::general_purpose::URL_SAFE.encode(&raw),
        base64::engine::general_purpose::STANDARD.encode(&raw),
        format!(" {token}"),
        format!("{token}\n"),
    ];
    let others = [base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&altered), expired, token[1..].to_string(), "garbage".to_string()];
    for other in spelled.into_iter().filter(|t| *t != token).chain(others) {
        let at_edge = conform(Some(other.clone()), "hero", now).await;
        assert_eq!(at_edge, anonymous, "{other:?}");
        assert_eq!(at_edge["decision"]["known_visitor"], false);
        assert!(rekindle_server::token::verify(&other, SECRET.as_bytes(), now).is_err(), "the host must refuse {other:?} too");
    }
}
