//! Shared fixtures for the end-to-end tests and benchmarks: the built components and
//! realistic profiles.

use rekindle_runtime::json::series_from;
use rekindle_runtime::wit::{Context, Field, Profile, Timestamp, Value};

/// Paths of the components built from `plugins/` and `tests/hostile/`.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

/// A runtime whose deadlines are generous, for tests that check anything but time: a test
/// thread descheduled for a few milliseconds on a busy machine must not fail a healthy call.
pub fn patient_runtime() -> rekindle_runtime::Runtime {
    rekindle_runtime::Runtime::new(rekindle_runtime::RuntimeConfig {
        limits: rekindle_runtime::KindLimits::default().with_deadline(std::time::Duration::from_secs(5)),
        max_instances: 100,
        cache_dir: None,
        plugin_threads: 0,
    })
    .expect("engine")
}

/// The databases the store runs on; every store test runs on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Opens an empty store on `backend`: an SQLite file under `dir`, or a fresh database on
/// the PostgreSQL server named by `REKINDLE_TEST_POSTGRES` (which `scripts/test` starts).
///
/// Returns `None` only outside CI when no PostgreSQL server is configured; in CI a missing
/// server fails the test, as the project promises.
pub async fn open_store(backend: Backend, dir: &std::path::Path) -> Option<rekindle_store::Store> {
    use rekindle_store::{EventMapping, Store};
    match backend {
        Backend::Sqlite => Some(Store::open_sqlite(&dir.join("rekindle.db"), EventMapping::default()).expect("SQLite")),
        Backend::Postgres => {
            let url = fresh_postgres_database().await?;
            Some(Store::open_postgres(&url, EventMapping::default()).await.expect("PostgreSQL store"))
        }
    }
}

/// Creates an empty database on the test PostgreSQL server and returns its URL; see
/// [`open_store`] for when it returns `None`.
pub async fn fresh_postgres_database() -> Option<String> {
    let Ok(admin_url) = std::env::var("REKINDLE_TEST_POSTGRES") else {
        assert!(std::env::var_os("CI").is_none(), "REKINDLE_TEST_POSTGRES is not set: PostgreSQL tests must run in CI (scripts/test starts a server)");
        eprintln!("skipping the PostgreSQL run: set REKINDLE_TEST_POSTGRES or use scripts/test");
        return None;
    };
    let name = format!("rekindle_test_{}", uuid::Uuid::new_v4().simple());
    let create = format!("CREATE DATABASE {name}");
    let url = admin_url.clone();
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}"));
        client.batch_execute(&create).expect("creating the test database");
        // Closed here, off the async threads: the blocking client may not close on them.
        drop(client);
    })
    .await
    .expect("create task");
    let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base);
    Some(format!("{base}/{name}"))
}

/// Runs an async test body once per backend, as `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! on_each_backend {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Backend::Sqlite).await })+
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Backend::Postgres).await })+
        }
    };
}

/// One day in milliseconds.
pub const DAY: i64 = 86_400_000;

/// Reads a built component.
pub fn component(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// A context at `now` with the given parameters.
pub fn context(now: i64, params: &[(&str, Value)]) -> Context {
    Context { now, params: params.iter().map(|(n, v)| Field { name: (*n).into(), value: v.clone() }).collect() }
}

/// An empty profile with the given id.
pub fn profile(id: &str) -> Profile {
    Profile {
        id: id.into(),
        traits: Some(vec![]),
        events: vec![],
        consents: Some(vec![]),
        contacts: Some(vec![]),
        segments: Some(vec![]),
        aggregates: Some(vec![]),
        timezone: None,
    }
}

/// A profile with one `Order Completed` on each of `order_days`.
pub fn buyer(id: &str, order_days: &[i64]) -> Profile {
    let mut p = profile(id);
    p.events.push(series_from("Order Completed".into(), order_days.iter().map(|d| order(d * DAY, 40.0)).collect()));
    with_order_aggregates(p)
}

/// `p` with the order aggregates the host would compute from its `Order Completed` events
/// (count, first and last order), as rules that read aggregates receive them.
pub fn with_order_aggregates(mut p: Profile) -> Profile {
    let times: Vec<Timestamp> = p.events.iter().filter(|s| s.name == "Order Completed").flat_map(|s| s.timestamps.iter().copied()).collect();
    let aggregates = p.aggregates.get_or_insert_default();
    aggregates.retain(|f| !["order_count", "first_order_at", "last_order_at"].contains(&f.name.as_str()));
    aggregates.push(Field { name: "order_count".into(), value: Value::Integer(times.len() as i64) });
    if let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) {
        aggregates.push(Field { name: "first_order_at".into(), value: Value::Integer(*first) });
        aggregates.push(Field { name: "last_order_at".into(), value: Value::Integer(*last) });
    }
    p
}

