//! The PostgreSQL backend, for several Rekindle hosts sharing state. Each request runs in
//! its own transaction on a pooled connection; writers touching the same identities are
//! serialised with transaction-scoped advisory locks, and a transaction that loses a
//! deadlock or serialisation race is retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Statement};

use crate::StoreError;
use crate::db::{Db, P, Row, V, dollar_placeholders};
use crate::model::EventMapping;

/// Migrations, applied in order once each.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_profiles.sql")),
    (2, include_str!("../migrations/postgres/0002_lookups.sql")),
    (3, include_str!("../migrations/postgres/0003_segments.sql")),
    (4, include_str!("../migrations/postgres/0004_segment_runs.sql")),
    (5, include_str!("../migrations/postgres/0005_tiles.sql")),
    (6, include_str!("../migrations/postgres/0006_co_purchases.sql")),
    (7, include_str!("../migrations/postgres/0007_journeys.sql")),
    (8, include_str!("../migrations/postgres/0008_journey_sends_by_run.sql")),
    (9, include_str!("../migrations/postgres/0009_written_by_browser.sql")),
    (10, include_str!("../migrations/postgres/0010_segment_cutoffs.sql")),
    (11, include_str!("../migrations/postgres/0011_several_hosts.sql")),
    (12, include_str!("../migrations/postgres/0012_feedback.sql")),
    (13, include_str!("../migrations/postgres/0013_unsubscribe.sql")),
];

/// Any constant works; it only has to be the same on every host.
const MIGRATION_LOCK: i64 = 0x5245_4b49_4e44_4c45;

/// Attempts for a transaction that loses a deadlock or serialisation race.
const ATTEMPTS: usize = 5;

struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

pub(crate) struct PgStore {
    url: String,
    idle: Arc<Mutex<Vec<Conn>>>,
    mapping: Arc<EventMapping>,
}

fn db(e: &postgres::Error) -> StoreError {
    StoreError::Database(match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    })
}

/// Lost races worth running the transaction again for: serialisation failures, deadlocks,
/// and a unique key another host inserted first (two hosts backfilling one segment at
/// start-up), which the retry reads back and updates instead.
fn retryable(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| matches!(c.code(), "40001" | "40P01" | "23505"))
}

/// A transaction, with the connection's prepared statements, as a [`Db`].
pub(crate) struct PgTx<'a> {
    tx: postgres::Transaction<'a>,
    statements: &'a mut HashMap<String, Statement>,
    /// The driver error behind the last failure, kept to tell retryable races apart.
    last_error: Option<postgres::Error>,
}

fn boxed(p: &P<'_>) -> Box<dyn ToSql + Sync> {
    match *p {
        P::Text(s) => Box::new(s.to_string()),
        P::Int(i) => Box::new(i),
        P::Float(f) => Box::new(f),
        P::Bool(b) => Box::new(b),
        P::OptText(s) => Box::new(s.map(str::to_string)),
        P::OptInt(i) => Box::new(i),
        P::OptFloat(f) => Box::new(f),
    }
}

impl PgTx<'_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(&dollar_placeholders(sql))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

impl Db for PgTx<'_> {
    fn execute(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64, StoreError> {
        let values: Vec<Box<dyn ToSql + Sync>> = params.iter().map(boxed).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|b| b.as_ref()).collect();
        let result = self.statement(sql).and_then(|s| self.tx.execute(&s, &refs));
        result.map_err(|e| {
            let err = db(&e);
            self.last_error = Some(e);
            err
        })
    }

    fn query(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Row>, StoreError> {
        let values: Vec<Box<dyn ToSql + Sync>> = params.iter().map(boxed).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|b| b.as_ref()).collect();
        let rows = match self.statement(sql).and_then(|s| self.tx.query(&s, &refs)) {
            Ok(rows) => rows,
            Err(e) => {
                let err = db(&e);
                self.last_error = Some(e);
                return Err(err);
            }
        };
        rows.iter().map(row_values).collect()
    }

    fn lock_identities(&mut self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        // One round trip for the whole batch. Every writer takes its locks in the order of
        // their hashes (PostgreSQL evaluates a volatile target list after the sort), so two
        // writers cannot each hold a lock the other waits for.
        let sql = "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest($1::text[]) AS k) AS keys ORDER BY h";
        let result = self.statement(sql).and_then(|s| self.tx.execute(&s, &[&keys]));
        result.map(drop).map_err(|e| {
            let err = db(&e);
            self.last_error = Some(e);
            err
        })
    }

    fn skip_locked(&self) -> &'static str {
        " FOR UPDATE SKIP LOCKED"
    }

    fn for_update(&self) -> &'static str {
        " FOR NO KEY UPDATE"
    }

    fn lock_profile(&mut self, id: &str, exclusive: bool) -> Result<bool, StoreError> {
        let sql = if exclusive { "SELECT 1 FROM profiles WHERE id = ?1 FOR UPDATE" } else { "SELECT 1 FROM profiles WHERE id = ?1 FOR SHARE" };
        Ok(self.query_opt(sql, &[P::Text(id)])?.is_some())
    }
}

fn row_values(row: &postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let get_err = |e: postgres::Error| StoreError::Database(format!("column {}: {e}", column.name()));
        let value = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(get_err)?.map_or(V::Null, V::Int),
            Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(get_err)?.map_or(V::Null, |n| V::Int(n.into())),
            Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map_err(get_err)?.map_or(V::Null, V::Float),
            Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(get_err)?.map_or(V::Null, V::Bool),
            Type::VOID => V::Null,
            _ => row.try_get::<_, Option<String>>(i).map_err(get_err)?.map_or(V::Null, V::Text),
        };
        values.push(value);
    }
    Ok(Row(values))
}

