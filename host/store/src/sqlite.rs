//! The embedded SQLite backend: one writer thread that commits concurrent requests
//! together (group commit), and a small pool of read connections. WAL mode; a request is
//! acknowledged only after the transaction holding it has committed.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, Transaction, params};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::db::{Db, P, Row, V};
use crate::model::EventMapping;

/// Migrations, applied in order once each.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_profiles.sql")),
    (2, include_str!("../migrations/sqlite/0002_lookups.sql")),
    (3, include_str!("../migrations/sqlite/0003_segments.sql")),
    (4, include_str!("../migrations/sqlite/0004_segment_runs.sql")),
    (5, include_str!("../migrations/sqlite/0005_tiles.sql")),
    (6, include_str!("../migrations/sqlite/0006_co_purchases.sql")),
    (7, include_str!("../migrations/sqlite/0007_journeys.sql")),
    (8, include_str!("../migrations/sqlite/0008_journey_sends_by_run.sql")),
    (9, include_str!("../migrations/sqlite/0009_written_by_browser.sql")),
    (10, include_str!("../migrations/sqlite/0010_segment_cutoffs.sql")),
    (11, include_str!("../migrations/sqlite/0011_several_hosts.sql")),
    (12, include_str!("../migrations/sqlite/0012_feedback.sql")),
    (13, include_str!("../migrations/sqlite/0013_unsubscribe.sql")),
];

/// The least time between checkpoints.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Prepared statements kept per connection: more than the distinct statements of any path.
const STATEMENT_CACHE: usize = 256;

/// Requests one commit may carry; a bound keeps a burst from delaying the first reply.
const MAX_GROUP: usize = 64;

/// The writer's page cache, in KiB (negative, as `cache_size` takes it).
const WRITER_CACHE_KIB: i64 = -256 * 1024;

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Work = Box<dyn FnOnce(&mut Transaction<'_>, &EventMapping) -> Completion + Send>;

/// A write request; `urgent` ones (small, latency-sensitive: segment verdicts) commit in
/// a transaction of their own ahead of the bulk ingestion queued with them.
struct Job {
    urgent: bool,
    work: Work,
}

pub(crate) struct SqliteStore {
    writer: mpsc::Sender<Job>,
    /// Tells the checkpointer to fold the WAL into the database and truncate it.
    checkpoints: mpsc::Sender<Checkpoint>,
    /// Urgent writes sent but not yet taken by the writer, which ends a bulk group early
    /// while any wait.
    urgent_waiting: Arc<AtomicUsize>,
    readers: Arc<Readers>,
    mapping: Arc<EventMapping>,
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    // secure_delete: a deleted or overwritten row's bytes are zeroed, not left in free
    // space, so an erased person (and every earlier value of their traits) is gone from the
    // file once the WAL is folded in and truncated. journal_size_limit: a WAL that grew in
    // a burst is cut back to 128 MiB when it starts over, instead of keeping its peak size.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = OFF;
         PRAGMA secure_delete = ON;
         PRAGMA journal_size_limit = 134217728;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(db)
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)").map_err(db)?;
    let tx = conn.transaction().map_err(db)?;
    for (version, sql) in MIGRATIONS {
        let applied: bool = tx.query_row("SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = ?1)", [version], |r| r.get(0)).map_err(db)?;
        if !applied {
            tx.execute_batch(sql).map_err(|e| StoreError::Migration { version: *version, message: e.to_string() })?;
            tx.execute("INSERT INTO schema_migrations VALUES (?1, ?2)", params![version, crate::now_ms()]).map_err(db)?;
            tracing::info!(version, "applied SQLite migration");
        }
    }
    tx.commit().map_err(db)
}

