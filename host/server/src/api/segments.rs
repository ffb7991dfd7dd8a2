//! Segment definitions and their members: `POST/GET /v1/segments`,
//! `GET /v1/segments/{name}/members`; behind the admin token.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use rekindle_store::SegmentDefinition;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::extract::JsonBody;
use crate::{ApiError, AppState};
use rekindle_segments::EvaluateError;
use rekindle_segments::definition::segment_context;
use rekindle_segments::preview::{PreviewRequest, preview as preview_rule};
use rekindle_segments::schedule::{Backfill, SegmentRun, member_count, run_planned};

const SCHEDULES: [&str; 4] = ["realtime", "daily", "weekly", "biweekly"];

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/segments", get(list).post(define))
        .route("/v1/segments/{name}/members", get(members))
        .route("/v1/segments/{name}/changes", get(changes))
        .route("/v1/segments/preview", axum::routing::post(preview))
        .route("/v1/segments/run", axum::routing::post(run_now))
}

/// A definition from JSON, every field checked, the rule's parameters included.
fn definition(state: &AppState, body: &Value) -> Result<SegmentDefinition, ApiError> {
    let text = |key: &str| -> Result<String, ApiError> {
        match body.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 200 => Ok(s.trim().to_string()),
            _ => Err(ApiError::field(key, format!("`{key}` must be a non-empty string of at most 200 characters"))),
        }
    };
    let name = if body.get("name").is_none() && body.get("preview").is_some() { "preview".to_string() } else { text("name")? };
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
    let def = SegmentDefinition { name, slot, params, schedule, last_run: None };
    // Resolving the rule and merging the parameters now reports a bad definition at once.
    segment_context(&state.registry, &def, 0).map_err(|e| match e {
        EvaluateError::Slot(message) => ApiError::field("slot", message),
        other => ApiError::field("params", other.to_string()),
    })?;
    Ok(def)
}

async fn define(State(state): State<AppState>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    define_segment(&state, &body).await.map(Json)
}

/// Validates, stores and backfills one segment definition given as JSON
/// (`{"name", "slot", "params"?, "schedule"?}`); the API and the config file both use it.
pub async fn define_segment(state: &AppState, body: &Value) -> Result<Value, ApiError> {
    let store = &state.customer_data()?.store;
    super::refuse_nul(body, "segment")?;
    let def = definition(state, body)?;
    let now = state.clock.now();
    let Backfill { evaluated, failed, members } = rekindle_segments::schedule::define(&state.registry, store, &def, now).await.map_err(|e| match e {
        EvaluateError::Store(e) => ApiError::from(e),
        other => ApiError::field("slot", other.to_string()),
    })?;
    let def = SegmentDefinition { last_run: Some(now), ..def };
    tracing::info!(segment = def.name, evaluated, failed, members, "segment defined and backfilled");
    Ok(json!({ "segment": def, "evaluated": evaluated, "failed": failed, "members": members }))
}

/// Re-evaluates segments over everyone now, as their schedule would: `{"segments": [names]}`,
/// or every segment when the body is empty. For operators after an import, and for the demo.
async fn run_now(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    let body: Value = if body.is_empty() { json!({}) } else { super::json_body(&body)? };
    let all = store.segments().await?;
    let wanted: Vec<SegmentDefinition> = match body.get("segments") {
        None | Some(Value::Null) => all,
        Some(Value::Array(names)) => {
            let mut picked = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let name = name.as_str().ok_or_else(|| ApiError::field(format!("segments[{i}]"), "each entry is a segment name"))?;
                let def = all.iter().find(|d| d.name == name).ok_or_else(|| ApiError::field(format!("segments[{i}]"), format!("no segment `{name}`")))?;
                picked.push(def.clone());
            }
            picked
        }
        Some(_) => return Err(ApiError::field("segments", "`segments` must be a list of segment names")),
    };
    let now = state.clock.now();
    let started = std::time::Instant::now();
    // A run like a scheduled one: its cutoffs become the ones everything else uses.
    let (plan, refused) = rekindle_segments::batch::Plan::new(&state.registry, store, &wanted, now, rekindle_segments::batch::Cutoffs::Refresh).await?;
    if let Some((name, e)) = refused.into_iter().next() {
        return Err(ApiError::field("segments", format!("segment `{name}` cannot run: {e}")));
    }
    let SegmentRun { report, segments } = run_planned(store, plan).await?;
    let mut results = Vec::new();
    for (name, (evaluated, failed)) in segments.iter().zip(&report.per_segment) {
        results.push(json!({"segment": name, "evaluated": evaluated, "failed": failed, "members": member_count(store, name).await?}));
    }
    Ok(Json(json!({"profiles": report.profiles, "changes": report.changes, "took_ms": started.elapsed().as_millis() as u64, "segments": results})))
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    let segments = store.segments().await?;
    Ok(Json(json!({ "segments": segments })))
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

