//! The host performing provider adapters' requests against local stand-in providers (axum
//! servers on loopback that record what they receive): secrets filled in by the host,
//! allowed origins enforced, retries with backoff on retryable answers, and the shipped
//! SendGrid, Twilio and Meta adapters' requests as the provider receives them.
//!
//! Then the hostile half, each a property a partner or provider once broke: customer data
//! that reads like a placeholder stays text for every shipped adapter; a redirect is not
//! followed; the allowlist pins scheme, host and port and refuses private addresses after
//! DNS; a Host header, a secret in the host name and a flood of requests are refused
//! before anything is sent; an endless answer is cut off at the cap; and a provider that
//! echoes the request cannot put a secret into an outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::Method;
use base64::Engine as _;
use rekindle_journeys::delivery::{ChannelConfig, Deliverer, DeliveryError, MAX_ANSWER_BYTES};
use rekindle_runtime::Registry;
use rekindle_runtime::wit::{AudienceChange, AudienceMember, Field, Message, Outcome, Value};
use rekindle_tests::components;
use rekindle_tests::provider::{Received, provider};

fn text(name: &str, value: &str) -> Field {
    Field { name: name.into(), value: Value::Text(value.into()) }
}

/// A channel allowed to reach `base` (an `http://127.0.0.1:PORT` stand-in) and nothing else.
fn channel(slot: &str, base: &str, params: Vec<Field>, secrets: &[(&str, &str)]) -> ChannelConfig {
    let mut config = ChannelConfig::new(slot);
    config.params = params;
    config.allowed_hosts = vec![base.to_string()];
    config.secrets = secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    config.backoff = Duration::from_millis(10);
    config.max_attempts = 3;
    config
}

fn message(to: &str) -> Message {
    Message {
        idempotency_key: "run-7:send-1:email".into(),
        profile_id: "ann".into(),
        to: to.into(),
        subject: Some("We miss you".into()),
        text: "Come back for 10% off".into(),
        html: None,
        link: Some("https://shop.example/sale".into()),
        image: None,
        data: vec![],
    }
}

fn registry() -> Registry {
    let registry = Registry::new(rekindle_tests::patient_runtime());
    for (slot, path) in [
        ("channel-sendgrid", components::CHANNEL_SENDGRID),
        ("channel-twilio", components::CHANNEL_TWILIO),
        ("channel-fcm", components::CHANNEL_FCM),
        ("channel-webhook", components::CHANNEL_WEBHOOK),
        ("channel-meta-audiences", components::CHANNEL_META_AUDIENCES),
        ("channel-tiktok-audiences", components::CHANNEL_TIKTOK_AUDIENCES),
        ("channel-google-customer-match", components::CHANNEL_GOOGLE_CUSTOMER_MATCH),
        ("hostile-channel", components::HOSTILE_CHANNEL),
    ] {
        registry.install(slot, &rekindle_tests::component(path)).unwrap();
    }
    registry
}

