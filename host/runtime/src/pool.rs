//! The threads plugin calls run on. A call may spend its whole deadline computing, so it
//! must not run on an async worker, where it would hold up every request sharing that
//! worker (`/health`, ingestion). Instead callers hand it to a fixed set of threads. A slot
//! on them is taken before the instance is created, as `wasmtime serve` does with its
//! semaphore, so a flood of calls waits (or gives up) instead of piling up instances. The
//! threads run at a lower scheduling priority than the rest of the host: when plugins
//! keep every core busy, the host's own work still gets the CPU first.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::CallError;

/// A fixed set of low-priority threads for plugin calls, with one slot per thread.
pub struct CallPool {
    slots: Arc<Semaphore>,
    threads: rayon::ThreadPool,
    size: usize,
}

impl std::fmt::Debug for CallPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallPool").field("size", &self.size).field("free", &self.slots.available_permits()).finish()
    }
}

/// How much lower than the host's other threads the plugin threads of calls a request
/// waits on are scheduled (a nice value): enough that a woken request thread gets a core
/// promptly. Measured: with 0, a crowd of looping tile calls took `/health`'s p99 to
/// 2.8× its unloaded figure; with 10, 1.4× (BENCHMARKS.md).
pub const INTERACTIVE_NICE: i32 = 10;

/// The same for background work (scheduled segment runs, previews), lower still, so it
/// yields to tile decisions too.
pub const BACKGROUND_NICE: i32 = 15;

impl CallPool {
    /// A pool of `size` threads (at least one), named `rekindle-{name}-N`, scheduled
    /// `nice` below the host's other threads.
    pub fn new(name: &'static str, size: usize, nice: i32) -> std::io::Result<CallPool> {
        let size = size.max(1);
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(size)
            .thread_name(move |i| format!("rekindle-{name}-{i}"))
            .start_handler(move |_| lower_this_threads_priority(nice))
            // A panic in host code around a call must not take the process down: the
            // caller sees the call fail instead (its answer channel closes).
            .panic_handler(|_| tracing::error!("a plugin call panicked in the host; the call fails"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(CallPool { slots: Arc::new(Semaphore::new(size)), threads, size })
    }

    /// Runs `call` on a plugin thread, once a slot is free. With `wait`, gives up with
    /// [`CallError::Busy`] when no slot frees within it: what a caller with a fallback (a
    /// tile decision) wants rather than a queue.
    pub async fn run<R: Send + 'static>(&self, wait: Option<Duration>, call: impl FnOnce() -> R + Send + 'static) -> Result<R, CallError> {
        let slot = self.slots.clone().acquire_owned();
        let slot = match wait {
            Some(limit) => tokio::time::timeout(limit, slot).await.map_err(|_| CallError::Busy(limit))?,
            None => slot.await,
        }
        .map_err(|_| CallError::Instantiate("the plugin threads have stopped".into()))?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.threads.spawn(move || {
            let _slot = slot;
            let _ = answer.send(call());
        });
        answered.await.map_err(|_| CallError::Trap("the host failed while running this call".into()))
    }
}

#[cfg(target_os = "linux")]
fn lower_this_threads_priority(nice: i32) {
    // On Linux a nice value belongs to the thread, so this leaves the others alone.
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let failed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0
    };
    if failed {
        tracing::warn!("could not lower a plugin thread's priority: {}", std::io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority(_nice: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_pool_makes_a_bounded_wait_give_up() {
        let pool = Arc::new(CallPool::new("test", 1, INTERACTIVE_NICE).unwrap());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = pool.clone();
        let holder = tokio::spawn(async move { busy.run(None, move || held.recv().ok()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = pool.run(Some(Duration::from_millis(20)), || 1).await;
        assert_eq!(refused, Err(CallError::Busy(Duration::from_millis(20))));
        release.send(()).unwrap();
        assert_eq!(holder.await.unwrap(), Ok(Some(())));
        assert_eq!(pool.run(Some(Duration::from_millis(200)), || 2).await, Ok(2));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn plugin_threads_run_at_a_lower_priority() {
        let pool = CallPool::new("test", 1, BACKGROUND_NICE).unwrap();
        // SAFETY: as in lower_this_threads_priority.
        let nice = |tid: libc::id_t| unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        let theirs = pool.run(None, move || nice(unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t)).await.unwrap();
        let ours = nice(unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t);
        assert_eq!(theirs, (ours + BACKGROUND_NICE).min(19));
    }
}
