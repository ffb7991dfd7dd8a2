//! The host performing provider adapters' requests against a local stand-in provider (an
//! axum server on loopback that records what it receives): secrets filled in by the host,
//! allowed hosts enforced, retries with backoff on retryable answers, and the shipped
//! SendGrid, Twilio and Meta adapters' requests as the provider receives them.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::Method;
use base64::Engine as _;
use rekindle_runtime::Registry;
use rekindle_runtime::wit::{AudienceChange, AudienceMember, Field, Message, Outcome, Value};
use rekindle_server::delivery::{ChannelConfig, Deliverer, DeliveryError};
use rekindle_tests::provider::{Received, provider};

fn text(name: &str, value: &str) -> Field {
    Field { name: name.into(), value: Value::Text(value.into()) }
}

fn channel(slot: &str, params: Vec<Field>, secrets: &[(&str, &str)]) -> ChannelConfig {
    let mut config = ChannelConfig::new(slot);
    config.params = params;
    config.allowed_hosts = vec!["127.0.0.1".into()];
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

#[tokio::test]
async fn the_host_fills_secrets_enforces_hosts_and_retries() {
    let (base, received) = provider(HashMap::from([
        ("/v3/mail/send", vec![(429, vec![("retry-after", "0")], ""), (202, vec![("x-message-id", "sg-1")], "")]),
        ("/Messages.json", vec![(201, vec![], r#"{"sid": "SM1"}"#)]),
        ("/users", vec![(200, vec![], r#"{"audience_id": "123", "num_received": 1}"#)]),
        ("/down/v3/mail/send", vec![(503, vec![], "")]),
    ]))
    .await;
    let registry = Registry::new(rekindle_tests::patient_runtime());
    for (slot, path) in [
        ("channel-sendgrid", rekindle_tests::components::CHANNEL_SENDGRID),
        ("channel-twilio", rekindle_tests::components::CHANNEL_TWILIO),
        ("channel-meta-audiences", rekindle_tests::components::CHANNEL_META_AUDIENCES),
    ] {
        registry.install(slot, &rekindle_tests::component(path)).unwrap();
    }
    let email_params = || vec![text("base_url", &base), text("from_email", "shop@example.com")];
    let mut strict = channel("channel-sendgrid", email_params(), &[("SENDGRID_API_KEY", "sg-secret")]);
    strict.allowed_hosts = vec!["api.sendgrid.com".into()];
    let channels = HashMap::from([
        ("email".to_string(), channel("channel-sendgrid", email_params(), &[("SENDGRID_API_KEY", "sg-secret")])),
        ("sms".to_string(), channel("channel-twilio", vec![text("base_url", &base), text("from", "+15550000000")], &[("TWILIO_ACCOUNT_SID", "AC123"), ("TWILIO_AUTH_TOKEN", "tw-token")])),
        ("meta".to_string(), channel("channel-meta-audiences", vec![text("base_url", &format!("{base}/v21.0"))], &[("META_ACCESS_TOKEN", "meta-token")])),
        ("email-strict".to_string(), strict),
        ("email-no-key".to_string(), channel("channel-sendgrid", email_params(), &[])),
        ("email-down".to_string(), channel("channel-sendgrid", vec![text("base_url", &format!("{base}/down")), text("from_email", "shop@example.com")], &[("SENDGRID_API_KEY", "k")])),
    ]);
    let deliverer = Deliverer::new(channels);

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
    let synced = deliverer.sync_audience(&registry, "meta", &change).await.unwrap();
    assert!(matches!(synced[0].outcome, Outcome::Delivered(_)), "{synced:?}");
    let meta = received.lock().unwrap().iter().find(|r| r.path == "/v21.0/123/users").cloned().unwrap();
    assert_eq!(meta.headers["authorization"], "Bearer meta-token");
    assert!(!String::from_utf8_lossy(&meta.body).contains("ann@example.com"), "only hashes leave the host");

    // Refusals send nothing: a host the operator did not allow, a secret not configured.
    let before = received.lock().unwrap().len();
    let err = deliverer.deliver(&registry, "email-strict", &message("ann@example.com")).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::HostNotAllowed { host, .. } if host == "127.0.0.1"), "{err}");
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