#[tokio::test]
async fn the_host_fills_secrets_enforces_hosts_and_retries() {
    let (base, received) = provider(HashMap::from([
        ("/v3/mail/send", vec![(429, vec![("retry-after", "0")], ""), (202, vec![("x-message-id", "sg-1")], "")]),
        ("/Messages.json", vec![(201, vec![], r#"{"sid": "SM1"}"#)]),
        ("/users", vec![(200, vec![], r#"{"audience_id": "123", "num_received": 1}"#)]),
        ("/down/v3/mail/send", vec![(503, vec![], "")]),
    ]))
    .await;
    let registry = registry();
    let email_params = || vec![text("base_url", &base), text("from_email", "shop@example.com")];
    let mut strict = channel("channel-sendgrid", &base, email_params(), &[("SENDGRID_API_KEY", "sg-secret")]);
    strict.allowed_hosts = vec!["api.sendgrid.com".into()];
    let channels = HashMap::from([
        ("email".to_string(), channel("channel-sendgrid", &base, email_params(), &[("SENDGRID_API_KEY", "sg-secret")])),
        (
            "sms".to_string(),
            channel(
                "channel-twilio",
                &base,
                vec![text("base_url", &base), text("from", "+15550000000")],
                &[("TWILIO_ACCOUNT_SID", "AC123"), ("TWILIO_AUTH_TOKEN", "tw-token")],
            ),
        ),
        (
            "meta".to_string(),
            channel("channel-meta-audiences", &base, vec![text("base_url", &format!("{base}/v21.0"))], &[("META_ACCESS_TOKEN", "meta-token")]),
        ),
        ("email-strict".to_string(), strict),
        ("email-no-key".to_string(), channel("channel-sendgrid", &base, email_params(), &[])),
        (
            "email-down".to_string(),
            channel(
                "channel-sendgrid",
                &base,
                vec![text("base_url", &format!("{base}/down")), text("from_email", "shop@example.com")],
                &[("SENDGRID_API_KEY", "kkkk")],
            ),
        ),
    ]);
    let deliverer = Deliverer::new(channels).unwrap();

    // SendGrid: a 429 then a 202; the host retried and filled the key.
    let sent = deliverer.deliver(&registry, "email", &message("ann@example.com")).await.unwrap();
    assert_eq!(sent[0].outcome, Outcome::Delivered(Some("sg-1".into())));
    assert_eq!(sent[0].attempts, 2);
    let mails: Vec<Received> = received.lock().unwrap().iter().filter(|r| r.path == "/v3/mail/send").cloned().collect();
    assert_eq!(mails.len(), 2);
    assert_eq!(mails[1].method, Method::POST);
    assert_eq!(mails[1].headers["authorization"], "Bearer sg-secret");
    let body: serde_json::Value = serde_json::from_slice(&mails[1].body).unwrap();
    assert_eq!(body["personalizations"][0]["to"][0]["email"], "ann@example.com");
    assert_eq!(body["custom_args"]["idempotency_key"], "run-7:send-1:email");

    // Twilio: the account SID in the path and Basic credentials, both from secrets.
    let sent = deliverer.deliver(&registry, "sms", &message("+15551234567")).await.unwrap();
    assert_eq!(sent[0].outcome, Outcome::Delivered(Some("SM1".into())));
    let sms = received.lock().unwrap().iter().find(|r| r.path.ends_with("/Messages.json")).cloned().unwrap();
    assert_eq!(sms.path, "/2010-04-01/Accounts/AC123/Messages.json");
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("AC123:tw-token"));
    assert_eq!(sms.headers["authorization"], basic.as_str());
    assert!(String::from_utf8(sms.body).unwrap().starts_with("To=%2B15551234567&From=%2B15550000000&Body="));

    // Meta: hashed rows, the token as a bearer.
    let change = AudienceChange {
        audience: "123".into(),
        add: vec![AudienceMember { profile_id: "ann".into(), emails: vec!["Ann@Example.com".into()], phones: vec![] }],
        remove: vec![],
    };
    let synced = deliverer.sync_audience(&registry, "meta", &change, 0).await.unwrap();
    assert!(matches!(synced[0].outcome, Outcome::Delivered(_)), "{synced:?}");
    let meta = received.lock().unwrap().iter().find(|r| r.path == "/v21.0/123/users").cloned().unwrap();
    assert_eq!(meta.headers["authorization"], "Bearer meta-token");
    assert!(!String::from_utf8_lossy(&meta.body).contains("ann@example.com"), "only hashes leave the host");

    // Refusals send nothing: an origin the operator did not allow, a secret not configured.
    let before = received.lock().unwrap().len();
    let err = deliverer.deliver(&registry, "email-strict", &message("ann@example.com")).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::HostNotAllowed { origin, .. } if origin.starts_with("http://127.0.0.1:")), "{err}");
    assert_eq!(
        deliverer.deliver(&registry, "email-no-key", &message("ann@example.com")).await.unwrap_err(),
        DeliveryError::MissingSecret("SENDGRID_API_KEY".into())
    );
    assert_eq!(deliverer.deliver(&registry, "nope", &message("a@b.c")).await.unwrap_err(), DeliveryError::UnknownChannel("nope".into()));
    assert_eq!(received.lock().unwrap().len(), before);

    // A provider that stays down: every attempt made, then the retryable outcome reported.
    let sent = deliverer.deliver(&registry, "email-down", &message("ann@example.com")).await.unwrap();
    assert_eq!(sent[0].attempts, 3);
    assert!(matches!(sent[0].outcome, Outcome::RetryLater(_)), "{:?}", sent[0].outcome);
}

/// What a customer who knows the placeholder syntax puts in every field the write key
/// reaches: each shipped adapter's secret names, as placeholders of every shape.
fn hostile_text(secrets: &[&str]) -> String {
    let mut text = String::from("Hi ");
    for name in secrets {
        text.push_str(&format!("{{{{secret:{name}}}}} {{{{secret:{name}#00000000000000000000000000000000}}}} {{{{secret:{name}#test}}}} "));
    }
    text.push_str("{{basic-auth:TWILIO_ACCOUNT_SID:TWILIO_AUTH_TOKEN}}");
    text
}

#[tokio::test]
async fn customer_data_that_reads_like_a_placeholder_reaches_every_provider_as_written() {
    let (base, received) = provider(HashMap::from([("", vec![(200, vec![], "{}")])])).await;
    let registry = registry();
    let values: HashMap<&str, &str> = HashMap::from([
        ("SENDGRID_API_KEY", "SG.very-secret-key"),
        ("TWILIO_ACCOUNT_SID", "AC-secret-sid"),
        ("TWILIO_AUTH_TOKEN", "twilio-secret-token"),
        ("FCM_ACCESS_TOKEN", "fcm-secret-token"),
        ("WEBHOOK_TOKEN", "webhook-secret-token"),
        ("META_ACCESS_TOKEN", "meta-secret-token"),
        ("TIKTOK_ACCESS_TOKEN", "tiktok-secret-token"),
        ("GOOGLE_ACCESS_TOKEN", "google-secret-token"),
    ]);
    let names: Vec<&str> = values.keys().copied().collect();
    let secrets: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, *v)).collect();
    let hostile = hostile_text(&names);
    let adapters: [(&str, Vec<Field>); 7] = [
        ("channel-sendgrid", vec![text("base_url", &base), text("from_email", "shop@example.com")]),
        ("channel-twilio", vec![text("base_url", &base), text("from", "+15550000000")]),
        ("channel-fcm", vec![text("base_url", &base), text("project_id", "shop")]),
        ("channel-webhook", vec![text("url", &format!("{base}/hook"))]),
        ("channel-meta-audiences", vec![text("base_url", &base)]),
        ("channel-tiktok-audiences", vec![text("base_url", &base), text("advertiser_id", "7")]),
        ("channel-google-customer-match", vec![text("base_url", &base), text("customer_id", "123")]),
    ];
    let deliverer = Deliverer::new(adapters.iter().map(|(slot, params)| (slot.to_string(), channel(slot, &base, params.clone(), &secrets))).collect()).unwrap();
    let mut evil = message(&hostile);
    evil.subject = Some(hostile.clone());
    evil.text = hostile.clone();
    evil.html = Some(format!("<p>{hostile}</p>"));
    evil.link = Some(format!("https://shop.example/?q={hostile}"));
    evil.data = vec![text("voucher", &hostile), Field { name: "products".into(), value: Value::Json(serde_json::json!([{ "name": hostile }]).to_string()) }];
    // Audiences hash what they send, so the placeholder must be a valid address to arrive.
    let placeholder_email = "{{secret:META_ACCESS_TOKEN}}@example.com";
    let member = AudienceMember { profile_id: hostile.clone(), emails: vec![placeholder_email.into()], phones: vec!["+15551234567".into()] };
    let change = AudienceChange { audience: "123".into(), add: vec![member.clone()], remove: vec![member] };
    for (slot, _) in &adapters {
        let before = received.lock().unwrap().len();
        let outcomes = if slot.contains("audiences") || slot.contains("customer-match") {
            deliverer.sync_audience(&registry, slot, &change, 0).await
        } else {
            deliverer.deliver(&registry, slot, &evil).await
        };
        outcomes.unwrap_or_else(|e| panic!("{slot}: {e}"));
        let sent: Vec<Received> = received.lock().unwrap()[before..].to_vec();
        assert!(!sent.is_empty(), "{slot} sent nothing");
        for request in &sent {
            let body = String::from_utf8_lossy(&request.body);
            for (name, value) in &values {
                assert!(!body.contains(value), "{slot}: secret {name} reached the body: {body}");
            }
            if *slot == "channel-meta-audiences" {
                let literal = rekindle_sdk::hash_email(rekindle_sdk::AdPlatform::Meta, placeholder_email).unwrap();
                assert!(body.contains(&literal), "Meta must get the hash of the address as written: {body}");
            } else if !slot.contains("audiences") && !slot.contains("customer-match") {
                // Form and JSON bodies encode it, but the text arrives exactly as written.
                let decoded: String = if body.contains("Body=") {
                    body.split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(_, v)| v.replace('+', " "))
                        .map(|v| percent_decode(&v))
                        .collect::<Vec<_>>()
                        .join("\n")
                } else {
                    serde_json::from_str::<serde_json::Value>(&body).map(|v| v.to_string()).unwrap_or_default()
                };
                assert!(
                    decoded.contains(&hostile.replace('"', "\\\"")) || decoded.contains(&hostile),
                    "{slot}: the customer's text did not arrive as written: {decoded}"
                );
            }
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_redirect_is_handed_to_the_adapter_not_followed() {
    let (elsewhere, stolen) = provider(HashMap::from([("", vec![(200, vec![], "")])])).await;
    let location: &'static str = Box::leak(format!("{elsewhere}/steal").into_boxed_str());
    let (base, received) = provider(HashMap::from([("/v3/mail/send", vec![(302, vec![("location", location)], "")])])).await;
    let mut config =
        channel("channel-sendgrid", &base, vec![text("base_url", &base), text("from_email", "shop@example.com")], &[("SENDGRID_API_KEY", "SG.redirect-me")]);
    // Even an allowlist naming both origins must not carry the key across a redirect.
    config.allowed_hosts.push(elsewhere.clone());
    let deliverer = Deliverer::new(HashMap::from([("email".to_string(), config)])).unwrap();
    let sent = deliverer.deliver(&registry(), "email", &message("ann@example.com")).await.unwrap();
    assert_eq!(received.lock().unwrap().len(), 1);
    assert!(stolen.lock().unwrap().is_empty(), "the redirect was followed");
    assert!(matches!(&sent[0].outcome, Outcome::Failed(why) if why.starts_with("HTTP 302")), "{:?}", sent[0].outcome);
}

#[tokio::test]
async fn the_allowlist_pins_scheme_host_and_port_and_refuses_private_addresses() {
    let (base, received) = provider(HashMap::from([("/v3/mail/send", vec![(202, vec![], "")])])).await;
    let (other, _) = provider(HashMap::from([("/v3/mail/send", vec![(202, vec![], "")])])).await;
    let port = base.rsplit(':').next().unwrap().to_string();
    let registry = registry();
    let sendgrid = |allowed: Vec<String>, url: String| {
        let mut config =
            channel("channel-sendgrid", &base, vec![text("base_url", &url), text("from_email", "shop@example.com")], &[("SENDGRID_API_KEY", "SG.key")]);
        config.allowed_hosts = allowed;
        config
    };
    let channels = HashMap::from([
        ("exact".to_string(), sendgrid(vec![base.clone()], base.clone())),
        ("other-port".to_string(), sendgrid(vec![base.clone()], other.clone())),
        ("https-only".to_string(), sendgrid(vec![format!("https://127.0.0.1:{port}")], base.clone())),
        ("bare-host".to_string(), sendgrid(vec!["127.0.0.1".into()], base.clone())),
        ("by-name".to_string(), sendgrid(vec![format!("http://localhost:{port}")], format!("http://localhost:{port}"))),
        ("by-name-allowed".to_string(), {
            let mut config = sendgrid(vec![format!("http://localhost:{port}")], format!("http://localhost:{port}"));
            config.allow_private_addresses = vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()];
            config
        }),
        // The adapter declared the metadata address itself, and the operator listed nothing
        // (which a channel without secrets may).
        ("metadata".to_string(), {
            let mut config = channel("hostile-channel", &base, vec![text("mode", "metadata")], &[]);
            config.allowed_hosts.clear();
            config
        }),
        ("host-header".to_string(), channel("hostile-channel", &base, vec![text("mode", "host-header"), text("base_url", &base)], &[("TOKEN", "tttt")])),
        ("secret-in-host".to_string(), {
            let mut config = channel("hostile-channel", &base, vec![text("mode", "secret-in-host")], &[("TOKEN", "tttt")]);
            config.allowed_hosts = vec!["https://tttt.attacker.example".into()];
            config
        }),
    ]);
    let deliverer = Deliverer::new(channels).unwrap();
    let sent = deliverer.deliver(&registry, "exact", &message("ann@example.com")).await.unwrap();
    assert_eq!(sent[0].outcome, Outcome::Delivered(None));
    let before = received.lock().unwrap().len();
    for name in ["other-port", "https-only", "bare-host"] {
        let err = deliverer.deliver(&registry, name, &message("ann@example.com")).await.unwrap_err();
        assert!(matches!(err, DeliveryError::HostNotAllowed { .. }), "{name}: {err}");
    }
    let err = deliverer.deliver(&registry, "by-name", &message("ann@example.com")).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::PrivateAddress(why) if why.contains("localhost")), "{err}");
    let err = deliverer.deliver(&registry, "metadata", &message("x")).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::PrivateAddress(why) if why.contains("169.254.169.254")), "{err}");
    assert_eq!(deliverer.deliver(&registry, "host-header", &message("x")).await.unwrap_err(), DeliveryError::ForbiddenHeader("Host".into()));
    let err = deliverer.deliver(&registry, "secret-in-host", &message("x")).await.unwrap_err();
    assert!(matches!(err, DeliveryError::SecretInHost(_)), "{err}");
    assert_eq!(received.lock().unwrap().len(), before, "a refused request reached the stand-in");
    // A host name the operator allowed to resolve to loopback goes through.
    let sent = deliverer.deliver(&registry, "by-name-allowed", &message("ann@example.com")).await.unwrap();
    assert_eq!(sent[0].outcome, Outcome::Delivered(None));
    assert_eq!(received.lock().unwrap().len(), before + 1);
}

