//! One-click unsubscribe (RFC 8058), public: `POST /v1/unsubscribe/{token}` is what a mail
//! client's unsubscribe button and the page's button send, and it withdraws the consent
//! the link names, once, whatever is posted again. `GET` shows a page with that button
//! and changes nothing, since mail scanners follow every link in a message.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rekindle_journeys::unsubscribe::Subscription;
use serde_json::json;

use crate::{ApiError, AppState};

/// The public routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/unsubscribe/{token}", post(unsubscribe).get(page))
}

/// The page's policy: nothing but itself, no script, forms only back here.
const POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn opened(state: &AppState, token: &str) -> Result<Subscription, ApiError> {
    let links = state.links.as_ref().ok_or(ApiError::Unavailable("unsubscribe links are not configured on this host"))?;
    links.key.open(token).map_err(|e| ApiError::BadRequest { code: "bad_link", message: e.to_string(), field: Some("token".into()) })
}

fn html_page(status: StatusCode, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>Unsubscribe</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}button{{font:inherit;padding:.5rem 1rem}}</style>\
         </head><body>{body}</body></html>"
    );
    (status, [(header::CONTENT_SECURITY_POLICY, POLICY), (header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

/// What the link unsubscribes from, in words; the purpose is one of a fixed set, so the
/// page holds no text anyone else wrote.
fn what(subscription: &Subscription) -> String {
    format!("{} messages", subscription.purpose.name())
}

async fn page(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match opened(&state, &token) {
        Ok(subscription) => html_page(
            StatusCode::OK,
            &format!(
                "<h1>Unsubscribe</h1><p>Stop {} from us?</p><form method=\"post\"><button type=\"submit\">Unsubscribe</button></form>",
                what(&subscription)
            ),
        ),
        Err(ApiError::BadRequest { .. }) => {
            html_page(StatusCode::BAD_REQUEST, "<h1>This link does not work</h1><p>It may have been cut or changed. Use the link in the message itself.</p>")
        }
        Err(other) => other.into_response(),
    }
}

async fn unsubscribe(State(state): State<AppState>, Path(token): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let subscription = opened(&state, &token)?;
    let ingestion = state.customer_data()?;
    let now = rekindle_store::now_ms();
    let outcome = ingestion.store.unsubscribe(&subscription.profile_id, subscription.purpose, &subscription.send_key, &subscription.channel, now).await?;
    let changed = match outcome {
        // Erased since: there is nobody left to send to, which is what was asked.
        None => false,
        Some((changed, touched)) => {
            if let Some(realtime) = &state.realtime
                && !touched.is_empty()
            {
                let _ = realtime.sender.send(touched);
            }
            changed
        }
    };
    if changed {
        tracing::info!(channel = %subscription.channel, purpose = subscription.purpose.name(), "unsubscribed through a link");
    }
    let browser = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"));
    if browser {
        return Ok(html_page(StatusCode::OK, &format!("<h1>You are unsubscribed</h1><p>We will send you no more {}.</p>", what(&subscription))));
    }
    Ok(Json(json!({ "unsubscribed": subscription.purpose.name(), "changed": changed })).into_response())
}
