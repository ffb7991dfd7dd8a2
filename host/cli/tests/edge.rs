//! The edge bundle in `workerd`, against the server, on a generated corpus of over 2,000
//! cases: `rekindle edge build` transpiles and instruments the host's own components with
//! jco, `workerd` serves the bundle on loopback, and every answer must equal the server's,
//! compared whole as canonical JSON:
//! - the reference decision (a visitor, a slot, a time, a token issued days before) at
//!   window edges, offer validity edges, DST changes and a leap day;
//! - hostile plugins: a tile plugin keeping the last visitor in a static, one looping past
//!   its deadline, one over the output limit, one over the memory cap, one panicking, and
//!   rules that panic, loop, recurse, hoard memory or return too much;
//! - the live `GET`/`POST /v1/tiles` path against the origin's, valid requests and bad ones;
//! - tampered tokens, and the shared token vectors (`tests/vectors/tokens.json`), which the
//!   host's own unit test judges too.
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
/// Reference cases: a decision at a chosen time.
const REFERENCE_CASES: usize = 1_500;
/// Live cases: the same request to the origin's and the edge's `/v1/tiles`.
const LIVE_CASES: usize = 450;

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

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

/// `{base}/v1/tiles` with `query`, encoded.
fn tiles_url<K: AsRef<str>, V: AsRef<str>>(base: &str, query: &[(K, V)]) -> reqwest::Url {
    reqwest::Url::parse_with_params(&format!("{base}/v1/tiles"), query.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))).unwrap()
}

/// The hostile plugins the corpus runs beside the shipped ones, by registry slot.
const HOSTILE: [&str; 6] =
    ["hostile-tiles", "hostile-endless-loop", "hostile-huge-output", "hostile-unbounded-alloc", "hostile-panics", "hostile-infinite-recursion"];

