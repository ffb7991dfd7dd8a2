//! Ingestion throughput through `/v1/batch` and `GET /v1/profiles/{id}` latency under a
//! fixed request rate, over loopback HTTP against the real server and store: SQLite, and
//! PostgreSQL beside it when `REKINDLE_TEST_POSTGRES` names a server (scripts/postgres).
//!
//! `cargo bench -p rekindle-tests --bench ingest`

use std::sync::Arc;
use std::time::{Duration, Instant};

use rekindle_runtime::Registry;
use rekindle_server::{AppState, Ingestion, app};
use rekindle_tests::Backend;
use serde_json::{Value, json};

// The same allocator as the `rekindle` binary: the server is what is being measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USERS: usize = 2_000;
const BATCHES: usize = 400;
const PER_BATCH: usize = 100;
const CLIENTS: usize = 8;
const RATE: u64 = 5_000;
const RATE_SECONDS: u64 = 10;

/// Starts the server on its own two-thread runtime, as a separate process would run it.
fn serve(backend: Backend, dir: &std::path::Path) -> Option<String> {
    let dir = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let Some(store) = rekindle_tests::open_store(backend, &dir).await else {
                tx.send(None).unwrap();
                return;
            };
            let sources = [("bench-key".to_string(), rekindle_server::Source::server("bench"))].into_iter().collect();
            let registry = Arc::new(Registry::new(rekindle_tests::patient_runtime()));
            let state = AppState::new(registry, None, Some("admin".into())).with_ingestion(Ingestion { store: store.into(), sources });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(Some(format!("http://{}", listener.local_addr().unwrap()))).unwrap();
            axum::serve(listener, app(state)).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn batch(n: usize) -> Value {
    let events: Vec<Value> = (0..PER_BATCH)
        .map(|i| {
            let k = n * PER_BATCH + i;
            let user = format!("user-{}", k % USERS);
            let category = ["shoes", "tops", "pants"][k % 3];
            let (event, properties) = match k % 10 {
                0 | 1 => ("Order Completed", json!({"revenue": 20 + k % 50, "products": [{"sku": format!("s{}", k % 97), "category": category}]})),
                2..=4 => ("Product Added", json!({"sku": format!("s{}", k % 97), "price": 25})),
                _ => ("Page Viewed", json!({"url": format!("https://shop.example/p/{}", k % 500)})),
            };
            json!({"type": "track", "messageId": format!("bench-{k}"), "userId": user, "anonymousId": format!("anon-{}", k % USERS),
                   "event": event, "properties": properties, "timestamp": "2026-11-01T10:00:00Z"})
        })
        .collect();
    json!({ "batch": events, "sentAt": "2026-11-01T10:00:00Z" })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn ingest(base: &str) {
    let bodies: Vec<String> = (0..BATCHES).map(|n| batch(n).to_string()).collect();
    let bodies = Arc::new(bodies);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (http, bodies, url) = (http.clone(), bodies.clone(), format!("{base}/v1/batch"));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for body in bodies.iter().skip(c).step_by(CLIENTS) {
                let sent = Instant::now();
                let response =
                    http.post(&url).basic_auth("bench-key", Some("")).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "  ingest: {} events in {:.2?} = {:.0} events/s durably acknowledged; batch of {PER_BATCH} p50 {:.1?} p99 {:.1?} ({CLIENTS} clients)",
        BATCHES * PER_BATCH,
        elapsed,
        (BATCHES * PER_BATCH) as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
}

/// An open-loop load at RATE requests/s over CONNECTIONS keep-alive connections. Latency
/// counts from when each request was due (less the timer's 1 ms tick), so a server that
/// falls behind cannot hide its queue (no coordinated omission).
async fn profiles(base: &str) {
    const CONNECTIONS: u64 = 32;
    let http = reqwest::Client::builder().pool_max_idle_per_host(CONNECTIONS as usize).build().unwrap();
    let total = RATE * RATE_SECONDS;
    let interval = Duration::from_nanos(1_000_000_000 / RATE);
    let started = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut workers = Vec::new();
    for w in 0..CONNECTIONS {
        let (http, base) = (http.clone(), base.to_string());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in (w..total).step_by(CONNECTIONS as usize) {
                let due = started + interval * i as u32;
                tokio::time::sleep_until(due).await;
                // tokio's timer fires on 1 ms ticks, so a wake-up up to a tick late is the
                // timer's, not the server's; later than that, the worker was stuck behind a
                // slow response and the wait counts.
                let woke = tokio::time::Instant::now();
                let origin = if woke - due <= Duration::from_micros(1_100) { woke } else { due };
                let url = format!("{base}/v1/profiles/user-{}?events=10", i as usize % USERS);
                let response = http.get(&url).bearer_auth("admin").send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
                latencies.push(origin.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(total as usize);
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    let achieved = total as f64 / (tokio::time::Instant::now() - started).as_secs_f64();
    latencies.sort();
    println!(
        "  GET /v1/profiles/{{id}} at {RATE}/s for {RATE_SECONDS}s (achieved {achieved:.0}/s): p50 {:.2?} p99 {:.2?} p99.9 {:.2?} max {:.2?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies[latencies.len() - 1]
    );
}

fn main() {
    // `cargo bench` passes flags such as --bench; this harness takes none.
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let Some(base) = serve(backend, dir.path()) else {
            println!("{backend:?}: skipped (set REKINDLE_TEST_POSTGRES, see scripts/postgres)");
            continue;
        };
        println!("{backend:?}:");
        client.block_on(ingest(&base));
        client.block_on(profiles(&base));
    }
}
