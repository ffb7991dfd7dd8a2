//! The admin API, behind a bearer token: upload components into slots, activate a version,
//! roll back, list slots, and invoke a slot's plugin with a JSON input to try it.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use rekindle_runtime::InvokeError;
use rekindle_runtime::json::{self, info_to_json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::extract::{JsonBody, json_body};
use crate::{ApiError, AppState};

/// Components are small, but partners' adapters may bundle tables; 32 MiB is ample.
const MAX_COMPONENT_BYTES: usize = 32 << 20;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/slots", get(list_slots))
        .route("/admin/slots/{slot}/versions", post(upload).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)))
        .route("/admin/slots/{slot}/activate", post(activate))
        .route("/admin/slots/{slot}/rollback", post(rollback))
        .route("/admin/slots/{slot}", get(describe))
        .route("/admin/slots/{slot}/invoke", post(invoke))
        .route("/admin/slots/{slot}/evaluate/{profile}", post(evaluate_stored))
}

async fn list_slots(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "slots": state.registry.slots() }))
}

#[derive(Deserialize)]
struct UploadQuery {
    #[serde(default)]
    activate: bool,
}

async fn upload(
    State(state): State<AppState>,
    Path(slot): Path<String>,
    Query(query): Query<UploadQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if body.is_empty() {
        return Err(ApiError::field("body", "the request body must be the component's bytes"));
    }
    let registry = state.registry.clone();
    let (slot, uploaded) = blocking(move || {
        let _write = state.admin_write();
        let uploaded = registry.upload(&slot, &body)?;
        if let Some(store) = &state.slot_store {
            store.record_upload(&slot, &uploaded.digest, &body).map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        let uploaded = if query.activate {
            let active = registry.activate(&slot, uploaded.version)?;
            if let Some(store) = &state.slot_store {
                store.record_activate(&slot, &active.digest).map_err(|e| ApiError::Internal(e.to_string()))?;
            }
            active
        } else {
            uploaded
        };
        Ok::<_, ApiError>((slot, uploaded))
    })
    .await??;
    tracing::info!(slot, version = uploaded.version, digest = uploaded.digest, "component uploaded");
    Ok((StatusCode::CREATED, Json(json!({ "slot": slot, "version": uploaded }))))
}

#[derive(Deserialize)]
struct ActivateBody {
    version: u32,
}

async fn activate(State(state): State<AppState>, Path(slot): Path<String>, JsonBody(value): JsonBody) -> Result<Json<Value>, ApiError> {
    let ActivateBody { version } = serde_json::from_value(value).map_err(|_| ApiError::field("version", "`version` must be a positive whole number"))?;
    let _write = state.admin_write();
    let active = state.registry.activate(&slot, version)?;
    if let Some(store) = &state.slot_store {
        store.record_activate(&slot, &active.digest).map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    tracing::info!(slot, version, "version activated");
    Ok(Json(json!({ "slot": slot, "active": active })))
}

async fn rollback(State(state): State<AppState>, Path(slot): Path<String>) -> Result<Json<Value>, ApiError> {
    let _write = state.admin_write();
    let active = state.registry.rollback(&slot)?;
    if let Some(store) = &state.slot_store {
        store.record_rollback(&slot).map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    tracing::info!(slot, version = active.version, "rolled back");
    Ok(Json(json!({ "slot": slot, "active": active })))
}

async fn describe(State(state): State<AppState>, Path(slot): Path<String>) -> Result<Json<Value>, ApiError> {
    let plugin = state.registry.get(&slot).map_err(ApiError::Plugin)?;
    Ok(Json(json!({ "slot": slot, "digest": plugin.digest(), "describe": info_to_json(plugin.info()) })))
}

async fn invoke(State(state): State<AppState>, Path(slot): Path<String>, JsonBody(mut input): JsonBody) -> Result<Json<Value>, ApiError> {
    crate::derive_aggregates(&mut input);
    let plugin = state.registry.get(&slot).map_err(ApiError::Plugin)?;
    let mut answer = plugin.call(None, move |p| Ok(rekindle_runtime::invoke(p, &input))).await.map_err(ApiError::Plugin)?.map_err(|e| match e {
        InvokeError::Input(e) => ApiError::from(e),
        InvokeError::Param(e) => ApiError::from(e),
        InvokeError::Call(e) => ApiError::Plugin(e),
    })?;
    answer["plugin"] = json!({ "name": plugin.info().name(), "version": plugin.info().version(), "digest": plugin.digest() });
    Ok(Json(answer))
}

/// Evaluates a rule slot for a stored profile, as segment evaluation will: the rule gets
/// exactly what it declared, read from the store. The body may set `now` and `params`.
async fn evaluate_stored(State(state): State<AppState>, Path((slot, profile_id)): Path<(String, String)>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let ingestion = state.customer_data()?;
    let options = if body.is_empty() { json!({}) } else { json_body(&body)? };
    let plugin = state.registry.get(&slot).map_err(ApiError::Plugin)?;
    let rekindle_runtime::PluginInfo::Rule(info) = plugin.info() else {
        return Err(ApiError::Conflict(format!("slot `{slot}` holds a {} plugin, not a segment rule", plugin.kind())));
    };
    let now = match options.get("now") {
        None | Some(Value::Null) => state.clock.now(),
        at => json::timestamp_from_json(at, "now")?,
    };
    let overrides = json::fields_from_json(options.get("params"), "params")?;
    let ctx = rekindle_runtime::wit::Context { now, params: rekindle_runtime::merge_params(&info.params, &overrides)? };
    // Another time sees the customer as they were then: computed traits refolded from the
    // orders up to `now`, as an event-reading rule would have seen only those.
    let replay = now != state.clock.now();
    let profile = rekindle_segments::profile::profile_at(&ingestion.store, &profile_id, &info.input, now, replay)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no profile for `{profile_id}`")))?;
    let verdict = plugin.call(None, move |p| p.evaluate(&ctx, &profile)).await.map_err(ApiError::Plugin)?;
    Ok(Json(json!({
        "verdict": json::verdict_to_json(&verdict),
        "plugin": { "name": plugin.info().name(), "version": plugin.info().version(), "digest": plugin.digest() },
    })))
}

/// Runs work that blocks (compiling a component) off the async workers.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(format!("plugin task failed: {e}")))
}
