//! `memory://`: a map behind a lock. Each conditional change (write, delete, extend) checks
//! and changes the record under one hold of the lock, hence atomically. Nothing survives a
//! restart; for tests and demos. A customer's sessions are found by a scan of every record
//! under the lock (no secondary index to keep in step): linear in the number of sessions, which
//! is fine for the store of tests and demos, and trivially consistent. The outbox is a map
//! under the same lock, so each change and its event are one step; it dies with the process,
//! like the sessions it tells of.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::outbox::{EventKind, EventRecord, OutboxStats, PendingEvent, Settlement};
use super::{
    CustomerKey, CustomerSessions, Expect, Page, RemovedSession, Revision, SessionKey, SessionStore, StoreError,
    StoredSession,
};
use crate::clock::Millis;

/// Sessions in process memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    destinations: AtomicU16,
}

/// Everything under the one lock.
#[derive(Debug, Default)]
struct State {
    records: HashMap<SessionKey, StoredSession>,
    /// The outbox, by a sequence number: the order of the changes.
    outbox: BTreeMap<u64, Entry>,
    next_entry: u64,
}

#[derive(Debug)]
struct Entry {
    destination: u16,
    key: SessionKey,
    event: EventRecord,
    attempts: u32,
    recorded_at: Millis,
    next_attempt_at: Millis,
    claim: Option<(String, Millis)>,
}

