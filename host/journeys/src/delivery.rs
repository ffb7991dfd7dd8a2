//! Performing a channel adapter's requests. The adapter only formats; the host holds the
//! secrets, decides where requests may go, paces them and retries. Concretely, per
//! configured channel:
//! - a request may go only to an allowed origin (scheme, host and port): the operator's
//!   allowlist, or, when it lists none, the hosts the adapter declared, over https;
//! - a host name must resolve to public addresses, unless the operator allowed the private
//!   ones (see [`crate::egress`]); redirects are not followed but handed to `interpret`;
//! - the secret placeholders the adapter took during the call that made the request are
//!   filled, and only for secrets it declared: text that came from customer data is never
//!   filled, whatever it reads. The adapter's `interpret` sees the request as it wrote it,
//!   so no secret ever enters the sandbox;
//! - a message or audience change makes at most `max_requests` requests;
//! - answers are read up to [`MAX_ANSWER_BYTES`], and the connection dropped there;
//! - the channel's secret values are redacted from the answers adapters read and from
//!   every outcome and error that leaves here, so neither logs nor the journey log hold one;
//! - requests are paced by a per-channel rate limit, and `retry-later` outcomes and
//!   transport failures are retried with exponential backoff (honouring `Retry-After`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rekindle_runtime::wit::{AdapterInfo, AudienceChange, Context, Found, HttpMethod, HttpRequest, HttpResponse, Message, Outcome};
use rekindle_runtime::{AdapterRequests, CallError, Plugin, PluginInfo, Registry, SecretRef, fill_placeholders, merge_params};

use crate::egress::{FORBIDDEN_HEADERS, GuardedResolver, Origin, Redactor, private_address_in};

/// The most of a provider's answer the host reads; the rest is never received. Providers'
/// answers are small, and an endpoint streaming gigabytes must not fill the host's memory.
pub const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The parameter through which an adapter learns where its provider should send delivery
/// webhooks (Twilio takes a callback URL on each message).
pub const FEEDBACK_URL_PARAM: &str = "feedback_url";

/// The longest the host waits between two attempts at one request, whatever the
/// provider's Retry-After says: journeys wait on the send meanwhile.
const LONGEST_RETRY_WAIT: Duration = Duration::from_secs(30);

/// An operator's configuration of one channel: which adapter, its parameters, and what the
/// host grants it. Its `Debug` names the secrets but never shows their values.
#[derive(Clone)]
pub struct ChannelConfig {
    /// The registry slot holding the adapter.
    pub slot: String,
    /// The adapter's parameters, over its defaults.
    pub params: Vec<rekindle_runtime::wit::Field>,
    /// Origins requests may go to (`https://api.sendgrid.com`, `http://127.0.0.1:9000`); a
    /// bare host means https on 443. Empty means the hosts the adapter declared, over https.
    pub allowed_hosts: Vec<String>,
    /// Loopback, private or link-local addresses (or networks, `10.0.0.0/8`) that the
    /// channel's host names may resolve to. An origin written as an IP address is allowed
    /// by being listed.
    pub allow_private_addresses: Vec<ipnet::IpNet>,
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
    /// Requests one message or audience change may make; past it, nothing is sent.
    pub max_requests: usize,
    /// How long one request may take, answer included; past it the request is in doubt.
    pub timeout: Duration,
    /// Where this host takes the channel's delivery webhooks
    /// (`https://rekindle.example.com/v1/feedback/email`): given to an adapter that
    /// declares a `feedback_url` parameter the operator left unset.
    pub feedback_url: Option<String>,
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut secrets: Vec<&String> = self.secrets.keys().collect();
        secrets.sort();
        f.debug_struct("ChannelConfig")
            .field("slot", &self.slot)
            .field("params", &self.params)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("allow_private_addresses", &self.allow_private_addresses)
            .field("secrets", &secrets)
            .field("rate_per_second", &self.rate_per_second)
            .field("max_attempts", &self.max_attempts)
            .field("max_requests", &self.max_requests)
            .field("feedback_url", &self.feedback_url)
            .finish_non_exhaustive()
    }
}

