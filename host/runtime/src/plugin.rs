//! One loaded component: its kind, its `describe()` answer, and calls into fresh instances.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::{Component, ComponentExportIndex, Func, TypedFunc};

use crate::bindings::channel::ChannelAdapterPre;
use crate::bindings::rule::SegmentRulePre;
use crate::bindings::tiles::PromoTilesPre;
use crate::bindings::wit::{
    AudienceChange, Context, FEEDBACK_EXPORT, FeedbackEvent, Found, HttpRequest, HttpResponse, Message, Offer, Outcome, PLACEMENT_EXPORT, Placed, Profile,
    RECONCILE_EXPORT, RuleInfo, SignatureScheme, Tile, TileRequest, Verdict,
};
use crate::engine::{CallState, Runtime, RuntimeInner};
use crate::error::{CallError, LoadError};
use crate::kind::{Kind, PluginInfo};
use crate::limits::{Limits, check_size};
use crate::policy;
use crate::secrets::SecretMarker;

/// The requests one adapter call returned, with the marker of the secret placeholders it
/// took: the host fills those, and only those (see [`crate::fill_placeholders`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterRequests {
    pub requests: Vec<HttpRequest>,
    /// `None` when the call took no placeholder: nothing in its requests is then filled.
    pub marker: Option<SecretMarker>,
}

enum Pre {
    Rule(SegmentRulePre<CallState>),
    Channel(ChannelAdapterPre<CallState>),
    Tiles(PromoTilesPre<CallState>),
}

/// A loaded, pre-linked component. Every call gets a fresh store and instance, so nothing
/// leaks between profiles or tenants.
pub struct Plugin {
    runtime: Arc<RuntimeInner>,
    pre: Pre,
    kind: Kind,
    info: PluginInfo,
    digest: String,
    /// The component as uploaded: what an edge bundle transpiles.
    bytes: Arc<[u8]>,
    imports: Vec<String>,
    label: Arc<str>,
    /// A channel adapter's optional `reconcile` export: its `lookup` and `confirm`.
    reconcile: Option<(ComponentExportIndex, ComponentExportIndex)>,
    /// A rule's optional `placement` export: its `place`, checked against the contract's
    /// type at load.
    placement: Option<ComponentExportIndex>,
    /// A channel adapter's optional `feedback` export: how its provider signs webhooks (as
    /// `signature()` answered at load) and its `parse`; `None` when it takes no feedback.
    feedback: Option<(SignatureScheme, ComponentExportIndex)>,
    /// Confines a plugin whose calls ran past their deadline; see [`Plugin::call`].
    confinement: Confinement,
}