impl SqliteStore {
    pub(crate) fn open(path: &Path, mapping: EventMapping) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(format!("creating {}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(path).map_err(db)?;
        configure(&conn)?;
        // The writer walks every index an event lands in: with SQLite's 2 MiB default its
        // pages were read again from the OS on almost every insert once the file passed a
        // few hundred MB.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB).map_err(db)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        migrate(&mut conn)?;
        // Checkpoints move off the writer: run inside a commit, one copies thousands of
        // pages into the database and syncs it, and every write queued behind it waits.
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(db)?;
        // Frames in the WAL, as the last checkpoint counted them.
        let wal_frames = Arc::new(AtomicI64::new(0));
        let checkpoints = start_checkpointer(path, wal_frames.clone())?;
        let truncate = checkpoints.clone();
        let (writer, jobs) = mpsc::channel::<Job>();
        let mapping = Arc::new(mapping);
        let for_writer = (*mapping).clone();
        let urgent_waiting = Arc::new(AtomicUsize::new(0));
        let waiting = urgent_waiting.clone();
        std::thread::Builder::new()
            .name("rekindle-sqlite-writer".into())
            .spawn(move || write_loop(conn, jobs, waiting, checkpoints, wal_frames, for_writer))
            .map_err(|e| StoreError::Database(format!("starting the writer thread: {e}")))?;
        Ok(SqliteStore {
            writer,
            checkpoints: truncate,
            urgent_waiting,
            readers: Arc::new(Readers { path: path.to_path_buf(), idle: Mutex::new(Vec::new()) }),
            mapping,
        })
    }

    /// Runs `work` in the writer's next transaction; resolves once that transaction commits.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Lite<'_>, &EventMapping) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(false, work).await
    }

    /// As [`SqliteStore::write`], committed ahead of the bulk writes queued with it.
    pub(crate) async fn write_urgent<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Lite<'_>, &EventMapping) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(true, work).await
    }

    async fn submit<T: Send + 'static>(
        &self,
        urgent: bool,
        work: impl FnOnce(&mut Lite<'_>, &EventMapping) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let work: Work = Box::new(move |tx, mapping| {
            // A savepoint per request: one request failing leaves the others in the commit.
            let result = match tx.savepoint() {
                // Dropping the savepoint without committing it rolls the request back.
                Ok(savepoint) => work(&mut Lite(&savepoint), mapping).and_then(|v| savepoint.commit().map(|()| v).map_err(db)),
                Err(e) => Err(db(e)),
            };
            Box::new(move |committed: Result<(), StoreError>| {
                let _ = reply.send(committed.and(result));
            })
        });
        if urgent {
            self.urgent_waiting.fetch_add(1, Ordering::AcqRel);
        }

        if self.writer.send(Job { urgent, work }).is_err() {
            return Err(StoreError::Closed);
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Folds the whole WAL into the database and truncates it to nothing, so no earlier
    /// page image (an erased person's, say) stays in the WAL file. Resolves once done.
    pub(crate) async fn truncate_wal(&self) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.checkpoints.send(Checkpoint::Truncate(reply)).map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `work` on a read connection, inline. A read of one profile is a few indexed
    /// lookups on local pages, tens of microseconds: cheaper to run on the async worker than
    /// to hand to a blocking thread and back, which costs two context switches.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Lite<'_>, &EventMapping) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        read_now(&self.readers, &self.mapping, work)
    }

    /// Runs `work` on a read connection on a blocking thread: for reads of whole pages of
    /// profiles, which take milliseconds and would stall the requests sharing an async worker.
    pub(crate) async fn read_bulk<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Lite<'_>, &EventMapping) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (readers, mapping) = (self.readers.clone(), self.mapping.clone());
        tokio::task::spawn_blocking(move || read_now(&readers, &mapping, work)).await.map_err(|e| StoreError::Database(format!("database task failed: {e}")))?
    }
}

/// Runs `work` on an idle read connection, opening one when none is idle.
fn read_now<T>(readers: &Readers, mapping: &EventMapping, work: impl FnOnce(&mut Lite<'_>, &EventMapping) -> Result<T, StoreError>) -> Result<T, StoreError> {
    let conn = match readers.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
        Some(conn) => conn,
        None => {
            let conn = Connection::open_with_flags(&readers.path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(db)?;
            conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db)?;
            // Every statement the read paths use stays prepared; parsing showed up in profiles.
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            conn
        }
    };
    // One read transaction for the whole request: a consistent snapshot, and SQLite keeps
    // its page cache across the statements instead of revalidating it against the WAL
    // (and re-reading every page) at each one while ingestion writes.
    let result = match conn.unchecked_transaction() {
        Ok(tx) => {
            let result = work(&mut Lite(&tx), mapping);
            // A read-only transaction: ending it cannot lose anything.
            let _ = tx.finish();
            result
        }
        Err(e) => Err(db(e)),
    };
    readers.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
    result
}

/// What the checkpointer is asked to do.
enum Checkpoint {
    /// A commit happened: copy what can be copied, waiting for no one.
    Committed,
    /// Fold in everything and truncate the WAL; answered when done.
    Truncate(oneshot::Sender<Result<(), StoreError>>),
}

/// How often a truncating checkpoint is tried while readers hold old snapshots.
const TRUNCATE_ATTEMPTS: usize = 20;

