//! Shared fixtures for the end-to-end tests and benchmarks: the built components and
//! realistic profiles.

use rekindle_runtime::wit::{Context, Event, Field, Profile, Value};

/// Paths of the components built from `plugins/` and `tests/hostile/`.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
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
        traits: vec![],
        events: vec![],
        consents: vec![],
        contacts: vec![],
        segments: vec![],
        aggregates: vec![],
        timezone: None,
    }
}

/// A profile with one `Order Completed` on each of `order_days`.
pub fn buyer(id: &str, order_days: &[i64]) -> Profile {
    let mut p = profile(id);
    p.events = order_days.iter().map(|d| order(d * DAY, 40.0)).collect();
    p
}

fn order(at: i64, revenue: f64) -> Event {
    Event {
        name: "Order Completed".into(),
        timestamp: at,
        properties: vec![
            Field { name: "revenue".into(), value: Value::Number(revenue) },
            Field { name: "order_id".into(), value: Value::Text(format!("o-{at}")) },
            Field {
                name: "products".into(),
                value: Value::Json(r#"[{"sku":"s-1","category":"shoes","price":40}]"#.into()),
            },
        ],
    }
}

/// The benchmark's realistic profile: 200 events of mixed kinds over two years, 20 of them
/// orders about 36 days apart, each with the properties a shop sends.
pub fn realistic_profile(now: i64) -> Profile {
    let mut p = profile("bench-customer");
    let start = now - 730 * DAY;
    let kinds = ["Page Viewed", "Product Viewed", "Product Added", "Checkout Started", "Email Opened"];
    for i in 0..180i64 {
        let at = start + i * 4 * DAY + (i % 7) * 3_600_000;
        p.events.push(Event {
            name: kinds[(i % 5) as usize].into(),
            timestamp: at,
            properties: vec![
                Field { name: "url".into(), value: Value::Text(format!("https://shop.example/p/{i}")) },
                Field { name: "product_id".into(), value: Value::Text(format!("sku-{}", i % 40)) },
            ],
        });
    }
    for i in 0..20i64 {
        p.events.push(order(start + i * 36 * DAY, 25.0 + i as f64));
    }
    p.events.sort_by_key(|e| e.timestamp);
    p.traits.push(Field { name: "first_name".into(), value: Value::Text("Ann".into()) });
    p
}
