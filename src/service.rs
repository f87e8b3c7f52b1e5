//! The use cases of the API, each a loop of: load the session, apply a rule from `domain/`,
//! write the result only if nobody changed the session meanwhile, and try again if somebody
//! did. The loop is what makes attribute changes atomic without a version from the client,
//! and version-checked changes answer 409 instead of overwriting.

use std::sync::Arc;

use serde_json::Value;

use crate::clock::{Clock, Millis};
use crate::domain::{PatchRequest, PutRequest, SessionContext, rules};
use crate::store::{Expect, SessionKey, SessionStore, StoreError, StoredSession};

/// How many times a change is retried after losing a race before the caller is told to retry.
const MAX_ATTEMPTS: usize = 1_000;

/// What a client expects the stored version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// `metadata.version` in the body.
    Body(u64),
    /// An `If-Match: "<version>"` header.
    IfMatch(u64),
    /// `If-Match: *`: any existing version.
    Any,
}

/// A `saas-token` as the HTTP layer found it, verified for the path's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaasToken {
    Missing,
    /// It does not verify, or it is an access token rather than a saas-token.
    Invalid,
    /// A valid saas-token that names another tenant.
    OtherTenant,
    /// A valid token for this customer of the path's tenant.
    Customer(String),
}

/// Who is changing a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A management token: any session of its tenant.
    Management,
    /// A customer or anonymous token: its own session only; `customer` is `None` for anonymous.
    Me { customer: Option<String> },
}

/// How a change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created { version: u64 },
    Updated { version: u64 },
    Unchanged,
}

/// Why a use case was refused.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("session not found")]
    NotFound,
    #[error("version mismatch")]
    VersionMismatch { current: u64, expected: Expected },
    #[error("saas-token missing or invalid")]
    SaasUnauthenticated,
    #[error("saas-token is for another customer")]
    SaasForbidden,
    #[error("the session belongs to another customer")]
    NotYourSession,
    #[error("too many concurrent changes")]
    Contention,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The use cases, over any store.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    /// Lifetime of anonymous sessions in ms; `None` = never expire.
    ttl: Option<Millis>,
}

impl Sessions {
    pub fn new(store: Arc<dyn SessionStore>, clock: Arc<dyn Clock>, ttl: Option<Millis>) -> Self {
        Sessions { store, clock, ttl }
    }

    /// The store behind the use cases (for health checks and sweeping).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The current time as the use cases see it.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// A session as stored (its JSON and version), checked for the caller's access.
    pub async fn get(&self, key: &SessionKey, caller: &Caller) -> Result<StoredSession, ServiceError> {
        let record = self.store.load(key, self.now()).await?.ok_or(ServiceError::NotFound)?;
        if let Caller::Me { customer } = caller {
            // Only the owner is needed: read just `customerId`, not the whole document.
            let owner: Owner = serde_json::from_str(&record.doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if !rules::me_may_access(owner.customer_id.as_deref(), customer.as_deref()) {
                return Err(ServiceError::NotYourSession);
            }
        }
        Ok(record)
    }

    /// `PUT /context/{sessionId}`.
    pub async fn put(
        &self,
        key: &SessionKey,
        req: &PutRequest,
        expected: Expected,
        upsert: bool,
        saas: &SaasToken,
    ) -> Result<Outcome, ServiceError> {
        self.change(key, |current, now| {
            match &current {
                Some(stored) => check_expected(stored, expected)?,
                None if !upsert => return Err(ServiceError::NotFound),
                None => {}
            }
            if let Some(customer) = rules::saas_customer(current.as_ref(), req) {
                check_saas(saas, customer)?;
            }
            Ok(Some(rules::apply_put(current, &key.session_id, req, now)))
        })
        .await
    }

    /// `PATCH /me/context`.
    pub async fn patch(
        &self,
        key: &SessionKey,
        customer: Option<&str>,
        req: &PatchRequest,
        expected: Expected,
        upsert: bool,
    ) -> Result<Outcome, ServiceError> {
        self.change(key, |current, now| {
            match &current {
                Some(stored) => {
                    if !rules::me_may_access(stored.customer_id.as_deref(), customer) {
                        return Err(ServiceError::NotYourSession);
                    }
                    check_expected(stored, expected)?;
                }
                None if !upsert => return Err(ServiceError::NotFound),
                None => {}
            }
            Ok(Some(rules::apply_patch(current, &key.session_id, customer, req, now)))
        })
        .await
    }

    /// Adds or overwrites one attribute.
    pub async fn set_attribute(
        &self,
        key: &SessionKey,
        caller: &Caller,
        name: &str,
        value: &Value,
    ) -> Result<Outcome, ServiceError> {
        self.change(key, |current, now| {
            let stored = existing(current, caller)?;
            Ok(Some(rules::set_attribute(stored, name, value, now)))
        })
        .await
    }

    /// Removes one attribute; removing a missing one changes nothing.
    pub async fn remove_attribute(
        &self,
        key: &SessionKey,
        caller: &Caller,
        name: &str,
    ) -> Result<Outcome, ServiceError> {
        self.change(key, |current, now| {
            let stored = existing(current, caller)?;
            Ok(rules::remove_attribute(stored, name, now))
        })
        .await
    }

    /// Ends a session. A customer session ends only with that customer's `saas-token`, as
    /// for PUT: otherwise a management token alone could delete it and re-create it as an
    /// anonymous session that the customer's own token would then read. The delete is
    /// conditional on the state that was checked, so a customer set meanwhile is never lost.
    pub async fn delete(&self, key: &SessionKey, saas: &SaasToken) -> Result<(), ServiceError> {
        for attempt in 0..MAX_ATTEMPTS {
            let now = self.now();
            let record = self.store.load(key, now).await?.ok_or(ServiceError::NotFound)?;
            let owner: Owner = serde_json::from_str(&record.doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let Some(customer) = owner.customer_id.as_deref() {
                check_saas(saas, customer)?;
            }
            match self.store.delete(key, record.revision(), now).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict) => back_off(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Contention)
    }

    /// Removes expired sessions in batches of `batch`; returns how many went.
    pub async fn sweep(&self, batch: usize) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let removed = self.store.sweep_expired(self.now(), batch).await?;
            total += removed;
            if removed < batch {
                return Ok(total);
            }
        }
    }

