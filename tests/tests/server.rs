//! The HTTP server over a real socket: health, the admin API's auth and errors, uploads,
//! activation, rollback, hot swap under load, and slots surviving a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rekindle_runtime::Registry;
use rekindle_server::{AppState, SlotStore, app};
use rekindle_tests::{component, components};
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token";

/// Starts a server over the slot store in `data`, restoring what it recorded.
async fn start(data: &Path) -> SocketAddr {
    let runtime = rekindle_tests::patient_runtime();
    let registry = Arc::new(Registry::new(runtime));
    let store = Arc::new(SlotStore::open(data.join("slots")).unwrap());
    store.restore(&registry).unwrap();
    let state = AppState::new(registry, Some(store), Some(TOKEN.into()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app(state)).await.unwrap() });
    addr
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client { http: reqwest::Client::new(), base: format!("http://{addr}") }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = tokio::time::timeout(Duration::from_secs(30), request.send()).await.expect("request timed out").expect("request failed");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn admin_post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).body(body)).await
    }

    async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)).bearer_auth(TOKEN)).await
    }
}

fn lapsing_case(now: &str) -> String {
    json!({
        "context": {"now": now},
        "profile": {"id": "ann", "events": [
            {"name": "Order Completed", "timestamp": "2026-01-01T00:00:00Z"},
            {"name": "Order Completed", "timestamp": "2026-03-02T00:00:00Z"},
            {"name": "Page Viewed", "timestamp": "2026-04-01T00:00:00Z"}
        ]}
    })
    .to_string()
}

