//! `memory://`: a map behind a lock. Each conditional change (write, delete, extend) checks
//! and changes the record under one hold of the lock, hence atomically. Nothing survives a
//! restart; for tests and demos. A customer's sessions are found by a scan of every record
//! under the lock (no secondary index to keep in step): linear in the number of sessions, which
//! is fine for the store of tests and demos, and trivially consistent.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    CustomerKey, CustomerSessions, Expect, Page, RemovedSession, Revision, SessionKey, SessionStore, StoreError,
    StoredSession,
};
use crate::clock::Millis;

/// Sessions in process memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<HashMap<SessionKey, StoredSession>>,
}

impl MemoryStore {
    fn records(&self) -> MutexGuard<'_, HashMap<SessionKey, StoredSession>> {
        // A panic while holding the lock cannot leave a half-written record (every change is
        // one insert, one remove or one assignment of the expiry), so a poisoned lock is still
        // safe to use.
        self.records.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, key: &SessionKey, now: Millis) -> Result<Option<StoredSession>, StoreError> {
        Ok(self.records().get(key).filter(|r| r.is_live(now)).cloned())
    }

    async fn write(
        &self,
        key: &SessionKey,
        expect: Expect,
        record: &StoredSession,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut records = self.records();
        let current = records
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
        records.insert(key.clone(), record.clone());
        Ok(())
    }

    async fn delete(&self, key: &SessionKey, revision: Revision, now: Millis) -> Result<(), StoreError> {
        let mut records = self.records();
        match records.get(key) {
            Some(r) if r.is_live(now) && r.revision() == revision => {
                records.remove(key);
                Ok(())
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
        match self.records().get_mut(key) {
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
        let records = self.records();
        let mut mine: Vec<(&SessionKey, &StoredSession)> = records
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
        let mut records = self.records();
        let mut removed = Vec::new();
        records.retain(|k, r| {
            if !belongs_to(k, r, customer) || except == Some(k.session_id.as_str()) {
                return true;
            }
            if r.is_live(now) {
                removed.push(RemovedSession {
                    session_id: k.session_id.clone(),
                    revision: r.revision(),
                });
            }
            false
        });
        Ok(removed)
    }

    async fn sweep_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        let mut records = self.records();
        let expired: Vec<SessionKey> = records
            .iter()
            .filter(|(_, r)| !r.is_live(now))
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect();
        for key in &expired {
            records.remove(key);
        }
        Ok(expired.len())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Whether the record under `key` is a session of `customer` (live or not).
fn belongs_to(key: &SessionKey, record: &StoredSession, customer: &CustomerKey) -> bool {
    key.tenant == customer.tenant && record.customer.as_deref() == Some(customer.customer_id.as_str())
}
