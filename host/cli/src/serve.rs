//! `rekindle serve`: load the plugins, restore the slots, and serve HTTP until stopped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rekindle_runtime::{Registry, Runtime, RuntimeConfig};
use rekindle_server::{AppState, Ingestion, SlotStore, Source, SourceKind};
use rekindle_store::Store;

use crate::config::{Config, SourceConfig};

/// Flags for `rekindle serve`; each overrides the config file.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// A rekindle.toml file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, such as 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where uploaded components, slot state and compiled artifacts live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A directory of .wasm components; each seeds the slot named after its file.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Bearer token for the admin API; without one the admin API is disabled.
    #[arg(long, env = "REKINDLE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Keep customer data in PostgreSQL (postgres://user@host:port/db) instead of SQLite.
    #[arg(long, env = "REKINDLE_POSTGRES_URL", hide_env_values = true)]
    postgres: Option<String>,
    /// A browser event source (a website's snippet) as NAME=WRITE_KEY; repeat for several.
    #[arg(long = "source", value_parser = parse_browser_source)]
    sources: Vec<SourceConfig>,
    /// A server event source (a backend, a batch import) as NAME=WRITE_KEY: its key may
    /// change contact points, consents and identified profiles, so keep it off web pages.
    #[arg(long = "server-source", value_parser = parse_server_source)]
    server_sources: Vec<SourceConfig>,
    /// The URL the internet reaches this host at, which providers send delivery webhooks
    /// to and sign them against (https://rekindle.example.com).
    #[arg(long, env = "REKINDLE_PUBLIC_URL")]
    public_url: Option<String>,
}

fn parse_source(text: &str, kind: SourceKind) -> Result<SourceConfig, String> {
    match text.split_once('=') {
        Some((name, key)) if !name.is_empty() && !key.is_empty() => {
            Ok(SourceConfig { name: name.to_string(), write_key: key.to_string(), kind, identity_secret: None })
        }
        _ => Err(format!("`{text}` is not NAME=WRITE_KEY")),
    }
}

fn parse_browser_source(text: &str) -> Result<SourceConfig, String> {
    parse_source(text, SourceKind::Browser)
}

fn parse_server_source(text: &str) -> Result<SourceConfig, String> {
    parse_source(text, SourceKind::Server)
}

/// A config value that reads `env:NAME` from the environment; `what` names it in errors.
fn from_env(value: &str, what: &str) -> anyhow::Result<String> {
    match value.strip_prefix("env:") {
        Some(var) => std::env::var(var).with_context(|| format!("{what} reads ${var}, which is not set")),
        None => Ok(value.to_string()),
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,cranelift=warn,wasmtime=warn".into()))
        .init();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.listen = args.listen.unwrap_or(config.listen);
    config.data_dir = args.data_dir.unwrap_or(config.data_dir);
    config.plugins_dir = args.plugins.or(config.plugins_dir);
    config.admin_token = args.admin_token.or(config.admin_token);
    config.sources.extend(args.sources);
    config.sources.extend(args.server_sources);
    config.postgres_url = args.postgres.or(config.postgres_url);
    config.public_url = args.public_url.or(config.public_url);
    if let Some(url) = &config.public_url {
        check_public_url(url)?;
    }

    let runtime = Runtime::new(RuntimeConfig {
        limits: config.kind_limits(),
        cache_dir: Some(config.data_dir.join("cache")),
        max_instances: config.max_instances,
        plugin_threads: config.plugin_threads,
    })
    .map_err(|e| anyhow::anyhow!("starting the WebAssembly engine: {e:#}"))?;
    let registry = Arc::new(Registry::new(runtime));
    let slot_store = Arc::new(SlotStore::open(config.data_dir.join("slots"))?);
    for slot in slot_store.restore(&registry)? {
        tracing::info!(slot, "restored slot");
    }
    if let Some(dir) = &config.plugins_dir {
        seed_from_dir(&registry, &slot_store, dir)?;
    }
    match &config.admin_token {
        None => tracing::warn!("no admin token: the admin API is disabled (set REKINDLE_ADMIN_TOKEN)"),
        Some(token) => check_admin_token(token)?,
    }
    let store = open_store(&config)?;
    // Bound before the state is made, so links name the port really listened on (`:0`).
    let listener = std::net::TcpListener::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let links = unsubscribe_links(&config, bound, &store)?;
    if config.sources.is_empty() {
        tracing::warn!("no event sources: ingestion refuses every write key (add --source NAME=WRITE_KEY)");
    }
    let sources = sources(&config.sources)?;
    let mut state = AppState::new(registry, Some(slot_store), config.admin_token.clone().map(Into::into))
        .with_ingestion(Ingestion { store: store.into(), sources })
        .with_tile_origins(config.tiles.origins.clone())
        .with_lease(&host_id(&config.data_dir)?, std::time::Duration::from_secs(config.run_lease_seconds.max(1)));
    state.schedule_tick = std::time::Duration::from_secs(config.tick_seconds.clamp(1, 60));
    state.public_url = config.public_url.as_ref().map(|url| url.trim_end_matches('/').to_string());
    state.links = links;
    let token_secret = match std::env::var("REKINDLE_TOKEN_SECRET").ok().or(config.tiles.token_secret.clone()) {
        Some(value) => Some(long_secret(&value, "the token secret ([tiles] token_secret or REKINDLE_TOKEN_SECRET)")?),
        None => None,
    };
    if let Some(secret) = token_secret {
        let ttl = std::time::Duration::from_secs(config.tiles.token_ttl_hours.saturating_mul(3600));
        state = state.with_token_secret(secret.as_bytes(), ttl);
    }
    if !config.channels.is_empty() {
        let channels = channel_configs(&config.channels, state.public_url.as_deref())?;
        check_lease_outlasts_requests(config.run_lease_seconds, &channels)?;
        state = state.with_journeys(rekindle_journeys::delivery::Deliverer::new(channels)?, config.frequency_cap);
    }
    let config_name = args.config.as_ref().map_or("the config".to_string(), |p| p.display().to_string());
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async move {
        define_from_config(&state, &config, &config_name).await?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tracing::info!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, rekindle_server::app(state)).with_graceful_shutdown(shutdown()).await?;
        Ok(())
    })
}

