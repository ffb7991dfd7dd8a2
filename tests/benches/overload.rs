//! A hostile tile plugin under sustained anonymous load must not take the host with it.
//! Every slot of a page is decided by `hostile-tiles` in `loop` mode, which burns its whole
//! 10 ms deadline on every call; `CLIENTS` anonymous visitors ask for ten such slots at a
//! time, without pause. Meanwhile one probe times `GET /health` and another times
//! ingestion (`POST /v1/batch` of ten events), each one request at a time. The same probes
//! run with no load, for the unloaded figures, before or after the loaded phase in turn.
//!
//! The visitors run on threads of their own at the lowest scheduling priority: on this
//! two-core machine they share the cores with the host, and an attacker's CPU is not the
//! host's. The probes run at normal priority, as a real client's requests arrive.
//!
//! `cargo bench -p rekindle-tests --bench overload` (`SECONDS` per phase, default 10)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rekindle_runtime::{Registry, Runtime, RuntimeConfig};
use rekindle_server::{AppState, Ingestion, app};
use rekindle_tests::Backend;
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: usize = 32;
const SLOTS: usize = 10;

/// Starts the host on its own two-thread runtime, as `rekindle serve` runs it, with the
/// production deadlines (a tile call may take 10 ms).
fn serve(dir: &std::path::Path) -> String {
    let dir = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let store = rekindle_tests::open_store(Backend::Sqlite, &dir).await.unwrap();
            let sources = [("bench-key".to_string(), rekindle_server::Source::server("bench"))].into_iter().collect();
            let registry = Arc::new(Registry::new(
                Runtime::new(RuntimeConfig {
                    plugin_threads: std::env::var("PLUGIN_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(0),
                    ..RuntimeConfig::default()
                })
                .unwrap(),
            ));
            registry.install("hostile-tiles", &rekindle_tests::component(rekindle_tests::components::HOSTILE_TILES)).unwrap();
            let state = AppState::new(registry, None, Some("bench-admin-token-0123".into())).with_ingestion(Ingestion { store: store.into(), sources });
            for i in 0..SLOTS {
                let slot = json!({"name": format!("burn-{i}"), "plugin": "hostile-tiles", "params": {"mode": "loop"},
                                  "fallback": [{"title": "Sale", "link": "/sale"}]});
                rekindle_server::define_page_slot(&state, &slot).await.unwrap();
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("http://{}", listener.local_addr().unwrap())).unwrap();
            axum::serve(listener, app(state)).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Sends `request` one at a time for `seconds`; returns the sorted latencies.
async fn probe(seconds: u64, request: impl Fn(usize) -> reqwest::RequestBuilder) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        let started = Instant::now();
        let response = request(latencies.len()).send().await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.bytes().await.unwrap();
        latencies.push(started.elapsed());
        // A probe, not a load: a request every few milliseconds.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    latencies.sort();
    latencies
}

async fn phase(base: &str, seconds: u64, load: Option<&tokio::runtime::Handle>, round: usize) -> (Vec<Duration>, Vec<Duration>, usize, usize) {
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (answers, fallbacks) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut visitors = Vec::new();
    if let Some(visitor_threads) = load {
        let slots: Vec<String> = (0..SLOTS).map(|i| format!("burn-{i}")).collect();
        for _ in 0..CLIENTS {
            let (base, stop, answers, fallbacks) = (base.to_string(), stop.clone(), answers.clone(), fallbacks.clone());
            let body = json!({"slots": slots, "anonymousId": "someone"}).to_string();
            visitors.push(visitor_threads.spawn(async move {
                let http = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(response) = http.post(format!("{base}/v1/tiles")).body(body.clone()).send().await else { continue };
                    let answer: serde_json::Value = response.json().await.unwrap_or_default();
                    answers.fetch_add(1, Ordering::Relaxed);
                    let all = answer["decisions"].as_array().map_or(0, |d| d.iter().filter(|d| d["fallback"] == true).count());
                    fallbacks.fetch_add(all, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let health = probe(seconds, |_| http.get(format!("{base}/health")));
    let ingest = probe(seconds, |n| {
        let events: Vec<_> = (0..10)
            .map(|i| {
                json!({"type": "track", "messageId": format!("r{round}-{}-{n}-{i}", load.is_some()), "userId": format!("u{}", (n * 10 + i) % 500),
                            "event": "Page Viewed", "properties": {"url": "https://shop.example/"}})
            })
            .collect();
        http.post(format!("{base}/v1/batch")).basic_auth("bench-key", Some("")).json(&json!({"batch": events}))
    });
    let (health, ingest) = tokio::join!(health, ingest);
    stop.store(true, Ordering::Relaxed);
    for visitor in visitors {
        let _ = visitor.await;
    }
    (health, ingest, answers.load(Ordering::Relaxed), fallbacks.load(Ordering::Relaxed))
}

fn main() {
    let seconds: u64 = std::env::var("SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let base = serve(dir.path());
    // The probes have a runtime of their own, beside the host's; the visitors another, at
    // the lowest priority.
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let visitors = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| {
            // SAFETY: setpriority on the calling thread; no memory is touched.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t, 19) };
        })
        .enable_all()
        .build()
        .unwrap();
    let visitor_threads = visitors.handle().clone();
    client.block_on(async {
        let rounds = 3;
        let mut ratios = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // The database grows as the probes ingest, so the order alternates: neither
            // phase always meets the larger database.
            let ((health, ingest, _, _), (health_loaded, ingest_loaded, answers, fallbacks)) = if round % 2 == 0 {
                let idle = phase(&base, seconds, None, round).await;
                (idle, phase(&base, seconds, Some(&visitor_threads), round).await)
            } else {
                let loaded = phase(&base, seconds, Some(&visitor_threads), round).await;
                (phase(&base, seconds, None, round).await, loaded)
            };
            let row = |name: &str, idle: &[Duration], loaded: &[Duration]| {
                println!(
                    "  {name:<10} unloaded p50 {} p99 {}  |  loaded p50 {} p99 {}  |  p99 ratio {:.2}",
                    ms(percentile(idle, 0.5)),
                    ms(percentile(idle, 0.99)),
                    ms(percentile(loaded, 0.5)),
                    ms(percentile(loaded, 0.99)),
                    percentile(loaded, 0.99).as_secs_f64() / percentile(idle, 0.99).as_secs_f64()
                );
            };
            println!("round {}: {answers} tile answers in {seconds} s ({:.0}/s), {fallbacks} slot fallbacks", round + 1, answers as f64 / seconds as f64);
            row("/health", &health, &health_loaded);
            row("ingestion", &ingest, &ingest_loaded);
            ratios.0.push(percentile(&health_loaded, 0.99).as_secs_f64() / percentile(&health, 0.99).as_secs_f64());
            ratios.1.push(percentile(&ingest_loaded, 0.99).as_secs_f64() / percentile(&ingest, 0.99).as_secs_f64());
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!("median p99 ratio, loaded/unloaded: /health {:.2}, ingestion {:.2}", median(&mut ratios.0), median(&mut ratios.1));
    });
}
