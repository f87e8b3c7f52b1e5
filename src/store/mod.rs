//! Where sessions are kept. [`SessionStore`] is deliberately narrow: load a record, write it
//! only if the stored version is still the expected one (or the key is absent or expired),
//! delete it or move its expiry only if it is still at the revision named, sweep expired
//! records, ping. Every backend makes each conditional change atomic in its own native way, so
//! that all backends behave alike and no update is ever lost. Moving the expiry (`extend`) is
//! not a change of the session: version, generation and document stay as they are. When and
//! to what an expiry moves is a rule of the contract, and those live in `domain/`, never here.
//! Each store also keeps an index of every customer's sessions (list a customer's sessions
//! newest first, page by page, and delete them all), built from the customer and modification
//! time each record carries: see "The customer index" in docs/ARCHITECTURE.md.

mod memory;
pub mod outbox;
mod postgres;
mod redis;
mod sqlite;
mod url;

use std::sync::Arc;

use async_trait::async_trait;

pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use redis::{Nodes as RedisNodes, RedisStore};
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
    /// The session's `customerId` (as in `doc`), so that stores can index a customer's
    /// sessions without reading the JSON; `None` for an anonymous session.
    pub customer: Option<String>,
    /// The session's `metadata.modifiedAt` (as in `doc`) in ms since the epoch: the order of a
    /// customer's sessions, newest first.
    pub modified_at: Millis,
}

