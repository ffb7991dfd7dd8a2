//! Promo tiles through a real socket: offers and slots validated field by field, personal
//! decisions from the shipped `tiles-basic` component, the anonymous decision, HTTP caching
//! and CORS, and the fail-safe: a plugin that traps, loops or lies yields the slot's
//! fallback tiles, never a 5xx.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use rekindle_server::{AppState, Ingestion, app};
use rekindle_tests::Backend;
use serde_json::{Value, json};

rekindle_tests::on_each_backend!(offers_and_slots_are_validated_field_by_field, decisions_are_personal_cached_and_fail_safe);

const ADMIN: &str = "admin-token";
const WRITE_KEY: &str = "web-key";
const SERVER_KEY: &str = "backend-key";
const SHOP: &str = "https://shop.example";
const TOKEN_SECRET: &[u8] = b"tiles-test-secret-0123456789abcdef";
/// What the site's backend signs its users' ids with.
const IDENTITY_SECRET: &[u8] = b"tiles-identity-secret-0123456789ab";

/// The query proving the visitor is `user`, as a site's backend renders it into the page.
fn signed(user: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(IDENTITY_SECRET).unwrap();
    mac.update(user.as_bytes());
    format!("writeKey={WRITE_KEY}&userId={user}&userHash={}", hex::encode(mac.finalize().into_bytes()))
}

struct Host {
    http: reqwest::Client,
    base: String,
}

async fn start(backend: Backend, data: &Path) -> Option<Host> {
    let registry = rekindle_tests::registry(&[
        ("tiles-basic", rekindle_tests::components::TILES_BASIC),
        ("failing-tiles", rekindle_tests::components::HOSTILE_TILES),
        ("lapsing", rekindle_tests::components::RULE_LAPSING_REPEAT_BUYER),
    ]);
    let store = rekindle_tests::open_store(backend, data).await?;
    let sources = [
        (WRITE_KEY.to_string(), rekindle_server::Source::browser("web", Some(IDENTITY_SECRET))),
        (SERVER_KEY.to_string(), rekindle_server::Source::server("backend")),
    ]
    .into_iter()
    .collect();
    let state = AppState::new(registry, None, Some(ADMIN.into()))
        .with_ingestion(Ingestion { store: store.into(), sources })
        .with_tile_origins(vec![SHOP.into()])
        .with_token_secret(TOKEN_SECRET, Duration::from_secs(3600));
    let base = rekindle_tests::serve(app(state)).await;
    Some(Host { http: reqwest::Client::new(), base })
}

impl Host {
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = tokio::time::timeout(Duration::from_secs(30), request.send()).await.expect("timed out").expect("request");
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.request(method, format!("{}{path}", self.base)).bearer_auth(ADMIN).json(&body)).await
    }

    async fn offer(&self, body: Value) -> (u16, Value) {
        self.admin(reqwest::Method::POST, "/v1/offers", body).await
    }

    async fn slot(&self, body: Value) -> (u16, Value) {
        self.admin(reqwest::Method::POST, "/v1/tile-slots", body).await
    }

    async fn tiles(&self, query: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}/v1/tiles?{query}", self.base))).await
    }
}

