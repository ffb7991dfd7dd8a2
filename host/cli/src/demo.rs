//! `rekindle demo generate`: a deterministic, realistic shop sent through the real
//! ingestion API, so the demo exercises exactly what a customer's site would.
//!
//! Customers differ in purchase cycle and behaviour: lapsing repeat buyers, loyal repeat
//! buyers, one-time buyers (some about to sleep), customers in the 45-to-90-day win-back
//! window, abandoned carts and browsers, with consents and contact points in realistic
//! proportions. The same seed and `--now` give the same messages, and message ids are
//! derived from them, so running it twice stores everything once.

use std::time::Duration;

use anyhow::{Context as _, bail};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

const DAY: i64 = 86_400_000;
const CATEGORIES: [&str; 5] = ["shoes", "tops", "pants", "accessories", "outerwear"];
const NAMES: [&str; 16] = ["Ann", "Bob", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Luca", "Maya", "Noah", "Olga", "Priya"];
const ZONES: [&str; 6] = ["Europe/Paris", "Europe/London", "America/New_York", "America/Los_Angeles", "Asia/Tokyo", "Australia/Sydney"];

/// Flags for `rekindle demo generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// How many customers.
    #[arg(long, default_value_t = 1000)]
    profiles: usize,
    /// The random seed; the same seed gives the same shop.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The host to send to.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The source's write key.
    #[arg(long, env = "REKINDLE_WRITE_KEY")]
    write_key: String,
    /// The admin token, to load the catalog.
    #[arg(long, env = "REKINDLE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// "Today" for the generated history (RFC 3339); defaults to today at 00:00 UTC.
    #[arg(long)]
    now: Option<String>,
}

/// The catalog: ten products per category.
pub fn catalog() -> Vec<Value> {
    let mut products = Vec::new();
    for (c, category) in CATEGORIES.iter().enumerate() {
        for n in 0..10 {
            let price = 15.0 + (c * 10 + n * 7) as f64;
            products.push(json!({
                "id": format!("{category}-{n}"), "name": format!("{} {n}", capitalise(category)), "category": category,
                "price": price, "url": format!("https://shop.example/p/{category}-{n}"),
                "image": format!("https://shop.example/img/{category}-{n}.jpg"), "in_stock": n % 9 != 8,
            }));
        }
    }
    products
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or_default()
}

/// One customer's messages, oldest first.
struct Customer<'a> {
    rng: &'a mut ChaCha8Rng,
    seed: u64,
    index: usize,
    messages: Vec<Value>,
    favourite: usize,
}

impl Customer<'_> {
    fn push(&mut self, mut message: Value, at: i64) {
        let n = self.messages.len();
        message["messageId"] = json!(format!("demo-{}-{}-{n}", self.seed, self.index));
        message["userId"] = json!(format!("user-{}", self.index));
        message["anonymousId"] = json!(format!("anon-{}", self.index));
        message["timestamp"] = json!(iso(at));
        self.messages.push(message);
    }

    fn product(&mut self) -> (String, &'static str, f64) {
        let category = if self.rng.random_bool(0.7) { self.favourite } else { self.rng.random_range(0..CATEGORIES.len()) };
        let n = self.rng.random_range(0..10);
        (format!("{}-{n}", CATEGORIES[category]), CATEGORIES[category], 15.0 + (category * 10 + n * 7) as f64)
    }

    fn browse(&mut self, at: i64) {
        let (id, category, _) = self.product();
        self.push(json!({"type": "page", "name": "Product", "properties": {"url": format!("https://shop.example/p/{id}"), "category": category}}), at);
    }

    fn cart(&mut self, at: i64) -> (String, &'static str, f64) {
        let item = self.product();
        self.push(json!({"type": "track", "event": "Product Added", "properties": {"product_id": item.0, "category": item.1, "price": item.2}}), at);
        item
    }

    fn order(&mut self, at: i64) {
        let (id, category, price) = self.cart(at - 20 * 60_000);
        let quantity = self.rng.random_range(1..=2);
        self.push(json!({"type": "track", "event": "Checkout Started", "properties": {"value": price * quantity as f64}}), at - 5 * 60_000);
        let revenue = (price * quantity as f64 * 100.0).round() / 100.0;
        self.push(
            json!({"type": "track", "event": "Order Completed", "properties": {
            "order_id": format!("order-{}-{}", self.index, self.messages.len()), "revenue": revenue, "currency": "USD",
            "products": [{"product_id": id, "category": category, "price": price, "quantity": quantity}]}}),
            at,
        );
    }
}

/// Every message of the demo shop, deterministic for `seed` and `now`.
#[cfg(test)]
fn messages(profiles: usize, seed: u64, now: i64) -> Vec<Value> {
    customers(profiles, seed, now).flatten().collect()
}

