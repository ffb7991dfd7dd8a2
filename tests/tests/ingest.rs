//! Segment-compatible ingestion and unified profiles, over a real socket on the real SQLite
//! store: auth, limits, gzip, deduplication, clock skew, identity stitching, last-write-wins
//! traits, computed traits, consents, erasure and the catalog.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rekindle_server::{AppState, Clock, Ingestion, app};
use rekindle_store::{EventMapping, Store};
use rekindle_tests::Backend;

rekindle_tests::on_each_backend!(
    tracks_identifies_and_builds_the_profile,
    merging_an_anonymous_profile_that_already_has_history,
    traits_are_last_write_wins_by_event_time_and_clock_skew_is_corrected,
    retries_never_double_count_and_bad_batches_write_nothing,
    write_keys_gzip_and_size_limits,
    consents_erasure_and_catalog,
    rules_evaluate_stored_profiles,
    segments_backfill_and_follow_events_in_real_time,
    scheduled_runs_catch_changes_that_come_with_time_alone,
    rfm_cutoffs_come_from_the_population,
    a_rule_failing_mid_batch_costs_only_its_own_verdicts,
    a_rule_whose_place_and_evaluate_disagree_gets_no_member,
    redefining_a_segment_rebuilds_reasons_that_no_membership_change_would,
);
use serde_json::{Value, json};

const ADMIN: &str = "admin-token";
const WRITE_KEY: &str = "web-write-key";

struct Host {
    http: reqwest::Client,
    base: String,
}

async fn start(backend: Backend, data: &Path) -> Option<Host> {
    start_with(backend, data, Clock::default(), Duration::from_secs(60)).await
}

/// A host whose segment evaluation runs on `clock`, looking for due runs every `tick`.
async fn start_with(backend: Backend, data: &Path, clock: Clock, tick: Duration) -> Option<Host> {
    let registry = rekindle_tests::registry(&[
        ("lapsing", rekindle_tests::components::RULE_LAPSING_REPEAT_BUYER),
        ("win-back", rekindle_tests::components::RULE_WIN_BACK_WINDOW),
        ("abandoned-cart", rekindle_tests::components::RULE_ABANDONED_CART),
        ("rfm", rekindle_tests::components::RULE_RFM_WIN_BACK),
        ("flaky", rekindle_tests::components::HOSTILE_PANICS_SOMETIMES),
        ("two-faced", rekindle_tests::components::HOSTILE_TWO_FACED),
    ]);
    let store = rekindle_tests::open_store(backend, data).await?;
    let sources = [(WRITE_KEY.to_string(), rekindle_server::Source::server("web"))].into_iter().collect();
    let state = AppState::new(registry, None, Some(ADMIN.into())).with_ingestion(Ingestion { store: store.into(), sources }).with_clock(clock, tick);
    let base = rekindle_tests::serve(app(state)).await;
    Some(Host { http: reqwest::Client::new(), base })
}

impl Host {
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = tokio::time::timeout(Duration::from_secs(30), request.send()).await.expect("timed out").expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).basic_auth(WRITE_KEY, Some("")).json(&body)).await
    }

    async fn profile(&self, id: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}/v1/profiles/{id}", self.base)).bearer_auth(ADMIN)).await
    }
}

fn order(id: &str, user: &str, at: &str, revenue: f64, category: &str) -> Value {
    json!({"type": "track", "messageId": id, "userId": user, "event": "Order Completed", "timestamp": at,
           "properties": {"revenue": revenue, "products": [{"sku": "s", "category": category, "quantity": 1}]}})
}