/// How a plugin whose calls run past their deadline is kept from holding every core: for a
/// while after its last timeout, its calls on the plugin threads take a slot of its own
/// first, and it has one fewer of those than there are threads. A plugin that keeps to
/// its deadlines is never confined, so it gets every thread.
struct Confinement {
    slots: Arc<tokio::sync::Semaphore>,
    /// When the confinement ends, in ms since `started`; 0 when not confined.
    until: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

/// How long a plugin stays confined after a call of its ran out of time.
const CONFINED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// The least time `describe()` gets at load, whatever the kind's per-call deadline: it runs
/// once, and a cold start on a busy machine must not fail on a 10 ms deadline.
const LOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

impl Confinement {
    fn new(threads: usize) -> Confinement {
        Confinement {
            slots: Arc::new(tokio::sync::Semaphore::new(threads.saturating_sub(1).max(1))),
            until: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn active(&self) -> bool {
        self.until.load(std::sync::atomic::Ordering::Relaxed) > self.now()
    }

    fn begin(&self) {
        let until = self.now().saturating_add(CONFINED_FOR.as_millis() as u64);
        self.until.store(until.max(1), std::sync::atomic::Ordering::Relaxed);
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("kind", &self.kind).field("label", &self.label).finish()
    }
}

impl Plugin {
    /// Validates, compiles (or loads from the cache), links and describes a component.
    pub fn load(runtime: &Runtime, bytes: &[u8]) -> Result<Plugin, LoadError> {
        let inner = &runtime.inner;
        policy::check_format(bytes)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let component = match &inner.cache {
            Some(cache) => cache.load_or_compile(&inner.engine, &digest, bytes)?,
            None => Component::new(&inner.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?,
        };
        let kind = policy::detect_kind(&inner.engine, &component)?;
        let imports = policy::check_imports(&inner.engine, &component, kind)?;
        let instance_pre = inner.linker.instantiate_pre(&component).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let invalid = |e: wasmtime::Error| LoadError::Invalid(format!("{e:#}"));
        let pre = match kind {
            Kind::Rule => Pre::Rule(SegmentRulePre::new(instance_pre).map_err(invalid)?),
            Kind::Channel => Pre::Channel(ChannelAdapterPre::new(instance_pre).map_err(invalid)?),
            Kind::Tiles => Pre::Tiles(PromoTilesPre::new(instance_pre).map_err(invalid)?),
        };
        let label: Arc<str> = format!("{}:{}", kind.world(), &digest[..12]).into();
        let reconcile = (kind == Kind::Channel)
            .then(|| component.get_export_index(None, RECONCILE_EXPORT))
            .flatten()
            .and_then(|at| Some((component.get_export_index(Some(&at), "lookup")?, component.get_export_index(Some(&at), "confirm")?)));
        let placement = (kind == Kind::Rule)
            .then(|| component.get_export_index(None, PLACEMENT_EXPORT))
            .flatten()
            .and_then(|at| component.get_export_index(Some(&at), "place"));
        let mut plugin = Plugin {
            runtime: inner.clone(),
            pre,
            kind,
            // Replaced right below by what describe() says.
            info: PluginInfo::Rule(RuleInfo {
                name: String::new(),
                version: String::new(),
                summary: String::new(),
                params: Vec::new(),
                input: crate::input::empty_query(),
            }),
            digest,
            bytes: bytes.into(),
            imports,
            label,
            reconcile,
            placement,
            feedback: None,
            confinement: Confinement::new(inner.pool.size()),
        };
        plugin.info = plugin.call_describe().map_err(|e| LoadError::Describe(Box::new(e)))?;
        plugin.check_placement()?;
        plugin.feedback = plugin.load_feedback(&component)?;
        if plugin.info.name().trim().is_empty() {
            return Err(LoadError::Describe(Box::new(CallError::BadOutput("describe() returned an empty name".into()))));
        }
        // An adapter built before `secrets` wrote `{{secret:NAME}}` into its requests itself.
        // The host no longer fills that, since customer data can read the same, so such an
        // adapter could never authenticate: better refused now, with the way out.
        if let PluginInfo::Channel(info) = &plugin.info
            && !info.secrets.is_empty()
            && !policy::imports_secrets(&plugin.imports)
        {
            return Err(LoadError::UnmarkedSecrets { secrets: info.secrets.join(", ") });
        }
        plugin.label = format!("{}@{} ({})", plugin.info.name(), plugin.info.version(), &plugin.digest[..12]).into();
        Ok(plugin)
    }

    /// The component's bytes, exactly as loaded.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The plugin kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// What `describe()` returned at load.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Hex SHA-256 of the component bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// The interfaces the component imports.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Runs `call` with this plugin on the plugin threads, never on the caller's thread:
    /// what async code (a request, a send) uses. With `wait`, gives up with
    /// [`CallError::Busy`] when no thread frees within it. A plugin that ran past its
    /// deadline lately is confined to one thread fewer than the pool has, so a plugin that
    /// burns every deadline cannot hold every core.
    pub async fn call<R: Send + 'static>(
        self: &Arc<Self>,
        wait: Option<std::time::Duration>,
        call: impl FnOnce(&Plugin) -> Result<R, CallError> + Send + 'static,
    ) -> Result<R, CallError> {
        let confined = match (self.confinement.active(), wait) {
            (false, _) => None,
            (true, Some(limit)) => Some(tokio::time::timeout(limit, self.confinement.slots.clone().acquire_owned()).await.map_err(|_| CallError::Busy(limit))?),
            (true, None) => Some(self.confinement.slots.clone().acquire_owned().await),
        };
        let plugin = self.clone();
        let result = self.runtime.pool.run(wait, move || call(&plugin)).await?;
        drop(confined);
        if let Err(CallError::Timeout(_)) = &result {
            self.confinement.begin();
        }
        result
    }

    /// The threads real-time segment evaluation runs on, keeping an instance across the
    /// people of a chunk.
    pub fn realtime_pool(&self) -> &crate::CallPool {
        &self.runtime.realtime
    }

    /// The threads background calls to this plugin (segment runs, previews) run on.
    pub fn background_pool(&self) -> &crate::CallPool {
        &self.runtime.background
    }

    /// `name@version (digest)`, the tag its log lines carry.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn limits(&self) -> Limits {
        self.runtime.limits.of(self.kind)
    }

    /// How long one call to this plugin may run.
    pub fn deadline(&self) -> std::time::Duration {
        self.limits().deadline
    }

    fn call_describe(&self) -> Result<PluginInfo, CallError> {
        let limits = self.limits();
        // Loading runs once, often while the machine is busy compiling or starting other
        // hosts: describe() gets a load-time deadline, not the per-call one.
        let at_load = Limits { deadline: limits.deadline.max(LOAD_DEADLINE), ..limits };
        match &self.pre {
            Pre::Rule(pre) => self
                .run_within(at_load, |store| {
                    let instance = pre.instantiate(&mut *store)?;
                    instance.rekindle_plugin_rule().call_describe(store)
                })
                .map(PluginInfo::Rule),
            Pre::Channel(pre) => self
                .run_within(at_load, |store| {
                    let instance = pre.instantiate(&mut *store)?;
                    instance.rekindle_plugin_adapter().call_describe(store)
                })
                .map(PluginInfo::Channel),
            Pre::Tiles(pre) => self
                .run_within(at_load, |store| {
                    let instance = pre.instantiate(&mut *store)?;
                    instance.rekindle_plugin_tiles().call_describe(store)
                })
                .map(PluginInfo::Tiles),
        }
        .and_then(|info| check_size(info, limits))
    }

    /// Refuses a rule whose `placement.place` has another type than the contract's; without
    /// this, every reused instance would fail instead.
    fn check_placement(&self) -> Result<(), LoadError> {
        let (Pre::Rule(pre), Some(place)) = (&self.pre, self.placement) else { return Ok(()) };
        let at_load = Limits { deadline: self.limits().deadline.max(LOAD_DEADLINE), ..self.limits() };
        let checked = self.run_within(at_load, |store| {
            let instance = pre.instance_pre().instantiate(&mut *store)?;
            Ok(instance.get_typed_func::<(&Context, &Profile), (Result<Placed, String>,)>(&mut *store, place).map(drop).map_err(|e| format!("{e:#}")))
        });
        match checked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(mismatch)) => Err(LoadError::Invalid(format!("its export {PLACEMENT_EXPORT} does not match the contract: {mismatch}"))),
            // Not the component's shape: the instance could not be made (a full pool, say).
            Err(call) => Err(LoadError::Describe(Box::new(call))),
        }
    }

