//! A journey end to end on a virtual clock, on SQLite and PostgreSQL: customers enter with
//! the segment, get a text or an email by consent and reachability (skips recorded with
//! their reason), wait, and leave when they buy. The shipped SendGrid and Twilio adapters
//! deliver to a stand-in provider on loopback, which counts what arrives. Ticking again
//! sends nothing twice; a new engine on the same store (a restarted host) carries on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rekindle_journeys::delivery::{ChannelConfig, Deliverer};
use rekindle_journeys::engine::{Engine, FrequencyCap};
use rekindle_runtime::Registry;
use rekindle_runtime::wit::{Field, Value as WitValue};
use rekindle_server::{AppState, Clock, Ingestion};
use rekindle_store::{Lease, Message, MessageKind, Purpose, SendClaim};
use rekindle_tests::Backend;
use rekindle_tests::provider::provider;
use serde_json::{Value, json};

/// Unsubscribe links for a host the test reaches at `base`; emails carry them.
fn links() -> rekindle_journeys::unsubscribe::Links {
    rekindle_journeys::unsubscribe::Links { base_url: Some("http://127.0.0.1:9".into()), key: rekindle_journeys::unsubscribe::LinkKey::new(&[3u8; 32]) }
}

rekindle_tests::on_each_backend!(
    a_win_back_journey_messages_by_consent_waits_and_exits_on_purchase,
    the_abandoned_cart_template_reminds_after_thirty_minutes_and_runs_its_ad_audience,
    a_wait_until_a_date_trait_plus_days,
    the_lapsing_and_win_back_templates_run_end_to_end,
    the_about_to_sleep_template_splits_by_value_and_favourite_category,
    the_rfm_template_recommends_related_products_to_subscribers,
    a_send_left_in_doubt_by_a_crash_is_looked_up_before_it_is_sent_again
);

const DAY: i64 = 86_400_000;

const JOURNEY: &str = r#"
name = "Win back"
[entry]
segment = "Win back"
[goal]
event = "Order Completed"

[[steps]]
id = "discount"
type = "send"
channels = ["sms", "email"]
voucher = "WINBACK15"
template = { subject = "15% off", text = "{{ traits.first_name | default('Hi') }}, come back: {{ voucher }}" }

[[steps]]
id = "two-days"
type = "wait"
duration = "2d"

[[steps]]
id = "reminder"
type = "send"
channels = ["email"]
template = { subject = "Last chance", text = "{{ voucher | default('') }}Your discount ends soon, {{ traits.first_name }}" }
"#;

fn text(name: &str, value: &str) -> Field {
    Field { name: name.into(), value: WitValue::Text(value.into()) }
}

/// A Segment message as ingestion stores it: an identify with `traits`, or an event.
fn message(id: &str, user: &str, event: Option<&str>, at: i64, traits: Value) -> Message {
    Message {
        source: "web".into(),
        message_id: id.into(),
        kind: if event.is_some() { MessageKind::Track } else { MessageKind::Identify },
        user_id: Some(user.into()),
        anonymous_id: None,
        previous_id: None,
        event: event.map(Into::into),
        properties: json!({"revenue": 30}).as_object().cloned().unwrap(),
        traits: traits.as_object().cloned().unwrap_or_default(),
        timestamp: at,
        received_at: at,
        timezone: None,
        consents: vec![],
        push_token: None,
        from_browser: false,
    }
}

