//! The embedded SQLite backend: one writer thread that commits concurrent requests
//! together (group commit), and a small pool of read connections. WAL mode; a request is
//! acknowledged only after the transaction holding it has committed.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::model::{
    Computed, Consent, Contact, EventMapping, IngestReport, Message, Product, ProfileRecord, Purpose, StoredEvent,
};

/// Migrations, applied in order once each.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/sqlite/0001_profiles.sql"))];

/// Requests one commit may carry; a bound keeps a burst from delaying the first reply.
const MAX_GROUP: usize = 64;

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn FnOnce(&mut Transaction<'_>, &EventMapping) -> Completion + Send>;

pub(crate) struct SqliteStore {
    writer: mpsc::Sender<Job>,
    readers: Arc<Readers>,
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = OFF;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(db)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
        .map_err(db)?;
    let tx = conn.transaction().map_err(db)?;
    for (version, sql) in MIGRATIONS {
        let applied: bool = tx
            .query_row("SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = ?1)", [version], |r| r.get(0))
            .map_err(db)?;
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
        migrate(&mut conn)?;
        let (writer, jobs) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("rekindle-sqlite-writer".into())
            .spawn(move || write_loop(conn, jobs, mapping))
            .map_err(|e| StoreError::Database(format!("starting the writer thread: {e}")))?;
        Ok(SqliteStore { writer, readers: Arc::new(Readers { path: path.to_path_buf(), idle: Mutex::new(Vec::new()) }) })
    }

    /// Runs `work` in the writer's next transaction; resolves once that transaction commits.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &EventMapping) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |tx, mapping| {
            // A savepoint per request: one request failing leaves the others in the commit.
            let result = match tx.savepoint() {
                // Dropping the savepoint without committing it rolls the request back.
                Ok(savepoint) => work(&savepoint, mapping).and_then(|v| savepoint.commit().map(|()| v).map_err(db)),
                Err(e) => Err(db(e)),
            };
            Box::new(move |committed: Result<(), StoreError>| {
                let _ = reply.send(committed.and(result));
            })
        });
        self.writer.send(job).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `work` on a read connection off the async threads.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match readers.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                Some(conn) => conn,
                None => {
                    let conn = Connection::open_with_flags(
                        &readers.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(db)?;
                    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db)?;
                    conn
                }
            };
            let result = work(&conn);
            readers.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}

fn write_loop(mut conn: Connection, jobs: mpsc::Receiver<Job>, mapping: EventMapping) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut completions = Vec::with_capacity(group.len());
        let committed = match begin(&mut conn) {
            Ok(mut tx) => {
                for job in group {
                    completions.push(job(&mut tx, &mapping));
                }
                tx.commit().map_err(db)
            }
            Err(err) => {
                // Dropping the jobs drops their reply channels: callers see the store closed.
                tracing::error!("SQLite could not begin a transaction: {err}");
                continue;
            }
        };
        if let Err(err) = &committed {
            tracing::error!("SQLite commit failed: {err}");
        }
        for complete in completions {
            complete(committed.clone());
        }
    }
}

/// Begins the group's transaction; `busy_timeout` waits out another process's lock.
fn begin(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db)
}

// ---- writes ----

/// Finds the profile an identity resolves to.
fn lookup(tx: &Connection, kind: &str, value: &str) -> Result<Option<String>, StoreError> {
    tx.prepare_cached("SELECT profile_id FROM identities WHERE kind = ?1 AND value = ?2")
        .and_then(|mut s| s.query_row(params![kind, value], |r| r.get(0)).optional())
        .map_err(db)
}

fn link(tx: &Connection, kind: &str, value: &str, profile: &str) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT OR IGNORE INTO identities (kind, value, profile_id) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![kind, value, profile]))
        .map(drop)
        .map_err(db)
}

