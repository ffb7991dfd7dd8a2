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
use rekindle_segments::definition::parse_definition;
use rekindle_segments::preview::{PreviewRequest, preview as preview_rule};
use rekindle_segments::schedule::{Backfill, run_now as run_now_segments};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/segments", get(list).post(define))
        .route("/v1/segments/{name}/members", get(members))
        .route("/v1/segments/{name}/changes", get(changes))
        .route("/v1/segments/preview", axum::routing::post(preview))
        .route("/v1/segments/run", axum::routing::post(run_now))
}

async fn define(State(state): State<AppState>, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    define_segment(&state, &body).await.map(Json)
}

/// Validates, stores and backfills one segment definition given as JSON
/// (`{"name", "slot", "params"?, "schedule"?}`); the API and the config file both use it.
pub async fn define_segment(state: &AppState, body: &Value) -> Result<Value, ApiError> {
    let store = &state.customer_data()?.store;
    super::refuse_nul(body, "segment")?;
    let def = parse_definition(&state.registry, body)?;
    let now = state.clock.now();
    let Backfill { evaluated, failed, members } = rekindle_segments::schedule::define(&state.registry, store, &def, now).await?;
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
    let started = std::time::Instant::now();
    let run = run_now_segments(&state.registry, store, &wanted, state.clock.now()).await?;
    let results: Vec<Value> =
        run.segments.iter().map(|s| json!({"segment": s.segment, "evaluated": s.evaluated, "failed": s.failed, "members": s.members})).collect();
    Ok(Json(json!({"profiles": run.profiles, "changes": run.changes, "took_ms": started.elapsed().as_millis() as u64, "segments": results})))
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
    let def = parse_definition(&state.registry, &body)?;
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
    let request = PreviewRequest { def, at, replay, sample_size, page: paged, after, compare };
    let found = preview_rule(&state.registry, store, &request).await?;
    let sample: Vec<Value> = found.sample.iter().map(|m| json!({ "profile_id": m.profile_id, "reason": m.reason, "label": m.label })).collect();
    let mut answer = json!({
        "slot": request.def.slot, "at": rekindle_runtime::json::timestamp_to_json(at), "digest": found.digest,
        "evaluated": found.evaluated, "failed": found.failed, "count": found.members.len(), "sample": sample,
    });
    if paged.is_some() {
        answer["member_ids"] = json!(found.members);
        answer["next"] = json!(found.next);
        if let Some(total) = found.total_profiles {
            answer["total_profiles"] = json!(total);
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