#[tokio::test]
async fn health_and_admin_auth() {
    let data = tempfile::tempdir().unwrap();
    let client = Client::new(start(data.path()).await);
    let (status, body) = client.send(client.http.get(format!("{}/health", client.base))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let (status, body) = client.send(client.http.get(format!("{}/admin/slots", client.base))).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = client.send(client.http.get(format!("{}/admin/slots", client.base)).bearer_auth("wrong")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn upload_activate_invoke_rollback_and_clear_errors() {
    let data = tempfile::tempdir().unwrap();
    let client = Client::new(start(data.path()).await);
    let rule = component(components::RULE_LAPSING_REPEAT_BUYER);

    let (status, body) = client.admin_post("/admin/slots/lapsing/versions?activate=true", rule.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"]["version"], 1);
    assert_eq!(body["version"]["active"], true);

    let (status, body) = client.admin_post("/admin/slots/lapsing/invoke", lapsing_case("2026-05-09T00:00:00Z")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verdict"]["member"], true, "{body}");
    assert_eq!(body["plugin"]["name"], "lapsing-repeat-buyer");
    let (_, body) = client.admin_post("/admin/slots/lapsing/invoke", lapsing_case("2026-05-08T00:00:00Z")).await;
    assert_eq!(body["verdict"]["member"], false, "{body}");

    // Bad input names the field.
    let (status, body) = client.admin_post("/admin/slots/lapsing/invoke", r#"{"context": {"now": "later"}}"#).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "context.now");
    let (status, body) = client.admin_post("/admin/slots/lapsing/invoke", "{not json").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("malformed_json")));
    let (status, body) = client.admin_post("/admin/slots/lapsing/activate", r#"{"version": "two"}"#).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("version")));
    let (status, _) = client.admin_post("/admin/slots/lapsing/activate", r#"{"version": 9}"#).await;
    assert_eq!(status, 404);
    // (`..` itself never reaches the server: HTTP clients resolve dot segments.)
    for bad_slot in ["Bad%20Slot", ".hidden", "a..b%2F"] {
        let (status, body) = client.admin_post(&format!("/admin/slots/{bad_slot}/versions"), rule.clone()).await;
        assert_eq!((status, body["error"]["field"].as_str()), (400, Some("slot")), "{bad_slot}: {body}");
    }

    // Components that cannot serve the slot are refused with the reason.
    let (status, body) = client.admin_post("/admin/slots/lapsing/versions", "not wasm at all").await;
    assert_eq!(status, 422);
    assert!(body["error"]["message"].as_str().unwrap().contains("not a WebAssembly file"), "{body}");
    let (status, body) = client.admin_post("/admin/slots/lapsing/versions", component(components::CHANNEL_WEBHOOK)).await;
    assert_eq!(status, 409);
    assert!(body["error"]["message"].as_str().unwrap().contains("channel-adapter"), "{body}");
    let (status, body) = client.admin_post("/admin/slots/lapsing/versions", component(components::HOSTILE_FORBIDDEN_IMPORT)).await;
    assert_eq!(status, 422);
    assert!(body["error"]["message"].as_str().unwrap().contains("acme:net/http-client"), "{body}");

    // A second version, activated, then rolled back.
    let (status, body) = client.admin_post("/admin/slots/lapsing/versions", component(components::HOSTILE_PANICS)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"]["active"], false);
    let (status, _) = client.admin_post("/admin/slots/lapsing/activate", r#"{"version": 2}"#).await;
    assert_eq!(status, 200);
    let (status, body) = client.admin_post("/admin/slots/lapsing/invoke", lapsing_case("2026-05-09T00:00:00Z")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("trap")));
    assert!(body["error"]["message"].as_str().unwrap().contains("no verdict for ann"), "{body}");
    let (status, body) = client.admin_post("/admin/slots/lapsing/rollback", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"]["version"], 1);

    let (status, body) = client.admin_get("/admin/slots").await;
    assert_eq!(status, 200);
    let slot = &body["slots"][0];
    assert_eq!(slot["slot"], "lapsing");
    assert_eq!(slot["kind"], "rule");
    assert_eq!(slot["active"], 1);
    assert_eq!(slot["versions"].as_array().unwrap().len(), 2);
    let (_, body) = client.admin_get("/admin/slots/lapsing").await;
    assert_eq!(body["describe"]["name"], "lapsing-repeat-buyer");
    let (status, body) = client.admin_get("/admin/slots/nope").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_loaded")));
}

#[tokio::test]
async fn slots_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    {
        let client = Client::new(start(data.path()).await);
        client.admin_post("/admin/slots/lapsing/versions?activate=true", component(components::RULE_LAPSING_REPEAT_BUYER)).await;
        client.admin_post("/admin/slots/lapsing/versions?activate=true", component(components::HOSTILE_PANICS)).await;
        let (status, _) = client.admin_post("/admin/slots/lapsing/rollback", "").await;
        assert_eq!(status, 200);
    }
    let client = Client::new(start(data.path()).await);
    let (_, body) = client.admin_get("/admin/slots").await;
    assert_eq!(body["slots"][0]["active"], 1, "{body}");
    let (status, body) = client.admin_post("/admin/slots/lapsing/invoke", lapsing_case("2026-05-09T00:00:00Z")).await;
    assert_eq!((status, body["verdict"]["member"].as_bool()), (200, Some(true)), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swaps_over_http_drop_no_request() {
    let data = tempfile::tempdir().unwrap();
    let addr = start(data.path()).await;
    let client = Arc::new(Client::new(addr));
    let rule = component(components::RULE_LAPSING_REPEAT_BUYER);
    let mut rule_b = rule.clone();
    // A custom section changes the digest but not the behaviour.
    rule_b.extend_from_slice(&[0, 3, 1, b'x', b'y']);
    client.admin_post("/admin/slots/lapsing/versions?activate=true", rule).await;
    let (status, body) = client.admin_post("/admin/slots/lapsing/versions", rule_b).await;
    assert_eq!(status, 201, "{body}");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let mut ok = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = client.admin_post("/admin/slots/lapsing/invoke", lapsing_case("2026-05-09T00:00:00Z")).await;
                assert_eq!(status, 200, "{body}");
                assert_eq!(body["verdict"]["member"], true);
                ok += 1;
            }
            ok
        }));
    }
    for i in 0..100 {
        let (status, body) = client.admin_post("/admin/slots/lapsing/activate", format!(r#"{{"version": {}}}"#, 1 + i % 2)).await;
        assert_eq!(status, 200, "{body}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for caller in callers {
        total += caller.await.unwrap();
    }
    assert!(total > 0);
}

#[tokio::test]
async fn dropping_the_background_handle_stops_its_loops() {
    let data = tempfile::tempdir().unwrap();
    let store = rekindle_store::Store::open_sqlite(&data.path().join("rekindle.db"), rekindle_store::EventMapping::default()).unwrap();
    let registry = Arc::new(Registry::new(rekindle_tests::patient_runtime()));
    let state =
        AppState::new(registry, None, Some(TOKEN.into())).with_ingestion(rekindle_server::Ingestion { store: store.into(), sources: Default::default() });
    let store = state.ingestion.as_ref().unwrap().store.clone();
    let alone = Arc::strong_count(&store);
    // Real-time and scheduled segments, the tile catalog and the message-id sweep each
    // hold the store.
    let background = rekindle_server::Background::spawn(&state);
    tokio::task::yield_now().await;
    assert_eq!(Arc::strong_count(&store), alone + 4, "four loops share the store");
    // The real-time queue is taken once: a second start adds no second evaluator.
    let second = rekindle_server::Background::spawn(&state);
    assert_eq!(Arc::strong_count(&store), alone + 6, "only the catalog refresh and the sweep start again");
    drop(second);
    drop(background);
    for _ in 0..100 {
        if Arc::strong_count(&store) == alone {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the loops still hold the store: {} references, {alone} expected", Arc::strong_count(&store));
}
