//! Segment-compatible ingestion: `POST /v1/{track,identify,page,screen,group,alias,batch}`
//! with a source's write key as the Basic-auth user name, gzip bodies, Segment's size
//! limits and `messageId` deduplication.

use std::io::Read;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use rekindle_store::{Message, MessageKind};
use serde_json::{Value, json};

use super::tracking_api::{MAX_BATCH_BYTES, MAX_MESSAGE_BYTES, parse_message};
use crate::{ApiError, AppState, Ingestion, Source};

pub(crate) fn router() -> Router<AppState> {
    let single = |kind: MessageKind| post(move |state, headers, body| ingest_one(state, headers, body, kind));
    Router::new()
        .route("/v1/track", single(MessageKind::Track))
        .route("/v1/identify", single(MessageKind::Identify))
        .route("/v1/page", single(MessageKind::Page))
        .route("/v1/screen", single(MessageKind::Screen))
        .route("/v1/group", single(MessageKind::Group))
        .route("/v1/alias", single(MessageKind::Alias))
        .route("/v1/batch", post(ingest_batch))
        // Segment's clients also post batches here.
        .route("/v1/import", post(ingest_batch))
}

/// The source whose write key the request carries (Basic auth user name, or `writeKey`).
fn source<'a>(ingestion: &'a Ingestion, headers: &HeaderMap, body: &Value) -> Result<&'a Source, ApiError> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .map(|pair| pair.split_once(':').map_or(pair.clone(), |(user, _)| user.to_string()));
    let key = from_header.or_else(|| body.get("writeKey").and_then(Value::as_str).map(str::to_string));
    let Some(key) = key else {
        return Err(ApiError::Unauthorized("send the source's write key as the Basic-auth user name"));
    };
    ingestion.sources.get(&key).ok_or(ApiError::Unauthorized("unknown write key"))
}

/// The body as JSON, gunzipped when sent with `Content-Encoding: gzip`, within `limit` bytes.
fn decode(headers: &HeaderMap, body: &[u8], limit: usize) -> Result<Value, ApiError> {
    let gzip = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let too_large = |size: String| ApiError::TooLarge(format!("the request is {size} bytes; the limit is {limit} bytes"));
    let raw: std::borrow::Cow<'_, [u8]> = if gzip {
        let mut out = Vec::new();
        // Read one byte past the limit, so a gzip bomb stops there.
        flate2::read::GzDecoder::new(body).take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| ApiError::BadRequest {
            code: "malformed_gzip",
            message: format!("the gzip body cannot be read: {e}"),
            field: None,
        })?;
        out.into()
    } else {
        body.into()
    };
    if raw.len() > limit {
        return Err(too_large(if gzip { format!("over {limit} (decompressed)") } else { raw.len().to_string() }));
    }
    serde_json::from_slice(&raw).map_err(|e| ApiError::BadRequest { code: "malformed_json", message: format!("the body is not valid JSON: {e}"), field: None })
}

/// Stores the messages; `at(i)` names message `i` (`batch[2]`) for what was ignored.
async fn store(state: &AppState, messages: Vec<Message>, at: impl Fn(usize) -> String) -> Result<Json<Value>, ApiError> {
    let ingestion = state.customer_data()?;
    let mut report = ingestion.store.ingest(messages).await?;
    if let Some(realtime) = &state.realtime
        && !report.touched.is_empty()
    {
        // The evaluator outlives every request; a closed queue only means shutdown.
        let _ = realtime.sender.send(std::mem::take(&mut report.touched));
    }
    tracing::debug!(accepted = report.accepted, duplicates = report.duplicates, "ingested");
    if report.ignored.is_empty() {
        return Ok(Json(json!({ "success": true })));
    }
    // Accepted, minus the changes this key may not make: say which, so nothing is lost
    // silently, without failing the events that came with them.
    let ignored: Vec<Value> = report.ignored.iter().map(|i| json!({"field": format!("{}.{}", at(i.index), i.field), "reason": i.reason})).collect();
    Ok(Json(json!({ "success": true, "ignored": ignored })))
}

async fn ingest_one(State(state): State<AppState>, headers: HeaderMap, body: Bytes, kind: MessageKind) -> Result<Json<Value>, ApiError> {
    let ingestion = state.customer_data()?;
    let value = decode(&headers, &body, MAX_MESSAGE_BYTES)?;
    let source = source(ingestion, &headers, &value)?;
    let message = parse_message(&value, Some(kind), "message", source, rekindle_store::now_ms(), None)?;
    store(&state, vec![message], |_| "message".to_string()).await
}

async fn ingest_batch(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, ApiError> {
    let ingestion = state.customer_data()?;
    let value = decode(&headers, &body, MAX_BATCH_BYTES)?;
    let source = source(ingestion, &headers, &value)?;
    let Some(Value::Array(items)) = value.get("batch") else {
        return Err(ApiError::field("batch", "`batch` must be an array of messages"));
    };
    let received_at = rekindle_store::now_ms();
    let sent_at = match value.get("sentAt").and_then(Value::as_str) {
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| ApiError::field("sentAt", format!("`sentAt` is not an ISO 8601 time: {s:?}")))?
                .timestamp_millis(),
        ),
        None => None,
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("batch[{i}]");
        let size = serde_json::to_vec(item).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_MESSAGE_BYTES {
            return Err(ApiError::TooLarge(format!("{at} is {size} bytes; a message may be at most {MAX_MESSAGE_BYTES} bytes")));
        }
        messages.push(parse_message(item, None, &at, source, received_at, sent_at)?);
    }
    store(&state, messages, |i| format!("batch[{i}]")).await
}
