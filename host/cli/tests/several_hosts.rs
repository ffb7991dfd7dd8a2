//! A campaign on several hosts, under SIGKILL, against providers that misbehave: every
//! message arrives once, none twice (issue 14).
//!
//! Real `rekindle serve` processes run a four-step journey for 100 customers: an email
//! (through the SendGrid adapter), an audience add and a message through the webhook
//! adapter, and a second email. Two stand-ins on loopback journal every request they
//! accept to a file on disk, and the counts come from those journals:
//! - the stand-in SendGrid honours no idempotency key (as the real one). It answers some
//!   requests 429 or 500 without taking them, and takes some without ever answering. Its
//!   Email Activity lookup finds a message only two seconds after it was taken, as
//!   SendGrid indexes late, and is itself rate limited now and then;
//! - the stand-in webhook receiver honours `Idempotency-Key` (the IETF draft: a repeated key
//!   replays the first answer, `409` while the first is still in flight). It fails some
//!   requests with 500, and processes some without its answer ever reaching the host.
//!
//! Two setups: one host on SQLite, killed over and over; and three hosts on one PostgreSQL
//! database, started together, one of them killed over and over while the other two work.
//! The email channel is paced at 20 messages a second, so the first tick, which sends to
//! every customer, lasts several seconds and kills land in the middle of it.

mod support;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use support::{Server, serve, shipped_plugins};

const CUSTOMERS: usize = 100;
const TOKEN: &str = "several-hosts-admin-token";
/// How long after taking a message the stand-in SendGrid's lookup finds it.
const INDEX_DELAY: Duration = Duration::from_secs(2);
/// How long a stand-in holds a request it will never answer; the hosts give up at 2 s.
const NO_ANSWER_FOR: Duration = Duration::from_secs(6);

const JOURNEY: &str = r#"name = "Win back"
[entry]
segment = "Buyers"

[[steps]]
id = "one"
type = "send"
channels = ["email"]
template = { subject = "one", text = "We miss you" }

[[steps]]
id = "lapsed"
type = "audience_add"
audiences = { hook = "lapsed" }

[[steps]]
id = "two"
type = "send"
channels = ["hook"]
template = { subject = "two", text = "Still here" }

[[steps]]
id = "three"
type = "send"
channels = ["email"]
template = { subject = "three", text = "Last call" }
"#;

/// What every customer must receive once: the two emails, the audience add and the hook
/// message.
const EXPECTED_PER_CUSTOMER: [&str; 4] = ["email:one", "email:three", "audience:lapsed", "hook:two"];

/// A deterministic coin for the stand-ins' misbehaviour: the same seed, the same run.
struct Dice(AtomicU64);

impl Dice {
    /// A number from 0 to 99 (splitmix64 over a counter).
    fn roll(&self) -> u64 {
        let mut z = self.0.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % 100
    }
}

/// An append-only journal of what a stand-in took, one JSON line per request, on disk.
struct Journal(Mutex<std::fs::File>);

impl Journal {
    fn create(path: &Path) -> Journal {
        Journal(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap()))
    }

    fn record(&self, entry: Value) {
        // One write per line, so lines never interleave.
        let line = format!("{entry}\n");
        let mut file = self.0.lock().unwrap();
        file.write_all(line.as_bytes()).unwrap();
        file.sync_data().unwrap();
    }
}