#[test]
fn a_channel_with_secrets_must_name_the_origins_they_go_to() {
    let mut config = ChannelConfig::new("channel-sendgrid");
    config.secrets = HashMap::from([("SENDGRID_API_KEY".to_string(), "SG.key-0123".to_string())]);
    let err = Deliverer::new(HashMap::from([("email".to_string(), config.clone())])).err().unwrap();
    assert!(matches!(&err, DeliveryError::BadAllowlist { channel, .. } if channel == "email"), "{err}");
    config.allowed_hosts = vec!["https://api.sendgrid.com".into()];
    assert!(Deliverer::new(HashMap::from([("email".to_string(), config)])).is_ok());
}

#[tokio::test]
async fn one_message_cannot_become_thousands_of_requests() {
    let (base, received) = provider(HashMap::from([("/hook", vec![(200, vec![], "")])])).await;
    let deliverer = Deliverer::new(HashMap::from([(
        "flood".to_string(),
        channel("hostile-channel", &base, vec![text("mode", "flood"), text("base_url", &base)], &[("TOKEN", "tttt")]),
    )]))
    .unwrap();
    let started = Instant::now();
    let err = deliverer.deliver(&registry(), "flood", &message("x")).await.unwrap_err();
    assert_eq!(err, DeliveryError::TooManyRequests { channel: "flood".into(), made: 20_000, cap: 10 });
    assert!(received.lock().unwrap().is_empty());
    assert!(started.elapsed() < Duration::from_secs(10), "refusing took {:?}", started.elapsed());
}