impl MemoryStore {
    fn records(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written record (every change is
        // one insert, one remove or one assignment of the expiry, then its outbox entries), so
        // a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Records the event of a change, once per destination.
    fn record(&mut self, destinations: u16, key: &SessionKey, event: EventRecord, now: Millis) {
        for destination in 0..destinations {
            self.next_entry += 1;
            self.outbox.insert(
                self.next_entry,
                Entry {
                    destination,
                    key: key.clone(),
                    event: event.clone(),
                    attempts: 0,
                    recorded_at: now,
                    next_attempt_at: now,
                    claim: None,
                },
            );
        }
    }

    /// Removes the record under `key`, recording its event (`kind`, at `time`).
    fn remove(
        &mut self,
        destinations: u16,
        key: &SessionKey,
        kind: EventKind,
        time: Millis,
        now: Millis,
    ) -> Result<(), StoreError> {
        if let Some(old) = self.records.remove(key)
            && destinations > 0
        {
            self.record(destinations, key, EventRecord::of(kind, &old, time)?, now);
        }
        Ok(())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, key: &SessionKey, now: Millis) -> Result<Option<StoredSession>, StoreError> {
        Ok(self.records().records.get(key).filter(|r| r.is_live(now)).cloned())
    }

    async fn write(
        &self,
        key: &SessionKey,
        expect: Expect,
        record: &StoredSession,
        now: Millis,
    ) -> Result<(), StoreError> {
        let destinations = self.destinations.load(Ordering::Relaxed);
        let mut state = self.records();
        let current = state
            .records
            .get(key)
            .filter(|r| r.is_live(now))
            .map(|r| (r.version, r.generation));
        let holds = match expect {
            Expect::Absent => current.is_none(),
            Expect::Current { version, generation } => current == Some((version, generation)),
        };
        if !holds {
            return Err(StoreError::Conflict);
        }
        if destinations > 0 {
            // An expired record that a creation replaces ends first.
            if let Some(expired) = state.records.get(key).filter(|r| !r.is_live(now)) {
                let time = expired.expires_at.unwrap_or(now);
                state.remove(destinations, key, EventKind::Expired, time, now)?;
            }
            let kind = match expect {
                Expect::Absent => EventKind::Created,
                Expect::Current { .. } => EventKind::Updated,
            };
            let event = EventRecord::of(kind, record, now)?;
            state.record(destinations, key, event, now);
        }
        state.records.insert(key.clone(), record.clone());
        Ok(())
    }

    async fn delete(&self, key: &SessionKey, revision: Revision, now: Millis) -> Result<(), StoreError> {
        let destinations = self.destinations.load(Ordering::Relaxed);
        let mut state = self.records();
        match state.records.get(key) {
            Some(r) if r.is_live(now) && r.revision() == revision => {
                state.remove(destinations, key, EventKind::Deleted, now, now)
            }
            _ => Err(StoreError::Conflict),
        }
    }

    async fn extend(
        &self,
        key: &SessionKey,
        revision: Revision,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<(), StoreError> {
        match self.records().records.get_mut(key) {
            Some(r) if r.is_live(now) && r.revision() == revision => {
                r.expires_at = expires_at;
                Ok(())
            }
            _ => Err(StoreError::Conflict),
        }
    }

    async fn list_customer_sessions(
        &self,
        customer: &CustomerKey,
        page: Page,
        now: Millis,
    ) -> Result<CustomerSessions, StoreError> {
        let state = self.records();
        let mut mine: Vec<(&SessionKey, &StoredSession)> = state
            .records
            .iter()
            .filter(|(k, r)| belongs_to(k, r, customer) && r.is_live(now))
            .collect();
        mine.sort_by(|(ka, a), (kb, b)| {
            b.modified_at
                .cmp(&a.modified_at)
                .then_with(|| ka.session_id.cmp(&kb.session_id))
        });
        let total = mine.len() as u64;
        let sessions = mine
            .into_iter()
            .skip(usize::try_from(page.offset).unwrap_or(usize::MAX))
            .take(usize::try_from(page.limit).unwrap_or(usize::MAX))
            .map(|(k, r)| (k.session_id.clone(), r.clone()))
            .collect();
        Ok(CustomerSessions { sessions, total })
    }

    async fn delete_customer_sessions(
        &self,
        customer: &CustomerKey,
        except: Option<&str>,
        now: Millis,
    ) -> Result<Vec<RemovedSession>, StoreError> {
        let destinations = self.destinations.load(Ordering::Relaxed);
        let mut state = self.records();
        let mut removed = Vec::new();
        let mine: Vec<(SessionKey, bool, Option<Millis>)> = state
            .records
            .iter()
            .filter(|(k, r)| belongs_to(k, r, customer) && except != Some(k.session_id.as_str()))
            .map(|(k, r)| (k.clone(), r.is_live(now), r.expires_at))
            .collect();
        for (key, live, expires_at) in mine {
            if live {
                let revision = state.records[&key].revision();
                removed.push(RemovedSession {
                    session_id: key.session_id.clone(),
                    revision,
                });
                state.remove(destinations, &key, EventKind::Deleted, now, now)?;
            } else {
                state.remove(destinations, &key, EventKind::Expired, expires_at.unwrap_or(now), now)?;
            }
        }
        Ok(removed)
    }

    async fn sweep_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        let destinations = self.destinations.load(Ordering::Relaxed);
        let mut state = self.records();
        let expired: Vec<(SessionKey, Millis)> = state
            .records
            .iter()
            .filter(|(_, r)| !r.is_live(now))
            .map(|(k, r)| (k.clone(), r.expires_at.unwrap_or(now)))
            .take(limit)
            .collect();
        for (key, expired_at) in &expired {
            state.remove(destinations, key, EventKind::Expired, *expired_at, now)?;
        }
        Ok(expired.len())
    }

    fn set_event_destinations(&self, destinations: u16) {
        self.destinations.store(destinations, Ordering::Relaxed);
    }

    async fn claim_events(
        &self,
        owner: &str,
        limit: usize,
        lease: Millis,
        now: Millis,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        let mut state = self.records();
        // The first (oldest) entry of each (destination, session) is the only one that may go.
        let mut seen = HashSet::new();
        let mut claimed = Vec::new();
        for (seq, entry) in state.outbox.iter_mut() {
            if claimed.len() >= limit {
                break;
            }
            if !seen.insert((entry.destination, entry.key.clone())) {
                continue;
            }
            let held = entry
                .claim
                .as_ref()
                .is_some_and(|(o, until)| o != owner && *until > now);
            if held || entry.next_attempt_at > now {
                continue;
            }
            entry.claim = Some((owner.to_owned(), now.saturating_add(lease)));
            claimed.push(PendingEvent {
                entry: seq.to_string(),
                destination: entry.destination,
                key: entry.key.clone(),
                event: entry.event.clone(),
                attempts: entry.attempts,
                recorded_at: entry.recorded_at,
            });
        }
        Ok(claimed)
    }

    async fn settle_event(&self, entry: &str, settlement: &Settlement) -> Result<(), StoreError> {
        let seq: u64 = entry
            .parse()
            .map_err(|_| StoreError::Backend(format!("not an outbox entry: {entry}")))?;
        let mut state = self.records();
        match settlement {
            Settlement::Done => {
                state.outbox.remove(&seq);
            }
            Settlement::Retry { .. } | Settlement::Release { .. } => {
                let (next_attempt_at, failed) = settlement.again().unwrap_or_default();
                if let Some(e) = state.outbox.get_mut(&seq) {
                    e.attempts = e.attempts.saturating_add(u32::from(failed));
                    e.next_attempt_at = next_attempt_at;
                    e.claim = None;
                }
            }
        }
        Ok(())
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let state = self.records();
        Ok(OutboxStats {
            pending: state.outbox.len() as u64,
            oldest_recorded_at: state.outbox.values().map(|e| e.recorded_at).min(),
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Whether the record under `key` is a session of `customer` (live or not).
fn belongs_to(key: &SessionKey, record: &StoredSession, customer: &CustomerKey) -> bool {
    key.tenant == customer.tenant && record.customer.as_deref() == Some(customer.customer_id.as_str())
}
