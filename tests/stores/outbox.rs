//! The outbox contract, written once and run on every store: with events on, every change
//! records its event in the same atomic step (one entry per destination), nothing else does,
//! and the claim rules give each destination a session's events in order, one at a time, to
//! one dispatcher at a time. See `session_context::store::outbox`.

use std::sync::Arc;

use crate::common::{Backend, open_store};
use session_context::store::outbox::{EventKind, PendingEvent, Settlement};
use session_context::store::{CustomerKey, Expect, SessionKey, SessionStore, StoreError, StoredSession};

const NOW: i64 = 1_000_000;
const LEASE: i64 = 30_000;
const GENERATION: i64 = 11;

fn key(id: &str) -> SessionKey {
    SessionKey::new("shop", id)
}

fn record(version: u64, customer: Option<&str>, expires_at: Option<i64>) -> StoredSession {
    StoredSession {
        version,
        generation: GENERATION,
        expires_at,
        doc: format!(r#"{{"v":{version}}}"#),
        customer: customer.map(str::to_owned),
        modified_at: NOW,
    }
}

fn current(version: u64) -> Expect {
    Expect::Current {
        version,
        generation: GENERATION,
    }
}

async fn events_store(backend: Backend, destinations: u16) -> (Arc<dyn SessionStore>, Option<tempfile::TempDir>) {
    let (store, dir) = open_store(backend).await;
    store.set_event_destinations(destinations);
    (store, dir)
}

/// Claims and settles everything due at `now`, in claim order, until nothing is left: each
/// destination's events, as a dispatcher would deliver them.
async fn drain(store: &dyn SessionStore, now: i64) -> Vec<PendingEvent> {
    let mut all = Vec::new();
    loop {
        let claimed = store.claim_events("drain", 100, LEASE, now).await.unwrap();
        if claimed.is_empty() {
            return all;
        }
        for event in &claimed {
            store.settle_event(&event.entry, &Settlement::Done).await.unwrap();
        }
        all.extend(claimed);
    }
}

/// (destination, session, kind, version) of each event, in order.
fn summary(events: &[PendingEvent]) -> Vec<(u16, String, EventKind, u64)> {
    events
        .iter()
        .map(|e| (e.destination, e.key.session_id.clone(), e.event.kind, e.event.version))
        .collect()
}

async fn without_destinations_nothing_is_recorded(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    store
        .write(&key("s"), Expect::Absent, &record(1, None, None), NOW)
        .await
        .unwrap();
    store
        .write(&key("s"), current(1), &record(2, None, None), NOW)
        .await
        .unwrap();
    store
        .delete(&key("s"), record(2, None, None).revision(), NOW)
        .await
        .unwrap();
    assert!(store.claim_events("d", 100, LEASE, NOW).await.unwrap().is_empty());
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
}

async fn every_change_records_its_event_for_every_destination(backend: Backend) {
    let (store, _dir) = events_store(backend, 2).await;
    let created = record(1, Some("C1"), None);
    store.write(&key("s"), Expect::Absent, &created, NOW).await.unwrap();
    store
        .write(&key("s"), current(1), &record(2, Some("C1"), None), NOW + 1)
        .await
        .unwrap();
    // Refused steps and expiry moves record nothing.
    let refused = store
        .write(&key("s"), current(1), &record(2, None, None), NOW + 2)
        .await;
    assert!(matches!(refused, Err(StoreError::Conflict)), "{refused:?}");
    store
        .extend(&key("s"), record(2, None, None).revision(), Some(NOW + 99_000), NOW + 3)
        .await
        .unwrap();
    store
        .delete(&key("s"), record(2, None, None).revision(), NOW + 4)
        .await
        .unwrap();
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(stats.pending, 6, "three changes, two destinations");
    assert_eq!(stats.oldest_recorded_at, Some(NOW));
    let events = drain(store.as_ref(), NOW + 5).await;
    let mut by_destination = summary(&events);
    by_destination.sort_by_key(|(d, ..)| *d);
    assert_eq!(
        by_destination,
        [
            (0, "s".into(), EventKind::Created, 1),
            (0, "s".into(), EventKind::Updated, 2),
            (0, "s".into(), EventKind::Deleted, 2),
            (1, "s".into(), EventKind::Created, 1),
            (1, "s".into(), EventKind::Updated, 2),
            (1, "s".into(), EventKind::Deleted, 2),
        ]
    );
    // The same event (one id) for both destinations; the whole document on created/updated,
    // the customer on every one, the time of the change.
    for kind in [EventKind::Created, EventKind::Updated, EventKind::Deleted] {
        let of_kind: Vec<_> = events.iter().filter(|e| e.event.kind == kind).collect();
        assert_eq!(of_kind.len(), 2);
        assert_eq!(of_kind[0].event, of_kind[1].event);
        assert_eq!(of_kind[0].event.customer.as_deref(), Some("C1"));
        assert_eq!(of_kind[0].key, key("s"));
    }
    let created_event = &events
        .iter()
        .find(|e| e.event.kind == EventKind::Created)
        .unwrap()
        .event;
    assert_eq!(created_event.session.as_deref(), Some(created.doc.as_str()));
    assert_eq!(created_event.time, NOW);
    let deleted = &events
        .iter()
        .find(|e| e.event.kind == EventKind::Deleted)
        .unwrap()
        .event;
    assert_eq!((deleted.session.as_deref(), deleted.time), (None, NOW + 4));
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e.event.id.clone()).collect();
    assert_eq!(ids.len(), 3, "one id per change");
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
}