impl ChannelConfig {
    /// A channel with the default pacing: 50 requests/s, 5 attempts, 500 ms first backoff,
    /// at most 10 requests a message.
    pub fn new(slot: impl Into<String>) -> ChannelConfig {
        ChannelConfig {
            slot: slot.into(),
            params: Vec::new(),
            allowed_hosts: Vec::new(),
            allow_private_addresses: Vec::new(),
            secrets: HashMap::new(),
            rate_per_second: 50,
            max_attempts: 5,
            backoff: Duration::from_millis(500),
            reconcile_after: Duration::from_secs(120),
            max_requests: 10,
            timeout: Duration::from_secs(15),
            feedback_url: None,
        }
    }
}

/// Why a delivery could not be attempted at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    #[error("no channel `{0}` is configured")]
    UnknownChannel(String),
    #[error("channel `{channel}`: allowed_hosts: {why}")]
    BadAllowlist { channel: String, why: String },
    #[error("the adapter failed: {0}")]
    Adapter(String),
    /// The adapter could not run to the end now, for the host's reasons more than its own:
    /// it ran past its deadline, or no instance or thread was free. Nothing was sent; the
    /// caller may try again later.
    #[error("the adapter could not run now: {0}")]
    AdapterBusy(String),
    #[error("the adapter sent a request to `{origin}`, which channel `{channel}` does not allow (allowed: {allowed})")]
    HostNotAllowed { channel: String, origin: String, allowed: String },
    #[error("the adapter refers to secret `{0}`, which it did not declare")]
    UndeclaredSecret(String),
    #[error("secret `{0}` is not configured for this channel")]
    MissingSecret(String),
    #[error("the adapter's request URL `{0}` is not a valid http(s) URL without credentials in it")]
    BadUrl(String),
    #[error("the adapter put a secret where the request's host goes (`{0}`); secrets may go in the path, a header or the body")]
    SecretInHost(String),
    #[error("the adapter set the `{0}` header, which only the host sets")]
    ForbiddenHeader(String),
    #[error("the adapter made {made} requests for one message; channel `{channel}` allows {cap} (max_requests)")]
    TooManyRequests { channel: String, made: usize, cap: usize },
    #[error("{0}")]
    PrivateAddress(String),
    /// The caller's check before an attempt said not to send: the host no longer holds
    /// the send (another host took its run over).
    #[error("not sent: this host no longer holds the send (another host took its run over)")]
    Withdrawn,
}

/// Asked just before each attempt at a request goes out (after pacing and any retry
/// wait): whether to send it. The journey engine records there when the request went out,
/// and checks that this host still holds the run.
pub type BeforeEachAttempt<'call, 'check> = &'call mut (dyn FnMut() -> futures_util::future::BoxFuture<'check, bool> + Send + 'check);

/// The fate of one request after its attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempted {
    pub outcome: Outcome,
    pub attempts: u32,
    /// The last attempt went out and no answer came back (a timeout, a connection cut
    /// mid-answer): the provider may have it. Not retried blindly; the caller treats the
    /// send as a crash would have left it, in doubt.
    pub in_doubt: bool,
}

struct Channel {
    name: String,
    config: ChannelConfig,
    /// The origins requests may go to, read from the allowlist once.
    allowed: Option<Vec<Origin>>,
    limiter: DefaultDirectRateLimiter,
    /// A client of this channel's own, since its resolver knows the channel's private
    /// addresses. It follows no redirect: a 3xx goes to the adapter like any answer.
    http: reqwest::Client,
    redactor: Redactor,
}

