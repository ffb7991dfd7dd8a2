//! `rekindle.toml`: where to listen, where state lives, which plugins to load, and limits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rekindle_runtime::KindLimits;
use serde::Deserialize;

/// The server configuration; every field has a default and command-line flags override it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub plugins_dir: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub max_instances: u32,
    /// Threads the plugin calls a request waits on run on; 0 (the default) means one per
    /// core.
    pub plugin_threads: usize,
    pub limits: LimitsConfig,
    /// The SQLite database; defaults to `DATA_DIR/rekindle.db`.
    pub sqlite_path: Option<PathBuf>,
    /// A PostgreSQL URL; when set, customer data lives there instead of SQLite, so several
    /// hosts can share it.
    pub postgres_url: Option<String>,
    /// Sources that may send events, each with its write key.
    pub sources: Vec<SourceConfig>,
    /// Which events and properties feed the computed traits.
    pub events: rekindle_store::EventMapping,
    /// Segments defined at start-up: `[[segments]]` with name, slot, params and schedule.
    pub segments: Vec<toml::Table>,
    /// Promo-tile settings: `[tiles] origins = ["https://shop.example"]`.
    pub tiles: TilesConfig,
    /// Page slots defined at start-up: `[[tile_slots]]` with name, plugin, max_tiles,
    /// params and fallback tiles.
    pub tile_slots: Vec<toml::Table>,
    /// Offers defined at start-up: `[[offers]]`, as `POST /v1/offers` takes them.
    pub offers: Vec<toml::Table>,
    /// Delivery channels: `[[channels]]` naming an adapter slot and what the host grants it.
    pub channels: Vec<ChannelSection>,
    /// Journey files deployed at start-up, relative to the working directory.
    pub journeys: Vec<PathBuf>,
    /// At most this many journey messages per customer in a window, across journeys:
    /// `frequency_cap = { messages = 3, days = 7 }`.
    pub frequency_cap: Option<rekindle_journeys::engine::FrequencyCap>,
    /// How long a lease on a journey run (and on the journey tick) lasts between renewals:
    /// when a host sharing the database dies, the others take its runs over this long
    /// after. The same host, restarted on the same data directory, takes them back at once.
    pub run_lease_seconds: u64,
    /// How often the journey engine ticks and the scheduler looks for due segments
    /// (default 60; at most 60).
    pub tick_seconds: u64,
    /// The URL the internet reaches this host at (`https://rekindle.example.com`), without
    /// a path: providers are told to send delivery webhooks to
    /// `PUBLIC_URL/v1/feedback/CHANNEL`, and sign them against that URL.
    pub public_url: Option<String>,
}

/// `[[channels]]`: a name journeys use (`email`), the adapter's slot, its parameters, the
/// hosts it may call and its secrets. A secret written `env:NAME` is read from the
/// environment, so the file need not hold it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSection {
    pub name: String,
    pub slot: String,
    #[serde(default)]
    pub params: toml::Table,
    /// Origins the adapter's requests may go to: `https://api.sendgrid.com`, or
    /// `http://127.0.0.1:9000` for a local stand-in. Plain http only where listed.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Private, loopback or link-local addresses (or networks) the allowed host names may
    /// resolve to; every other private address is refused after DNS resolution.
    #[serde(default)]
    pub allow_private_addresses: Vec<String>,
    /// Requests one message or audience change may make (default 10).
    pub max_requests: Option<usize>,
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, String>,
    pub rate_per_second: Option<u32>,
    pub max_attempts: Option<u32>,
    /// Seconds after a send left in doubt (by a crash, or a request that got no answer)
    /// went out before asking the provider about it (default 120: providers index accepted
    /// messages with a delay).
    pub reconcile_after_seconds: Option<u64>,
    /// Seconds one request may take, answer included (default 15). Past it the request
    /// counts as sent and unanswered: in doubt, looked up rather than retried blindly.
    pub request_timeout_seconds: Option<u64>,
}

/// `[tiles]`: which browser origins may ask for tiles and send events, and the secret
/// that signs segment tokens for the edge (also `REKINDLE_TOKEN_SECRET`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TilesConfig {
    pub origins: Vec<String>,
    pub token_secret: Option<String>,
    pub token_ttl_hours: u64,
}

impl Default for TilesConfig {
    fn default() -> Self {
        TilesConfig { origins: Vec::new(), token_secret: None, token_ttl_hours: 7 * 24 }
    }
}

/// One event source (a website, an app, a backend) and its write key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub write_key: String,
    /// `browser` (the default: a key on a web page is public) or `server`, which may
    /// change contact points, consents and identified profiles.
    #[serde(default = "browser")]
    pub kind: rekindle_server::SourceKind,
    /// The secret the site's backend signs user ids with, for personal tiles; `env:NAME`
    /// reads it from the environment.
    pub identity_secret: Option<String>,
}

fn browser() -> rekindle_server::SourceKind {
    rekindle_server::SourceKind::Browser
}

/// Per-kind limits, in milliseconds and mebibytes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub rule_deadline_ms: u64,
    pub tiles_deadline_ms: u64,
    pub channel_deadline_ms: u64,
    pub memory_mib: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            plugins_dir: None,
            admin_token: None,
            max_instances: 1000,
            plugin_threads: 0,
            limits: LimitsConfig::default(),
            sqlite_path: None,
            postgres_url: None,
            events: rekindle_store::EventMapping::default(),
            segments: Vec::new(),
            sources: Vec::new(),
            tiles: TilesConfig::default(),
            tile_slots: Vec::new(),
            offers: Vec::new(),
            channels: Vec::new(),
            journeys: Vec::new(),
            frequency_cap: None,
            run_lease_seconds: rekindle_journeys::engine::DEFAULT_LEASE.as_secs(),
            tick_seconds: 60,
            public_url: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let defaults = KindLimits::default();
        LimitsConfig {
            rule_deadline_ms: defaults.rule.deadline.as_millis() as u64,
            tiles_deadline_ms: defaults.tiles.deadline.as_millis() as u64,
            channel_deadline_ms: defaults.channel.deadline.as_millis() as u64,
            memory_mib: defaults.rule.memory_bytes >> 20,
        }
    }
}

impl Config {
    /// Reads a TOML file; errors name the file, and TOML's message names the line.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid Rekindle config", path.display()))
    }

    /// The runtime limits these settings describe.
    pub fn kind_limits(&self) -> KindLimits {
        let mut limits = KindLimits::default();
        limits.rule.deadline = Duration::from_millis(self.limits.rule_deadline_ms);
        limits.tiles.deadline = Duration::from_millis(self.limits.tiles_deadline_ms);
        limits.channel.deadline = Duration::from_millis(self.limits.channel_deadline_ms);
        for kind in [&mut limits.rule, &mut limits.tiles, &mut limits.channel] {
            kind.memory_bytes = self.limits.memory_mib << 20;
        }
        limits
    }
}
