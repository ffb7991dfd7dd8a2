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
    })
    .expect("engine")
}

/// One day in milliseconds.
pub const DAY: i64 = 86_400_000;

/// Reads a built component.
pub fn component(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// A context at `now` with the given parameters.
pub fn context(now: i64, params: &[(&str, Value)]) -> Context {
    Context {
        now,
        params: params.iter().map(|(n, v)| Field { name: (*n).into(), value: v.clone() }).collect(),
    }
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
    p
}

fn order(at: i64, revenue: f64) -> (Timestamp, Vec<Field>) {
    let fields = vec![
        Field { name: "revenue".into(), value: Value::Number(revenue) },
        Field { name: "order_id".into(), value: Value::Text(format!("o-{at}")) },
        Field {
            name: "products".into(),
            value: Value::Json(r#"[{"sku":"s-1","category":"shoes","price":40}]"#.into()),
        },
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
    p
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
                        .map(|c| rekindle_sdk::PropertyColumn {
                            name: c.name.clone(),
                            values: c.values.iter().map(sdk_value).collect(),
                        })
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
