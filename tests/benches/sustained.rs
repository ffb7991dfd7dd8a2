//! Sustained ingestion: `SECONDS` (default 300) of continuous `/v1/batch` load into a
//! growing database, every event new and every batch acknowledged only once committed
//! (SQLite with `synchronous = FULL` and its checkpoints; PostgreSQL with fsync on). The
//! stream keeps meeting new people: one in fifty events is a newcomer's first identify,
//! with traits and an email, and the rest are page views, cart adds and orders of people
//! already known. Throughput is reported per 10-second window, so a rate that sinks as the
//! database grows shows.
//!
//! Runs, each into an empty database:
//! - `sqlite`: one host on SQLite;
//! - `postgres` and `postgres3`: one host, then three hosts sharing one database, on the
//!   durable server `REKINDLE_BENCH_POSTGRES` names (`REKINDLE_PG_DURABLE=1 scripts/postgres`).
//!
//! `RUNS=sqlite,postgres,postgres3` picks them. `RATE` offers that many events/s instead
//! of sending each batch as soon as the last was acknowledged. With `REALTIME=on` the abandoned-cart
//! segment is real-time (`wait_minutes` 0) and a probe sends a new visitor's cart add every
//! 1.5 s, timing until the first host lists the membership: real-time p99 at this load.
//!
//! `cargo bench -p rekindle-tests --bench sustained`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rekindle_server::{AppState, Ingestion, app};
use rekindle_store::{EventMapping, Store};
use serde_json::{Value, json};

// The same allocator as the `rekindle` binary: the server is what is being measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PER_BATCH: usize = 100;
const CLIENTS: usize = 8;
const WINDOW: Duration = Duration::from_secs(10);
/// One event in this many is a newcomer's identify.
const NEWCOMER_EVERY: usize = 50;
/// The customers the shop has before the load starts, identified beforehand (untimed).
const CUSTOMERS: usize = 50_000;

#[derive(Clone)]
enum Database {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

async fn open(database: &Database) -> Store {
    match database {
        Database::Sqlite(path) => Store::open_sqlite(path, EventMapping::default()).expect("SQLite"),
        Database::Postgres(url) => Store::open_postgres(url, EventMapping::default()).await.expect("PostgreSQL"),
    }
}

/// Starts a host on its own two-thread runtime, as a separate process would run it.
fn serve(database: Database) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let store = open(&database).await;
            let sources = [("bench-key".to_string(), rekindle_server::Source::server("bench"))].into_iter().collect();
            let registry = rekindle_tests::registry(&[("abandoned-cart", rekindle_tests::components::RULE_ABANDONED_CART)]);
            let state = AppState::new(registry, None, Some("admin".into())).with_ingestion(Ingestion { store: store.into(), sources });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("http://{}", listener.local_addr().unwrap())).unwrap();
            axum::serve(listener, app(state)).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// Batch `n` of the stream, as JSON text. Written by hand, not through `serde_json::Value`,
