//! What every handler can reach: the plugins, customer data and its write keys, the
//! stages' services, and the host's HTTP configuration (admin token, tile origins, the
//! token key).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rekindle_journeys::{Deliverer, FrequencyCap};
use rekindle_runtime::Registry;
use rekindle_store::{Clock, Lease, Store};
use rekindle_tiles::TileService;
use rekindle_tiles::token::TokenKey;

use crate::error::ApiError;
use crate::slot_store::SlotStore;

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
    /// The leases this host takes in a store it may share with other hosts: on journey
    /// runs, the journey tick and scheduled segment runs.
    pub lease: Lease,
    /// The URL the internet reaches this host at (`https://rekindle.example.com`), which
    /// providers sign their webhooks against; `None` takes the request's `Host`.
    pub public_url: Option<String>,
    /// Where unsubscribe links point and the key sealing them; journeys send no email
    /// without them. Set before [`AppState::with_journeys`].
    pub links: Option<rekindle_journeys::unsubscribe::Links>,
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

impl Realtime {
    /// The receiving end, to the one evaluator that asks first.
    pub(crate) fn take_receiver(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Vec<rekindle_store::Touch>>> {
        self.receiver.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
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
            lease: Lease::new(&uuid::Uuid::now_v7().simple().to_string(), rekindle_journeys::engine::DEFAULT_LEASE),
            public_url: None,
            links: None,
        }
    }

    /// Takes leases as the host `host` (the same across its restarts, so a restarted host
    /// takes its own runs back at once), each lasting `length`; call before
    /// [`AppState::with_journeys`].
    pub fn with_lease(mut self, host: &str, length: Duration) -> AppState {
        self.lease = Lease::new(host, length);
        self
    }

    /// Seals unsubscribe links with `links`' key, pointing at its URL; call before
    /// [`AppState::with_journeys`], which sends no email without them.
    pub fn with_links(mut self, links: rekindle_journeys::unsubscribe::Links) -> AppState {
        self.links = Some(links);
        self
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
                lease: self.lease.clone(),
                links: self.links.clone(),
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

    pub(crate) fn admin_write(&self) -> MutexGuard<'_, ()> {
        self.admin_writes.lock().unwrap_or_else(|p| p.into_inner())
    }
}
