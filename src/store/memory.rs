//! `memory://`: a map behind a lock. Each conditional change (write, delete, extend) checks
//! and changes the record under one hold of the lock, hence atomically. Nothing survives a
//! restart; for tests and demos.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Expect, Revision, SessionKey, SessionStore, StoreError, StoredSession};
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
