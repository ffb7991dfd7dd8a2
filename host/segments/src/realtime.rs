//! Real-time segments: the people ingestion touched, re-evaluated in the background in
//! chunks, so ingestion is acknowledged without waiting for rules.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rekindle_runtime::Registry;
use rekindle_store::{Clock, SegmentDefinition, Store, StoreError};

use crate::batch::{Plan, WasmEvaluator};
use crate::definition::{Cutoffs, resolve_auto_params};

/// People read and evaluated together on the real-time path. Small, so the people touched
/// first are written first instead of waiting for everyone touched since; large enough to
/// use both cores.
const REALTIME_CHUNK: usize = 64;

/// Real-time verdict writes waiting to commit at once; more means the store is behind, and
/// reading on would only queue more.
const MAX_WRITES_IN_FLIGHT: usize = 4;

/// How long the real-time loop waits before retrying after the store failed it.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// How long real-time passes reuse RFM cutoffs: a population scan per pass would cost more
/// than the pass, and quintiles drift slowly.
const AUTO_PARAMS_FOR: i64 = 10 * 60_000;

/// Re-evaluates the real-time segments of the people ingested messages touched, in the
/// background, so ingestion is acknowledged without waiting for rules.
///
/// People wait in one queue in the order they were first touched, each once however many
/// events arrive meanwhile. They are taken a chunk at a time: a chunk is read while the
/// previous chunk's verdicts are being written, and a person whose verdict is still being
/// written waits for the next chunk, so no read sees a membership about to change.
pub async fn realtime_loop(
    registry: Arc<Registry>,
    store: Arc<Store>,
    clock: Clock,
    mut touched: tokio::sync::mpsc::UnboundedReceiver<Vec<rekindle_store::Touch>>,
) {
    let mut waiting = Waiting::default();
    let mut auto_params = AutoParams::default();
    // Verdict writes in flight, with the people each changes. Writes for different people
    // may commit in any order; nobody is read again until their write has committed.
    let mut writing: VecDeque<(VerdictWrite, HashSet<String>)> = VecDeque::new();
    loop {
        while writing.front().is_some_and(|(write, _)| write.is_finished()) {
            finish_oldest(&mut writing, &mut waiting).await;
        }
        let mut arrived = Vec::new();
        if waiting.queue.is_empty() {
            // Nothing to read: let the writes finish, then sleep until someone is touched.
            if !writing.is_empty() {
                finish_oldest(&mut writing, &mut waiting).await;
                continue;
            }
            match touched.recv().await {
                Some(touches) => arrived.extend(touches),
                None => return,
            }
        }
        while let Ok(more) = touched.try_recv() {
            arrived.extend(more);
        }
        let now = clock.now();
        let plan = match realtime_plan(&registry, &store, &mut auto_params, now).await {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!("real-time evaluation cannot plan: {e}");
                // Everyone touched stays queued for when the store answers again.
                waiting.push_back(arrived.into_iter().map(|t| t.profile_id));
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        waiting.push_back(arrived.into_iter().filter(|t| plan.reads(t)).map(|t| t.profile_id));
        let chunk = waiting.take(REALTIME_CHUNK, |id| writing.iter().any(|(_, ids)| ids.contains(id)));
        if chunk.is_empty() {
            // Everyone waiting is being written: wait for the oldest write.
            finish_oldest(&mut writing, &mut waiting).await;
            continue;
        }
        let (people, started) = (chunk.len(), std::time::Instant::now());
        let writes = match crate::batch::evaluate_ids(&store, Arc::new(plan), Arc::new(WasmEvaluator), chunk.clone()).await {
            Ok((writes, report)) => {
                tracing::debug!(people, evaluations = report.evaluations(), writes = writes.len(), took = ?started.elapsed(), "real-time evaluation");
                writes
            }
            Err(e) => {
                tracing::error!("real-time evaluation failed: {e}");
                waiting.push_front(chunk);
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        if writing.len() >= MAX_WRITES_IN_FLIGHT {
            finish_oldest(&mut writing, &mut waiting).await;
        }
        if !writes.is_empty() {
            let ids = writes.iter().map(|w| w.profile_id.clone()).collect();
            let store = store.clone();
            writing.push_back((tokio::spawn(async move { store.record_verdicts(writes, now).await }), ids));
        }
    }
}

/// Resolved definitions by segment name, with the parameters they were resolved from and when.
type AutoParams = HashMap<String, (serde_json::Value, i64, SegmentDefinition)>;

/// The real-time segments planned at `now`, with RFM cutoffs reused from `cache` while fresh.
async fn realtime_plan(registry: &Registry, store: &Store, cache: &mut AutoParams, now: i64) -> Result<Plan, StoreError> {
    let mut resolved = Vec::new();
    for def in store.segments().await?.into_iter().filter(|s| s.schedule == "realtime") {
        match cache.get(&def.name) {
            Some((params, at, done)) if *params == def.params && now - at < AUTO_PARAMS_FOR && done.slot == def.slot => resolved.push(done.clone()),
            _ => match resolve_auto_params(store, &def, now, Cutoffs::Recorded).await {
                Ok((done, _)) => {
                    cache.insert(def.name.clone(), (def.params.clone(), now, done.clone()));
                    resolved.push(done);
                }
                Err(e) => tracing::error!(segment = def.name, "real-time evaluation cannot resolve parameters: {e}"),
            },
        }
    }
    let (plan, refused) = Plan::new(registry, store, &resolved, now, Cutoffs::Recorded).await?;
    for (segment, e) in refused {
        tracing::warn!(segment, "real-time evaluation skipped a segment: {e}");
    }
    Ok(plan)
}

/// A real-time verdict write in flight: how many entries and exits it made.
type VerdictWrite = tokio::task::JoinHandle<Result<usize, StoreError>>;

/// People waiting for real-time evaluation, in the order they were first touched, each once.
#[derive(Default)]
struct Waiting {
    queue: VecDeque<String>,
    queued: HashSet<String>,
}

impl Waiting {
    /// Adds people at the back, unless already waiting.
    fn push_back(&mut self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            if self.queued.insert(id.clone()) {
                self.queue.push_back(id);
            }
        }
    }

    /// Puts people back at the front, in their order, unless already waiting.
    fn push_front(&mut self, ids: Vec<String>) {
        for id in ids.into_iter().rev() {
            if self.queued.insert(id.clone()) {
                self.queue.push_front(id);
            }
        }
    }

    /// Takes up to `n` people from the front, leaving those `busy` says to skip in place.
    fn take(&mut self, n: usize, busy: impl Fn(&String) -> bool) -> Vec<String> {
        let (mut chunk, mut later) = (Vec::with_capacity(n), Vec::new());
        while chunk.len() < n {
            let Some(id) = self.queue.pop_front() else { break };
            if busy(&id) { later.push(id) } else { chunk.push(id) }
        }
        for id in later.into_iter().rev() {
            self.queue.push_front(id);
        }
        for id in &chunk {
            self.queued.remove(id);
        }
        chunk
    }
}

/// Waits for the oldest verdict write in flight, if any, and logs how it went; the people of
/// a failed one go back to the front of the queue, to be evaluated and written again after
/// a pause.
async fn finish_oldest(writing: &mut VecDeque<(VerdictWrite, HashSet<String>)>, waiting: &mut Waiting) {
    let Some((write, ids)) = writing.pop_front() else { return };
    let failure = match write.await {
        Ok(Ok(changes)) => {
            tracing::debug!(changes, "real-time verdicts written");
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::error!(people = ids.len(), "real-time verdicts could not be written, will retry: {failure}");
    waiting.push_front(ids.into_iter().collect());
    tokio::time::sleep(RETRY_AFTER).await;
}
