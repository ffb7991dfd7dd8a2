//! Rekindle's customer data: profiles, identities, events, traits, consents, contact points
//! and the catalog. SQLite is the embedded default.

mod clock;
mod computed;
mod db;
mod feedback;
mod logic;
mod model;
mod plain;
mod postgres;
mod sqlite;

use std::path::Path;

pub use clock::{Clock, now_ms};
pub use logic::TileDocument;
pub use model::{
    CONTACT_TRAITS, Change, ClaimedSend, Computed, Consent, Contact, EventMapping, EventNeed, EventRef, FeedbackRefusal, FeedbackReport, FeedbackWrite,
    Ignored, IngestReport, InputNeeds, JourneyLogEntry, JourneyRun, Lease, MembershipChange, MembershipRecord, Message, MessageKind, Product, ProfileRecord,
    Purpose, RESERVED_TRAITS, RecordedCutoffs, RfmPoint, RuleInput, Scope, SegmentDefinition, SendClaim, StepSend, StoredDocument, StoredEvent, StoredJourney,
    Suppress, SuppressTarget, Suppression, Touch, VerdictWrite,
};

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused an operation.
    #[error("database error: {0}")]
    Database(String),
    /// A migration failed; the store is not usable.
    #[error("migration {version} failed: {message}")]
    Migration { version: i64, message: String },
    /// The store is shutting down or its writer stopped.
    #[error("the store is not accepting requests")]
    Closed,
}

enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// The customer-data store, on SQLite or PostgreSQL; the same logic runs on both.
pub struct Store {
    backend: Backend,
}

/// Runs one closure on whichever backend is open; each arm instantiates it for that
/// backend's connection type.
macro_rules! on_backend {
    ($self:ident.$method:ident(|$db:ident, $mapping:ident| $body:expr)) => {
        match &$self.backend {
            Backend::Sqlite(b) => b.$method(move |$db, $mapping| $body).await,
            Backend::Postgres(b) => b.$method(move |$db, $mapping| $body).await,
        }
    };
}

impl Store {
    /// Opens (creating if needed) an SQLite database file and applies pending migrations.
    pub fn open_sqlite(path: &Path, mapping: EventMapping) -> Result<Store, StoreError> {
        Ok(Store { backend: Backend::Sqlite(sqlite::SqliteStore::open(path, mapping)?) })
    }

    /// Connects to PostgreSQL (`postgres://user@host:port/db`) and applies pending
    /// migrations; several hosts may share one database.
    pub async fn open_postgres(url: &str, mapping: EventMapping) -> Result<Store, StoreError> {
        let url = url.to_string();
        let store = tokio::task::spawn_blocking(move || postgres::PgStore::open(&url, mapping))
            .await
            .map_err(|e| StoreError::Database(format!("connecting: {e}")))??;
        Ok(Store { backend: Backend::Postgres(store) })
    }

    /// Which database this store runs on: `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Stores a batch atomically: every message or none. Resolves once committed.
    pub async fn ingest(&self, messages: Vec<Message>) -> Result<IngestReport, StoreError> {
        on_backend!(self.write(|db, mapping| logic::ingest(db, mapping, &messages)))
    }

    /// The profile that `id` (a profile id, userId or anonymousId) names.
    pub async fn profile(&self, id: &str, recent_events: usize) -> Result<Option<ProfileRecord>, StoreError> {
        let id = id.to_string();
        on_backend!(self.read(|db, _mapping| logic::read_profile(db, &id, recent_events)))
    }

    /// The `name` events of the person `id` names with timestamps in `[since, until]`,
    /// oldest first; only the latest `limit` when given. What a rule declared it reads.
    pub async fn events(&self, id: &str, name: &str, since: i64, until: i64, limit: Option<u32>) -> Result<Vec<StoredEvent>, StoreError> {
        let (id, name) = (id.to_string(), name.to_string());
        on_backend!(self.read(|db, _mapping| logic::events(db, &id, &name, since, until, limit)))
    }

    /// Erases the person `id` names from every table; false when nobody matched. On SQLite
    /// it answers once their bytes are gone from the database file and its WAL as well.
    pub async fn delete_profile(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        let erased = on_backend!(self.write(|db, _mapping| logic::delete_profile(db, &id)))?;
        if let (true, Backend::Sqlite(sqlite)) = (erased, &self.backend) {
            sqlite.truncate_wal().await?;
        }
        Ok(erased)
    }

