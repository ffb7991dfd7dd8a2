//! One-click unsubscribe end to end, on SQLite and PostgreSQL: a journey's email through
//! the shipped SendGrid adapter carries a sealed per-recipient link in its text and HTML
//! and as `List-Unsubscribe` with `List-Unsubscribe-Post` (RFC 8058). A GET shows a page
//! and changes nothing (mail scanners follow links); the POST withdraws the consent once
//! and records `Unsubscribed` with the send, however often it is posted. A changed or
//! made-up link gets a 400 and changes nothing. A host without links sends no email.

use std::collections::HashMap;
use std::sync::Arc;

use rekindle_journeys::delivery::{ChannelConfig, Deliverer};
use rekindle_journeys::engine::Engine;
use rekindle_journeys::unsubscribe::{LinkKey, Links};
use rekindle_runtime::wit::{Field, Value as WitValue};
use rekindle_server::{AppState, Ingestion};
use rekindle_store::{Message, MessageKind, Purpose};
use rekindle_tests::Backend;
use rekindle_tests::provider::provider;
use serde_json::{Value, json};

rekindle_tests::on_each_backend!(an_email_carries_a_one_click_unsubscribe_that_works_once_and_cannot_be_forged);

fn text(name: &str, value: &str) -> Field {
    Field { name: name.into(), value: WitValue::Text(value.into()) }
}

fn identify(user: &str, email: &str, at: i64) -> Message {
    Message {
        source: "backend".into(),
        message_id: format!("{user}-identify"),
        kind: MessageKind::Identify,
        user_id: Some(user.into()),
        anonymous_id: None,
        previous_id: None,
        event: None,
        properties: Default::default(),
        traits: json!({"first_name": user, "email": email}).as_object().cloned().unwrap(),
        timestamp: at,
        received_at: at,
        timezone: None,
        consents: vec![(Purpose::Email, true)],
        push_token: None,
        from_browser: false,
    }
}

fn journey(name: &str) -> String {
    format!(
        "name = \"{name}\"\n[entry]\napi = true\n[[steps]]\nid = \"hello\"\ntype = \"send\"\nchannels = [\"email\"]\ntemplate = {{ subject = \"Hi\", text = \"Come back\", html = \"<p>Come back</p>\" }}\n"
    )
}