/// Starts the thread that checkpoints the WAL into the database after commits, on its own
/// connection, concurrently with the writer. Returns how to signal it.
fn start_checkpointer(path: &Path, wal_frames: Arc<AtomicI64>) -> Result<mpsc::Sender<Checkpoint>, StoreError> {
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db)?;
    let (signals, received) = mpsc::channel::<Checkpoint>();
    std::thread::Builder::new()
        .name("rekindle-sqlite-checkpoint".into())
        .spawn(move || {
            while let Ok(first) = received.recv() {
                // Everything signalled since the last round is served by this one.
                let truncations: Vec<_> = std::iter::once(first)
                    .chain(received.try_iter())
                    .filter_map(|signal| match signal {
                        Checkpoint::Truncate(reply) => Some(reply),
                        Checkpoint::Committed => None,
                    })
                    .collect();
                if truncations.is_empty() {
                    // PASSIVE never waits for readers or the writer: it copies what it can,
                    // and the WAL starts over once a checkpoint has caught up.
                    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
                        // -1 when the writer's own checkpoint was running.
                        Ok(frames) if frames >= 0 => wal_frames.store(frames, Ordering::Relaxed),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("SQLite checkpoint failed: {e}"),
                    }
                    // Batches the commits of the next moment into one checkpoint.
                    std::thread::sleep(CHECKPOINT_EVERY);
                    continue;
                }
                let outcome = truncate(&conn);
                for reply in truncations {
                    let _ = reply.send(outcome.clone());
                }
            }
            // The writer has stopped: fold in what the WAL holds, if the process lives long
            // enough. Nothing depends on it; the next open reads the WAL either way.
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        })
        .map_err(|e| StoreError::Database(format!("starting the checkpoint thread: {e}")))?;
    Ok(signals)
}

/// A TRUNCATE checkpoint, tried again while a reader's snapshot keeps it from finishing.
fn truncate(conn: &Connection) -> Result<(), StoreError> {
    for _ in 0..TRUNCATE_ATTEMPTS {
        // (busy, frames in the WAL, frames checkpointed); busy means a reader was in the way.
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).map_err(db)?;
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(CHECKPOINT_EVERY);
    }
    Err(StoreError::Database("the WAL could not be truncated: readers kept it busy".into()))
}

fn write_loop(
    mut conn: Connection,
    jobs: mpsc::Receiver<Job>,
    urgent_waiting: Arc<AtomicUsize>,
    checkpoints: mpsc::Sender<Checkpoint>,
    wal_frames: Arc<AtomicI64>,
    mapping: EventMapping,
) {
    let (mut urgent, mut bulk): (VecDeque<Work>, VecDeque<Work>) = (VecDeque::new(), VecDeque::new());
    loop {
        // Block only when there is nothing to do; otherwise take what has arrived.
        let first = if urgent.is_empty() && bulk.is_empty() { jobs.recv().ok() } else { jobs.try_recv().ok() };
        if first.is_none() && urgent.is_empty() && bulk.is_empty() {
            return;
        }
        for job in first.into_iter().chain(std::iter::from_fn(|| jobs.try_recv().ok())) {
            if job.urgent {
                urgent_waiting.fetch_sub(1, Ordering::AcqRel);
                urgent.push_back(job.work);
            } else {
                bulk.push_back(job.work);
            }
        }
        // Each round commits urgent writes first, then at least one bulk request, so a
        // steady stream of verdicts cannot hold ingestion back.
        if !urgent.is_empty() {
            let take = urgent.len().min(MAX_GROUP);
            commit_group(&mut conn, &mapping, urgent.drain(..take).collect(), None);
        }
        if !bulk.is_empty() {
            let take = bulk.len().min(MAX_GROUP);
            let group: Vec<Work> = bulk.drain(..take).collect();
            // An urgent write arriving mid-group (or still queued) ends the group early:
            // what ran so far commits, and the rest goes back to the front of the queue.
            let yield_to = Yield { arrived: &urgent_waiting, queued: !urgent.is_empty() };
            let unrun = commit_group(&mut conn, &mapping, group, Some(yield_to));
            for work in unrun.into_iter().rev() {
                bulk.push_front(work);
            }
        }
        // The checkpointer serves every signal sent while it worked in one round.
        let _ = checkpoints.send(Checkpoint::Committed);
        catch_up(&conn, &wal_frames);
    }
}

/// Frames the WAL may hold before the writer stops to let a checkpoint catch up (4 KiB
/// pages: 32 MiB).
const CATCH_UP_FRAMES: i64 = 8_192;