fn has_user_identity(tx: &Connection, profile: &str) -> Result<bool, StoreError> {
    tx.prepare_cached("SELECT EXISTS(SELECT 1 FROM identities WHERE profile_id = ?1 AND kind = 'user')")
        .and_then(|mut s| s.query_row([profile], |r| r.get(0)))
        .map_err(db)
}

fn create_profile(tx: &Connection, at: i64) -> Result<String, StoreError> {
    let id = uuid::Uuid::now_v7().to_string();
    tx.prepare_cached("INSERT INTO profiles (id, created_at, updated_at) VALUES (?1, ?2, ?2)")
        .and_then(|mut s| s.execute(params![id, at]))
        .map_err(db)?;
    Ok(id)
}

/// Folds an anonymous-only profile into another: its identities, events, traits, contacts
/// and consents move over (later writes win), and the computed traits are recomputed.
fn merge(tx: &Connection, source: &str, target: &str, mapping: &EventMapping) -> Result<(), StoreError> {
    let statements = [
        "UPDATE identities SET profile_id = ?2 WHERE profile_id = ?1",
        "UPDATE events SET profile_id = ?2 WHERE profile_id = ?1",
        "INSERT INTO traits (profile_id, name, value, updated_at)
             SELECT ?2, name, value, updated_at FROM traits WHERE profile_id = ?1 AND true
             ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
             WHERE excluded.updated_at > traits.updated_at",
        "INSERT INTO contacts (profile_id, kind, address, active, updated_at)
             SELECT ?2, kind, address, active, updated_at FROM contacts WHERE profile_id = ?1 AND true
             ON CONFLICT (profile_id, kind, address) DO UPDATE SET active = excluded.active, updated_at = excluded.updated_at
             WHERE excluded.updated_at > contacts.updated_at",
        "INSERT INTO consents (profile_id, purpose, granted, updated_at)
             SELECT ?2, purpose, granted, updated_at FROM consents WHERE profile_id = ?1 AND true
             ON CONFLICT (profile_id, purpose) DO UPDATE SET granted = excluded.granted, updated_at = excluded.updated_at
             WHERE excluded.updated_at > consents.updated_at",
        "UPDATE profiles SET timezone = (SELECT timezone FROM profiles WHERE id = ?1),
                             timezone_at = (SELECT timezone_at FROM profiles WHERE id = ?1)
             WHERE id = ?2 AND COALESCE(timezone_at, -1) < COALESCE((SELECT timezone_at FROM profiles WHERE id = ?1), -1)",
        "DELETE FROM traits WHERE profile_id = ?1",
        "DELETE FROM contacts WHERE profile_id = ?1",
        "DELETE FROM consents WHERE profile_id = ?1",
        "DELETE FROM computed WHERE profile_id = ?1",
        "DELETE FROM profiles WHERE id = ?1",
    ];
    for sql in statements {
        if sql.contains("?2") {
            tx.execute(sql, params![source, target]).map_err(db)?;
        } else {
            tx.execute(sql, params![source]).map_err(db)?;
        }
    }
    let mut computed = Computed::default();
    let mut orders = tx
        .prepare_cached("SELECT timestamp, properties FROM events WHERE profile_id = ?1 AND name = ?2")
        .map_err(db)?;
    let rows = orders
        .query_map(params![target, mapping.order_completed], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .map_err(db)?;
    for row in rows {
        let (at, properties) = row.map_err(db)?;
        let properties: Map<String, Value> = serde_json::from_str(&properties).unwrap_or_default();
        computed.add_order(mapping, at, &properties);
    }
    save_computed(tx, target, &computed)
}

fn load_computed(tx: &Connection, profile: &str) -> Result<Computed, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT order_count, lifetime_value, first_order_at, last_order_at, category_counts FROM computed WHERE profile_id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([profile], |r| {
                Ok(Computed {
                    order_count: r.get(0)?,
                    lifetime_value: r.get(1)?,
                    first_order_at: r.get(2)?,
                    last_order_at: r.get(3)?,
                    category_counts: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                })
            })
            .optional()
        })
        .map_err(db)?;
    Ok(row.unwrap_or_default())
}