/// The demo shop one customer's messages at a time, so a million customers never sit in
/// memory at once.
pub fn customers(profiles: usize, seed: u64, now: i64) -> impl Iterator<Item = Vec<Value>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..profiles).map(move |index| {
        let favourite = rng.random_range(0..CATEGORIES.len());
        let mut c = Customer { rng: &mut rng, seed, index, messages: Vec::new(), favourite };
        let name = NAMES[index % NAMES.len()];
        let mut traits = json!({"first_name": name, "email": format!("{}.{index}@example.com", name.to_lowercase())});
        if c.rng.random_bool(0.6) {
            traits["phone"] = json!(format!("+1555{:07}", index));
        }
        let consent = json!({"email": c.rng.random_bool(0.8), "sms": c.rng.random_bool(0.45),
                             "push": c.rng.random_bool(0.35), "ads": c.rng.random_bool(0.6)});
        let mut context = json!({"timezone": ZONES[index % ZONES.len()], "consent": {"categoryPreferences": consent}});
        if consent["push"] == true && c.rng.random_bool(0.8) {
            context["device"] = json!({"token": format!("fcm-token-{index}"), "type": "android"});
        }
        let first_seen = now - c.rng.random_range(200..700) * DAY;
        c.push(json!({"type": "identify", "traits": traits, "context": context}), first_seen);
        let roll: f64 = c.rng.random();
        if roll < 0.35 {
            // Repeat buyers with a personal cycle; about half are now overdue (lapsing).
            let cycle = c.rng.random_range(20..90) * DAY;
            let orders = c.rng.random_range(2..10);
            let overdue = c.rng.random_range(-(cycle / 2)..(cycle * 3 / 2));
            let last = now - cycle - overdue.max(-(cycle - DAY));
            for k in (0..orders).rev() {
                let jitter = c.rng.random_range(-(DAY / 2)..(DAY / 2));
                let at = last - k * cycle + jitter;
                if at > first_seen {
                    c.browse(at - DAY);
                    c.order(at);
                }
            }
        } else if roll < 0.55 {
            // One-time buyers; those beyond 180 days are about to sleep.
            let at = now - c.rng.random_range(10..400) * DAY;
            c.browse(at - 2 * DAY);
            c.order(at.max(first_seen + DAY));
        } else if roll < 0.7 {
            // The win-back window: last order 45 to 90 days ago.
            let at = now - c.rng.random_range(45..=90) * DAY - c.rng.random_range(0..DAY);
            let earlier = at - c.rng.random_range(60..200) * DAY;
            c.order(earlier);
            c.order(at);
        } else if roll < 0.85 {
            // Abandoned carts: added in the last two days, never bought.
            let at = now - c.rng.random_range(40..2 * 24 * 60) * 60_000;
            c.browse(at - 10 * 60_000);
            c.cart(at);
            if c.rng.random_bool(0.5) {
                c.push(json!({"type": "track", "event": "Checkout Started", "properties": {}}), at + 3 * 60_000);
            }
        } else {
            // Browsers: recent page views, no orders.
            for _ in 0..c.rng.random_range(1..6) {
                let at = now - c.rng.random_range(0..14) * DAY - c.rng.random_range(0..DAY);
                c.browse(at);
            }
        }
        c.messages
    })
}

pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let now = match &args.now {
        Some(text) => chrono::DateTime::parse_from_rfc3339(text).with_context(|| format!("--now {text:?} is not RFC 3339"))?.timestamp_millis(),
        None => chrono::Utc::now().timestamp_millis() / DAY * DAY,
    };
    // A generous timeout: the first batches may wait on a cold disk.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let base = args.url.trim_end_matches('/').to_string();
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        if let Some(token) = &args.admin_token {
            let response = http.post(format!("{base}/v1/catalog/products")).bearer_auth(token).json(&catalog()).send().await?;
            if !response.status().is_success() {
                bail!("loading the catalog: {} {}", response.status(), response.text().await.unwrap_or_default());
            }
        }
        let progress = indicatif::ProgressBar::new(args.profiles as u64).with_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} customers, {per_sec}, {eta} left")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        if args.profiles < 20_000 {
            progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        // A few batches in flight keep both of the server's cores busy; one at a time
        // leaves it idle during every round trip.
        let mut in_flight = tokio::task::JoinSet::new();
        let (mut sent, mut batch, mut customers_in_batch) = (0usize, Vec::with_capacity(300), 0u64);
        let mut customers = customers(args.profiles, args.seed, now).peekable();
        while let Some(messages) = customers.next() {
            batch.extend(messages);
            customers_in_batch += 1;
            if batch.len() < 250 && customers.peek().is_some() {
                continue;
            }
            if in_flight.len() >= 4
                && let Some(result) = in_flight.join_next().await
            {
                result.context("a sender stopped")??;
            }
            sent += batch.len();
            let request = http.post(format!("{base}/v1/batch")).basic_auth(&args.write_key, Some("")).json(&json!({ "batch": batch }));
            batch = Vec::with_capacity(300);
            let (base, progress, done) = (base.clone(), progress.clone(), customers_in_batch);
            customers_in_batch = 0;
            in_flight.spawn(async move {
                let response = request.send().await.with_context(|| format!("sending to {base}"))?;
                if !response.status().is_success() {
                    bail!("{base} refused a batch: {} {}", response.status(), response.text().await.unwrap_or_default());
                }
                progress.inc(done);
                Ok(())
            });
        }
        while let Some(result) = in_flight.join_next().await {
            result.context("a sender stopped")??;
        }
        progress.finish_and_clear();
        println!("sent {sent} messages for {} customers (seed {}, now {})", args.profiles, args.seed, iso(now));
        // Segments on a daily or weekly schedule would wait for their next run to see the
        // shop; run every segment now so the demo starts with its audiences.
        if let Some(token) = &args.admin_token {
            let response = http.post(format!("{base}/v1/segments/run")).bearer_auth(token).send().await?;
            if response.status().is_success() {
                let answer: serde_json::Value = response.json().await?;
                for segment in answer["segments"].as_array().into_iter().flatten() {
                    println!("segment {:?}: {} members", segment["segment"].as_str().unwrap_or(""), segment["members"]);
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_shop() {
        let now = 1_800_000_000_000;
        assert_eq!(messages(50, 3, now), messages(50, 3, now));
        assert_ne!(messages(50, 3, now), messages(50, 4, now));
        let orders = messages(200, 1, now).iter().filter(|m| m["event"] == "Order Completed").count();
        assert!(orders > 100, "{orders} orders");
        assert_eq!(catalog().len(), 50);
    }
}