    /// The optimistic loop shared by every change. `decide` gets the stored session (if any)
    /// and returns the next one, or `None` when nothing is to change.
    async fn change<F>(&self, key: &SessionKey, mut decide: F) -> Result<Outcome, ServiceError>
    where
        F: FnMut(Option<SessionContext>, Millis) -> Result<Option<SessionContext>, ServiceError>,
    {
        for attempt in 0..MAX_ATTEMPTS {
            let now = self.now();
            let record = self.store.load(key, now).await?;
            let current = record.as_ref().map(decode).transpose()?;
            let Some(next) = decide(current, now)? else {
                return Ok(Outcome::Unchanged);
            };
            let (expect, generation) = match &record {
                Some(r) => (Expect::unchanged(r), r.generation),
                None => (Expect::Absent, StoredSession::new_generation()?),
            };
            let version = next.metadata.version;
            let stored = StoredSession {
                version,
                generation,
                expires_at: next.expires_at(self.ttl),
                doc: serde_json::to_string(&next).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            };
            match self.store.write(key, expect, &stored, now).await {
                Ok(()) if record.is_none() => return Ok(Outcome::Created { version }),
                Ok(()) => return Ok(Outcome::Updated { version }),
                Err(StoreError::Conflict) => back_off(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Contention)
    }
}

/// After losing a race: back off a little, more the more often it happens.
async fn back_off(attempt: usize) {
    if attempt > 2 {
        tokio::time::sleep(std::time::Duration::from_micros(50 * attempt.min(40) as u64)).await;
    } else {
        tokio::task::yield_now().await;
    }
}

/// The one field of a stored document that `/me` reads need.
#[derive(serde::Deserialize)]
struct Owner<'a> {
    #[serde(rename = "customerId", borrow, default)]
    customer_id: Option<std::borrow::Cow<'a, str>>,
}

fn decode(record: &StoredSession) -> Result<SessionContext, ServiceError> {
    serde_json::from_str(&record.doc).map_err(|e| StoreError::Corrupt(e.to_string()).into())
}

fn existing(current: Option<SessionContext>, caller: &Caller) -> Result<SessionContext, ServiceError> {
    let stored = current.ok_or(ServiceError::NotFound)?;
    match caller {
        Caller::Me { customer } if !rules::me_may_access(stored.customer_id.as_deref(), customer.as_deref()) => {
            Err(ServiceError::NotYourSession)
        }
        _ => Ok(stored),
    }
}

/// Whether `saas` speaks for `customer`: 401 when it is missing or invalid, 403 when it is
/// another customer's or another tenant's.
fn check_saas(saas: &SaasToken, customer: &str) -> Result<(), ServiceError> {
    match saas {
        SaasToken::Customer(c) if c == customer => Ok(()),
        SaasToken::Customer(_) | SaasToken::OtherTenant => Err(ServiceError::SaasForbidden),
        SaasToken::Missing | SaasToken::Invalid => Err(ServiceError::SaasUnauthenticated),
    }
}

fn check_expected(stored: &SessionContext, expected: Expected) -> Result<(), ServiceError> {
    let version = match expected {
        Expected::Any => return Ok(()),
        Expected::Body(v) | Expected::IfMatch(v) => v,
    };
    rules::check_version(stored, version).map_err(|m| ServiceError::VersionMismatch {
        current: m.current,
        expected,
    })
}