    /// Records consents given through the consent API; false when nobody matched.
    pub async fn set_consents(&self, id: &str, consents: Vec<(Purpose, bool)>, at: i64) -> Result<bool, StoreError> {
        let id = id.to_string();
        on_backend!(self.write(|db, _mapping| logic::set_consents(db, &id, &consents, at)))
    }

    /// Marks a contact point (`email`, `phone` or `push_token`) active or revoked; false
    /// when nobody matched.
    pub async fn set_contact(&self, id: &str, kind: &str, address: &str, active: bool, at: i64) -> Result<bool, StoreError> {
        let (id, kind, address) = (id.to_string(), kind.to_string(), address.to_string());
        on_backend!(self.write(|db, _mapping| logic::set_contact(db, &id, &kind, &address, active, at)))
    }

    /// Records a provider webhook's reports on `channel` atomically: refused as a whole
    /// when one names a send this host never made; replayed reports change nothing.
    pub async fn record_feedback(
        &self,
        channel: &str,
        writes: Vec<FeedbackWrite>,
        received_at: i64,
    ) -> Result<Result<FeedbackReport, FeedbackRefusal>, StoreError> {
        let channel = channel.to_string();
        on_backend!(self.write(|db, _mapping| feedback::record_feedback(db, &channel, &writes, received_at)))
    }

    /// Switches off what `suppress` names on the profile `id` names, for a refused send on
    /// `channel` (`send_key`); how many suppressions it recorded (0 when nobody matched).
    pub async fn suppress(&self, id: &str, channel: &str, send_key: &str, suppress: Suppress, at: i64) -> Result<usize, StoreError> {
        let (id, channel, send_key) = (id.to_string(), channel.to_string(), send_key.to_string());
        on_backend!(self.write(|db, _mapping| {
            let Some(profile) = logic::resolve_id(db, &id)? else { return Ok(0) };
            feedback::suppress_profile(db, &profile, Some(&channel), Some(&send_key), &suppress, at)
        }))
    }

    /// Suppressions with ids after `after`, oldest first, at most `limit`: only those
    /// holding at `now`, or every one (lifted and expired too) when `all`.
    pub async fn suppressions(&self, after: i64, limit: usize, all: bool, now: i64) -> Result<Vec<Suppression>, StoreError> {
        on_backend!(self.read(|db, _mapping| feedback::suppressions(db, after, limit, all, now)))
    }

    /// This host's secret `name` (hex), made on first use and shared through the database
    /// with every host on it.
    pub async fn host_secret(&self, name: &str) -> Result<String, StoreError> {
        let name = name.to_string();
        on_backend!(self.write(|db, _mapping| feedback::host_secret(db, &name)))
    }

    /// Unsubscribes the person `id` names from `purpose` through the link sent with
    /// `send_key` on `channel`: `None` when nobody by that id exists, `Some(false)` when
    /// that link was used before (nothing changes), else the profiles touched.
    pub async fn unsubscribe(&self, id: &str, purpose: Purpose, send_key: &str, channel: &str, at: i64) -> Result<Option<(bool, Vec<Touch>)>, StoreError> {
        let (id, send_key, channel) = (id.to_string(), send_key.to_string(), channel.to_string());
        on_backend!(self.write(|db, _mapping| feedback::unsubscribe(db, &id, purpose, &send_key, &channel, at)))
    }

    /// Lifts suppression `id` on behalf of `by`; `None` when it is not live.
    pub async fn lift_suppression(&self, id: i64, by: &str, at: i64) -> Result<Option<Suppression>, StoreError> {
        let by = by.to_string();
        on_backend!(self.write(|db, _mapping| feedback::lift_suppression(db, id, &by, at)))
    }

    /// Inserts or replaces catalog products.
    pub async fn upsert_products(&self, products: Vec<Product>) -> Result<usize, StoreError> {
        let at = now_ms();
        on_backend!(self.write(|db, _mapping| logic::upsert_products(db, &products, at)))
    }

    /// Creates or replaces a segment definition.
    pub async fn upsert_segment(&self, def: SegmentDefinition) -> Result<(), StoreError> {
        let at = now_ms();
        on_backend!(self.write(|db, _mapping| logic::upsert_segment(db, &def, at)))
    }

    /// Records that a segment was evaluated over every profile at `at`.
    pub async fn mark_run(&self, name: &str, at: i64) -> Result<(), StoreError> {
        let name = name.to_string();
        on_backend!(self.write(|db, _mapping| logic::mark_run(db, &name, at)))
    }

    /// The RFM cutoffs a segment's parameters last resolved to, with what they were resolved
    /// from and when.
    pub async fn cutoffs(&self, name: &str) -> Result<Option<RecordedCutoffs>, StoreError> {
        let name = name.to_string();
        on_backend!(self.read(|db, _mapping| logic::cutoffs(db, &name)))
    }

