//! The use cases of the API, each a loop of: load the session, apply a rule from `domain/`,
//! write the result only if nobody changed the session meanwhile, and try again if somebody
//! did. The loop is what makes attribute changes atomic without a version from the client,
//! and version-checked changes answer 409 instead of overwriting.

use std::sync::Arc;

use serde_json::Value;

use crate::clock::{Clock, Millis, parse_rfc3339};
use crate::domain::lifetime::{Lifetime, MeAccess, me_access};
use crate::domain::policy::{Footprint, PolicyError, TenantPolicies, TenantPolicy};
use crate::domain::{ContextPatch, PatchRequest, PutRequest, SessionContext, TextField, rules};
use crate::store::{CustomerKey, Expect, Page, SessionKey, SessionStore, StoreError, StoredSession};

/// How many times a change is retried after losing a race before the caller is told to retry.
const MAX_ATTEMPTS: usize = 1_000;

/// What a version-checked write expects of the stored session (however the client said it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Exactly this version.
    Version(u64),
    /// Any version, as long as the session exists.
    AnyVersion,
}

/// A `saas-token` as the HTTP layer found it, verified for the path's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaasToken {
    /// None was sent, or it does not verify, or it is an access token rather than a saas-token.
    Missing,
    /// A valid saas-token that names another tenant.
    OtherTenant,
    /// A valid token for this customer of the path's tenant.
    Customer(String),
}

/// A storefront caller, as its token says: its customer (`None` for an anonymous token), when
/// the token was issued (for login adoption), and the field values its claims carry (for a
/// session created on first use; already checked against the input rules).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shopper {
    pub customer: Option<String>,
    pub issued_at: Option<Millis>,
    pub defaults: Vec<(TextField, String)>,
}

/// Who is using a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A management token: any session of its tenant.
    Management,
    /// A customer or anonymous token: its own session only.
    Me(Shopper),
}

/// How sessions live, what they may hold and who may write what (per tenant), and what a
/// storefront's first use does. The default is the command line's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub tenants: TenantPolicies,
    /// A `/me` request (5–8) for a missing session creates it first.
    pub create_on_first_use: bool,
}

impl Policy {
    /// The same policy for every tenant.
    pub fn uniform(policy: TenantPolicy) -> Self {
        Policy {
            tenants: TenantPolicies::uniform(policy),
            create_on_first_use: false,
        }
    }

    /// The default policy for every tenant, but sessions live as `lifetime` says.
    pub fn with_lifetime(lifetime: Lifetime) -> Self {
        Policy::uniform(TenantPolicy {
            lifetime,
            ..TenantPolicy::default()
        })
    }
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
    VersionMismatch { current: u64 },
    #[error("saas-token missing or invalid")]
    SaasUnauthenticated,
    #[error("saas-token is for another customer")]
    SaasForbidden,
    #[error("the session belongs to another customer")]
    NotYourSession,
    #[error("the anonymous session was created after the customer's login")]
    CreatedAfterLogin,
    #[error("metadata.version is required to update a session")]
    VersionRequired,
    #[error("too many concurrent changes")]
    Contention,
    /// The tenant's policy refuses the change (413, 400 or 403).
    #[error("refused by the tenant's policy: {0:?}")]
    Policy(PolicyError),
    /// The store cannot be reached or is too busy now (503); the detail is for the log.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A stored record is corrupt or the store failed otherwise (500); the detail is for the log.
    #[error("the store failed: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(reason) => ServiceError::Unavailable(reason),
            // A conditional write that lost its race is retried by the use cases; one that
            // escapes them is contention.
            StoreError::Conflict => ServiceError::Contention,
            other @ (StoreError::Corrupt(_) | StoreError::Backend(_)) => ServiceError::Internal(other.to_string()),
        }
    }
}

/// A session as read: its JSON, exactly as stored and served, and its version (the ETag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub version: u64,
    pub doc: String,
}

impl From<StoredSession> for Snapshot {
    fn from(record: StoredSession) -> Self {
        Snapshot {
            version: record.version,
            doc: record.doc,
        }
    }
}

impl From<PolicyError> for ServiceError {
    fn from(err: PolicyError) -> Self {
        ServiceError::Policy(err)
    }
}

/// Which page of a list: numbered from 1, of `size` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub number: u64,
    pub size: u64,
}

