//! Providers' delivery webhooks, `POST /v1/feedback/{channel}`, public since the providers
//! call it and believed only when their signature holds; and the suppressions they switch
//! on, `GET /v1/suppressions` (JSON or CSV) and `DELETE /v1/suppressions/{id}` to lift one,
//! behind the admin token.

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use rekindle_journeys::{FeedbackError, Webhook};
use rekindle_store::{FeedbackRefusal, Suppression};
use serde_json::{Value, json};

use crate::{ApiError, AppState};

/// The largest webhook body taken; SendGrid's batches stay well under it.
pub const MAX_WEBHOOK_BYTES: usize = 4 << 20;

/// The most suppressions one page lists.
const MAX_PAGE: usize = 10_000;

/// The public webhook route.
pub(crate) fn public_router() -> Router<AppState> {
    Router::new().route("/v1/feedback/{channel}", post(receive)).layer(axum::extract::DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
}

/// The operator's routes.
pub(crate) fn admin_router() -> Router<AppState> {
    Router::new().route("/v1/suppressions", get(list)).route("/v1/suppressions/{id}", delete(lift).post(lift))
}

/// The URL the provider called, as it signed it: the configured public URL when there is
/// one (behind a proxy the host cannot see the outside scheme and host), else this request's
/// `Host`.
fn called_url(state: &AppState, uri: &axum::http::Uri, headers: &HeaderMap) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    match &state.public_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            format!("http://{host}{path}")
        }
    }
}

fn refused(status: StatusCode, code: &'static str, message: String) -> ApiError {
    ApiError::Refused { status, code, message, field: None }
}

fn feedback_error(channel: &str, e: FeedbackError) -> ApiError {
    match e {
        FeedbackError::UnknownChannel(_) | FeedbackError::NoFeedback(_) => ApiError::NotFound(e.to_string()),
        FeedbackError::MissingSecret { .. } => {
            // The provider is doing its part; the operator has not configured the secret,
            // whose name is for the log, not for whoever calls.
            tracing::warn!(channel, "webhook refused: {e}");
            refused(StatusCode::SERVICE_UNAVAILABLE, "not_configured", "this channel's webhook secret is not configured".into())
        }
        FeedbackError::TooLarge(why) => ApiError::TooLarge(why),
        FeedbackError::BadSignature(why) => {
            tracing::info!(channel, "webhook refused: bad signature: {why}");
            refused(StatusCode::UNAUTHORIZED, "bad_signature", format!("the webhook's signature does not hold: {why}"))
        }
        FeedbackError::Unreadable(why) => {
            ApiError::BadRequest { code: "unreadable_webhook", message: format!("the channel's adapter cannot read this webhook: {why}"), field: None }
        }
        FeedbackError::AdapterFailed(why) => {
            tracing::warn!(channel, "the adapter failed on a webhook: {why}");
            refused(StatusCode::BAD_GATEWAY, "adapter_failed", format!("the channel's adapter failed on this webhook: {why}"))
        }
        FeedbackError::Busy(why) => refused(StatusCode::SERVICE_UNAVAILABLE, "busy", format!("try again later: {why}")),
    }
}

async fn receive(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let engine = state.journeys.as_deref().ok_or(ApiError::Unavailable("delivery feedback needs delivery channels: add [[channels]] to the config"))?;
    let ingestion = state.customer_data()?;
    let url = called_url(&state, &uri, &headers);
    // A header that is not text cannot be part of what the provider signed.
    let headers = headers.iter().filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))).collect();
    let now = rekindle_store::now_ms();
    let webhook = Webhook { url, headers, body: body.to_vec() };
    let read = engine.deliverer.read_feedback(&engine.registry, &channel, webhook, now).await.map_err(|e| feedback_error(&channel, e))?;
    let mut ignored: Vec<Value> = read
        .ignored
        .iter()
        .map(|(index, why)| {
            tracing::warn!(channel, index, "a report was left out: {why}");
            json!({"field": format!("reports[{index}]"), "reason": why})
        })
        .collect();
    let reports = read.writes.len();
    let mut report = match ingestion.store.record_feedback(&channel, read.writes, now).await? {
        Ok(report) => report,
        Err(FeedbackRefusal::UnknownSendKey { index, key }) => {
            return Err(ApiError::Refused {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "unknown_send",
                message: format!(
                    "report {index} is about send `{key}`, which this host never made on channel `{channel}`, and so is every other; nothing was recorded"
                ),
                field: Some(format!("reports[{index}].send_key")),
            });
        }
    };
    if reports > 0 && report.accepted == 0 {
        return Err(ApiError::Conflict(format!("all {reports} reports in this webhook were recorded before: a replay, and nothing changed")));
    }
    if let Some(realtime) = &state.realtime
        && !report.touched.is_empty()
    {
        // The evaluator outlives every request; a closed queue only means shutdown.
        let _ = realtime.sender.send(std::mem::take(&mut report.touched));
    }
    ignored.extend(
        report
            .unknown
            .iter()
            .map(|index| json!({"field": format!("reports[{index}].send_key"), "reason": format!("no send under this key was made on channel `{channel}`")})),
    );
    tracing::debug!(channel, accepted = report.accepted, duplicates = report.duplicates, suppressed = report.suppressed, "feedback");
    let mut answer = json!({ "accepted": report.accepted, "duplicates": report.duplicates, "suppressed": report.suppressed });
    if !ignored.is_empty() {
        // Taken, minus these: said, so nothing is lost silently.
        answer["ignored"] = Value::Array(ignored);
    }
    Ok(Json(answer))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    after: Option<i64>,
    limit: Option<usize>,
    all: Option<bool>,
}

