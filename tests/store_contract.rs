//! The store contract suite: written once, run on every backend. A backend only stores and
//! compares, so these tests pin down exactly that: loads, conditional writes, expiry, deletes,
//! sweeps, tenant separation and atomicity under concurrent writers.

mod common;

use std::sync::Arc;

use common::{Backend, open_store};
use session_context::store::{Expect, SessionKey, SessionStore, StoreError, StoredSession};

const NOW: i64 = 1_000_000;

fn record(version: u64, expires_at: Option<i64>, doc: &str) -> StoredSession {
    StoredSession {
        version,
        expires_at,
        doc: doc.to_owned(),
    }
}

fn key(id: &str) -> SessionKey {
    SessionKey::new("shop", id)
}

async fn missing_sessions_load_as_none(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    assert_eq!(store.load(&key("nope"), NOW).await.unwrap(), None);
}

async fn absent_write_creates_once(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let first = record(1, None, r#"{"a":1}"#);
    store
        .write(&key("s"), Expect::Absent, &first, NOW)
        .await
        .unwrap();
    assert_eq!(
        store.load(&key("s"), NOW).await.unwrap(),
        Some(first.clone())
    );
    let again = store
        .write(&key("s"), Expect::Absent, &record(1, None, "{}"), NOW)
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    assert_eq!(store.load(&key("s"), NOW).await.unwrap(), Some(first));
}

async fn versioned_write_needs_the_exact_stored_version(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    store
        .write(&key("s"), Expect::Absent, &record(1, None, "v1"), NOW)
        .await
        .unwrap();
    store
        .write(&key("s"), Expect::Version(1), &record(2, None, "v2"), NOW)
        .await
        .unwrap();
    for stale in [0, 1, 3, u64::MAX] {
        let result = store
            .write(
                &key("s"),
                Expect::Version(stale),
                &record(9, None, "bad"),
                NOW,
            )
            .await;
        assert!(
            matches!(result, Err(StoreError::Conflict)),
            "version {stale}: {result:?}"
        );
    }
    assert_eq!(
        store.load(&key("s"), NOW).await.unwrap(),
        Some(record(2, None, "v2"))
    );
}

async fn versioned_write_of_a_missing_session_conflicts(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let result = store
        .write(&key("s"), Expect::Version(1), &record(2, None, "x"), NOW)
        .await;
    assert!(matches!(result, Err(StoreError::Conflict)));
    assert_eq!(store.load(&key("s"), NOW).await.unwrap(), None);
}

async fn expired_sessions_are_missing_at_once(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    store
        .write(
            &key("s"),
            Expect::Absent,
            &record(4, Some(NOW + 10), "old"),
            NOW,
        )
        .await
        .unwrap();
    assert!(store.load(&key("s"), NOW + 9).await.unwrap().is_some());
    assert_eq!(store.load(&key("s"), NOW + 10).await.unwrap(), None);
    // an expired record cannot be updated, only created anew
    let update = store
        .write(
            &key("s"),
            Expect::Version(4),
            &record(5, None, "x"),
            NOW + 10,
        )
        .await;
    assert!(matches!(update, Err(StoreError::Conflict)));
    store
        .write(&key("s"), Expect::Absent, &record(1, None, "new"), NOW + 10)
        .await
        .unwrap();
    assert_eq!(
        store.load(&key("s"), NOW + 10).await.unwrap(),
        Some(record(1, None, "new"))
    );
}

async fn delete_reports_only_live_sessions(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    assert!(!store.delete(&key("none"), NOW).await.unwrap());
    store
        .write(&key("live"), Expect::Absent, &record(1, None, "x"), NOW)
        .await
        .unwrap();
    store
        .write(
            &key("dead"),
            Expect::Absent,
            &record(1, Some(NOW - 1), "x"),
            NOW - 5,
        )
        .await
        .unwrap();
    assert!(store.delete(&key("live"), NOW).await.unwrap());
    assert!(!store.delete(&key("live"), NOW).await.unwrap());
    assert!(!store.delete(&key("dead"), NOW).await.unwrap());
    assert_eq!(store.load(&key("live"), NOW).await.unwrap(), None);
}

async fn sweep_removes_expired_records_in_batches(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    for i in 0..5 {
        let id = format!("old{i}");
        store
            .write(
                &key(&id),
                Expect::Absent,
                &record(1, Some(NOW - 1), "x"),
                NOW - 10,
            )
            .await
            .unwrap();
    }
    store
        .write(
            &key("fresh"),
            Expect::Absent,
            &record(1, Some(NOW + 1_000), "x"),
            NOW,
        )
        .await
        .unwrap();
    store
        .write(&key("forever"), Expect::Absent, &record(1, None, "x"), NOW)
        .await
        .unwrap();
    assert_eq!(store.sweep_expired(NOW, 3).await.unwrap(), 3);
    assert_eq!(store.sweep_expired(NOW, 3).await.unwrap(), 2);
    assert_eq!(store.sweep_expired(NOW, 3).await.unwrap(), 0);
    assert!(store.load(&key("fresh"), NOW).await.unwrap().is_some());
    assert!(store.load(&key("forever"), NOW).await.unwrap().is_some());
    // the swept ones are really gone: they can be created anew from scratch
    store
        .write(&key("old0"), Expect::Absent, &record(1, None, "again"), NOW)
        .await
        .unwrap();
}

async fn tenants_never_share_a_session(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let a = SessionKey::new("alpha", "same");
    let b = SessionKey::new("beta", "same");
    store
        .write(&a, Expect::Absent, &record(1, None, "alpha's"), NOW)
        .await
        .unwrap();
    assert_eq!(store.load(&b, NOW).await.unwrap(), None);
    store
        .write(&b, Expect::Absent, &record(1, None, "beta's"), NOW)
        .await
        .unwrap();
    assert!(store.delete(&a, NOW).await.unwrap());
    assert_eq!(store.load(&b, NOW).await.unwrap().unwrap().doc, "beta's");
}

async fn exactly_one_of_many_concurrent_writers_wins(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    store
        .write(&key("hot"), Expect::Absent, &record(1, None, "start"), NOW)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store: Arc<dyn SessionStore> = store.clone();
            tokio::spawn(async move {
                store
                    .write(
                        &key("hot"),
                        Expect::Version(1),
                        &record(2, None, &format!("writer {i}")),
                        NOW,
                    )
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => winners += 1,
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(
        store.load(&key("hot"), NOW).await.unwrap().unwrap().version,
        2
    );
}

async fn ping_answers(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    store.ping().await.unwrap();
}

on_every_backend!(
    missing_sessions_load_as_none,
    absent_write_creates_once,
    versioned_write_needs_the_exact_stored_version,
    versioned_write_of_a_missing_session_conflicts,
    expired_sessions_are_missing_at_once,
    delete_reports_only_live_sessions,
    sweep_removes_expired_records_in_batches,
    tenants_never_share_a_session,
    exactly_one_of_many_concurrent_writers_wins,
    ping_answers,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_sessions_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/folder/sessions.db");
    {
        let store = session_context::store::SqliteStore::open(&path)
            .await
            .unwrap();
        store
            .write(&key("s"), Expect::Absent, &record(1, None, "kept"), NOW)
            .await
            .unwrap();
    }
    let store = session_context::store::SqliteStore::open(&path)
        .await
        .unwrap();
    assert_eq!(
        store.load(&key("s"), NOW).await.unwrap().unwrap().doc,
        "kept"
    );
}
