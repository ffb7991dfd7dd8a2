//! Delivery feedback end to end, on SQLite and PostgreSQL. A journey sends through the
//! shipped SendGrid and Twilio adapters to stand-in providers on loopback; the stand-ins
//! then call the host's public webhook signed exactly as SendGrid (ECDSA P-256 over the
//! timestamp and body) and Twilio (HMAC-SHA1 over the URL and sorted parameters) sign
//! theirs. Reports become profile events, bounces and unsubscribes switch contact points
//! and consents off with their reason and send, the next send falls back to the next
//! channel, and an operator lists (JSON, CSV) and lifts suppressions. Forged, replayed,
//! foreign and malformed webhooks each get a 4xx and change nothing.

use std::collections::HashMap;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePublicKey as _;
use rekindle_journeys::delivery::{ChannelConfig, Deliverer};
use rekindle_runtime::wit::{Field, Value as WitValue};
use rekindle_server::{AppState, Ingestion};
use rekindle_store::{Message, MessageKind, Purpose};
use rekindle_tests::Backend;
use rekindle_tests::provider::provider;
use serde_json::{Value, json};

/// Unsubscribe links for a host the test reaches at `base`; emails carry them.
fn links() -> rekindle_journeys::unsubscribe::Links {
    rekindle_journeys::unsubscribe::Links { base_url: Some("http://127.0.0.1:9".into()), key: rekindle_journeys::unsubscribe::LinkKey::new(&[3u8; 32]) }
}

rekindle_tests::on_each_backend!(
    provider_webhooks_change_profiles_and_suppressions_and_forgeries_change_nothing,
    a_push_token_fcm_no_longer_knows_is_switched_off_and_the_next_send_takes_email
);

/// The stand-in SendGrid's signing key (fixed, so a failure reproduces); the host is given
/// its public half as SendGrid shows it: base64 DER.
fn sendgrid_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap()
}

fn sendgrid_verification_key() -> String {
    let der = sendgrid_key().verifying_key().to_public_key_der().unwrap();
    base64::engine::general_purpose::STANDARD.encode(der.as_bytes())
}

/// What SendGrid's Event Webhook sends: the body, and the signature over the timestamp
/// then the body (base64 DER), with the timestamp.
fn sendgrid_signed(body: &[u8], timestamp: &str) -> Vec<(&'static str, String)> {
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    let signature: p256::ecdsa::Signature = sendgrid_key().sign(&signed);
    vec![
        ("content-type", "application/json".into()),
        ("X-Twilio-Email-Event-Webhook-Signature", base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())),
        ("X-Twilio-Email-Event-Webhook-Timestamp", timestamp.into()),
    ]
}

const TWILIO_TOKEN: &str = "twilio-auth-token";

/// Where the internet reaches the host, behind a proxy the test does without.
const PUBLIC: &str = "https://rekindle.example";

/// What Twilio sends to a StatusCallback: form parameters, signed with the auth token over
/// the URL then each parameter's name and value, sorted by name.
fn twilio_signed(url: &str, params: &[(&str, &str)]) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let mut sorted: Vec<_> = params.to_vec();
    sorted.sort();
    let mut text = url.to_string();
    for (name, value) in &sorted {
        text.push_str(name);
        text.push_str(value);
    }
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(TWILIO_TOKEN.as_bytes()).unwrap();
    mac.update(text.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    (vec![("content-type", "application/x-www-form-urlencoded".into()), ("X-Twilio-Signature", signature)], body.into_bytes())
}

fn text(name: &str, value: &str) -> Field {
    Field { name: name.into(), value: WitValue::Text(value.into()) }
}

fn identify(user: &str, traits: Value, consents: Vec<(Purpose, bool)>, at: i64) -> Message {
    Message {
        source: "backend".into(),
        message_id: format!("{user}-identify"),
        kind: MessageKind::Identify,
        user_id: Some(user.into()),
        anonymous_id: None,
        previous_id: None,
        event: None,
        properties: Default::default(),
        traits: traits.as_object().cloned().unwrap(),
        timestamp: at,
        received_at: at,
        timezone: None,
        consents,
        push_token: None,
        from_browser: false,
    }
}

const JOURNEY: &str = r#"
name = "Come back"
[entry]
api = true
[[steps]]
id = "hello"
type = "send"
channels = ["email", "sms"]
template = { subject = "We miss you", text = "Come back, {{ traits.first_name }}" }
"#;