    /// Records what a segment's parameters resolved to at `at`.
    pub async fn record_cutoffs(&self, name: &str, from: &serde_json::Value, resolved: &serde_json::Value, at: i64) -> Result<(), StoreError> {
        let (name, from, resolved) = (name.to_string(), from.clone(), resolved.clone());
        on_backend!(self.write(|db, _mapping| logic::record_cutoffs(db, &name, &from, &resolved, at)))
    }

    /// When a segment was last defined or redefined; `None` while there are none.
    pub async fn segments_changed_at(&self) -> Result<Option<i64>, StoreError> {
        on_backend!(self.read(|db, _mapping| logic::segments_changed_at(db)))
    }

    /// Every segment definition, by name.
    pub async fn segments(&self) -> Result<Vec<SegmentDefinition>, StoreError> {
        on_backend!(self.read(|db, _mapping| logic::segments(db)))
    }

    /// A page of a segment's members, ordered by profile id, after `after`.
    pub async fn members(&self, segment: &str, after: &str, limit: usize) -> Result<Vec<MembershipRecord>, StoreError> {
        let (segment, after) = (segment.to_string(), after.to_string());
        on_backend!(self.read(|db, _mapping| logic::members(db, &segment, &after, limit)))
    }

    /// A segment's entries and exits after log id `after`, oldest first: what journeys and
    /// ad audiences consume.
    pub async fn changes(&self, segment: &str, after: i64, limit: usize) -> Result<Vec<MembershipChange>, StoreError> {
        let segment = segment.to_string();
        on_backend!(self.read(|db, _mapping| logic::changes(db, &segment, after, limit)))
    }

    /// One profile's membership of one segment (by profile id), if any.
    pub async fn membership(&self, segment: &str, profile_id: &str) -> Result<Option<MembershipRecord>, StoreError> {
        let (segment, profile_id) = (segment.to_string(), profile_id.to_string());
        on_backend!(self.read(|db, _mapping| logic::membership(db, &segment, &profile_id)))
    }

    /// The segments the person `id` names belongs to.
    pub async fn memberships(&self, id: &str) -> Result<Vec<MembershipRecord>, StoreError> {
        let id = id.to_string();
        on_backend!(self.read(|db, _mapping| logic::memberships(db, &id)))
    }

    /// A page of profile ids after `after`, for backfills and scheduled runs.
    pub async fn profile_ids(&self, after: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let after = after.to_string();
        on_backend!(self.read(|db, _mapping| logic::profile_ids(db, &after, limit)))
    }

    /// The computed traits of the person `id` names as they stood at `until`.
    pub async fn computed_as_of(&self, id: &str, until: i64) -> Result<Computed, StoreError> {
        let id = id.to_string();
        on_backend!(self.read(|db, mapping| logic::computed_as_of(db, mapping, &id, until)))
    }

    /// Every buyer's place on the RFM axes at `now`.
    pub async fn rfm_population(&self, now: i64) -> Result<Vec<RfmPoint>, StoreError> {
        on_backend!(self.read(|db, _mapping| logic::rfm_population(db, now)))
    }

    /// What `needs` asks for about the profiles `scope` covers: the bulk read behind
    /// scheduled runs and real-time batches, a few queries per page instead of per profile.
    pub async fn rule_inputs(&self, scope: Scope, needs: InputNeeds) -> Result<Vec<RuleInput>, StoreError> {
        on_backend!(self.read_bulk(|db, _mapping| logic::rule_inputs(db, &scope, &needs)))
    }

    /// Applies many verdicts in one transaction (entering, exiting or refreshing each
    /// membership, and logging entries and exits); returns how many entered or left.
    pub async fn record_verdicts(&self, verdicts: Vec<VerdictWrite>, at: i64) -> Result<usize, StoreError> {
        if verdicts.is_empty() {
            return Ok(0);
        }
        // Verdicts are few and someone may be waiting to see them: they go ahead of bulk
        // ingestion in SQLite's single writer.
        on_backend!(self.write_urgent(|db, _mapping| logic::record_verdicts(db, &verdicts, at)))
    }

    /// Creates or replaces an offer (in `slot`) or a page slot, given as validated JSON.
    pub async fn upsert_tile_document(&self, kind: TileDocument, id: &str, slot: &str, definition: String) -> Result<(), StoreError> {
        let (id, slot, at) = (id.to_string(), slot.to_string(), now_ms());
        on_backend!(self.write(|db, _mapping| logic::upsert_tile_document(db, kind, &id, &slot, &definition, at)))
    }