fn read_journal(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// The stand-in SendGrid: `POST /v3/mail/send` and Email Activity's `GET /v3/messages`.
fn sendgrid(journal: Arc<Journal>, dice: Arc<Dice>) -> axum::Router {
    let taken: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (send_taken, lookup_taken, lookup_dice) = (taken.clone(), taken, dice.clone());
    axum::Router::new()
        .route(
            "/v3/mail/send",
            axum::routing::post(move |body: Bytes| {
                let (journal, dice, taken) = (journal.clone(), dice.clone(), send_taken.clone());
                async move {
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let roll = dice.roll();
                    // Refused without being taken: the host may send again.
                    if roll < 8 {
                        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "").into_response();
                    }
                    if roll < 13 {
                        return (StatusCode::INTERNAL_SERVER_ERROR, "").into_response();
                    }
                    let key = body["custom_args"]["idempotency_key"].as_str().unwrap_or("").to_string();
                    journal.record(json!({
                        "what": format!("email:{}", body["subject"].as_str().unwrap_or("")),
                        "customer": body["custom_args"]["profile_id"],
                        "key": key,
                    }));
                    taken.lock().unwrap().insert(key, Instant::now());
                    // Taken, and the answer never comes.
                    if roll < 18 {
                        tokio::time::sleep(NO_ANSWER_FOR).await;
                    }
                    (StatusCode::ACCEPTED, "").into_response()
                }
            }),
        )
        .route(
            "/v3/messages",
            axum::routing::get(move |query: axum::extract::Query<HashMap<String, String>>| {
                let (taken, dice) = (lookup_taken.clone(), lookup_dice.clone());
                async move {
                    if dice.roll() < 10 {
                        return (StatusCode::TOO_MANY_REQUESTS, axum::Json(json!({"errors": [{"message": "too many requests"}]})));
                    }
                    let key = query.get("query").and_then(|q| q.strip_prefix("unique_args['idempotency_key']=\"")).and_then(|q| q.strip_suffix('"'));
                    let Some(key) = key else { return (StatusCode::BAD_REQUEST, axum::Json(json!({"errors": [{"message": "bad query"}]}))) };
                    // Indexed a little after it was taken, as SendGrid does.
                    let indexed = taken.lock().unwrap().get(key).is_some_and(|at| at.elapsed() >= INDEX_DELAY);
                    let messages = if indexed { vec![json!({"msg_id": format!("sg-{key}"), "status": "delivered"})] } else { vec![] };
                    (StatusCode::OK, axum::Json(json!({ "messages": messages })))
                }
            }),
        )
}

/// Where the webhook receiver is with one key.
#[derive(Clone)]
enum KeyState {
    InFlight,
    Done(Bytes),
}

/// The stand-in webhook receiver: honours `Idempotency-Key` as the IETF draft says.
fn webhook(journal: Arc<Journal>, dice: Arc<Dice>, mismatched: Arc<Mutex<Vec<String>>>) -> axum::Router {
    let keys: Arc<Mutex<HashMap<String, KeyState>>> = Arc::default();
    axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (journal, dice, keys, mismatched) = (journal.clone(), dice.clone(), keys.clone(), mismatched.clone());
            async move {
                let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                {
                    let mut keys = keys.lock().unwrap();
                    match keys.get(&key) {
                        Some(KeyState::InFlight) => return StatusCode::CONFLICT,
                        Some(KeyState::Done(first)) if *first == body => return StatusCode::NO_CONTENT,
                        Some(KeyState::Done(_)) => {
                            mismatched.lock().unwrap().push(key);
                            return StatusCode::UNPROCESSABLE_ENTITY;
                        }
                        None => {}
                    }
                    let roll = dice.roll();
                    if roll < 5 {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    keys.insert(key.clone(), KeyState::InFlight);
                }
                // Processing goes on if the host hangs up (or is killed) meanwhile, as a
                // real receiver's would: a key left in flight forever would be a stand-in bug.
                let processing = {
                    let (journal, keys, key) = (journal.clone(), keys.clone(), key.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let entries: Vec<Value> = if parsed["type"] == "audience" {
                            let audience = parsed["audience"].as_str().unwrap_or("");
                            let added = parsed["add"].as_array().cloned().unwrap_or_default();
                            added.into_iter().map(|customer| json!({"what": format!("audience:{audience}"), "customer": customer, "key": key})).collect()
                        } else {
                            vec![json!({"what": format!("hook:{}", parsed["subject"].as_str().unwrap_or("")), "customer": parsed["profile_id"], "key": key})]
                        };
                        for entry in entries {
                            journal.record(entry);
                        }
                        keys.lock().unwrap().insert(key, KeyState::Done(body));
                    })
                };
                processing.await.unwrap();
                // Processed, and the answer never reaches the host.
                if dice.roll() < 5 {
                    tokio::time::sleep(NO_ANSWER_FOR).await;
                }
                StatusCode::NO_CONTENT
            }
        }),
    )
}

