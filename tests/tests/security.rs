//! The seams around the sandbox, tried as an attacker would, through a real host on a real
//! socket with the shipped plugins, on SQLite and PostgreSQL. Each test pins a property of
//! `docs/security.md`: who controls an input, and what they must not be able to do with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use rekindle_runtime::wit::{Field, Value as WitValue};
use rekindle_server::delivery::{ChannelConfig, Deliverer};
use rekindle_server::{AppState, Clock, Ingestion};
use rekindle_tests::{Backend, components};
use serde_json::{Value, json};

rekindle_tests::on_each_backend!(a_customer_s_traits_reach_the_provider_as_text_and_the_journey_log_never_holds_a_secret);

const SENDGRID_KEY: &str = "SG.the-real-api-key";

/// A first name that tries both seams: a placeholder for the API key, and a phishing link.
const HOSTILE_NAME: &str = r#"{{secret:SENDGRID_API_KEY}} <a href="https://evil.example/login">Verify your account</a>"#;

const JOURNEY: &str = r#"
name = "Hello"
[entry]
api = true
[[steps]]
id = "hello"
type = "send"
channels = ["email"]
template = { subject = "Hi {{ traits.first_name }}", text = "Hi {{ traits.first_name }}", html = "<p>Hi {{ traits.first_name }}</p>" }
"#;

async fn a_customer_s_traits_reach_the_provider_as_text_and_the_journey_log_never_holds_a_secret(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    // A careless provider: it refuses the mail and quotes the request, key and all.
    let received = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let log = received.clone();
    let echo = move |headers: HeaderMap, body: axum::body::Bytes| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(body.to_vec());
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            (StatusCode::BAD_REQUEST, format!(r#"{{"errors": [{{"message": "bad request from {auth}"}}]}}"#))
        }
    };
    let provider = rekindle_tests::serve(axum::Router::new().fallback(echo)).await;

    let registry = rekindle_tests::registry(&[("channel-sendgrid", components::CHANNEL_SENDGRID)]);
    let mut email = ChannelConfig::new("channel-sendgrid");
    email.params = vec![
        Field { name: "base_url".into(), value: WitValue::Text(provider.clone()) },
        Field { name: "from_email".into(), value: WitValue::Text("shop@example.com".into()) },
    ];
    email.allowed_hosts = vec![provider.clone()];
    email.secrets = HashMap::from([("SENDGRID_API_KEY".to_string(), SENDGRID_KEY.to_string())]);
    email.max_attempts = 1;
    let clock = Clock::manual(1_790_000_000_000);
    let state = AppState::new(registry, None, Some("admin-token-for-tests".into()))
        .with_ingestion(Ingestion { store, sources: HashMap::from([("server-key".to_string(), "backend".to_string())]) })
        .with_clock(clock.clone(), Duration::from_secs(3600))
        .with_journeys(Deliverer::new(HashMap::from([("email".to_string(), email)])).unwrap(), None);
    let engine = state.journeys.clone().unwrap();
    let host = rekindle_tests::serve(rekindle_server::app(state)).await;
    let http = reqwest::Client::new();

    // The customer writes their own first name, as any sign-up form lets them.
    let identify = json!({"userId": "mallory", "traits": {"first_name": HOSTILE_NAME, "email": "mallory@example.com"},
        "context": {"consent": {"categoryPreferences": {"email": true}}}});
    let answer = http.post(format!("{host}/v1/identify")).basic_auth("server-key", Some("")).json(&identify).send().await.unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    let deployed = http.post(format!("{host}/v1/journeys")).bearer_auth("admin-token-for-tests").body(JOURNEY).send().await.unwrap();
    assert!(deployed.status().is_success(), "{}", deployed.text().await.unwrap());
    let entered = http.post(format!("{host}/v1/journeys/Hello/entries")).bearer_auth("admin-token-for-tests").json(&json!({"userId": "mallory"})).send().await.unwrap();
    assert_eq!(entered.status(), 200, "{}", entered.text().await.unwrap());
    engine.tick(clock.now()).await.unwrap();

    // The provider got the name exactly as written, escaped in the HTML part, and no key.
    let bodies = received.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let mail: Value = serde_json::from_slice(&bodies[0]).unwrap();
    assert_eq!(mail["subject"], format!("Hi {HOSTILE_NAME}"));
    assert_eq!(mail["content"][0]["value"], format!("Hi {HOSTILE_NAME}"));
    let html = mail["content"][1]["value"].as_str().unwrap();
    assert!(html.starts_with("<p>Hi {{secret:SENDGRID_API_KEY}} &lt;a href=&quot;"), "{html}");
    assert!(!html.contains("<a "), "markup from a trait must not be live HTML: {html}");
    assert!(!String::from_utf8_lossy(&bodies[0]).contains(SENDGRID_KEY));

    // The journey log says why the send failed, with the echoed key redacted.
    let log: Value = http.get(format!("{host}/v1/journeys/Hello/log")).bearer_auth("admin-token-for-tests").send().await.unwrap().json().await.unwrap();
    let failed = log["log"].as_array().unwrap().iter().find(|e| e["action"] == "failed").unwrap_or_else(|| panic!("{log}"));
    let detail = failed["detail"].as_str().unwrap();
    assert!(detail.contains("[redacted SENDGRID_API_KEY]"), "{detail}");
    assert!(!log.to_string().contains(SENDGRID_KEY), "{log}");
}
