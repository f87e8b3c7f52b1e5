//! `session-context seed`: fills a store with generated sessions of a chosen size, straight
//! through the store (no HTTP), for benchmarks and load tests.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::clock::{Clock, SystemClock};
use crate::domain::SessionContext;
use crate::store::{self, Expect, SessionKey, SessionStore, StoreError, StoreUrl, StoredSession};

/// How many writes are in flight at once while seeding.
const IN_FLIGHT: usize = 64;

/// A session like a storefront's, padded with attributes to about `bytes` of JSON.
pub fn sample_session(session_id: &str, bytes: usize, now: i64) -> SessionContext {
    let mut session = SessionContext::new(session_id, now);
    session.site_code = Some("main".into());
    session.currency = Some("EUR".into());
    session.target_location = Some("DE".into());
    session.language = Some("de".into());
    session.cart_id = Some(format!("cart-{session_id}"));
    session
        .context
        .insert("legalEntityId".into(), json!("68cd05d71aeab17fc69f81b7"));
    let mut n = 0;
    while serde_json::to_string(&session).map_or(bytes, |s| s.len()) < bytes {
        session
            .context
            .insert(format!("attribute{n}"), Value::String("x".repeat(48)));
        n += 1;
    }
    session
}

/// Writes sessions `<prefix>1` to `<prefix><count>` of `tenant`, replacing none that exist,
/// all of `customer` when one is given (else anonymous, never expiring). Returns how many were
/// written (existing ones are left alone).
pub async fn seed(
    url: &StoreUrl,
    tenant: &str,
    prefix: &str,
    count: u64,
    bytes: usize,
    customer: Option<&str>,
) -> Result<u64, String> {
    let store = store::open(url)
        .await
        .map_err(|e| format!("cannot open the store {url}: {e}"))?;
    let now = SystemClock.now();
    let mut tasks = JoinSet::new();
    let mut written = 0;
    for i in 1..=count {
        if tasks.len() >= IN_FLIGHT {
            written += joined(tasks.join_next().await)?;
        }
        let (store, tenant, id) = (Arc::clone(&store), tenant.to_owned(), format!("{prefix}{i}"));
        let customer = customer.map(str::to_owned);
        // Distinct modification times, so that a customer's list has one order.
        let modified = now + i64::try_from(i).unwrap_or(i64::MAX);
        tasks.spawn(async move { write_one(store.as_ref(), &tenant, &id, bytes, customer, modified).await });
    }
    while let Some(result) = tasks.join_next().await {
        written += joined(Some(result))?;
    }
    Ok(written)
}

async fn write_one(
    store: &dyn SessionStore,
    tenant: &str,
    id: &str,
    bytes: usize,
    customer: Option<String>,
    now: i64,
) -> Result<u64, String> {
    let mut session = sample_session(id, bytes, now);
    session.customer_id = customer;
    let record = StoredSession {
        version: session.metadata.version,
        generation: StoredSession::new_generation().map_err(|e| e.to_string())?,
        expires_at: None,
        doc: serde_json::to_string(&session).map_err(|e| e.to_string())?,
        customer: session.customer_id.clone(),
        modified_at: session.metadata.modified_at,
    };
    match store
        .write(&SessionKey::new(tenant, id), Expect::Absent, &record, now)
        .await
    {
        Ok(()) => Ok(1),
        Err(StoreError::Conflict) => Ok(0),
        Err(e) => Err(format!("seeding {id} failed: {e}")),
    }
}

fn joined(result: Option<Result<Result<u64, String>, tokio::task::JoinError>>) -> Result<u64, String> {
    match result {
        Some(Ok(outcome)) => outcome,
        Some(Err(e)) => Err(format!("a seeding task failed: {e}")),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_sessions_have_about_the_asked_size() {
        for bytes in [300, 1024, 4096] {
            let len = serde_json::to_string(&sample_session("s1", bytes, 0)).unwrap().len();
            assert!(len >= bytes && len < bytes + 80, "{bytes}: {len}");
        }
    }

    #[tokio::test]
    async fn seeding_writes_each_session_once() {
        let dir = tempfile::tempdir().unwrap();
        let url: StoreUrl = format!("sqlite://{}", dir.path().join("s.db").display())
            .parse()
            .unwrap();
        assert_eq!(seed(&url, "bench", "b", 100, 500, None).await, Ok(100));
        assert_eq!(seed(&url, "bench", "b", 120, 500, None).await, Ok(20));
    }
}