    /// How the adapter's provider signs webhooks and the `parse` to call on them, asked once
    /// at load under the load-time deadline; `None` for an adapter that takes no feedback.
    fn load_feedback(&self, component: &Component) -> Result<Option<(SignatureScheme, ComponentExportIndex)>, LoadError> {
        let Pre::Channel(pre) = &self.pre else { return Ok(None) };
        let Some(at) = component.get_export_index(None, FEEDBACK_EXPORT) else { return Ok(None) };
        let mismatch = |what: String| LoadError::Invalid(format!("its export {FEEDBACK_EXPORT} does not match the contract: {what}"));
        let (Some(signature), Some(parse)) = (component.get_export_index(Some(&at), "signature"), component.get_export_index(Some(&at), "parse")) else {
            return Err(mismatch("it lacks `signature` or `parse`".into()));
        };
        let at_load = Limits { deadline: self.limits().deadline.max(LOAD_DEADLINE), ..self.limits() };
        let answered = self.run_within(at_load, |store| {
            let instance = pre.instance_pre().instantiate(&mut *store)?;
            if let Err(e) = instance.get_typed_func::<(&Context, &HttpRequest), (Result<Vec<FeedbackEvent>, String>,)>(&mut *store, parse) {
                return Ok(Err(format!("{e:#}")));
            }
            let signature = match instance.get_typed_func::<(), (Option<SignatureScheme>,)>(&mut *store, signature) {
                Ok(func) => func,
                Err(e) => return Ok(Err(format!("{e:#}"))),
            };
            let (answer,) = signature.call(&mut *store, ())?;
            Ok(Ok(answer))
        });
        let signature = match answered {
            Ok(Ok(signature)) => signature,
            Ok(Err(why)) => return Err(mismatch(why)),
            Err(call) => return Err(LoadError::Describe(Box::new(call))),
        };
        let Some(signature) = signature else { return Ok(None) };
        let PluginInfo::Channel(info) = &self.info else { return Ok(None) };
        if !info.secrets.iter().any(|s| s == signature.secret()) {
            let why = format!("feedback.signature() names the secret `{}`, which describe() does not declare", signature.secret());
            return Err(LoadError::Describe(Box::new(CallError::BadOutput(why))));
        }
        Ok(Some((signature, parse)))
    }