fn order(at: i64, revenue: f64) -> (Timestamp, Vec<Field>) {
    let fields = vec![
        Field { name: "revenue".into(), value: Value::Number(revenue) },
        Field { name: "order_id".into(), value: Value::Text(format!("o-{at}")) },
        Field { name: "products".into(), value: Value::Json(r#"[{"sku":"s-1","category":"shoes","price":40}]"#.into()) },
    ];
    (at, fields)
}

/// The benchmark's realistic profile: 200 events of mixed kinds over two years, 20 of them
/// orders about 36 days apart, each with the properties a shop sends.
pub fn realistic_profile(now: i64) -> Profile {
    let mut p = profile("bench-customer");
    let start = now - 730 * DAY;
    let kinds = ["Page Viewed", "Product Viewed", "Product Added", "Checkout Started", "Email Opened"];
    for (k, kind) in kinds.iter().enumerate() {
        let occurrences = (0..36i64)
            .map(|j| {
                let i = j * 5 + k as i64;
                let fields = vec![
                    Field { name: "url".into(), value: Value::Text(format!("https://shop.example/p/{i}")) },
                    Field { name: "product_id".into(), value: Value::Text(format!("sku-{}", i % 40)) },
                ];
                (start + i * 4 * DAY + (i % 7) * 3_600_000, fields)
            })
            .collect();
        p.events.push(series_from((*kind).into(), occurrences));
    }
    let orders = (0..20i64).map(|i| order(start + i * 36 * DAY, 25.0 + i as f64)).collect();
    p.events.push(series_from("Order Completed".into(), orders));
    p.traits.get_or_insert_default().push(Field { name: "first_name".into(), value: Value::Text("Ann".into()) });
    with_order_aggregates(p)
}

/// Conversions that let benchmarks and tests call a plugin crate's logic natively, on the
/// same inputs the Wasm component receives.
pub mod native {
    /// The host's context as the guest SDK's type, for calling a plugin's logic natively.
    pub fn to_sdk_context(ctx: &rekindle_runtime::wit::Context) -> rekindle_sdk::Context {
        rekindle_sdk::Context { now: ctx.now, params: ctx.params.iter().map(sdk_field).collect() }
    }

    fn sdk_field(f: &rekindle_runtime::wit::Field) -> rekindle_sdk::Field {
        rekindle_sdk::Field { name: f.name.clone(), value: sdk_value(&f.value) }
    }

    fn sdk_value(value: &rekindle_runtime::wit::Value) -> rekindle_sdk::Value {
        use rekindle_runtime::wit::Value as H;
        use rekindle_sdk::Value as G;
        match value {
            H::Null => G::Null,
            H::Boolean(b) => G::Boolean(*b),
            H::Integer(i) => G::Integer(*i),
            H::Number(n) => G::Number(*n),
            H::Text(s) => G::Text(s.clone()),
            H::Json(s) => G::Json(s.clone()),
        }
    }

    /// The host's profile as the guest SDK's type, for calling a plugin's logic natively.
    pub fn to_sdk_profile(p: &rekindle_runtime::wit::Profile) -> rekindle_sdk::Profile {
        rekindle_sdk::Profile {
            id: p.id.clone(),
            traits: p.traits.as_ref().map(|t| t.iter().map(sdk_field).collect()),
            events: p
                .events
                .iter()
                .map(|s| rekindle_sdk::EventSeries {
                    name: s.name.clone(),
                    timestamps: s.timestamps.clone(),
                    properties: s
                        .properties
                        .iter()
                        .map(|c| rekindle_sdk::PropertyColumn { name: c.name.clone(), values: c.values.iter().map(sdk_value).collect() })
                        .collect(),
                })
                .collect(),
            consents: None,
            contacts: None,
            segments: None,
            aggregates: p.aggregates.as_ref().map(|a| a.iter().map(sdk_field).collect()),
            timezone: p.timezone.clone(),
        }
    }
}

/// A registry on the [`patient_runtime`] with each `(slot, component path)` installed.
pub fn registry(slots: &[(&str, &str)]) -> std::sync::Arc<rekindle_runtime::Registry> {
    let registry = std::sync::Arc::new(rekindle_runtime::Registry::new(patient_runtime()));
    for (slot, path) in slots {
        registry.install(slot, &component(path)).unwrap();
    }
    registry
}

/// Serves `router` on a free loopback port in the background; returns its base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// A stand-in provider (SendGrid, Twilio, Meta, ...): a real axum server on loopback that
/// records every request and answers from a script.
pub mod provider {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::IntoResponse;

    /// One request as the stand-in provider received it.
    #[derive(Debug, Clone)]
    pub struct Received {
        pub method: Method,
        pub path: String,
        pub headers: HeaderMap,
        pub body: Vec<u8>,
    }

    /// One scripted answer: status, headers, body.
    pub type Answer = (u16, Vec<(&'static str, &'static str)>, &'static str);

    /// A provider on loopback that records requests and answers each path from a script of
    /// answers, repeating the last once the script runs out.
    pub async fn provider(script: HashMap<&'static str, Vec<Answer>>) -> (String, Arc<Mutex<Vec<Received>>>) {
        let received = Arc::new(Mutex::new(Vec::<Received>::new()));
        let log = received.clone();
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (log, script) = (log.clone(), script.clone());
            async move {
                let path = uri.path().to_string();
                let seen = {
                    let mut log = log.lock().unwrap();
                    log.push(Received { method, path: path.clone(), headers, body: body.to_vec() });
                    log.iter().filter(|r| r.path == path).count()
                };
                // The longest matching suffix wins, so /down/v3/mail/send is not /v3/mail/send.
                let answers = script
                    .iter()
                    .filter(|(p, _)| path.ends_with(*p))
                    .max_by_key(|(p, _)| p.len())
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(|| vec![(404, vec![], "")]);
                let (status, headers, body) = answers[(seen - 1).min(answers.len() - 1)].clone();
                let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
                for (k, v) in headers {
                    response.headers_mut().insert(k, v.parse().unwrap());
                }
                response
            }
        };
        (super::serve(axum::Router::new().fallback(handler)).await, received)
    }
}