async fn provider_webhooks_change_profiles_and_suppressions_and_forgeries_change_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let (provider_base, received) = provider(HashMap::from([
        ("/v3/mail/send", vec![(202, vec![("x-message-id", "sg-1")], "")]),
        ("/Messages.json", vec![(201, vec![], r#"{"sid": "SM1"}"#)]),
    ]))
    .await;
    // The host's address is known before it serves: providers are told to call it back.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = format!("http://{}", listener.local_addr().unwrap());

    let registry = rekindle_tests::registry(&[
        ("channel-sendgrid", rekindle_tests::components::CHANNEL_SENDGRID),
        ("channel-twilio", rekindle_tests::components::CHANNEL_TWILIO),
    ]);
    let mut email = ChannelConfig::new("channel-sendgrid");
    email.params = vec![text("base_url", &provider_base), text("from_email", "shop@example.com")];
    email.secrets =
        HashMap::from([("SENDGRID_API_KEY".to_string(), "sg-api-key".to_string()), ("SENDGRID_WEBHOOK_KEY".to_string(), sendgrid_verification_key())]);
    email.allowed_hosts = vec![provider_base.clone()];
    email.feedback_url = Some(format!("{host}/v1/feedback/email"));
    let mut sms = ChannelConfig::new("channel-twilio");
    sms.params = vec![text("base_url", &provider_base), text("from", "+15550000000")];
    sms.secrets = HashMap::from([("TWILIO_ACCOUNT_SID".to_string(), "AC1".to_string()), ("TWILIO_AUTH_TOKEN".to_string(), TWILIO_TOKEN.to_string())]);
    sms.allowed_hosts = vec![provider_base.clone()];
    // The public URL is what Twilio signs; the test reaches the same host on loopback.
    sms.feedback_url = Some(format!("{PUBLIC}/v1/feedback/sms"));
    let deliverer = Deliverer::new(HashMap::from([("email".to_string(), email), ("sms".to_string(), sms)])).unwrap();
    let sources = [("key".to_string(), rekindle_server::Source::server("backend"))].into_iter().collect();
    let mut state = AppState::new(registry, None, Some("admin".into()))
        .with_ingestion(Ingestion { store: store.into(), sources })
        .with_links(links())
        .with_journeys(deliverer, None);
    state.public_url = Some(PUBLIC.to_string());
    let engine = state.journeys.clone().unwrap();
    let store = state.ingestion.clone().unwrap().store.clone();
    let app = rekindle_server::app(state);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Ann takes email and texts; Bob only texts.
    let now = rekindle_store::now_ms();
    let both = vec![(Purpose::Email, true), (Purpose::Sms, true)];
    store
        .ingest(vec![
            identify("ann", json!({"first_name": "Ann", "email": "ann@example.com", "phone": "+15551230001"}), both.clone(), now - 1000),
            identify("bob", json!({"first_name": "Bob", "phone": "+15551230002"}), vec![(Purpose::Email, false), (Purpose::Sms, true)], now - 1000),
        ])
        .await
        .unwrap();
    engine.deploy(JOURNEY).await.unwrap();
    for who in ["ann", "bob"] {
        assert!(engine.enter_by_api("Come back", who, now).await.unwrap());
    }
    engine.tick(rekindle_store::now_ms()).await.unwrap();
    let sent = received.lock().unwrap().clone();
    let mail = sent.iter().find(|r| r.path.ends_with("/v3/mail/send")).expect("an email to Ann");
    let mail: Value = serde_json::from_slice(&mail.body).unwrap();
    let ann_key = mail["custom_args"]["idempotency_key"].as_str().unwrap().to_string();
    let text_to_bob = sent.iter().find(|r| r.path.ends_with("/Messages.json")).expect("a text to Bob");
    let form: HashMap<String, String> = form_urlencoded::parse(&text_to_bob.body).into_owned().collect();
    let callback = form["StatusCallback"].clone();
    assert!(callback.starts_with(&format!("{PUBLIC}/v1/feedback/sms?key=")), "{callback}");
    let bob_key: String = form_urlencoded::parse(callback.split_once('?').unwrap().1.as_bytes()).find(|(k, _)| k == "key").unwrap().1.into_owned();
    let on_loopback = |url: &str| url.replace(PUBLIC, &host);

    let http = reqwest::Client::new();
    let post = |path: String, headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let mut request = http.post(path).body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send()
    };
    let events_of = |who: &'static str| {
        let store = store.clone();
        async move { store.profile(who, 100).await.unwrap().unwrap().recent_events.into_iter().map(|e| e.name).filter(|n| n != "Identify").collect::<Vec<_>>() }
    };

    // SendGrid reports Ann's email: delivered, a privacy-proxy open, her own open, a click.
    let at = now / 1000;
    let sg = |id: &str, event: &str, extra: Value| {
        let mut e =
            json!({"email": "ann@example.com", "timestamp": at, "event": event, "sg_event_id": id, "sg_message_id": "sg-1.x", "idempotency_key": ann_key});
        e.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap());
        e
    };
    let batch = serde_json::to_vec(&json!([
        sg("e1", "delivered", json!({})),
        sg("e2", "open", json!({"sg_machine_open": true})),
        sg("e3", "open", json!({"sg_machine_open": false})),
        sg("e4", "click", json!({"url": "https://shop.example/back"})),
        // Mail this host did not send through the same account: left out.
        {"email": "x@example.com", "timestamp": at, "event": "delivered", "sg_event_id": "e0"}
    ]))
    .unwrap();
    let feedback_email = format!("{host}/v1/feedback/email");
    let answer = post(feedback_email.clone(), sendgrid_signed(&batch, &at.to_string()), batch.clone()).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.json::<Value>().await.unwrap(), json!({"accepted": 4, "duplicates": 0, "suppressed": 0}));
    let mut ann_events = events_of("ann").await;
    ann_events.sort();
    assert_eq!(ann_events, ["Email Delivered", "Email Link Clicked", "Email Opened"], "the machine open is kept, not counted");

    // The same webhook again (SendGrid retries): a replay, nothing changes.
    let replay = post(feedback_email.clone(), sendgrid_signed(&batch, &at.to_string()), batch.clone()).await.unwrap();
    assert_eq!(replay.status(), 409);
    assert_eq!(events_of("ann").await.len(), 3);

    // Forgeries: the body changed under a good signature, a signature by another key, none.
    let tampered = String::from_utf8(batch.clone()).unwrap().replace("delivered", "spamreport").into_bytes();
    let forged = post(feedback_email.clone(), sendgrid_signed(&batch, &at.to_string()), tampered.clone()).await.unwrap();
    assert_eq!(forged.status(), 401);
    assert_eq!(forged.json::<Value>().await.unwrap()["error"]["code"], "bad_signature");
    let mut other_key = sendgrid_signed(&tampered, &at.to_string());
    let stranger: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap().sign(&[at.to_string().as_bytes(), &tampered].concat());
    other_key[1].1 = base64::engine::general_purpose::STANDARD.encode(stranger.to_der().as_bytes());
    assert_eq!(post(feedback_email.clone(), other_key, tampered.clone()).await.unwrap().status(), 401);
    assert_eq!(post(feedback_email.clone(), vec![("content-type", "application/json".into())], tampered).await.unwrap().status(), 401);
    // Signed, but about sends this host never made on this channel (one is Bob's text):
    // refused whole, naming the report.
    let foreign = serde_json::to_vec(&json!([
        sg("e5", "delivered", json!({"idempotency_key": "run-x:hello:email"})),
        sg("e6", "bounce", json!({"idempotency_key": bob_key}))
    ]))
    .unwrap();
    let unknown = post(feedback_email.clone(), sendgrid_signed(&foreign, &at.to_string()), foreign).await.unwrap();
    assert_eq!(unknown.status(), 422);
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(unknown["error"]["field"], "reports[0].send_key", "{unknown}");
    // One stray report among ours does not hold the others up; it is named.
    let mixed = serde_json::to_vec(&json!([sg("e6", "bounce", json!({"idempotency_key": bob_key})), sg("e8", "deferred", json!({}))])).unwrap();
    let mixed: Value = post(feedback_email.clone(), sendgrid_signed(&mixed, &at.to_string()), mixed).await.unwrap().json().await.unwrap();
    assert_eq!(mixed["accepted"], 1, "{mixed}");
    assert_eq!(mixed["ignored"][0]["field"], "reports[0].send_key", "{mixed}");
    // Over the body limit; a Twilio callback has a lower one, checked before its signature.
    // The host may answer 413 and close before the client has written it all; a client that
    // then cannot finish writing was refused just the same.
    let refused_as_too_large = |sent: Result<reqwest::Response, reqwest::Error>| match sent {
        Ok(answer) => answer.status() == 413,
        Err(e) => e.is_request(),
    };
    // Its own client: the host closes a connection it refused mid-body, which must not be
    // one the other requests here reuse.
    let huge = vec![b' '; 5 << 20];
    let mut oversized = reqwest::Client::new().post(feedback_email.clone()).body(huge.clone());
    for (k, v) in sendgrid_signed(&huge, &at.to_string()) {
        oversized = oversized.header(k, v);
    }
    assert!(refused_as_too_large(oversized.send().await));
    let big_form = format!("MessageSid=SM1&x={}", "a".repeat(100 << 10)).into_bytes();
    let big = post(on_loopback(&callback), vec![("X-Twilio-Signature", "AAAA".into())], big_form).await.unwrap();
    assert_eq!(big.status(), 413, "{}", big.text().await.unwrap());
    // Signed, but not SendGrid's format.
    let malformed = post(feedback_email.clone(), sendgrid_signed(b"{\"not\": \"a list\"}", &at.to_string()), b"{\"not\": \"a list\"}".to_vec()).await.unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(malformed.json::<Value>().await.unwrap()["error"]["code"], "unreadable_webhook");
    assert_eq!(post(format!("{host}/v1/feedback/nope"), vec![], b"[]".to_vec()).await.unwrap().status(), 404);
    let mut ann_events = events_of("ann").await;
    ann_events.sort();
    assert_eq!(ann_events, ["Email Delivered", "Email Link Clicked", "Email Opened"], "no refused webhook changed anything");
    let none: Value = http.get(format!("{host}/v1/suppressions")).bearer_auth("admin").send().await.unwrap().json().await.unwrap();
    assert_eq!(none["suppressions"], json!([]));

    // Ann's address bounces for good: it is switched off, with the reason and the send.
    let bounce = serde_json::to_vec(&json!([sg("e7", "bounce", json!({"type": "bounce", "reason": "550 5.1.1 no such user"}))])).unwrap();
    let answer = post(feedback_email.clone(), sendgrid_signed(&bounce, &at.to_string()), bounce).await.unwrap();
    assert_eq!(answer.json::<Value>().await.unwrap(), json!({"accepted": 1, "duplicates": 0, "suppressed": 1}));
    let ann = store.profile("ann", 0).await.unwrap().unwrap();
    assert!(ann.contacts.iter().any(|c| c.kind == "email" && !c.active), "{:?}", ann.contacts);
    let listed: Value = http.get(format!("{host}/v1/suppressions")).bearer_auth("admin").send().await.unwrap().json().await.unwrap();
    let suppression = &listed["suppressions"][0];
    assert_eq!(
        (&suppression["target"], &suppression["reason"], &suppression["send_key"], &suppression["detail"]),
        (&json!("email:ann@example.com"), &json!("hard bounce"), &json!(ann_key), &json!("550 5.1.1 no such user")),
        "{listed}"
    );
    assert_eq!(http.get(format!("{host}/v1/suppressions")).send().await.unwrap().status(), 401, "the list is the operator's");
    let csv = http.get(format!("{host}/v1/suppressions")).bearer_auth("admin").header("accept", "text/csv").send().await.unwrap();
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,profile_id,kind,target,reason"), "{csv}");
    assert!(lines[1].contains("email:ann@example.com") && lines[1].contains("hard bounce"), "{csv}");

    // Twilio reports Bob's text delivered, then (another status) the number texted STOP.
    let (headers, body) = twilio_signed(&callback, &[("MessageSid", "SM1"), ("MessageStatus", "delivered"), ("To", "+15551230002"), ("AccountSid", "AC1")]);
    let answer = post(on_loopback(&callback), headers, body).await.unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    assert_eq!(events_of("bob").await, ["SMS Delivered"]);
    // Signed for another URL (another send's key): refused.
    let elsewhere = on_loopback(&callback).replace("key=", "key=x");
    let (headers, body) = twilio_signed(&callback, &[("MessageSid", "SM1"), ("MessageStatus", "failed"), ("ErrorCode", "21610")]);
    assert_eq!(post(elsewhere, headers, body).await.unwrap().status(), 401);
    let (headers, body) = twilio_signed(&callback, &[("MessageSid", "SM1"), ("MessageStatus", "undelivered"), ("ErrorCode", "21610"), ("To", "+15551230002")]);
    let answer = post(on_loopback(&callback), headers, body).await.unwrap();
    assert_eq!(answer.json::<Value>().await.unwrap(), json!({"accepted": 1, "duplicates": 0, "suppressed": 1}));
    let bob = store.profile("bob", 0).await.unwrap().unwrap();
    assert!(bob.consents.iter().any(|c| c.purpose == Purpose::Sms && !c.granted), "STOP withdraws SMS consent: {:?}", bob.consents);
    assert_eq!(events_of("bob").await, ["SMS Unsubscribed", "SMS Delivered"]);

    // The next send reaches Ann by text at once, and Bob not at all.
    received.lock().unwrap().clear();
    let again = JOURNEY.replace("Come back", "Second try");
    engine.deploy(&again).await.unwrap();
    for who in ["ann", "bob"] {
        assert!(engine.enter_by_api("Second try", who, now).await.unwrap());
    }
    engine.tick(rekindle_store::now_ms()).await.unwrap();
    let sent = received.lock().unwrap().clone();
    assert!(sent.iter().all(|r| !r.path.ends_with("/v3/mail/send")), "no email to a bounced address");
    let texts: Vec<HashMap<String, String>> =
        sent.iter().filter(|r| r.path.ends_with("/Messages.json")).map(|r| form_urlencoded::parse(&r.body).into_owned().collect()).collect();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(texts[0]["To"], "+15551230001", "Ann falls back to SMS");
    let log: Vec<Value> = store.journey_log("Second try").await.unwrap().iter().map(|e| json!([e.profile_id, e.action, e.detail])).collect();
    assert!(log.iter().any(|e| e[0] == json!(bob.id) && e[1] == "skipped"), "{log:?}");

    // The operator lifts Ann's bounce; it is recorded, and her address is back.
    let id = suppression["id"].as_i64().unwrap();
    let lifted = http.delete(format!("{host}/v1/suppressions/{id}?by=ops%40shop")).bearer_auth("admin").send().await.unwrap();
    assert_eq!(lifted.status(), 200);
    assert!(store.profile("ann", 0).await.unwrap().unwrap().contacts.iter().any(|c| c.kind == "email" && c.active));
    assert_eq!(http.delete(format!("{host}/v1/suppressions/{id}")).bearer_auth("admin").send().await.unwrap().status(), 404, "lifted once");
    let live: Value = http.get(format!("{host}/v1/suppressions")).bearer_auth("admin").send().await.unwrap().json().await.unwrap();
    assert_eq!(live["suppressions"].as_array().unwrap().len(), 1, "Bob's STOP still holds: {live}");
    let all: Value = http.get(format!("{host}/v1/suppressions?all=true")).bearer_auth("admin").send().await.unwrap().json().await.unwrap();
    assert_eq!(all["suppressions"][0]["lifted_by"], "ops@shop", "{all}");
}