    /// How the adapter's provider signs its webhooks; `None` when it takes no feedback.
    pub fn feedback_signature(&self) -> Option<&SignatureScheme> {
        self.feedback.as_ref().map(|(signature, _)| signature)
    }

    /// The delivery reports in one webhook request, whose signature the caller checked
    /// against [`Plugin::feedback_signature`].
    pub fn parse_feedback(&self, ctx: &Context, request: &HttpRequest) -> Result<Vec<FeedbackEvent>, CallError> {
        let (Pre::Channel(pre), Some((_, parse))) = (&self.pre, &self.feedback) else {
            return Err(CallError::WrongKind { function: "parse", kind: self.kind });
        };
        let parse = *parse;
        let events = self.run(|store| {
            let instance = pre.instance_pre().instantiate(&mut *store)?;
            let parse = instance.get_typed_func::<(&Context, &HttpRequest), (Result<Vec<FeedbackEvent>, String>,)>(&mut *store, parse)?;
            let (events,) = parse.call(&mut *store, (ctx, request))?;
            Ok(events)
        })?;
        check_size(events.map_err(CallError::Plugin)?, self.limits())
    }

    /// Evaluates a segment rule for one profile, already cut down to its declared input.
    pub fn evaluate(&self, ctx: &Context, profile: &Profile) -> Result<Verdict, CallError> {
        let Pre::Rule(pre) = &self.pre else {
            return Err(CallError::WrongKind { function: "evaluate", kind: self.kind });
        };
        let verdict = self.run(|store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.rekindle_plugin_rule().call_evaluate(store, ctx, profile)
        })?;
        check_size(verdict.map_err(CallError::Plugin)?, self.limits())
    }

    /// Membership and label for one profile in a fresh instance, without the reason when
    /// the rule can answer so (`placement`).
    pub fn place(&self, ctx: &Context, profile: &Profile) -> Result<Placed, CallError> {
        let (Pre::Rule(pre), Some(at)) = (&self.pre, self.placement) else { return self.evaluate(ctx, profile).map(Placed::from) };
        let placed = self.run(|store| {
            let instance = pre.instance_pre().instantiate(&mut *store)?;
            let place = instance.get_typed_func::<(&Context, &Profile), (Result<Placed, String>,)>(&mut *store, at)?;
            place.call(&mut *store, (ctx, profile)).map(|(placed,)| placed)
        })?;
        check_size(placed.map_err(CallError::Plugin)?, self.limits())
    }

    /// One instance of a rule kept for many calls, for batch callers and benchmarks that
    /// want the boundary cost without instantiation. Unlike [`Plugin::evaluate`], state the
    /// guest keeps in its memory survives from one call to the next, so use it only for
    /// profiles of one tenant.
    pub fn rule_instance(&self) -> Result<RuleInstance, CallError> {
        let Pre::Rule(pre) = &self.pre else {
            return Err(CallError::WrongKind { function: "evaluate", kind: self.kind });
        };
        let limits = self.limits();
        let mut store = self.runtime.new_store(self.label.clone(), limits);
        let made = pre.instance_pre().instantiate(&mut store).and_then(|instance| {
            let bindings = crate::bindings::rule::SegmentRule::new(&mut store, &instance)?;
            let place = match self.placement {
                Some(at) => Some(*instance.get_typed_func::<(&Context, &Profile), (Result<Placed, String>,)>(&mut store, at)?.func()),
                None => None,
            };
            Ok((bindings, place))
        });
        let (bindings, place) = made.map_err(|e| classify(e, store.data(), limits))?;
        Ok(RuleInstance { store, bindings, place, limits })
    }

    /// Whether the rule answers membership without its reason (`placement`).
    pub fn can_place(&self) -> bool {
        self.placement.is_some()
    }

    /// Ranks and personalises tiles for a slot.
    pub fn decide(&self, ctx: &Context, request: &TileRequest, profile: Option<&Profile>, offers: &[Offer]) -> Result<Vec<Tile>, CallError> {
        let Pre::Tiles(pre) = &self.pre else {
            return Err(CallError::WrongKind { function: "decide", kind: self.kind });
        };
        let tiles = self.run(|store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.rekindle_plugin_tiles().call_decide(store, ctx, request, profile, offers)
        })?;
        let tiles = check_size(tiles.map_err(CallError::Plugin)?, self.limits())?;
        if tiles.len() > request.max_tiles as usize {
            return Err(CallError::BadOutput(format!("returned {} tiles for a slot of {}", tiles.len(), request.max_tiles)));
        }
        if let Some(tile) = tiles.iter().find(|t| !offers.iter().any(|o| o.id == t.offer_id)) {
            return Err(CallError::BadOutput(format!("tile refers to offer `{}`, which was not among the candidates", tile.offer_id)));
        }
        Ok(tiles)
    }

    /// The requests that deliver one rendered message.
    pub fn deliver(&self, ctx: &Context, message: &Message) -> Result<AdapterRequests, CallError> {
        let Pre::Channel(pre) = &self.pre else {
            return Err(CallError::WrongKind { function: "deliver", kind: self.kind });
        };
        let (requests, marker) = self.run_marked(|store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.rekindle_plugin_adapter().call_deliver(store, ctx, message)
        })?;
        let requests = check_size(requests.map_err(CallError::Plugin)?, self.limits())?;
        Ok(AdapterRequests { requests, marker })
    }

    /// The requests that apply one audience change.
    pub fn sync_audience(&self, ctx: &Context, change: &AudienceChange) -> Result<AdapterRequests, CallError> {
        let Pre::Channel(pre) = &self.pre else {
            return Err(CallError::WrongKind { function: "sync-audience", kind: self.kind });
        };
        let (requests, marker) = self.run_marked(|store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.rekindle_plugin_adapter().call_sync_audience(store, ctx, change)
        })?;
        let requests = check_size(requests.map_err(CallError::Plugin)?, self.limits())?;
        Ok(AdapterRequests { requests, marker })
    }

    /// What a provider's response to one of the adapter's requests means.
    pub fn interpret(&self, ctx: &Context, request: &HttpRequest, response: &HttpResponse) -> Result<Outcome, CallError> {
        let Pre::Channel(pre) = &self.pre else {
            return Err(CallError::WrongKind { function: "interpret", kind: self.kind });
        };
        let outcome = self.run(|store| {
            let instance = pre.instantiate(&mut *store)?;
            instance.rekindle_plugin_adapter().call_interpret(store, ctx, request, response)
        })?;
        check_size(outcome, self.limits())
    }

    /// Whether the adapter can ask its provider if a message arrived (`reconcile`).
    pub fn can_reconcile(&self) -> bool {
        self.reconcile.is_some()
    }

    /// The request asking the provider whether `message` arrived; `None` when the adapter
    /// does not export `reconcile`.
    pub fn lookup(&self, ctx: &Context, message: &Message) -> Result<Option<AdapterRequests>, CallError> {
        let (Pre::Channel(pre), Some((lookup, _))) = (&self.pre, &self.reconcile) else {
            return Ok(None);
        };
        let (request, marker) = self.run_marked(|store| {
            let instance = pre.instance_pre().instantiate(&mut *store)?;
            // Typed against the adapter's own records: the component model checks structure.
            let lookup = instance.get_typed_func::<(&Context, &Message), (Result<HttpRequest, String>,)>(&mut *store, lookup)?;
            let (request,) = lookup.call(&mut *store, (ctx, message))?;
            Ok(request)
        })?;
        let request = check_size(request.map_err(CallError::Plugin)?, self.limits())?;
        Ok(Some(AdapterRequests { requests: vec![request], marker }))
    }

    /// What the provider's answer to [`Plugin::lookup`] means.
    pub fn confirm(&self, ctx: &Context, message: &Message, response: &HttpResponse) -> Result<Found, CallError> {
        let (Pre::Channel(pre), Some((_, confirm))) = (&self.pre, &self.reconcile) else {
            return Err(CallError::WrongKind { function: "confirm", kind: self.kind });
        };
        let found = self.run(|store| {
            let instance = pre.instance_pre().instantiate(&mut *store)?;
            let confirm = instance.get_typed_func::<(&Context, &Message, &HttpResponse), (Found,)>(&mut *store, confirm)?;
            let (found,) = confirm.call(&mut *store, (ctx, message, response))?;
            Ok(found)
        })?;
        check_size(found, self.limits())
    }

    /// Runs `f` in a fresh store and turns every wasmtime failure into a typed error.
    fn run<R>(&self, f: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<R>) -> Result<R, CallError> {
        self.run_marked(f).map(|(result, _)| result)
    }

    /// [`Plugin::run`] under other limits than the kind's.
    fn run_within<R>(&self, limits: Limits, f: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<R>) -> Result<R, CallError> {
        self.run_marked_within(limits, f).map(|(result, _)| result)
    }

    /// [`Plugin::run`], also returning the marker of the secret placeholders the call took.
    fn run_marked<R>(&self, f: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<R>) -> Result<(R, Option<SecretMarker>), CallError> {
        self.run_marked_within(self.limits(), f)
    }

    fn run_marked_within<R>(
        &self,
        limits: Limits,
        f: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<R>,
    ) -> Result<(R, Option<SecretMarker>), CallError> {
        let mut store = self.runtime.new_store(self.label.clone(), limits);
        let result = f(&mut store);
        let state = store.data_mut();
        if state.log_dropped > 0 {
            tracing::warn!(plugin = &*self.label, "dropped {} bytes of log", state.log_dropped);
        }
        let marker = state.secret_marker.take();
        result.map(|r| (r, marker)).map_err(|err| classify(err, state, limits))
    }
}