async fn a_win_back_journey_messages_by_consent_waits_and_exits_on_purchase(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z").unwrap().timestamp_millis();
    let (base, received) = provider(HashMap::from([
        ("/v3/mail/send", vec![(202, vec![("x-message-id", "sg")], "")]),
        ("/Messages.json", vec![(201, vec![], r#"{"sid": "SM"}"#)]),
    ]))
    .await;

    let registry = rekindle_tests::registry(&[
        ("rule-win-back-window", rekindle_tests::components::RULE_WIN_BACK_WINDOW),
        ("channel-sendgrid", rekindle_tests::components::CHANNEL_SENDGRID),
        ("channel-twilio", rekindle_tests::components::CHANNEL_TWILIO),
    ]);
    let sources = [("key".to_string(), rekindle_server::Source::server("web"))].into_iter().collect();
    let clock = Clock::manual(t0);
    let state = AppState::new(registry.clone(), None, Some("admin".into()))
        .with_ingestion(Ingestion { store: store.into(), sources })
        .with_clock(clock.clone(), Duration::from_secs(3600));
    let ingestion = state.ingestion.clone().unwrap();

    // Ann: email only. Bob: SMS. Cat: nothing consented. Dan: email, buys on day 1.
    let mut batch = Vec::new();
    for (user, consents, traits) in [
        ("ann", vec![(Purpose::Email, true), (Purpose::Sms, false)], json!({"first_name": "Ann", "email": "ann@example.com"})),
        ("bob", vec![(Purpose::Email, false), (Purpose::Sms, true)], json!({"first_name": "Bob", "phone": "+15551230000"})),
        ("cat", vec![(Purpose::Email, false), (Purpose::Sms, false)], json!({"first_name": "Cat", "email": "cat@example.com", "phone": "+15551230001"})),
        ("dan", vec![(Purpose::Email, true)], json!({"first_name": "Dan", "email": "dan@example.com"})),
    ] {
        let mut identify = message(&format!("{user}-i"), user, None, t0 - 100 * DAY, traits);
        identify.consents = consents;
        batch.push(identify);
        batch.push(message(&format!("{user}-o"), user, Some("Order Completed"), t0 - 60 * DAY, json!({})));
    }
    ingestion.store.ingest(batch).await.unwrap();
    rekindle_server::define_segment(&state, &json!({"name": "Win back", "slot": "rule-win-back-window"})).await.unwrap();

    let mut channels = HashMap::new();
    let mut email = ChannelConfig::new("channel-sendgrid");
    email.params = vec![text("base_url", &base), text("from_email", "shop@example.com")];
    email.secrets = HashMap::from([("SENDGRID_API_KEY".to_string(), "sg-key".to_string())]);
    email.allowed_hosts = vec![base.to_string()];
    let email_channel = email.clone();
    channels.insert("email".to_string(), email);
    let mut sms = ChannelConfig::new("channel-twilio");
    sms.params = vec![text("base_url", &base), text("from", "+15550000000")];
    sms.secrets = HashMap::from([("TWILIO_ACCOUNT_SID".to_string(), "AC1".to_string()), ("TWILIO_AUTH_TOKEN".to_string(), "t".to_string())]);
    sms.allowed_hosts = vec![base.to_string()];
    channels.insert("sms".to_string(), sms);
    let deliverer = Arc::new(Deliverer::new(channels).unwrap());
    // A cap of three messages a week leaves this journey's two alone; a tighter cap is
    // checked at the end.
    let engine = Engine {
        frequency_cap: Some(FrequencyCap { messages: 3, days: 7 }),
        links: Some(links()),
        ..Engine::new(registry.clone(), ingestion.store.clone(), deliverer.clone())
    };
    let journey = engine.deploy(JOURNEY).await.unwrap();
    assert_eq!(journey.steps.len(), 3);
    assert!(engine.deploy(&JOURNEY.replace("\"sms\", \"email\"", "\"fax\"")).await.unwrap_err().to_string().contains("no channel `fax`"));

    let sent = |path: &'static str| {
        let received = received.clone();
        move || received.lock().unwrap().iter().filter(|r| r.path.ends_with(path)).map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect::<Vec<_>>()
    };
    let (emails, texts) = (sent("/v3/mail/send"), sent("/Messages.json"));

    // Day 0: everyone enters; Bob gets a text, Ann and Dan an email, Cat nothing.
    let report = engine.tick(t0).await.unwrap();
    assert_eq!(report.entered, 4);
    assert_eq!(texts().len(), 1);
    assert!(texts()[0].contains("To=%2B15551230000") && texts()[0].contains("WINBACK15"), "{:?}", texts());
    assert_eq!(emails().len(), 2);
    assert!(emails().iter().any(|e| e.contains("ann@example.com") && e.contains("Ann, come back: WINBACK15")));
    let log = ingestion.store.journey_log("Win back").await.unwrap();
    let cat = ingestion.store.profile("cat", 0).await.unwrap().unwrap().id;
    let cat_skips: Vec<(Option<String>, String)> =
        log.iter().filter(|e| e.profile_id == cat && e.action == "skipped").map(|e| (e.channel.clone(), e.detail.clone())).collect();
    assert_eq!(cat_skips, [(Some("sms".into()), "no sms consent".into()), (Some("email".into()), "no email consent".into())]);

    // Ticking again sends nothing twice.
    engine.tick(t0 + 60_000).await.unwrap();
    assert_eq!((emails().len(), texts().len()), (2, 1));

    // Dan buys on day 1; a restarted host (a new engine on the same store) carries on.
    ingestion.store.ingest(vec![message("dan-buys", "dan", Some("Order Completed"), t0 + DAY, json!({}))]).await.unwrap();
    let restarted = Engine {
        frequency_cap: Some(FrequencyCap { messages: 3, days: 7 }),
        links: Some(links()),
        ..Engine::new(registry.clone(), ingestion.store.clone(), deliverer.clone())
    };
    restarted.tick(t0 + DAY).await.unwrap();
    assert_eq!(emails().len(), 2, "nothing is due on day 1");

    // Day 2: the reminder, by email only: Ann. Bob has no email consent; Dan has left.
    restarted.tick(t0 + 2 * DAY + 1).await.unwrap();
    assert_eq!(emails().len(), 3);
    assert!(emails()[2].contains("ann@example.com") && emails()[2].contains("Last chance"), "{}", emails()[2]);
    let runs = ingestion.store.journey_runs("Win back").await.unwrap();
    let dan = ingestion.store.profile("dan", 0).await.unwrap().unwrap().id;
    let ended: HashMap<String, Option<String>> = runs.iter().map(|r| (r.profile_id.clone(), r.ended_reason.clone())).collect();
    assert_eq!(ended[&dan].as_deref(), Some("goal"));
    assert!(runs.iter().all(|r| r.status == "done"), "{runs:?}");
    let bob = ingestion.store.profile("bob", 0).await.unwrap().unwrap().id;
    let log: Vec<Value> = ingestion.store.journey_log("Win back").await.unwrap().iter().map(|e| json!([e.profile_id, e.step, e.action, e.detail])).collect();
    assert!(log.contains(&json!([bob, "reminder", "skipped", "no email consent and no active email"])), "{log:?}");

    // An API-entry journey, through the HTTP API of a host running this engine.
    let api_journey = "name = \"Welcome back\"\n[entry]\napi = true\n[[steps]]\nid = \"hello\"\ntype = \"send\"\nchannels = [\"email\"]\ntemplate = { text = \"Hello {{ traits.first_name }}\" }\n";
    let host_state =
        state.clone().with_links(links()).with_journeys(Deliverer::new(HashMap::from([("email".to_string(), email_channel.clone())])).unwrap(), None);
    let api = rekindle_tests::serve(rekindle_server::app(host_state)).await;
    let http = reqwest::Client::new();
    let deployed = http.post(format!("{api}/v1/journeys")).bearer_auth("admin").body(api_journey).send().await.unwrap();
    assert!(deployed.status().is_success(), "{}", deployed.text().await.unwrap());
    let enter = |who: &'static str, journey: &'static str| {
        http.post(format!("{api}/v1/journeys/{journey}/entries")).bearer_auth("admin").json(&json!({"userId": who})).send()
    };
    let answer: Value = enter("ann", "Welcome%20back").await.unwrap().json().await.unwrap();
    assert_eq!(answer["started"], true, "{answer}");
    let again: Value = enter("ann", "Welcome%20back").await.unwrap().json().await.unwrap();
    assert_eq!(again["started"], false, "one unfinished run at a time: {again}");
    assert_eq!(enter("nobody", "Welcome%20back").await.unwrap().status(), 404);
    let not_api = enter("ann", "Win%20back").await.unwrap();
    assert_eq!(not_api.status(), 400);
    // Test mode: only profiles with the trait `test = true` enter.
    let test_only = api_journey.replace("name = \"Welcome back\"", "name = \"Trial\"\ntest_mode = true");
    assert!(http.post(format!("{api}/v1/journeys")).bearer_auth("admin").body(test_only).send().await.unwrap().status().is_success());
    ingestion.store.ingest(vec![message("bob-test", "bob", None, t0, json!({"test": true}))]).await.unwrap();
    let kept_out: Value = enter("ann", "Trial").await.unwrap().json().await.unwrap();
    assert_eq!(kept_out["started"], false, "Ann is not a test profile");
    let tester: Value = enter("bob", "Trial").await.unwrap().json().await.unwrap();
    assert_eq!(tester["started"], true);

    // The run starts at once; its message goes out on the next tick. (The host's own
    // journey loop ticks too, and a tick that finds it ticking does nothing.)
    while engine.tick(t0 + 2 * DAY + 2).await.unwrap().skipped {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(emails().iter().any(|e| e.contains("Hello Ann")), "{:?}", emails());

    // With a cap of one message a week, Ann's second journey message is held back.
    let capped = Engine {
        frequency_cap: Some(FrequencyCap { messages: 1, days: 7 }),
        links: Some(links()),
        ..Engine::new(registry, ingestion.store.clone(), deliverer)
    };
    capped.deploy(&JOURNEY.replace("name = \"Win back\"", "name = \"Win back again\"")).await.unwrap();
    while capped.tick(t0 + 3 * DAY).await.unwrap().skipped {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(emails().len(), 4, "no message over the cap");
    let ann = ingestion.store.profile("ann", 0).await.unwrap().unwrap().id;
    let log = ingestion.store.journey_log("Win back again").await.unwrap();
    assert!(log.iter().any(|e| e.profile_id == ann && e.action == "capped" && e.detail.starts_with("frequency cap: 3 messages in the last 7 days")), "{log:?}");

    // Erasing Ann erases her journeys too: runs, log and sends.
    let ann_runs: Vec<String> = ingestion.store.journey_runs("Win back").await.unwrap().into_iter().filter(|r| r.profile_id == ann).map(|r| r.id).collect();
    assert!(ingestion.store.step_send(&ann_runs[0], "discount").await.unwrap().is_some());
    assert!(ingestion.store.delete_profile("ann").await.unwrap());
    assert!(ingestion.store.step_send(&ann_runs[0], "discount").await.unwrap().is_none(), "her sends are gone");
    for journey in ["Win back", "Win back again", "Welcome back"] {
        assert!(ingestion.store.journey_runs(journey).await.unwrap().iter().all(|r| r.profile_id != ann), "{journey}");
        assert!(ingestion.store.journey_log(journey).await.unwrap().iter().all(|e| e.profile_id != ann), "{journey}");
    }
}

/// The shipped `usecases/abandoned-cart` journey: an add to cart starts it; a purchase
/// within 30 minutes ends it quietly; otherwise a reminder goes out on the first channel
/// the customer consented to, and the customer joins the Meta audience for a day.
async fn the_abandoned_cart_template_reminds_after_thirty_minutes_and_runs_its_ad_audience(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z").unwrap().timestamp_millis();
    let minute = 60_000;
    let (base, received) = provider(HashMap::from([
        ("/v3/mail/send", vec![(202, vec![], "")]),
        ("/Messages.json", vec![(201, vec![], r#"{"sid": "SM"}"#)]),
        ("/users", vec![(200, vec![], "{}")]),
    ]))
    .await;
    let registry = rekindle_tests::registry(&[
        ("channel-sendgrid", rekindle_tests::components::CHANNEL_SENDGRID),
        ("channel-twilio", rekindle_tests::components::CHANNEL_TWILIO),
        ("channel-meta-audiences", rekindle_tests::components::CHANNEL_META_AUDIENCES),
    ]);
    let ingestion = Arc::new(Ingestion { store: store.into(), sources: HashMap::new() });
    // Ann (email and ads consent) leaves her cart; Bob buys ten minutes after his.
    let mut batch = Vec::new();
    for (user, traits) in [("ann", json!({"first_name": "Ann", "email": "ann@example.com"})), ("bob", json!({"first_name": "Bob", "email": "bob@example.com"}))]
    {
        let mut identify = message(&format!("{user}-i"), user, None, t0 - DAY, traits);
        identify.consents = vec![(Purpose::Email, true), (Purpose::Ads, true)];
        batch.push(identify);
        batch.push(message(&format!("{user}-cart"), user, Some("Product Added"), t0, json!({})));
    }
    batch.push(message("bob-order", "bob", Some("Order Completed"), t0 + 10 * minute, json!({})));
    // Cy is in Auckland, where 10:31 UTC is 22:31: inside the template's quiet hours.
    let mut cy = message("cy-i", "cy", None, t0 - DAY, json!({"first_name": "Cy", "email": "cy@example.com"}));
    cy.consents = vec![(Purpose::Email, true)];
    cy.timezone = Some("Pacific/Auckland".into());
    batch.push(cy);
    batch.push(message("cy-cart", "cy", Some("Product Added"), t0, json!({})));
    ingestion.store.ingest(batch).await.unwrap();

    let channel = |slot: &str, params: Vec<Field>, secrets: &[(&str, &str)]| {
        let mut config = ChannelConfig::new(slot);
        config.params = params;
        config.secrets = secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        config.allowed_hosts = vec![base.to_string()];
        config
    };
    let deliverer = Deliverer::new(HashMap::from([
        ("email".to_string(), channel("channel-sendgrid", vec![text("base_url", &base), text("from_email", "shop@example.com")], &[("SENDGRID_API_KEY", "k")])),
        (
            "sms".to_string(),
            channel("channel-twilio", vec![text("base_url", &base), text("from", "+15550000000")], &[("TWILIO_ACCOUNT_SID", "AC"), ("TWILIO_AUTH_TOKEN", "t")]),
        ),
        ("meta".to_string(), channel("channel-meta-audiences", vec![text("base_url", &format!("{base}/v21.0"))], &[("META_ACCESS_TOKEN", "m")])),
    ]))
    .unwrap();
    let engine = Engine { links: Some(links()), ..Engine::new(registry, ingestion.store.clone(), Arc::new(deliverer)) };
    let source = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../usecases/abandoned-cart/journey.toml")).unwrap();
    engine.deploy(&source).await.unwrap();
    let requests =
        || received.lock().unwrap().iter().map(|r| (r.method.to_string(), r.path.clone(), String::from_utf8_lossy(&r.body).into_owned())).collect::<Vec<_>>();

    // A minute in, everyone is inside their 30 minutes: nothing is sent.
    assert_eq!(engine.tick(t0 + minute).await.unwrap().entered, 3);
    assert!(requests().is_empty());
    // Thirty-one minutes in: Ann is reminded and joins the audience; Bob bought and left;
    // Cy's reminder waits for 08:00 in Auckland.
    engine.tick(t0 + 31 * minute).await.unwrap();
    let sent = requests();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[0].1 == "/v3/mail/send" && sent[0].2.contains("ann@example.com") && sent[0].2.contains("CART5"), "{sent:?}");
    assert_eq!((sent[1].0.as_str(), sent[1].1.as_str()), ("POST", "/v21.0/120000000000001/users"));
    let runs = ingestion.store.journey_runs("Abandoned cart").await.unwrap();
    let (bob, cy) = (ingestion.store.profile("bob", 0).await.unwrap().unwrap().id, ingestion.store.profile("cy", 0).await.unwrap().unwrap().id);
    assert!(runs.iter().any(|r| r.profile_id == bob && r.status == "done"), "{runs:?}");
    let cy_run = runs.iter().find(|r| r.profile_id == cy).unwrap();
    assert_eq!(cy_run.wake_at, Some(t0 + 10 * 3_600_000), "08:00 NZST is 20:00 UTC");
    engine.tick(t0 + 10 * 3_600_000).await.unwrap();
    let sent = requests();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent[2].2.contains("cy@example.com"), "{sent:?}");
    // Cy never consented to ads, so was never added; removal needs no consent and is sent
    // regardless, which is harmless. A day later the ads stop for both.
    let log = ingestion.store.journey_log("Abandoned cart").await.unwrap();
    assert!(log.iter().any(|e| e.profile_id == cy && e.step == "paid-media" && e.detail == "no ads consent"), "{log:?}");
    engine.tick(t0 + 2 * DAY).await.unwrap();
    let sent = requests();
    assert_eq!(sent.len(), 5, "{sent:?}");
    assert!(sent[3..].iter().all(|(method, path, _)| method == "DELETE" && path == "/v21.0/120000000000001/users"), "{sent:?}");
    assert!(ingestion.store.journey_runs("Abandoned cart").await.unwrap().iter().all(|r| r.status == "done"));
}

/// `wait` with `until_trait`: until a customer's own date (a renewal) plus some days; a
/// customer without the date goes straight on, and the log says why.
async fn a_wait_until_a_date_trait_plus_days(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z").unwrap().timestamp_millis();
    let (base, received) = provider(HashMap::from([("/v3/mail/send", vec![(202, vec![], "")])])).await;
    let registry = Arc::new(Registry::new(rekindle_tests::patient_runtime()));
    registry.install("channel-sendgrid", &rekindle_tests::component(rekindle_tests::components::CHANNEL_SENDGRID)).unwrap();
    let ingestion = Arc::new(Ingestion { store: store.into(), sources: HashMap::new() });
    let renewal = chrono::DateTime::from_timestamp_millis(t0 + DAY).unwrap().to_rfc3339();
    let mut batch = Vec::new();
    for (user, traits) in [("eve", json!({"email": "eve@example.com", "renewal": renewal})), ("fay", json!({"email": "fay@example.com"}))] {
        let mut identify = message(&format!("{user}-i"), user, None, t0 - DAY, traits);
        identify.consents = vec![(Purpose::Email, true)];
        batch.push(identify);
    }
    ingestion.store.ingest(batch).await.unwrap();
    let mut email = ChannelConfig::new("channel-sendgrid");
    email.params = vec![text("base_url", &base), text("from_email", "shop@example.com")];
    email.secrets = HashMap::from([("SENDGRID_API_KEY".to_string(), "k".to_string())]);
    email.allowed_hosts = vec![base.to_string()];
    let engine = Engine {
        links: Some(links()),
        ..Engine::new(registry, ingestion.store.clone(), Arc::new(Deliverer::new(HashMap::from([("email".to_string(), email)])).unwrap()))
    };
    engine
        .deploy("name = \"Renewal\"\n[entry]\napi = true\n[[steps]]\nid = \"until\"\ntype = \"wait\"\nuntil_trait = \"renewal\"\nplus_days = 1\n[[steps]]\nid = \"remind\"\ntype = \"send\"\nchannels = [\"email\"]\ntemplate = { text = \"Time to renew\" }\n")
        .await
        .unwrap();
    for who in ["eve", "fay"] {
        assert!(engine.enter_by_api("Renewal", who, t0).await.unwrap());
    }
    let mailed = || received.lock().unwrap().iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect::<Vec<_>>();
    engine.tick(t0).await.unwrap();
    assert_eq!(mailed().len(), 1, "Fay has no date and goes straight on");
    assert!(mailed()[0].contains("fay@example.com"));
    engine.tick(t0 + 2 * DAY - 1).await.unwrap();
    assert_eq!(mailed().len(), 1, "Eve waits for her renewal plus a day");
    engine.tick(t0 + 2 * DAY).await.unwrap();
    assert_eq!(mailed().len(), 2);
    assert!(mailed()[1].contains("eve@example.com"));
    let log = ingestion.store.journey_log("Renewal").await.unwrap();
    assert!(log.iter().any(|e| e.action == "skipped" && e.detail == "no date in trait `renewal`"), "{log:?}");
}

/// A host state with every shipped rule and adapter installed, on a clock standing at `t0`.
fn template_host(store: rekindle_store::Store, t0: i64) -> (AppState, Arc<Registry>, Clock) {
    let registry = Arc::new(Registry::new(rekindle_tests::patient_runtime()));
    for (name, path) in rekindle_tests::components::ALL {
        if name.starts_with("rule-") || name.starts_with("channel-") {
            registry.install(name, &rekindle_tests::component(path)).unwrap();
        }
    }
    let clock = Clock::manual(t0);
    let state = AppState::new(registry.clone(), None, Some("admin".into()))
        .with_ingestion(Ingestion { store: store.into(), sources: HashMap::new() })
        .with_clock(clock.clone(), Duration::from_secs(3600));
    (state, registry, clock)
}

/// Every shipped channel, pointed at the stand-in provider at `base`.
fn all_channels(base: &str) -> HashMap<String, ChannelConfig> {
    let channel = |slot: &str, params: Vec<Field>, secrets: &[&str]| {
        let mut config = ChannelConfig::new(slot);
        config.params = params;
        config.secrets = secrets.iter().map(|k| (k.to_string(), "secret".to_string())).collect();
        config.allowed_hosts = vec![base.to_string()];
        config.max_attempts = 1;
        config
    };
    HashMap::from([
        ("email".to_string(), channel("channel-sendgrid", vec![text("base_url", base), text("from_email", "shop@example.com")], &["SENDGRID_API_KEY"])),
        (
            "sms".to_string(),
            channel("channel-twilio", vec![text("base_url", base), text("from", "+15550000000")], &["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]),
        ),
        ("push".to_string(), channel("channel-fcm", vec![text("base_url", base), text("project_id", "shop")], &["FCM_ACCESS_TOKEN"])),
        ("meta".to_string(), channel("channel-meta-audiences", vec![text("base_url", &format!("{base}/v21.0"))], &["META_ACCESS_TOKEN"])),
        ("tiktok".to_string(), channel("channel-tiktok-audiences", vec![text("base_url", base), text("advertiser_id", "7")], &["TIKTOK_ACCESS_TOKEN"])),
        ("google".to_string(), channel("channel-google-customer-match", vec![text("base_url", base), text("customer_id", "123")], &["GOOGLE_ACCESS_TOKEN"])),
    ])
}

/// The shipped `lapsing-repeat-buyers` and `win-back-45` templates, segments and journeys
/// as deployed: the lapsing buyer joins three ad audiences and gets the voucher by email,
/// and her purchase takes her out of all three; the win-back customer gets a text.
async fn the_lapsing_and_win_back_templates_run_end_to_end(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z").unwrap().timestamp_millis();
    let (base, received) = provider(HashMap::from([
        ("/v3/mail/send", vec![(202, vec![], "")]),
        ("/Messages.json", vec![(201, vec![], r#"{"sid": "SM"}"#)]),
        ("/users", vec![(200, vec![], "{}")]),
        ("/segment/mapping/", vec![(200, vec![], r#"{"code": 0, "message": "OK"}"#)]),
        ("/v1/audienceMembers:ingest", vec![(200, vec![], r#"{"requestId": "r"}"#)]),
        ("/v1/audienceMembers:remove", vec![(200, vec![], r#"{"requestId": "r"}"#)]),
    ]))
    .await;
    let (state, registry, _clock) = template_host(store, t0);
    let ingestion = state.ingestion.clone().unwrap();
    // Lia buys every 30 days and is 40 days on (30 + 8 grace = 38): lapsing. Wes's only
    // order was 60 days ago: in the 45-to-90-day window.
    let mut lia = message("lia-i", "lia", None, t0 - 200 * DAY, json!({"first_name": "Lia", "email": "lia@example.com"}));
    lia.consents = vec![(Purpose::Email, true), (Purpose::Ads, true)];
    let mut wes = message("wes-i", "wes", None, t0 - 200 * DAY, json!({"first_name": "Wes", "phone": "+15557654321"}));
    wes.consents = vec![(Purpose::Sms, true)];
    let mut batch = vec![lia, wes];
    for (k, days) in [100, 70, 40].into_iter().enumerate() {
        batch.push(message(&format!("lia-o{k}"), "lia", Some("Order Completed"), t0 - days * DAY, json!({})));
    }
    batch.push(message("wes-o", "wes", Some("Order Completed"), t0 - 60 * DAY, json!({})));
    ingestion.store.ingest(batch).await.unwrap();

    let engine = Engine { links: Some(links()), ..Engine::new(registry, ingestion.store.clone(), Arc::new(Deliverer::new(all_channels(&base)).unwrap())) };
    let usecases = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../usecases");
    for name in ["lapsing-repeat-buyers", "win-back-45"] {
        let segments: toml::Table = toml::from_str(&std::fs::read_to_string(usecases.join(name).join("segments.toml")).unwrap()).unwrap();
        for segment in segments["segments"].as_array().unwrap() {
            rekindle_server::define_segment(&state, &serde_json::to_value(segment).unwrap()).await.unwrap();
        }
        engine.deploy(&std::fs::read_to_string(usecases.join(name).join("journey.toml")).unwrap()).await.unwrap();
    }
    let requests =
        || received.lock().unwrap().iter().map(|r| (r.method.to_string(), r.path.clone(), String::from_utf8_lossy(&r.body).into_owned())).collect::<Vec<_>>();

    engine.tick(t0).await.unwrap();
    let sent = requests();
    let paths: Vec<&str> = sent.iter().map(|r| r.1.as_str()).collect();
    for path in ["/v21.0/120000000000002/users", "/open_api/v1.3/segment/mapping/", "/v1/audienceMembers:ingest", "/v3/mail/send"] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }
    assert!(sent.iter().any(|r| r.1 == "/v3/mail/send" && r.2.contains("lia@example.com") && r.2.contains("BACK10")), "{sent:?}");
    assert!(sent.iter().any(|r| r.1.ends_with("/Messages.json") && r.2.contains("To=%2B15557654321") && r.2.contains("WINBACK15")), "{sent:?}");

    // Lia buys two days later: the journey ends and takes her out of every audience.
    ingestion.store.ingest(vec![message("lia-buys", "lia", Some("Order Completed"), t0 + 2 * DAY, json!({}))]).await.unwrap();
    let before = requests().len();
    engine.tick(t0 + 2 * DAY).await.unwrap();
    let after = requests();
    let removals: Vec<(String, String)> = after[before..].iter().map(|r| (r.0.clone(), r.1.clone())).collect();
    assert!(removals.contains(&("DELETE".into(), "/v21.0/120000000000002/users".into())), "{removals:?}");
    assert!(removals.contains(&("POST".into(), "/v1/audienceMembers:remove".into())), "{removals:?}");
    assert!(after[before..].iter().any(|r| r.1 == "/open_api/v1.3/segment/mapping/" && r.2.contains("\"delete\"")), "{removals:?}");
    let runs = ingestion.store.journey_runs("Lapsing repeat buyers").await.unwrap();
    assert_eq!(runs.iter().map(|r| r.ended_reason.as_deref()).collect::<Vec<_>>(), [Some("goal")]);
    // A week on, no last call goes to someone who already bought.
    engine.tick(t0 + 9 * DAY).await.unwrap();
    assert!(!requests().iter().any(|r| r.2.contains("expires soon")));
}

/// The shipped `about-to-sleep` template: one order and none in 180 days. High value gets
/// the paid audiences and the owned message, the rest only the owned message. A week later,
/// those who browsed without buying get the message for their favourite category.
async fn the_about_to_sleep_template_splits_by_value_and_favourite_category(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z").unwrap().timestamp_millis();
    let (base, received) = provider(HashMap::from([
        ("/v3/mail/send", vec![(202, vec![], "")]),
        ("/users", vec![(200, vec![], "{}")]),
        ("/v1/audienceMembers:ingest", vec![(200, vec![], "{}")]),
    ]))
    .await;
    let (state, registry, clock) = template_host(store, t0);
    let ingestion = state.ingestion.clone().unwrap();
    // Ola spent 600 on shoes 200 days ago; Oli 40 on tops. Both consented to email and ads.
    let mut batch = Vec::new();
    for (user, revenue, category) in [("ola", 600, "shoes"), ("oli", 40, "tops")] {
        let mut identify = message(&format!("{user}-i"), user, None, t0 - 300 * DAY, json!({"email": format!("{user}@example.com")}));
        identify.consents = vec![(Purpose::Email, true), (Purpose::Ads, true)];
        batch.push(identify);
        let mut order = message(&format!("{user}-o"), user, Some("Order Completed"), t0 - 200 * DAY, json!({}));
        order.properties = json!({"revenue": revenue, "products": [{"product_id": "p", "category": category}]}).as_object().cloned().unwrap();
        batch.push(order);
    }
    ingestion.store.ingest(batch).await.unwrap();

    let engine = Engine { links: Some(links()), ..Engine::new(registry, ingestion.store.clone(), Arc::new(Deliverer::new(all_channels(&base)).unwrap())) };
    let template = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../usecases/about-to-sleep");
    let segments: toml::Table = toml::from_str(&std::fs::read_to_string(template.join("segments.toml")).unwrap()).unwrap();
    for segment in segments["segments"].as_array().unwrap() {
        rekindle_server::define_segment(&state, &serde_json::to_value(segment).unwrap()).await.unwrap();
    }
    engine.deploy(&std::fs::read_to_string(template.join("journey.toml")).unwrap()).await.unwrap();
    let requests = || received.lock().unwrap().iter().map(|r| (r.path.clone(), String::from_utf8_lossy(&r.body).into_owned())).collect::<Vec<_>>();

    engine.tick(t0).await.unwrap();
    let sent = requests();
    let to = |who: &str| sent.iter().filter(|r| r.0 == "/v3/mail/send" && r.1.contains(&format!("{who}@example.com"))).count();
    assert_eq!((to("ola"), to("oli")), (1, 1), "the owned message for both: {sent:?}");
    assert_eq!(sent.iter().filter(|r| r.0.ends_with("/users") || r.0.ends_with(":ingest")).count(), 2, "paid audiences for Ola alone: {sent:?}");

    // Ola browses on day 5 without buying; the week's segment runs see it.
    ingestion.store.ingest(vec![message("ola-view", "ola", Some("Page Viewed"), t0 + 5 * DAY, json!({}))]).await.unwrap();
    clock.advance(7 * DAY);
    let run = run_every_segment_now(&state).await;
    assert!(run > 0);
    engine.tick(t0 + 7 * DAY).await.unwrap();
    let sent = requests();
    let shoes: Vec<_> = sent.iter().filter(|r| r.1.contains("New shoes for you")).collect();
    assert_eq!(shoes.len(), 1, "{sent:?}");
    assert!(shoes[0].1.contains("ola@example.com"));
    let log = ingestion.store.journey_log("One-time buyers about to sleep").await.unwrap();
    let oli = ingestion.store.profile("oli", 0).await.unwrap().unwrap().id;
    assert!(log.iter().any(|e| e.profile_id == oli && e.step == "browsing" && e.action == "split" && e.detail == "false"), "{log:?}");
    let runs = ingestion.store.journey_runs("One-time buyers about to sleep").await.unwrap();
    assert!(runs.iter().all(|r| r.status == "done"), "{runs:?}");
}

/// Re-evaluates every segment now, as the scheduler would; returns the profiles read.
async fn run_every_segment_now(state: &AppState) -> usize {
    let ingestion = state.ingestion.as_ref().unwrap();
    let defs = ingestion.store.segments().await.unwrap();
    let (plan, _) =
        rekindle_segments::batch::Plan::new(&state.registry, &ingestion.store, &defs, state.clock.now(), rekindle_segments::batch::Cutoffs::Refresh)
            .await
            .unwrap();
    let report = rekindle_segments::batch::run_all(&ingestion.store, Arc::new(plan), Arc::new(rekindle_segments::batch::WasmEvaluator)).await.unwrap();
    report.profiles
}

/// The shipped `rfm-win-back` template over a population whose quintiles the host computes:
/// the frequent, big-spending customers who stopped buying are the segment; the newsletter
/// subscriber among them gets ten related products by email, the other is left alone.
async fn the_rfm_template_recommends_related_products_to_subscribers(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z").unwrap().timestamp_millis();
    let (base, received) = provider(HashMap::from([("/v3/mail/send", vec![(202, vec![], "")])])).await;
    let (state, registry, _clock) = template_host(store, t0);
    let ingestion = state.ingestion.clone().unwrap();
    let products: Vec<rekindle_store::Product> = (0..14)
        .map(|n| rekindle_store::Product {
            id: format!("shoe-{n}"),
            name: format!("Shoe {n:02}"),
            category: Some("shoes".into()),
            price: Some(50.0),
            url: Some(format!("https://shop.example/shoe-{n}")),
            image: None,
            in_stock: true,
        })
        .collect();
    ingestion.store.upsert_products(products).await.unwrap();
    // Twenty customers: the first ten buy often and spend much; of those, Rita (0) and Ron
    // (1) stopped 200 days ago while the rest bought last week. The other ten bought once.
    let mut batch = Vec::new();
    for c in 0..20 {
        let user = match c {
            0 => "rita".to_string(),
            1 => "ron".to_string(),
            n => format!("c{n}"),
        };
        let mut identify = message(&format!("{user}-i"), &user, None, t0 - 900 * DAY, json!({"email": format!("{user}@example.com"), "newsletter": c != 1}));
        identify.consents = vec![(Purpose::Email, true)];
        batch.push(identify);
        let (orders, last) = if c < 10 { (12, if c < 2 { 200 } else { 7 }) } else { (1, 30 + c) };
        for k in 0..orders {
            let mut order = message(&format!("{user}-o{k}"), &user, Some("Order Completed"), t0 - (last + 20 * k as i64) * DAY, json!({}));
            order.properties =
                json!({"revenue": 150, "products": [{"product_id": format!("shoe-{}", k % 3), "category": "shoes"}]}).as_object().cloned().unwrap();
            batch.push(order);
        }
    }
    ingestion.store.ingest(batch).await.unwrap();
    let engine = Engine { links: Some(links()), ..Engine::new(registry, ingestion.store.clone(), Arc::new(Deliverer::new(all_channels(&base)).unwrap())) };
    let template = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../usecases/rfm-win-back");
    let segments: toml::Table = toml::from_str(&std::fs::read_to_string(template.join("segments.toml")).unwrap()).unwrap();
    for segment in segments["segments"].as_array().unwrap() {
        rekindle_server::define_segment(&state, &serde_json::to_value(segment).unwrap()).await.unwrap();
    }
    let members = ingestion.store.members("RFM win-back", "", 100).await.unwrap();
    let (rita, ron) = (ingestion.store.profile("rita", 0).await.unwrap().unwrap().id, ingestion.store.profile("ron", 0).await.unwrap().unwrap().id);
    let mut ids: Vec<String> = members.iter().map(|m| m.profile_id.clone()).collect();
    ids.sort();
    let mut want = vec![rita.clone(), ron.clone()];
    want.sort();
    assert_eq!(ids, want, "only the lapsed big spenders: {members:?}");
    engine.deploy(&std::fs::read_to_string(template.join("journey.toml")).unwrap()).await.unwrap();
    engine.tick(t0).await.unwrap();
    let mails: Vec<String> = received.lock().unwrap().iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
    assert_eq!(mails.len(), 1, "Ron does not take the newsletter: {mails:?}");
    assert!(mails[0].contains("rita@example.com"));
    let listed = (0..14).filter(|n| mails[0].contains(&format!("Shoe {n:02}"))).count();
    assert_eq!(listed, 10, "ten related products: {}", mails[0]);
    for bought in ["Shoe 00", "Shoe 01", "Shoe 02"] {
        assert!(!mails[0].contains(bought), "never something she bought: {}", mails[0]);
    }
}

/// A send a crash left `pending` (claimed, the provider's answer never recorded). SendGrid
/// can be asked: after `reconcile_after`, the host looks the message up by its idempotency
/// key, records one the provider has as sent without sending it again, and resends one it
/// lacks. An adapter built without `reconcile` cannot be asked, so its send is repeated at
/// once under the same key.
async fn a_send_left_in_doubt_by_a_crash_is_looked_up_before_it_is_sent_again(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z").unwrap().timestamp_millis();
    let (base, received) = provider(HashMap::from([
        ("/v3/mail/send", vec![(202, vec![], "")]),
        // Email Activity is rate limited at first; then it knows one message, not the other.
        (
            "/v3/messages",
            vec![
                (429, vec![("retry-after", "90")], ""),
                (200, vec![], r#"{"messages":[{"msg_id":"sg-1","status":"delivered"}]}"#),
                (200, vec![], r#"{"messages":[]}"#),
            ],
        ),
        ("/hook", vec![(204, vec![], "")]),
    ]))
    .await;
    let registry = rekindle_tests::registry(&[
        ("rule-win-back-window", rekindle_tests::components::RULE_WIN_BACK_WINDOW),
        ("channel-sendgrid", rekindle_tests::components::CHANNEL_SENDGRID),
        ("plain-channel", rekindle_tests::components::PLAIN_CHANNEL),
    ]);
    assert!(registry.get("channel-sendgrid").unwrap().can_reconcile());
    assert!(!registry.get("plain-channel").unwrap().can_reconcile(), "built against the plain channel-adapter world");
    let clock = Clock::manual(t0);
    let state = AppState::new(registry.clone(), None, Some("admin".into()))
        .with_ingestion(Ingestion { store: store.into(), sources: HashMap::new() })
        .with_clock(clock, Duration::from_secs(3600));
    let ingestion = state.ingestion.clone().unwrap();
    let mut batch = Vec::new();
    for user in ["ann", "bob"] {
        let mut identify = message(&format!("{user}-i"), user, None, t0 - 100 * DAY, json!({"email": format!("{user}@example.com")}));
        identify.consents = vec![(Purpose::Email, true)];
        batch.push(identify);
        batch.push(message(&format!("{user}-o"), user, Some("Order Completed"), t0 - 60 * DAY, json!({})));
    }
    ingestion.store.ingest(batch).await.unwrap();
    rekindle_server::define_segment(&state, &json!({"name": "Win back", "slot": "rule-win-back-window"})).await.unwrap();

    let mut email = ChannelConfig::new("channel-sendgrid");
    email.params = vec![text("base_url", &base), text("from_email", "shop@example.com")];
    email.secrets = HashMap::from([("SENDGRID_API_KEY".to_string(), "sg-key".to_string())]);
    email.allowed_hosts = vec![base.to_string()];
    let mut hook = ChannelConfig::new("plain-channel");
    hook.params = vec![text("url", &format!("{base}/hook"))];
    hook.allowed_hosts = vec![base.to_string()];
    let deliverer = Arc::new(Deliverer::new(HashMap::from([("email".to_string(), email), ("hook".to_string(), hook)])).unwrap());
    // A cap of one message a week: the hook's repeats count, and must not hold back the
    // emails in doubt, which were decided before the crash.
    let engine = Engine {
        frequency_cap: Some(FrequencyCap { messages: 1, days: 7 }),
        links: Some(links()),
        ..Engine::new(registry, ingestion.store.clone(), deliverer)
    };
    let journey = |name: &str, channels: &str| {
        format!(
            "name = \"{name}\"\n[entry]\nsegment = \"Win back\"\n[[steps]]\nid = \"pause\"\ntype = \"wait\"\nduration = \"1h\"\n\
             [[steps]]\nid = \"hello\"\ntype = \"send\"\nchannels = [{channels}]\ntemplate = {{ subject = \"Hi\", text = \"We miss you\" }}\n"
        )
    };
    // The email journey would now choose the hook first; its sends in doubt stay on email.
    engine.deploy(&journey("By email", "\"hook\", \"email\"")).await.unwrap();
    engine.deploy(&journey("By hook", "\"hook\"")).await.unwrap();
    assert_eq!(engine.tick(t0).await.unwrap().entered, 4);

    // The crash: a process of this host took the runs at the hour, claimed each send and
    // sent its request, and died before the answer was recorded.
    let sent_at = t0 + 3_600_000;
    let crashed = Lease::new(&engine.lease.host, Duration::from_secs(60));
    let leased = ingestion.store.claim_due_runs(sent_at, 10, &crashed).await.unwrap();
    assert_eq!(leased.len(), 4);
    for run in &leased {
        let channel = if run.journey == "By email" { "email" } else { "hook" };
        let key = format!("{}:hello:{channel}", run.id);
        assert_eq!(ingestion.store.claim_send(&key, run, channel, sent_at, &crashed).await.unwrap(), SendClaim::New);
        assert!(ingestion.store.mark_sending(&key, run, sent_at, &crashed).await.unwrap());
    }
    // Another host's process cannot take them over while their lease lasts.
    let other_host = Lease::new("another-host", Duration::from_secs(60));
    assert!(ingestion.store.claim_due_runs(sent_at + 1_000, 10, &other_host).await.unwrap().is_empty());
    let count = |path: &str| received.lock().unwrap().iter().filter(|r| r.path.ends_with(path)).count();

    // Restarted a second later, the same host takes its runs back at once. Too soon to
    // ask SendGrid, whose activity index lags; the plain adapter cannot ask, so its two
    // messages go again at once, under the same keys.
    engine.tick(sent_at + 1_000).await.unwrap();
    assert_eq!((count("/v3/messages"), count("/v3/mail/send"), count("/hook")), (0, 0, 2));
    let hook_log = ingestion.store.journey_log("By hook").await.unwrap();
    assert_eq!(hook_log.iter().filter(|e| e.action == "sent" && e.detail.contains("the adapter cannot ask its provider")).count(), 2, "{hook_log:?}");
    let waiting = ingestion.store.journey_log("By email").await.unwrap();
    assert_eq!(waiting.iter().filter(|e| e.action == "in doubt").count(), 2, "{waiting:?}");

    // Two minutes after the claim: the first lookup is rate limited, so that send waits
    // the 90 s SendGrid asked for; the message SendGrid has is recorded, not resent.
    engine.tick(sent_at + 121_000).await.unwrap();
    assert_eq!((count("/v3/messages"), count("/v3/mail/send")), (2, 0));
    let log = ingestion.store.journey_log("By email").await.unwrap();
    assert!(log.iter().any(|e| e.action == "in doubt" && e.detail.starts_with("the provider could not answer (it answered 429)")), "{log:?}");
    // Then the other is looked up again, found missing, and sent once.
    engine.tick(sent_at + 121_000 + 91_000).await.unwrap();
    assert_eq!((count("/v3/messages"), count("/v3/mail/send"), count("/hook")), (3, 1, 2));
    let lookup = received.lock().unwrap().iter().find(|r| r.path.ends_with("/v3/messages")).cloned().unwrap();
    assert_eq!(lookup.headers["authorization"], "Bearer sg-key", "the host fills the secret into the lookup too");
    assert!(!log_has(&ingestion.store.journey_log("By email").await.unwrap(), "capped"), "a send in doubt is not capped");
    let log = ingestion.store.journey_log("By email").await.unwrap();
    let sent: Vec<&str> = log.iter().filter(|e| e.action == "sent").map(|e| e.detail.as_str()).collect();
    assert_eq!(sent.len(), 2, "{log:?}");
    assert!(sent.iter().any(|d| d.starts_with("sg-1 (confirmed by the provider; not sent again)")), "{sent:?}");
    assert!(sent.iter().any(|d| d.ends_with("(resent: the provider had not received it)")), "{sent:?}");
    assert!(ingestion.store.journey_runs("By email").await.unwrap().iter().all(|r| r.status == "done"));

    // Settled now: ticking again asks and sends nothing.
    engine.tick(sent_at + 400_000).await.unwrap();
    assert_eq!((count("/v3/messages"), count("/v3/mail/send"), count("/hook")), (3, 1, 2));
}

fn log_has(log: &[rekindle_store::JourneyLogEntry], action: &str) -> bool {
    log.iter().any(|e| e.action == action)
}