/// Performs adapters' requests for the configured channels.
pub struct Deliverer {
    channels: HashMap<String, Arc<Channel>>,
    /// Formats every request with the adapter but sends nothing: for simulations.
    dry_run: bool,
}

impl Deliverer {
    /// A deliverer for `channels` (name to configuration); an allowlist entry that is not
    /// an origin is refused, naming the channel.
    pub fn new(channels: HashMap<String, ChannelConfig>) -> Result<Deliverer, DeliveryError> {
        let channels = channels
            .into_iter()
            .map(|(name, config)| {
                let allowed = (!config.allowed_hosts.is_empty())
                    .then(|| config.allowed_hosts.iter().map(|entry| Origin::parse(entry)).collect::<Result<Vec<_>, _>>())
                    .transpose()
                    .map_err(|why| DeliveryError::BadAllowlist { channel: name.clone(), why })?;
                // Secrets go only where the operator said, not where an adapter (or a new
                // version of it) declares it would like them to go.
                if allowed.is_none() && !config.secrets.is_empty() {
                    let why = "a channel with secrets must list the origins they may go to".to_string();
                    return Err(DeliveryError::BadAllowlist { channel: name.clone(), why });
                }
                let rate = NonZeroU32::new(config.rate_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
                let http = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    // A proxy from the environment would resolve and connect on our behalf,
                    // past the resolver below that refuses private addresses.
                    .no_proxy()
                    .dns_resolver(Arc::new(GuardedResolver { allowed: Arc::new(config.allow_private_addresses.clone()) }))
                    .build()
                    .map_err(|e| DeliveryError::Adapter(format!("channel `{name}`: the HTTP client: {e}")))?;
                let redactor = Redactor::new(&config.secrets);
                let channel = Channel { name: name.clone(), allowed, limiter: RateLimiter::direct(Quota::per_second(rate)), http, redactor, config };
                Ok((name, Arc::new(channel)))
            })
            .collect::<Result<_, DeliveryError>>()?;
        Ok(Deliverer { channels, dry_run: false })
    }

    /// A deliverer that runs the adapters but sends nothing, answering every request as
    /// delivered: what `rekindle journey simulate` uses.
    pub fn dry_run(channels: HashMap<String, ChannelConfig>) -> Result<Deliverer, DeliveryError> {
        Ok(Deliverer { dry_run: true, ..Deliverer::new(channels)? })
    }

    fn channel(&self, name: &str, registry: &Registry) -> Result<(Arc<Channel>, Arc<Plugin>, AdapterInfo, Context), DeliveryError> {
        let channel = self.channels.get(name).cloned().ok_or_else(|| DeliveryError::UnknownChannel(name.into()))?;
        let plugin = registry.get(&channel.config.slot).map_err(|e| DeliveryError::Adapter(e.to_string()))?;
        let PluginInfo::Channel(info) = plugin.info() else {
            return Err(DeliveryError::Adapter(format!("slot `{}` holds a {} plugin, not a channel adapter", channel.config.slot, plugin.kind())));
        };
        let info = info.clone();
        let mut params = merge_params(&info.params, &channel.config.params).map_err(|e| DeliveryError::Adapter(e.to_string()))?;
        if let Some(url) = &channel.config.feedback_url
            && !channel.config.params.iter().any(|f| f.name == FEEDBACK_URL_PARAM)
            && let Some(field) = params.iter_mut().find(|f| f.name == FEEDBACK_URL_PARAM)
        {
            field.value = rekindle_runtime::wit::Value::Text(url.clone());
        }
        Ok((channel, plugin.clone(), info, Context { now: rekindle_store::now_ms(), params }))
    }

    /// Channel `name`'s adapter, what it declared, and a context for calling it now.
    pub(crate) fn adapter(&self, name: &str, registry: &Registry) -> Result<(Arc<Plugin>, AdapterInfo, Context), DeliveryError> {
        self.channel(name, registry).map(|(_, plugin, info, ctx)| (plugin, info, ctx))
    }

    /// The value of secret `secret` on channel `name`, if configured.
    pub(crate) fn secret(&self, name: &str, secret: &str) -> Option<&str> {
        self.channels.get(name)?.config.secrets.get(secret).map(String::as_str)
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
        self.deliver_checked(registry, name, message, &mut || Box::pin(async { true })).await
    }

    /// [`Deliverer::deliver`], asking `before_each` just before every attempt goes out.
    pub async fn deliver_checked(
        &self,
        registry: &Registry,
        name: &str,
        message: &Message,
        before_each: BeforeEachAttempt<'_, '_>,
    ) -> Result<Vec<Attempted>, DeliveryError> {
        let (channel, plugin, info, ctx) = self.channel(name, registry)?;
        let requests = off_thread(&plugin, &ctx, message, |p, ctx, message| p.deliver(ctx, message)).await.map_err(adapter_failed)?;
        self.perform(&channel, &plugin, &info, &ctx, requests, before_each).await
    }

    /// The request asking channel `name`'s provider whether `message` arrived; `None` when
    /// its adapter cannot ask (no `reconcile` export, or its lookup declines).
    pub async fn lookup(&self, registry: &Registry, name: &str, message: &Message) -> Option<Lookup> {
        let (channel, plugin, info, ctx) = self.channel(name, registry).ok()?;
        let requests = off_thread(&plugin, &ctx, message, |p, ctx, message| p.lookup(ctx, message)).await.ok()??;
        Some(Lookup { channel, plugin, info, ctx, requests })
    }

    /// Asks the provider, for a send a crash left in doubt, whether the message arrived. A
    /// rate limit (429), a provider error (5xx) or no connection means "ask again later",
    /// never "send again": only the provider's answer can rule out a repeat.
    pub async fn reconcile(&self, lookup: Lookup, message: &Message) -> Result<Reconciled, DeliveryError> {
        let Lookup { channel, plugin, info, ctx, requests } = lookup;
        if self.dry_run {
            // Nothing was sent in a dry run, so nothing can have arrived.
            return Ok(Reconciled::Answered(Found::Absent));
        }
        let (request, redactor) = match channel.prepare(&info, &requests)?.pop() {
            Some(prepared) => prepared,
            None => return Ok(Reconciled::Answered(Found::Unknown("the adapter made no lookup request".into()))),
        };
        channel.limiter.until_ready().await;
        let response = match channel.send(&request, &redactor).await {
            Ok(response) => response,
            Err(Failure::Refused(e)) => return Err(e),
            Err(Failure::Transport(why) | Failure::Unanswered(why)) => {
                return Ok(Reconciled::AskAgain { after: ASK_AGAIN_AFTER, why: format!("transport: {why}") });
            }
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
        let found = off_thread(&plugin, &ctx, &(message.clone(), response), |p, ctx, (message, response)| p.confirm(ctx, message, response))
            .await
            .unwrap_or_else(|e| Found::Unknown(format!("the adapter could not read the answer: {e}")));
        Ok(Reconciled::Answered(match found {
            Found::Accepted(id) => Found::Accepted(id.map(|id| redactor.text(&id))),
            Found::Unknown(why) => Found::Unknown(redactor.text(&why)),
            Found::Absent => Found::Absent,
        }))
    }

    /// Applies one audience change on channel `name`, made at `at`: the adapter's context
    /// says that time on every attempt of the change, so a key it derives from the change
    /// and `now` is one per change, and the same when the change is tried again.
    pub async fn sync_audience(&self, registry: &Registry, name: &str, change: &AudienceChange, at: i64) -> Result<Vec<Attempted>, DeliveryError> {
        self.sync_audience_checked(registry, name, change, at, &mut || Box::pin(async { true })).await
    }

    /// [`Deliverer::sync_audience`], asking `before_each` just before every attempt goes out.
    pub async fn sync_audience_checked(
        &self,
        registry: &Registry,
        name: &str,
        change: &AudienceChange,
        at: i64,
        before_each: BeforeEachAttempt<'_, '_>,
    ) -> Result<Vec<Attempted>, DeliveryError> {
        let (channel, plugin, info, ctx) = self.channel(name, registry)?;
        let ctx = Context { now: at, ..ctx };
        let requests = off_thread(&plugin, &ctx, change, |p, ctx, change| p.sync_audience(ctx, change)).await.map_err(adapter_failed)?;
        self.perform(&channel, &plugin, &info, &ctx, requests, before_each).await
    }

    async fn perform(
        &self,
        channel: &Channel,
        plugin: &Arc<Plugin>,
        info: &AdapterInfo,
        ctx: &Context,
        requests: AdapterRequests,
        before_each: BeforeEachAttempt<'_, '_>,
    ) -> Result<Vec<Attempted>, DeliveryError> {
        let cap = channel.config.max_requests;
        if requests.requests.len() > cap {
            return Err(DeliveryError::TooManyRequests { channel: channel.name.clone(), made: requests.requests.len(), cap });
        }
        if self.dry_run {
            return Ok(requests
                .requests
                .iter()
                .map(|_| Attempted { outcome: Outcome::Delivered(Some("dry run".into())), attempts: 0, in_doubt: false })
                .collect());
        }
        // Every request is checked and filled before any is sent: a bad one sends nothing.
        let prepared = channel.prepare(info, &requests)?;
        let mut results = Vec::with_capacity(prepared.len());
        for (original, (request, redactor)) in requests.requests.iter().zip(prepared) {
            let mut attempts = 0;
            let mut in_doubt = false;
            let outcome = loop {
                attempts += 1;
                channel.limiter.until_ready().await;
                if !before_each().await {
                    return Err(DeliveryError::Withdrawn);
                }
                let outcome = match channel.send(&request, &redactor).await {
                    Ok(response) => redacted(&redactor, call_interpret(plugin, ctx, original, response).await),
                    Err(Failure::Refused(e)) => return Err(e),
                    Err(Failure::Transport(why)) => {
                        Outcome::RetryLater(rekindle_runtime::wit::Retry { after_seconds: None, reason: format!("transport: {why}") })
                    }
                    // Sent, perhaps received: a blind retry could message the customer twice.
                    Err(Failure::Unanswered(why)) => {
                        in_doubt = true;
                        break Outcome::RetryLater(rekindle_runtime::wit::Retry { after_seconds: None, reason: format!("no answer after sending: {why}") });
                    }
                };
                match &outcome {
                    Outcome::RetryLater(retry) if attempts < channel.config.max_attempts => {
                        let backoff = channel.config.backoff * 2u32.saturating_pow(attempts - 1);
                        let wait = retry.after_seconds.map_or(backoff, |s| Duration::from_secs(u64::from(s)).max(backoff));
                        tracing::debug!(channel = channel.name, attempts, ?wait, "retrying: {}", retry.reason);
                        tokio::time::sleep(wait.min(LONGEST_RETRY_WAIT)).await;
                    }
                    _ => break outcome,
                }
            };
            results.push(Attempted { outcome, attempts, in_doubt });
        }
        Ok(results)
    }
}

/// A failed adapter call as a delivery error: busy for the host's reasons (a deadline on a
/// loaded machine, no free instance or thread), which may pass, or failed for its own.
fn adapter_failed(e: CallError) -> DeliveryError {
    match e {
        CallError::Timeout(_) | CallError::Busy(_) | CallError::Instantiate(_) => DeliveryError::AdapterBusy(e.to_string()),
        other => DeliveryError::Adapter(other.to_string()),
    }
}

/// Why sending one request got no answer.
enum Failure {
    /// The host would not send it (a private address): no attempt can succeed.
    Refused(DeliveryError),
    /// The request never reached the provider (no connection); the text is redacted.
    Transport(String),
    /// The request went out but no whole answer came back (a timeout, a connection cut):
    /// the provider may have acted on it. The text is redacted.
    Unanswered(String),
}

impl Channel {
    /// Each request checked and filled, with the redactor that also knows the Basic
    /// credentials it carries.
    fn prepare(&self, info: &AdapterInfo, requests: &AdapterRequests) -> Result<Vec<(HttpRequest, Redactor)>, DeliveryError> {
        requests
            .requests
            .iter()
            .map(|r| {
                let mut redactor = self.redactor.clone();
                let filled = self.fill(info, requests.marker.as_ref(), r, &mut redactor)?;
                Ok((filled, redactor))
            })
            .collect()
    }

    /// The request as sent: origin checked, this call's placeholders filled.
    fn fill(
        &self,
        info: &AdapterInfo,
        marker: Option<&rekindle_runtime::SecretMarker>,
        request: &HttpRequest,
        redactor: &mut Redactor,
    ) -> Result<HttpRequest, DeliveryError> {
        let secret = |name: &str| -> Result<&str, DeliveryError> {
            if !info.secrets.iter().any(|s| s == name) {
                return Err(DeliveryError::UndeclaredSecret(name.into()));
            }
            self.config.secrets.get(name).map(String::as_str).ok_or_else(|| DeliveryError::MissingSecret(name.into()))
        };
        let mut fill_text = |text: &str| -> Result<String, DeliveryError> {
            let Some(marker) = marker else { return Ok(text.to_string()) };
            fill_placeholders(text, marker, |reference| match reference {
                SecretRef::Secret(name) => secret(name).map(str::to_string),
                SecretRef::BasicAuth { user, password } => {
                    let pair = format!("{}:{}", secret(user)?, secret(password)?);
                    let token = base64::engine::general_purpose::STANDARD.encode(&pair);
                    redactor.add(&format!("{user}:{password}"), &token);
                    Ok(format!("Basic {token}"))
                }
            })
        };
        // Errors show the URL as the adapter's author wrote it, without this call's marker.
        let as_written = || marker.map_or_else(|| request.url.clone(), |m| rekindle_runtime::show_placeholders(&request.url, m));
        let bad_url = || DeliveryError::BadUrl(as_written());
        let url = fill_text(&request.url)?;
        let parsed = reqwest::Url::parse(&url).map_err(|_| bad_url())?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad_url());
        }
        let origin = Origin::of(&parsed).ok_or_else(bad_url)?;
        // The origin must be the one the adapter wrote, so no secret can choose where the
        // request goes (a placeholder in the host name leaves no valid URL before filling).
        let written = reqwest::Url::parse(&request.url).ok();
        if written.as_ref().and_then(Origin::of).as_ref() != Some(&origin) {
            return Err(DeliveryError::SecretInHost(as_written()));
        }
        let declared;
        let allowed = match &self.allowed {
            Some(allowed) => allowed,
            None => {
                declared =
                    info.hosts.iter().filter(|h| h.as_str() != "*").filter_map(|h| Origin::parse(h).ok()).filter(|o| o.scheme == "https").collect::<Vec<_>>();
                &declared
            }
        };
        if !allowed.contains(&origin) {
            return Err(DeliveryError::HostNotAllowed {
                channel: self.name.clone(),
                origin: origin.to_string(),
                allowed: allowed.iter().map(Origin::to_string).collect::<Vec<_>>().join(", "),
            });
        }
        // A private address written out is the operator's to allow, never the adapter's:
        // listed in the operator's own allowlist, or in allow_private_addresses.
        if let Some(ip) = origin.ip_literal()
            && self.allowed.is_none()
            && !crate::egress::address_allowed(ip, &self.config.allow_private_addresses)
        {
            return Err(DeliveryError::PrivateAddress(format!("{origin} is not a public address, and the operator did not allow it")));
        }
        if let Some((name, _)) = request.headers.iter().find(|(name, _)| FORBIDDEN_HEADERS.iter().any(|f| name.trim().eq_ignore_ascii_case(f))) {
            return Err(DeliveryError::ForbiddenHeader(name.clone()));
        }
        let headers = request.headers.iter().map(|(k, v)| Ok((k.clone(), fill_text(v)?))).collect::<Result<Vec<_>, DeliveryError>>()?;
        // Bodies are filled only when they are text; binary bodies go as written.
        let body = match std::str::from_utf8(&request.body) {
            Ok(text) if text.contains("{{") => fill_text(text)?.into_bytes(),
            _ => request.body.clone(),
        };
        Ok(HttpRequest { method: request.method, url, headers, body })
    }

