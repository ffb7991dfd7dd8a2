//! The host's background loops: real-time and scheduled segment evaluation, the tile
//! catalog's refresh, the message-id sweep and the journey engine's ticks. Each loop lives in its stage's crate;
//! this only starts them, behind a handle that stops them when dropped.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::state::AppState;

/// How often the tile catalog is re-read, so offers changed on another host sharing the
/// database show up here too.
const TILES_REFRESH: Duration = Duration::from_secs(10);

/// How long an accepted message id keeps a client's retry from counting twice (Segment
/// keeps them 24 hours), and how often older ones are swept.
pub const MESSAGE_ID_RETENTION: Duration = Duration::from_secs(24 * 3600);
const MESSAGE_ID_SWEEP: Duration = Duration::from_secs(600);

/// The running background loops; dropping this stops them.
pub struct Background(Vec<JoinHandle<()>>);

impl Background {
    /// Starts the loops `state` calls for: segments and the tile catalog with customer data,
    /// the journey engine with delivery channels. Call it inside a tokio runtime; the
    /// real-time queue can be taken once, so a second call starts no second evaluator.
    pub fn spawn(state: &AppState) -> Background {
        let mut loops = Vec::new();
        if let (Some(ingestion), Some(realtime)) = (&state.ingestion, &state.realtime)
            && let Some(receiver) = realtime.take_receiver()
        {
            let (registry, store, clock) = (state.registry.clone(), ingestion.store.clone(), state.clock.clone());
            loops.push(tokio::spawn(rekindle_segments::realtime::realtime_loop(registry.clone(), store.clone(), clock.clone(), receiver)));
            loops.push(tokio::spawn(rekindle_segments::schedule::schedule_loop(registry, store, clock, state.schedule_tick, state.lease.clone())));
        }
        if let Some(ingestion) = &state.ingestion {
            loops.push(tokio::spawn(state.tiles.clone().refresh_every(ingestion.store.clone(), state.registry.clone(), TILES_REFRESH)));
            loops.push(tokio::spawn(ingestion.store.clone().sweep_message_ids_every(MESSAGE_ID_RETENTION, MESSAGE_ID_SWEEP)));
        }
        if let Some(engine) = &state.journeys {
            loops.push(tokio::spawn(engine.clone().run(state.clock.clone(), state.schedule_tick)));
        }
        Background(loops)
    }

    /// Leaves the loops running for the life of the process.
    pub fn detach(mut self) {
        // A dropped JoinHandle leaves its task running.
        self.0.clear();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
