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
    // Given back untried: offered again at its time, the attempts as they were.
    store
        .settle_event(
            &again[0].entry,
            &Settlement::Release {
                next_attempt_at: NOW + 500,
            },
        )
        .await
        .unwrap();
    let again = store.claim_events("b", 100, LEASE, NOW + 500).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 1), "{again:?}");
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

/// The entries behind one that waits for a retry (recorded before the failure or while it
/// waits) go right after it, at its time, and other sessions do not wait for it.
async fn entries_behind_a_retry_go_right_after_it(backend: Backend) {
    let (store, _dir) = events_store(backend, 1).await;
    store
        .write(&key("s1"), Expect::Absent, &record(1, None, None), NOW)
        .await
        .unwrap();
    store
        .write(&key("s1"), current(1), &record(2, None, None), NOW)
        .await
        .unwrap();
    let first = store.claim_events("a", 100, LEASE, NOW).await.unwrap();
    assert_eq!(summary(&first), [(0, "s1".into(), EventKind::Created, 1)]);
    let retry_at = NOW + 500;
    store
        .settle_event(
            &first[0].entry,
            &Settlement::Retry {
                next_attempt_at: retry_at,
            },
        )
        .await
        .unwrap();
    store
        .write(&key("s1"), current(2), &record(3, None, None), NOW + 10)
        .await
        .unwrap();
    store
        .write(&key("s2"), Expect::Absent, &record(1, None, None), NOW + 10)
        .await
        .unwrap();
    let meanwhile = store.claim_events("a", 100, LEASE, NOW + 10).await.unwrap();
    assert_eq!(summary(&meanwhile), [(0, "s2".into(), EventKind::Created, 1)]);
    store
        .settle_event(&meanwhile[0].entry, &Settlement::Done)
        .await
        .unwrap();
    let mut s1 = Vec::new();
    for _ in 0..3 {
        let claimed = store.claim_events("a", 100, LEASE, retry_at).await.unwrap();
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        store.settle_event(&claimed[0].entry, &Settlement::Done).await.unwrap();
        s1.push((claimed[0].event.version, claimed[0].attempts));
    }
    assert_eq!(s1, [(1, 1), (2, 0), (3, 0)], "(version, attempts) of s1's events");
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
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

/// A random number below `n`.
fn below(n: u64) -> u64 {
    getrandom::u64().expect("randomness") % n
}

/// What a store acknowledged, per session: `(kind, version)` in no particular order.
type Acknowledged = std::collections::HashMap<String, Vec<(EventKind, u64)>>;

/// Checks one session's events, in the order a destination gets them, against what the store
/// acknowledged: exactly one event per acknowledged change, and a history that makes sense
/// (each life starts at `created` 1, counts up by one per `updated`, and ends with one
/// `deleted` or `expired` at its last version). Returns the version the session is left at.
fn check_history(session: &str, events: &[(EventKind, u64)], acknowledged: &[(EventKind, u64)]) -> Option<u64> {
    let mut state: Option<u64> = None;
    for (i, &(kind, version)) in events.iter().enumerate() {
        state = match (kind, state) {
            (EventKind::Created, None) if version == 1 => Some(1),
            (EventKind::Updated, Some(v)) if version == v + 1 => Some(version),
            (EventKind::Deleted | EventKind::Expired, Some(v)) if version == v => None,
            _ => panic!("{session}: event {i} {kind:?} {version} after {state:?}: {events:?}"),
        };
    }
    let mut got = events.to_vec();
    let mut want = acknowledged.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{session}: one event per acknowledged change");
    state
}

/// A record of a life of its own (a fresh generation), as the service writes them.
fn life(version: u64, generation: i64, customer: Option<&str>, expires_at: Option<i64>) -> StoredSession {
    StoredSession {
        generation,
        ..record(version, customer, expires_at)
    }
}

/// Concurrent creations, updates, deletes and deletes by customer on a few sessions: every
/// acknowledged change has exactly one event, and each session's events tell a consistent
/// history in order, whatever the interleaving (on PostgreSQL, each change and its rows are one
/// statement under the session's row lock; on SQLite, one job of the writer).
async fn concurrent_lifecycles_record_a_consistent_history(backend: Backend) {
    let (store, _dir) = events_store(backend, 1).await;
    let sessions = ["k0", "k1", "k2"];
    let acknowledged = Arc::new(std::sync::Mutex::new(Acknowledged::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let store = Arc::clone(&store);
        let acknowledged = Arc::clone(&acknowledged);
        tasks.spawn(async move {
            let ack = |id: &str, kind, version| {
                acknowledged
                    .lock()
                    .unwrap()
                    .entry(id.to_owned())
                    .or_default()
                    .push((kind, version));
            };
            for _ in 0..25 {
                let id = sessions[below(3) as usize];
                let outcome = match store.load(&key(id), NOW).await.unwrap() {
                    None => {
                        let generation = i64::try_from(below(1 << 40)).unwrap();
                        let created = life(1, generation, Some("C"), None);
                        store
                            .write(&key(id), Expect::Absent, &created, NOW)
                            .await
                            .map(|()| ack(id, EventKind::Created, 1))
                    }
                    Some(current_record) => match below(10) {
                        0..=5 => {
                            let v = current_record.version + 1;
                            let next = life(v, current_record.generation, Some("C"), None);
                            store
                                .write(&key(id), Expect::unchanged(&current_record), &next, NOW)
                                .await
                                .map(|()| ack(id, EventKind::Updated, v))
                        }
                        6..=8 => store
                            .delete(&key(id), current_record.revision(), NOW)
                            .await
                            .map(|()| ack(id, EventKind::Deleted, current_record.version)),
                        _ => store
                            .delete_customer_sessions(&CustomerKey::new("shop", "C"), Some(id), NOW)
                            .await
                            .map(|removed| {
                                for r in removed {
                                    ack(&r.session_id, EventKind::Deleted, r.revision.version);
                                }
                            }),
                    },
                };
                match outcome {
                    Ok(()) | Err(StoreError::Conflict) => tokio::task::yield_now().await,
                    Err(e) => panic!("{e}"),
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let events = drain(store.as_ref(), NOW).await;
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e.event.id.clone()).collect();
    assert_eq!(ids.len(), events.len(), "one id per event");
    let acknowledged = acknowledged.lock().unwrap().clone();
    for id in sessions {
        let of_session: Vec<_> = events
            .iter()
            .filter(|e| e.key == key(id))
            .map(|e| (e.event.kind, e.event.version))
            .collect();
        let left = check_history(id, &of_session, acknowledged.get(id).map_or(&[], Vec::as_slice));
        let stored = store.load(&key(id), NOW).await.unwrap().map(|r| r.version);
        assert_eq!(left, stored, "{id}: the history ends where the store is");
    }
}

/// Many creations race over expired records while sweeps and deletes by customer remove them:
/// each expired record ends exactly once (one `expired`, whoever removed it), before the
/// creation of the next life, and only acknowledged creations are told of.
async fn creations_over_expired_records_end_them_exactly_once(backend: Backend) {
    let (store, _dir) = events_store(backend, 1).await;
    // Each session its own customer, so that a delete by customer races for that session only.
    let sessions: Vec<String> = (0..12).map(|i| format!("x{i}")).collect();
    for id in &sessions {
        let customer = Some(id.as_str());
        store
            .write(&key(id), Expect::Absent, &record(1, customer, Some(NOW + 10)), NOW)
            .await
            .unwrap();
        store
            .write(&key(id), current(1), &record(2, customer, Some(NOW + 10)), NOW)
            .await
            .unwrap();
    }
    drain(store.as_ref(), NOW).await;
    let later = NOW + 20;
    let created = Arc::new(std::sync::Mutex::new(Acknowledged::new()));
    // All tasks go at each session together.
    let together = Arc::new(tokio::sync::Barrier::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..4 {
        let store = Arc::clone(&store);
        let sessions = sessions.clone();
        let created = Arc::clone(&created);
        let together = Arc::clone(&together);
        tasks.spawn(async move {
            for (i, id) in sessions.iter().enumerate() {
                together.wait().await;
                // Two tasks first remove the expired record (racing the others' creations): one
                // by its customer, one now and then by a sweep (which takes any expired record,
                // maybe a later session's).
                match task {
                    0 if i % 4 == 0 => {
                        store.sweep_expired(later, 1).await.unwrap();
                    }
                    1 => {
                        let removed = store
                            .delete_customer_sessions(&CustomerKey::new("shop", id.as_str()), None, later)
                            .await
                            .unwrap();
                        assert!(
                            removed.is_empty(),
                            "only an expired record has that customer: {removed:?}"
                        );
                    }
                    _ => tokio::task::yield_now().await,
                }
                let generation = i64::try_from(below(1 << 40)).unwrap();
                match store
                    .write(&key(id), Expect::Absent, &life(1, generation, None, None), later)
                    .await
                {
                    Ok(()) => created
                        .lock()
                        .unwrap()
                        .entry(id.clone())
                        .or_default()
                        .push((EventKind::Created, 1)),
                    Err(StoreError::Conflict) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let events = drain(store.as_ref(), later).await;
    let created = created.lock().unwrap().clone();
    for id in &sessions {
        let of_session: Vec<_> = events
            .iter()
            .filter(|e| e.key == key(id))
            .map(|e| (e.event.kind, e.event.version))
            .collect();
        assert_eq!(
            of_session,
            [(EventKind::Expired, 2), (EventKind::Created, 1)],
            "{id}: the old life ends once, then the new one starts"
        );
        assert_eq!(
            created.get(id).map(Vec::len),
            Some(1),
            "{id}: one creation acknowledged"
        );
        let expired = events
            .iter()
            .find(|e| e.key == key(id) && e.event.kind == EventKind::Expired)
            .unwrap();
        assert_eq!(
            (expired.event.time, expired.event.customer.as_deref()),
            (NOW + 10, Some(id.as_str()))
        );
    }
}

crate::on_every_backend!(
    without_destinations_nothing_is_recorded,
    every_change_records_its_event_for_every_destination,
    expiry_records_expired_events,
    a_delete_by_customer_records_a_deleted_event_per_session,
    claims_give_each_destination_a_sessions_events_in_order_to_one_owner,
    concurrent_changes_each_record_exactly_one_event,
    concurrent_lifecycles_record_a_consistent_history,
    entries_behind_a_retry_go_right_after_it,
);

// Expiry here is the `now` the test passes: stores that expire records by themselves (Redis)
// do it on their own clock.
crate::on_backend!(
    memory_expiry,
    Memory,
    creations_over_expired_records_end_them_exactly_once
);
crate::on_backend!(
    sqlite_expiry,
    Sqlite,
    creations_over_expired_records_end_them_exactly_once
);
crate::on_backend!(
    postgres_expiry,
    Postgres,
    creations_over_expired_records_end_them_exactly_once
);

/// Two instances (two stores on one schema) claim while writers change sessions: no entry is
/// ever held by both (leases never run out here), every event is claimed exactly once, and each
/// session's events are claimed in order: `FOR UPDATE SKIP LOCKED` makes each claimer skip the
/// rows the other is claiming, and a session whose oldest row is being claimed elsewhere gives
/// nothing, never its next row.
async fn instances_claiming_together_share_the_events_once_and_in_order(backend: Backend) {
    const SESSIONS: u64 = 8;
    const CHANGES: u64 = 12;
    let url: session_context::store::StoreUrl = crate::common::namespaced_url(backend).await.parse().unwrap();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let store = session_context::store::open(&url).await.unwrap();
        store.set_event_destinations(1);
        instances.push(store);
    }
    let writers_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for (n, store) in instances.iter().enumerate() {
        let store = Arc::clone(store);
        let writers_done = Arc::clone(&writers_done);
        writers.spawn(async move {
            // Each instance writes its half of the sessions, one change after another.
            for v in 1..=CHANGES {
                for s in (0..SESSIONS).filter(|s| s % 2 == n as u64) {
                    let expect = if v == 1 { Expect::Absent } else { current(v - 1) };
                    store
                        .write(&key(&format!("s{s}")), expect, &record(v, None, None), NOW)
                        .await
                        .unwrap();
                }
                tokio::task::yield_now().await;
            }
            writers_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
    // (claimer, entry, session, version) in the order claims returned, across both claimers.
    let claims = Arc::new(std::sync::Mutex::new(Vec::new()));
    let total = (SESSIONS * CHANGES) as usize;
    let mut claimers = tokio::task::JoinSet::new();
    for (n, store) in instances.iter().enumerate() {
        let store = Arc::clone(store);
        let claims = Arc::clone(&claims);
        let writers_done = Arc::clone(&writers_done);
        claimers.spawn(async move {
            let owner = format!("instance-{n}");
            loop {
                let claimed = store.claim_events(&owner, 3, LEASE, NOW).await.unwrap();
                {
                    let mut log = claims.lock().unwrap();
                    for e in &claimed {
                        log.push((n, e.entry.clone(), e.key.session_id.clone(), e.event.version));
                    }
                }
                for e in &claimed {
                    store.settle_event(&e.entry, &Settlement::Done).await.unwrap();
                }
                if claimed.is_empty() {
                    let finished = writers_done.load(std::sync::atomic::Ordering::SeqCst) == 2;
                    if finished && claims.lock().unwrap().len() >= total {
                        return;
                    }
                    if finished && store.outbox_stats().await.unwrap().pending == 0 {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.unwrap();
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(joined) = claimers.join_next().await {
            joined.unwrap();
        }
    })
    .await
    .expect("the claimers finish");
    let claims = claims.lock().unwrap().clone();
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<_> = claims
        .iter()
        .filter(|(_, entry, ..)| !seen.insert(entry.clone()))
        .collect();
    assert!(twice.is_empty(), "entries claimed twice: {twice:?}");
    assert_eq!(claims.len(), total, "every event claimed");
    for s in 0..SESSIONS {
        let id = format!("s{s}");
        let versions: Vec<u64> = claims.iter().filter(|c| c.2 == id).map(|c| c.3).collect();
        assert_eq!(versions, (1..=CHANGES).collect::<Vec<_>>(), "{id}: in order");
    }
    let by_instance = |n| claims.iter().filter(|c| c.0 == n).count();
    assert!(
        by_instance(0) > 0 && by_instance(1) > 0,
        "both instances took a share: {} and {}",
        by_instance(0),
        by_instance(1)
    );
    assert_eq!(instances[0].outbox_stats().await.unwrap().pending, 0);
}

/// A database at the third migration (the customer index) gets the outbox at start; its
/// sessions then record events like any other.
async fn postgres_upgrade_adds_the_outbox(backend: Backend) {
    let url = crate::common::namespaced_url(backend).await;
    let before = tempfile::tempdir().unwrap();
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    for name in ["0001_sessions.sql", "0002_generation.sql", "0003_customer_index.sql"] {
        std::fs::copy(migrations.join(name), before.path().join(name)).unwrap();
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(before.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sessions (tenant, session_id, version, generation, expires_at, doc, customer_id, modified_at)
         VALUES ('shop', 'old', 3, $1, NULL, '{}', 'C1', $2)",
    )
    .bind(GENERATION)
    .bind(NOW)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let store = session_context::store::open(&url.parse().unwrap()).await.unwrap();
    store.set_event_destinations(1);
    store
        .write(&key("old"), current(3), &record(4, Some("C1"), None), NOW + 1)
        .await
        .unwrap();
    store
        .delete(&key("old"), record(4, None, None).revision(), NOW + 2)
        .await
        .unwrap();
    assert_eq!(
        summary(&drain(store.as_ref(), NOW + 2).await),
        [
            (0, "old".into(), EventKind::Updated, 4),
            (0, "old".into(), EventKind::Deleted, 4)
        ]
    );
}

crate::on_backend!(
    postgres_instances,
    Postgres,
    instances_claiming_together_share_the_events_once_and_in_order,
    postgres_upgrade_adds_the_outbox,
);
