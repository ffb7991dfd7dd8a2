//! Journeys over HTTP, behind the admin token: deploy a journey (its TOML as the body),
//! list them, and read a journey's runs and log.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::extract::JsonBody;
use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/journeys", post(deploy).get(list))
        .route("/v1/journeys/{name}/runs", get(runs))
        .route("/v1/journeys/{name}/log", get(log))
        .route("/v1/journeys/{name}/entries", post(enter))
}

fn engine(state: &AppState) -> Result<&rekindle_journeys::Engine, ApiError> {
    state.journeys.as_deref().ok_or(ApiError::Unavailable("journeys need delivery channels: add [[channels]] to the config"))
}

async fn deploy(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let source = std::str::from_utf8(&body).ok().filter(|text| !text.contains('\0')).ok_or_else(|| ApiError::BadRequest {
        code: "malformed_toml",
        message: "the body must be UTF-8 TOML without NUL characters".into(),
        field: None,
    })?;
    let journey = engine(&state)?.deploy(source).await.map_err(ApiError::deploy)?;
    Ok(Json(json!({"deployed": journey.name, "steps": journey.steps.len()})))
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    let journeys: Vec<Value> = store.journeys().await?.into_iter().map(|j| json!({"name": j.name, "entry_cursor": j.entry_cursor})).collect();
    Ok(Json(json!({ "journeys": journeys })))
}

async fn runs(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let runs = state.customer_data()?.store.journey_runs(&name).await?;
    Ok(Json(json!({ "runs": runs })))
}

async fn log(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let log = state.customer_data()?.store.journey_log(&name).await?;
    Ok(Json(json!({ "log": log })))
}

/// Puts someone into an API-entry journey: `{"userId"}` (or `anonymousId`, or a profile id).
async fn enter(State(state): State<AppState>, Path(name): Path<String>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let id = ["userId", "anonymousId", "profileId"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str))
        .ok_or_else(|| ApiError::field("userId", "name the person with `userId`, `anonymousId` or `profileId`"))?;
    let started = engine(&state)?.enter_by_api(&name, id, state.clock.now()).await?;
    Ok(Json(json!({ "started": started })))
}
