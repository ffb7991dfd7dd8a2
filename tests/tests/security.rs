//! The seams around the sandbox, tried as an attacker would, through a real host on a real
//! socket with the shipped plugins, on SQLite and PostgreSQL. Each test pins a property of
//! `docs/security.md`: who controls an input, and what they must not be able to do with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use rekindle_journeys::delivery::{ChannelConfig, Deliverer};
use rekindle_runtime::wit::{Field, Value as WitValue};
use rekindle_server::{AppState, Clock, Ingestion};
use rekindle_tests::{Backend, components};
use serde_json::{Value, json};

/// Unsubscribe links for a host the test reaches at `base`; emails carry them.
fn links() -> rekindle_journeys::unsubscribe::Links {
    rekindle_journeys::unsubscribe::Links { base_url: Some("http://127.0.0.1:9".into()), key: rekindle_journeys::unsubscribe::LinkKey::new(&[3u8; 32]) }
}

rekindle_tests::on_each_backend!(
    a_customer_s_traits_reach_the_provider_as_text_and_the_journey_log_never_holds_a_secret,
    a_browser_write_key_cannot_redirect_or_absorb_an_identified_customer,
    bad_numbers_strings_and_times_are_refused_not_stored,
    real_time_evaluation_racing_an_erasure_cannot_bring_the_person_back
);

