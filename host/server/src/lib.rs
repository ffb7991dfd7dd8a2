//! The Rekindle HTTP server. `app(state)` builds the router; binding a socket is the
//! caller's business, so tests can serve it on any port.

mod api;
mod error;
mod slots;

use std::sync::Arc;

use axum::Router;
use rekindle_runtime::Registry;

pub use error::ApiError;
pub use slots::{SlotStore, SlotStoreError};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    /// Persists uploads and activations so a restart keeps them; `None` keeps them in memory.
    pub slot_store: Option<Arc<SlotStore>>,
    /// The bearer token the admin API requires; `None` disables the admin API.
    pub admin_token: Option<Arc<str>>,
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    Router::new().merge(api::health::router()).merge(api::admin::router(state.clone())).with_state(state)
}