fn save_computed(tx: &Connection, profile: &str, c: &Computed) -> Result<(), StoreError> {
    if c.order_count == 0 {
        return Ok(());
    }
    let categories = Value::Object(c.category_counts.clone()).to_string();
    tx.prepare_cached(
        "INSERT INTO computed (profile_id, order_count, lifetime_value, first_order_at, last_order_at, category_counts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (profile_id) DO UPDATE SET order_count = excluded.order_count, lifetime_value = excluded.lifetime_value,
             first_order_at = excluded.first_order_at, last_order_at = excluded.last_order_at,
             category_counts = excluded.category_counts",
    )
    .and_then(|mut s| s.execute(params![profile, c.order_count, c.lifetime_value, c.first_order_at, c.last_order_at, categories]))
    .map(drop)
    .map_err(db)
}

/// Resolves which profile a message belongs to, creating and merging as identities demand.
fn resolve(tx: &Connection, msg: &Message, mapping: &EventMapping) -> Result<String, StoreError> {
    let by_user = match &msg.user_id {
        Some(u) => lookup(tx, "user", u)?,
        None => None,
    };
    let by_anonymous = match &msg.anonymous_id {
        Some(a) => lookup(tx, "anonymous", a)?,
        None => None,
    };
    let profile = match (by_user, by_anonymous) {
        (Some(user), Some(anonymous)) if user != anonymous => {
            // History from before login joins the user, unless the anonymous profile is
            // already someone else's (a shared device): then the two stay apart.
            if !has_user_identity(tx, &anonymous)? {
                merge(tx, &anonymous, &user, mapping)?;
            }
            user
        }
        (Some(user), _) => user,
        (None, Some(anonymous)) => anonymous,
        (None, None) => create_profile(tx, msg.received_at)?,
    };
    if let Some(u) = &msg.user_id {
        link(tx, "user", u, &profile)?;
    }
    if let Some(a) = &msg.anonymous_id {
        link(tx, "anonymous", a, &profile)?;
    }
    if let Some(previous) = &msg.previous_id {
        let earlier = match lookup(tx, "user", previous)? {
            Some(p) => Some(p),
            None => lookup(tx, "anonymous", previous)?,
        };
        match earlier {
            Some(earlier) if earlier != profile => {
                if !has_user_identity(tx, &earlier)? || msg.user_id.is_some() {
                    merge(tx, &earlier, &profile, mapping)?;
                }
            }
            Some(_) => {}
            None => {
                link(tx, "user", previous, &profile)?;
                link(tx, "anonymous", previous, &profile)?;
            }
        }
    }
    Ok(profile)
}

fn upsert_trait(tx: &Connection, profile: &str, name: &str, value: &Value, at: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO traits (profile_id, name, value, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
         WHERE excluded.updated_at >= traits.updated_at",
    )
    .and_then(|mut s| s.execute(params![profile, name, value.to_string(), at]))
    .map(drop)
    .map_err(db)
}

fn upsert_contact(tx: &Connection, profile: &str, kind: &str, address: &str, active: bool, at: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO contacts (profile_id, kind, address, active, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (profile_id, kind, address) DO UPDATE SET active = excluded.active, updated_at = excluded.updated_at
         WHERE excluded.updated_at >= contacts.updated_at",
    )
    .and_then(|mut s| s.execute(params![profile, kind, address, active, at]))
    .map(drop)
    .map_err(db)
}

pub(crate) fn upsert_consent(tx: &Connection, profile: &str, purpose: Purpose, granted: bool, at: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO consents (profile_id, purpose, granted, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (profile_id, purpose) DO UPDATE SET granted = excluded.granted, updated_at = excluded.updated_at
         WHERE excluded.updated_at >= consents.updated_at",
    )
    .and_then(|mut s| s.execute(params![profile, purpose.name(), granted, at]))
    .map(drop)
    .map_err(db)
}