/// A tile plugin that burns its whole deadline on every call, asked for by many anonymous
/// visitors at once, gets fallbacks served and leaves the host answering everything else.
/// (The latency figures are in BENCHMARKS.md; this only pins that nothing waits on it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_burning_its_deadline_cannot_stall_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let store = rekindle_tests::open_store(Backend::Sqlite, dir.path()).await.unwrap();
    let registry = std::sync::Arc::new(rekindle_runtime::Registry::new(rekindle_runtime::Runtime::new(rekindle_runtime::RuntimeConfig::default()).unwrap()));
    registry.install("burn", &rekindle_tests::component(components::HOSTILE_TILES)).unwrap();
    let sources = HashMap::from([("server-key".to_string(), rekindle_server::Source::server("backend"))]);
    let state = AppState::new(registry, None, Some(ADMIN.into())).with_ingestion(Ingestion { store: store.into(), sources });
    for i in 0..10 {
        let slot = json!({"name": format!("s{i}"), "plugin": "burn", "params": {"mode": "loop"}, "fallback": [{"title": "Sale", "link": "/sale"}]});
        rekindle_server::define_page_slot(&state, &slot).await.unwrap();
    }
    let host = rekindle_tests::serve(rekindle_server::app(state)).await;
    let http = reqwest::Client::new();
    let slots: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let visitors: Vec<_> = (0..48)
        .map(|_| {
            let (http, host, stop, body) = (http.clone(), host.clone(), stop.clone(), json!({"slots": slots}).to_string());
            tokio::spawn(async move {
                let mut fallbacks = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let answer: Value = http.post(format!("{host}/v1/tiles")).body(body.clone()).send().await.unwrap().json().await.unwrap();
                    assert!(answer["decisions"].as_array().unwrap().iter().all(|d| d["fallback"] == true), "{answer}");
                    fallbacks += 1;
                }
                fallbacks
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Before the plugin threads, /health took 9.6 s here; a second is a generous bound.
    for _ in 0..20 {
        let health = tokio::time::timeout(Duration::from_secs(1), http.get(format!("{host}/health")).send()).await;
        assert!(health.is_ok_and(|r| r.unwrap().status().is_success()), "/health waited on the plugin");
        let ingest = http.post(format!("{host}/v1/track")).basic_auth("server-key", Some("")).json(&json!({"userId": "u", "event": "Page Viewed"})).send();
        assert!(tokio::time::timeout(Duration::from_secs(1), ingest).await.is_ok_and(|r| r.unwrap().status().is_success()), "ingestion waited on the plugin");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for visitor in visitors {
        served += visitor.await.unwrap();
    }
    assert!(served > 0);
}

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
        .with_ingestion(Ingestion { store: store.into(), sources: HashMap::from([("server-key".to_string(), rekindle_server::Source::server("backend"))]) })
        .with_clock(clock.clone(), Duration::from_secs(3600))
        .with_links(links())
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
    let entered =
        http.post(format!("{host}/v1/journeys/Hello/entries")).bearer_auth("admin-token-for-tests").json(&json!({"userId": "mallory"})).send().await.unwrap();
    assert_eq!(entered.status(), 200, "{}", entered.text().await.unwrap());
    // The host's own journey loop ticks too; a tick that found it ticking did nothing.
    while engine.tick(clock.now()).await.unwrap().skipped {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The provider got the name exactly as written, escaped in the HTML part, and no key.
    let bodies = received.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let mail: Value = serde_json::from_slice(&bodies[0]).unwrap();
    assert_eq!(mail["subject"], format!("Hi {HOSTILE_NAME}"));
    // Then the host's unsubscribe footer, which is the only live link.
    let text = mail["content"][0]["value"].as_str().unwrap();
    assert!(text.starts_with(&format!("Hi {HOSTILE_NAME}\n\nUnsubscribe: http://127.0.0.1:9/v1/unsubscribe/")), "{text}");
    let (html, footer) = mail["content"][1]["value"].as_str().unwrap().split_once("<p><a href=\"http://127.0.0.1:9/v1/unsubscribe/").unwrap();
    assert!(footer.ends_with("\">Unsubscribe</a></p>"), "{footer}");
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

const ADMIN: &str = "admin-token-for-tests";

/// A host with a browser source (the snippet's public key) and a server source.
async fn host_with_sources(store: rekindle_store::Store) -> String {
    let registry = rekindle_tests::registry(&[]);
    let sources = HashMap::from([
        ("public-key".to_string(), rekindle_server::Source::browser("web", None)),
        ("server-key".to_string(), rekindle_server::Source::server("backend")),
    ]);
    let state = AppState::new(registry, None, Some(ADMIN.into())).with_ingestion(Ingestion { store: store.into(), sources });
    rekindle_tests::serve(rekindle_server::app(state)).await
}

async fn a_browser_write_key_cannot_redirect_or_absorb_an_identified_customer(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let host = host_with_sources(store).await;
    let http = reqwest::Client::new();
    let batch = |key: &'static str, messages: Value| {
        let http = http.clone();
        let host = host.clone();
        async move {
            let response = http.post(format!("{host}/v1/batch")).basic_auth(key, Some("")).json(&json!({"batch": messages})).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let profile = |id: &'static str| {
        let http = http.clone();
        let host = host.clone();
        async move { http.get(format!("{host}/v1/profiles/{id}?events=20")).bearer_auth(ADMIN).send().await.unwrap().json::<Value>().await.unwrap() }
    };

    // The shop's backend knows the victim: address, phone, push token, consent.
    batch(
        "server-key",
        json!([{"type": "identify", "userId": "victim", "traits": {"first_name": "Vic", "email": "vic@example.com", "phone": "+15550001111"},
        "context": {"device": {"token": "vic-device"}, "consent": {"categoryPreferences": {"email": true, "sms": false}}}}]),
    )
    .await;

    // With the key from the shop's page, an attacker tries to take the victim's messages:
    // their own address and number, a device, consents, and computed and test traits.
    let answer = batch(
        "public-key",
        json!([
            {"type": "identify", "userId": "victim", "traits": {"first_name": "Still Vic", "email": "attacker@evil.example", "phone": "+15559999999",
                "lifetime_value": 1e9, "test": true},
             "context": {"device": {"token": "attacker-device"}, "consent": {"categoryPreferences": {"email": false, "sms": true}}}},
            {"type": "identify", "userId": "attacker", "traits": {"first_name": "Eve"}},
            {"type": "alias", "userId": "attacker", "previousId": "victim"},
            // An address set while anonymous, then a "login" as the victim.
            {"type": "identify", "anonymousId": "anon-eve", "traits": {"email": "eve-anon@evil.example"}},
            {"type": "identify", "userId": "victim", "anonymousId": "anon-eve"},
            {"type": "track", "userId": "victim", "event": "Product Viewed", "properties": {"sku": "s-1"}},
        ]),
    )
    .await;
    let fields: Vec<&str> = answer["ignored"].as_array().unwrap_or_else(|| panic!("{answer}")).iter().map(|i| i["field"].as_str().unwrap()).collect();
    for field in [
        "batch[0].traits.email",
        "batch[0].traits.phone",
        "batch[0].traits.lifetime_value",
        "batch[0].traits.test",
        "batch[0].context.device.token",
        "batch[0].consents",
        "batch[2].previousId",
    ] {
        assert!(fields.contains(&field), "{field} must be reported as ignored: {answer}");
    }

    let victim = profile("victim").await;
    let addresses: Vec<&str> = victim["contacts"].as_array().unwrap().iter().map(|c| c["address"].as_str().unwrap()).collect();
    assert_eq!(addresses.len(), 3, "{victim}");
    for kept in ["vic@example.com", "+15550001111", "vic-device"] {
        assert!(addresses.contains(&kept), "{victim}");
    }
    assert_eq!(victim["traits"]["email"], "vic@example.com");
    assert_eq!(victim["consents"]["email"]["granted"], true, "{victim}");
    assert_eq!(victim["consents"]["sms"]["granted"], false, "{victim}");
    assert!(victim["traits"].get("lifetime_value").is_none() && victim["traits"].get("test").is_none(), "{victim}");
    assert_eq!(victim["user_ids"], json!(["victim"]), "the victim was not merged into anyone: {victim}");
    // What a browser key may do, it did: an ordinary trait, an event, the anonymous history.
    assert_eq!(victim["traits"]["first_name"], "Still Vic");
    assert!(victim["recent_events"].as_array().unwrap().iter().any(|e| e["name"] == "Product Viewed"), "{victim}");
    assert!(victim["anonymous_ids"].as_array().unwrap().contains(&json!("anon-eve")), "{victim}");
    let attacker = profile("attacker").await;
    assert_eq!(attacker["user_ids"], json!(["attacker"]), "{attacker}");
    assert_ne!(attacker["id"], victim["id"]);

    // Claiming ids of people who have not signed up yet, so that their data lands on the
    // attacker's profile when they do: the claims start profiles of their own.
    let answer = batch("public-key", json!([
        {"type": "identify", "userId": "attacker", "anonymousId": "anon-attacker"},
        {"type": "alias", "userId": "attacker", "previousId": "bob-future"},
        {"type": "identify", "userId": "carol-future", "anonymousId": "anon-attacker"},
        // An address planted on an anonymous id, for a victim's later login to pick up.
        {"type": "identify", "anonymousId": "anon-trap", "traits": {"email": "trap@evil.example"}, "context": {"consent": {"categoryPreferences": {"email": true}}}},
    ])).await;
    assert!(answer.get("ignored").is_none(), "{answer}");
    batch(
        "server-key",
        json!([
            {"type": "identify", "userId": "bob-future", "traits": {"email": "bob@example.com"}},
            {"type": "identify", "userId": "carol-future", "traits": {"email": "carol@example.com"}},
            // The backend reports a login on the trapped device, as it would for anyone.
            {"type": "identify", "userId": "dave", "anonymousId": "anon-trap", "traits": {"first_name": "Dave"}},
        ]),
    )
    .await;
    let attacker = profile("attacker").await;
    for newcomer in ["bob-future", "carol-future"] {
        let theirs = profile(newcomer).await;
        assert_ne!(theirs["id"], attacker["id"], "{newcomer} landed on the attacker's profile: {theirs}");
        assert_eq!(theirs["user_ids"], json!([newcomer]), "{theirs}");
    }
    assert_eq!(attacker["user_ids"], json!(["attacker"]), "{attacker}");
    let dave = profile("dave").await;
    assert!(!dave.to_string().contains("trap@evil.example"), "a browser-planted address crossed the login: {dave}");
    assert!(dave["consents"].get("email").is_none(), "a browser-planted consent crossed the login: {dave}");
    assert!(dave["anonymous_ids"].as_array().unwrap().contains(&json!("anon-trap")), "the history did join: {dave}");

    // The server key may change the address: that is what it is for.
    let answer = batch("server-key", json!([{"type": "identify", "userId": "victim", "traits": {"email": "vic@new.example"}}])).await;
    assert!(answer.get("ignored").is_none(), "{answer}");
    assert_eq!(profile("victim").await["traits"]["email"], "vic@new.example");
}

/// Each bad message gets a 400 naming its field, the batch it came in is refused whole,
/// and what was accepted before is still there; no time parameter can overflow the host.
async fn bad_numbers_strings_and_times_are_refused_not_stored(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let registry = rekindle_tests::registry(&[("rule-high-ltv", components::RULE_HIGH_LTV), ("channel-sendgrid", components::CHANNEL_SENDGRID)]);
    let clock = Clock::manual(1_790_000_000_000);
    let sources = HashMap::from([("server-key".to_string(), rekindle_server::Source::server("backend"))]);
    let mut email = ChannelConfig::new("channel-sendgrid");
    email.allowed_hosts = vec!["http://127.0.0.1:9".into()];
    let state = AppState::new(registry, None, Some(ADMIN.into()))
        .with_ingestion(Ingestion { store: store.into(), sources })
        .with_clock(clock.clone(), Duration::from_secs(3600))
        .with_token_secret(b"security-test-token-secret-0123456789", Duration::from_secs(3600))
        .with_links(links())
        .with_journeys(Deliverer::new(HashMap::from([("email".to_string(), email)])).unwrap(), None);
    let engine = state.journeys.clone().unwrap();
    let host = rekindle_tests::serve(rekindle_server::app(state)).await;
    let http = reqwest::Client::new();
    let send = |path: &'static str, body: String| {
        let request = http.post(format!("{host}{path}")).basic_auth("server-key", Some("")).header("content-type", "application/json").body(body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let order =
        |id: &str, revenue: Value| json!({"type": "track", "messageId": id, "userId": "ann", "event": "Order Completed", "properties": {"revenue": revenue}});
    assert_eq!(send("/v1/batch", json!({"batch": [order("good", json!(42))]}).to_string()).await.0, 200);
    // Finite amounts can add up to infinity; the lifetime value stays a number.
    let huge: Vec<Value> = [order("huge-1", json!(1.7e308)), order("huge-2", json!(1.7e308))]
        .into_iter()
        .map(|mut o| {
            o["userId"] = json!("bea");
            o
        })
        .collect();
    let huge = json!({ "batch": huge });
    assert_eq!(send("/v1/batch", huge.to_string()).await.0, 200);
    let bea: Value = http.get(format!("{host}/v1/profiles/bea")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    assert!(bea["computed"]["lifetime_value"].as_f64().is_some_and(f64::is_finite), "{bea}");

    let refused = |path: &'static str, body: String, field: &'static str| async move {
        let (status, answer) = send(path, body).await;
        assert_eq!(status, 400, "{field}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    };
    for (i, bad) in ["NaN", "inf", "-inf", "Infinity", "1e999"].into_iter().enumerate() {
        let batch = json!({"batch": [order(&format!("ok-{i}"), json!(10)), order(&format!("bad-{i}"), json!(bad))]});
        refused("/v1/batch", batch.to_string(), "batch[1].properties.revenue").await;
    }
    let priced = json!({"batch": [{"type": "track", "userId": "ann", "event": "Order Completed", "properties": {"products": [{"price": "nan"}]}}]});
    refused("/v1/batch", priced.to_string(), "batch[0].properties.products[0].price").await;
    // A number too large for a double is not JSON this host reads.
    let (status, answer) = send("/v1/track", r#"{"userId": "ann", "event": "Order Completed", "properties": {"revenue": 1e999}}"#.into()).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("malformed_json")), "{answer}");
    // NUL, which PostgreSQL cannot store, in a value or a key.
    refused("/v1/identify", json!({"userId": "ann", "traits": {"first_name": "A\u{0}nn"}}).to_string(), "message.traits.first_name").await;
    refused("/v1/identify", json!({"userId": "ann", "traits": {"first\u{0}name": "Ann"}}).to_string(), "message.traits.first\u{0}name").await;
    refused("/v1/track", json!({"userId": "a\u{0}nn", "event": "x"}).to_string(), "message.userId").await;
    // Times no clock could give, directly or after skew correction.
    for (timestamp, sent_at) in [("1970-01-02T00:00:00Z", None), ("2999-01-01T00:00:00Z", None), ("2026-09-21T00:00:00Z", Some("9999-12-31T23:59:59Z"))] {
        let mut message = json!({"userId": "ann", "event": "Product Viewed", "timestamp": timestamp});
        if let Some(sent) = sent_at {
            message["sentAt"] = json!(sent);
        }
        refused("/v1/track", message.to_string(), "message.timestamp").await;
    }

    // Nothing refused was stored; what came before is intact, and no NaN reached a trait.
    let profile: Value = http.get(format!("{host}/v1/profiles/ann")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    assert_eq!(profile["computed"]["order_count"], 1, "{profile}");
    assert_eq!(profile["computed"]["lifetime_value"], 42.0, "{profile}");
    assert!(profile["traits"].get("first_name").is_none(), "{profile}");

    // Time parameters near i64::MAX, on every endpoint that takes one: a 400, not a panic.
    let max = i64::MAX;
    let admin = |method: reqwest::Method, path: String, body: Value| http.request(method, format!("{host}{path}")).bearer_auth(ADMIN).json(&body).send();
    for (method, path, body, field) in [
        (reqwest::Method::POST, "/admin/tiles/token".to_string(), json!({"userId": "ann", "at": max}), "at"),
        (reqwest::Method::GET, format!("/admin/edge/snapshot?at={max}"), Value::Null, "at"),
        (reqwest::Method::POST, "/admin/edge/reference".to_string(), json!({"slot": "home", "now": max}), "now"),
        (reqwest::Method::POST, "/v1/segments/preview".to_string(), json!({"slot": "rule-high-ltv", "at": max}), "at"),
        (reqwest::Method::POST, "/admin/slots/rule-high-ltv/evaluate/ann".to_string(), json!({"now": max}), "now"),
        (reqwest::Method::POST, "/admin/slots/rule-high-ltv/invoke".to_string(), json!({"context": {"now": max}, "profile": {"id": "x"}}), "context.now"),
        (
            reqwest::Method::POST,
            "/v1/offers".to_string(),
            json!({"id": "o", "slot": "home", "title": "t", "link": "/x", "valid_until": max}),
            "offer.valid_until",
        ),
        (
            reqwest::Method::POST,
            "/v1/offers".to_string(),
            json!({"id": "o", "slot": "home", "title": "t", "link": "/x", "valid_from": -max}),
            "offer.valid_from",
        ),
    ] {
        let response = admin(method, path.clone(), body).await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!((status, answer["error"]["field"].as_str()), (400, Some(field)), "{path}: {answer}");
    }

    // Waits no clock can reach are refused when the journey is deployed.
    for (field, step) in [
        ("duration", "type = \"wait\"\nduration = \"106751991167d\""),
        ("timeout", "type = \"wait_for\"\nevent = \"x\"\ntimeout = \"99999999999999h\"\non_event = \"exit\"\non_timeout = \"exit\""),
    ] {
        let journey = format!("name = \"Forever\"\n[entry]\napi = true\n[[steps]]\nid = \"w\"\n{step}\n");
        let deployed = http.post(format!("{host}/v1/journeys")).bearer_auth(ADMIN).body(journey).send().await.unwrap();
        let status = deployed.status().as_u16();
        let answer: Value = deployed.json().await.unwrap();
        assert_eq!((status, answer["error"]["field"].as_str()), (400, Some("steps[0] \"w\"")), "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(&format!("{field}: ")), "{answer}");
    }

    // A date trait of i64::MAX in a journey's wait: the engine logs it as no date and goes on.
    let journey = "name = \"Renewal\"\n[entry]\napi = true\n[[steps]]\nid = \"wait\"\ntype = \"wait\"\nuntil_trait = \"renewal_date\"\nplus_days = 9000000\n";
    let deployed = http.post(format!("{host}/v1/journeys")).bearer_auth(ADMIN).body(journey).send().await.unwrap();
    assert!(deployed.status().is_success(), "{}", deployed.text().await.unwrap());
    assert_eq!(send("/v1/identify", json!({"userId": "ann", "traits": {"renewal_date": max}}).to_string()).await.0, 200);
    let entered = http.post(format!("{host}/v1/journeys/Renewal/entries")).bearer_auth(ADMIN).json(&json!({"userId": "ann"})).send().await.unwrap();
    assert_eq!(entered.status(), 200);
    while engine.tick(clock.now()).await.unwrap().skipped {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log: Value = http.get(format!("{host}/v1/journeys/Renewal/log")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    assert!(log["log"].as_array().unwrap().iter().any(|e| e["detail"] == "no date in trait `renewal_date`"), "{log}");
}

/// Erasure on SQLite: after `DELETE /v1/profiles/{id}` answers, no byte of the person is
/// left in the database file or its WAL, including values their traits had before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_person_s_bytes_are_gone_from_the_sqlite_file_and_its_wal() {
    let dir = tempfile::tempdir().unwrap();
    let store = rekindle_tests::open_store(Backend::Sqlite, dir.path()).await.unwrap();
    let registry = rekindle_tests::registry(&[("rule-high-ltv", components::RULE_HIGH_LTV), ("tiles-basic", components::TILES_BASIC)]);
    let sources = HashMap::from([("server-key".to_string(), rekindle_server::Source::server("backend"))]);
    let state = AppState::new(registry, None, Some(ADMIN.into()))
        .with_ingestion(Ingestion { store: store.into(), sources })
        .with_token_secret(b"security-test-token-secret-0123456789", Duration::from_secs(3600));
    let host = rekindle_tests::serve(rekindle_server::app(state)).await;
    let http = reqwest::Client::new();
    let batch = |messages: Value| http.post(format!("{host}/v1/batch")).basic_auth("server-key", Some("")).json(&json!({"batch": messages})).send();
    // Others' data around hers, so her rows share pages with rows that stay.
    for n in 0..50 {
        assert!(
            batch(json!([{"type": "identify", "userId": format!("other-{n}"), "traits": {"first_name": format!("Other {n}")}}]))
                .await
                .unwrap()
                .status()
                .is_success()
        );
    }
    let markers = ["Zsofia-7f3a", "zsofia-7f3a@example.com", "Zsofia-7f3b", "note-7f3c", "zsofia-user-7f3d"];
    // Her first name changes in a later commit: the earlier value lives on in an older
    // page image in the WAL, which the erasure must not leave behind either.
    for messages in [
        json!([{"type": "identify", "userId": "zsofia-user-7f3d", "traits": {"first_name": "Zsofia-7f3a", "email": "zsofia-7f3a@example.com"}}]),
        json!([{"type": "track", "userId": "zsofia-user-7f3d", "event": "Order Completed", "properties": {"revenue": 900, "note": "note-7f3c"}},
               {"type": "identify", "userId": "zsofia-user-7f3d", "traits": {"first_name": "Zsofia-7f3b"}}]),
    ] {
        assert!(batch(messages).await.unwrap().status().is_success());
    }
    let defined = http.post(format!("{host}/v1/segments")).bearer_auth(ADMIN).json(&json!({"name": "VIP", "slot": "rule-high-ltv"})).send().await.unwrap();
    assert!(defined.status().is_success(), "{}", defined.text().await.unwrap());
    let token: Value = http
        .post(format!("{host}/admin/tiles/token"))
        .bearer_auth(ADMIN)
        .json(&json!({"userId": "zsofia-user-7f3d"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let slot = http
        .post(format!("{host}/v1/tile-slots"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "home", "fallback": [{"title": "Sale", "link": "/sale"}]}))
        .send()
        .await
        .unwrap();
    assert!(slot.status().is_success());
    let personal = |token: Value| {
        let request = http.post(format!("{host}/v1/tiles")).body(json!({"slots": ["home"], "token": token}).to_string());
        async move { request.send().await.unwrap().json::<Value>().await.unwrap()["decisions"][0]["known_visitor"].clone() }
    };
    let before = personal(token["token"].clone()).await;
    assert_ne!(before, personal(Value::Null).await, "the token personalised before the erasure");

    let bytes = || {
        let mut all = std::fs::read(dir.path().join("rekindle.db")).unwrap();
        all.extend(std::fs::read(dir.path().join("rekindle.db-wal")).unwrap_or_default());
        all
    };
    let found = |all: &[u8]| markers.iter().filter(|m| all.windows(m.len()).any(|w| w == m.as_bytes())).copied().collect::<Vec<_>>();
    assert_eq!(found(&bytes()).len(), markers.len(), "the test must see her data before the erasure");

    let erased = http.delete(format!("{host}/v1/profiles/zsofia-user-7f3d")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(erased.status(), 204);
    assert_eq!(found(&bytes()), Vec::<&str>::new(), "her bytes are still in the file or the WAL");
    // Others are untouched, and a token issued to her before no longer personalises.
    let other: Value = http.get(format!("{host}/v1/profiles/other-7")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    assert_eq!(other["traits"]["first_name"], "Other 7");
    assert_eq!(personal(token["token"].clone()).await, personal(Value::Null).await, "the origin must not personalise for an erased person");
}

/// Real-time verdicts for people being erased at that moment must not recreate their
/// memberships: several rounds of customers whose orders and erasures cross.
async fn real_time_evaluation_racing_an_erasure_cannot_bring_the_person_back(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let registry = rekindle_tests::registry(&[("rule-high-ltv", components::RULE_HIGH_LTV)]);
    let sources = HashMap::from([("server-key".to_string(), rekindle_server::Source::server("backend"))]);
    let state = AppState::new(registry, None, Some(ADMIN.into())).with_ingestion(Ingestion { store: store.into(), sources });
    let host = rekindle_tests::serve(rekindle_server::app(state)).await;
    let http = reqwest::Client::new();
    let defined = http
        .post(format!("{host}/v1/segments"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "Buyers", "slot": "rule-high-ltv", "schedule": "realtime", "params": {"min_ltv": 0.0}}))
        .send()
        .await
        .unwrap();
    assert!(defined.status().is_success(), "{}", defined.text().await.unwrap());
    const ROUNDS: usize = 5;
    const CUSTOMERS: usize = 300;
    for round in 0..ROUNDS {
        let customers: Vec<String> = (0..CUSTOMERS).map(|n| format!("r{round}-c{n}")).collect();
        let mut tasks = Vec::new();
        for user in customers.clone() {
            let (http, host) = (http.clone(), host.clone());
            tasks.push(tokio::spawn(async move {
                let order = json!({"batch": [{"type": "track", "userId": user, "event": "Order Completed", "properties": {"revenue": 50}}]});
                let sent = http.post(format!("{host}/v1/batch")).basic_auth("server-key", Some("")).json(&order).send().await.unwrap();
                assert!(sent.status().is_success());
                // Erased while the real-time evaluator works on the order just sent.
                let erased = http.delete(format!("{host}/v1/profiles/{user}")).bearer_auth(ADMIN).send().await.unwrap();
                assert_eq!(erased.status(), 204);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // A sentinel customer entering the segment shows the evaluator has caught up.
        let sentinel = format!("r{round}-sentinel");
        let order = json!({"batch": [{"type": "track", "userId": sentinel, "event": "Order Completed", "properties": {"revenue": 50}}]});
        assert!(http.post(format!("{host}/v1/batch")).basic_auth("server-key", Some("")).json(&order).send().await.unwrap().status().is_success());
        let started = std::time::Instant::now();
        loop {
            let profile: Value = http.get(format!("{host}/v1/profiles/{sentinel}")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
            if profile["segments"].as_array().is_some_and(|s| !s.is_empty()) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the real-time evaluator never caught up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let members: Value = http.get(format!("{host}/v1/segments/Buyers/members?limit=1000")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
        let members = members["members"].as_array().unwrap();
        let erased_members = members.len() - (round + 1);
        assert_eq!(erased_members, 0, "round {round}: {erased_members} erased customers are members again, such as {:?}", members.first());
    }
}