async fn an_email_carries_a_one_click_unsubscribe_that_works_once_and_cannot_be_forged(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let (provider_base, received) = provider(HashMap::from([("/v3/mail/send", vec![(202, vec![], "")])])).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = format!("http://{}", listener.local_addr().unwrap());
    let registry = rekindle_tests::registry(&[("channel-sendgrid", rekindle_tests::components::CHANNEL_SENDGRID)]);
    let mut email = ChannelConfig::new("channel-sendgrid");
    email.params = vec![text("base_url", &provider_base), text("from_email", "shop@example.com")];
    email.secrets = HashMap::from([("SENDGRID_API_KEY".to_string(), "k".to_string())]);
    email.allowed_hosts = vec![provider_base.clone()];
    let channels = HashMap::from([("email".to_string(), email)]);
    let key = LinkKey::new(store.host_secret("unsubscribe-links").await.unwrap().as_bytes());
    assert_eq!(store.host_secret("unsubscribe-links").await.unwrap().len(), 64, "made once, then kept");
    let sources = [("key".to_string(), rekindle_server::Source::server("backend"))].into_iter().collect();
    let state = AppState::new(registry.clone(), None, Some("admin".into()))
        .with_ingestion(Ingestion { store: store.into(), sources })
        .with_links(Links { base_url: Some(host.clone()), key: key.clone() })
        .with_journeys(Deliverer::new(channels.clone()).unwrap(), None);
    let engine = state.journeys.clone().unwrap();
    let store = state.ingestion.clone().unwrap().store.clone();
    let app = rekindle_server::app(state);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let now = rekindle_store::now_ms();
    store.ingest(vec![identify("ann", "ann@example.com", now - 1000), identify("cy", "cy@example.com", now - 1000)]).await.unwrap();
    engine.deploy(&journey("First")).await.unwrap();
    assert!(engine.enter_by_api("First", "ann", now).await.unwrap());
    engine.tick(rekindle_store::now_ms()).await.unwrap();
    let mail: Value = serde_json::from_slice(&received.lock().unwrap()[0].body).unwrap();
    let header = mail["headers"]["List-Unsubscribe"].as_str().expect("a List-Unsubscribe header").to_string();
    assert_eq!(mail["headers"]["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click");
    let url = header.trim_start_matches('<').trim_end_matches('>').to_string();
    assert!(url.starts_with(&format!("{host}/v1/unsubscribe/")), "{url}");
    assert!(mail["content"][0]["value"].as_str().unwrap().ends_with(&format!("Unsubscribe: {url}")), "{mail}");
    assert!(mail["content"][1]["value"].as_str().unwrap().contains(&format!("<a href=\"{url}\">Unsubscribe</a>")), "{mail}");
    let send_key = mail["custom_args"]["idempotency_key"].as_str().unwrap().to_string();

    let http = reqwest::Client::new();
    let email_consent = |who: &'static str| {
        let store = store.clone();
        async move { store.profile(who, 0).await.unwrap().unwrap().consents.iter().any(|c| c.purpose == Purpose::Email && c.granted) }
    };
    // A scanner following the link changes nothing; the page asks.
    let page = http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let page = page.text().await.unwrap();
    assert!(page.contains("<form method=\"post\">") && !page.contains("<script"), "{page}");
    assert!(email_consent("ann").await);

    // Changed links: another person's id under Ann's seal, a cut seal, one sealed elsewhere.
    let token = url.rsplit('/').next().unwrap().to_string();
    let parts: Vec<&str> = token.split('.').collect();
    let b64 = |v: Value| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, serde_json::to_vec(&v).unwrap());
    let cy_id = store.profile("cy", 0).await.unwrap().unwrap().id;
    let retargeted = format!("{}.{}.{}", parts[0], b64(json!({"p": cy_id, "c": "email", "k": send_key, "h": "email"})), parts[2]);
    let cut = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..8]);
    let elsewhere = LinkKey::new(&[9u8; 32]).seal(&rekindle_journeys::unsubscribe::Subscription {
        profile_id: cy_id.clone(),
        purpose: Purpose::Email,
        topic: None,
        send_key: send_key.clone(),
        channel: "email".into(),
    });
    for forged in [retargeted, cut, elsewhere, "nonsense".to_string()] {
        let answer = http.post(format!("{host}/v1/unsubscribe/{forged}")).body("List-Unsubscribe=One-Click").send().await.unwrap();
        assert_eq!(answer.status(), 400, "{forged}");
        assert_eq!(answer.json::<Value>().await.unwrap()["error"]["code"], "bad_link");
        assert_eq!(http.get(format!("{host}/v1/unsubscribe/{forged}")).send().await.unwrap().status(), 400);
    }
    assert!(email_consent("ann").await && email_consent("cy").await, "no forged link changed anything");

    // The mail client's one click: consent withdrawn, `Unsubscribed` recorded with the send.
    let one_click = || http.post(&url).header("content-type", "application/x-www-form-urlencoded").body("List-Unsubscribe=One-Click").send();
    let answer: Value = one_click().await.unwrap().json().await.unwrap();
    assert_eq!(answer, json!({"unsubscribed": "email", "changed": true}));
    assert!(!email_consent("ann").await);
    let unsubscribed = |who: &'static str| {
        let store = store.clone();
        async move { store.profile(who, 50).await.unwrap().unwrap().recent_events.into_iter().filter(|e| e.name == "Unsubscribed").collect::<Vec<_>>() }
    };
    let events = unsubscribed("ann").await;
    assert_eq!(events.len(), 1);
    assert_eq!((&events[0].properties["send_key"], &events[0].properties["journey"]), (&json!(send_key), &json!("First")));
    // Posted again (clients retry; the page's button too): nothing more.
    let again: Value = one_click().await.unwrap().json().await.unwrap();
    assert_eq!(again["changed"], false);
    assert_eq!(unsubscribed("ann").await.len(), 1);
    let page = http.post(&url).header("accept", "text/html").send().await.unwrap().text().await.unwrap();
    assert!(page.contains("You are unsubscribed"), "{page}");

    // The next email skips Ann, for that reason.
    received.lock().unwrap().clear();
    engine.deploy(&journey("Second")).await.unwrap();
    assert!(engine.enter_by_api("Second", "ann", now).await.unwrap());
    engine.tick(rekindle_store::now_ms()).await.unwrap();
    assert!(received.lock().unwrap().is_empty(), "no email after unsubscribing");
    let log = store.journey_log("Second").await.unwrap();
    assert!(log.iter().any(|e| e.action == "skipped" && e.detail.contains("no email consent")), "{log:?}");

    // She opts in again on the shop's form, then presses the old email's button: it counts.
    store.set_consents("ann", vec![(Purpose::Email, true)], rekindle_store::now_ms()).await.unwrap();
    assert!(email_consent("ann").await);
    let pressed: Value = one_click().await.unwrap().json().await.unwrap();
    assert_eq!(pressed["changed"], false, "the same send's link records one event");
    assert!(!email_consent("ann").await, "but withdraws the consent again");
    assert_eq!(unsubscribed("ann").await.len(), 1);

    // A host with no unsubscribe links sends no email at all, and says why.
    // Same host (its lease), able to open links but not to make working ones.
    let bare = Engine {
        registry,
        store: store.clone(),
        deliverer: Arc::new(Deliverer::new(channels).unwrap()),
        frequency_cap: None,
        lease: engine.lease.clone(),
        links: Some(Links { base_url: None, key }),
    };
    bare.deploy(&journey("Third")).await.unwrap();
    assert!(bare.enter_by_api("Third", "cy", now).await.unwrap());
    bare.tick(rekindle_store::now_ms()).await.unwrap();
    assert!(received.lock().unwrap().is_empty());
    let log = store.journey_log("Third").await.unwrap();
    assert!(log.iter().any(|e| e.action == "failed" && e.detail.contains("one-click unsubscribe")), "{log:?}");
}