/// Stores a batch of messages; duplicates (by source and message id) are skipped.
pub(crate) fn ingest(tx: &Connection, mapping: &EventMapping, messages: &[Message]) -> Result<IngestReport, StoreError> {
    let mut report = IngestReport::default();
    for msg in messages {
        let fresh = tx
            .prepare_cached("INSERT OR IGNORE INTO messages (source, message_id, received_at) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![msg.source, msg.message_id, msg.received_at]))
            .map_err(db)?;
        if fresh == 0 {
            report.duplicates += 1;
            continue;
        }
        report.accepted += 1;
        let profile = resolve(tx, msg, mapping)?;
        tx.prepare_cached("UPDATE profiles SET updated_at = MAX(updated_at, ?2) WHERE id = ?1")
            .and_then(|mut s| s.execute(params![profile, msg.received_at]))
            .map_err(db)?;
        if let Some(zone) = &msg.timezone {
            tx.prepare_cached(
                "UPDATE profiles SET timezone = ?2, timezone_at = ?3 WHERE id = ?1 AND COALESCE(timezone_at, -1) <= ?3",
            )
            .and_then(|mut s| s.execute(params![profile, zone, msg.timestamp]))
            .map_err(db)?;
        }
        for (name, value) in &msg.traits {
            upsert_trait(tx, &profile, name, value, msg.timestamp)?;
            let address = value.as_str().map(str::trim).filter(|a| !a.is_empty());
            match (name.as_str(), address) {
                ("email", Some(email)) => upsert_contact(tx, &profile, "email", &email.to_lowercase(), true, msg.timestamp)?,
                ("phone", Some(phone)) => upsert_contact(tx, &profile, "phone", phone, true, msg.timestamp)?,
                _ => {}
            }
        }
        if let Some((token, active)) = &msg.push_token {
            upsert_contact(tx, &profile, "push_token", token, *active, msg.timestamp)?;
        }
        for (purpose, granted) in &msg.consents {
            upsert_consent(tx, &profile, *purpose, *granted, msg.timestamp)?;
        }
        if let Some(event) = &msg.event {
            tx.prepare_cached(
                "INSERT INTO events (profile_id, name, timestamp, properties, message_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![profile, event, msg.timestamp, Value::Object(msg.properties.clone()).to_string(), msg.message_id])
            })
            .map_err(db)?;
            if *event == mapping.order_completed {
                let mut computed = load_computed(tx, &profile)?;
                computed.add_order(mapping, msg.timestamp, &msg.properties);
                save_computed(tx, &profile, &computed)?;
            }
        }
    }
    Ok(report)
}

