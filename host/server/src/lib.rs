//! The Rekindle HTTP server. `app(state)` builds the router; binding a socket is the
//! caller's business, so tests can serve it on any port.

mod api;
mod error;
mod slots;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use rekindle_journeys::{Deliverer, FrequencyCap};
use rekindle_runtime::Registry;
use rekindle_tiles::TileService;
use rekindle_tiles::token::TokenKey;
use rekindle_store::Store;

pub use api::segments::define_segment;
pub use api::tiles::{define_offer, define_tile_slot};
pub use error::ApiError;
pub use rekindle_store::Clock;
pub use rekindle_segments::{EvaluateError, derive_aggregates};
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
    /// The time segments are evaluated at.
    pub clock: Clock,
    /// How often the scheduler looks for segments that are due.
    pub schedule_tick: Duration,
    /// Promo-tile offers, slots and decisions.
    pub tiles: Arc<TileService>,
    /// Origins allowed to call the tile and event endpoints from a browser.
    pub tile_origins: Vec<String>,
    /// The key sealing segment tokens for the edge, and how long a token lasts (ms);
    /// `None` issues no tokens.
    pub token: Option<(TokenKey, i64)>,
    /// The journey engine, when delivery channels are configured.
    pub journeys: Option<Arc<rekindle_journeys::Engine>>,
}

/// The customer-data store and the sources that may write to it.
pub struct Ingestion {
    pub store: Arc<Store>,
    /// Write key to source.
    pub sources: HashMap<String, Source>,
}

/// Where a source's write key lives, which decides what it may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// On a web page, where any visitor can read it: it adds events and ordinary traits,
    /// but cannot change an identified person's contact points or consents, merge
    /// identified profiles or write reserved traits.
    Browser,
    /// On the shop's own servers, kept secret: it may change anything.
    Server,
}

/// An event source (a website, an app, a backend) and what its write key may do.
#[derive(Clone)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    /// The secret the site's backend signs user ids with (`userHash`, an HMAC-SHA256 of
    /// the user id), so that the tile endpoint can tell a visitor's own id from a guess.
    pub identity_secret: Option<Arc<[u8]>>,
}

impl Source {
    /// A server source: its write key may change anything.
    pub fn server(name: impl Into<String>) -> Source {
        Source { name: name.into(), kind: SourceKind::Server, identity_secret: None }
    }

    /// A browser source, verifying user-id hashes with `identity_secret` when given.
    pub fn browser(name: impl Into<String>, identity_secret: Option<&[u8]>) -> Source {
        Source { name: name.into(), kind: SourceKind::Browser, identity_secret: identity_secret.map(Arc::from) }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("name", &self.name).field("kind", &self.kind).field("identity_secret", &self.identity_secret.is_some()).finish()
    }
}

/// The queue from ingestion to real-time segment evaluation.
pub(crate) struct Realtime {
    pub(crate) sender: tokio::sync::mpsc::UnboundedSender<Vec<rekindle_store::Touch>>,
    receiver: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Vec<rekindle_store::Touch>>>>,
}

impl AppState {
    /// The state for `app`.
    pub fn new(registry: Arc<Registry>, slot_store: Option<Arc<SlotStore>>, admin_token: Option<Arc<str>>) -> AppState {
        AppState {
            registry,
            slot_store,
            admin_token,
            admin_writes: Arc::new(Mutex::new(())),
            ingestion: None,
            realtime: None,
            clock: Clock::default(),
            schedule_tick: Duration::from_secs(60),
            tiles: Arc::new(TileService::new()),
            tile_origins: Vec::new(),
            token: None,
            journeys: None,
        }
    }

    /// Runs journeys over customer data, delivering through `deliverer`'s channels; call
    /// after [`AppState::with_ingestion`].
    pub fn with_journeys(mut self, deliverer: Deliverer, frequency_cap: Option<FrequencyCap>) -> AppState {
        if let Some(ingestion) = &self.ingestion {
            self.journeys = Some(Arc::new(rekindle_journeys::Engine {
                registry: self.registry.clone(),
                store: ingestion.store.clone(),
                deliverer: Arc::new(deliverer),
                frequency_cap,
            }));
        }
        self
    }