    /// Sends one filled request and reads at most [`MAX_ANSWER_BYTES`] of the answer, which
    /// comes back with the channel's secrets redacted.
    async fn send(&self, request: &HttpRequest, redactor: &Redactor) -> Result<HttpResponse, Failure> {
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
        let failure = |e: reqwest::Error| match private_address_in(&e) {
            Some(refused) => Failure::Refused(DeliveryError::PrivateAddress(refused.to_string())),
            // The URL can hold a secret (Twilio's account SID); the text must not.
            None if e.is_connect() => Failure::Transport(redactor.text(&e.without_url().to_string())),
            None => Failure::Unanswered(redactor.text(&e.without_url().to_string())),
        };
        let mut response = builder.send().await.map_err(failure)?;
        let status = response.status().as_u16();
        let headers = response.headers().iter().filter_map(|(k, v)| Some((k.to_string(), redactor.text(v.to_str().ok()?)))).collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failure)? {
            let room = MAX_ANSWER_BYTES - body.len();
            if chunk.len() >= room {
                body.extend_from_slice(&chunk[..room]);
                // Dropping the response closes the connection: the rest is never read.
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse { status, headers, body: redactor.bytes(&body) })
    }
}

async fn call_interpret(plugin: &Arc<Plugin>, ctx: &Context, request: &HttpRequest, response: HttpResponse) -> Outcome {
    off_thread(plugin, ctx, &(request.clone(), response), |p, ctx, (request, response)| p.interpret(ctx, request, response))
        .await
        .unwrap_or_else(|e: CallError| Outcome::Failed(format!("the adapter could not read the response: {e}")))
}

