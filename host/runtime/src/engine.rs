//! One wasmtime engine for every plugin: pooling allocator, copy-on-write heaps, epoch
//! interruption, and the per-call store with its limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::StoreContextMut;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::bindings::rule::SegmentRule;
use crate::bindings::wit::{Level, SECRETS_IMPORT};
use crate::cache::ArtifactCache;
use crate::limits::{KindLimits, Limits};
use crate::pool::{BACKGROUND_NICE, CallPool, INTERACTIVE_NICE, REALTIME_NICE};
use crate::secrets::SecretMarker;

/// Bytes of each pooled memory and table kept resident between instances.
const KEEP_RESIDENT: usize = 128 << 10;

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How to build a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub limits: KindLimits,
    /// Where compiled artifacts are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may be alive at once (the pooling allocator's size).
    pub max_instances: u32,
    /// Threads for plugin calls made through [`Runtime::pool`]; 0 means one per core.
    pub plugin_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { limits: KindLimits::default(), cache_dir: None, max_instances: 1000, plugin_threads: 0 }
    }
}

/// The shared wasmtime engine, linker and limits; cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<CallState>,
    pub(crate) limits: KindLimits,
    pub(crate) cache: Option<ArtifactCache>,
    pub(crate) pool: CallPool,
    pub(crate) realtime: CallPool,
    pub(crate) background: CallPool,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Builds the engine, probing for the pooling allocator and falling back to on-demand
    /// allocation where the address space cannot hold the pool.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, wasmtime::Error> {
        let max_memory = [config.limits.rule, config.limits.tiles, config.limits.channel].iter().map(|l| l.memory_bytes).max().unwrap_or(32 << 20);
        let engine = match Engine::new(&engine_config(Some((config.max_instances, max_memory)))) {
            Ok(engine) => engine,
            Err(err) => {
                tracing::warn!("pooling allocator unavailable ({err}); using on-demand allocation");
                Engine::new(&engine_config(None))?
            }
        };
        let mut linker = Linker::new(&engine);
        // The only imports a plugin gets: the contract's types and its log, and for channel
        // adapters their secret placeholders (the import policy keeps those to adapters).
        SegmentRule::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |state| state)?;
        let mut secrets = linker.instance(SECRETS_IMPORT)?;
        secrets.func_wrap("placeholder", |mut call: StoreContextMut<'_, CallState>, (name,): (String,)| {
            Ok((crate::secrets::placeholder(&name, call.data_mut().marker()),))
        })?;
        secrets.func_wrap("basic-auth", |mut call: StoreContextMut<'_, CallState>, (user, password): (String, String)| {
            Ok((crate::secrets::basic_auth_placeholder(&user, &password, call.data_mut().marker()),))
        })?;
        let cache = config.cache_dir.map(|dir| ArtifactCache::new(dir, &engine));
        // Without the ticker no deadline would ever fire, so failing to start it is fatal.
        let ticker = EpochTicker::start(engine.clone())?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = match config.plugin_threads {
            0 => cores,
            n => n,
        };
        // Never more calls at once, over the three sets, than the pooling allocator has
        // instances for.
        let share = (config.max_instances.max(3) / 3) as usize;
        let pool = CallPool::new("plugin", threads.min(share), INTERACTIVE_NICE)?;
        // Real-time segment evaluation and scheduled runs use at most two threads each, at
        // lower priorities: they never take a thread a tile decision is waiting for, and
        // each yields the cores to ingestion, whose writes they wait on anyway.
        let realtime = CallPool::new("realtime", cores.min(2).min(share), REALTIME_NICE)?;
        let background = CallPool::new("background", cores.min(2).min(share), BACKGROUND_NICE)?;
        Ok(Runtime { inner: Arc::new(RuntimeInner { engine, linker, limits: config.limits, cache, pool, realtime, background, _ticker: ticker }) })
    }

    /// The wasmtime engine, for tools that need to inspect components.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The limits in force.
    pub fn limits(&self) -> KindLimits {
        self.inner.limits
    }
}

