//! `GET /health`: liveness plus what is loaded.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    let slots = state.registry.slots();
    let active = slots.iter().filter(|s| s.active.is_some()).count();
    Json(json!({ "status": "ok", "slots": slots.len(), "active_slots": active }))
}