async fn a_push_token_fcm_no_longer_knows_is_switched_off_and_the_next_send_takes_email(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let unregistered = r#"{"error": {"code": 404, "status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}}"#;
    let (base, received) = provider(HashMap::from([("/messages:send", vec![(404, vec![], unregistered)]), ("/v3/mail/send", vec![(202, vec![], "")])])).await;
    let registry = rekindle_tests::registry(&[
        ("channel-fcm", rekindle_tests::components::CHANNEL_FCM),
        ("channel-sendgrid", rekindle_tests::components::CHANNEL_SENDGRID),
    ]);
    let mut push = ChannelConfig::new("channel-fcm");
    push.params = vec![text("base_url", &base), text("project_id", "shop")];
    push.secrets = HashMap::from([("FCM_ACCESS_TOKEN".to_string(), "ya29.token".to_string())]);
    push.allowed_hosts = vec![base.clone()];
    let mut email = ChannelConfig::new("channel-sendgrid");
    email.params = vec![text("base_url", &base), text("from_email", "shop@example.com")];
    email.secrets = HashMap::from([("SENDGRID_API_KEY".to_string(), "k".to_string())]);
    email.allowed_hosts = vec![base.clone()];
    let deliverer = Deliverer::new(HashMap::from([("push".to_string(), push), ("email".to_string(), email)])).unwrap();
    let sources = [("key".to_string(), rekindle_server::Source::server("backend"))].into_iter().collect();
    let state = AppState::new(registry, None, Some("admin".into()))
        .with_ingestion(Ingestion { store: store.into(), sources })
        .with_links(links())
        .with_journeys(deliverer, None);
    let engine = state.journeys.clone().unwrap();
    let store = state.ingestion.clone().unwrap().store.clone();

    let now = rekindle_store::now_ms();
    let mut cy = identify("cy", json!({"first_name": "Cy", "email": "cy@example.com"}), vec![(Purpose::Email, true), (Purpose::Push, true)], now - 1000);
    cy.push_token = Some(("stale-token".into(), true));
    store.ingest(vec![cy]).await.unwrap();
    for (n, name) in ["First", "Second"].iter().enumerate() {
        let journey = JOURNEY.replace("Come back", name).replace(r#"["email", "sms"]"#, r#"["push", "email"]"#);
        engine.deploy(&journey).await.unwrap();
        assert!(engine.enter_by_api(name, "cy", now).await.unwrap());
        engine.tick(rekindle_store::now_ms()).await.unwrap();
        let paths: Vec<String> = received.lock().unwrap().iter().map(|r| r.path.clone()).collect();
        if n == 0 {
            assert!(paths.len() == 1 && paths[0].ends_with("/messages:send"), "the first send tries push: {paths:?}");
            let cy = store.profile("cy", 0).await.unwrap().unwrap();
            assert!(cy.contacts.iter().any(|c| c.kind == "push_token" && !c.active), "{:?}", cy.contacts);
            let listed = store.suppressions(0, 10, false, rekindle_store::now_ms()).await.unwrap();
            assert_eq!(listed.len(), 1, "{listed:?}");
            assert_eq!(
                (listed[0].target.as_str(), listed[0].reason.as_str(), listed[0].channel.as_deref()),
                ("push_token:stale-token", "refused by provider", Some("push"))
            );
        } else {
            assert!(paths.len() == 2 && paths[1].ends_with("/v3/mail/send"), "the next send takes email at once: {paths:?}");
        }
    }
}

#[test]
fn an_adapter_naming_a_webhook_secret_it_never_declared_is_refused_at_load() {
    let bytes = rekindle_tests::component(rekindle_tests::components::HOSTILE_FEEDBACK_SECRET);
    let Err(refused) = rekindle_runtime::Plugin::load(&rekindle_tests::patient_runtime(), &bytes) else { panic!("the adapter loaded") };
    assert!(refused.to_string().contains("`SENDGRID_API_KEY`, which describe() does not declare"), "{refused}");
}

#[tokio::test]
async fn the_adapter_reads_a_verified_webhook_without_the_credentials_on_it() {
    let registry = rekindle_tests::registry(&[("hostile-channel", rekindle_tests::components::HOSTILE_CHANNEL)]);
    let mut hostile = ChannelConfig::new("hostile-channel");
    hostile.secrets = HashMap::from([("TOKEN".to_string(), "webhook-secret".to_string())]);
    hostile.allowed_hosts = vec!["https://hooks.example.com".into()];
    let deliverer = Deliverer::new(HashMap::from([("hostile".to_string(), hostile)])).unwrap();
    let body = br#"{"receipts": []}"#.to_vec();
    let now = rekindle_store::now_ms();
    let webhook = |signature: String| rekindle_journeys::Webhook {
        url: "https://rekindle.example/v1/feedback/hostile".into(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-rekindle-signature".into(), signature),
            ("authorization".into(), "Basic b3BzOmh1bnRlcjI=".into()),
            ("cookie".into(), "session=operator".into()),
            ("x-forwarded-for".into(), "10.0.0.7".into()),
        ],
        body: body.clone(),
    };
    let signed = rekindle_journeys::feedback::rekindle_signature("webhook-secret", now / 1000, &body);
    let writes = deliverer.read_feedback(&registry, "hostile", webhook(signed), now).await.unwrap();
    let seen = writes.writes[0].reason.clone().unwrap();
    assert!(seen.contains("content-type: application/json") && seen.contains("x-rekindle-signature"), "{seen}");
    for withheld in ["authorization", "b3BzOmh1bnRlcjI", "cookie", "session=operator", "x-forwarded-for", "10.0.0.7"] {
        assert!(!seen.to_ascii_lowercase().contains(&withheld.to_ascii_lowercase()), "the adapter saw {withheld}: {seen}");
    }
    // Signed with anything but the host's secret, it never reaches the adapter.
    let forged = rekindle_journeys::feedback::rekindle_signature("guess", now / 1000, &body);
    assert!(matches!(deliverer.read_feedback(&registry, "hostile", webhook(forged), now).await, Err(rekindle_journeys::FeedbackError::BadSignature(_))));
}
