//! Promo tiles over HTTP. Public: `GET`/`POST /v1/tiles` (decisions, with CORS for the
//! configured origins, `Cache-Control: private` and an ETag) and `/v1/tiles.js`, the
//! website snippet. Behind the admin token: offers, page slots and counters.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use rekindle_store::TileDocument;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::extract::JsonBody;
use crate::{ApiError, AppState};
use rekindle_tiles::Visitor;
use rekindle_tiles::catalog::catalog_json;
use rekindle_tiles::edge::EdgeSources;

/// The website snippet, served as is.
const TILES_JS: &str = include_str!("../../assets/tiles.js");

/// Routes anyone may call: decisions and the snippet.
pub(crate) fn public_router() -> Router<AppState> {
    Router::new().route("/v1/tiles", get(decide_one).post(decide_many)).route("/v1/tiles.js", get(snippet))
}

/// Routes behind the admin token.
pub(crate) fn admin_router() -> Router<AppState> {
    Router::new()
        .route("/v1/offers", get(list).post(create_offer))
        .route("/v1/offers/{id}", put(replace_offer).delete(delete_offer))
        .route("/v1/tile-slots", get(list).post(create_page_slot))
        .route("/v1/tile-slots/{name}", put(replace_page_slot).delete(delete_page_slot))
        .route("/admin/tiles/stats", get(stats))
        .route("/admin/tiles/token", axum::routing::post(issue_token))
        .route("/admin/edge/snapshot", get(edge_snapshot))
        .route("/admin/edge/reference", axum::routing::post(edge_reference))
        .route("/admin/slots/{slot}/component", get(component))
}

/// Validates and stores an offer given as JSON, then refreshes the snapshot; the API and
/// the config file both use it.
pub async fn define_offer(state: &AppState, body: &Value) -> Result<Value, ApiError> {
    let store = &state.customer_data()?.store;
    super::refuse_nul(body, "offer")?;
    Ok(state.tiles.define_offer(store, &state.registry, body).await?)
}

/// Validates and stores a page slot given as JSON, then refreshes the snapshot.
pub async fn define_page_slot(state: &AppState, body: &Value) -> Result<Value, ApiError> {
    let store = &state.customer_data()?.store;
    super::refuse_nul(body, "slot")?;
    Ok(state.tiles.define_page_slot(store, &state.registry, body).await?)
}

async fn create_offer(State(state): State<AppState>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    define_offer(&state, &body).await.map(Json)
}

/// The path names the offer; a body without an id takes it, one with another id is refused.
fn with_path_id(mut body: Value, key: &str, id: &str) -> Result<Value, ApiError> {
    match body.get(key) {
        None => {
            if let Some(map) = body.as_object_mut() {
                map.insert(key.into(), json!(id));
            }
            Ok(body)
        }
        Some(Value::String(given)) if given == id => Ok(body),
        Some(other) => Err(ApiError::field(key, format!("`{key}` is {other} but the path says {id:?}"))),
    }
}

async fn replace_offer(State(state): State<AppState>, Path(id): Path<String>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let body = with_path_id(body, "id", &id)?;
    define_offer(&state, &body).await.map(Json)
}

async fn create_page_slot(State(state): State<AppState>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    define_page_slot(&state, &body).await.map(Json)
}

async fn replace_page_slot(State(state): State<AppState>, Path(name): Path<String>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let body = with_path_id(body, "name", &name)?;
    define_page_slot(&state, &body).await.map(Json)
}

async fn remove(state: &AppState, kind: TileDocument, id: &str, what: &str) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    if !store.delete_tile_document(kind, id).await? {
        return Err(ApiError::NotFound(format!("no {what} `{id}`")));
    }
    state.tiles.reload(store, &state.registry).await?;
    Ok(Json(json!({"deleted": id})))
}

async fn delete_offer(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    remove(&state, TileDocument::Offer, &id, "offer").await
}

async fn delete_page_slot(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    remove(&state, TileDocument::PageSlot, &name, "tile slot").await
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(catalog_json(&state.tiles.catalog()))
}

async fn stats(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.tiles.counts()))
}