async fn expiry_records_expired_events(backend: Backend) {
    let (store, _dir) = events_store(backend, 1).await;
    // Swept: expired, at its expiry time, with its last version.
    store
        .write(&key("a"), Expect::Absent, &record(1, Some("C1"), Some(NOW + 10)), NOW)
        .await
        .unwrap();
    // Created again over an expired record: first its expired, then the new life's created.
    store
        .write(&key("b"), Expect::Absent, &record(1, None, Some(NOW + 10)), NOW)
        .await
        .unwrap();
    store
        .write(&key("b"), current(1), &record(2, None, Some(NOW + 10)), NOW + 1)
        .await
        .unwrap();
    drain(store.as_ref(), NOW + 1).await;
    let later = NOW + 20;
    store
        .write(&key("b"), Expect::Absent, &record(1, None, None), later)
        .await
        .unwrap();
    let mut swept = 0;
    for _ in 0..20 {
        swept += store.sweep_expired(later, 100).await.unwrap();
        let pending = store.outbox_stats().await.unwrap().pending;
        if pending >= 3 {
            break;
        }
        // Stores that expire records by themselves may take a moment to notice.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let events = drain(store.as_ref(), later).await;
    let a: Vec<_> = events.iter().filter(|e| e.key == key("a")).collect();
    assert_eq!(a.len(), 1, "{events:?} (swept {swept})");
    assert_eq!(
        (a[0].event.kind, a[0].event.version, a[0].event.time),
        (EventKind::Expired, 1, NOW + 10)
    );
    assert_eq!(a[0].event.customer.as_deref(), Some("C1"));
    let b: Vec<_> = events
        .iter()
        .filter(|e| e.key == key("b"))
        .map(|e| (e.event.kind, e.event.version))
        .collect();
    assert_eq!(
        b,
        [(EventKind::Expired, 2), (EventKind::Created, 1)],
        "the end before the new life"
    );
}

async fn a_delete_by_customer_records_a_deleted_event_per_session(backend: Backend) {
    let (store, _dir) = events_store(backend, 1).await;
    for id in ["c1", "c2", "c3"] {
        store
            .write(&key(id), Expect::Absent, &record(1, Some("C"), None), NOW)
            .await
            .unwrap();
    }
    store
        .write(&key("d1"), Expect::Absent, &record(1, Some("D"), None), NOW)
        .await
        .unwrap();
    drain(store.as_ref(), NOW).await;
    let removed = store
        .delete_customer_sessions(&CustomerKey::new("shop", "C"), Some("c2"), NOW + 1)
        .await
        .unwrap();
    assert_eq!(removed.len(), 2);
    let mut events = summary(&drain(store.as_ref(), NOW + 1).await);
    events.sort();
    assert_eq!(
        events,
        [
            (0, "c1".into(), EventKind::Deleted, 1),
            (0, "c3".into(), EventKind::Deleted, 1)
        ]
    );
}

async fn claims_give_each_destination_a_sessions_events_in_order_to_one_owner(backend: Backend) {
    let (store, _dir) = events_store(backend, 1).await;
    store
        .write(&key("s1"), Expect::Absent, &record(1, None, None), NOW)
        .await
        .unwrap();
    for v in 2..=3 {
        store
            .write(&key("s1"), current(v - 1), &record(v, None, None), NOW)
            .await
            .unwrap();
    }
    store
        .write(&key("s2"), Expect::Absent, &record(1, None, None), NOW)
        .await
        .unwrap();
    // Only the oldest entry of each session may go.
    let first = store.claim_events("a", 100, LEASE, NOW).await.unwrap();
    let mut heads = summary(&first);
    heads.sort();
    assert_eq!(
        heads,
        [
            (0, "s1".into(), EventKind::Created, 1),
            (0, "s2".into(), EventKind::Created, 1)
        ]
    );
    // Another owner gets nothing while the claims hold, nor the next of s1.
    assert!(store.claim_events("b", 100, LEASE, NOW + 1).await.unwrap().is_empty());
    // A failure: retry later, counted; not before its time.
    let s1 = first.iter().find(|e| e.key == key("s1")).unwrap();
    store
        .settle_event(
            &s1.entry,
            &Settlement::Retry {
                next_attempt_at: NOW + 500,
            },
        )
        .await
        .unwrap();
    let s2 = first.iter().find(|e| e.key == key("s2")).unwrap();
    store.settle_event(&s2.entry, &Settlement::Done).await.unwrap();
    assert!(store.claim_events("b", 100, LEASE, NOW + 499).await.unwrap().is_empty());
    let again = store.claim_events("b", 100, LEASE, NOW + 500).await.unwrap();
    assert_eq!(summary(&again), [(0, "s1".into(), EventKind::Created, 1)]);
    assert_eq!(again[0].event.id, s1.event.id, "a redelivery repeats the id");
    assert_eq!(again[0].attempts, 1);
    // A claim that runs out (its owner died) is taken over, with the same event.
    let taken = store
        .claim_events("c", 100, LEASE, NOW + 500 + LEASE + 1)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].event.id, s1.event.id);
    store.settle_event(&taken[0].entry, &Settlement::Done).await.unwrap();
    // Settling an entry twice (the first owner comes back late) is no error.
    store.settle_event(&again[0].entry, &Settlement::Done).await.unwrap();
    let rest = summary(&drain(store.as_ref(), NOW + 500 + LEASE + 2).await);
    assert_eq!(
        rest,
        [
            (0, "s1".into(), EventKind::Updated, 2),
            (0, "s1".into(), EventKind::Updated, 3)
        ]
    );
}