    /// Deletes an offer or a page slot; false when there was none.
    pub async fn delete_tile_document(&self, kind: TileDocument, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        on_backend!(self.write(|db, _mapping| logic::delete_tile_document(db, kind, &id)))
    }

    /// Every offer or page slot as stored, by id.
    pub async fn tile_documents(&self, kind: TileDocument) -> Result<Vec<StoredDocument>, StoreError> {
        on_backend!(self.read(|db, _mapping| logic::tile_documents(db, kind)))
    }

    /// Up to `limit` in-stock products to recommend to the person `id` names: bought
    /// together with their purchases first, then from the categories they buy.
    pub async fn related_products(&self, id: &str, limit: usize) -> Result<Vec<Product>, StoreError> {
        let id = id.to_string();
        on_backend!(self.read(|db, mapping| logic::related_products(db, mapping, &id, limit)))
    }

    /// Creates or replaces a journey definition (its text), keeping its entry cursor.
    pub async fn upsert_journey(&self, name: &str, definition: &str) -> Result<(), StoreError> {
        let (name, definition, at) = (name.to_string(), definition.to_string(), now_ms());
        on_backend!(self.write(|db, _mapping| logic::upsert_journey(db, &name, &definition, at)))
    }

    /// Every deployed journey, by name.
    pub async fn journeys(&self) -> Result<Vec<StoredJourney>, StoreError> {
        on_backend!(self.read(|db, _mapping| logic::journeys(db)))
    }

    /// Events named `name` stored after event id `after`, oldest first: the feed
    /// event-entry journeys follow. On PostgreSQL, ids from concurrent transactions can
    /// commit out of order, so a reader at the very edge may pass over one committed late.
    pub async fn events_after(&self, name: &str, after: i64, limit: usize) -> Result<Vec<EventRef>, StoreError> {
        let name = name.to_string();
        on_backend!(self.read(|db, _mapping| logic::events_after(db, &name, after, limit)))
    }

    /// Moves a journey's entry cursor (a membership log id) forward.
    pub async fn set_journey_cursor(&self, name: &str, cursor: i64) -> Result<(), StoreError> {
        let name = name.to_string();
        on_backend!(self.write(|db, _mapping| logic::set_journey_cursor(db, &name, cursor)))
    }

    /// Starts a run unless the re-entry policy (`never`, `after_exit`, `always`) forbids it.
    /// Logs `entry` with it when it starts.
    pub async fn start_run(&self, run: JourneyRun, re_entry: &str, entry: Vec<JourneyLogEntry>) -> Result<bool, StoreError> {
        let re_entry = re_entry.to_string();
        on_backend!(self.write(|db, _mapping| {
            let started = logic::start_run(db, &run, &re_entry)?;
            if started {
                logic::log_journey(db, &entry)?;
            }
            Ok(started)
        }))
    }

    /// Leases the runs due at `now` (active, or waiting until then) that no live host
    /// holds to `lease`, until `lease.length_ms` from the wall clock's now.
    pub async fn claim_due_runs(&self, now: i64, limit: usize, lease: &Lease) -> Result<Vec<JourneyRun>, StoreError> {
        let lease = lease.clone();
        on_backend!(self.write(|db, _mapping| logic::claim_due_runs(db, now, limit, &lease, now_ms())))
    }

    /// Leases the waiting runs of `journey` whose customer has done the `goal` event since
    /// entering.
    pub async fn claim_goal_reached(&self, journey: &str, goal: &str, limit: usize, lease: &Lease) -> Result<Vec<JourneyRun>, StoreError> {
        let (journey, goal, lease) = (journey.to_string(), goal.to_string(), lease.clone());
        on_backend!(self.write(|db, _mapping| logic::claim_goal_reached(db, &journey, &goal, limit, &lease, now_ms())))
    }

    /// Saves a run's position and state, with what it did, in one transaction, and lets
    /// go of its lease. False, writing nothing, when the run changed since this copy was
    /// read: another host took it over, and its copy wins.
    pub async fn save_run(&self, run: JourneyRun, log: Vec<JourneyLogEntry>, lease: &Lease) -> Result<bool, StoreError> {
        let owner = lease.owner.clone();
        on_backend!(self.write(|db, _mapping| {
            if !logic::save_run(db, &run, &owner)? {
                return Ok(false);
            }
            logic::log_journey(db, &log)?;
            Ok(true)
        }))
    }