/// The suppressions holding now (every one, lifted and expired too, with `all=true`),
/// oldest first, from the id after `after`; CSV with `Accept: text/csv`.
async fn list(State(state): State<AppState>, headers: HeaderMap, Query(page): Query<Page>) -> Result<Response, ApiError> {
    let store = &state.customer_data()?.store;
    let limit = page.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::field("limit", format!("`limit` must be between 1 and {MAX_PAGE}")));
    }
    let rows = store.suppressions(page.after.unwrap_or(0), limit, page.all.unwrap_or(false), rekindle_store::now_ms()).await?;
    let csv = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/csv"));
    if csv {
        return to_csv(&rows).map(|body| ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response());
    }
    let next = (rows.len() == limit).then(|| rows.last().map(|s| s.id)).flatten();
    Ok(Json(json!({ "suppressions": rows, "next_after": next })).into_response())
}

fn to_csv(rows: &[Suppression]) -> Result<String, ApiError> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let iso = |ms: Option<i64>| ms.and_then(chrono::DateTime::from_timestamp_millis).map(|t| t.to_rfc3339()).unwrap_or_default();
    let internal = |e: csv::Error| ApiError::Internal(format!("writing CSV: {e}"));
    out.write_record(["id", "profile_id", "kind", "target", "reason", "detail", "channel", "send_key", "at", "expires_at", "lifted_at", "lifted_by"])
        .map_err(internal)?;
    for s in rows {
        let record = [
            s.id.to_string(),
            s.profile_id.clone(),
            s.kind.clone(),
            s.target.clone(),
            s.reason.clone(),
            s.detail.clone().unwrap_or_default(),
            s.channel.clone().unwrap_or_default(),
            s.send_key.clone().unwrap_or_default(),
            iso(Some(s.at)),
            iso(s.expires_at),
            iso(s.lifted_at),
            s.lifted_by.clone().unwrap_or_default(),
        ];
        // A spreadsheet runs a cell starting with = + - @ as a formula; the text came from
        // providers and customers.
        out.write_record(record.iter().map(|cell| if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{cell}") } else { cell.clone() }))
            .map_err(internal)?;
    }
    String::from_utf8(out.into_inner().map_err(|e| ApiError::Internal(e.to_string()))?).map_err(|e| ApiError::Internal(e.to_string()))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Lift {
    by: Option<String>,
}

/// Lifts a live suppression; `by` (query) names who, for the record.
async fn lift(State(state): State<AppState>, Path(id): Path<String>, Query(lift): Query<Lift>) -> Result<Json<Value>, ApiError> {
    let store = &state.customer_data()?.store;
    let id: i64 = id.parse().map_err(|_| ApiError::field("id", format!("suppression id `{id}` is not a number")))?;
    let by = lift.by.unwrap_or_else(|| "operator".into());
    if by.chars().count() > 200 || by.chars().any(char::is_control) {
        return Err(ApiError::field("by", "`by` must be at most 200 characters, without control characters"));
    }
    let lifted = store.lift_suppression(id, &by, rekindle_store::now_ms()).await?.ok_or_else(|| ApiError::NotFound(format!("no live suppression {id}")))?;
    tracing::info!(id, profile = %lifted.profile_id, target = %lifted.target, by = %by, "suppression lifted");
    Ok(Json(json!({ "lifted": lifted })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_s_text_cannot_become_a_spreadsheet_formula() {
        let row = Suppression {
            id: 1,
            profile_id: "p".into(),
            kind: "contact".into(),
            target: "email:=cmd|'/c calc'!A1@x.example".into(),
            reason: "hard bounce".into(),
            detail: Some("=HYPERLINK(\"https://evil.example\")".into()),
            channel: Some("email".into()),
            send_key: Some("-1+1".into()),
            at: 0,
            expires_at: None,
            lifted_at: None,
            lifted_by: Some("@ops".into()),
        };
        let csv = to_csv(&[row]).unwrap();
        let cells: Vec<String> = csv::Reader::from_reader(csv.as_bytes()).records().next().unwrap().unwrap().iter().map(String::from).collect();
        assert_eq!(cells[5], "'=HYPERLINK(\"https://evil.example\")");
        assert_eq!(cells[7], "'-1+1");
        assert_eq!(cells[11], "'@ops");
        assert_eq!(cells[3], "email:=cmd|'/c calc'!A1@x.example", "only a leading character starts a formula");
        assert_eq!(cells[8], "1970-01-01T00:00:00+00:00");
    }
}