async fn members(State(state): State<AppState>, Path(name): Path<String>, Query(page): Query<Page>) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    require_segment(store, &name).await?;
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let members = store.members(&name, page.after.as_deref().unwrap_or(""), limit).await?;
    let next = (members.len() == limit).then(|| members.last().map(|m| m.profile_id.clone())).flatten();
    Ok(Json(json!({ "segment": name, "members": members, "next": next })))
}

/// Who would qualify: evaluates a candidate slot and parameters as of any time over stored
/// history, without touching memberships, and compares with a defined segment's members.
///
/// Body: `{"slot", "params"?, "at"?, "compare"?: segment name, "sample"?: 10}`. With
/// `"limit"` it covers only that many profiles after `"after"` and returns the page's
/// member ids and the `next` cursor, so a client can show progress over a long run.
async fn preview(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    let mut body: Value = super::json_body(&body)?;
    body["preview"] = json!(true);
    let def = definition(&state, &body)?;
    let (at, replay) = match body.get("at") {
        None | Some(Value::Null) => (state.clock.now(), false),
        at => (rekindle_runtime::json::timestamp_from_json(at, "at")?, true),
    };
    let sample_size = body.get("sample").and_then(Value::as_u64).unwrap_or(10).min(100) as usize;
    let compare = match body.get("compare").and_then(Value::as_str) {
        Some(name) => match require_segment(store, name).await {
            Err(ApiError::NotFound(message)) => return Err(ApiError::field("compare", message)),
            other => other.map(|()| Some(name.to_string()))?,
        },
        None => None,
    };
    let paged = match body.get("limit") {
        None | Some(Value::Null) => None,
        Some(n) => Some(n.as_u64().filter(|n| (1..=1000).contains(n)).ok_or_else(|| ApiError::field("limit", "`limit` must be from 1 to 1000"))? as usize),
    };
    if paged.is_some() && compare.is_some() {
        return Err(ApiError::field("compare", "`compare` needs a whole run; page without it and compare the member ids"));
    }
    let after = body.get("after").and_then(Value::as_str).unwrap_or("").to_string();
    let first_page = after.is_empty();
    let request = PreviewRequest { def, at, replay, sample_size, page: paged, after, compare };
    let found = preview_rule(&state.registry, store, &request).await.map_err(|e| match e {
        EvaluateError::Store(e) => ApiError::from(e),
        EvaluateError::Call(e) => ApiError::Plugin(e),
        other => ApiError::field("slot", other.to_string()),
    })?;
    let sample: Vec<Value> = found.sample.iter().map(|m| json!({ "profile_id": m.profile_id, "reason": m.reason, "label": m.label })).collect();
    let mut answer = json!({
        "slot": request.def.slot, "at": rekindle_runtime::json::timestamp_to_json(at), "digest": found.digest,
        "evaluated": found.evaluated, "failed": found.failed, "count": found.members.len(), "sample": sample,
    });
    if paged.is_some() {
        answer["member_ids"] = json!(found.members);
        answer["next"] = json!(found.next);
        if first_page {
            let counts = store.table_counts().await?;
            answer["total_profiles"] = json!(counts.iter().find(|(t, _)| t == "profiles").map_or(0, |(_, n)| *n));
        }
    }
    if let Some(c) = &found.compare {
        answer["compare"] = json!({
            "segment": c.segment, "current": c.current, "enters": c.enters.len(), "leaves": c.leaves.len(),
            "enter_sample": c.enters.iter().take(sample_size).collect::<Vec<_>>(),
            "leave_sample": c.leaves.iter().take(sample_size).collect::<Vec<_>>(),
        });
    }
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct ChangesPage {
    after: Option<i64>,
    limit: Option<usize>,
}

/// Entries and exits in order, read on with `after` = the last `id` seen.
async fn changes(State(state): State<AppState>, Path(name): Path<String>, Query(page): Query<ChangesPage>) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    require_segment(store, &name).await?;
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let changes = store.changes(&name, page.after.unwrap_or(0), limit).await?;
    let next = changes.last().map(|c| c.id);
    Ok(Json(json!({ "segment": name, "changes": changes, "next": next })))
}

/// A 404 unless a segment of that name is defined.
async fn require_segment(store: &rekindle_store::Store, name: &str) -> Result<(), ApiError> {
    if store.segments().await?.iter().any(|s| s.name == name) { Ok(()) } else { Err(ApiError::NotFound(format!("no segment named `{name}`"))) }
}
