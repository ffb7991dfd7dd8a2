//! Segment definitions and their members: `POST/GET /v1/segments`,
//! `GET /v1/segments/{name}/members`; behind the admin token.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use rekindle_store::SegmentDefinition;
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::require_token;
use crate::evaluate::{EvaluateError, evaluate_segment, segment_context};
use crate::{ApiError, AppState, Ingestion};

const SCHEDULES: [&str; 4] = ["realtime", "daily", "weekly", "biweekly"];

pub(crate) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/segments", get(list).post(define))
        .route("/v1/segments/{name}/members", get(members))
        .route_layer(axum::middleware::from_fn_with_state(state, require_token))
}

fn ingestion(state: &AppState) -> Result<&Ingestion, ApiError> {
    state.ingestion.as_deref().ok_or(ApiError::Unavailable("customer data is not configured on this host"))
}

/// A definition from JSON, every field checked, the rule's parameters included.
fn definition(state: &AppState, body: &Value) -> Result<SegmentDefinition, ApiError> {
    let text = |key: &str| -> Result<String, ApiError> {
        match body.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 200 => Ok(s.trim().to_string()),
            _ => Err(ApiError::field(key, format!("`{key}` must be a non-empty string of at most 200 characters"))),
        }
    };
    let name = text("name")?;
    let slot = text("slot")?;
    let schedule = match body.get("schedule") {
        None => "daily".to_string(),
        Some(Value::String(s)) if SCHEDULES.contains(&s.as_str()) => s.clone(),
        Some(other) => return Err(ApiError::field("schedule", format!("`schedule` must be one of {SCHEDULES:?}, got {other}"))),
    };
    let params = match body.get("params") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(map)) => Value::Object(map.clone()),
        Some(_) => return Err(ApiError::field("params", "`params` must be an object")),
    };
    let def = SegmentDefinition { name, slot, params, schedule };
    // Resolving the rule and merging the parameters now reports a bad definition at once.
    segment_context(&state.registry, &def, 0).map_err(|e| match e {
        EvaluateError::Definition(message) if message.starts_with("slot") => ApiError::field("slot", message),
        other => ApiError::field("params", other.to_string()),
    })?;
    Ok(def)
}

async fn define(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let store = &ingestion(&state)?.store;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest { code: "malformed_json", message: format!("the body is not valid JSON: {e}"), field: None })?;
    let def = definition(&state, &body)?;
    store.upsert_segment(def.clone()).await.map_err(|e| ApiError::Store(e.to_string()))?;
    // Backfill: evaluate the new definition over every stored profile.
    let now = rekindle_store::now_ms();
    let (mut after, mut evaluated, mut failed) = (String::new(), 0usize, 0usize);
    loop {
        let page = store.profile_ids(&after, 500).await.map_err(|e| ApiError::Store(e.to_string()))?;
        let Some(last) = page.last().cloned() else { break };
        for id in &page {
            match evaluate_segment(&state.registry, store, &def, id, now).await {
                Ok(_) => evaluated += 1,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(segment = def.name, "backfill skipped a profile: {e}");
                }
            }
        }
        after = last;
    }
    let members = count_members(store, &def.name).await?;
    tracing::info!(segment = def.name, evaluated, failed, members, "segment defined and backfilled");
    Ok(Json(json!({ "segment": def, "evaluated": evaluated, "failed": failed, "members": members })))
}

async fn count_members(store: &rekindle_store::Store, segment: &str) -> Result<usize, ApiError> {
    let (mut after, mut count) = (String::new(), 0);
    loop {
        let page = store.members(segment, &after, 1000).await.map_err(|e| ApiError::Store(e.to_string()))?;
        let Some(last) = page.last() else { return Ok(count) };
        count += page.len();
        after = last.profile_id.clone();
    }
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let store = &ingestion(&state)?.store;
    let segments = store.segments().await.map_err(|e| ApiError::Store(e.to_string()))?;
    Ok(Json(json!({ "segments": segments })))
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

async fn members(State(state): State<AppState>, Path(name): Path<String>, Query(page): Query<Page>) -> Result<Json<Value>, ApiError> {
    let store = &ingestion(&state)?.store;
    if !store.segments().await.map_err(|e| ApiError::Store(e.to_string()))?.iter().any(|s| s.name == name) {
        return Err(ApiError::NotFound(format!("no segment named `{name}`")));
    }
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let members = store.members(&name, page.after.as_deref().unwrap_or(""), limit).await.map_err(|e| ApiError::Store(e.to_string()))?;
    let next = (members.len() == limit).then(|| members.last().map(|m| m.profile_id.clone())).flatten();
    Ok(Json(json!({ "segment": name, "members": members, "next": next })))
}
