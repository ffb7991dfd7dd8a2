//! Rekindle's customer data: profiles, identities, events, traits, consents, contact points
//! and the catalog. SQLite is the embedded default.

mod computed;
mod model;
mod sqlite;

use std::path::Path;

pub use model::{
    Computed, Consent, Contact, EventMapping, IngestReport, Message, MessageKind, Product, ProfileRecord, Purpose,
    StoredEvent,
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

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The customer-data store.
pub struct Store {
    backend: sqlite::SqliteStore,
}

impl Store {
    /// Opens (creating if needed) an SQLite database file and applies pending migrations.
    pub fn open_sqlite(path: &Path, mapping: EventMapping) -> Result<Store, StoreError> {
        Ok(Store { backend: sqlite::SqliteStore::open(path, mapping)? })
    }

    /// Stores a batch atomically: every message or none. Resolves once committed.
    pub async fn ingest(&self, messages: Vec<Message>) -> Result<IngestReport, StoreError> {
        self.backend.write(move |tx, mapping| sqlite::ingest(tx, mapping, &messages)).await
    }

    /// The profile that `id` (a profile id, userId or anonymousId) names.
    pub async fn profile(&self, id: &str, recent_events: usize) -> Result<Option<ProfileRecord>, StoreError> {
        let id = id.to_string();
        self.backend.read(move |conn| sqlite::read_profile(conn, &id, recent_events)).await
    }

    /// Erases the person `id` names from every table; false when nobody matched.
    pub async fn delete_profile(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.backend.write(move |tx, _| sqlite::delete_profile(tx, &id)).await
    }

    /// Records consents given through the consent API; false when nobody matched.
    pub async fn set_consents(&self, id: &str, consents: Vec<(Purpose, bool)>, at: i64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.backend
            .write(move |tx, _| {
                let Some(profile) = sqlite::resolve_id(tx, &id)? else { return Ok(false) };
                for (purpose, granted) in consents {
                    sqlite::upsert_consent(tx, &profile, purpose, granted, at)?;
                }
                Ok(true)
            })
            .await
    }

    /// Inserts or replaces catalog products.
    pub async fn upsert_products(&self, products: Vec<Product>) -> Result<usize, StoreError> {
        let at = now_ms();
        self.backend.write(move |tx, _| sqlite::upsert_products(tx, &products, at)).await
    }

    /// Row counts per table.
    pub async fn table_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.backend.read(sqlite::table_counts).await
    }
}
