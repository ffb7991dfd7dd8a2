//! `GET` and `DELETE /v1/profiles/{id}`, consents, and the catalog; behind the admin token.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use rekindle_store::{Product, ProfileRecord, Purpose};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/profiles/{id}", get(read).delete(erase))
        .route("/v1/profiles/{id}/consents", post(consents))
        .route("/v1/profiles/{id}/contacts", post(contacts))
        .route("/v1/catalog/products", post(products))
}

/// An id from the path, which the databases take only without NUL characters.
fn id_from_path(id: &str) -> Result<&str, ApiError> {
    if id.contains('\0') {
        return Err(ApiError::field("id", "the id contains a NUL character"));
    }
    Ok(id)
}

fn rfc3339(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms).map_or(Value::Null, |t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    // Near f64::MAX scaling would overflow, and no such number has decimals to drop.
    let scaled = x * scale;
    if scaled.is_finite() { scaled.round() / scale } else { x }
}

/// The profile as the API shows it; `now` fixes the days-since figures.
pub(crate) fn profile_json(p: &ProfileRecord, now: i64) -> Value {
    let c = &p.computed;
    json!({
        "id": p.id,
        "user_ids": p.user_ids,
        "anonymous_ids": p.anonymous_ids,
        "created_at": rfc3339(p.created_at),
        "updated_at": rfc3339(p.updated_at),
        "timezone": p.timezone,
        "traits": Value::Object(p.traits.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect()),
        "computed": {
            "order_count": c.order_count,
            "lifetime_value": round(c.lifetime_value, 2),
            "first_order_at": c.first_order_at.map(rfc3339),
            "last_order_at": c.last_order_at.map(rfc3339),
            "avg_days_between_orders": c.avg_days_between_orders().map(|d| round(d, 2)),
            "days_since_last_order": c.days_since_last_order(now).map(|d| round(d, 2)),
            "favourite_category": c.favourite_category(),
        },
        "consents": Value::Object(p.consents.iter().map(|c| (c.purpose.name().to_string(),
            json!({ "granted": c.granted, "updated_at": rfc3339(c.updated_at) }))).collect()),
        "contacts": p.contacts.iter().map(|c| json!({
            "kind": c.kind, "address": c.address, "active": c.active, "updated_at": rfc3339(c.updated_at),
        })).collect::<Vec<_>>(),
        "segments": [],
        "recent_events": p.recent_events.iter().map(|e| json!({
            "name": e.name, "timestamp": rfc3339(e.timestamp), "properties": e.properties,
        })).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
struct ReadQuery {
    /// How many recent events to include.
    events: Option<usize>,
}

async fn read(State(state): State<AppState>, Path(id): Path<String>, Query(query): Query<ReadQuery>) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    let recent = query.events.unwrap_or(50).min(1000);
    let profile = store.profile(id_from_path(&id)?, recent).await?;
    let profile = profile.ok_or_else(|| ApiError::NotFound(format!("no profile for `{id}`")))?;
    let memberships = store.memberships(&profile.id).await?;
    let mut body = profile_json(&profile, rekindle_store::now_ms());
    body["segments"] = memberships
        .iter()
        .map(|m| json!({ "segment": m.segment, "label": m.label, "reason": m.reason, "since": rfc3339(m.since), "digest": m.digest }))
        .collect();
    Ok(Json(body))
}

async fn erase(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let store = &state.customer_data()?.store;
    if store.delete_profile(id_from_path(&id)?).await? {
        tracing::info!("erased a profile on request");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no profile for `{id}`")))
    }
}

async fn consents(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    let Value::Object(map) = super::json_body(&body)? else {
        return Err(ApiError::field("body", "send an object such as {\"email\": true, \"sms\": false}"));
    };
    let mut updates = Vec::new();
    for (name, granted) in &map {
        let purpose = Purpose::parse(name).ok_or_else(|| ApiError::field(name.clone(), format!("unknown purpose `{name}`; use email, sms, push or ads")))?;
        let granted = granted.as_bool().ok_or_else(|| ApiError::field(name.clone(), format!("`{name}` must be true or false")))?;
        updates.push((purpose, granted));
    }
    if !store.set_consents(id_from_path(&id)?, updates, rekindle_store::now_ms()).await? {
        return Err(ApiError::NotFound(format!("no profile for `{id}`")));
    }
    Ok(Json(json!({ "success": true })))
}

/// `{"kind": "push_token", "address": "...", "active": false}`: how delivery feedback
/// (a dead push token, a hard bounce) reaches the profile.
async fn contacts(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    let body = super::json_body(&body)?;
    let kind = match body.get("kind").and_then(Value::as_str) {
        Some(kind @ ("email" | "phone" | "push_token")) => kind,
        _ => return Err(ApiError::field("kind", "`kind` must be email, phone or push_token")),
    };
    let address = body
        .get("address")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::field("address", "`address` must be a non-empty string"))?;
    let address = if kind == "email" { address.to_lowercase() } else { address.to_string() };
    let active = body.get("active").and_then(Value::as_bool).ok_or_else(|| ApiError::field("active", "`active` must be true or false"))?;
    if !store.set_contact(id_from_path(&id)?, kind, &address, active, rekindle_store::now_ms()).await? {
        return Err(ApiError::NotFound(format!("no profile for `{id}`")));
    }
    Ok(Json(json!({ "success": true })))
}

fn product(item: &Value, at: &str) -> Result<Product, ApiError> {
    let Value::Object(map) = item else { return Err(ApiError::field(at, format!("{at} must be an object"))) };
    let text = |key: &str, required: bool| -> Result<Option<String>, ApiError> {
        match map.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            None | Some(Value::Null) if !required => Ok(None),
            _ => Err(ApiError::field(format!("{at}.{key}"), format!("{at}.{key} must be a non-empty string"))),
        }
    };
    let id = text("id", true)?.unwrap_or_default();
    let name = text("name", true)?.unwrap_or_default();
    let price = match map.get("price") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_f64().is_some_and(|p| p >= 0.0) => n.as_f64(),
        _ => return Err(ApiError::field(format!("{at}.price"), format!("{at}.price must be a number of at least 0"))),
    };
    let in_stock = match map.get("in_stock") {
        None => true,
        Some(Value::Bool(b)) => *b,
        _ => return Err(ApiError::field(format!("{at}.in_stock"), format!("{at}.in_stock must be true or false"))),
    };
    // Products are recommended in emails and on the shop's pages: links follow the tiles' rule.
    let link = |key: &str| -> Result<Option<String>, ApiError> {
        let value = text(key, false)?;
        match &value {
            Some(url) if !rekindle_tiles::catalog::is_safe_link(url) => {
                Err(ApiError::field(format!("{at}.{key}"), format!("{at}.{key} {}", rekindle_tiles::catalog::SAFE_LINK)))
            }
            _ => Ok(value),
        }
    };
    Ok(Product { id, name, category: text("category", false)?, price, url: link("url")?, image: link("image")?, in_stock })
}

async fn products(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    let value = super::json_body(&body)?;
    let items = match &value {
        Value::Array(items) => items.clone(),
        Value::Object(map) => match map.get("products") {
            Some(Value::Array(items)) => items.clone(),
            _ => vec![value.clone()],
        },
        _ => return Err(ApiError::field("products", "send a product, an array of products, or {\"products\": [...]}")),
    };
    let products = items.iter().enumerate().map(|(i, p)| product(p, &format!("products[{i}]"))).collect::<Result<Vec<_>, _>>()?;
    let n = store.upsert_products(products).await?;
    Ok(Json(json!({ "success": true, "upserted": n })))
}
