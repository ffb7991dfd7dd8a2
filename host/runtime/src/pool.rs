//! The threads plugin calls run on. A call may spend its whole deadline computing, so it
//! must not run on an async worker, where it would hold up every request sharing that
//! worker (`/health`, ingestion). Instead callers hand it to a fixed set of threads. A slot
//! on them is taken before the instance is created, as `wasmtime serve` does with its
//! semaphore, so a flood of calls waits (or gives up) instead of piling up instances.
//!
//! The calls a request waits on get one thread per core; a plugin whose calls run past
//! their deadline is confined to one fewer (see `Plugin::call`), so it can never hold all
//! the cores. Background work gets threads of its own, at a lower scheduling priority, so
//! it yields to everything else.

use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::CallError;

/// A call's work, which returns how to hand its answer over: the thread is back on the
/// idle stack before the caller hears, so a caller's next call finds the same thread.
type Job = Box<dyn FnOnce() -> Deliver + Send>;
type Deliver = Box<dyn FnOnce() + Send>;

/// A call handed to one thread: the work, the slot it holds, and the way back to that
/// thread, which the thread puts back on the idle stack when done.
struct Task {
    job: Job,
    slot: OwnedSemaphorePermit,
    to_this_thread: mpsc::Sender<Task>,
}

/// The idle threads, the one that went idle last on top.
type Idle = Mutex<Vec<mpsc::Sender<Task>>>;

/// A fixed set of threads for plugin calls, with one slot per thread.
pub struct CallPool {
    slots: Arc<Semaphore>,
    idle: Arc<Idle>,
    size: usize,
}

impl std::fmt::Debug for CallPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallPool").field("size", &self.size).field("free", &self.slots.available_permits()).finish()
    }
}

/// How much lower than the host's other threads the threads of calls a request waits on
/// are scheduled (a nice value). None: a plugin that burns its deadlines is confined to
/// leave a core free instead, and a lower priority made legitimate tile calls miss their
/// deadline whenever HTTP work filled the cores (BENCHMARKS.md).
pub const INTERACTIVE_NICE: i32 = 0;

/// The same for real-time segment evaluation: a membership's latency waits on the SQLite
/// writer as much as on the evaluation, so the evaluation yields the cores to it and to
/// ingestion (BENCHMARKS.md).
pub const REALTIME_NICE: i32 = 10;

/// The same for background work (scheduled segment runs, previews): it yields to tile
/// decisions and requests.
pub const BACKGROUND_NICE: i32 = 15;

impl CallPool {
    /// How many calls may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A pool of `size` threads (at least one), named `rekindle-{name}-N`, scheduled
    /// `nice` below the host's other threads. The threads end when the pool is dropped.
    pub fn new(name: &'static str, size: usize, nice: i32) -> std::io::Result<CallPool> {
        let size = size.max(1);
        let idle: Arc<Idle> = Arc::new(Mutex::new(Vec::with_capacity(size)));
        for i in 0..size {
            let (to_this_thread, tasks) = mpsc::channel::<Task>();
            idle.lock().unwrap_or_else(|p| p.into_inner()).push(to_this_thread);
            let idle = Arc::downgrade(&idle);
            std::thread::Builder::new().name(format!("rekindle-{name}-{i}")).spawn(move || {
                lower_this_threads_priority(nice);
                serve_tasks(&tasks, &idle);
            })?;
        }
        Ok(CallPool { slots: Arc::new(Semaphore::new(size)), idle, size })
    }

    /// Runs `call` on a plugin thread, once a slot is free. With `wait`, gives up with
    /// [`CallError::Busy`] when no slot frees within it: what a caller with a fallback (a
    /// tile decision) wants rather than a queue.
    pub async fn run<R: Send + 'static>(&self, wait: Option<Duration>, call: impl FnOnce() -> R + Send + 'static) -> Result<R, CallError> {
        let stopped = || CallError::Instantiate("the plugin threads have stopped".into());
        let slot = self.slots.clone().acquire_owned();
        let slot = match wait {
            Some(limit) => tokio::time::timeout(limit, slot).await.map_err(|_| CallError::Busy(limit))?,
            None => slot.await,
        }
        .map_err(|_| stopped())?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let result = call();
            Box::new(move || {
                let _ = answer.send(result);
            })
        });
        // A thread is back on the stack before it gives up its slot, so holding a slot
        // means one is there.
        let to_thread = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop().ok_or_else(stopped)?;
        to_thread.send(Task { job, slot, to_this_thread: to_thread.clone() }).map_err(|_| stopped())?;
        answered.await.map_err(|_| CallError::Trap("the host failed while running this call".into()))
    }
}

/// A plugin thread's life: run each task handed to it, then go back on top of the idle
/// stack. Last idle, first picked: a pool that is mostly idle keeps waking the same
/// thread, still warm on its core, instead of taking turns, which moved a burning plugin
/// from core to core and onto the HTTP workers' (BENCHMARKS.md).
fn serve_tasks(tasks: &mpsc::Receiver<Task>, idle: &Weak<Idle>) {
    while let Ok(Task { job, slot, to_this_thread }) = tasks.recv() {
        // A panic in host code around a call must not take the thread down: the caller
        // sees the call fail instead (its answer channel closes).
        let deliver = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        if deliver.is_err() {
            tracing::error!("a plugin call panicked in the host; the call fails");
        }
        let pool_is_gone = match idle.upgrade() {
            Some(idle) => {
                idle.lock().unwrap_or_else(|p| p.into_inner()).push(to_this_thread);
                false
            }
            None => true,
        };
        drop(slot);
        if let Ok(deliver) = deliver {
            deliver();
        }
        if pool_is_gone {
            return;
        }
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

    #[tokio::test]
    async fn calls_one_after_another_stay_on_one_thread() {
        let pool = CallPool::new("test", 3, INTERACTIVE_NICE).unwrap();
        let mut threads = std::collections::BTreeSet::new();
        for _ in 0..6 {
            threads.insert(pool.run(None, || std::thread::current().name().map(str::to_owned)).await.unwrap());
        }
        assert_eq!(threads.len(), 1, "sequential calls took turns between threads");
    }

    #[tokio::test]
    async fn concurrent_calls_use_every_thread() {
        let pool = Arc::new(CallPool::new("test", 3, INTERACTIVE_NICE).unwrap());
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let (pool, barrier) = (pool.clone(), barrier.clone());
                // Each call waits for the other two, so all three must run at once.
                tokio::spawn(async move { pool.run(None, move || (barrier.wait(), std::thread::current().name().map(str::to_owned)).1).await })
            })
            .collect();
        let mut threads = std::collections::BTreeSet::new();
        for call in calls {
            threads.insert(call.await.unwrap().unwrap());
        }
        assert_eq!(threads.len(), 3);
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
