//! The Rekindle HTTP server. `app(state)` builds the router; binding a socket is the
//! caller's business, so tests can serve it on any port.

mod api;
mod error;
mod evaluate;
mod slots;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use rekindle_runtime::Registry;
use rekindle_store::Store;

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
    /// Customer data: the store and the sources allowed to send to it.
    pub ingestion: Option<Arc<Ingestion>>,
    pub(crate) realtime: Option<Arc<Realtime>>,
}

/// The customer-data store and the sources that may write to it.
pub struct Ingestion {
    pub store: Store,
    /// Write key to source name.
    pub sources: HashMap<String, String>,
}

/// The queue from ingestion to real-time segment evaluation.
pub(crate) struct Realtime {
    pub(crate) sender: tokio::sync::mpsc::UnboundedSender<Vec<String>>,
    receiver: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Vec<String>>>>,
}

impl AppState {
    /// The state for `app`.
    pub fn new(registry: Arc<Registry>, slot_store: Option<Arc<SlotStore>>, admin_token: Option<Arc<str>>) -> AppState {
        AppState { registry, slot_store, admin_token, admin_writes: Arc::new(Mutex::new(())), ingestion: None, realtime: None }
    }

    /// Adds customer data: ingestion, profiles and the catalog.
    pub fn with_ingestion(mut self, ingestion: Ingestion) -> AppState {
        self.ingestion = Some(Arc::new(ingestion));
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        self.realtime = Some(Arc::new(Realtime { sender, receiver: Mutex::new(Some(receiver)) }));
        self
    }

    fn admin_write(&self) -> MutexGuard<'_, ()> {
        self.admin_writes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The whole HTTP API. Call it inside a tokio runtime: it starts the real-time segment
/// evaluator when customer data is configured.
pub fn app(state: AppState) -> Router {
    if let (Some(ingestion), Some(realtime)) = (&state.ingestion, &state.realtime) {
        let receiver = realtime.receiver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(receiver) = receiver {
            tokio::spawn(evaluate::realtime_loop(state.registry.clone(), ingestion.clone(), receiver));
        }
    }
    Router::new()
        .merge(api::health::router())
        .merge(api::admin::router(state.clone()))
        .merge(api::ingest::router().layer(axum::extract::DefaultBodyLimit::max(api::segment::MAX_BATCH_BYTES * 2)))
        .merge(api::profiles::router(state.clone()))
        .merge(api::segments::router(state.clone()))
        .with_state(state)
}
