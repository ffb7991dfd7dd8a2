//! Performing a channel adapter's requests. The adapter only formats; the host holds the
//! secrets, decides where requests may go, paces them and retries. Concretely, per
//! configured channel:
//! - a request may go only to the operator's allowed hosts (or, when the operator lists
//!   none, the hosts the adapter declared);
//! - `{{secret:NAME}}` in the URL, headers and body, and `{{basic-auth:USER:PASS}}` in
//!   headers, are filled from the channel's secrets, and only for names the adapter
//!   declared; the adapter's `interpret` sees the request as it wrote it, placeholders and
//!   all, so no secret ever enters the sandbox;
//! - requests are paced by a per-channel rate limit;
//! - `retry-later` outcomes and transport failures are retried with exponential backoff
//!   (honouring `Retry-After`), up to a number of attempts.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rekindle_runtime::wit::{AudienceChange, Context, Found, HttpMethod, HttpRequest, HttpResponse, Message, Outcome};
use rekindle_runtime::{CallError, Plugin, PluginInfo, Registry, merge_params};

/// An operator's configuration of one channel: which adapter, its parameters, and what the
/// host grants it.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// The registry slot holding the adapter.
    pub slot: String,
    /// The adapter's parameters, over its defaults.
    pub params: Vec<rekindle_runtime::wit::Field>,
    /// Hosts requests may go to; empty means the hosts the adapter declared.
    pub allowed_hosts: Vec<String>,
    /// Secret name to value.
    pub secrets: HashMap<String, String>,
    /// Requests per second at most.
    pub rate_per_second: u32,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// The first retry waits this long; each further one twice as long.
    pub backoff: Duration,
    /// How long after claiming a send that a crash left in doubt the host asks the provider
    /// about it: providers index accepted messages with some delay.
    pub reconcile_after: Duration,
}

impl ChannelConfig {
    /// A channel with the default pacing: 50 requests/s, 5 attempts, 500 ms first backoff.
    pub fn new(slot: impl Into<String>) -> ChannelConfig {
        ChannelConfig {
            slot: slot.into(),
            params: Vec::new(),
            allowed_hosts: Vec::new(),
            secrets: HashMap::new(),
            rate_per_second: 50,
            max_attempts: 5,
            backoff: Duration::from_millis(500),
            reconcile_after: Duration::from_secs(120),
        }
    }
}

/// Why a delivery could not be attempted at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    #[error("no channel `{0}` is configured")]
    UnknownChannel(String),
    #[error("the adapter failed: {0}")]
    Adapter(String),
    #[error("the adapter sent a request to `{host}`, which channel `{channel}` does not allow (allowed: {allowed})")]
    HostNotAllowed { channel: String, host: String, allowed: String },
    #[error("the adapter refers to secret `{0}`, which it did not declare")]
    UndeclaredSecret(String),
    #[error("secret `{0}` is not configured for this channel")]
    MissingSecret(String),
    #[error("the adapter's request URL `{0}` is not a valid http(s) URL")]
    BadUrl(String),
}

/// The fate of one request after its attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempted {
    pub outcome: Outcome,
    pub attempts: u32,
}

struct Channel {
    config: ChannelConfig,
    limiter: DefaultDirectRateLimiter,
}

/// Performs adapters' requests for the configured channels.
pub struct Deliverer {
    http: reqwest::Client,
    channels: HashMap<String, Arc<Channel>>,
    /// Formats every request with the adapter but sends nothing: for simulations.
    dry_run: bool,
}

impl Deliverer {
    /// A deliverer for `channels` (name to configuration).
    pub fn new(channels: HashMap<String, ChannelConfig>) -> Deliverer {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("an HTTP client with defaults");
        let channels = channels
            .into_iter()
            .map(|(name, config)| {
                let rate = NonZeroU32::new(config.rate_per_second.max(1)).expect("at least one");
                let limiter = RateLimiter::direct(Quota::per_second(rate));
                (name, Arc::new(Channel { config, limiter }))
            })
            .collect();
        Deliverer { http, channels, dry_run: false }
    }

    /// A deliverer that runs the adapters but sends nothing, answering every request as
    /// delivered: what `rekindle journey simulate` uses.
    pub fn dry_run(channels: HashMap<String, ChannelConfig>) -> Deliverer {
        Deliverer { dry_run: true, ..Deliverer::new(channels) }
    }

    fn channel(&self, name: &str, registry: &Registry) -> Result<(Arc<Channel>, Arc<Plugin>, Context), DeliveryError> {
        let channel = self.channels.get(name).cloned().ok_or_else(|| DeliveryError::UnknownChannel(name.into()))?;
        let plugin = registry.get(&channel.config.slot).map_err(|e| DeliveryError::Adapter(e.to_string()))?;
        let PluginInfo::Channel(info) = plugin.info() else {
            return Err(DeliveryError::Adapter(format!("slot `{}` holds a {} plugin, not a channel adapter", channel.config.slot, plugin.kind())));
        };
        let params = merge_params(&info.params, &channel.config.params).map_err(|e| DeliveryError::Adapter(e.to_string()))?;
        Ok((channel, plugin.clone(), Context { now: rekindle_store::now_ms(), params }))
    }