/// so the generator, on the same two cores, costs the server as little as it can.
fn batch(n: usize, now: &str) -> String {
    let mut body = String::with_capacity(PER_BATCH * 220);
    body.push_str(r#"{"batch":["#);
    for i in 0..PER_BATCH {
        let k = n * PER_BATCH + i;
        if i > 0 {
            body.push(',');
        }
        // Newcomers arrive at one per NEWCOMER_EVERY events; everyone else is someone seen
        // before, spread over the whole population so far.
        let known = CUSTOMERS + k / NEWCOMER_EVERY;
        if k.is_multiple_of(NEWCOMER_EVERY) {
            body.push_str(&format!(
                r#"{{"type":"identify","messageId":"s-{k}","userId":"user-{known}","anonymousId":"anon-{known}","traits":{{"first_name":"Ann {known}","email":"ann{known}@example.com"}},"timestamp":"{now}"}}"#
            ));
            continue;
        }
        let user = (k.wrapping_mul(2_654_435_761) >> 7) % known;
        let (event, properties) = match k % 10 {
            0 | 1 => (
                "Order Completed",
                format!(r#"{{"revenue":{},"products":[{{"product_id":"p{}","category":"shoes"}},{{"product_id":"p{}"}}]}}"#, 20 + k % 50, k % 97, k % 89),
            ),
            2..=4 => ("Product Added", format!(r#"{{"product_id":"p{}","price":25}}"#, k % 97)),
            _ => ("Page Viewed", format!(r#"{{"url":"https://shop.example/p/{}"}}"#, k % 500)),
        };
        body.push_str(&format!(
            r#"{{"type":"track","messageId":"s-{k}","userId":"user-{user}","event":"{event}","properties":{properties},"timestamp":"{now}"}}"#
        ));
    }
    body.push_str("]}");
    body
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// What one run measured.
struct Report {
    events: usize,
    elapsed: Duration,
    windows: Vec<f64>,
    latencies: Vec<Duration>,
    probes: Vec<Duration>,
}

async fn load(hosts: &[String], seconds: u64, rate: Option<u64>, realtime: bool) -> Report {
    let http = reqwest::Client::new();
    if realtime {
        let segment = json!({"name": "carts", "slot": "abandoned-cart", "params": {"wait_minutes": 0}, "schedule": "realtime"});
        let response = http.post(format!("{}/v1/segments", hosts[0])).bearer_auth("admin").json(&segment).send().await.unwrap();
        assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    }
    let now = chrono::Utc::now().to_rfc3339();
    // The shop's existing customers, so the load meets a population of realistic size.
    for first in (0..CUSTOMERS).step_by(500) {
        let identifies: Vec<String> = (first..first + 500)
            .map(|u| format!(r#"{{"type":"identify","messageId":"c-{u}","userId":"user-{u}","anonymousId":"anon-{u}","traits":{{"email":"c{u}@example.com"}},"timestamp":"{now}"}}"#))
            .collect();
        let body = format!(r#"{{"batch":[{}]}}"#, identifies.join(","));
        let response = http
            .post(format!("{}/v1/batch", hosts[0]))
            .basic_auth("bench-key", Some(""))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let next_batch = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let url = format!("{}/v1/batch", hosts[c % hosts.len()]);
        let (http, stop, next_batch, acknowledged, now) = (http.clone(), stop.clone(), next_batch.clone(), acknowledged.clone(), now.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            // Each client's share of the offered rate, as one batch per tick.
            let mut ticks = rate.map(|rate| tokio::time::interval(Duration::from_secs_f64((CLIENTS * PER_BATCH) as f64 / rate as f64)));
            while !stop.load(Ordering::Relaxed) {
                if let Some(ticks) = &mut ticks {
                    ticks.tick().await;
                }
                let body = batch(next_batch.fetch_add(1, Ordering::Relaxed), &now);
                let sent = Instant::now();
                let response = http.post(&url).basic_auth("bench-key", Some("")).header("content-type", "application/json").body(body).send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                latencies.push(sent.elapsed());
                acknowledged.fetch_add(PER_BATCH, Ordering::Relaxed);
            }
            latencies
        }));
    }
    let probe = realtime.then(|| {
        let (http, hosts, stop) = (http.clone(), hosts.to_vec(), stop.clone());
        tokio::spawn(async move { probe_realtime(&http, &hosts, &stop).await })
    });
    let started = Instant::now();
    let mut windows = Vec::new();
    let mut before = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(WINDOW).await;
        let total = acknowledged.load(Ordering::Relaxed);
        let rate = (total - before) as f64 / WINDOW.as_secs_f64();
        windows.push(rate);
        println!("    {:>4.0} s: {rate:>7.0} events/s ({total} in all)", started.elapsed().as_secs_f64());
        before = total;
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await.unwrap());
    }
    let elapsed = started.elapsed();
    let probes = match probe {
        Some(probe) => probe.await.unwrap(),
        None => Vec::new(),
    };
    latencies.sort();
    Report { events: acknowledged.load(Ordering::Relaxed), elapsed, windows, latencies, probes }
}

/// Every 1.5 s until `stop`, a new visitor's cart add, timed from its acknowledgement to
/// the first read (from any host) that lists the real-time membership.
async fn probe_realtime(http: &reqwest::Client, hosts: &[String], stop: &AtomicBool) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let mut p = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        p += 1;
        let user = format!("probe-{p}");
        let host = &hosts[p % hosts.len()];
        let event = json!({"userId": user, "messageId": format!("probe-{p}"), "event": "Product Added", "timestamp": chrono::Utc::now().to_rfc3339()});
        let response = http.post(format!("{host}/v1/track")).basic_auth("bench-key", Some("")).json(&event).send().await.unwrap();
        assert!(response.status().is_success());
        let acknowledged = Instant::now();
        loop {
            let profile: Value = http.get(format!("{host}/v1/profiles/{user}")).bearer_auth("admin").send().await.unwrap().json().await.unwrap();
            if profile["segments"].as_array().is_some_and(|s| s.iter().any(|m| m["segment"] == "carts")) {
                latencies.push(acknowledged.elapsed());
                break;
            }
            // A probe still waiting after two minutes is reported as that, not timed.
            if acknowledged.elapsed() > Duration::from_secs(120) {
                println!("    probe {p} not listed after 120 s");
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    latencies.sort();
    latencies
}

/// An empty database on the durable server.
fn fresh_database(admin_url: &str) -> String {
    let name = format!("rekindle_bench_{}", uuid::Uuid::new_v4().simple());
    let mut client = postgres::Client::connect(admin_url, postgres::NoTls).unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin_url}: {e}"));
    for setting in ["fsync", "synchronous_commit"] {
        let value: String = client.query_one(&format!("SHOW {setting}"), &[]).unwrap().get(0);
        assert_eq!(value, "on", "{admin_url} runs with {setting} = {value}; start a durable server: REKINDLE_PG_DURABLE=1 scripts/postgres");
    }
    client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
    format!("{base}/{name}")
}

fn stored_events(database: &Database) -> i64 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = runtime.block_on(open(database));
    let counts = runtime.block_on(store.table_counts()).unwrap();
    counts.into_iter().find(|(table, _)| table == "events").map_or(0, |(_, n)| n)
}

fn main() {
    let seconds: u64 = std::env::var("SECONDS").map_or(300, |s| s.parse().expect("SECONDS: a number"));
    let realtime = std::env::var("REALTIME").as_deref() == Ok("on");
    let rate: Option<u64> = std::env::var("RATE").ok().map(|r| r.parse().expect("RATE: events per second"));
    let postgres = std::env::var("REKINDLE_BENCH_POSTGRES").ok();
    let runs = std::env::var("RUNS").unwrap_or_else(|_| if postgres.is_some() { "sqlite,postgres,postgres3".into() } else { "sqlite".into() });
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for run in runs.split(',') {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (database, hosts) = match run {
            "sqlite" => (Database::Sqlite(dir.path().join("rekindle.db")), 1),
            "postgres" | "postgres3" => {
                let admin = postgres.as_deref().expect("REKINDLE_BENCH_POSTGRES: the durable server's URL (REKINDLE_PG_DURABLE=1 scripts/postgres)");
                (Database::Postgres(fresh_database(admin)), if run == "postgres3" { 3 } else { 1 })
            }
            other => panic!("RUNS: unknown run {other:?} (sqlite, postgres, postgres3)"),
        };
        let bases: Vec<String> = (0..hosts).map(|_| serve(database.clone())).collect();
        println!("{run}: {hosts} host(s), {seconds} s, {CLIENTS} clients, batches of {PER_BATCH}{}", if realtime { ", real-time cart segment" } else { "" });
        let report = client.block_on(load(&bases, seconds, rate, realtime));
        let stored = stored_events(&database);
        let size = match &database {
            Database::Sqlite(path) => std::fs::metadata(path).map_or(0, |m| m.len()) / 1_000_000,
            Database::Postgres(_) => 0,
        };
        // Newcomers' identifies store no event.
        let expected_events = report.events - report.events / NEWCOMER_EVERY;
        println!(
            "  {run}: {} events acknowledged in {:.0?} = {:.0} events/s sustained; 10 s windows: median {:.0}, lowest {:.0}; \
             batch p50 {:.1?} p99 {:.1?}; {stored} events stored (expected {expected_events}){}",
            report.events,
            report.elapsed,
            report.events as f64 / report.elapsed.as_secs_f64(),
            median(&mut report.windows.clone()),
            report.windows.iter().copied().fold(f64::INFINITY, f64::min),
            percentile(&report.latencies, 0.5),
            percentile(&report.latencies, 0.99),
            if size > 0 { format!("; database file {size} MB") } else { String::new() },
        );
        if !report.probes.is_empty() {
            println!(
                "  {run}: real-time membership after acknowledgement, {} probes: p50 {:.1?} p99 {:.1?} max {:.1?}",
                report.probes.len(),
                percentile(&report.probes, 0.5),
                percentile(&report.probes, 0.99),
                report.probes[report.probes.len() - 1]
            );
        }
        // The hosts' threads run on; the next run gets a database of its own.
    }
}