#[tokio::test]
async fn an_endless_answer_is_cut_off_at_the_cap() {
    // A provider that streams an answer without end, counting what it managed to write.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 64 << 10];
        let _ = socket.read(&mut request).await;
        let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n\r\n").await;
        let chunk = vec![b'x'; 64 << 10];
        // 1 GiB, unless the host hangs up first.
        for _ in 0..(1 << 14) {
            if socket.write_all(&chunk).await.is_err() {
                break;
            }
            counter.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    let mut config =
        channel("channel-sendgrid", &base, vec![text("base_url", &base), text("from_email", "shop@example.com")], &[("SENDGRID_API_KEY", "SG.key")]);
    config.max_attempts = 1;
    let deliverer = Deliverer::new(HashMap::from([("email".to_string(), config)])).unwrap();
    let sent = deliverer.deliver(&registry(), "email", &message("ann@example.com")).await.unwrap();
    assert!(matches!(&sent[0].outcome, Outcome::Failed(why) if why.starts_with("HTTP 400: xxx")), "{:?}", sent[0].outcome);
    // Socket buffers hold a few MiB at most; everything past them was never accepted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = written.load(Ordering::Relaxed);
    assert!(total < 32 << 20, "the host kept reading: {total} bytes written, the cap is {MAX_ANSWER_BYTES}");
}

#[tokio::test]
async fn a_provider_echoing_the_request_cannot_put_a_secret_in_an_outcome() {
    // Answers 400 with everything it received, headers first, as a careless API might.
    let echo = |headers: axum::http::HeaderMap, uri: axum::http::Uri, body: axum::body::Bytes| async move {
        let mut text = format!("{uri}\n");
        for (k, v) in &headers {
            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or_default()));
        }
        text.push_str(&String::from_utf8_lossy(&body));
        (
            axum::http::StatusCode::BAD_REQUEST,
            [("x-echo", headers.get("authorization").map(|v| v.to_str().unwrap_or_default().to_string()).unwrap_or_default())],
            text,
        )
    };
    let base = rekindle_tests::serve(axum::Router::new().fallback(echo)).await;
    let registry = registry();
    let channels = HashMap::from([
        (
            "email".to_string(),
            channel("channel-sendgrid", &base, vec![text("base_url", &base), text("from_email", "shop@example.com")], &[("SENDGRID_API_KEY", "SG.echoed-key")]),
        ),
        (
            "sms".to_string(),
            channel(
                "channel-twilio",
                &base,
                vec![text("base_url", &base), text("from", "+15550000000")],
                &[("TWILIO_ACCOUNT_SID", "AC-echoed-sid"), ("TWILIO_AUTH_TOKEN", "echoed-token")],
            ),
        ),
        ("echo".to_string(), channel("hostile-channel", &base, vec![text("mode", "echo"), text("base_url", &base)], &[("TOKEN", "echoed-hostile-token")])),
        // Nothing listens on port 9: the transport error must not quote the URL, which holds the SID.
        ("sms-down".to_string(), {
            let mut config = channel(
                "channel-twilio",
                "http://127.0.0.1:9",
                vec![text("base_url", "http://127.0.0.1:9"), text("from", "+15550000000")],
                &[("TWILIO_ACCOUNT_SID", "AC-echoed-sid"), ("TWILIO_AUTH_TOKEN", "echoed-token")],
            );
            config.max_attempts = 1;
            config
        }),
    ]);
    let deliverer = Deliverer::new(channels).unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode("AC-echoed-sid:echoed-token");
    for name in ["email", "sms", "echo", "sms-down"] {
        let sent = deliverer.deliver(&registry, name, &message("+15551234567")).await.unwrap();
        let said = format!("{:?}", sent[0].outcome);
        for secret in ["SG.echoed-key", "AC-echoed-sid", "echoed-token", "echoed-hostile-token", basic.as_str()] {
            assert!(!said.contains(secret), "{name}: the outcome quotes a secret: {said}");
        }
        if name != "sms-down" {
            assert!(said.contains("[redacted"), "{name}: the echo should show where the secret was: {said}");
        }
    }
}