impl PgStore {
    pub(crate) fn open(url: &str, mapping: EventMapping) -> Result<PgStore, StoreError> {
        let mut client = connect(url)?;
        // One host migrates at a time; the others wait, then find nothing left to do.
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).map_err(|e| db(&e))?;
        let migrated = migrate(&mut client);
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).map_err(|e| db(&e))?;
        migrated?;
        let conn = Conn { client, statements: HashMap::new() };
        Ok(PgStore { url: url.to_string(), idle: Arc::new(Mutex::new(vec![conn])), mapping: Arc::new(mapping) })
    }

    /// Runs `work` with a pooled connection on a blocking thread, returning the connection
    /// to the pool afterwards.
    async fn with_connection<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Conn, &EventMapping) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (url, idle, mapping) = (self.url.clone(), self.idle.clone(), self.mapping.clone());
        tokio::task::spawn_blocking(move || {
            let mut conn = checkout(&url, &idle)?;
            let result = work(&mut conn, &mapping);
            checkin(&idle, conn);
            result
        })
        .await
        .map_err(|e| StoreError::Database(format!("database task failed: {e}")))?
    }

    /// Runs `work` in a transaction, retrying lost races; resolves once committed.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        work: impl Fn(&mut PgTx<'_>, &EventMapping) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.with_connection(move |conn, mapping| {
            for attempt in 1..=ATTEMPTS {
                let Conn { client, statements } = &mut *conn;
                let tx = client.transaction().map_err(|e| db(&e))?;
                let mut pg = PgTx { tx, statements, last_error: None };
                match work(&mut pg, mapping) {
                    Ok(value) => match pg.tx.commit() {
                        Ok(()) => return Ok(value),
                        Err(e) if retryable(&e) && attempt < ATTEMPTS => continue,
                        Err(e) => return Err(db(&e)),
                    },
                    Err(err) => {
                        let again = pg.last_error.as_ref().is_some_and(retryable);
                        drop(pg);
                        if again && attempt < ATTEMPTS {
                            tracing::debug!(attempt, "retrying a transaction that lost a race: {err}");
                            continue;
                        }
                        return Err(err);
                    }
                }
            }
            Err(StoreError::Database("gave up after repeated deadlocks".into()))
        })
        .await
    }

    /// Runs `work` in a read-only transaction.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        work: impl Fn(&mut PgTx<'_>, &EventMapping) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.with_connection(move |conn, mapping| {
            let Conn { client, statements } = conn;
            let tx = client.build_transaction().read_only(true).start().map_err(|e| db(&e))?;
            let mut pg = PgTx { tx, statements, last_error: None };
            let value = work(&mut pg, mapping)?;
            pg.tx.commit().map_err(|e| db(&e))?;
            Ok(value)
        })
        .await
    }

    /// As [`PgStore::write`]: each request is its own transaction, so none waits behind
    /// another's.
    pub(crate) async fn write_urgent<T: Send + 'static>(
        &self,
        work: impl Fn(&mut PgTx<'_>, &EventMapping) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write(work).await
    }

    /// A read that may take a while; PostgreSQL reads already run off the async workers.
    pub(crate) async fn read_bulk<T: Send + 'static>(
        &self,
        work: impl Fn(&mut PgTx<'_>, &EventMapping) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read(work).await
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The blocking client shuts its connection down with a blocking call, which panics
        // on an async runtime thread, where the store is usually dropped.
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        if !idle.is_empty() {
            let _ = std::thread::Builder::new().name("rekindle-pg-close".into()).spawn(move || drop(idle));
        }
    }
}

fn checkout(url: &str, idle: &Mutex<Vec<Conn>>) -> Result<Conn, StoreError> {
    let pooled = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
    match pooled {
        Some(conn) if !conn.client.is_closed() => Ok(conn),
        _ => Ok(Conn { client: connect(url)?, statements: HashMap::new() }),
    }
}

/// A connection whose statements are planned for the rows they meet. Prepared statements
/// otherwise settle on a generic plan after five runs, and one settled while a table was
/// small kept scanning all of it when it was not: a lookup of a batch's buyers by primary
/// key read 80 million rows in 40 seconds of ingestion into a growing database.
fn connect(url: &str) -> Result<Client, StoreError> {
    let mut client = Client::connect(url, NoTls).map_err(|e| db(&e))?;
    client.batch_execute("SET plan_cache_mode = force_custom_plan").map_err(|e| db(&e))?;
    Ok(client)
}

fn checkin(idle: &Mutex<Vec<Conn>>, conn: Conn) {
    if !conn.client.is_closed() {
        idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
    }
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)").map_err(|e| db(&e))?;
    for (version, sql) in MIGRATIONS {
        let applied = client.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version]).map_err(|e| db(&e))?.is_some();
        if applied {
            continue;
        }
        let mut tx = client.transaction().map_err(|e| db(&e))?;
        tx.batch_execute(sql).map_err(|e| StoreError::Migration { version: *version, message: db(&e).to_string() })?;
        tx.execute("INSERT INTO schema_migrations VALUES ($1, $2)", &[version, &crate::now_ms()]).map_err(|e| db(&e))?;
        tx.commit().map_err(|e| db(&e))?;
        tracing::info!(version, "applied PostgreSQL migration");
    }
    Ok(())
}
