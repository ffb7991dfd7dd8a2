//! The Rekindle HTTP server. `app(state)` builds the router; binding a socket is the
//! caller's business, so tests can serve it on any port.

mod api;
mod error;
mod slots;

use std::sync::{Arc, Mutex, MutexGuard};

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
    /// Serialises admin changes, so the registry and the slot store record them in the
    /// same order.
    admin_writes: Arc<Mutex<()>>,
}

impl AppState {
    /// The state for `app`.
    pub fn new(registry: Arc<Registry>, slot_store: Option<Arc<SlotStore>>, admin_token: Option<Arc<str>>) -> AppState {
        AppState { registry, slot_store, admin_token, admin_writes: Arc::new(Mutex::new(())) }
    }

    fn admin_write(&self) -> MutexGuard<'_, ()> {
        self.admin_writes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    Router::new().merge(api::health::router()).merge(api::admin::router(state.clone())).with_state(state)
}
