//! The HTTP API, one module per area.

pub(crate) mod admin;
pub(crate) mod feedback;
pub(crate) mod health;
pub(crate) mod ingest;
pub(crate) mod journeys;
pub(crate) mod profiles;
pub mod segments;
pub(crate) mod tiles;
pub(crate) mod tracking_api;
pub(crate) mod unsubscribe;

pub(crate) use crate::extract::{json_body, refuse_nul};

use axum::Router;

use crate::ApiError;
use crate::extract::require_admin_token;
use crate::state::AppState;

/// The whole HTTP API over `state`, starting nothing: see [`crate::app`] for the host,
/// which also starts the loops (without them nothing drains the real-time queue).
pub(crate) fn router(state: AppState) -> Router {
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
    let browser =
        Router::new().merge(ingest::router().layer(axum::extract::DefaultBodyLimit::max(tracking_api::MAX_BATCH_BYTES * 2))).merge(tiles::public_router());
    let browser = match cors {
        Some(cors) => browser.layer(cors),
        None => browser,
    };
    // Everything an operator does, behind the admin token, layered once.
    let admin = Router::new()
        .merge(admin::router())
        .merge(profiles::router())
        .merge(segments::router())
        .merge(tiles::admin_router())
        .merge(journeys::router())
        .merge(feedback::admin_router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_admin_token));
    Router::new()
        .merge(health::router())
        .merge(admin)
        .merge(browser)
        .merge(feedback::public_router())
        .merge(unsubscribe::router())
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