/// A host must hold a run for longer than one of its requests may take: otherwise another
/// host could take the run over while a request is still on its way, and ask the provider
/// about it (or send it again) too soon.
fn check_lease_outlasts_requests(
    lease_seconds: u64,
    channels: &std::collections::HashMap<String, rekindle_journeys::delivery::ChannelConfig>,
) -> anyhow::Result<()> {
    let mut names: Vec<&String> = channels.keys().collect();
    names.sort();
    for name in names {
        let timeout = channels[name].timeout.as_secs();
        if timeout >= lease_seconds {
            anyhow::bail!(
                "run_lease_seconds ({lease_seconds}) must be longer than channel `{name}`'s request_timeout_seconds ({timeout}): a host must hold a run for as long as one of its requests may take"
            );
        }
    }
    Ok(())
}

/// This host's name in leases, kept in the data directory so that the host restarted on
/// it is the same host: it takes back at once what its previous process held.
fn host_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("host-id");
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_string());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Defines the config file's segments, tile slots and offers, and deploys its journeys;
/// an error names the file and the entry at fault.
async fn define_from_config(state: &AppState, config: &Config, config_name: &str) -> anyhow::Result<()> {
    for (i, table) in config.segments.iter().enumerate() {
        let definition = serde_json::to_value(table).context("reading a [[segments]] entry")?;
        rekindle_server::define_segment(state, &definition).await.map_err(|e| anyhow::anyhow!("{config_name}: segments[{i}]: {e}"))?;
    }
    for (i, table) in config.tile_slots.iter().enumerate() {
        let definition = serde_json::to_value(table).context("reading a [[tile_slots]] entry")?;
        rekindle_server::define_page_slot(state, &definition).await.map_err(|e| anyhow::anyhow!("{config_name}: tile_slots[{i}]: {e}"))?;
    }
    for (i, table) in config.offers.iter().enumerate() {
        let definition = serde_json::to_value(table).context("reading an [[offers]] entry")?;
        rekindle_server::define_offer(state, &definition).await.map_err(|e| anyhow::anyhow!("{config_name}: offers[{i}]: {e}"))?;
    }
    for path in &config.journeys {
        let engine = state.journeys.as_ref().context("journeys need [[channels]] to deliver through")?;
        let source = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let journey = engine.deploy(&source).await.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        tracing::info!(journey = journey.name, "journey deployed");
    }
    Ok(())
}