/// Concurrent writers on one session: exactly one event per acknowledged change, versions in
/// order without gaps, whatever interleaving the store saw.
async fn concurrent_changes_each_record_exactly_one_event(backend: Backend) {
    let (store, _dir) = events_store(backend, 1).await;
    store
        .write(&key("hot"), Expect::Absent, &record(1, None, None), NOW)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let mut done = 0;
            while done < 15 {
                let Some(current_record) = store.load(&key("hot"), NOW).await.unwrap() else {
                    panic!("the session went away")
                };
                let next = record(current_record.version + 1, None, None);
                match store
                    .write(&key("hot"), current(current_record.version), &next, NOW)
                    .await
                {
                    Ok(()) => done += 1,
                    Err(StoreError::Conflict) => tokio::task::yield_now().await,
                    Err(e) => panic!("{e}"),
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let versions: Vec<u64> = drain(store.as_ref(), NOW)
        .await
        .iter()
        .map(|e| e.event.version)
        .collect();
    assert_eq!(versions, (1..=61).collect::<Vec<_>>());
}

crate::on_every_backend!(
    without_destinations_nothing_is_recorded,
    every_change_records_its_event_for_every_destination,
    expiry_records_expired_events,
    a_delete_by_customer_records_a_deleted_event_per_session,
    claims_give_each_destination_a_sessions_events_in_order_to_one_owner,
    concurrent_changes_each_record_exactly_one_event,
);