    /// Takes or keeps the named lease (the journey tick, a scheduled segment run) for
    /// `lease`'s owner, for its length from now; whether the owner holds it.
    pub async fn take_lease(&self, name: &str, lease: &Lease) -> Result<bool, StoreError> {
        let (name, lease) = (name.to_string(), lease.clone());
        on_backend!(self.write(|db, _mapping| logic::take_lease(db, &name, &lease, now_ms())))
    }

    /// Lets go of the named lease if `owner` holds it.
    pub async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        let (name, owner) = (name.to_string(), owner.to_string());
        on_backend!(self.write(|db, _mapping| logic::release_lease(db, &name, &owner)))
    }

    /// Every `every`, forgets accepted message ids older than `retention`, for the life of
    /// the process: the dedup table holds a day of ids (as Segment keeps), not every id
    /// ever sent.
    pub async fn sweep_message_ids_every(self: std::sync::Arc<Self>, retention: std::time::Duration, every: std::time::Duration) {
        let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            match self.sweep_message_ids(now_ms().saturating_sub(retention)).await {
                Ok(0) => {}
                Ok(swept) => tracing::info!(swept, "forgot message ids past their retention"),
                Err(e) => tracing::error!("could not sweep message ids: {e}"),
            }
        }
    }

    /// Forgets accepted message ids received before `before`, in slices; how many.
    pub async fn sweep_message_ids(&self, before: i64) -> Result<u64, StoreError> {
        let mut swept = 0;
        loop {
            let slice = on_backend!(self.write(|db, _mapping| logic::sweep_message_ids(db, before, 5_000)))?;
            swept += slice;
            if slice < 5_000 {
                return Ok(swept);
            }
        }
    }

    /// A journey's runs.
    pub async fn journey_runs(&self, journey: &str) -> Result<Vec<JourneyRun>, StoreError> {
        let journey = journey.to_string();
        on_backend!(self.read(|db, _mapping| logic::journey_runs(db, &journey)))
    }

    /// A journey's log, oldest first.
    pub async fn journey_log(&self, journey: &str) -> Result<Vec<JourneyLogEntry>, StoreError> {
        let journey = journey.to_string();
        on_backend!(self.read(|db, _mapping| logic::journey_log(db, &journey)))
    }

    /// Messages sent to a profile by any journey since `since`.
    pub async fn sends_since(&self, profile_id: &str, since: i64) -> Result<i64, StoreError> {
        let profile_id = profile_id.to_string();
        on_backend!(self.read(|db, _mapping| logic::sends_since(db, &profile_id, since)))
    }

    /// Claims a send before calling the provider, if `lease` still holds the run (whose
    /// lease it extends): new, claimed before (with its outcome), or the run lost to
    /// another host.
    pub async fn claim_send(&self, key: &str, run: &JourneyRun, channel: &str, at: i64, lease: &Lease) -> Result<SendClaim, StoreError> {
        let (key, run, channel, lease) = (key.to_string(), run.clone(), channel.to_string(), lease.clone());
        on_backend!(self.write_urgent(|db, _mapping| logic::claim_send(db, &key, &run, &channel, at, &lease, now_ms())))
    }

    /// Records, just before each attempt goes out, that a claimed send is being sent at
    /// `at` (how long to wait before asking the provider about it counts from here), if
    /// `lease` still holds the run; whether it does, and so whether to send.
    pub async fn mark_sending(&self, key: &str, run: &JourneyRun, at: i64, lease: &Lease) -> Result<bool, StoreError> {
        let (key, run, lease) = (key.to_string(), run.clone(), lease.clone());
        on_backend!(self.write_urgent(|db, _mapping| logic::mark_sending(db, &key, &run, at, &lease, now_ms())))
    }

    /// The send already claimed for `step` of `run`, on any channel.
    pub async fn step_send(&self, run: &str, step: &str) -> Result<Option<StepSend>, StoreError> {
        let (run, step) = (run.to_string(), step.to_string());
        on_backend!(self.read(|db, _mapping| logic::step_send(db, &run, &step)))
    }

    /// Records a claimed send's outcome. Ahead of bulk ingestion: until it commits, a crash
    /// leaves the send in doubt.
    pub async fn settle_send(&self, key: &str, outcome: &str) -> Result<(), StoreError> {
        let (key, outcome) = (key.to_string(), outcome.to_string());
        on_backend!(self.write_urgent(|db, _mapping| logic::settle_send(db, &key, &outcome)))
    }

    /// Row counts per table.
    pub async fn table_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        on_backend!(self.read(|db, _mapping| logic::table_counts(db)))
    }
}
