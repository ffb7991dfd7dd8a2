//! Real-time segment latency under ingestion load: eight clients send batches of 100 at
//! `RATE` events/s in all (default 20,000, issue 3's ingestion target; `RATE=max` sends as
//! fast as the server acknowledges, the ingestion benchmark's saturating load) while a probe sends one
//! `Product Added` at a time for a new visitor and polls the profile until the real-time
//! abandoned-cart segment (`wait_minutes` 0) lists it. Latency runs from the probe's
//! acknowledgement to the first read that shows the membership.
//!
//! With `REALTIME=off` the cart segment is daily and no probe runs: the same load for 10 s,
//! to compare how much ingestion the real-time path costs.
//!
//! `cargo bench -p rekindle-tests --bench realtime`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rekindle_server::{AppState, Ingestion, app};
use rekindle_tests::Backend;
use serde_json::{Value, json};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USERS: usize = 2_000;
const PER_BATCH: usize = 100;
const CLIENTS: usize = 8;
const PROBES: usize = 200;
/// Distinct batches; past the last the load repeats them, and repeats are deduplicated.
const BODIES: usize = 6_000;

/// Starts the server on its own two-thread runtime, as a separate process would run it.
fn serve(dir: &std::path::Path) -> String {
    let dir = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let store = rekindle_tests::open_store(Backend::Sqlite, &dir).await.unwrap();
            let sources = [("bench-key".to_string(), rekindle_server::Source::server("bench"))].into_iter().collect();
            let registry = rekindle_tests::registry(&[
                ("abandoned-cart", rekindle_tests::components::RULE_ABANDONED_CART),
                ("lapsing-repeat-buyer", rekindle_tests::components::RULE_LAPSING_REPEAT_BUYER),
                ("engaged-not-purchased", rekindle_tests::components::RULE_ENGAGED_NOT_PURCHASED),
            ]);
            let state = AppState::new(registry, None, Some("admin".into())).with_ingestion(Ingestion { store: store.into(), sources });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("http://{}", listener.local_addr().unwrap())).unwrap();
            axum::serve(listener, app(state)).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn batch(n: usize, now: &str) -> String {
    let events: Vec<Value> = (0..PER_BATCH)
        .map(|i| {
            let k = n * PER_BATCH + i;
            let (event, properties) = match k % 10 {
                0 | 1 => ("Order Completed", json!({"revenue": 20 + k % 50, "products": [{"sku": format!("s{}", k % 97), "category": "shoes"}]})),
                2..=4 => ("Product Added", json!({"sku": format!("s{}", k % 97), "price": 25})),
                _ => ("Page Viewed", json!({"url": format!("https://shop.example/p/{}", k % 500)})),
            };
            json!({"type": "track", "messageId": format!("load-{k}"), "userId": format!("user-{}", k % USERS),
                   "event": event, "properties": properties, "timestamp": now})
        })
        .collect();
    json!({ "batch": events }).to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn run(base: &str, rate: Option<u64>, realtime: bool) {
    let http = reqwest::Client::new();
    for (name, slot, params, schedule) in [
        ("carts", "abandoned-cart", json!({"wait_minutes": 0}), if realtime { "realtime" } else { "daily" }),
        ("lapsing", "lapsing-repeat-buyer", json!({}), "daily"),
        ("engaged", "engaged-not-purchased", json!({}), "daily"),
    ] {
        let response = http
            .post(format!("{base}/v1/segments"))
            .bearer_auth("admin")
            .json(&json!({"name": name, "slot": slot, "params": params, "schedule": schedule}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    }
    // Bodies are made up front, so the load generator's own work stays off the two cores
    // the server is measured on.
    let now = chrono::Utc::now().to_rfc3339();
    let bodies: Arc<Vec<String>> = Arc::new((0..BODIES).map(|n| batch(n, &now)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for c in 0..CLIENTS {
        let (http, url, stop, sent, bodies) = (http.clone(), format!("{base}/v1/batch"), stop.clone(), sent.clone(), bodies.clone());
        load.push(tokio::spawn(async move {
            let mut n = c;
            // Each client's share of the rate, as one batch per tick.
            let mut ticks = rate.map(|rate| {
                let mut t = tokio::time::interval(Duration::from_secs_f64((CLIENTS * PER_BATCH) as f64 / rate as f64));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while !stop.load(Ordering::Relaxed) {
                if let Some(ticks) = &mut ticks {
                    ticks.tick().await;
                }
                let response = http
                    .post(&url)
                    .basic_auth("bench-key", Some(""))
                    .header("content-type", "application/json")
                    .body(bodies[n % BODIES].clone())
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                sent.fetch_add(PER_BATCH, Ordering::Relaxed);
                n += CLIENTS;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (load_started, sent_before) = (Instant::now(), sent.load(Ordering::Relaxed));
    let mut latencies = Vec::with_capacity(PROBES);
    if !realtime {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let load_rate = (sent.load(Ordering::Relaxed) - sent_before) as f64 / load_started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        println!("no real-time segment: {load_rate:.0} events/s of ingestion");
        return;
    }
    for p in 0..PROBES {
        let user = format!("probe-{p}");
        let response = http
            .post(format!("{base}/v1/track"))
            .basic_auth("bench-key", Some(""))
            .json(&json!({"userId": user, "messageId": format!("probe-{p}"), "event": "Product Added",
                          "timestamp": chrono::Utc::now().to_rfc3339()}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let acknowledged = Instant::now();
        loop {
            let profile: Value = http.get(format!("{base}/v1/profiles/{user}")).bearer_auth("admin").send().await.unwrap().json().await.unwrap();
            if profile["segments"].as_array().is_some_and(|s| s.iter().any(|m| m["segment"] == "carts")) {
                latencies.push(acknowledged.elapsed());
                break;
            }
            assert!(acknowledged.elapsed() < Duration::from_secs(30), "probe {p} never entered: {profile}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load_rate = (sent.load(Ordering::Relaxed) - sent_before) as f64 / load_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    latencies.sort();
    println!(
        "real-time segment visible after acknowledgement, {PROBES} probes under {load_rate:.0} events/s of ingestion: \
         p50 {:.1?} p99 {:.1?} max {:.1?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
}

fn main() {
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = serve(dir.path());
    let rate = match std::env::var("RATE").as_deref() {
        Ok("max") => None,
        Ok(n) => Some(n.parse().expect("RATE: events per second, or max")),
        Err(_) => Some(20_000),
    };
    let realtime = std::env::var("REALTIME").as_deref() != Ok("off");
    client.block_on(run(&base, rate, realtime));
}