/// The sources by write key, with their identity secrets read and checked.
fn sources(configured: &[SourceConfig]) -> anyhow::Result<std::collections::HashMap<String, Source>> {
    let mut sources = std::collections::HashMap::new();
    for (i, s) in configured.iter().enumerate() {
        let identity_secret = match &s.identity_secret {
            Some(value) => Some(Arc::<[u8]>::from(long_secret(value, &format!("sources[{i}] ({}): identity_secret", s.name))?.as_bytes())),
            None => None,
        };
        let source = Source { name: s.name.clone(), kind: s.kind, identity_secret };
        anyhow::ensure!(sources.insert(s.write_key.clone(), source).is_none(), "sources[{i}] ({}): another source has the same write key", s.name);
    }
    Ok(sources)
}

/// The fewest characters of a secret that proves something (a visitor's identity, a
/// token): short enough to guess would prove nothing.
const SHORTEST_SECRET: usize = 32;

/// A secret from the config (`env:NAME` reads the environment) of at least
/// [`SHORTEST_SECRET`] characters; `what` names it in errors.
fn long_secret(value: &str, what: &str) -> anyhow::Result<String> {
    let secret = from_env(value, what)?;
    anyhow::ensure!(secret.trim().chars().count() >= SHORTEST_SECRET, "{what} must be at least {SHORTEST_SECRET} characters");
    Ok(secret)
}

/// The fewest characters an admin token may have: it guards every profile and secret
/// the host holds, so one short enough to guess is refused rather than served.
const SHORTEST_ADMIN_TOKEN: usize = 16;

fn check_admin_token(token: &str) -> anyhow::Result<()> {
    // Spaces around it guard nothing, so they do not count.
    let length = token.trim().chars().count();
    anyhow::ensure!(
        length >= SHORTEST_ADMIN_TOKEN,
        "the admin token (--admin-token, REKINDLE_ADMIN_TOKEN or admin_token) is {}; it must be at least {SHORTEST_ADMIN_TOKEN} \
         characters, since it opens every profile and the admin API. Generate one with `openssl rand -hex 24`, or leave it \
         unset to switch the admin API off",
        if length == 0 { "empty".to_string() } else { format!("{length} characters") },
    );
    Ok(())
}