/// Page slots, with their plugin and parameters and how often the corpus asks for each.
const SLOTS: [(&str, &str, u32, &str, u32); 11] = [
    ("hero", "tiles-basic", 1, "{}", 30),
    ("sidebar", "tiles-basic", 2, r#"{"segment_weight": 30.0}"#, 20),
    ("footer", "tiles-basic", 3, r#"{"category_weight": 0.0}"#, 20),
    ("ghost", "not-loaded", 1, "{}", 3),
    ("memory", "hostile-tiles", 1, r#"{"mode": "remember"}"#, 12),
    ("spin", "hostile-tiles", 1, r#"{"mode": "loop"}"#, 1),
    ("huge", "hostile-tiles", 1, r#"{"mode": "huge"}"#, 3),
    ("grow", "hostile-tiles", 1, r#"{"mode": "grow"}"#, 3),
    ("panic", "hostile-tiles", 1, r#"{"mode": "panic"}"#, 3),
    ("bogus", "hostile-tiles", 1, r#"{"mode": "bogus"}"#, 2),
    ("links", "hostile-tiles", 2, r#"{"mode": "unsafe-links"}"#, 3),
];

fn pick_slot(rng: &mut ChaCha8Rng) -> &'static str {
    let total: u32 = SLOTS.iter().map(|s| s.4).sum();
    let mut at = rng.random_range(0..total);
    for (name, _, _, _, weight) in SLOTS {
        if at < weight {
            return name;
        }
        at -= weight;
    }
    unreachable!()
}

struct Setup {
    http: reqwest::Client,
    base: String,
    edge: String,
    /// Midnight UTC today: the shop's history is laid out around it.
    t0: i64,
    /// The times offers start and stop being valid: their edges are parity cases.
    offer_edges: Vec<i64>,
    _server: support::Server,
    workerd: Workerd,
    workerd_binary: PathBuf,
    work: tempfile::TempDir,
}

impl Setup {
    async fn admin(&self, path: &str, body: Value) -> Value {
        let response = self.http.post(format!("{}{path}", self.base)).bearer_auth(ADMIN).json(&body).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status}: {body}");
        body
    }

    /// The JSON answer to POSTing `body` to `url`.
    async fn post(&self, url: String, body: &Value) -> Value {
        self.http.post(url).json(body).send().await.unwrap().json().await.unwrap()
    }

    /// Builds and serves the bundle again, after a change to the host's catalog.
    async fn rebuild(&mut self) {
        let bundle = self.work.path().join(format!("bundle-{}", free_port()));
        let (workerd, edge, _) = serve_bundle(&self.workerd_binary, &self.base, &bundle).await;
        self.workerd = workerd;
        self.edge = edge;
    }

    async fn token(&self, user: &str, at: i64) -> String {
        self.admin("/admin/tiles/token", json!({"userId": user, "at": at})).await["token"].as_str().unwrap().to_string()
    }

    async fn conform(&self, token: Option<&str>, slot: &str, now: i64) -> Value {
        let request = self.http.post(format!("{}/__rekindle/conformance", self.edge)).json(&json!({"token": token, "slot": slot, "now": now}));
        request.send().await.unwrap().json::<Value>().await.unwrap()
    }

    async fn reference(&self, user: Option<&str>, slot: &str, now: i64) -> Value {
        self.admin("/admin/edge/reference", json!({"userId": user, "slot": slot, "now": now})).await
    }

    /// The server's reference, asked again (up to three times, counted in `retried`) while
    /// it differs from the edge's only because the server was [`starved`].
    async fn settled_reference(&self, at_edge: &Value, user: Option<&str>, slot: &str, now: i64, retried: &mut usize) -> Value {
        let mut at_server = self.reference(user, slot, now).await;
        for _ in 0..3 {
            if at_server == *at_edge || !starved(&at_server) {
                break;
            }
            *retried += 1;
            at_server = self.reference(user, slot, now).await;
        }
        at_server
    }
}

/// Builds an edge bundle from the host at `base` into `bundle` with the CLI and serves it
/// in workerd on a free loopback port: the process, its URL and the build's summary.
async fn serve_bundle(workerd: &PathBuf, base: &str, bundle: &std::path::Path) -> (Workerd, String, String) {
    let built = rekindle().args(["edge", "build", "--url", base, "--out"]).arg(bundle).env("REKINDLE_ADMIN_TOKEN", ADMIN).output().unwrap();
    assert!(built.status.success(), "{}", text(&built.stderr));
    for file in ["worker.js", "components.js", "snapshot.json", "workerd.capnp", "wrangler.toml"] {
        assert!(bundle.join(file).exists(), "{file} is missing from the bundle");
    }
    let port = free_port();
    let process = Workerd(
        Command::new(workerd)
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
    support::wait_until_up(&format!("{edge}/__rekindle/health"), "workerd", Duration::from_secs(30)).await;
    (process, edge, text(&built.stdout))
}

async fn setup() -> Option<Setup> {
    let workerd_binary = workerd_binary()?;
    let workerd = &workerd_binary;
    let work = tempfile::tempdir().unwrap();
    let plugins = shipped_plugins(work.path());
    for (name, path) in rekindle_tests::components::ALL {
        if HOSTILE.contains(name) {
            std::fs::copy(path, plugins.join(format!("{}.wasm", name.replace('-', "_")))).unwrap();
        }
    }
    let data = work.path().join("data");
    // Tokens last 14 days, so one issued on day 60 is still good on day 68.
    let config = work.path().join("rekindle.toml");
    std::fs::write(&config, "[tiles]\ntoken_ttl_hours = 336\n").unwrap();
    let args = [
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--plugins"),
        plugins.as_os_str(),
        OsStr::new("--data-dir"),
        data.as_os_str(),
        OsStr::new("--server-source"),
        OsStr::new("web=web-key"),
    ];
    let (server, base) = serve_with_env(&args, ADMIN, &[("REKINDLE_TOKEN_SECRET", SECRET)]).await;
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
    // value and recency around the corpus's times, with names (some beyond ASCII), plans
    // and categories.
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    // Today: segments are backfilled at the real clock, so tokens carry today's memberships
    // and the cases, up to 150 days on, see how far time alone moves them.
    let t0 = chrono::Utc::now().timestamp_millis() / DAY * DAY;
    let categories = ["shoes", "tops", "pants"];
    let mut batch = Vec::new();
    for c in 0..40 {
        let user = format!("c{c}");
        let name = ["Ann", "Bob", "Chloé", "Dev", "😀 Zoë", "Ｗei", "", "O'Brien <b>"][c % 8];
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
    // A 60-day buyer whose last order was 60 days ago: lapsing from day 68.
    batch.push(json!({"type": "identify", "messageId": "flip-i", "userId": "flip", "traits": {"first_name": "Flo"}}));
    for (k, days_ago) in [180, 120, 60].into_iter().enumerate() {
        batch.push(json!({"type": "track", "messageId": format!("flip-o{k}"), "userId": "flip", "event": "Order Completed",
            "timestamp": iso(t0 - days_ago * DAY), "properties": {"revenue": 30}}));
    }
    let response = http.post(format!("{base}/v1/batch")).basic_auth("web-key", Some("")).json(&json!({"batch": batch})).send().await.unwrap();
    assert!(response.status().is_success());

    // The edge segments, two of them named so that code-point and UTF-16 order differ, a
    // segment the edge cannot evaluate, and hostile rules whose every verdict is an error.
    for (name, slot, params) in [
        ("VIP", "rule-high-ltv", json!({})),
        ("Win back", "rule-win-back-window", json!({})),
        ("Sleepy", "rule-one-time-about-to-sleep", json!({})),
        ("Lapsing", "rule-lapsing-repeat-buyer", json!({})),
        ("～ big", "rule-high-ltv", json!({"min_ltv": 100.0})),
        ("😀 some", "rule-high-ltv", json!({"min_ltv": 50.0})),
        ("Boom", "hostile-panics", json!({})),
        ("Spin", "hostile-endless-loop", json!({})),
        ("Verbose", "hostile-huge-output", json!({})),
        ("Hoard", "hostile-unbounded-alloc", json!({})),
        ("Deep", "hostile-infinite-recursion", json!({})),
        // Population cutoffs: the host's recorded ones at both sides, named in each verdict.
        ("RFM", "rule-rfm-win-back", json!({"recency_days_cutoffs": "auto", "frequency_cutoffs": "auto", "monetary_cutoffs": "auto"})),
    ] {
        admin("/v1/segments", json!({"name": name, "slot": slot, "params": params})).await;
    }
    let segments = ["VIP", "Win back", "Sleepy", "Lapsing", "～ big", "😀 some"];
    for (name, plugin, max, params, _) in SLOTS {
        let params: Value = serde_json::from_str(params).unwrap();
        admin("/v1/tile-slots", json!({"name": name, "plugin": plugin, "max_tiles": max, "params": params, "fallback": [{"title": "Sale", "link": "/sale"}]}))
            .await;
    }
    let mut offer_edges = Vec::new();
    for o in 0..18 {
        let mut offer = json!({
            "id": format!("offer-{o}"), "slot": SLOTS[o % 3].0, "priority": rng.random_range(0..20),
            "title": "Hi {{first_name|there}}", "body": "Use {{voucher}} now", "link": format!("/o{o}"),
        });
        if rng.random_bool(0.5) {
            offer["include_segments"] = json!([segments[rng.random_range(0..segments.len())]]);
        }
        if rng.random_bool(0.2) {
            offer["exclude_segments"] = json!([segments[rng.random_range(0..segments.len())]]);
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
        if rng.random_bool(0.3) {
            let from = t0 + rng.random_range(0..60) * DAY + rng.random_range(0..DAY);
            offer_edges.push(from);
            offer["valid_from"] = json!(iso(from));
        }
        if rng.random_bool(0.3) {
            let until = t0 + rng.random_range(61..150) * DAY + rng.random_range(0..DAY);
            offer_edges.push(until);
            offer["valid_until"] = json!(iso(until));
        }
        if rng.random_bool(0.2) {
            offer["image"] = json!(format!("https://cdn.example/{o}.jpg"));
        }
        admin("/v1/offers", offer).await;
    }
    for (slot, _, _, _, _) in &SLOTS[4..] {
        admin("/v1/offers", json!({"id": format!("{slot}-offer"), "slot": slot, "title": "Hi", "body": "", "link": "/h"})).await;
        admin("/v1/offers", json!({"id": format!("{slot}-offer-2"), "slot": slot, "title": "Hello", "body": "", "link": "/h2"})).await;
    }

    // The bundle, built by the CLI from the running host, served by workerd on loopback.
    let (workerd, edge, summary) = serve_bundle(workerd, &base, &work.path().join("bundle")).await;
    assert!(summary.contains("11 slot(s), 32 offer(s), 12 edge segment(s), 12 component(s)"), "{summary}");
    Some(Setup { http, base, edge, t0, offer_edges, _server: server, workerd, workerd_binary, work })
}

/// Whether the server's answer shows a plugin call it cut short for want of time or a free
/// thread (its deadline is wall-clock time, and this test shares two cores with others), in
/// a plugin that finishes in well under its deadline when it gets the CPU: asked again, it
/// decides. The edge's fuel does not depend on load.
fn starved(answer: &Value) -> bool {
    match answer {
        Value::Object(map) => {
            let slow_segment = map.get("segment").is_some_and(|s| s != "Spin")
                && map.get("error").and_then(Value::as_str).is_some_and(|e| e.starts_with("timed out") || e.starts_with("every plugin thread"));
            let slot = map.get("slot").and_then(Value::as_str).unwrap_or_default();
            let slow_tiles = map.get("fallback") == Some(&Value::Bool(true)) && ["hero", "sidebar", "footer"].contains(&slot);
            slow_segment || slow_tiles || map.values().any(starved)
        }
        Value::Array(items) => items.iter().any(starved),
        _ => false,
    }
}

/// A time for a reference case: mostly anywhere in the next 150 days, and often exactly
/// at (or a millisecond either side of) a day boundary, an offer's validity edge, a DST
/// change in Europe and the US, or a leap day.
fn pick_time(rng: &mut ChaCha8Rng, s: &Setup) -> i64 {
    let near = |at: i64, rng: &mut ChaCha8Rng| at + rng.random_range(-1..=1);
    match rng.random_range(0..10) {
        0..=4 => s.t0 + rng.random_range(0..150) * DAY + rng.random_range(0..DAY),
        5 | 6 => near(s.t0 + rng.random_range(1..150) * DAY, rng),
        7 if !s.offer_edges.is_empty() => near(s.offer_edges[rng.random_range(0..s.offer_edges.len())], rng),
        _ => {
            let special = [
                "2027-03-28T01:00:00Z",
                "2027-10-31T01:00:00Z",
                "2027-03-14T07:00:00Z",
                "2028-02-29T00:00:00Z",
                "2028-02-29T23:59:59.999Z",
                "2028-03-01T00:00:00Z",
            ];
            near(ms(special[rng.random_range(0..special.len())]), rng)
        }
    }
}

/// Other spellings and alterations of a real token: each must be nobody, at both sides.
fn tampered(token: &str, rng: &mut ChaCha8Rng) -> String {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).unwrap();
    match rng.random_range(0..7) {
        0 => base64::engine::general_purpose::URL_SAFE.encode(&raw),
        1 => base64::engine::general_purpose::STANDARD.encode(&raw),
        2 => format!(" {token}"),
        3 => format!("{token}\n"),
        4 => token[..token.len() - 1].to_string(),
        5 => {
            let mut altered = raw.clone();
            let at = rng.random_range(0..altered.len());
            altered[at] ^= 1 << rng.random_range(0..8);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&altered)
        }
        _ => format!("{}=", token),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_bundle_in_workerd_agrees_with_the_server_on_a_generated_corpus() {
    let Some(s) = setup().await else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut cases = 0;

    // The token vectors, judged by the edge as the host's unit test judges them.
    let vectors: Value = serde_json::from_str(&std::fs::read_to_string(support::workspace_root().join("tests/vectors/tokens.json")).unwrap()).unwrap();
    for v in vectors["vectors"].as_array().unwrap() {
        let body = json!({"token": v["token"], "secret": vectors["secret"], "now": vectors["now"]});
        let at_edge = s.post(format!("{}/__rekindle/token", s.edge), &body).await;
        assert_eq!(at_edge, json!({"valid": v["valid"], "sub": v["sub"]}), "token vector {}", v["name"]);
        cases += 1;
    }

    // Reference cases.
    let (mut personal, mut moved, mut fallbacks, mut errors, mut evaluated) = (0, 0, 0, 0, 0);
    let mut retried = 0;
    let mut rfm_named = 0;
    for case in 0..REFERENCE_CASES {
        let now = pick_time(&mut rng, &s);
        let slot = pick_slot(&mut rng);
        let user = (rng.random_range(0..10) > 0).then(|| format!("c{}", rng.random_range(0..40)));
        let mut token = match &user {
            // Issued up to five days before the request: memberships may have moved since.
            Some(user) => Some(s.token(user, now - rng.random_range(0..5 * DAY)).await),
            None => None,
        };
        let mut asked_for = user.clone();
        if let Some(t) = &token
            && rng.random_range(0..10) == 0
        {
            // Another spelling can be the same string (no padding due, no `-` or `_`).
            let other = tampered(t, &mut rng);
            if other != *t {
                token = Some(other);
                asked_for = None;
            }
        }
        let at_edge = s.conform(token.as_deref(), slot, now).await;
        let at_server = s.settled_reference(&at_edge, asked_for.as_deref(), slot, now, &mut retried).await;
        assert_eq!(at_edge, at_server, "case {case}: {user:?} in {slot} at {} (token tampered: {})", iso(now), asked_for.is_none() && user.is_some());
        personal += usize::from(at_server["decision"]["known_visitor"] == true);
        fallbacks += usize::from(at_server["decision"]["fallback"] == true);
        let verdicts = at_server["verdicts"].as_array().unwrap();
        errors += verdicts.iter().filter(|v| v.get("error").is_some()).count();
        rfm_named += verdicts.iter().filter(|v| v["segment"] == "RFM" && v["cutoffs_at"].is_i64()).count();
        evaluated += usize::from(!verdicts.is_empty());
        if let Some(token) = token.as_deref().filter(|_| asked_for.is_some()) {
            // Sealed: only the secret opens it (0 as "now", since only the claims matter here).
            let claims = rekindle_tiles::token::verify(token, SECRET.as_bytes(), 0).unwrap();
            let carried = |segment: &str| claims.segments.iter().any(|m| m.segment == segment);
            moved += verdicts.iter().filter(|v| v.get("member").is_some() && v["member"].as_bool() != Some(carried(v["segment"].as_str().unwrap()))).count();
        }
        // One visitor's static state never shows in the next visitor's tile.
        if slot == "memory" && at_server["decision"]["fallback"] == false {
            for tile in at_edge["decision"]["tiles"].as_array().unwrap() {
                assert_eq!(tile["title"], "last visitor: ", "case {case}: an instance kept a visitor");
            }
        }
        cases += 1;
    }
    eprintln!("{REFERENCE_CASES} reference cases: {personal} personal, {fallbacks} fallbacks, {moved} verdicts moved with time, {errors} error verdicts");
    assert!(personal >= REFERENCE_CASES * 6 / 10, "{personal} of {REFERENCE_CASES} cases were personal");
    assert!(moved >= 100, "only {moved} verdicts moved with time; the corpus should exercise edge rules");
    assert!(rfm_named >= personal / 2, "RFM verdicts name their cutoffs: {rfm_named}");
    assert!(fallbacks >= REFERENCE_CASES / 10, "hostile slots must fall back: {fallbacks}");
    assert_eq!(errors, 5 * evaluated, "every hostile rule's verdict is an error, and no other");

    // Live cases: the same request to both `/v1/tiles`, answered at the real clock.
    for case in 0..LIVE_CASES {
        let user = (rng.random_range(0..5) > 0).then(|| format!("c{}", rng.random_range(0..40)));
        let token = match &user {
            Some(user) => Some(s.token(user, chrono::Utc::now().timestamp_millis() - rng.random_range(0..DAY)).await),
            None => None,
        };
        // Sometimes the page names who is logged in: the token's own user, or someone else
        // (a token left behind on a shared computer), who must get the anonymous tiles.
        let named = match rng.random_range(0..10) {
            0..=5 => None,
            6..=8 => user.clone(),
            _ => Some(format!("c{}", rng.random_range(0..40))),
        };
        let send_both = async |post: Option<&Value>, slot: &str| {
            let (origin, edge) = match post {
                Some(body) => {
                    let send = |base: &str| s.http.post(format!("{base}/v1/tiles")).json(body).send();
                    (send(&s.base).await.unwrap(), send(&s.edge).await.unwrap())
                }
                None => {
                    let send = |base: &str| {
                        let mut query = vec![("slot", slot)];
                        if let Some(named) = &named {
                            query.push(("userId", named));
                        }
                        let request = s.http.get(tiles_url(base, &query));
                        match &token {
                            Some(token) => request.header("x-rekindle-token", token),
                            None => request,
                        }
                        .send()
                    };
                    (send(&s.base).await.unwrap(), send(&s.edge).await.unwrap())
                }
            };
            // Byte for byte, with the same ETag: the edge writes JSON as serde_json does.
            let tag = |r: &reqwest::Response| r.headers().get("etag").map(|t| t.to_str().unwrap().to_string());
            let (origin_status, edge_status, origin_tag, edge_tag) = (origin.status(), edge.status(), tag(&origin), tag(&edge));
            let (origin_body, edge_body) = (origin.text().await.unwrap(), edge.text().await.unwrap());
            ((origin_status, origin_tag, origin_body), (edge_status, edge_tag, edge_body))
        };
        let (post, slot) = if rng.random_bool(0.7) {
            let count = rng.random_range(1..=3);
            let mut names: Vec<&str> = Vec::new();
            while names.len() < count {
                let slot = pick_slot(&mut rng);
                if slot != "spin" && !names.contains(&slot) {
                    names.push(slot);
                }
            }
            (Some(json!({"slots": names, "token": token, "userId": named, "url": "https://shop.example/?utm_source=mail"})), "")
        } else {
            (None, pick_slot(&mut rng))
        };
        let (mut origin, mut edge) = send_both(post.as_ref(), slot).await;
        for _ in 0..3 {
            if origin == edge || !starved(&serde_json::from_str(&origin.2).unwrap_or(Value::Null)) {
                break;
            }
            retried += 1;
            (origin, edge) = send_both(post.as_ref(), slot).await;
        }
        assert_eq!(edge, origin, "live case {case}: {user:?}");
        cases += 1;
    }

    // Bad requests get the same status and body at both.
    let long = "x".repeat(201);
    let long_url = format!("https://shop.example/{}", "x".repeat(2048));
    let posts: Vec<(&str, String)> = vec![
        ("not JSON", "{".into()),
        ("JSON null", "null".into()),
        ("a list", "[]".into()),
        ("a number", "7".into()),
        ("no slots", "{}".into()),
        ("slots not a list", r#"{"slots": "hero"}"#.into()),
        ("no slot named", r#"{"slots": []}"#.into()),
        ("eleven slots", json!({"slots": (0..11).map(|i| format!("s{i}")).collect::<Vec<_>>()}).to_string()),
        ("a number as a slot", r#"{"slots": ["hero", 5]}"#.into()),
        ("null as a slot", r#"{"slots": [null]}"#.into()),
        ("an object without a slot", r#"{"slots": [{"name": "hero"}]}"#.into()),
        ("an object with a slot", r#"{"slots": [{"slot": "hero"}]}"#.into()),
        ("a slot twice", r#"{"slots": ["hero", {"slot": "hero"}]}"#.into()),
        ("an over-long slot", json!({"slots": [long]}).to_string()),
        ("an unknown slot", r#"{"slots": ["nowhere", "hero"]}"#.into()),
        ("an over-long user id", json!({"slots": ["hero"], "userId": long}).to_string()),
        ("a numeric user id", r#"{"slots": ["hero"], "userId": 5}"#.into()),
        ("an over-long anonymous id", json!({"slots": ["hero"], "anonymousId": long}).to_string()),
        ("an over-long write key", json!({"slots": ["hero"], "writeKey": long}).to_string()),
        ("an over-long page URL", json!({"slots": ["hero"], "url": long_url}).to_string()),
        ("a long page URL within limits", json!({"slots": ["hero"], "url": format!("https://shop.example/{}", "x".repeat(1500))}).to_string()),
        ("a numeric token", r#"{"slots": ["hero"], "token": 5}"#.into()),
        ("an over-long token", json!({"slots": ["hero"], "token": "x".repeat(17 << 10)}).to_string()),
        ("a garbage token", r#"{"slots": ["hero"], "token": "garbage"}"#.into()),
        ("a NUL in a slot", "{\"slots\": [\"he\\u0000ro\"]}".into()),
        ("a NUL in a key", "{\"slots\": [\"hero\"], \"a\\u0000\": 1}".into()),
        ("a lone surrogate", r#"{"slots": ["\ud800"]}"#.into()),
        ("nesting past 128", format!("{{\"slots\": [\"hero\"], \"x\": {}{}}}", "[".repeat(130), "]".repeat(130))),
        ("an empty body", String::new()),
        ("a byte-order mark", "\u{feff}{\"slots\": [\"hero\"]}".into()),
        ("a number too large for a float", r#"{"slots": ["hero"], "x": 1e400}"#.into()),
        ("nesting of 127", format!("{{\"slots\": [\"hero\"], \"x\": {}{}}}", "[".repeat(126), "]".repeat(126))),
        ("nesting of 128", format!("{{\"slots\": [\"hero\"], \"x\": {}{}}}", "[".repeat(127), "]".repeat(127))),
    ];
    let mut posts: Vec<(&str, Vec<u8>)> = posts.into_iter().map(|(name, body)| (name, body.into_bytes())).collect();
    posts.push(("bytes that are not UTF-8", b"{\"slots\": [\"he\xffro\"]}".to_vec()));
    posts.push(("a body over 2 MiB", format!("{{\"slots\": [\"hero\"], \"x\": \"{}\"}}", "x".repeat(3 << 20)).into_bytes()));
    for (name, body) in &posts {
        let send = |base: &str| s.http.post(format!("{base}/v1/tiles")).body(body.clone()).send();
        let (origin, edge) = (send(&s.base).await.unwrap(), send(&s.edge).await.unwrap());
        let (origin_status, edge_status) = (origin.status(), edge.status());
        let (origin_body, edge_body) = (origin.text().await.unwrap(), edge.text().await.unwrap());
        let parse = |t: &str| serde_json::from_str::<Value>(t).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {t}"));
        assert_eq!((edge_status, parse(&edge_body)), (origin_status, parse(&origin_body)), "POST with {name}");
        cases += 1;
    }
    type Query = Vec<(&'static str, String)>;
    type Headers = Vec<(&'static str, &'static str)>;
    let gets: Vec<(&str, Query, Headers)> = vec![
        ("no slot", vec![], vec![]),
        ("an empty slot", vec![("slot", String::new())], vec![]),
        ("an over-long slot", vec![("slot", long.clone())], vec![]),
        ("an unknown slot", vec![("slot", "nowhere".into())], vec![]),
        ("an over-long user id", vec![("slot", "hero".into()), ("userId", long.clone())], vec![]),
        ("an over-long anonymous id", vec![("slot", "hero".into()), ("anonymousId", long.clone())], vec![]),
        ("an over-long page URL", vec![("slot", "hero".into()), ("url", long_url.clone())], vec![]),
        ("a malformed cookie", vec![("slot", "hero".into())], vec![("cookie", "rekindle_token=%E0%A4%A")]),
        ("a garbage token header", vec![("slot", "hero".into())], vec![("x-rekindle-token", "garbage")]),
        ("a token header that is not ASCII", vec![("slot", "hero".into())], vec![("x-rekindle-token", "caf\u{e9}")]),
    ];
    for (name, query, headers) in &gets {
        let send = |base: &str| {
            let mut request = s.http.get(tiles_url(base, query));
            for (k, v) in headers {
                // As bytes: a header need not be ASCII on the wire.
                request = request.header(*k, reqwest::header::HeaderValue::from_bytes(v.as_bytes()).unwrap());
            }
            request.send()
        };
        let (origin, edge) = (send(&s.base).await.unwrap(), send(&s.edge).await.unwrap());
        let (origin_status, edge_status) = (origin.status(), edge.status());
        let (origin_body, edge_body): (Value, Value) = (origin.json().await.unwrap(), edge.json().await.unwrap());
        assert_eq!((edge_status, edge_body), (origin_status, origin_body), "GET with {name}");
        cases += 1;
    }

    // A page that holds the answer already gets 304 from both, for the same ETag.
    let token = s.token("c3", chrono::Utc::now().timestamp_millis()).await;
    let body = json!({"slots": ["hero", "sidebar"], "token": token});
    let first = s.http.post(format!("{}/v1/tiles", s.base)).json(&body).send().await.unwrap();
    let etag = first.headers().get("etag").unwrap().to_str().unwrap().to_string();
    for base in [&s.base, &s.edge] {
        let again = s.http.post(format!("{base}/v1/tiles")).header("if-none-match", format!("W/{etag}")).json(&body).send().await.unwrap();
        assert_eq!(again.status(), 304, "{base}");
        assert_eq!(again.headers().get("etag").unwrap().to_str().unwrap(), etag, "{base}");
        cases += 1;
    }

    // Other methods: the same status at both.
    for method in [reqwest::Method::HEAD, reqwest::Method::PUT, reqwest::Method::DELETE] {
        let send = |base: &str| s.http.request(method.clone(), tiles_url(base, &[("slot", "hero")])).send();
        let (origin, edge) = (send(&s.base).await.unwrap(), send(&s.edge).await.unwrap());
        assert_eq!(edge.status(), origin.status(), "{method}");
        cases += 1;
    }

    // A 60-day buyer turns lapsing on day 68 at the edge, from a token issued on day 60
    // that says they are not.
    let last_order = s.t0 - 60 * DAY;
    let token = s.token("flip", s.t0).await;
    let claims = rekindle_tiles::token::verify(&token, SECRET.as_bytes(), 0).unwrap();
    assert!(!claims.segments.iter().any(|m| m.segment == "Lapsing"), "not lapsing on day 60");
    for (now, member) in [(last_order + 68 * DAY - 1, false), (last_order + 68 * DAY, true)] {
        let at_edge = s.conform(Some(&token), "hero", now).await;
        let at_server = s.settled_reference(&at_edge, Some("flip"), "hero", now, &mut retried).await;
        assert_eq!(at_edge, at_server, "the flip at {}", iso(now));
        let lapsing = at_edge["verdicts"].as_array().unwrap().iter().find(|v| v["segment"] == "Lapsing").cloned();
        assert_eq!(lapsing.as_ref().map(|v| v["member"].clone()), Some(json!(member)), "at {}: {lapsing:?}", iso(now));
        cases += 1;
    }

    // The fallback of a slot whose plugin is not loaded, for a visitor and for nobody.
    for user in [Some("c1"), None] {
        let now = s.t0 + 3 * DAY;
        let token = match user {
            Some(user) => Some(s.token(user, now).await),
            None => None,
        };
        let at_edge = s.conform(token.as_deref(), "ghost", now).await;
        let at_server = s.settled_reference(&at_edge, user, "ghost", now, &mut retried).await;
        assert_eq!(at_server["decision"]["fallback"], true);
        assert_eq!(at_edge, at_server);
        cases += 1;
    }
    eprintln!("{cases} cases in all; {retried} asked again of a server too busy to finish a plugin call in time");
    assert!(cases >= 2_000, "{cases} cases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_is_stopped_at_the_edge_and_others_are_still_answered() {
    let Some(s) = setup().await else { return };
    let token = s.token("c1", chrono::Utc::now().timestamp_millis()).await;
    // Once to instantiate everything, so the timed request measures the deadline alone.
    s.http.post(format!("{}/v1/tiles", s.edge)).json(&json!({"slots": ["spin"], "token": token})).send().await.unwrap();
    let spin = {
        let request = s.http.post(format!("{}/v1/tiles", s.edge)).json(&json!({"slots": ["spin", "hero"], "token": token}));
        tokio::spawn(async move {
            let started = Instant::now();
            let answer: Value = request.send().await.unwrap().json().await.unwrap();
            (answer, started.elapsed())
        })
    };
    // Asked while the loop runs: answered once the deadline stops it.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let started = Instant::now();
    let health = s.http.get(format!("{}/__rekindle/health", s.edge)).send().await.unwrap();
    assert!(health.status().is_success());
    let health_took = started.elapsed();
    let (answer, spin_took) = spin.await.unwrap();
    assert_eq!(answer["decisions"][0]["slot"], "spin");
    assert_eq!(answer["decisions"][0]["fallback"], true, "{answer}");
    assert_eq!(answer["decisions"][1]["fallback"], false, "the other slot is decided: {answer}");
    eprintln!("a looping plugin's request took {spin_took:?} at the edge; the health check asked meanwhile took {health_took:?}");
    assert!(spin_took < Duration::from_secs(2) && health_took < Duration::from_secs(2), "{spin_took:?}, {health_took:?}");
    // And a tile request after it is decided as usual.
    let after = s.post(format!("{}/v1/tiles", s.edge), &json!({"slots": ["hero"], "token": token})).await;
    assert_eq!(after["decisions"][0]["fallback"], false, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_before_a_catalog_change_is_stale_at_the_edge_until_replaced() {
    let Some(mut s) = setup().await else { return };
    let now = chrono::Utc::now().timestamp_millis();
    let before = s.token("c1", now).await;

    // An offer alone changes nothing a token carries: the old token still answers as the
    // origin would.
    s.admin("/v1/offers", json!({"id": "plain-new", "slot": "hero", "priority": 99, "title": "New in", "body": "", "link": "/new"})).await;
    s.rebuild().await;
    let mut retried = 0;
    let at_edge = s.conform(Some(&before), "hero", now).await;
    assert_eq!(at_edge["decision"].get("stale"), None, "{at_edge}");
    assert_eq!(at_edge, s.settled_reference(&at_edge, Some("c1"), "hero", now, &mut retried).await);

    // A new segment, and an offer for its members: a token from before cannot say whether
    // its visitor is one, so the edge marks its answer stale rather than silently
    // leaving the offer out.
    s.admin("/v1/segments", json!({"name": "Carts", "slot": "rule-abandoned-cart"})).await;
    s.admin(
        "/v1/offers",
        json!({"id": "for-carts", "slot": "hero", "priority": 100, "include_segments": ["Carts"], "title": "Your cart", "body": "", "link": "/cart"}),
    )
    .await;
    s.rebuild().await;
    let stale = s.conform(Some(&before), "hero", now).await;
    assert_eq!(stale["decision"]["stale"], true, "{stale}");
    // The page then asks the origin once, which answers with a fresh token; from that one
    // the edge gives the origin's answer again.
    let origin = s.http.post(format!("{}/v1/tiles", s.base)).json(&json!({"slots": ["hero"], "token": before})).send().await.unwrap();
    let fresh = origin.headers().get("x-rekindle-token").unwrap().to_str().unwrap().to_string();
    let at_edge = s.conform(Some(&fresh), "hero", now).await;
    assert_eq!(at_edge["decision"].get("stale"), None, "{at_edge}");
    assert_eq!(at_edge, s.settled_reference(&at_edge, Some("c1"), "hero", now, &mut retried).await);
    // The live path marks the old token's answers the same way.
    let live: Value = s.post(format!("{}/v1/tiles", s.edge), &json!({"slots": ["hero"], "token": before})).await;
    assert_eq!(live["decisions"][0]["stale"], true, "{live}");
}