/// The profile an id names: a profile id, a userId or an anonymousId.
pub(crate) fn resolve_id(conn: &Connection, id: &str) -> Result<Option<String>, StoreError> {
    let direct: Option<String> = conn
        .prepare_cached("SELECT id FROM profiles WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(db)?;
    if direct.is_some() {
        return Ok(direct);
    }
    match lookup(conn, "user", id)? {
        Some(p) => Ok(Some(p)),
        None => lookup(conn, "anonymous", id),
    }
}

/// Erases a person from every table; false when no profile matched.
pub(crate) fn delete_profile(tx: &Connection, id: &str) -> Result<bool, StoreError> {
    let Some(profile) = resolve_id(tx, id)? else { return Ok(false) };
    for table in ["events", "traits", "contacts", "consents", "computed", "identities"] {
        tx.execute(&format!("DELETE FROM {table} WHERE profile_id = ?1"), [&profile]).map_err(db)?;
    }
    tx.execute("DELETE FROM profiles WHERE id = ?1", [&profile]).map_err(db)?;
    Ok(true)
}

/// Inserts or replaces catalog products.
pub(crate) fn upsert_products(tx: &Connection, products: &[Product], at: i64) -> Result<usize, StoreError> {
    let mut statement = tx
        .prepare_cached(
            "INSERT INTO products (id, name, category, price, url, image, in_stock, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, category = excluded.category, price = excluded.price,
                 url = excluded.url, image = excluded.image, in_stock = excluded.in_stock, updated_at = excluded.updated_at",
        )
        .map_err(db)?;
    for p in products {
        statement.execute(params![p.id, p.name, p.category, p.price, p.url, p.image, p.in_stock, at]).map_err(db)?;
    }
    Ok(products.len())
}

// ---- reads ----

/// Everything about one profile, with its `recent` latest events.
pub(crate) fn read_profile(conn: &Connection, id: &str, recent: usize) -> Result<Option<ProfileRecord>, StoreError> {
    let Some(profile) = resolve_id(conn, id)? else { return Ok(None) };
    let (created_at, updated_at, timezone): (i64, i64, Option<String>) = conn
        .prepare_cached("SELECT created_at, updated_at, timezone FROM profiles WHERE id = ?1")
        .and_then(|mut s| s.query_row([&profile], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
        .map_err(db)?;
    let mut user_ids = Vec::new();
    let mut anonymous_ids = Vec::new();
    let mut statement = conn.prepare_cached("SELECT kind, value FROM identities WHERE profile_id = ?1 ORDER BY value").map_err(db)?;
    for row in statement.query_map([&profile], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(db)? {
        let (kind, value) = row.map_err(db)?;
        if kind == "user" { user_ids.push(value) } else { anonymous_ids.push(value) }
    }
    let mut traits = Vec::new();
    let mut statement = conn.prepare_cached("SELECT name, value, updated_at FROM traits WHERE profile_id = ?1 ORDER BY name").map_err(db)?;
    for row in statement.query_map([&profile], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))).map_err(db)? {
        let (name, value, at) = row.map_err(db)?;
        traits.push((name, serde_json::from_str(&value).unwrap_or(Value::Null), at));
    }
    let mut consents = Vec::new();
    let mut statement = conn.prepare_cached("SELECT purpose, granted, updated_at FROM consents WHERE profile_id = ?1 ORDER BY purpose").map_err(db)?;
    for row in statement.query_map([&profile], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, i64>(2)?))).map_err(db)? {
        let (purpose, granted, updated_at) = row.map_err(db)?;
        if let Some(purpose) = Purpose::parse(&purpose) {
            consents.push(Consent { purpose, granted, updated_at });
        }
    }
    let mut contacts = Vec::new();
    let mut statement = conn
        .prepare_cached("SELECT kind, address, active, updated_at FROM contacts WHERE profile_id = ?1 ORDER BY kind, address")
        .map_err(db)?;
    for row in statement
        .query_map([&profile], |r| Ok(Contact { kind: r.get(0)?, address: r.get(1)?, active: r.get(2)?, updated_at: r.get(3)? }))
        .map_err(db)?
    {
        contacts.push(row.map_err(db)?);
    }
    let mut recent_events = Vec::new();
    let mut statement = conn
        .prepare_cached("SELECT name, timestamp, properties FROM events WHERE profile_id = ?1 ORDER BY timestamp DESC, id DESC LIMIT ?2")
        .map_err(db)?;
    for row in statement
        .query_map(params![profile, recent as i64], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))
        .map_err(db)?
    {
        let (name, timestamp, properties) = row.map_err(db)?;
        recent_events.push(StoredEvent { name, timestamp, properties: serde_json::from_str(&properties).unwrap_or(Value::Null) });
    }
    let computed = load_computed(conn, &profile)?;
    Ok(Some(ProfileRecord {
        id: profile,
        user_ids,
        anonymous_ids,
        created_at,
        updated_at,
        timezone,
        traits,
        computed,
        consents,
        contacts,
        recent_events,
    }))
}

/// How many rows each table holds, for tests of erasure and for operators.
pub(crate) fn table_counts(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut counts = Vec::new();
    for table in ["profiles", "identities", "events", "traits", "contacts", "consents", "computed", "products"] {
        let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).map_err(db)?;
        counts.push((table.to_string(), n));
    }
    Ok(counts)
}