fn engine_config(pool: Option<(u32, usize)>) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    // Guest recursion is bounded well before it can exhaust the host thread's stack.
    config.max_wasm_stack(512 << 10);
    if let Some((instances, max_memory)) = pool {
        let mut pooling = PoolingAllocationConfig::new();
        pooling.total_component_instances(instances);
        pooling.total_core_instances(instances * 2);
        pooling.total_memories(instances * 2);
        pooling.total_tables(instances * 2);
        pooling.max_memory_size(max_memory);
        pooling.max_core_instances_per_component(8);
        // A plugin call touches a few pages at the bottom of its memory (a 64 KiB stack,
        // static data, a small bump heap). Resetting those with memset on reuse is cheaper
        // than madvise, which costs a syscall, TLB shootdowns and fresh page faults.
        pooling.linear_memory_keep_resident(KEEP_RESIDENT);
        pooling.table_keep_resident(KEEP_RESIDENT);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

/// Advances the engine's epoch every tick until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("rekindle-epoch".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })?;
        Ok(EpochTicker { stop, thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The store data of one call: its limits and what the plugin logged.
pub(crate) struct CallState {
    plugin: Arc<str>,
    memory_cap: usize,
    /// Bytes of linear memory across all of the instance's memories.
    memory_total: usize,
    log_cap: usize,
    pub(crate) memory_exceeded: Option<usize>,
    pub(crate) log: String,
    pub(crate) log_dropped: usize,
    pub(crate) panic: Option<String>,
    /// The marker of the secret placeholders this call handed out, drawn at the first.
    pub(crate) secret_marker: Option<SecretMarker>,
}

/// Prefix the SDK's panic handler puts on the line it logs before trapping.
const PANIC_PREFIX: &str = "panicked at ";

impl CallState {
    pub(crate) fn new(plugin: Arc<str>, limits: Limits) -> CallState {
        CallState {
            plugin,
            memory_cap: limits.memory_bytes,
            memory_total: 0,
            log_cap: limits.log_bytes,
            memory_exceeded: None,
            log: String::new(),
            log_dropped: 0,
            panic: None,
            secret_marker: None,
        }
    }
}

impl RuntimeInner {
    /// A fresh store for one call, with its memory cap and deadline armed.
    pub(crate) fn new_store(&self, plugin: Arc<str>, limits: Limits) -> Store<CallState> {
        let mut store = Store::new(&self.engine, CallState::new(plugin, limits));
        store.limiter(|state| state);
        let ticks = limits.deadline.as_millis().max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }
}

impl wasmtime::ResourceLimiter for CallState {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // The cap is for the whole instance: a component may hold several core memories.
        let total = self.memory_total + desired.saturating_sub(current);
        if total > self.memory_cap {
            self.memory_exceeded = Some(total);
            // Trapping here, rather than failing the grow, stops the guest at the allocation
            // that broke the cap instead of at whatever its allocator does next.
            wasmtime::bail!("memory cap of {} bytes exceeded", self.memory_cap);
        }
        self.memory_total = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl CallState {
    fn marker(&mut self) -> &SecretMarker {
        self.secret_marker.get_or_insert_with(SecretMarker::fresh)
    }
}

impl crate::bindings::rule::rekindle::plugin::types::Host for CallState {}

impl crate::bindings::rule::rekindle::plugin::log::Host for CallState {
    fn write(&mut self, level: Level, message: String) {
        if let Some(rest) = message.strip_prefix(PANIC_PREFIX) {
            self.panic = Some(format!("{PANIC_PREFIX}{rest}"));
        }
        // Beyond the cap lines are only counted, so a plugin logging in a loop cannot flood
        // the host log either.
        let room = self.log_cap.saturating_sub(self.log.len());
        if message.len() + 1 > room {
            self.log_dropped += message.len();
            return;
        }
        let plugin = &*self.plugin;
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
        self.log.push_str(&message);
        self.log.push('\n');
    }
}
