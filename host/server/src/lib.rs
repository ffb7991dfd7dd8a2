//! The Rekindle HTTP server over the stage crates: `state` (what handlers reach), `api`
//! (the routes, one module per area), `error` (every stage's error as an HTTP answer) and
//! `background` (the loops the host runs). `app(state)` builds the router; binding a
//! socket is the caller's business, so tests can serve it on any port.

mod api;
mod background;
mod error;
mod extract;
mod slot_store;
mod state;

use axum::Router;

pub use api::TOO_LARGE;
pub use api::segments::define_segment;
pub use api::tiles::{define_offer, define_page_slot};
pub use background::Background;
pub use error::ApiError;
pub use rekindle_segments::{EvaluateError, derive_aggregates};
pub use rekindle_store::Clock;
pub use slot_store::{SlotStore, SlotStoreError};
pub use state::{AppState, Ingestion, Source, SourceKind};

/// The whole HTTP API, with the background loops `state` calls for started and left running
/// for the life of the process. Call it inside a tokio runtime.
pub fn app(state: AppState) -> Router {
    Background::spawn(&state).detach();
    api::router(state)
}
