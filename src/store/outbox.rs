//! The transactional outbox: with events on, every change a store makes records, in the same
//! atomic step as the change, one entry per destination (webhook URL) telling what happened.
//! The dispatcher (`crate::events`) claims due entries, delivers them and settles them. The
//! store decides nothing about delivery beyond what the claim rules below say.
//!
//! What a store records, per change, when [`SessionStore::set_event_destinations`] gave it
//! `n > 0` destinations (one entry per destination `0..n`, all with the same event):
//!
//! | change | event |
//! |---|---|
//! | `write` with `Expect::Absent` | `created` (and first `expired` for an expired record it replaces) |
//! | `write` with `Expect::Current` | `updated` |
//! | `delete` | `deleted` |
//! | `delete_customer_sessions` | `deleted` per live session removed (expired ones: `expired`) |
//! | `sweep_expired` | `expired` per record removed |
//! | `extend`, a failed conditional step | nothing |
//!
//! An event's `version`, `customer` and `session` come from the record: after the change for
//! `created`/`updated` (the whole document as `session`), the last stored for `deleted`/
//! `expired` (no `session`). Its `time` is the `now` of the change, or the record's
//! `expires_at` for `expired`. Its `id` is drawn at random ([`EventRecord::new_id`]) and is the
//! same on every delivery.
//!
//! [`SessionStore::set_event_destinations`]: super::SessionStore::set_event_destinations

use crate::clock::Millis;
use crate::domain::SessionKey;

use super::StoreError;

/// What kind of change an event tells of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
    Expired,
}

impl EventKind {
    /// The short name stores keep (`created`, ...), also the last part of the CloudEvents type.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Deleted => "deleted",
            EventKind::Expired => "expired",
        }
    }

    /// The kind a store kept under [`EventKind::as_str`].
    pub fn parse(name: &str) -> Result<Self, StoreError> {
        match name {
            "created" => Ok(EventKind::Created),
            "updated" => Ok(EventKind::Updated),
            "deleted" => Ok(EventKind::Deleted),
            "expired" => Ok(EventKind::Expired),
            other => Err(StoreError::Corrupt(format!("unknown event kind {other:?}"))),
        }
    }
}

/// One event as the outbox keeps it: enough to render the same CloudEvent on every delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Unique; the same on every delivery (the receiver's deduplication key).
    pub id: String,
    pub kind: EventKind,
    /// The version after the change; on `deleted` and `expired`, the last version it had.
    pub version: u64,
    /// The session's customer, whenever it had one.
    pub customer: Option<String>,
    /// The whole resource after the change (`created`, `updated`); `None` otherwise.
    pub session: Option<String>,
    /// When the change happened (ms since the epoch).
    pub time: Millis,
}

impl EventRecord {
    /// A fresh event id: 128 random bits as a UUID (version 4) string.
    pub fn new_id() -> Result<String, StoreError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| StoreError::Backend(format!("no randomness for an event id: {e}")))?;
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        ))
    }

    /// The event of a change to (or the end of) the record `record` of a session, at `time`.
    pub fn of(kind: EventKind, record: &super::StoredSession, time: Millis) -> Result<Self, StoreError> {
        Ok(EventRecord {
            id: Self::new_id()?,
            kind,
            version: record.version,
            customer: record.customer.clone(),
            session: matches!(kind, EventKind::Created | EventKind::Updated).then(|| record.doc.clone()),
            time,
        })
    }
}

/// An outbox entry handed to the dispatcher by [`SessionStore::claim_events`].
///
/// [`SessionStore::claim_events`]: super::SessionStore::claim_events
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// The store's handle of the entry, to settle it with.
    pub entry: String,
    /// Which destination (webhook URL, by index) the entry is for.
    pub destination: u16,
    /// The session the event is about.
    pub key: SessionKey,
    pub event: EventRecord,
    /// Failed deliveries so far.
    pub attempts: u32,
    /// When the entry was recorded (for the retention).
    pub recorded_at: Millis,
}

/// What became of a claimed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Delivered (a 2xx) or given up (past the retention, or a destination that no longer
    /// exists): the entry goes.
    Done,
    /// Failed: try again not before `next_attempt_at`, with the attempt counted.
    Retry { next_attempt_at: Millis },
    /// Not tried (the dispatcher had no room for its destination): offered again not before
    /// `next_attempt_at`, the attempts as they were.
    Release { next_attempt_at: Millis },
}

impl Settlement {
    /// When the entry is offered again, and whether an attempt is counted; `None` for done.
    pub fn again(&self) -> Option<(Millis, bool)> {
        match self {
            Settlement::Done => None,
            Settlement::Retry { next_attempt_at } => Some((*next_attempt_at, true)),
            Settlement::Release { next_attempt_at } => Some((*next_attempt_at, false)),
        }
    }
}

/// How much is waiting, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Entries not yet settled as done.
    pub pending: u64,
    /// When the oldest of them was recorded; `None` when there is none.
    pub oldest_recorded_at: Option<Millis>,
}