fn days_ago(days: f64) -> String {
    let at = chrono::Utc::now() - chrono::Duration::milliseconds((days * 86_400_000.0) as i64);
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn offers_and_slots_are_validated_field_by_field(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    let good = json!({"id": "o1", "slot": "home", "title": "Hi", "link": "https://shop.example/sale"});
    assert_eq!(host.offer(good.clone()).await.0, 200);
    let field = |(status, body): (u16, Value)| {
        assert_eq!(status, 400, "{body}");
        body["error"]["field"].as_str().unwrap_or_default().to_string()
    };
    let with = |key: &str, value: Value| {
        let mut offer = good.clone();
        offer[key] = value;
        offer
    };
    assert_eq!(field(host.offer(with("holdout_percent", json!(101))).await), "offer.holdout_percent");
    assert_eq!(field(host.offer(with("link", json!("javascript:alert(1)"))).await), "offer.link");
    assert_eq!(field(host.offer(with("link", json!("//evil.example/login"))).await), "offer.link");
    assert_eq!(field(host.offer(with("link", json!("/\\evil.example"))).await), "offer.link");
    assert_eq!(field(host.offer(with("image", json!("data:image/svg+xml,<svg onload=alert(1)>"))).await), "offer.image");
    assert_eq!(field(host.offer(with("valid_until", json!("tomorrow"))).await), "offer.valid_until");
    assert_eq!(field(host.offer(with("traits", json!(["plan"]))).await), "offer.traits");
    assert_eq!(field(host.offer(with("include_segments", json!([1]))).await), "offer.include_segments[0]");
    assert_eq!(field(host.offer(with("colour", json!("red"))).await), "offer.colour");
    let mut no_title = good.clone();
    no_title.as_object_mut().unwrap().remove("title");
    assert_eq!(field(host.offer(no_title).await), "offer.title");
    let backwards = json!({"id": "o2", "slot": "home", "title": "Hi", "link": "/x",
                           "valid_from": "2026-12-01T00:00:00Z", "valid_until": "2026-11-01T00:00:00Z"});
    assert_eq!(field(host.offer(backwards).await), "offer.valid_until");
    let (status, body) = host.admin(reqwest::Method::PUT, "/v1/offers/other", good.clone()).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("id")), "{body}");

    assert_eq!(host.slot(json!({"name": "home", "max_tiles": 2})).await.0, 200);
    assert_eq!(field(host.slot(json!({"name": "x", "max_tiles": 0})).await), "slot.max_tiles");
    assert_eq!(field(host.slot(json!({"name": "x", "plugin": "lapsing"})).await), "slot.plugin");
    assert_eq!(field(host.slot(json!({"name": "x", "params": {"nope": 1}})).await), "slot.params");
    assert_eq!(field(host.slot(json!({"name": "x", "fallback": [{"title": "t"}]})).await), "slot.fallback[0].link");
    let scripted = json!({"name": "x", "fallback": [{"title": "t", "link": "/ok"}, {"title": "t", "link": "javascript:alert(1)"}]});
    assert_eq!(field(host.slot(scripted).await), "slot.fallback[1].link");
    let imaged = json!({"name": "x", "fallback": [{"title": "t", "link": "/ok", "image": "//evil.example/x.png"}]});
    assert_eq!(field(host.slot(imaged).await), "slot.fallback[0].image");
    assert_eq!(field(host.slot(json!({"max_tiles": 1})).await), "slot.name");

    // What was accepted is all still there, and nothing refused was stored.
    let (_, listed) = host.admin(reqwest::Method::GET, "/v1/offers", Value::Null).await;
    assert_eq!(listed["offers"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["slots"][0]["name"], "home");
    let (status, _) = host.admin(reqwest::Method::DELETE, "/v1/offers/o1", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(host.admin(reqwest::Method::DELETE, "/v1/offers/o1", Value::Null).await.0, 404);
    assert_eq!(host.send(host.http.post(format!("{}/v1/offers", host.base)).json(&good)).await.0, 401, "offers need the admin token");
}

async fn decisions_are_personal_cached_and_fail_safe(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(host) = start(backend, data.path()).await else { return };
    let host = &host;
    let track = |body: Value| async move {
        host.send(host.http.post(format!("{}/v1/batch", host.base)).basic_auth(WRITE_KEY, Some("")).json(&json!({"batch": body}))).await
    };
    let order = |id: &str, at: String| {
        json!({"type": "track", "messageId": id, "userId": "ann", "event": "Order Completed", "timestamp": at,
        "properties": {"revenue": 40, "products": [{"category": "shoes"}]}})
    };
    track(json!([
        {"type": "identify", "messageId": "i1", "userId": "ann", "traits": {"first_name": "Ann", "plan": "silver"}},
        order("a1", days_ago(130.0)), order("a2", days_ago(70.0)),
    ]))
    .await;
    let (status, body) = host.admin(reqwest::Method::POST, "/v1/segments", json!({"name": "lapsing", "slot": "lapsing"})).await;
    assert_eq!((status, body["members"].as_u64()), (200, Some(1)), "{body}");

    let offer = |id: &str, extra: Value| {
        let mut o = json!({"id": id, "slot": "home", "title": format!("{id} for {{{{first_name|friend}}}}"), "link": format!("/{id}")});
        o.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        o
    };
    for o in [
        offer("winback", json!({"include_segments": ["lapsing"], "voucher": "BACK10", "body": "Use {{voucher}}"})),
        offer("generic", json!({"priority": 5})),
        offer("shoes", json!({"category": "shoes", "priority": 1})),
        offer("future", json!({"priority": 99, "valid_from": days_ago(-1.0)})),
        offer("expired", json!({"priority": 99, "valid_until": days_ago(1.0)})),
        offer("gold-only", json!({"priority": 99, "traits": {"plan": "gold"}})),
        offer("held-out", json!({"priority": 99, "holdout_percent": 100})),
    ] {
        assert_eq!(host.offer(o).await.0, 200);
    }
    assert_eq!(host.slot(json!({"name": "home", "max_tiles": 3, "fallback": [{"title": "Our sale", "link": "/sale"}]})).await.0, 200);

    // Ann: the win-back offer first, her name and the voucher filled in; the rest by
    // favourite category, then priority. Not yet valid, expired, other plan and held out
    // never show.
    let (status, ann) = host.tiles(&format!("slot=home&{}", signed("ann"))).await;
    assert_eq!(status, 200, "{ann}");
    let ids: Vec<&str> = ann["tiles"].as_array().unwrap().iter().map(|t| t["offer_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["winback", "shoes", "generic"], "{ann}");
    assert_eq!(ann["tiles"][0]["title"], "winback for Ann");
    assert_eq!(ann["tiles"][0]["body"], "Use BACK10");
    assert_eq!(ann["fallback"], false);
    assert_eq!(ann["tiles"][0]["plugin"]["digest"].as_str().unwrap().len(), 64, "the SHA-256 of the deciding component: {ann}");
    assert_eq!(ann["tiles"][0]["decision_id"].as_str().unwrap().len(), 24);

    // An unknown visitor, or none at all, gets the anonymous decision; so does anyone who
    // only claims to be Ann, with no proof or a wrong one.
    let forged = signed("ann").replace("userHash=", "userHash=0").chars().take(signed("ann").len()).collect::<String>();
    let claims = [
        "slot=home&anonymousId=never-seen".to_string(),
        "slot=home".to_string(),
        "slot=home&userId=ann".to_string(),
        format!("slot=home&{forged}"),
        format!("slot=home&{}", signed("ann").replace("userId=ann", "userId=bob")),
        // One spelling only: the same signature in upper case is not accepted.
        {
            let proof = signed("ann");
            let (claim, hash) = proof.split_once("userHash=").unwrap();
            format!("slot=home&{claim}userHash={}", hash.to_uppercase())
        },
    ];
    for query in &claims {
        let (status, anonymous) = host.tiles(query).await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = anonymous["tiles"].as_array().unwrap().iter().map(|t| t["offer_id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["generic", "shoes"], "{anonymous}");
        assert_eq!(anonymous["tiles"][0]["title"], "generic for friend");
        assert_eq!(anonymous["known_visitor"], false, "{query}: {anonymous}");
        assert!(!anonymous.to_string().contains("BACK10"), "{query}: Ann's voucher leaked");
    }

    // HTTP: private caching, an ETag that a repeat request can revalidate, CORS for the shop.
    let url = format!("{}/v1/tiles?slot=home&{}", host.base, signed("ann"));
    let response = host.http.get(&url).header("Origin", SHOP).send().await.unwrap();
    assert_eq!(response.headers()["cache-control"], "private");
    assert_eq!(response.headers()["access-control-allow-origin"], SHOP);
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    let again = host.http.get(&url).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    let other = host.http.get(&url).header("Origin", "https://evil.example").send().await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // Known visitors also get a signed segment token for the edge; it names them and their
    // segments, and the browser may read it (CORS exposes the header).
    let token = response.headers()["x-rekindle-token"].to_str().unwrap().to_string();
    assert!(response.headers()["access-control-expose-headers"].to_str().unwrap().contains("x-rekindle-token"));
    let claims = rekindle_tiles::token::verify(&token, TOKEN_SECRET, chrono::Utc::now().timestamp_millis()).unwrap();
    assert_eq!(claims.segments.iter().map(|m| m.segment.as_str()).collect::<Vec<_>>(), ["lapsing"]);
    assert!(claims.traits.iter().any(|f| f.name == "first_name"), "{claims:?}");
    // Never a contact point, even when an offer is conditioned on one.
    let contact = json!({"batch": [{"type": "identify", "userId": "ann", "traits": {"email": "ann@example.com", "phone": "+15550001111"}}]});
    let (status, _) = host.send(host.http.post(format!("{}/v1/batch", host.base)).basic_auth(SERVER_KEY, Some("")).json(&contact)).await;
    assert_eq!(status, 200);
    assert_eq!(host.offer(json!({"id": "by-mail", "slot": "mail", "title": "t", "link": "/m", "traits": {"email": "ann@example.com"}})).await.0, 200);
    assert_eq!(host.slot(json!({"name": "mail"})).await.0, 200);
    let sealed = host.http.get(format!("{}/v1/tiles?slot=mail&{}", host.base, signed("ann"))).send().await.unwrap();
    let sealed = sealed.headers()["x-rekindle-token"].to_str().unwrap().to_string();
    let claims = rekindle_tiles::token::verify(&sealed, TOKEN_SECRET, chrono::Utc::now().timestamp_millis()).unwrap();
    assert!(claims.traits.iter().all(|f| f.name != "email" && f.name != "phone"), "{claims:?}");
    for unproved in ["slot=home", "slot=home&userId=ann"] {
        let anonymous = host.http.get(format!("{}/v1/tiles?{unproved}", host.base)).send().await.unwrap();
        assert!(anonymous.headers().get("x-rekindle-token").is_none(), "{unproved}");
    }
    // The sealed token shows nothing readable, and proves Ann on a later page by itself.
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("lapsing") && !String::from_utf8_lossy(&raw).contains("Ann"));
    let by_token = host.http.get(format!("{}/v1/tiles?slot=home", host.base)).header("x-rekindle-token", &token).send().await.unwrap();
    let by_token: Value = by_token.json().await.unwrap();
    assert_eq!((by_token["known_visitor"].as_bool(), by_token["tiles"][0]["offer_id"].as_str()), (Some(true), Some("winback")), "{by_token}");
    // Left in the browser by Ann, it is not Bob's proof when the page says Bob.
    let (_, bob) = host.send(host.http.get(format!("{}/v1/tiles?slot=home&userId=bob", host.base)).header("x-rekindle-token", &token)).await;
    assert_eq!(bob["known_visitor"], false, "{bob}");
    let (_, tampered) = host.send(host.http.get(format!("{}/v1/tiles?slot=home", host.base)).header("x-rekindle-token", format!("{token}A"))).await;
    assert_eq!(tampered["known_visitor"], false, "{tampered}");

    // Several slots at once; an unknown one costs the page nothing else.
    let (status, many) = host
        .send(host.http.post(format!("{}/v1/tiles", host.base)).body(json!({"slots": ["home", "nope"], "userId": "ann", "token": token}).to_string()))
        .await;
    assert_eq!(status, 200, "{many}");
    assert_eq!(many["decisions"][0]["tiles"][0]["offer_id"], "winback");
    assert_eq!(many["decisions"][1]["slot"], "nope");
    assert_eq!(many["decisions"][1]["tiles"], json!([]));
    // One public request buys at most ten plugin calls, each slot once.
    let ask = |slots: Value| host.send(host.http.post(format!("{}/v1/tiles", host.base)).body(json!({"slots": slots}).to_string()));
    let (status, body) = ask(json!((0..11).map(|i| format!("s{i}")).collect::<Vec<_>>())).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("slots")), "{body}");
    let (status, body) = ask(json!(["home", "home"])).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("slots[1]")), "{body}");
    assert_eq!(host.tiles("slot=nope").await.0, 404);
    assert_eq!(host.tiles("userId=ann").await.1["error"]["field"], "slot");

    // Fail-safe: every way the plugin can fail serves the fallback tiles with a 200.
    let fallback = json!([{"title": "Our sale", "link": "/sale", "offer_id": "sale"}]);
    for (slot, plugin, mode) in
        [("trap", "failing-tiles", "panic"), ("loop", "failing-tiles", "loop"), ("bogus", "failing-tiles", "bogus"), ("missing", "not-uploaded", "")]
    {
        let params = if mode.is_empty() { json!({}) } else { json!({"mode": mode}) };
        let (status, body) = host.slot(json!({"name": slot, "plugin": plugin, "params": params, "fallback": fallback})).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = host.tiles(&format!("slot={slot}&userId=ann")).await;
        assert_eq!(status, 200, "{slot}: {body}");
        assert_eq!(body["fallback"], true, "{slot}: {body}");
        assert_eq!(body["tiles"][0]["offer_id"], "sale", "{slot}: {body}");
        assert_eq!(body["tiles"][0]["title"], "Our sale");
    }
    let (_, stats) = host.admin(reqwest::Method::GET, "/admin/tiles/stats", Value::Null).await;
    assert_eq!(stats["fallbacks"], 4, "{stats}");

    // A plugin's links are checked too: javascript:, protocol-relative and data: tiles are
    // dropped and counted, and the one safe tile is served.
    for i in 1..=4 {
        assert_eq!(host.offer(json!({"id": format!("u{i}"), "slot": "unsafe", "title": "t", "link": format!("/u{i}")})).await.0, 200);
    }
    assert_eq!(host.slot(json!({"name": "unsafe", "plugin": "failing-tiles", "max_tiles": 4, "params": {"mode": "unsafe-links"}})).await.0, 200);
    let (status, body) = host.tiles("slot=unsafe").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tiles"], json!([body["tiles"][0].clone()]), "{body}");
    assert_eq!((body["tiles"][0]["offer_id"].as_str(), body["tiles"][0]["link"].as_str()), (Some("u4"), Some("/u4")), "{body}");
    let (_, stats) = host.admin(reqwest::Method::GET, "/admin/tiles/stats", Value::Null).await;
    assert_eq!(stats["dropped_unsafe_links"], 3, "{stats}");

    // The snippet.
    let script = host.http.get(format!("{}/v1/tiles.js", host.base)).send().await.unwrap();
    assert!(script.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(script.text().await.unwrap().contains("data-rekindle-slot"));
}
