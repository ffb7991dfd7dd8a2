//! The HTTP API, one module per area.

pub(crate) mod admin;
pub(crate) mod health;
pub(crate) mod ingest;
pub(crate) mod journeys;
pub(crate) mod profiles;
pub mod segments;
pub(crate) mod tiles;
pub(crate) mod tracking_api;

use axum::Router;
use serde_json::Value;

use crate::ApiError;
use crate::state::AppState;

/// A request body as JSON, in our error shape when it is not, and without NUL characters,
/// which PostgreSQL cannot store.
pub(crate) fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    let value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest { code: "malformed_json", message: format!("the body is not valid JSON: {e}"), field: None })?;
    refuse_nul(&value, "body")?;
    Ok(value)
}

/// Refuses a NUL character anywhere in `value`, naming where.
pub(crate) fn refuse_nul(value: &Value, path: &str) -> Result<(), ApiError> {
    match value {
        Value::String(s) if s.contains('\0') => Err(ApiError::field(path, format!("{path}: contains a NUL character"))),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, v)| refuse_nul(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let at = format!("{path}.{k}");
            if k.contains('\0') {
                return Err(ApiError::field(&at, format!("{at}: a key contains a NUL character")));
            }
            refuse_nul(v, &at)
        }),
        _ => Ok(()),
    }
}

/// The whole HTTP API over `state`, starting nothing: see [`crate::app`] for the host.
pub fn router(state: AppState) -> Router {
    // Browsers on the configured origins call decisions and send events; nothing else.
    let cors = (!state.tile_origins.is_empty()).then(|| {
        use axum::http::{HeaderName, Method, header};
        let origins: Vec<axum::http::HeaderValue> = state.tile_origins.iter().filter_map(|o| o.parse().ok()).collect();
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, header::IF_NONE_MATCH, HeaderName::from_static("content-encoding")])
            .expose_headers([header::ETAG, HeaderName::from_static("x-rekindle-token")])
    });
    let browser = Router::new()
        .merge(ingest::router().layer(axum::extract::DefaultBodyLimit::max(tracking_api::MAX_BATCH_BYTES * 2)))
        .merge(tiles::public_router());
    let browser = match cors {
        Some(cors) => browser.layer(cors),
        None => browser,
    };
    Router::new()
        .merge(health::router())
        .merge(admin::router(state.clone()))
        .merge(browser)
        .merge(profiles::router(state.clone()))
        .merge(segments::router(state.clone()))
        .merge(tiles::admin_router(state.clone()))
        .merge(journeys::router(state.clone()))
        .layer(axum::middleware::map_response(json_too_large))
        .with_state(state)
}

/// What the body-size limit answers, in our JSON error shape rather than axum's plain text,
/// so a client (and the edge, which says the same) can read it.
pub const TOO_LARGE: &str = "the body is over this endpoint's size limit";

async fn json_too_large(response: axum::response::Response) -> axum::response::Response {
    let plain = response.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"text/plain"));
    if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE && plain {
        return axum::response::IntoResponse::into_response(ApiError::TooLarge(TOO_LARGE.into()));
    }
    response
}