/// A rule instance reused across calls; see [`Plugin::rule_instance`].
pub struct RuleInstance {
    store: Store<CallState>,
    bindings: crate::bindings::rule::SegmentRule,
    /// `placement.place`, type-checked when the instance was made.
    place: Option<Func>,
    limits: Limits,
}

impl RuleInstance {
    /// Evaluates one profile, with the deadline re-armed for this call.
    pub fn evaluate(&mut self, ctx: &Context, profile: &Profile) -> Result<Verdict, CallError> {
        let ticks = self.limits.deadline.as_millis().max(1) as u64;
        self.store.set_epoch_deadline(ticks);
        let result = self.bindings.rekindle_plugin_rule().call_evaluate(&mut self.store, ctx, profile);
        let verdict = result.map_err(|e| classify(e, self.store.data(), self.limits))?;
        check_size(verdict.map_err(CallError::Plugin)?, self.limits)
    }

    /// Whether the rule answers membership without its reason (`placement`).
    pub fn can_place(&self) -> bool {
        self.place.is_some()
    }

    /// Membership and label for one profile, without the reason when the rule can answer
    /// so (`placement`), and from [`RuleInstance::evaluate`] when it cannot.
    pub fn place(&mut self, ctx: &Context, profile: &Profile) -> Result<Placed, CallError> {
        let Some(place) = self.place else { return self.evaluate(ctx, profile).map(Placed::from) };
        let ticks = self.limits.deadline.as_millis().max(1) as u64;
        self.store.set_epoch_deadline(ticks);
        // SAFETY: `place` was obtained through `get_typed_func` with exactly this type when
        // the instance was made, which checked it against the component's export.
        let place = unsafe { TypedFunc::<(&Context, &Profile), (Result<Placed, String>,)>::new_unchecked(place) };
        let result = place.call(&mut self.store, (ctx, profile)).map(|(placed,)| placed);
        let placed = result.map_err(|e| classify(e, self.store.data(), self.limits))?;
        check_size(placed.map_err(CallError::Plugin)?, self.limits)
    }
}