/// Where unsubscribe links point: the public URL, or this host itself when it listens on
/// loopback only (a demo, a test), where the link works for whoever can reach it. A host
/// reachable from elsewhere without `public_url` makes none, and sends no email; it still
/// opens other hosts' links.
fn unsubscribe_links(config: &Config, bound: SocketAddr, store: &Store) -> anyhow::Result<Option<rekindle_journeys::unsubscribe::Links>> {
    let base = match &config.public_url {
        Some(url) => Some(url.trim_end_matches('/').to_string()),
        None if bound.ip().is_loopback() => {
            if !config.channels.is_empty() {
                tracing::warn!("no public_url: unsubscribe links point at http://{bound}, which only this machine reaches; set public_url behind a proxy");
            }
            Some(format!("http://{bound}"))
        }
        None => {
            if !config.channels.is_empty() {
                tracing::warn!("no public_url: emails cannot carry a working unsubscribe link, so none is sent (set public_url)");
            }
            None
        }
    };
    if let Some(base) = &base
        && !base.starts_with("https://")
        && !bound.ip().is_loopback()
    {
        tracing::warn!("public_url {base} is not https: mail clients (Gmail) ignore a one-click unsubscribe that is not https (RFC 8058)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Kept in the database, so every host sharing it opens every host's links.
    let secret = runtime.block_on(store.host_secret("unsubscribe-links")).context("reading the unsubscribe link key")?;
    // Every host opens links, whether or not it can make them.
    Ok(Some(rekindle_journeys::unsubscribe::Links { base_url: base, key: rekindle_journeys::unsubscribe::LinkKey::new(secret.as_bytes()) }))
}

/// The customer-data store the configuration names: PostgreSQL when a URL is given,
/// otherwise the embedded SQLite file.
fn open_store(config: &Config) -> anyhow::Result<Store> {
    if let Some(url) = &config.postgres_url {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let store = runtime.block_on(Store::open_postgres(url, config.events.clone())).context("opening the customer database on PostgreSQL")?;
        tracing::info!("customer data on PostgreSQL");
        return Ok(store);
    }
    let path = config.sqlite_path.clone().unwrap_or_else(|| config.data_dir.join("rekindle.db"));
    let store = Store::open_sqlite(&path, config.events.clone()).with_context(|| format!("opening the customer database {}", path.display()))?;
    tracing::info!(path = %path.display(), "customer data on SQLite");
    Ok(store)
}

/// Uploads every component of `dir`; a slot without an active version gets it activated,
/// while a slot an operator already manages keeps its active version.
fn seed_from_dir(registry: &Registry, store: &SlotStore, dir: &Path) -> anyhow::Result<()> {
    for (slot, file) in plugin_files(dir)? {
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let uploaded = registry.upload(&slot, &bytes).with_context(|| format!("loading {}", file.display()))?;
        store.record_upload(&slot, &uploaded.digest, &bytes)?;
        let managed = registry.slots().into_iter().any(|s| s.slot == slot && s.active.is_some());
        if managed {
            if !uploaded.active {
                tracing::info!(slot, version = uploaded.version, "{} uploaded; the active version stays", file.display());
            }
            continue;
        }
        registry.activate(&slot, uploaded.version)?;
        store.record_activate(&slot, &uploaded.digest)?;
        tracing::info!(slot, version = uploaded.version, name = uploaded.name, "loaded {}", file.display());
    }
    Ok(())
}

/// The `.wasm` files of a plugins directory, by name, each with the slot it goes in.
pub(crate) fn plugin_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading plugins directory {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    files.sort();
    Ok(files.into_iter().map(|f| (slot_name(&f), f)).collect())
}

/// `rule_lapsing_repeat_buyer.wasm` seeds slot `rule-lapsing-repeat-buyer`.
fn slot_name(file: &Path) -> String {
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.to_lowercase().replace('_', "-")
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// The delivery settings of `[[channels]]`, with `env:NAME` secrets read from the
/// environment; a missing variable is an error naming the channel and the secret.
fn channel_configs(
    sections: &[crate::config::ChannelSection],
    public_url: Option<&str>,
) -> anyhow::Result<std::collections::HashMap<String, rekindle_journeys::delivery::ChannelConfig>> {
    let mut channels = std::collections::HashMap::new();
    for section in sections {
        let mut config = rekindle_journeys::delivery::ChannelConfig::new(&section.slot);
        let params = serde_json::to_value(&section.params)?;
        config.params = rekindle_runtime::json::fields_from_json(Some(&params), "params").map_err(|e| anyhow::anyhow!("channel `{}`: {e}", section.name))?;
        config.allowed_hosts = section.allowed_hosts.clone();
        config.allow_private_addresses = section
            .allow_private_addresses
            .iter()
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .with_context(|| format!("channel `{}`: allow_private_addresses: `{entry}` is not an address or a network like 10.0.0.0/8", section.name))
            })
            .collect::<anyhow::Result<_>>()?;
        config.max_requests = section.max_requests.unwrap_or(config.max_requests);
        for (name, value) in &section.secrets {
            config.secrets.insert(name.clone(), from_env(value, &format!("channel `{}`: secret {name}", section.name))?);
        }
        config.rate_per_second = section.rate_per_second.unwrap_or(config.rate_per_second);
        config.max_attempts = section.max_attempts.unwrap_or(config.max_attempts);
        if let Some(seconds) = section.reconcile_after_seconds {
            config.reconcile_after = std::time::Duration::from_secs(seconds);
        }
        if let Some(seconds) = section.request_timeout_seconds {
            config.timeout = std::time::Duration::from_secs(seconds.max(1));
        }
        if !section.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            anyhow::bail!("channel `{}`: a channel name may hold only letters, digits, `-`, `_` and `.`: it is part of its webhook URL", section.name);
        }
        config.feedback_url = public_url.map(|base| format!("{base}/v1/feedback/{}", section.name));
        channels.insert(section.name.clone(), config);
    }
    Ok(channels)
}

/// A public URL must be an absolute http(s) URL with no path, query or credentials:
/// providers sign webhooks against exactly the URL they call.
fn check_public_url(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("public_url `{url}` is not a URL"))?;
    let ok = matches!(parsed.scheme(), "http" | "https")
        && parsed.host_str().is_some()
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.path() == "/"
        && parsed.query().is_none()
        && parsed.fragment().is_none();
    if !ok {
        anyhow::bail!("public_url `{url}` must be an http(s) URL with a host and nothing after it, like https://rekindle.example.com");
    }
    Ok(())
}
