//! `session-context sessions list|delete`: a customer's sessions straight on a store, for an
//! operator (an erasure request, a customer to sign out everywhere) also when the service is
//! down. The same use cases and input rules as endpoints 11 and 12, without HTTP.

use std::io::Write;
use std::sync::Arc;

use crate::clock::SystemClock;
use crate::domain::{TextField, validate};
use crate::service::{Caller, PageRequest, Policy, Sessions};
use crate::store::{self, StoreUrl};

/// Sessions fetched per page while listing.
const PAGE_SIZE: u64 = 1_000;

/// The use cases over the store `url` names, after checking the tenant and customer as the
/// API does.
async fn open(url: &StoreUrl, tenant: &str, customer: &str, destinations: u16) -> Result<Sessions, String> {
    validate::tenant(tenant).map_err(|e| format!("--tenant: {}", e.message))?;
    validate::text_field(TextField::CustomerId, customer).map_err(|e| format!("--customer: {}", e.message))?;
    let store = store::open(url)
        .await
        .map_err(|e| format!("cannot open the store {url}: {e}"))?;
    store.set_event_destinations(destinations);
    Ok(Sessions::new(store, Arc::new(SystemClock), Policy::default()))
}

/// Writes every live session of `customer` to `out`, one JSON object per line, newest change
/// first, page by page (never all at once in memory). Returns how many were written.
pub async fn list(url: &StoreUrl, tenant: &str, customer: &str, out: &mut impl Write) -> Result<u64, String> {
    let sessions = open(url, tenant, customer, 0).await?;
    let mut written = 0;
    for number in 1.. {
        let page = sessions
            .list_customer(
                tenant,
                customer,
                PageRequest {
                    number,
                    size: PAGE_SIZE,
                },
                &Caller::Management,
            )
            .await
            .map_err(|e| format!("listing failed: {e}"))?;
        for session in &page.sessions {
            writeln!(out, "{}", session.doc).map_err(|e| format!("cannot write: {e}"))?;
        }
        written += page.sessions.len() as u64;
        if (page.sessions.len() as u64) < PAGE_SIZE {
            break;
        }
    }
    Ok(written)
}

/// Ends every session of `customer` but `except`; returns how many went. With `destinations`
/// (the number of the service's webhook URLs), each ending is recorded as a `deleted` event
/// in the store's outbox, for the service to deliver.
pub async fn delete(
    url: &StoreUrl,
    tenant: &str,
    customer: &str,
    except: Option<&str>,
    destinations: u16,
) -> Result<u64, String> {
    if let Some(id) = except {
        validate::session_id(id).map_err(|e| format!("--except: {}", e.message))?;
    }
    let sessions = open(url, tenant, customer, destinations).await?;
    sessions
        .delete_customer(tenant, customer, except)
        .await
        .map_err(|e| format!("deleting failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::seed;

    #[tokio::test]
    async fn lists_and_deletes_a_customers_sessions_straight_on_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let url: StoreUrl = format!("sqlite://{}", dir.path().join("s.db").display())
            .parse()
            .unwrap();
        seed(&url, "shop", "c-", 1_205, 300, Some("C1")).await.unwrap();
        seed(&url, "shop", "d-", 3, 300, Some("C2")).await.unwrap();
        seed(&url, "other", "c-", 2, 300, Some("C1")).await.unwrap();
        let mut out = Vec::new();
        assert_eq!(list(&url, "shop", "C1", &mut out).await, Ok(1_205));
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1_205, "every page, each once");
        assert_eq!(lines[0]["sessionId"], "c-1205", "newest first");
        assert_eq!(lines[1_204]["sessionId"], "c-1");
        // With the service's one webhook URL, each ending is recorded for it to deliver.
        assert_eq!(delete(&url, "shop", "C1", Some("c-7"), 1).await, Ok(1_204));
        let store = store::open(&url).await.unwrap();
        assert_eq!(store.outbox_stats().await.unwrap().pending, 1_204);
        let mut out = Vec::new();
        assert_eq!(list(&url, "shop", "C1", &mut out).await, Ok(1));
        assert_eq!(
            list(&url, "shop", "C2", &mut Vec::new()).await,
            Ok(3),
            "another customer"
        );
        assert_eq!(
            list(&url, "other", "C1", &mut Vec::new()).await,
            Ok(2),
            "another tenant"
        );
        assert!(
            list(&url, "Shop", "C1", &mut Vec::new())
                .await
                .unwrap_err()
                .contains("--tenant")
        );
        assert!(
            delete(&url, "shop", "", None, 0)
                .await
                .unwrap_err()
                .contains("--customer")
        );
        assert!(
            delete(&url, "shop", "C1", Some("a b"), 0)
                .await
                .unwrap_err()
                .contains("--except")
        );
    }
}