/// A campaign's working directory: the config, journey, plugins, and the stand-ins'
/// journals.
struct Campaign {
    work: tempfile::TempDir,
    config: PathBuf,
    plugins: PathBuf,
    journal: PathBuf,
    mismatched: Arc<Mutex<Vec<String>>>,
}

async fn campaign(seed: u64) -> Campaign {
    // REKINDLE_TEST_SEED=N replays the stand-ins' misbehaviour with another seed.
    let seed = std::env::var("REKINDLE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(seed);
    // REKINDLE_TEST_KEEP=1 keeps the hosts' data and the journals, to see why a run failed.
    let work = tempfile::Builder::new().disable_cleanup(std::env::var_os("REKINDLE_TEST_KEEP").is_some()).tempdir().unwrap();
    eprintln!("campaign in {} with seed {seed}", work.path().display());
    let plugins = shipped_plugins(work.path());
    let journal = work.path().join("providers.journal");
    let dice = Arc::new(Dice(AtomicU64::new(seed)));
    let mismatched: Arc<Mutex<Vec<String>>> = Arc::default();
    let journal_file = Arc::new(Journal::create(&journal));
    let sendgrid_base = rekindle_tests::serve(sendgrid(journal_file.clone(), dice.clone())).await;
    let hook_base = rekindle_tests::serve(webhook(journal_file, dice, mismatched.clone())).await;
    let journey_file = work.path().join("journey.toml");
    std::fs::write(&journey_file, JOURNEY).unwrap();
    let config = work.path().join("rekindle.toml");
    std::fs::write(
        &config,
        format!(
            r#"journeys = [{journey_file:?}]
tick_seconds = 1
run_lease_seconds = 3
[[segments]]
name = "Buyers"
slot = "rule-high-ltv"
schedule = "weekly"
params = {{ min_ltv = 0.0 }}
[[channels]]
name = "email"
slot = "channel-sendgrid"
params = {{ base_url = "{sendgrid_base}", from_email = "shop@example.com" }}
allowed_hosts = ["{sendgrid_base}"]
secrets = {{ SENDGRID_API_KEY = "sg-key" }}
rate_per_second = 20
reconcile_after_seconds = 4
request_timeout_seconds = 2
[[channels]]
name = "hook"
slot = "channel-webhook"
params = {{ url = "{hook_base}/hook" }}
allowed_hosts = ["{hook_base}"]
secrets = {{ WEBHOOK_TOKEN = "hook-token" }}
request_timeout_seconds = 2
"#
        ),
    )
    .unwrap();
    Campaign { work, config, plugins, journal, mismatched }
}

impl Campaign {
    /// `rekindle serve` arguments for a host with its own data directory, on `postgres`
    /// when given.
    fn args(&self, host: &str, postgres: Option<&str>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--config".into(),
            self.config.clone().into(),
            "--plugins".into(),
            self.plugins.clone().into(),
            "--data-dir".into(),
            self.work.path().join(host).into(),
            "--server-source".into(),
            "web=web-key".into(),
        ];
        if let Some(url) = postgres {
            args.extend(["--postgres".into(), url.into()]);
        }
        args
    }

    /// The shop: customers with an order, and email and ads consent. The weekly segment is
    /// empty until the next start backfills it, so nobody is messaged yet.
    async fn load_shop(&self, base: &str) {
        let batch: Vec<Value> = (0..CUSTOMERS)
            .flat_map(|c| {
                [
                    json!({"type": "identify", "messageId": format!("i{c}"), "userId": format!("c{c}"),
                           "traits": {"email": format!("c{c}@example.com")},
                           "context": {"consent": {"categoryPreferences": {"email": true, "ads": true}}}}),
                    json!({"type": "track", "messageId": format!("o{c}"), "userId": format!("c{c}"), "event": "Order Completed",
                           "properties": {"revenue": 20}}),
                ]
            })
            .collect();
        let response =
            reqwest::Client::new().post(format!("{base}/v1/batch")).basic_auth("web-key", Some("")).json(&json!({"batch": batch})).send().await.unwrap();
        assert!(response.status().is_success(), "{}", response.text().await.unwrap_or_default());
    }

    /// Counts the journals against what every customer must get: (lost, duplicated, how
    /// many taken in all).
    fn count(&self) -> (Vec<String>, Vec<String>, usize) {
        let entries = read_journal(&self.journal);
        let mut taken: HashMap<String, usize> = HashMap::new();
        for entry in &entries {
            *taken.entry(format!("{} {}", entry["what"].as_str().unwrap(), entry["customer"].as_str().unwrap())).or_default() += 1;
        }
        let ids = customer_ids(&entries);
        let mut lost = Vec::new();
        for customer in &ids {
            for what in EXPECTED_PER_CUSTOMER {
                if !taken.contains_key(&format!("{what} {customer}")) {
                    lost.push(format!("{what} {customer}"));
                }
            }
        }
        let duplicated = taken.iter().filter(|(_, n)| **n > 1).map(|(what, n)| format!("{what} x{n}")).collect();
        (lost, duplicated, entries.len())
    }
}