/// Calls the adapter on the plugin threads, with its own copies of the arguments: a call
/// may take its whole deadline, which the async workers must not spend.
async fn off_thread<A: Clone + Send + 'static, R: Send + 'static>(
    plugin: &Arc<Plugin>,
    ctx: &Context,
    argument: &A,
    call: impl FnOnce(&Plugin, &Context, &A) -> Result<R, CallError> + Send + 'static,
) -> Result<R, CallError> {
    let (ctx, argument) = (ctx.clone(), argument.clone());
    plugin.call(None, move |adapter| call(adapter, &ctx, &argument)).await
}

/// An outcome with the channel's secrets redacted from its texts, since they are logged
/// and stored in the journey log.
fn redacted(redactor: &Redactor, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Delivered(id) => Outcome::Delivered(id.map(|id| redactor.text(&id))),
        Outcome::RetryLater(retry) => Outcome::RetryLater(rekindle_runtime::wit::Retry { reason: redactor.text(&retry.reason), ..retry }),
        Outcome::Failed(why) => Outcome::Failed(redactor.text(&why)),
        Outcome::NotEligible(why) => Outcome::NotEligible(redactor.text(&why)),
    }
}

/// A provider lookup ready to make: the channel, its adapter and the request.
pub struct Lookup {
    channel: Arc<Channel>,
    plugin: Arc<Plugin>,
    info: AdapterInfo,
    ctx: Context,
    requests: AdapterRequests,
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