/// Lets a checkpoint catch up with the writer once the WAL has grown past
/// [`CATCH_UP_FRAMES`]. The background checkpointer copies frames while the writer appends
/// more, so under steady load it never reaches the end, and the WAL, which starts over
/// only once a checkpoint has, grew by gigabytes a minute. Run here, between transactions,
/// the checkpoint has only what the background one left to copy, and the next write
/// starts the WAL over.
fn catch_up(conn: &Connection, wal_frames: &AtomicI64) {
    if wal_frames.load(Ordering::Relaxed) < CATCH_UP_FRAMES {
        return;
    }
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))) {
        // Another checkpoint was running (it answers -1 frames): the next commit asks again.
        Ok((busy, _, _)) if busy != 0 => {}
        // Copied to the end: the next write starts the WAL over.
        Ok((_, frames, copied)) if frames == copied => wal_frames.store(0, Ordering::Relaxed),
        Ok((_, frames, _)) => wal_frames.store(frames, Ordering::Relaxed),
        Err(e) => tracing::warn!("SQLite checkpoint failed: {e}"),
    }
}

/// When a bulk group should stop early for urgent writes.
#[derive(Clone, Copy)]
struct Yield<'a> {
    /// Urgent writes sent but not yet taken by the writer.
    arrived: &'a AtomicUsize,
    /// Urgent writes taken but not yet committed.
    queued: bool,
}

impl Yield<'_> {
    fn now(self) -> bool {
        self.queued || self.arrived.load(Ordering::Acquire) > 0
    }
}

/// Runs a group of requests in one transaction and tells each how the commit went. With
/// `yield_to`, stops after the first request once an urgent write is waiting and returns
/// the requests it did not run.
fn commit_group(conn: &mut Connection, mapping: &EventMapping, group: Vec<Work>, yield_to: Option<Yield<'_>>) -> Vec<Work> {
    let mut completions = Vec::with_capacity(group.len());
    let mut unrun = Vec::new();
    let committed = match begin(conn) {
        Ok(mut tx) => {
            let mut works = group.into_iter();
            for work in works.by_ref() {
                completions.push(work(&mut tx, mapping));
                if yield_to.is_some_and(Yield::now) {
                    break;
                }
            }
            unrun.extend(works);
            tx.commit().map_err(db)
        }
        Err(err) => {
            // Dropping the work drops its reply channels: callers see the store closed.
            tracing::error!("SQLite could not begin a transaction: {err}");
            return Vec::new();
        }
    };
    if let Err(err) = &committed {
        tracing::error!("SQLite commit failed: {err}");
    }
    for complete in completions {
        complete(committed.clone());
    }
    unrun
}

/// Begins the group's transaction; `busy_timeout` waits out another process's lock.
fn begin(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db)
}

/// A rusqlite connection (or savepoint) as a [`Db`].
pub(crate) struct Lite<'a>(pub(crate) &'a Connection);

fn bind(p: &P<'_>) -> rusqlite::types::Value {
    use rusqlite::types::Value as L;
    match *p {
        P::Text(s) => L::Text(s.to_string()),
        P::Int(i) => L::Integer(i),
        P::Float(f) => L::Real(f),
        P::Bool(b) => L::Integer(i64::from(b)),
        P::OptText(s) => s.map_or(L::Null, |s| L::Text(s.to_string())),
        P::OptInt(i) => i.map_or(L::Null, L::Integer),
        P::OptFloat(f) => f.map_or(L::Null, L::Real),
    }
}

impl Db for Lite<'_> {
    fn execute(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64, StoreError> {
        let values: Vec<rusqlite::types::Value> = params.iter().map(bind).collect();
        let mut statement = self.0.prepare_cached(sql).map_err(db)?;
        statement.execute(rusqlite::params_from_iter(values)).map(|n| n as u64).map_err(db)
    }

    fn query(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Row>, StoreError> {
        use rusqlite::types::ValueRef;
        let values: Vec<rusqlite::types::Value> = params.iter().map(bind).collect();
        let mut statement = self.0.prepare_cached(sql).map_err(db)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(values)).map_err(db)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(db)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i).map_err(db)? {
                    ValueRef::Null => V::Null,
                    ValueRef::Integer(n) => V::Int(n),
                    ValueRef::Real(f) => V::Float(f),
                    ValueRef::Text(t) => V::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => V::Text(String::from_utf8_lossy(b).into_owned()),
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}