impl StoredSession {
    /// A record as SQL stores it (versions are signed 64-bit integers there).
    pub fn from_sql(row: SqlRow) -> Result<Self, StoreError> {
        let (version, generation, expires_at, doc, customer, modified_at) = row;
        let version = u64::try_from(version).map_err(|_| StoreError::Corrupt("negative version".into()))?;
        Ok(StoredSession {
            version,
            generation,
            expires_at,
            doc,
            customer,
            modified_at,
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

/// A session row as both SQL stores select it: version, generation, expires_at, doc,
/// customer_id, modified_at (the columns [`SQL_COLUMNS`] names, in that order).
pub type SqlRow = (i64, i64, Option<Millis>, String, Option<String>, Millis);

/// The columns of a [`SqlRow`], for the `SELECT`s of both SQL stores.
pub const SQL_COLUMNS: &str = "version, generation, expires_at, doc, customer_id, modified_at";

/// An outbox entry as both SQL stores select it (the columns [`SQL_OUTBOX_COLUMNS`] names, in
/// that order): seq, destination, tenant, session_id, event_id, kind, version, customer_id,
/// doc, event_time, attempts, recorded_at.
type SqlOutboxRow = (
    i64,
    i32,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Millis,
    i32,
    Millis,
);

/// The columns of an [`SqlOutboxRow`].
const SQL_OUTBOX_COLUMNS: &str = "seq, destination, tenant, session_id, event_id, kind, version, customer_id, doc, \
                                  event_time, attempts, recorded_at";

/// A claimed outbox entry as the SQL stores return it; its handle is its `seq`.
fn pending_from_sql(row: SqlOutboxRow) -> Result<outbox::PendingEvent, StoreError> {
    let (seq, destination, tenant, session_id, id, kind, version, customer, session, time, attempts, recorded_at) = row;
    Ok(outbox::PendingEvent {
        entry: seq.to_string(),
        destination: u16::try_from(destination)
            .map_err(|_| StoreError::Corrupt(format!("outbox destination {destination} out of range")))?,
        key: SessionKey::new(tenant, session_id),
        event: outbox::EventRecord {
            id,
            kind: outbox::EventKind::parse(&kind)?,
            version: u64::try_from(version).map_err(|_| StoreError::Corrupt("negative version".into()))?,
            customer,
            session,
            time,
        },
        attempts: u32::try_from(attempts).unwrap_or(0),
        recorded_at,
    })
}

/// The sequence number an outbox entry's handle names (see [`pending_from_sql`]).
fn sql_entry(entry: &str) -> Result<i64, StoreError> {
    entry
        .parse()
        .map_err(|_| StoreError::Backend(format!("not an outbox entry: {entry}")))
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

/// A customer of one tenant: the same customer id in two tenants names two customers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerKey {
    pub tenant: String,
    pub customer_id: String,
}

impl CustomerKey {
    pub fn new(tenant: impl Into<String>, customer_id: impl Into<String>) -> Self {
        CustomerKey {
            tenant: tenant.into(),
            customer_id: customer_id.into(),
        }
    }

    /// The key of one of this customer's sessions.
    pub fn session(&self, session_id: &str) -> SessionKey {
        SessionKey::new(self.tenant.clone(), session_id)
    }
}

/// Which part of a list: skip `offset` entries, then at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: u64,
    pub limit: u64,
}

/// One page of a customer's sessions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomerSessions {
    /// The sessions of the page, each with its id, newest `modified_at` first.
    pub sessions: Vec<(String, StoredSession)>,
    /// How many live sessions the customer has in all (every page).
    pub total: u64,
}

/// A session a delete by customer removed: enough to tell others about it afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedSession {
    pub session_id: String,
    /// The revision it was at when it was removed.
    pub revision: Revision,
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

    /// One page of the live sessions (at `now`) of `customer`: those whose record names that
    /// customer, newest `modified_at` first, ties in ascending session id order (so that paging
    /// is stable), skipping `page.offset` and at most `page.limit` of them; and `total`, how
    /// many live sessions of that customer there are in all. Expired and deleted sessions never
    /// appear, nor sessions that belong to someone else now. Reads an index the store keeps
    /// itself, page by page: a customer with many sessions is never loaded whole into memory.
    /// Each session listed is as `load` would have returned it when it was read (a page is not
    /// a snapshot across sessions on every store: a session changed meanwhile may appear at
    /// its older or newer place).
    async fn list_customer_sessions(
        &self,
        customer: &CustomerKey,
        page: Page,
        now: Millis,
    ) -> Result<CustomerSessions, StoreError>;

    /// Removes every session of `customer` (except the one with id `except`, when given):
    /// every record that names that customer when the call reaches it, which includes every
    /// session that was the customer's when the call began and still is, also under concurrent
    /// writers; a session that meanwhile became someone else's (or nobody's) is not removed.
    /// Expired records of the customer not yet swept go too (nothing of the customer is left
    /// behind), but only the live ones (at `now`) are returned: each with its id and the
    /// revision it had, so that callers can report or announce every removal.
    ///
    /// Not one atomic step on every store (see each backend): when it fails midway some
    /// sessions are gone and others not, and calling it again removes the rest. It is
    /// idempotent: a second call finds nothing more to remove.
    async fn delete_customer_sessions(
        &self,
        customer: &CustomerKey,
        except: Option<&str>,
        now: Millis,
    ) -> Result<Vec<RemovedSession>, StoreError>;

    /// Removes up to `limit` records expired at `now`; returns how many went.
    async fn sweep_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError>;

    /// Turns the outbox on (see [`outbox`]): from then on every change also records, in the
    /// same atomic step, one entry per destination `0..destinations` with the event that tells
    /// of it. 0 (the default) = off: nothing is recorded and changes cost what they did.
    /// Called once, at start, before the first change.
    fn set_event_destinations(&self, destinations: u16);

    /// Claims up to `limit` due outbox entries for `owner` until `now + lease`: of each
    /// (destination, session), only the oldest entry not yet settled as done, and only when it
    /// is due (its next attempt is not after `now`) and not claimed by another owner (or that
    /// claim ran out). So a destination gets a session's events in order, one at a time, and
    /// two dispatchers hold the same entry only after a claim ran out (a failure).
    async fn claim_events(
        &self,
        owner: &str,
        limit: usize,
        lease: Millis,
        now: Millis,
    ) -> Result<Vec<outbox::PendingEvent>, StoreError>;

    /// Settles a claimed entry: done (it goes), or to be retried not before a time (its
    /// attempts counted, its claim released). An entry already gone is no error.
    async fn settle_event(&self, entry: &str, settlement: &outbox::Settlement) -> Result<(), StoreError>;

    /// How many entries wait and how old the oldest is (for the metrics).
    async fn outbox_stats(&self) -> Result<outbox::OutboxStats, StoreError>;

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