    /// The configured channel names.
    pub fn channel_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.channels.keys().map(String::as_str).collect();
        names.sort();
        names
    }

    /// What channel `name` needs from a customer (contact point and consent), from its
    /// adapter's `describe()`; `None` for an unknown channel or an ad audience, which
    /// carries no messages.
    pub fn needs(&self, registry: &Registry, name: &str) -> Option<crate::messages::ChannelNeeds> {
        let channel = self.channels.get(name)?;
        let plugin = registry.get(&channel.config.slot).ok()?;
        let PluginInfo::Channel(info) = plugin.info() else { return None };
        if info.kind == rekindle_runtime::wit::ChannelKind::AdAudience {
            return None;
        }
        // The contract's names are the store's: `email`, `phone`, `push_token`; `sms`, ....
        let contact = info.contact.map(|kind| rekindle_runtime::json::contact_kind_name(kind).to_string());
        let consent = info.consent.and_then(|purpose| rekindle_store::Purpose::parse(rekindle_runtime::json::purpose_name(purpose)));
        Some(crate::messages::ChannelNeeds { name: name.to_string(), contact, consent })
    }

    /// Delivers one rendered message on channel `name`; one outcome per adapter request.
    pub async fn deliver(&self, registry: &Registry, name: &str, message: &Message) -> Result<Vec<Attempted>, DeliveryError> {
        let (channel, plugin, ctx) = self.channel(name, registry)?;
        let requests = plugin.deliver(&ctx, message).map_err(|e| DeliveryError::Adapter(e.to_string()))?;
        self.perform(name, &channel, &plugin, &ctx, requests).await
    }

    /// The request asking channel `name`'s provider whether `message` arrived; `None` when
    /// its adapter cannot ask (no `reconcile` export, or its lookup declines).
    pub fn lookup(&self, registry: &Registry, name: &str, message: &Message) -> Option<Lookup> {
        let (channel, plugin, ctx) = self.channel(name, registry).ok()?;
        let request = plugin.lookup(&ctx, message).ok()??;
        Some(Lookup { name: name.to_string(), channel, plugin, ctx, request })
    }

    /// Asks the provider, for a send a crash left in doubt, whether the message arrived. A
    /// rate limit (429), a provider error (5xx) or no connection means "ask again later",
    /// never "send again": only the provider's answer can rule out a repeat.
    pub async fn reconcile(&self, lookup: Lookup, message: &Message) -> Result<Reconciled, DeliveryError> {
        let Lookup { name, channel, plugin, ctx, request } = lookup;
        let PluginInfo::Channel(info) = plugin.info() else { unreachable!("checked in channel()") };
        if self.dry_run {
            // Nothing was sent in a dry run, so nothing can have arrived.
            return Ok(Reconciled::Answered(Found::Absent));
        }
        let filled = fill(&name, &channel.config, &info.hosts, &info.secrets, &request)?;
        channel.limiter.until_ready().await;
        let response = match self.send(&filled).await {
            Ok(response) => response,
            Err(e) => return Ok(Reconciled::AskAgain { after: ASK_AGAIN_AFTER, why: format!("transport: {e}") }),
        };
        if response.status == 429 || response.status >= 500 {
            let after = response
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .map_or(ASK_AGAIN_AFTER, |s| Duration::from_secs(s).max(ASK_AGAIN_AFTER));
            return Ok(Reconciled::AskAgain { after, why: format!("it answered {}", response.status) });
        }
        Ok(Reconciled::Answered(
            plugin.confirm(&ctx, message, &response).unwrap_or_else(|e| Found::Unknown(format!("the adapter could not read the answer: {e}"))),
        ))
    }

    /// Applies one audience change on channel `name`.
    pub async fn sync_audience(&self, registry: &Registry, name: &str, change: &AudienceChange) -> Result<Vec<Attempted>, DeliveryError> {
        let (channel, plugin, ctx) = self.channel(name, registry)?;
        let requests = plugin.sync_audience(&ctx, change).map_err(|e| DeliveryError::Adapter(e.to_string()))?;
        self.perform(name, &channel, &plugin, &ctx, requests).await
    }

    async fn perform(
        &self,
        name: &str,
        channel: &Channel,
        plugin: &Plugin,
        ctx: &Context,
        requests: Vec<HttpRequest>,
    ) -> Result<Vec<Attempted>, DeliveryError> {
        let PluginInfo::Channel(info) = plugin.info() else { unreachable!("checked in channel()") };
        if self.dry_run {
            return Ok(requests.iter().map(|_| Attempted { outcome: Outcome::Delivered(Some("dry run".into())), attempts: 0 }).collect());
        }
        // Every request is checked and filled before any is sent: a bad one sends nothing.
        let filled = requests.iter().map(|r| fill(name, &channel.config, &info.hosts, &info.secrets, r)).collect::<Result<Vec<_>, _>>()?;
        let mut results = Vec::with_capacity(requests.len());
        for (original, request) in requests.iter().zip(filled) {
            let mut attempts = 0;
            let outcome = loop {
                attempts += 1;
                channel.limiter.until_ready().await;
                let outcome = match self.send(&request).await {
                    Ok(response) => call_interpret(plugin, ctx, original, &response),
                    Err(e) => Outcome::RetryLater(rekindle_runtime::wit::Retry { after_seconds: None, reason: format!("transport: {e}") }),
                };
                match &outcome {
                    Outcome::RetryLater(retry) if attempts < channel.config.max_attempts => {
                        let backoff = channel.config.backoff * 2u32.saturating_pow(attempts - 1);
                        let wait = retry.after_seconds.map_or(backoff, |s| Duration::from_secs(u64::from(s)).max(backoff));
                        tracing::debug!(channel = name, attempts, ?wait, "retrying: {}", retry.reason);
                        tokio::time::sleep(wait.min(Duration::from_secs(300))).await;
                    }
                    _ => break outcome,
                }
            };
            results.push(Attempted { outcome, attempts });
        }
        Ok(results)
    }

    async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, reqwest::Error> {
        let method = match request.method {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
            HttpMethod::Patch => reqwest::Method::PATCH,
            HttpMethod::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.http.request(method, &request.url).body(request.body.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let response = builder.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().iter().filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string()))).collect();
        // Providers' answers are small; a cap keeps a hostile endpoint from filling memory.
        let body = response.bytes().await?.iter().take(64 << 10).copied().collect();
        Ok(HttpResponse { status, headers, body })
    }
}