async fn tracks_identifies_and_builds_the_profile(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    // Before login: an anonymous visitor browses and adds to cart.
    let (status, body) = host
        .post(
            "/v1/page",
            json!({"anonymousId": "anon-1", "name": "Shoes", "messageId": "m1",
        "timestamp": "2026-01-01T09:00:00Z"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"success": true})));
    host.post(
        "/v1/track",
        json!({"anonymousId": "anon-1", "event": "Product Added", "messageId": "m2",
        "timestamp": "2026-01-01T09:01:00Z", "properties": {"sku": "s-1"}}),
    )
    .await;
    // Login stitches the anonymous history onto the user.
    let (status, _) = host
        .post(
            "/v1/identify",
            json!({"userId": "ann", "anonymousId": "anon-1", "messageId": "m3",
        "timestamp": "2026-01-01T09:02:00Z",
        "traits": {"first_name": "Ann", "email": "Ann@Example.com", "phone": "+15551234567"},
        "context": {"timezone": "Europe/Paris", "consent": {"categoryPreferences": {"email": true, "sms": false}}}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = host
        .post(
            "/v1/batch",
            json!({"batch": [
                order("o1", "ann", "2026-01-10T10:00:00Z", 40.0, "shoes"),
                order("o2", "ann", "2026-03-11T10:00:00Z", 60.5, "tops"),
                order("o3", "ann", "2026-05-10T10:00:00Z", 20.0, "shoes"),
            ]}),
        )
        .await;
    assert_eq!(status, 200);

    let (status, p) = host.profile("ann").await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["user_ids"], json!(["ann"]));
    assert_eq!(p["anonymous_ids"], json!(["anon-1"]));
    assert_eq!(p["traits"]["first_name"], "Ann");
    assert_eq!(p["timezone"], "Europe/Paris");
    assert_eq!(p["computed"]["order_count"], 3);
    assert_eq!(p["computed"]["lifetime_value"], 120.5);
    assert_eq!(p["computed"]["avg_days_between_orders"], 60.0);
    assert_eq!(p["computed"]["favourite_category"], "shoes");
    assert_eq!(p["computed"]["last_order_at"], "2026-05-10T10:00:00.000Z");
    assert_eq!(p["consents"]["email"]["granted"], true);
    assert_eq!(p["consents"]["sms"]["granted"], false);
    let contacts = p["contacts"].as_array().unwrap();
    assert!(contacts.iter().any(|c| c["kind"] == "email" && c["address"] == "ann@example.com"), "{contacts:?}");
    assert!(contacts.iter().any(|c| c["kind"] == "phone"));
    let names: Vec<&str> = p["recent_events"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Order Completed", "Order Completed", "Order Completed", "Product Added", "Page Viewed"]);
    // The same person answers to every id.
    assert_eq!(host.profile("anon-1").await.1["id"], p["id"]);
    assert_eq!(host.profile(p["id"].as_str().unwrap()).await.1["id"], p["id"]);
}

async fn merging_an_anonymous_profile_that_already_has_history(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    host.post(
        "/v1/identify",
        json!({"userId": "bob", "messageId": "a", "timestamp": "2026-01-01T00:00:00Z",
        "traits": {"plan": "old"}}),
    )
    .await;
    host.post(
        "/v1/track",
        json!({"anonymousId": "phone-7", "messageId": "b", "event": "Order Completed",
        "timestamp": "2026-02-01T00:00:00Z", "properties": {"total": 15}}),
    )
    .await;
    host.post(
        "/v1/identify",
        json!({"anonymousId": "phone-7", "messageId": "c", "timestamp": "2026-02-02T00:00:00Z",
        "traits": {"plan": "new"}}),
    )
    .await;
    // Two profiles so far; logging in on the phone joins them.
    let (status, body) = host
        .post(
            "/v1/track",
            json!({"userId": "bob", "anonymousId": "phone-7", "messageId": "d",
        "event": "Order Completed", "timestamp": "2026-03-01T00:00:00Z", "properties": {"revenue": 5}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, p) = host.profile("bob").await;
    assert_eq!(p["anonymous_ids"], json!(["phone-7"]));
    assert_eq!(p["computed"]["order_count"], 2, "{p}");
    assert_eq!(p["computed"]["lifetime_value"], 20.0);
    assert_eq!(p["traits"]["plan"], "new", "the later trait wins");
    // An alias joins an old id too.
    host.post("/v1/track", json!({"userId": "bob-legacy", "messageId": "e", "event": "Page Viewed"})).await;
    let (status, _) = host.post("/v1/alias", json!({"userId": "bob", "previousId": "bob-legacy", "messageId": "f"})).await;
    assert_eq!(status, 200);
    let (_, p) = host.profile("bob-legacy").await;
    assert_eq!(p["user_ids"], json!(["bob", "bob-legacy"]));
}

async fn traits_are_last_write_wins_by_event_time_and_clock_skew_is_corrected(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    host.post("/v1/identify", json!({"userId": "cy", "messageId": "1", "timestamp": "2026-05-01T00:00:00Z", "traits": {"tier": "gold"}})).await;
    // Arrives later but happened earlier: it must not overwrite.
    host.post("/v1/identify", json!({"userId": "cy", "messageId": "2", "timestamp": "2026-04-01T00:00:00Z", "traits": {"tier": "silver"}})).await;
    assert_eq!(host.profile("cy").await.1["traits"]["tier"], "gold");

    // A device clock one year fast: the event is placed 2 s before the server received it.
    let before = chrono::Utc::now();
    host.post(
        "/v1/batch",
        json!({"sentAt": "2027-11-23T00:00:02Z", "batch": [
        {"type": "track", "userId": "cy", "messageId": "3", "event": "Skewed", "timestamp": "2027-11-23T00:00:00Z"}]}),
    )
    .await;
    let (_, p) = host.profile("cy").await;
    let at = chrono::DateTime::parse_from_rfc3339(p["recent_events"][0]["timestamp"].as_str().unwrap()).unwrap();
    let skew = (before - at.with_timezone(&chrono::Utc)).num_milliseconds();
    assert!((1_000..10_000).contains(&skew), "placed {skew} ms before receipt");
}

async fn retries_never_double_count_and_bad_batches_write_nothing(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    let batch = json!({"batch": [order("o1", "dee", "2026-01-01T00:00:00Z", 10.0, "tops"),
                                 order("o2", "dee", "2026-02-01T00:00:00Z", 10.0, "tops")]});
    for _ in 0..3 {
        assert_eq!(host.post("/v1/batch", batch.clone()).await.0, 200);
    }
    assert_eq!(host.profile("dee").await.1["computed"]["order_count"], 2);

    let (status, body) = host
        .post(
            "/v1/batch",
            json!({"batch": [
        order("o3", "eve", "2026-01-01T00:00:00Z", 10.0, "tops"),
        {"type": "track", "event": "Order Completed", "messageId": "o4"}]}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "batch[1].userId");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("batch[1]:"), "{body}");
    assert_eq!(host.profile("eve").await.0, 404, "a rejected batch writes nothing");

    let (status, body) = host
        .send(host.http.post(format!("{}/v1/track", host.base)).basic_auth(WRITE_KEY, Some("")).header("content-type", "application/json").body("{oops"))
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("malformed_json")));
}

async fn write_keys_gzip_and_size_limits(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    let msg = json!({"userId": "fay", "event": "Page Viewed", "messageId": "g1"});
    let (status, body) = host.send(host.http.post(format!("{}/v1/track", host.base)).basic_auth("nope", Some("")).json(&msg)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = host.send(host.http.post(format!("{}/v1/track", host.base)).json(&msg)).await;
    assert_eq!(status, 401);
    // The write key may also travel in the body, as some clients send it.
    let mut with_key = msg.clone();
    with_key["writeKey"] = json!(WRITE_KEY);
    with_key["messageId"] = json!("g0");
    assert_eq!(host.send(host.http.post(format!("{}/v1/track", host.base)).json(&with_key)).await.0, 200);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json!({"batch": [{"type": "track", "userId": "fay", "event": "Zipped", "messageId": "g2"}]}).to_string().as_bytes()).unwrap();
    let (status, _) = host
        .send(
            host.http
                .post(format!("{}/v1/batch", host.base))
                .basic_auth(WRITE_KEY, Some(""))
                .header("content-encoding", "gzip")
                .header("content-type", "application/json")
                .body(gz.finish().unwrap()),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(host.profile("fay").await.1["recent_events"][0]["name"], "Zipped");

    let big = json!({"userId": "fay", "event": "Big", "messageId": "g3", "properties": {"blob": "x".repeat(33 * 1024)}});
    let (status, body) = host.post("/v1/track", big.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_large")));
    let (status, body) = host.post("/v1/batch", json!({"batch": [big]})).await;
    assert_eq!(status, 413);
    assert!(body["error"]["message"].as_str().unwrap().starts_with("batch[0]"), "{body}");
    let many: Vec<Value> = (0..40)
        .map(|i| {
            json!({"type": "track", "userId": "fay", "event": "Bulk", "messageId": format!("b{i}"),
        "properties": {"blob": "y".repeat(15 * 1024)}})
        })
        .collect();
    assert_eq!(host.post("/v1/batch", json!({"batch": many})).await.0, 413);
}

async fn consents_erasure_and_catalog(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    host.post("/v1/identify", json!({"userId": "gus", "anonymousId": "a-gus", "messageId": "1", "traits": {"email": "g@x.io"}})).await;
    host.post("/v1/track", json!({"userId": "gus", "messageId": "2", "event": "Order Completed", "properties": {"revenue": 9}})).await;
    let consent = |body: Value| host.http.post(format!("{}/v1/profiles/gus/consents", host.base)).bearer_auth(ADMIN).json(&body);
    assert_eq!(host.send(consent(json!({"push": true, "ads": false}))).await.0, 200);
    let (status, body) = host.send(consent(json!({"fax": true}))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("fax")));
    assert_eq!(host.profile("gus").await.1["consents"]["push"]["granted"], true);
    // A push token arrives with an event, then the push provider reports it dead.
    host.post("/v1/identify", json!({"userId": "gus", "messageId": "3", "context": {"device": {"token": "tok-9"}}})).await;
    let revoke = host
        .http
        .post(format!("{}/v1/profiles/gus/contacts", host.base))
        .bearer_auth(ADMIN)
        .json(&json!({"kind": "push_token", "address": "tok-9", "active": false}));
    assert_eq!(host.send(revoke).await.0, 200);
    let contacts = host.profile("gus").await.1["contacts"].clone();
    assert!(contacts.as_array().unwrap().iter().any(|c| c["kind"] == "push_token" && c["active"] == false), "{contacts}");
    let bad =
        host.http.post(format!("{}/v1/profiles/gus/contacts", host.base)).bearer_auth(ADMIN).json(&json!({"kind": "fax", "address": "1", "active": true}));
    assert_eq!(host.send(bad).await.1["error"]["field"], "kind");
    assert_eq!(host.send(host.http.get(format!("{}/v1/profiles/gus", host.base))).await.0, 401, "profiles need the admin token");

    let (status, body) = host
        .send(
            host.http
                .post(format!("{}/v1/catalog/products", host.base))
                .bearer_auth(ADMIN)
                .json(&json!({"products": [{"id": "p1", "name": "Runner", "category": "shoes", "price": 80, "url": "/p1"},
                                   {"id": "p2", "name": "Tee", "category": "tops", "in_stock": false}]})),
        )
        .await;
    assert_eq!((status, body["upserted"].as_i64()), (200, Some(2)));
    let (status, body) =
        host.send(host.http.post(format!("{}/v1/catalog/products", host.base)).bearer_auth(ADMIN).json(&json!([{"id": "p3", "price": -1}]))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("products[0].name")));
    assert_eq!(host.profile("a-gus").await.1["computed"]["order_count"], 1);

    let erase = host.send(host.http.delete(format!("{}/v1/profiles/gus", host.base)).bearer_auth(ADMIN)).await;
    assert_eq!(erase.0, 204);
    assert_eq!(host.profile("gus").await.0, 404);
    assert_eq!(host.profile("a-gus").await.0, 404);
    assert_eq!(host.send(host.http.delete(format!("{}/v1/profiles/gus", host.base)).bearer_auth(ADMIN)).await.0, 404);
}

#[tokio::test]
async fn erasure_leaves_no_row_and_sqlite_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    {
        let host = start(Backend::Sqlite, data.path()).await.expect("SQLite");
        host.post(
            "/v1/identify",
            json!({"userId": "hal", "anonymousId": "a-hal", "messageId": "1",
            "traits": {"email": "h@x.io"}, "context": {"consent": {"categoryPreferences": {"email": true}}}}),
        )
        .await;
        host.post(
            "/v1/track",
            json!({"userId": "hal", "messageId": "2", "event": "Order Completed",
            "properties": {"revenue": 9, "products": [{"category": "tops"}]}}),
        )
        .await;
    }
    // A restart on the same file keeps everything.
    let host = start(Backend::Sqlite, data.path()).await.expect("SQLite");
    let (status, p) = host.profile("a-hal").await;
    assert_eq!((status, p["computed"]["order_count"].as_i64()), (200, Some(1)));
    assert_eq!(host.send(host.http.delete(format!("{}/v1/profiles/hal", host.base)).bearer_auth(ADMIN)).await.0, 204);
    let store = Store::open_sqlite(&data.path().join("rekindle.db"), EventMapping::default()).unwrap();
    for (table, rows) in store.table_counts().await.unwrap() {
        assert_eq!(rows, 0, "{table} still holds {rows} rows after erasure");
    }
}

/// Ingest, store, evaluate: the shipped rules on profiles built from stored events and
/// computed traits, at their boundaries.
async fn rules_evaluate_stored_profiles(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    let (status, _) = host
        .post(
            "/v1/batch",
            json!({"batch": [
                order("o1", "ann", "2026-01-01T10:00:00Z", 40.0, "shoes"),
                order("o2", "ann", "2026-03-02T10:00:00Z", 40.0, "shoes"),
                {"type": "track", "messageId": "c1", "userId": "cat", "event": "Product Added", "timestamp": "2026-11-23T10:00:00Z"},
            ]}),
        )
        .await;
    assert_eq!(status, 200);
    let host = &host;
    let evaluate = |slot: &str, who: &str, now: &str| {
        let request = host.http.post(format!("{}/admin/slots/{slot}/evaluate/{who}", host.base)).bearer_auth(ADMIN).json(&json!({"now": now}));
        async move { host.send(request).await }
    };
    // A 60-day buyer: the last order was 2026-03-02T10:00, so day 68 begins 2026-05-09T10:00.
    let (status, body) = evaluate("lapsing", "ann", "2026-05-09T09:59:59Z").await;
    assert_eq!((status, body["verdict"]["member"].as_bool()), (200, Some(false)), "{body}");
    let (_, body) = evaluate("lapsing", "ann", "2026-05-09T10:00:00Z").await;
    assert_eq!(body["verdict"]["member"], true, "{body}");
    assert_eq!(body["verdict"]["reason"], "last order 68.0 days ago; usual gap 60.0 + 8.0 grace = 68.0");
    // The same data through the computed traits: 44 whole days out, 45 in.
    assert_eq!(evaluate("win-back", "ann", "2026-04-16T09:00:00Z").await.1["verdict"]["member"], false);
    assert_eq!(evaluate("win-back", "ann", "2026-04-16T10:00:00Z").await.1["verdict"]["member"], true);
    assert_eq!(evaluate("abandoned-cart", "cat", "2026-11-23T10:29:00Z").await.1["verdict"]["member"], false);
    assert_eq!(evaluate("abandoned-cart", "cat", "2026-11-23T10:31:00Z").await.1["verdict"]["member"], true);
    // Parameters override the defaults; unknown ones are refused by name.
    let request = host
        .http
        .post(format!("{}/admin/slots/lapsing/evaluate/ann", host.base))
        .bearer_auth(ADMIN)
        .json(&json!({"now": "2026-05-09T09:59:59Z", "params": {"grace_days": 7}}));
    assert_eq!(host.send(request).await.1["verdict"]["member"], true);
    let request = host.http.post(format!("{}/admin/slots/lapsing/evaluate/ann", host.base)).bearer_auth(ADMIN).json(&json!({"params": {"grace": 7}}));
    let (status, body) = host.send(request).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown parameter `grace`"), "{body}");
    assert_eq!(evaluate("lapsing", "nobody", "2026-05-09T10:00:00Z").await.0, 404);
}

fn days_ago(days: f64) -> String {
    let at = chrono::Utc::now() - chrono::Duration::milliseconds((days * 86_400_000.0) as i64);
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A segment defined over existing data is backfilled; a real-time segment follows new
/// events: entry on a cart, exit on the order, each with the rule's reason.
async fn segments_backfill_and_follow_events_in_real_time(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    let host = &host;
    host.post(
        "/v1/batch",
        json!({"batch": [
            order("a1", "ann", &days_ago(130.0), 40.0, "shoes"), order("a2", "ann", &days_ago(70.0), 40.0, "shoes"),
            order("b1", "bob", &days_ago(20.0), 40.0, "tops"), order("b2", "bob", &days_ago(10.0), 40.0, "tops"),
        ]}),
    )
    .await;
    let define = |body: Value| async move { host.send(host.http.post(format!("{}/v1/segments", host.base)).bearer_auth(ADMIN).json(&body)).await };
    let members = |name: &'static str| async move {
        let url = format!("{}/v1/segments/{}/members", host.base, name.replace(' ', "%20"));
        let (status, body) = host.send(host.http.get(url).bearer_auth(ADMIN)).await;
        assert_eq!(status, 200, "{body}");
        body["members"].as_array().unwrap().iter().map(|m| m["profile_id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    let id_of = |who: &'static str| async move { host.profile(who).await.1["id"].as_str().unwrap().to_string() };

    let (status, body) = define(json!({"name": "Lapsing repeat buyers", "slot": "lapsing", "schedule": "daily"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["evaluated"].as_u64(), body["members"].as_u64()), (Some(2), Some(1)), "{body}");
    assert_eq!(members("Lapsing repeat buyers").await, [id_of("ann").await]);
    let (_, ann) = host.profile("ann").await;
    assert_eq!(ann["segments"][0]["segment"], "Lapsing repeat buyers");
    assert!(ann["segments"][0]["reason"].as_str().unwrap().starts_with("last order 70.0 days ago"), "{ann}");

    // Preview: who would qualify with a grace of 0, compared with the live segment.
    let preview = |body: Value| async move { host.send(host.http.post(format!("{}/v1/segments/preview", host.base)).bearer_auth(ADMIN).json(&body)).await };
    let (status, body) = preview(json!({"slot": "lapsing", "params": {"grace_days": 0}, "compare": "Lapsing repeat buyers"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["count"].as_u64(), body["compare"]["enters"].as_u64(), body["compare"]["leaves"].as_u64()), (Some(2), Some(1), Some(0)), "{body}");
    assert_eq!(body["compare"]["enter_sample"][0], id_of("bob").await);
    // Replay as of 80 days ago: ann had one order then, so nobody qualifies.
    let (_, body) = preview(json!({"slot": "lapsing", "at": days_ago(80.0), "compare": "Lapsing repeat buyers"})).await;
    assert_eq!((body["count"].as_u64(), body["compare"]["leaves"].as_u64()), (Some(0), Some(1)), "{body}");
    // Computed traits are replayed too: 80 days ago ann's last order (then) was 50 days old,
    // inside the 45-90 window; today's traits would put it in the future.
    let (_, body) = preview(json!({"slot": "win-back", "at": days_ago(80.0)})).await;
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["sample"][0]["profile_id"], id_of("ann").await);
    let (_, body) = preview(json!({"slot": "win-back"})).await;
    assert_eq!(body["count"], 1, "today ann's last order is 70 days old too: {body}");
    assert_eq!(preview(json!({"slot": "lapsing", "compare": "nope"})).await.1["error"]["field"], "compare");
    // A preview changes no membership.
    assert_eq!(members("Lapsing repeat buyers").await, [id_of("ann").await]);

    // A daily segment misses someone who qualifies after its run, until it runs again;
    // an operator can run it now.
    host.post(
        "/v1/batch",
        json!({"batch": [
            order("d1", "dan", &days_ago(140.0), 40.0, "shoes"), order("d2", "dan", &days_ago(75.0), 40.0, "shoes"),
        ]}),
    )
    .await;
    assert!(!members("Lapsing repeat buyers").await.contains(&id_of("dan").await));
    let run = |body: Value| async move { host.send(host.http.post(format!("{}/v1/segments/run", host.base)).bearer_auth(ADMIN).json(&body)).await };
    let (status, body) = run(json!({"segments": ["Lapsing repeat buyers"]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["segments"][0]["evaluated"].as_u64(), body["segments"][0]["members"].as_u64()), (Some(3), Some(2)), "{body}");
    assert!(members("Lapsing repeat buyers").await.contains(&id_of("dan").await));
    assert_eq!(run(json!({"segments": ["nope"]})).await.1["error"]["field"], "segments[0]");

    // Definitions are checked field by field.
    assert_eq!(define(json!({"name": "x", "slot": "nope"})).await.1["error"]["field"], "slot");
    assert_eq!(define(json!({"name": "x", "slot": "lapsing", "schedule": "hourly"})).await.1["error"]["field"], "schedule");
    assert_eq!(define(json!({"name": "x", "slot": "lapsing", "params": {"grace": 1}})).await.1["error"]["field"], "params");
    assert_eq!(define(json!({"slot": "lapsing"})).await.1["error"]["field"], "name");

    // Real time: a cart enters the segment at once (no wait), the order takes it out.
    let (status, body) = define(json!({"name": "carts", "slot": "abandoned-cart", "schedule": "realtime", "params": {"wait_minutes": 0}})).await;
    assert_eq!(status, 200, "{body}");
    host.post("/v1/track", json!({"userId": "cat", "messageId": "c1", "event": "Product Added", "timestamp": days_ago(0.001)})).await;
    let eventually = |want: bool| async move {
        let started = std::time::Instant::now();
        loop {
            let cat = host.profile("cat").await.1;
            let inside = cat["segments"].as_array().is_some_and(|s| s.iter().any(|m| m["segment"] == "carts"));
            if inside == want {
                return cat;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "cat never {} the segment: {cat}", if want { "entered" } else { "left" });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let cat = eventually(true).await;
    assert!(cat["segments"][0]["reason"].as_str().unwrap().contains("with no order"), "{cat}");
    host.post(
        "/v1/track",
        json!({"userId": "cat", "messageId": "c2", "event": "Order Completed", "timestamp": days_ago(0.0),
        "properties": {"revenue": 5}}),
    )
    .await;
    eventually(false).await;
    assert!(members("carts").await.is_empty());
    // The log has both, in order, with the rule's reasons.
    let (status, log) = host.send(host.http.get(format!("{}/v1/segments/carts/changes", host.base)).bearer_auth(ADMIN)).await;
    assert_eq!(status, 200, "{log}");
    let changes: Vec<&str> = log["changes"].as_array().unwrap().iter().map(|c| c["change"].as_str().unwrap()).collect();
    assert_eq!(changes, ["enter", "exit"], "{log}");
    assert!(log["changes"][1]["reason"].as_str().unwrap().contains("ordered after"), "{log}");
    let next = log["next"].as_i64().unwrap();
    let (_, rest) = host.send(host.http.get(format!("{}/v1/segments/carts/changes?after={next}", host.base)).bearer_auth(ADMIN)).await;
    assert_eq!(rest["changes"], json!([]));
}

/// A buyer who turns lapsing at day 68 with no new event: the daily run catches it.
async fn scheduled_runs_catch_changes_that_come_with_time_alone(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let day = 86_400_000;
    let clock = Clock::manual(chrono::DateTime::parse_from_rfc3339("2026-05-08T10:00:00Z").unwrap().timestamp_millis());
    let Some(host) = start_with(backend, data.path(), clock.clone(), Duration::from_millis(20)).await else { return };
    let host = &host;
    host.post(
        "/v1/batch",
        json!({"batch": [
            order("a1", "ann", "2026-01-01T10:00:00Z", 40.0, "shoes"), order("a2", "ann", "2026-03-02T10:00:00Z", 40.0, "shoes"),
        ]}),
    )
    .await;
    let (status, body) = host
        .send(host.http.post(format!("{}/v1/segments", host.base)).bearer_auth(ADMIN).json(&json!({"name": "lapsing", "slot": "lapsing", "schedule": "daily"})))
        .await;
    assert_eq!((status, body["members"].as_u64()), (200, Some(0)), "day 67: {body}");
    let in_segment = || async move { host.profile("ann").await.1["segments"].as_array().is_some_and(|s| s.iter().any(|m| m["segment"] == "lapsing")) };
    // Half a day later the daily run is not due yet, and nothing changes.
    clock.advance(day / 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!in_segment().await);
    // Day 68 arrives with no new event; the next daily run enters ann.
    clock.advance(day / 2);
    let started = std::time::Instant::now();
    while !in_segment().await {
        assert!(started.elapsed() < Duration::from_secs(10), "the scheduled run never entered ann");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, ann) = host.profile("ann").await;
    assert_eq!(ann["segments"][0]["since"], "2026-05-09T10:00:00.000Z", "{ann}");
    assert!(ann["segments"][0]["reason"].as_str().unwrap().starts_with("last order 68.0 days ago"), "{ann}");
}

/// `"auto"` RFM cutoffs are the population's quintiles, computed for each run.
async fn rfm_cutoffs_come_from_the_population(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    // Customer r{i}: i + 1 orders of 10 × (i + 1) each, the last 5 + 20 i days ago. The
    // most frequent, biggest spenders are also the longest gone.
    let mut batch = Vec::new();
    for i in 0..10usize {
        for k in 0..=i {
            let ago = 5.0 + 20.0 * i as f64 + 3.0 * k as f64;
            batch.push(order(&format!("r{i}-{k}"), &format!("r{i}"), &days_ago(ago), 10.0 * (i + 1) as f64, "shoes"));
        }
    }
    assert_eq!(host.post("/v1/batch", json!({ "batch": batch })).await.0, 200);
    let auto = json!({"recency_days_cutoffs": "auto", "frequency_cutoffs": "auto", "monetary_cutoffs": "auto"});
    let (status, body) =
        host.send(host.http.post(format!("{}/v1/segments", host.base)).bearer_auth(ADMIN).json(&json!({"name": "rfm", "slot": "rfm", "params": auto}))).await;
    assert_eq!(status, 200, "{body}");
    // Quintiles over ten buyers: F 3,5,7,9; M 90,250,490,810; R 45,85,125,165 days.
    // F ≥ 4, M ≥ 4 and R ≤ 2 leaves r6, r7, r8 and r9.
    assert_eq!(body["members"], 4, "{body}");
    let (_, r6) = host.profile("r6").await;
    assert!(r6["segments"][0]["reason"].as_str().unwrap().starts_with("R2 F4 M4"), "{r6}");
    assert_eq!(host.profile("r5").await.1["segments"], json!([]));
}

/// A rule that traps for one profile in the middle of a page loses that verdict only: the
/// profiles after it in the same slice (evaluated on the same, replaced, instance) and the
/// other segments of the same run still get theirs.
async fn a_rule_failing_mid_batch_costs_only_its_own_verdicts(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    let host = &host;
    // Created first, so the failing profile leads its page.
    host.post("/v1/track", json!({"userId": "boom", "messageId": "x0", "event": "Boom", "timestamp": days_ago(1.0)})).await;
    let mut batch = Vec::new();
    for n in 0..9 {
        batch.push(order(&format!("o{n}a"), &format!("u{n}"), &days_ago(130.0), 40.0, "shoes"));
        batch.push(order(&format!("o{n}b"), &format!("u{n}"), &days_ago(70.0), 40.0, "shoes"));
    }
    host.post("/v1/batch", json!({ "batch": batch })).await;
    let define = |body: Value| async move { host.send(host.http.post(format!("{}/v1/segments", host.base)).bearer_auth(ADMIN).json(&body)).await };
    let (status, body) = define(json!({"name": "flaky", "slot": "flaky"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["evaluated"].as_u64(), body["failed"].as_u64(), body["members"].as_u64()), (Some(9), Some(1), Some(9)), "{body}");
    let (_, body) = define(json!({"name": "lapsing", "slot": "lapsing"})).await;
    assert_eq!((body["evaluated"].as_u64(), body["failed"].as_u64(), body["members"].as_u64()), (Some(10), Some(0), Some(9)), "{body}");
    let (_, boom) = host.profile("boom").await;
    assert_eq!(boom["segments"], json!([]), "{boom}");
}

/// A run asks everyone `place` (no reason) and only the changed `evaluate` (for the reason).
/// A rule answering the two differently gets no membership stored from either answer: each
/// such profile counts as failed.
async fn a_rule_whose_place_and_evaluate_disagree_gets_no_member(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    let batch: Vec<Value> = (0..5).map(|n| order(&format!("t{n}"), &format!("u{n}"), &days_ago(10.0), 40.0, "shoes")).collect();
    assert_eq!(host.post("/v1/batch", json!({ "batch": batch })).await.0, 200);
    // Defining asks everyone the full verdict, which says "not a member".
    let (status, body) =
        host.send(host.http.post(format!("{}/v1/segments", host.base)).bearer_auth(ADMIN).json(&json!({"name": "two-faced", "slot": "two-faced"}))).await;
    assert_eq!((status, body["evaluated"].as_u64(), body["failed"].as_u64(), body["members"].as_u64()), (200, Some(5), Some(0), Some(0)), "{body}");
    // A run, as the schedule's, asks `place`, which says "member", and then `evaluate`.
    let (status, body) = host.send(host.http.post(format!("{}/v1/segments/run", host.base)).bearer_auth(ADMIN).json(&json!({"segments": ["two-faced"]}))).await;
    assert_eq!(status, 200, "{body}");
    let run = &body["segments"][0];
    assert_eq!((run["evaluated"].as_u64(), run["failed"].as_u64(), run["members"].as_u64()), (Some(0), Some(5), Some(0)), "{body}");
    assert_eq!(host.profile("u0").await.1["segments"], json!([]));
}

/// Runs store a reason only when membership changes, so new parameters that move nobody in
/// or out must still rebuild every member's reason when the segment is redefined.
async fn redefining_a_segment_rebuilds_reasons_that_no_membership_change_would(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    assert_eq!(host.post("/v1/batch", json!({ "batch": [order("w1", "w", &days_ago(60.5), 40.0, "shoes")] })).await.0, 200);
    let define = |params: Value| {
        let host = &host;
        async move {
            let body = json!({"name": "win-back", "slot": "win-back", "params": params});
            host.send(host.http.post(format!("{}/v1/segments", host.base)).bearer_auth(ADMIN).json(&body)).await
        }
    };
    let reason = || async { host.profile("w").await.1["segments"][0]["reason"].as_str().unwrap_or_default().to_string() };
    assert_eq!(define(json!({})).await.0, 200);
    assert!(reason().await.ends_with("window 45 to 90"), "{}", reason().await);
    let (status, body) = define(json!({"min_days": 30, "max_days": 120})).await;
    assert_eq!((status, body["members"].as_u64()), (200, Some(1)), "{body}");
    assert!(reason().await.ends_with("window 30 to 120"), "the reason must follow the new parameters: {}", reason().await);
}