    /// Lets pages on `origins` (such as `https://shop.example`) call the tile and event
    /// endpoints from the browser.
    pub fn with_tile_origins(mut self, origins: Vec<String>) -> AppState {
        self.tile_origins = origins;
        self
    }

    /// Signs segment tokens for the edge with `secret`, each valid for `ttl`; tile answers
    /// for known visitors then carry one in `X-Rekindle-Token`.
    pub fn with_token_secret(mut self, secret: &[u8], ttl: Duration) -> AppState {
        self.token = Some((TokenKey::new(secret), i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
        self
    }

    /// Adds customer data: ingestion, profiles and the catalog.
    pub fn with_ingestion(mut self, ingestion: Ingestion) -> AppState {
        self.ingestion = Some(Arc::new(ingestion));
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        self.realtime = Some(Arc::new(Realtime { sender, receiver: Mutex::new(Some(receiver)) }));
        self
    }

    /// Evaluates segments at `clock`'s time, checking for due runs every `tick`.
    pub fn with_clock(mut self, clock: Clock, tick: Duration) -> AppState {
        self.clock = clock;
        self.schedule_tick = tick;
        self
    }

    /// Customer data, or a 503 naming what is missing.
    pub(crate) fn customer_data(&self) -> Result<&Ingestion, ApiError> {
        self.ingestion.as_deref().ok_or(ApiError::Unavailable("customer data is not configured on this host"))
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
            tokio::spawn(rekindle_segments::realtime::realtime_loop(state.registry.clone(), ingestion.store.clone(), state.clock.clone(), receiver));
            tokio::spawn(rekindle_segments::schedule::schedule_loop(state.registry.clone(), ingestion.store.clone(), state.clock.clone(), state.schedule_tick));
        }
    }
    if let Some(ingestion) = &state.ingestion {
        tokio::spawn(tiles_refresh_loop(state.clone(), ingestion.clone()));
    }
    if let Some(engine) = &state.journeys {
        tokio::spawn(journey_loop(engine.clone(), state.clock.clone(), state.schedule_tick));
    }
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
        .merge(api::ingest::router().layer(axum::extract::DefaultBodyLimit::max(api::tracking_api::MAX_BATCH_BYTES * 2)))
        .merge(api::tiles::public_router());
    let browser = match cors {
        Some(cors) => browser.layer(cors),
        None => browser,
    };
    Router::new()
        .merge(api::health::router())
        .merge(api::admin::router(state.clone()))
        .merge(browser)
        .merge(api::profiles::router(state.clone()))
        .merge(api::segments::router(state.clone()))
        .merge(api::tiles::admin_router(state.clone()))
        .merge(api::journeys::router(state.clone()))
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

/// Loads the tile catalog at start and re-reads it every few seconds, so offers changed on
/// another host sharing the database show up here too.
async fn tiles_refresh_loop(state: AppState, ingestion: Arc<Ingestion>) {
    let mut interval = tokio::time::interval(Duration::from_secs(10));
    loop {
        interval.tick().await;
        if let Err(e) = state.tiles.reload(&ingestion.store, &state.registry).await {
            tracing::warn!("could not refresh the tile catalog: {e}");
        }
    }
}

/// Advances journeys every `tick` (and takes new entrants in).
async fn journey_loop(engine: Arc<rekindle_journeys::Engine>, clock: Clock, tick: Duration) {
    let mut interval = tokio::time::interval(tick.min(Duration::from_secs(60)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match engine.tick(clock.now()).await {
            Ok(report) if report.entered + report.advanced > 0 => tracing::info!(entered = report.entered, advanced = report.advanced, "journeys"),
            Ok(_) => {}
            Err(e) => tracing::error!("journeys could not advance: {e}"),
        }
    }
}