/// The profile ids the journals name, which must be every customer's.
fn customer_ids(entries: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = entries.iter().filter_map(|e| e["customer"].as_str().map(String::from)).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The campaign's runs as a host reports them, or `None` when it does not answer.
async fn runs(base: &str) -> Option<Vec<Value>> {
    let response = reqwest::Client::new().get(format!("{base}/v1/journeys/Win%20back/runs")).bearer_auth(TOKEN).send().await.ok()?;
    response.json::<Value>().await.ok()?["runs"].as_array().cloned()
}

/// Where the unfinished runs are, and the log of the first, for a failure's message.
async fn unfinished(base: &str, runs: &Option<Vec<Value>>) -> String {
    let Some(runs) = runs else { return "the host did not answer".into() };
    let mut at: std::collections::BTreeMap<String, usize> = Default::default();
    for run in runs.iter().filter(|run| run["status"] != "done") {
        *at.entry(format!("{} at step {}", run["status"], run["step"])).or_default() += 1;
    }
    let first = runs.iter().find(|run| run["status"] != "done").map(|run| run["id"].as_str().unwrap_or("").to_string());
    let log: Value = match reqwest::Client::new().get(format!("{base}/v1/journeys/Win%20back/log")).bearer_auth(TOKEN).send().await {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let entries: Vec<&Value> = log["log"].as_array().into_iter().flatten().filter(|e| first.as_deref() == e["run_id"].as_str()).collect();
    format!("{} of {} runs unfinished ({at:?}); the first's log: {entries:?}", at.values().sum::<usize>(), runs.len())
}

fn finished(runs: &Option<Vec<Value>>) -> bool {
    runs.as_ref().is_some_and(|runs| runs.len() == CUSTOMERS && runs.iter().all(|run| run["status"] == "done"))
}

async fn start(campaign: &Campaign, host: &str, postgres: Option<&str>) -> (Server, String) {
    let args = campaign.args(host, postgres);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    serve(&args, TOKEN).await
}

/// Checks the journals once the campaign is over: each customer got each message once.
/// `base` is a live host, asked for the log of any customer the counts find wrong.
async fn assert_exactly_once(campaign: &Campaign, base: &str, kills: usize, setup: &str) {
    // An answer the stand-ins hold back may still be on its way; nothing new comes after.
    tokio::time::sleep(NO_ANSWER_FOR).await;
    let (lost, duplicated, taken) = campaign.count();
    let customers = customer_ids(&read_journal(&campaign.journal)).len();
    eprintln!(
        "{setup}: {kills} SIGKILLs; {taken} requests taken by the providers for {customers} customers; {} lost, {} duplicated",
        lost.len(),
        duplicated.len()
    );
    if !lost.is_empty() || !duplicated.is_empty() {
        eprintln!("{}", explain(campaign, base, lost.iter().chain(&duplicated)).await);
    }
    assert!(campaign.mismatched.lock().unwrap().is_empty(), "a repeated key came with another body: {:?}", campaign.mismatched.lock().unwrap());
    assert_eq!(customers, CUSTOMERS, "every customer reached the providers");
    assert!(lost.is_empty(), "{setup}: lost {lost:?}");
    assert!(duplicated.is_empty(), "{setup}: duplicated {duplicated:?}");
    assert_eq!(taken, CUSTOMERS * EXPECTED_PER_CUSTOMER.len());
}

/// For each wrong count (`"email:one c17"`, `"email:one c17 x2"`), what the providers took
/// for that customer and what the host logged of the customer's run: a CI failure's only
/// evidence, since the working directory goes with the run.
async fn explain(campaign: &Campaign, base: &str, wrong: impl Iterator<Item = &String>) -> String {
    let journal = read_journal(&campaign.journal);
    let log: Value = match reqwest::Client::new().get(format!("{base}/v1/journeys/Win%20back/log")).bearer_auth(TOKEN).send().await {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let mut out = String::new();
    for item in wrong {
        let Some(customer) = item.split(' ').nth(1) else { continue };
        out += &format!("\n{item}:\n  taken:\n");
        for entry in journal.iter().filter(|e| e["customer"] == customer) {
            out += &format!("    {entry}\n");
        }
        out += "  logged:\n";
        for entry in log["log"].as_array().into_iter().flatten().filter(|e| e["profile_id"] == customer) {
            out += &format!("    {entry}\n");
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sqlite_host_killed_repeatedly_delivers_every_message_exactly_once() {
    let campaign = campaign(7).await;
    {
        let (_host, base) = start(&campaign, "host", None).await;
        campaign.load_shop(&base).await;
    }
    let (mut kills, started) = (0, Instant::now());
    loop {
        let (host, base) = start(&campaign, "host", None).await;
        // 0.4 s to 3.2 s: inside the first long tick, between ticks, mid-retry.
        tokio::time::sleep(Duration::from_millis(400 + 400 * (kills % 8) as u64)).await;
        let runs = runs(&base).await;
        if started.elapsed() > Duration::from_secs(240) {
            panic!("the campaign never finished: {}", unfinished(&base, &runs).await);
        }
        if finished(&runs) {
            assert!(kills >= 5, "the campaign should have been interrupted several times, was {kills}");
            assert_exactly_once(&campaign, &base, kills, "SQLite, one host").await;
            return;
        }
        drop(host); // SIGKILL
        kills += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_postgres_hosts_one_killed_repeatedly_deliver_every_message_exactly_once() {
    let Some(url) = rekindle_tests::fresh_postgres_database().await else { return };
    let campaign = campaign(11).await;
    {
        let (_host, base) = start(&campaign, "a", Some(&url)).await;
        campaign.load_shop(&base).await;
    }
    // Started together: their start-up backfills of the segment meet in the database.
    let ((_a, a), (_b, _), (c, _)) = tokio::join!(start(&campaign, "a", Some(&url)), start(&campaign, "b", Some(&url)), start(&campaign, "c", Some(&url)));
    let mut victim = Some(c);
    let (mut kills, started) = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(300 + 350 * (kills % 7) as u64)).await;
        drop(victim.take()); // SIGKILL host c
        kills += 1;
        let runs = runs(&a).await;
        if finished(&runs) {
            break;
        }
        if started.elapsed() > Duration::from_secs(240) {
            panic!("the campaign never finished: {}", unfinished(&a, &runs).await);
        }
        victim = Some(start(&campaign, "c", Some(&url)).await.0);
    }
    assert!(kills >= 5, "host c should have been killed several times, was {kills}");
    assert_exactly_once(&campaign, &a, kills, "PostgreSQL, three hosts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_started_together_on_postgresql_all_come_up() {
    let Some(url) = rekindle_tests::fresh_postgres_database().await else { return };
    let campaign = campaign(3).await;
    {
        let (_host, base) = start(&campaign, "seed", Some(&url)).await;
        campaign.load_shop(&base).await;
    }
    // Each start backfills the segment over the same customers at once; every host must
    // come up (serve fails the test when one exits instead). Three rounds, as a cluster
    // restarted together would.
    for _round in 0..3 {
        let hosts = tokio::join!(start(&campaign, "h1", Some(&url)), start(&campaign, "h2", Some(&url)), start(&campaign, "h3", Some(&url)));
        drop(hosts);
    }
}