/// The signed token for a visitor, for the site's backend (and the conformance test):
/// `{"userId", "at"?}`; `at` (ms) back-dates the issue time.
async fn issue_token(State(state): State<AppState>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let (key, ttl) = state.token.clone().ok_or(ApiError::Unavailable("no token secret is configured ([tiles] token_secret)"))?;
    let id = optional_text(body.get("userId"), "userId")?.ok_or_else(|| ApiError::field("userId", "`userId` names the visitor"))?;
    let at = match body.get("at") {
        None | Some(Value::Null) => state.clock.now(),
        at => rekindle_runtime::json::timestamp_from_json(at, "at")?,
    };
    let claims = rekindle_tiles::edge::claims(edge_sources(&state)?, &id, at, ttl, &state.clock)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no profile for `{id}`")))?;
    Ok(Json(json!({"token": rekindle_tiles::token::seal(&claims, &key), "expires_at": claims.expires_at})))
}

async fn edge_snapshot(State(state): State<AppState>, Query(query): Query<Vec<(String, String)>>) -> Result<Json<Value>, ApiError> {
    let now = match query.iter().find(|(k, _)| k == "at") {
        Some((_, at)) => {
            let at = at.parse().map_err(|_| ApiError::field("at", "`at` is milliseconds since the epoch"))?;
            rekindle_runtime::json::check_timestamp(at, "at")?
        }
        None => state.clock.now(),
    };
    Ok(Json(rekindle_tiles::edge::snapshot(edge_sources(&state)?, now).await?))
}

/// What the edge must answer: `{"userId"?, "slot", "now", "repeat"?}`. `repeat` decides
/// that many times and answers the last, so a benchmark can time a decision without HTTP,
/// as the edge's conformance endpoint does.
async fn edge_reference(State(state): State<AppState>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let slot = optional_text(body.get("slot"), "slot")?.ok_or_else(|| ApiError::field("slot", "`slot` names the page slot"))?;
    let now = rekindle_runtime::json::timestamp_from_json(body.get("now"), "now")?;
    let user = optional_text(body.get("userId"), "userId")?;
    let repeat = match body.get("repeat") {
        None | Some(Value::Null) => 1,
        Some(n) => {
            n.as_u64().filter(|n| (1..=10_000).contains(n)).ok_or_else(|| ApiError::field("repeat", "`repeat` must be a whole number from 1 to 10000"))?
        }
    };
    let mut answer = Value::Null;
    for _ in 0..repeat {
        answer = rekindle_tiles::edge::reference(edge_sources(&state)?, user.as_deref(), &slot, now).await?;
    }
    Ok(Json(answer))
}

/// The active component of a slot, as uploaded: what `rekindle edge build` transpiles.
async fn component(State(state): State<AppState>, Path(slot): Path<String>) -> Result<Response, ApiError> {
    let plugin = state.registry.get(&slot).map_err(|e| ApiError::NotFound(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], plugin.bytes().to_vec()).into_response())
}

/// What a tile request claims about who is asking; [`verify`] decides what it proves.
#[derive(Default)]
struct Claim {
    write_key: Option<String>,
    user_id: Option<String>,
    user_hash: Option<String>,
    token: Option<String>,
}

impl Claim {
    /// The claim of a `GET /v1/tiles?...` (the token comes in `X-Rekindle-Token`).
    fn from_query(query: &[(String, String)], headers: &HeaderMap) -> Result<Claim, ApiError> {
        let get = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| json!(v));
        Claim::from_fields([get("writeKey").as_ref(), get("userId").as_ref(), get("userHash").as_ref()], None, headers)
    }

    /// The claim of a `POST /v1/tiles` body; the token in a `token` field or the header.
    fn from_body(body: &Value, headers: &HeaderMap) -> Result<Claim, ApiError> {
        Claim::from_fields([body.get("writeKey"), body.get("userId"), body.get("userHash")], body.get("token"), headers)
    }

    /// `[writeKey, userId, userHash]`, and a token from the body or else the header.
    fn from_fields([write_key, user_id, user_hash]: [Option<&Value>; 3], token: Option<&Value>, headers: &HeaderMap) -> Result<Claim, ApiError> {
        let header = headers.get("x-rekindle-token").map(|v| json!(v.to_str().unwrap_or("\u{fffd}")));
        let token = match token {
            None | Some(Value::Null) => header.as_ref(),
            given => given,
        };
        let token = match token {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if t.len() <= MAX_TOKEN_BYTES => Some(t.clone()).filter(|t| !t.is_empty()),
            Some(_) => return Err(ApiError::field("token", format!("`token` must be a string of at most {MAX_TOKEN_BYTES} bytes"))),
        };
        Ok(Claim {
            write_key: optional_text(write_key, "writeKey")?,
            user_id: optional_text(user_id, "userId")?,
            user_hash: optional_text(user_hash, "userHash")?,
            token,
        })
    }
}

