//! Where sessions are kept. [`SessionStore`] is deliberately narrow: load a record, write it
//! only if the stored version is still the expected one (or the key is absent or expired),
//! delete it or move its expiry only if it is still at the revision named, sweep expired
//! records, ping. Every backend makes each conditional change atomic in its own native way, so
//! that all backends behave alike and no update is ever lost. Moving the expiry (`extend`) is
//! not a change of the session: version, generation and document stay as they are. When and
//! to what an expiry moves is a rule of the contract, and those live in `domain/`, never here.

mod memory;
mod postgres;
mod redis;
mod sqlite;
mod url;

use std::sync::Arc;

use async_trait::async_trait;

pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use redis::RedisStore;
pub use sqlite::SqliteStore;
pub use url::{PostgresOptions, RedisOptions, StoreUrl};

use crate::clock::Millis;
pub use crate::domain::SessionKey;

/// One stored session: the serialized resource plus what a store needs to compare and expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Equal to `metadata.version` inside `doc`.
    pub version: u64,
    /// Which life of the session the record belongs to: drawn at random when the session is
    /// created and kept by every later write. A session that is deleted or expires and is then
    /// created again starts over at version 1, so a version alone could match the record's
    /// successor (the ABA problem, found by the history checker); version and generation cannot.
    pub generation: i64,
    /// When the record stops existing (ms since the epoch); `None` = never.
    pub expires_at: Option<Millis>,
    /// The session context as JSON, exactly as served.
    pub doc: String,
}

impl StoredSession {
    /// A record as SQL stores it (versions are signed 64-bit integers there).
    pub fn from_sql(
        version: i64,
        generation: i64,
        expires_at: Option<Millis>,
        doc: String,
    ) -> Result<Self, StoreError> {
        let version = u64::try_from(version).map_err(|_| StoreError::Corrupt("negative version".into()))?;
        Ok(StoredSession {
            version,
            generation,
            expires_at,
            doc,
        })
    }

    /// A generation for a session being created.
    pub fn new_generation() -> Result<i64, StoreError> {
        getrandom::u64()
            .map(|g| i64::from_ne_bytes(g.to_ne_bytes()))
            .map_err(|e| StoreError::Backend(format!("no randomness for a new session: {e}")))
    }

    /// The state this record is in.
    pub fn revision(&self) -> Revision {
        Revision {
            version: self.version,
            generation: self.generation,
        }
    }

    /// Whether the record is still alive at `now`.
    pub fn is_live(&self, now: Millis) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// A version as SQL stores it.
pub fn sql_version(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::Corrupt("version out of range".into()))
}

/// One state of one life of a session: what a conditional delete or extend names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revision {
    pub version: u64,
    pub generation: i64,
}

/// The condition a write is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No live record exists (none at all, or only an expired one).
    Absent,
    /// A live record exists at exactly this version of this generation.
    Current { version: u64, generation: i64 },
}

impl Expect {
    /// The record `current` must still be there, unchanged.
    pub fn unchanged(current: &StoredSession) -> Expect {
        Expect::Current {
            version: current.version,
            generation: current.generation,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The write's condition did not hold: someone else wrote first.
    #[error("the stored record did not match the expected state")]
    Conflict,
    /// The store cannot be reached or is too busy to answer now.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be read back.
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
    /// Any other failure of the backend.
    #[error("the store failed: {0}")]
    Backend(String),
}

impl StoreError {
    /// The answer of a conditional operation: done when its condition `held`, else
    /// [`StoreError::Conflict`].
    pub fn unless_held(held: bool) -> Result<(), StoreError> {
        if held { Ok(()) } else { Err(StoreError::Conflict) }
    }
}

/// The storage contract every backend fulfils.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The live record under `key` at `now`; expired records are reported as missing.
    async fn load(&self, key: &SessionKey, now: Millis) -> Result<Option<StoredSession>, StoreError>;

    /// Stores `record` (all of it, generation included) under `key` if `expect` holds at
    /// `now`, atomically; else [`StoreError::Conflict`] and nothing changes.
    async fn write(
        &self,
        key: &SessionKey,
        expect: Expect,
        record: &StoredSession,
        now: Millis,
    ) -> Result<(), StoreError>;

    /// Removes the record under `key` if it is live at `now` and still at `revision`,
    /// atomically; else [`StoreError::Conflict`] and nothing changes. Conditional like
    /// `write`, so that a delete decided on one state of a session (for example "it has no
    /// customer") never removes another.
    async fn delete(&self, key: &SessionKey, revision: Revision, now: Millis) -> Result<(), StoreError>;

    /// Moves the expiry of the record under `key` to `expires_at` (`None` = never expires) if it
    /// is live at `now` and still at `revision`, atomically; its version, generation and document
    /// stay as they are. Else [`StoreError::Conflict`] and nothing changes.
    async fn extend(
        &self,
        key: &SessionKey,
        revision: Revision,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<(), StoreError>;

    /// Removes up to `limit` records expired at `now`; returns how many went.
    async fn sweep_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError>;

    /// Whether the store can take writes now (readiness): it answers, and, where the store can
    /// tell, its storage accepts writes (SQLite: the file is still the one opened and the disk
    /// has room).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens the store a URL names.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn SessionStore>, StoreError> {
    match url {
        StoreUrl::Memory => Ok(Arc::new(MemoryStore::default())),
        StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
        StoreUrl::Postgres(options) => Ok(Arc::new(PostgresStore::open(options).await?)),
        StoreUrl::Redis(options) => Ok(Arc::new(RedisStore::open_single(options).await?)),
        StoreUrl::RedisCluster(options) => Ok(Arc::new(RedisStore::open_cluster(options).await?)),
    }
}