fn classify(err: wasmtime::Error, state: &CallState, limits: Limits) -> CallError {
    if let Some(wanted) = state.memory_exceeded {
        return CallError::OutOfMemory { wanted, cap: limits.memory_bytes };
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => CallError::Timeout(limits.deadline),
        Some(wasmtime::Trap::StackOverflow) => CallError::Trap("stack overflow".into()),
        // A Rust guest's shadow stack sits at the bottom of linear memory, so overflowing it
        // shows up as an access below address zero rather than as a native stack overflow.
        Some(wasmtime::Trap::MemoryOutOfBounds) => CallError::Trap(
            "out of bounds memory access; in a Rust plugin this usually means a stack overflow \
             (deep or endless recursion in a 64 KiB stack)"
                .into(),
        ),
        Some(wasmtime::Trap::UnreachableCodeReached) if state.panic.is_some() => CallError::Trap(state.panic.clone().unwrap_or_default()),
        Some(trap) => CallError::Trap(trap.to_string()),
        // The pooling allocator has no free slot: the host is at capacity. Its error is typed;
        // a store's own instance limit is not ("instance count"), and other pool errors are
        // still known by their words, as before.
        None if err.chain().any(|e| e.is::<wasmtime::PoolConcurrencyLimitError>())
            || err.to_string().contains("instance count")
            || err.to_string().contains("pool") =>
        {
            CallError::Instantiate(format!("{err:#}"))
        }
        None => CallError::Trap(format!("{err:#}")),
    }
}