/// The most slots one request may ask for: each is a plugin call of up to its deadline,
/// and the endpoint is public, so one request must not buy a second of the host's CPU.
const MAX_SLOTS_PER_REQUEST: usize = 10;

/// Longer than any token this host issues for a real visitor.
const MAX_TOKEN_BYTES: usize = 16 << 10;

/// Whether `hash` is the lower-case hex HMAC-SHA256 of `user_id` under `secret`, compared
/// in constant time.
fn user_hash_matches(secret: &[u8], user_id: &str, hash: &str) -> bool {
    use hmac::{KeyInit, Mac};
    let Ok(given) = hex::decode(hash) else { return false };
    if hash.len() != 64 || hash.bytes().any(|b| b.is_ascii_uppercase()) {
        return false;
    }
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else { return false };
    mac.update(user_id.as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// Who a claim proves the visitor is: a user id that its source's identity secret signed,
/// or the profile in a segment token this host issued. A bare `userId` or `anonymousId`
/// proves nothing and gets the anonymous decision: otherwise anyone could read anyone's
/// personal tiles, vouchers and segments by guessing their id.
async fn verify(state: &AppState, claim: &Claim) -> Visitor {
    let sources = state.ingestion.as_deref().map(|i| &i.sources);
    if let (Some(user), Some(hash), Some(key), Some(sources)) = (&claim.user_id, &claim.user_hash, &claim.write_key, sources)
        && let Some(secret) = sources.get(key).and_then(|s| s.identity_secret.as_ref())
        && user_hash_matches(secret, user, hash)
    {
        return Visitor::verified(user.clone());
    }
    let (Some(token), Some((key, _))) = (&claim.token, &state.token) else { return Visitor::default() };
    let Ok(claims) = rekindle_tiles::token::open(token, key, state.clock.now()) else { return Visitor::default() };
    // The token's person must still exist (an erased one is nobody), and a token left in
    // the browser by someone else (a shared computer) is not the visitor a page now names.
    let Some(ingestion) = &state.ingestion else { return Visitor::default() };
    match ingestion.store.profile(claim.user_id.as_deref().unwrap_or(&claims.profile_id), 0).await {
        Ok(Some(profile)) if profile.id == claims.profile_id => Visitor::verified(claims.profile_id),
        _ => Visitor::default(),
    }
}

/// A segment token for a verified visitor, issued at the start of the hour so that its
/// claims within the hour are the same.
async fn visitor_token(state: &AppState, visitor: &Visitor) -> Option<String> {
    let (key, ttl) = state.token.clone()?;
    let id = visitor.id()?;
    const HOUR: i64 = 3_600_000;
    let at = state.clock.now() / HOUR * HOUR;
    let sources = match edge_sources(state) {
        Ok(sources) => sources,
        Err(e) => {
            tracing::warn!("no segment token for this answer: {e}");
            return None;
        }
    };
    match rekindle_tiles::edge::claims(sources, id, at, ttl, &state.clock).await {
        Ok(Some(claims)) => Some(rekindle_tiles::token::seal(&claims, &key)),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("no segment token for this answer: {e}");
            None
        }
    }
}

fn with_token(mut response: Response, token: Option<String>) -> Response {
    if let Some(value) = token.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert("x-rekindle-token", value);
    }
    response
}

async fn snippet() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=300")], TILES_JS)
}

/// The most bytes of an id, key or slot name in a tile request.
const MAX_TEXT_BYTES: usize = 200;

/// The most bytes of the page URL a tile request names (the longest link a tile may have).
const MAX_URL_BYTES: usize = 2048;

fn optional_text(value: Option<&Value>, field: &str) -> Result<Option<String>, ApiError> {
    optional_text_of(value, field, MAX_TEXT_BYTES)
}

/// A string of at most `max` bytes, where empty means absent. The edge worker checks the
/// same, in the same order, with the same words.
fn optional_text_of(value: Option<&Value>, field: &str, max: usize) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
        Some(_) => Err(ApiError::field(field, format!("`{field}` must be a string of at most {max} bytes"))),
    }
}

