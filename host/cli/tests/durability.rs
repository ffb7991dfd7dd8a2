//! A campaign survives SIGKILL. A real `rekindle serve` runs a three-message journey for
//! 120 customers, sending through the shipped SendGrid adapter to a stand-in provider on
//! loopback. The host is killed with SIGKILL over and over in mid-campaign and started
//! again on the same data, until every run has finished. The provider must then have
//! received every message (none lost). Repeats of a message (the same idempotency key)
//! are possible only when a kill lands between the provider's answer and the host recording
//! it, so each kill may cause at most one; the count is checked against that bound and
//! reported.

mod support;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{Value, json};
use support::{serve, shipped_plugins};

const CUSTOMERS: usize = 120;
const STEPS: usize = 3;

const JOURNEY: &str = r#"
name = "Three messages"
[entry]
segment = "Buyers"
[[steps]]
id = "one"
type = "send"
channels = ["email"]
template = { subject = "One", text = "one" }
[[steps]]
id = "two"
type = "send"
channels = ["email"]
template = { subject = "Two", text = "two" }
[[steps]]
id = "three"
type = "send"
channels = ["email"]
template = { subject = "Three", text = "three" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_killed_repeatedly_loses_no_message() {
    // The stand-in provider: counts each idempotency key, a little slowly, as a real API.
    let received: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let log = received.clone();
    let router = axum::Router::new().route(
        "/v3/mail/send",
        axum::routing::post(move |body: Bytes| {
            let log = log.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let key = body["custom_args"]["idempotency_key"].as_str().unwrap_or("").to_string();
                *log.lock().unwrap().entry(key).or_default() += 1;
                (axum::http::StatusCode::ACCEPTED, "")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let work = tempfile::tempdir().unwrap();
    let plugins = shipped_plugins(work.path());
    let journey = work.path().join("journey.toml");
    std::fs::write(&journey, JOURNEY).unwrap();
    let config = work.path().join("rekindle.toml");
    std::fs::write(
        &config,
        format!(
            r#"journeys = [{journey:?}]
[[segments]]
name = "Buyers"
slot = "rule-high-ltv"
schedule = "weekly"
params = {{ min_ltv = 0.0 }}
[[channels]]
name = "email"
slot = "channel-sendgrid"
params = {{ base_url = "{provider}", from_email = "shop@example.com" }}
allowed_hosts = ["127.0.0.1"]
secrets = {{ SENDGRID_API_KEY = "k" }}
"#
        ),
    )
    .unwrap();
    let data = work.path().join("data");
    let args = [
        OsStr::new("--config"), config.as_os_str(), OsStr::new("--plugins"), plugins.as_os_str(), OsStr::new("--data-dir"), data.as_os_str(),
        OsStr::new("--source"), OsStr::new("web=web-key"),
    ];

    // The shop: customers with an order and email consent. The weekly segment is empty
    // until the next start backfills it, so nobody is messaged yet.
    {
        let (_host, base) = serve(&args, "admin").await;
        let batch: Vec<Value> = (0..CUSTOMERS)
            .flat_map(|c| {
                [
                    json!({"type": "identify", "messageId": format!("i{c}"), "userId": format!("c{c}"),
                           "traits": {"email": format!("c{c}@example.com")},
                           "context": {"consent": {"categoryPreferences": {"email": true}}}}),
                    json!({"type": "track", "messageId": format!("o{c}"), "userId": format!("c{c}"), "event": "Order Completed",
                           "properties": {"revenue": 20}}),
                ]
            })
            .collect();
        let response = reqwest::Client::new().post(format!("{base}/v1/batch")).basic_auth("web-key", Some("")).json(&json!({"batch": batch})).send().await.unwrap();
        assert!(response.status().is_success());
    }

    // Kill the host mid-campaign, again and again, until every run is done.
    let expected = CUSTOMERS * STEPS;
    let (mut kills, started) = (0, Instant::now());
    loop {
        let (host, base) = serve(&args, "admin").await;
        tokio::time::sleep(Duration::from_millis(150 + 97 * (kills % 7) as u64)).await;
        let runs: Value = reqwest::Client::new().get(format!("{base}/v1/journeys/Three%20messages/runs")).bearer_auth("admin")
            .send().await.map(|r| async { r.json::<Value>().await.unwrap_or(Value::Null) }).unwrap().await;
        let finished = runs["runs"].as_array().is_some_and(|r| r.len() == CUSTOMERS && r.iter().all(|run| run["status"] == "done"));
        drop(host); // SIGKILL
        if finished {
            break;
        }
        kills += 1;
        assert!(started.elapsed() < Duration::from_secs(240), "the campaign never finished: {runs}");
    }

    let received = received.lock().unwrap();
    let lost = expected - received.len();
    let repeats: usize = received.values().map(|n| n - 1).sum();
    eprintln!("{kills} SIGKILLs: {} distinct messages of {expected}, {repeats} repeated", received.len());
    assert!(kills >= 3, "the campaign should have been interrupted several times, was {kills}");
    assert_eq!(lost, 0, "every message arrived");
    assert!(received.keys().all(|k| k.ends_with(":one:email") || k.ends_with(":two:email") || k.ends_with(":three:email")));
    assert!(repeats <= kills, "{repeats} repeats from {kills} kills: at most one message can be in flight at a kill");
}