/// One page of a customer's sessions, newest `modifiedAt` first, as the caller may see them,
/// and how many the customer has in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerPage {
    pub sessions: Vec<Snapshot>,
    pub total: u64,
}

/// The use cases, over any store.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    policy: Arc<Policy>,
    /// Writers of one session inside this instance take turns (see [`Sessions::update`]).
    turns: Arc<[tokio::sync::Mutex<()>]>,
}

/// How many locks the sessions' writers share (by a hash of the session): enough that two busy
/// sessions rarely share one.
const TURN_STRIPES: usize = 1_024;

impl Sessions {
    pub fn new(store: Arc<dyn SessionStore>, clock: Arc<dyn Clock>, policy: Policy) -> Self {
        Sessions {
            store,
            clock,
            policy: Arc::new(policy),
            turns: (0..TURN_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// The policy of `tenant`.
    fn policy_of(&self, tenant: &str) -> &TenantPolicy {
        self.policy.tenants.of(tenant)
    }

    /// Whether the store can take writes now (readiness).
    pub async fn ready(&self) -> Result<(), ServiceError> {
        Ok(self.store.ping().await?)
    }

    /// The current time as the use cases see it.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// A session as stored (its JSON and version), checked for the caller's access. A read is
    /// a use: it extends the session's idle timeout when less than half of it is left.
    pub async fn get(&self, key: &SessionKey, caller: &Caller) -> Result<Snapshot, ServiceError> {
        for attempt in 0..MAX_ATTEMPTS {
            let now = self.now();
            let record = self.store.load(key, now).await?;
            if let Caller::Me(shopper) = caller {
                let current = record.as_ref().map(decode).transpose()?;
                match self
                    .first_use(key, current.as_ref(), record.as_ref(), shopper, now)
                    .await?
                {
                    Step::Proceed => {}
                    // The read answers with what the adoption or creation wrote, at once: a
                    // login is one step, not an adoption and then a later read.
                    Step::Wrote(Some(written)) => return self.shopper_view(key, written.into()),
                    Step::Wrote(None) => {
                        back_off(attempt).await;
                        continue;
                    }
                }
            }
            let record = record.ok_or(ServiceError::NotFound)?;
            self.extend_if_due(key, &record, now).await;
            return match caller {
                Caller::Management => Ok(record.into()),
                Caller::Me(_) => self.shopper_view(key, record.into()),
            };
        }
        Err(ServiceError::Contention)
    }

    /// A session as a shopper may see it: without the tenant's hidden attributes (the version,
    /// hence the ETag, is the stored one). Without hidden attributes, the stored JSON as is.
    fn shopper_view(&self, key: &SessionKey, snapshot: Snapshot) -> Result<Snapshot, ServiceError> {
        let policy = self.policy_of(&key.tenant);
        if policy.hidden.is_empty() {
            return Ok(snapshot);
        }
        let mut session: SessionContext =
            serde_json::from_str(&snapshot.doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        policy.shopper_view(&mut session);
        Ok(Snapshot {
            version: snapshot.version,
            doc: serde_json::to_string(&session).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        })
    }

    /// `DELETE /me/context`: ends the caller's own session (a customer's only with its token).
    pub async fn delete_own(&self, key: &SessionKey, shopper: &Shopper) -> Result<(), ServiceError> {
        for attempt in 0..MAX_ATTEMPTS {
            let now = self.now();
            let record = self.store.load(key, now).await?.ok_or(ServiceError::NotFound)?;
            let owner = Owner::of(&record)?;
            let access = me_access(
                owner.customer.as_deref(),
                owner.created_at,
                shopper.customer.as_deref(),
                shopper.issued_at,
            );
            refuse(access)?;
            match self.store.delete(key, record.revision(), now).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict) => back_off(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Contention)
    }

    /// `PUT /context/{sessionId}`.
    pub async fn put(
        &self,
        key: &SessionKey,
        req: &PutRequest,
        expected: Option<Precondition>,
        upsert: bool,
        saas: &SaasToken,
    ) -> Result<Outcome, ServiceError> {
        self.update(key, None, |current, now| {
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
        shopper: &Shopper,
        req: &PatchRequest,
        expected: Option<Precondition>,
        upsert: bool,
    ) -> Result<Outcome, ServiceError> {
        let customer = shopper.customer.as_deref();
        if let Some(ContextPatch::Merge(patch)) = &req.context {
            let policy = self.policy_of(&key.tenant);
            for name in patch.keys() {
                policy.check_shopper_key(name)?;
            }
        }
        self.update(key, Some(shopper), |current, now| {
            match &current {
                Some(stored) => check_expected(stored, expected)?,
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
        if let Caller::Me(_) = caller {
            self.policy_of(&key.tenant).check_shopper_key(name)?;
        }
        self.update(key, shopper(caller), |current, now| {
            let stored = current.ok_or(ServiceError::NotFound)?;
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
        if let Caller::Me(_) = caller {
            self.policy_of(&key.tenant).check_shopper_key(name)?;
        }
        self.update(key, shopper(caller), |current, now| {
            let stored = current.ok_or(ServiceError::NotFound)?;
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
            if let Some(customer) = Owner::of(&record)?.customer.as_deref() {
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

    /// One page of the live sessions of `customer` of `tenant` (endpoints 11 and 13), newest
    /// `modifiedAt` first; a shopper (13) sees each without the tenant's hidden attributes.
    /// A list is not a use of the sessions listed: their expiry stays as it is.
    pub async fn list_customer(
        &self,
        tenant: &str,
        customer: &str,
        page: PageRequest,
        caller: &Caller,
    ) -> Result<CustomerPage, ServiceError> {
        let key = CustomerKey::new(tenant, customer);
        let offset = page
            .number
            .saturating_sub(1)
            .saturating_mul(page.size)
            .min(i64::MAX as u64);
        let found = self
            .store
            .list_customer_sessions(
                &key,
                Page {
                    offset,
                    limit: page.size,
                },
                self.now(),
            )
            .await?;
        let sessions = found
            .sessions
            .into_iter()
            .map(|(id, record)| match caller {
                Caller::Management => Ok(record.into()),
                Caller::Me(_) => self.shopper_view(&key.session(&id), record.into()),
            })
            .collect::<Result<_, _>>()?;
        Ok(CustomerPage {
            sessions,
            total: found.total,
        })
    }

    /// Ends every session of `customer` of `tenant` but `except` (endpoints 12 and 14): signs
    /// the customer out everywhere, or erases what is held about them. Returns how many live
    /// sessions went. Every session that was the customer's when the call began is gone when
    /// it answers; a failure midway leaves the rest for a retry, which removes them.
    pub async fn delete_customer(
        &self,
        tenant: &str,
        customer: &str,
        except: Option<&str>,
    ) -> Result<u64, ServiceError> {
        let key = CustomerKey::new(tenant, customer);
        let removed = self.store.delete_customer_sessions(&key, except, self.now()).await?;
        Ok(removed.len() as u64)
    }

    /// Removes expired sessions in batches of `batch`; returns how many went.
    pub async fn sweep(&self, batch: usize) -> Result<usize, ServiceError> {
        let mut total = 0;
        loop {
            let removed = self.store.sweep_expired(self.now(), batch).await?;
            total += removed;
            if removed < batch {
                return Ok(total);
            }
        }
    }

    /// The optimistic loop shared by every update. `decide` gets the stored session (if any)
    /// and returns the next one, or `None` when nothing is to change. For a `/me` caller
    /// (`shopper`), a login adopts the session and a first use creates it before `decide` runs,
    /// each as a write of its own. Every change is then held to the tenant's policy before it
    /// is written: what a shopper may change, the allowed values, and the size limits.
    ///
    /// Writers of one session inside this instance take turns (a lock per stripe of sessions,
    /// fair, held from the load to the write): 64 clients changing one session no longer all
    /// load the same version, race, lose and retry against the store (a retry storm); each
    /// writes once. The store's conditional write still decides between instances.
    async fn update<F>(
        &self,
        key: &SessionKey,
        shopper: Option<&Shopper>,
        mut decide: F,
    ) -> Result<Outcome, ServiceError>
    where
        F: FnMut(Option<SessionContext>, Millis) -> Result<Option<SessionContext>, ServiceError>,
    {
        let policy = self.policy_of(&key.tenant);
        // The rules below look at the session before the change only when the policy has
        // something to compare; else they need nothing but its size.
        let compares = !policy.allowed.is_empty() || (shopper.is_some() && policy.guards_attributes());
        let _turn = self.turns[stripe(key)].lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let now = self.now();
            let record = self.store.load(key, now).await?;
            let current = record.as_ref().map(decode).transpose()?;
            if let Some(shopper) = shopper
                && let Step::Wrote(written) = self
                    .first_use(key, current.as_ref(), record.as_ref(), shopper, now)
                    .await?
            {
                if written.is_none() {
                    back_off(attempt).await;
                }
                continue;
            }
            let footprint = record.as_ref().zip(current.as_ref()).map(|(r, c)| Footprint {
                bytes: r.doc.len(),
                attributes: c.context.len(),
            });
            let before = if compares { current.clone() } else { None };
            let Some(mut next) = decide(current, now)? else {
                if let Some(record) = &record {
                    self.extend_if_due(key, record, now).await;
                }
                return Ok(Outcome::Unchanged);
            };
            if shopper.is_some() {
                policy.keep_hidden(before.as_ref(), &mut next);
                policy.check_shopper_change(before.as_ref(), &next)?;
            }
            policy
                .allowed
                .check(before.as_ref(), &next)
                .map_err(PolicyError::NotAllowed)?;
            let (expect, generation) = match &record {
                Some(r) => (Expect::unchanged(r), r.generation),
                None => (Expect::Absent, StoredSession::new_generation()?),
            };
            let version = next.metadata.version;
            let written = self.record(key, &next, generation, now)?;
            let limits = policy.check_limits(
                footprint,
                Footprint {
                    bytes: written.doc.len(),
                    attributes: next.context.len(),
                },
            );
            if let Err(refusal) = limits {
                // A login adopting the session (PUT with the customer's saas-token) is never
                // refused for size; decoded again only on this rare path.
                let before = record.as_ref().map(decode).transpose()?;
                if !before.is_some_and(|before| rules::only_adopts(&before, &next)) {
                    return Err(refusal.into());
                }
            }
            match self.store.write(key, expect, &written, now).await {
                Ok(()) if record.is_none() => return Ok(Outcome::Created { version }),
                Ok(()) => return Ok(Outcome::Updated { version }),
                Err(StoreError::Conflict) => back_off(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Contention)
    }

    /// What a `/me` caller's request does before its own change: nothing (`Proceed`), or a
    /// write of its own (`Wrote`, with the record written, or `None` when it lost a race; the
    /// caller loads again): a login adopting an anonymous session made before it, or, with
    /// `create_on_first_use`, creating a missing session.
    async fn first_use(
        &self,
        key: &SessionKey,
        current: Option<&SessionContext>,
        record: Option<&StoredSession>,
        shopper: &Shopper,
        now: Millis,
    ) -> Result<Step, ServiceError> {
        let (next, expect, generation) = match (current, record) {
            (Some(stored), Some(record)) => {
                let access = me_access(
                    stored.customer_id.as_deref(),
                    stored.metadata.created_at,
                    shopper.customer.as_deref(),
                    shopper.issued_at,
                );
                if refuse(access)? == MeAccess::Allowed {
                    return Ok(Step::Proceed);
                }
                let customer = shopper.customer.as_deref().unwrap_or_default();
                let adopted = rules::adopt(stored.clone(), customer, now);
                (adopted, Expect::unchanged(record), record.generation)
            }
            _ if self.policy.create_on_first_use => {
                // Claim values outside the tenant's allowed lists are left out, as invalid
                // ones are.
                let allowed = &self.policy_of(&key.tenant).allowed;
                let defaults: Vec<_> = shopper
                    .defaults
                    .iter()
                    .filter(|(field, value)| allowed.allows(*field, value))
                    .cloned()
                    .collect();
                let created = rules::create_for_shopper(&key.session_id, shopper.customer.as_deref(), &defaults, now);
                (created, Expect::Absent, StoredSession::new_generation()?)
            }
            _ => return Ok(Step::Proceed),
        };
        let record = self.record(key, &next, generation, now)?;
        match self.store.write(key, expect, &record, now).await {
            Ok(()) => Ok(Step::Wrote(Some(record))),
            Err(StoreError::Conflict) => Ok(Step::Wrote(None)),
            Err(e) => Err(e.into()),
        }
    }

    /// The record that stores `session` (under `key`), used at `now`.
    fn record(
        &self,
        key: &SessionKey,
        session: &SessionContext,
        generation: i64,
        now: Millis,
    ) -> Result<StoredSession, ServiceError> {
        Ok(StoredSession {
            version: session.metadata.version,
            generation,
            expires_at: self.policy_of(&key.tenant).lifetime.expires_at(
                session.customer_id.is_some(),
                session.metadata.created_at,
                now,
            ),
            doc: serde_json::to_string(session).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            customer: session.customer_id.clone(),
            modified_at: session.metadata.modified_at,
        })
    }

    /// A use that changed nothing still counts: move the expiry when less than half of the
    /// idle timeout is left. Not a change (version, document and ETag stay); a record changed
    /// meanwhile got a fresh expiry from that change, so losing a race here is fine, and so is
    /// a store that cannot extend right now (the use itself succeeded).
    async fn extend_if_due(&self, key: &SessionKey, record: &StoredSession, now: Millis) {
        let lifetime = &self.policy_of(&key.tenant).lifetime;
        let (Some(current), Some(longest)) = (record.expires_at, lifetime.longest_idle()) else {
            return;
        };
        if current.saturating_sub(now).saturating_mul(2) >= longest {
            return; // far from due, whoever owns it: no need to look inside
        }
        let Ok(owner) = Owner::of(record) else { return };
        let Some(next) = lifetime.extension(owner.customer.is_some(), owner.created_at, current, now) else {
            return;
        };
        match self.store.extend(key, record.revision(), Some(next), now).await {
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(e) => tracing::debug!(error = %e, "extending a session's expiry failed"),
        }
    }
}

/// The stripe of writer turns `key` belongs to.
fn stripe(key: &SessionKey) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % TURN_STRIPES as u64) as usize
}

/// What `Sessions::first_use` did.
enum Step {
    Proceed,
    /// A write of its own: the record written, or `None` when another writer came first.
    Wrote(Option<StoredSession>),
}

fn shopper(caller: &Caller) -> Option<&Shopper> {
    match caller {
        Caller::Management => None,
        Caller::Me(shopper) => Some(shopper),
    }
}

/// The access a `/me` caller has, or the refusal.
fn refuse(access: MeAccess) -> Result<MeAccess, ServiceError> {
    match access {
        MeAccess::Forbidden => Err(ServiceError::NotYourSession),
        MeAccess::CreatedAfterLogin => Err(ServiceError::CreatedAfterLogin),
        other => Ok(other),
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

/// Who owns a stored session and when it was made: what access checks and expiry need, read
/// without decoding the whole document.
struct Owner {
    customer: Option<String>,
    created_at: Millis,
}

impl Owner {
    fn of(record: &StoredSession) -> Result<Owner, StoreError> {
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(rename = "customerId", borrow, default)]
            customer_id: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            metadata: HeadMetadata<'a>,
        }
        #[derive(serde::Deserialize)]
        struct HeadMetadata<'a> {
            #[serde(rename = "createdAt", borrow)]
            created_at: std::borrow::Cow<'a, str>,
        }
        let head: Head = serde_json::from_str(&record.doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let created_at = parse_rfc3339(&head.metadata.created_at)
            .ok_or_else(|| StoreError::Corrupt("createdAt is not a timestamp".into()))?;
        Ok(Owner {
            customer: head.customer_id.map(std::borrow::Cow::into_owned),
            created_at,
        })
    }
}

fn decode(record: &StoredSession) -> Result<SessionContext, ServiceError> {
    serde_json::from_str(&record.doc).map_err(|e| StoreError::Corrupt(e.to_string()).into())
}

/// Whether `saas` speaks for `customer`: 401 when it is missing or invalid, 403 when it is
/// another customer's or another tenant's.
fn check_saas(saas: &SaasToken, customer: &str) -> Result<(), ServiceError> {
    match saas {
        SaasToken::Customer(c) if c == customer => Ok(()),
        SaasToken::Customer(_) | SaasToken::OtherTenant => Err(ServiceError::SaasForbidden),
        SaasToken::Missing => Err(ServiceError::SaasUnauthenticated),
    }
}

fn check_expected(stored: &SessionContext, expected: Option<Precondition>) -> Result<(), ServiceError> {
    match expected.ok_or(ServiceError::VersionRequired)? {
        Precondition::AnyVersion => Ok(()),
        Precondition::Version(version) => {
            rules::check_version(stored, version).map_err(|m| ServiceError::VersionMismatch { current: m.current })
        }
    }
}