/// Serialises an answer with `Cache-Control: private` and an ETag over the body, answering
/// 304 when the page already holds this exact answer.
fn cached(headers: &HeaderMap, answer: &Value) -> Response {
    let body = answer.to_string();
    let hash = Sha256::digest(body.as_bytes());
    let etag = format!("\"{}\"", hex::encode(&hash[..10]));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|given| given.split(',').any(|tag| tag.trim().trim_start_matches("W/") == etag));
    let mut response = if matches { StatusCode::NOT_MODIFIED.into_response() } else { ([(header::CONTENT_TYPE, "application/json")], body).into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

async fn decide_one(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<Vec<(String, String)>>) -> Result<Response, ApiError> {
    let get = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| json!(v));
    let slot = optional_text(get("slot").as_ref(), "slot")?.ok_or_else(|| ApiError::field("slot", "`slot` names the page slot to fill"))?;
    optional_text(get("anonymousId").as_ref(), "anonymousId")?;
    let visitor = verify(&state, &Claim::from_query(&query, &headers)?).await;
    let url = optional_text_of(get("url").as_ref(), "url", MAX_URL_BYTES)?;
    let store = state.ingestion.as_deref().map(|i| &*i.store);
    let answer = state
        .tiles
        .decide(&state.registry, store, &slot, &visitor, url, state.clock.now())
        .await
        .ok_or_else(|| ApiError::NotFound(format!("no tile slot `{slot}`")))?;
    Ok(with_token(cached(&headers, &answer), visitor_token(&state, &visitor).await))
}

async fn decide_many(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    // Without the parser's detail: the edge answers this request too, with the same words.
    let body = serde_json::from_slice::<Value>(&body).map_err(|_| ApiError::BadRequest {
        code: "malformed_json",
        message: "the body is not valid JSON".into(),
        field: None,
    })?;
    super::refuse_nul(&body, "body")?;
    let Some(Value::Array(slots)) = body.get("slots") else {
        return Err(ApiError::field("slots", "`slots` must be a list of slot names"));
    };
    if slots.is_empty() || slots.len() > MAX_SLOTS_PER_REQUEST {
        return Err(ApiError::field("slots", format!("`slots` must name from 1 to {MAX_SLOTS_PER_REQUEST} slots")));
    }
    let names = slots
        .iter()
        .enumerate()
        .map(|(i, s)| match s {
            Value::String(name) => Ok(name.clone()),
            Value::Object(o) => match o.get("slot") {
                Some(Value::String(name)) => Ok(name.clone()),
                _ => Err(ApiError::field(format!("slots[{i}].slot"), "each slot object needs a `slot` name")),
            },
            _ => Err(ApiError::field(format!("slots[{i}]"), "each entry is a slot name")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Each name costs a plugin call: asking for one twice would only double the cost.
    if let Some(i) = names.iter().enumerate().position(|(i, name)| names[..i].contains(name)) {
        return Err(ApiError::field(format!("slots[{i}]"), format!("`{}` is asked for twice", names[i])));
    }
    optional_text(body.get("anonymousId"), "anonymousId")?;
    let visitor = verify(&state, &Claim::from_body(&body, &headers)?).await;
    let url = optional_text_of(body.get("url"), "url", MAX_URL_BYTES)?;
    let store = state.ingestion.as_deref().map(|i| &*i.store);
    let now = state.clock.now();
    let mut decisions = Vec::with_capacity(names.len());
    for name in names {
        // An unknown slot must not cost the page its other slots.
        decisions.push(match state.tiles.decide(&state.registry, store, &name, &visitor, url.clone(), now).await {
            Some(answer) => answer,
            None => json!({"slot": name, "error": format!("no tile slot `{name}`"), "fallback": true, "tiles": []}),
        });
    }
    Ok(with_token(cached(&headers, &json!({ "decisions": decisions })), visitor_token(&state, &visitor).await))
}

/// The plugins, customer data and tiles the edge functions read; a 503 without customer data.
fn edge_sources(state: &AppState) -> Result<EdgeSources<'_>, ApiError> {
    Ok(EdgeSources { registry: &state.registry, store: &state.customer_data()?.store, tiles: &state.tiles })
}