fn call_interpret(plugin: &Plugin, ctx: &Context, request: &HttpRequest, response: &HttpResponse) -> Outcome {
    plugin.interpret(ctx, request, response).unwrap_or_else(|e: CallError| Outcome::Failed(format!("the adapter could not read the response: {e}")))
}

/// A provider lookup ready to make: the channel, its adapter and the request.
pub struct Lookup {
    name: String,
    channel: Arc<Channel>,
    plugin: Arc<Plugin>,
    ctx: Context,
    request: HttpRequest,
}

impl Lookup {
    /// How long after claiming a send in doubt the channel waits before asking.
    pub fn after(&self) -> Duration {
        self.channel.config.reconcile_after
    }
}

/// What asking a provider about a send in doubt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconciled {
    /// What the provider's answer means, as the adapter read it.
    Answered(Found),
    /// The provider could not answer now (rate limited, failing, unreachable).
    AskAgain { after: Duration, why: String },
}

/// The least wait before asking a provider again; lookup APIs are tightly rate limited
/// (SendGrid's Email Activity allows six requests a minute).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// The request as sent: host checked, placeholders filled.
fn fill(channel: &str, config: &ChannelConfig, declared_hosts: &[String], declared_secrets: &[String], request: &HttpRequest) -> Result<HttpRequest, DeliveryError> {
    let secret = |name: &str| -> Result<&str, DeliveryError> {
        if !declared_secrets.iter().any(|s| s == name) {
            return Err(DeliveryError::UndeclaredSecret(name.into()));
        }
        config.secrets.get(name).map(String::as_str).ok_or_else(|| DeliveryError::MissingSecret(name.into()))
    };
    let fill_text = |text: &str, basic: bool| -> Result<String, DeliveryError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find("}}") else { break };
            let inner = &rest[start + 2..start + end];
            match inner.split_once(':') {
                Some(("secret", name)) => out.push_str(secret(name)?),
                Some(("basic-auth", pair)) if basic => {
                    let (user, pass) = pair.split_once(':').ok_or_else(|| DeliveryError::UndeclaredSecret(pair.into()))?;
                    let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", secret(user)?, secret(pass)?));
                    out.push_str("Basic ");
                    out.push_str(&token);
                }
                _ => out.push_str(&rest[start..start + end + 2]),
            }
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    };
    let url = fill_text(&request.url, false)?;
    let parsed = reqwest::Url::parse(&url).map_err(|_| DeliveryError::BadUrl(request.url.clone()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(DeliveryError::BadUrl(request.url.clone()));
    }
    let host = parsed.host_str().unwrap_or_default().to_string();
    let allowed: Vec<&String> =
        if config.allowed_hosts.is_empty() { declared_hosts.iter().filter(|h| h.as_str() != "*").collect() } else { config.allowed_hosts.iter().collect() };
    if !allowed.iter().any(|h| **h == host) {
        return Err(DeliveryError::HostNotAllowed {
            channel: channel.into(),
            host,
            allowed: allowed.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", "),
        });
    }
    let headers = request.headers.iter().map(|(k, v)| Ok((k.clone(), fill_text(v, true)?))).collect::<Result<Vec<_>, DeliveryError>>()?;
    // Bodies are filled only when they are text; binary bodies go as written.
    let body = match std::str::from_utf8(&request.body) {
        Ok(text) if text.contains("{{") => fill_text(text, false)?.into_bytes(),
        _ => request.body.clone(),
    };
    Ok(HttpRequest { method: request.method, url, headers, body })
}
