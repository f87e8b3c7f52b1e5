//! The store contract suite: written once, run on every backend. A backend only stores and
//! compares, so these tests pin down exactly that: loads, conditional writes, expiry, deletes,
//! moving an expiry, sweeps, tenant separation and atomicity under concurrent writers.

use std::sync::Arc;

use crate::common::{Backend, open_store};
use session_context::store::{
    CustomerKey, CustomerSessions, Expect, Page, RemovedSession, Revision, SessionKey, SessionStore, StoreError,
    StoredSession,
};

const NOW: i64 = 1_000_000;
/// The generation of the records these tests write, unless they say otherwise.
const GENERATION: i64 = 7;

fn record(version: u64, expires_at: Option<i64>, doc: &str) -> StoredSession {
    StoredSession {
        version,
        generation: GENERATION,
        expires_at,
        doc: doc.to_owned(),
        customer: None,
        modified_at: 0,
    }
}

/// The record at `version` (of the usual generation) must still be there.
fn current(version: u64) -> Expect {
    Expect::Current {
        version,
        generation: GENERATION,
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
    store.write(&key("s"), Expect::Absent, &first, NOW).await.unwrap();
    assert_eq!(store.load(&key("s"), NOW).await.unwrap(), Some(first.clone()));
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
        .write(&key("s"), current(1), &record(2, None, "v2"), NOW)
        .await
        .unwrap();
    for stale in [0, 1, 3, u64::MAX] {
        let result = store
            .write(&key("s"), current(stale), &record(9, None, "bad"), NOW)
            .await;
        assert!(
            matches!(result, Err(StoreError::Conflict)),
            "version {stale}: {result:?}"
        );
    }
    assert_eq!(store.load(&key("s"), NOW).await.unwrap(), Some(record(2, None, "v2")));
}

async fn versioned_write_of_a_missing_session_conflicts(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let result = store.write(&key("s"), current(1), &record(2, None, "x"), NOW).await;
    assert!(matches!(result, Err(StoreError::Conflict)));
    assert_eq!(store.load(&key("s"), NOW).await.unwrap(), None);
}

async fn a_session_created_anew_is_not_taken_for_its_predecessor(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    // Deleted and created again, or expired and created again: version 1 both times.
    let end = NOW + 60_000;
    for (ended_at, expires_at) in [(NOW, None), (end, Some(end))] {
        let id = format!("again{ended_at}");
        let before = StoredSession {
            generation: 1,
            ..record(1, expires_at, "before")
        };
        store.write(&key(&id), Expect::Absent, &before, NOW).await.unwrap();
        if expires_at.is_none() {
            store.delete(&key(&id), before.revision(), NOW).await.unwrap();
        }
        let after = StoredSession {
            generation: 2,
            ..record(1, None, "after")
        };
        store.write(&key(&id), Expect::Absent, &after, ended_at).await.unwrap();
        // A change computed from the first life must not land on the second.
        let stale = store
            .write(
                &key(&id),
                Expect::unchanged(&before),
                &record(2, None, "lost"),
                ended_at,
            )
            .await;
        assert!(matches!(stale, Err(StoreError::Conflict)), "{stale:?}");
        assert_eq!(store.load(&key(&id), ended_at).await.unwrap(), Some(after.clone()));
        store
            .write(&key(&id), Expect::unchanged(&after), &record(2, None, "next"), ended_at)
            .await
            .unwrap();
    }
}

async fn expired_sessions_are_missing_at_once(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let end = NOW + 60_000;
    store
        .write(&key("s"), Expect::Absent, &record(4, Some(end), "old"), NOW)
        .await
        .unwrap();
    assert!(store.load(&key("s"), end - 1).await.unwrap().is_some());
    assert_eq!(store.load(&key("s"), end).await.unwrap(), None);
    // an expired record cannot be updated, only created anew
    let update = store.write(&key("s"), current(4), &record(5, None, "x"), end).await;
    assert!(matches!(update, Err(StoreError::Conflict)));
    store
        .write(&key("s"), Expect::Absent, &record(1, None, "new"), end)
        .await
        .unwrap();
    assert_eq!(store.load(&key("s"), end).await.unwrap(), Some(record(1, None, "new")));
}

async fn delete_removes_only_the_live_revision_it_names(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let first = record(1, None, "x");
    let conflict = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Conflict));
    assert!(conflict(store.delete(&key("none"), first.revision(), NOW).await));
    store.write(&key("live"), Expect::Absent, &first, NOW).await.unwrap();
    let dead = record(1, Some(NOW - 1), "x");
    store.write(&key("dead"), Expect::Absent, &dead, NOW - 5).await.unwrap();
    // Another version, or the same version of another life, is not removed.
    let newer = Revision {
        version: 2,
        ..first.revision()
    };
    let other_life = Revision {
        generation: first.generation + 1,
        ..first.revision()
    };
    for revision in [newer, other_life] {
        assert!(
            conflict(store.delete(&key("live"), revision, NOW).await),
            "{revision:?}"
        );
        assert_eq!(store.load(&key("live"), NOW).await.unwrap(), Some(first.clone()));
    }
    store.delete(&key("live"), first.revision(), NOW).await.unwrap();
    assert!(conflict(store.delete(&key("live"), first.revision(), NOW).await));
    assert!(conflict(store.delete(&key("dead"), dead.revision(), NOW).await));
    assert_eq!(store.load(&key("live"), NOW).await.unwrap(), None);
}

async fn extend_moves_the_expiry_and_nothing_else(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let (old_end, new_end) = (NOW + 30_000, NOW + 60_000);
    let stored = record(2, Some(old_end), "doc");
    store.write(&key("s"), Expect::Absent, &stored, NOW).await.unwrap();
    store
        .extend(&key("s"), stored.revision(), Some(new_end), NOW + 10)
        .await
        .unwrap();
    let extended = StoredSession {
        expires_at: Some(new_end),
        ..stored.clone()
    };
    // Version, generation and document as they were: only the expiry moved.
    assert_eq!(store.load(&key("s"), old_end).await.unwrap(), Some(extended.clone()));
    assert_eq!(store.load(&key("s"), new_end - 1).await.unwrap(), Some(extended));
    assert_eq!(store.load(&key("s"), new_end).await.unwrap(), None);
    // Still the same revision: a change made from it lands.
    store
        .write(&key("s"), Expect::unchanged(&stored), &record(3, None, "next"), old_end)
        .await
        .unwrap();
}

async fn extend_of_another_revision_or_a_dead_session_conflicts_and_changes_nothing(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let conflict = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Conflict));
    let end = NOW + 30_000;
    let live = record(2, Some(end), "x");
    assert!(conflict(store.extend(&key("none"), live.revision(), None, NOW).await));
    assert_eq!(store.load(&key("none"), NOW).await.unwrap(), None);
    store.write(&key("live"), Expect::Absent, &live, NOW).await.unwrap();
    let older = Revision {
        version: 1,
        ..live.revision()
    };
    let newer = Revision {
        version: 3,
        ..live.revision()
    };
    let other_life = Revision {
        generation: live.generation + 1,
        ..live.revision()
    };
    for revision in [older, newer, other_life] {
        for expires_at in [Some(end + 60_000), None] {
            assert!(
                conflict(store.extend(&key("live"), revision, expires_at, NOW).await),
                "{revision:?} to {expires_at:?}"
            );
            assert_eq!(store.load(&key("live"), NOW).await.unwrap(), Some(live.clone()));
        }
    }
    assert_eq!(store.load(&key("live"), end).await.unwrap(), None, "the expiry moved");
    // An expired session is not brought back.
    let dead = record(1, Some(NOW - 1), "x");
    store.write(&key("dead"), Expect::Absent, &dead, NOW - 5).await.unwrap();
    for expires_at in [Some(end), None] {
        assert!(conflict(
            store.extend(&key("dead"), dead.revision(), expires_at, NOW).await
        ));
        assert_eq!(store.load(&key("dead"), NOW).await.unwrap(), None);
    }
    store
        .write(&key("dead"), Expect::Absent, &record(1, None, "new"), NOW)
        .await
        .unwrap();
}

async fn extend_to_none_keeps_a_session_for_ever_and_back(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let stored = record(1, Some(NOW + 30_000), "x");
    store.write(&key("s"), Expect::Absent, &stored, NOW).await.unwrap();
    store.extend(&key("s"), stored.revision(), None, NOW).await.unwrap();
    let for_ever = record(1, None, "x");
    let much_later = NOW + 10 * 365 * 24 * 3_600_000;
    assert_eq!(store.load(&key("s"), much_later).await.unwrap(), Some(for_ever.clone()));
    // and a session without an expiry can be given one
    let end = NOW + 60_000;
    store
        .extend(&key("s"), for_ever.revision(), Some(end), NOW)
        .await
        .unwrap();
    assert_eq!(
        store.load(&key("s"), end - 1).await.unwrap(),
        Some(record(1, Some(end), "x"))
    );
    assert_eq!(store.load(&key("s"), end).await.unwrap(), None);
}

async fn sweep_removes_expired_records_in_batches(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    for i in 0..5 {
        let id = format!("old{i}");
        let old = record(1, Some(NOW - 1), "x");
        store.write(&key(&id), Expect::Absent, &old, NOW - 10).await.unwrap();
    }
    let fresh = record(1, Some(NOW + 60_000), "x");
    store.write(&key("fresh"), Expect::Absent, &fresh, NOW).await.unwrap();
    store
        .write(&key("forever"), Expect::Absent, &record(1, None, "x"), NOW)
        .await
        .unwrap();
    let mut swept = Vec::new();
    loop {
        let removed = store.sweep_expired(NOW, 3).await.unwrap();
        assert!(removed <= 3, "a sweep removes at most its limit");
        if removed == 0 {
            break;
        }
        swept.push(removed);
    }
    if backend.expires_natively() {
        // Redis dropped them itself; give its expiry a moment.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    } else {
        assert_eq!(swept, [3, 2]);
    }
    for i in 0..5 {
        // Loading as of before the expiry would still find a record that was only hidden.
        let id = format!("old{i}");
        assert_eq!(
            store.load(&key(&id), NOW - 100).await.unwrap(),
            None,
            "{id} was not removed"
        );
    }
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
    store
        .delete(&a, record(1, None, "alpha's").revision(), NOW)
        .await
        .unwrap();
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
                    .write(&key("hot"), current(1), &record(2, None, &format!("writer {i}")), NOW)
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
    assert_eq!(store.load(&key("hot"), NOW).await.unwrap().unwrap().version, 2);
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
    a_session_created_anew_is_not_taken_for_its_predecessor,
    expired_sessions_are_missing_at_once,
    delete_removes_only_the_live_revision_it_names,
    extend_moves_the_expiry_and_nothing_else,
    extend_of_another_revision_or_a_dead_session_conflicts_and_changes_nothing,
    extend_to_none_keeps_a_session_for_ever_and_back,
    sweep_removes_expired_records_in_batches,
    tenants_never_share_a_session,
    exactly_one_of_many_concurrent_writers_wins,
    ping_answers,
    a_customers_sessions_list_newest_first_in_stable_pages,
    expired_and_deleted_sessions_are_never_listed_nor_counted,
    the_same_customer_id_in_two_tenants_is_two_customers,
    a_session_follows_its_customer_when_it_changes_or_goes,
    a_customers_delete_spares_the_exception_and_everyone_else,
    a_customers_delete_removes_all_that_existed_despite_a_concurrent_writer,
    a_customer_with_many_sessions_lists_a_page_and_deletes_them_all,
    failed_writes_and_odd_customer_ids_list_nothing_wrong,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_sessions_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/folder/sessions.db");
    {
        let store = session_context::store::SqliteStore::open(&path).await.unwrap();
        store
            .write(&key("s"), Expect::Absent, &record(1, None, "kept"), NOW)
            .await
            .unwrap();
    }
    let store = session_context::store::SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.load(&key("s"), NOW).await.unwrap().unwrap().doc, "kept");
}

async fn redis_expires_anonymous_sessions_by_itself_and_persists_customer_ones(backend: Backend) {
    use session_context::clock::{Clock, SystemClock};
    let (store, _dir) = open_store(backend).await;
    let now = SystemClock.now();
    store
        .write(&key("brief"), Expect::Absent, &record(1, Some(now + 150), "x"), now)
        .await
        .unwrap();
    store
        .write(&key("kept"), Expect::Absent, &record(1, Some(now + 150), "x"), now)
        .await
        .unwrap();
    // becoming a customer session removes the native expiry
    store
        .write(&key("kept"), current(1), &record(2, None, "customer"), now)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    // as of `now` the record would still be live: finding nothing means Redis deleted it
    assert_eq!(store.load(&key("brief"), now).await.unwrap(), None);
    assert_eq!(store.load(&key("kept"), now).await.unwrap().unwrap().doc, "customer");
}

on_backend!(
    redis_native_expiry,
    Redis,
    redis_expires_anonymous_sessions_by_itself_and_persists_customer_ones
);
on_backend!(
    redis_cluster_native_expiry,
    RedisCluster,
    redis_expires_anonymous_sessions_by_itself_and_persists_customer_ones
);

/// Moving the expiry moves Redis's own expiry with it: later, earlier, or away.
async fn redis_extend_moves_the_native_expiry_too(backend: Backend) {
    use session_context::clock::{Clock, SystemClock};
    let (store, _dir) = open_store(backend).await;
    let now = SystemClock.now();
    let (brief, long) = (Some(now + 300), Some(now + 60_000));
    for (id, written, extended) in [("later", brief, long), ("earlier", long, brief), ("never", brief, None)] {
        let stored = record(1, written, id);
        store.write(&key(id), Expect::Absent, &stored, now).await.unwrap();
        store.extend(&key(id), stored.revision(), extended, now).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // As of `now` every record would still be live: finding one missing means Redis deleted it.
    assert_eq!(
        store.load(&key("later"), now).await.unwrap(),
        Some(record(1, long, "later"))
    );
    assert_eq!(store.load(&key("earlier"), now).await.unwrap(), None);
    assert_eq!(
        store.load(&key("never"), now).await.unwrap(),
        Some(record(1, None, "never"))
    );
}

on_backend!(redis_native_extend, Redis, redis_extend_moves_the_native_expiry_too);
on_backend!(
    redis_cluster_native_extend,
    RedisCluster,
    redis_extend_moves_the_native_expiry_too
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrades_a_first_version_database_without_losing_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE sessions (tenant TEXT NOT NULL, session_id TEXT NOT NULL, version INTEGER NOT NULL,
                 expires_at INTEGER, doc TEXT NOT NULL, PRIMARY KEY (tenant, session_id)) WITHOUT ROWID;
             CREATE INDEX sessions_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;
             INSERT INTO sessions VALUES ('shop', 'kept', 3, NULL, 'old doc');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = session_context::store::SqliteStore::open(&path).await.unwrap();
    old_record_loads_as_generation_zero_and_updates(&store, "kept").await;
    assert!(matches!(
        store
            .write(&key("kept"), Expect::Absent, &record(1, None, "x"), NOW)
            .await,
        Err(StoreError::Conflict)
    ));
}

/// Session `id`, written by an earlier release at version 3 with "old doc", loads as
/// generation 0 and takes an update.
async fn old_record_loads_as_generation_zero_and_updates(store: &dyn SessionStore, id: &str) {
    let old = StoredSession {
        generation: 0,
        ..record(3, None, "old doc")
    };
    assert_eq!(store.load(&key(id), NOW).await.unwrap(), Some(old.clone()));
    store
        .write(&key(id), Expect::unchanged(&old), &record(4, None, "new doc"), NOW)
        .await
        .unwrap();
    assert_eq!(
        store.load(&key(id), NOW).await.unwrap(),
        Some(record(4, None, "new doc"))
    );
}

/// A hash written before sessions had a generation (no `g` field) loads as generation 0 and
/// can still be updated.
async fn redis_reads_records_written_before_generations(backend: Backend) {
    let url = crate::common::namespaced_url(backend).await;
    let prefix = url.rsplit_once("prefix=").unwrap().1.to_owned();
    let store = session_context::store::open(&url.parse().unwrap()).await.unwrap();
    let base = backend.server_url().unwrap();
    let mut conn = ::redis::Client::open(base.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = ::redis::cmd("HSET")
        .arg(format!("{prefix}:{{shop:old}}"))
        .arg(&["v", "3", "d", "old doc"])
        .query_async(&mut conn)
        .await
        .unwrap();
    old_record_loads_as_generation_zero_and_updates(store.as_ref(), "old").await;
}

on_backend!(redis_upgrade, Redis, redis_reads_records_written_before_generations);

/// A database migrated by an earlier release (only the first migration) is brought up to date
/// at start, and its sessions load as generation 0 and can still be updated.
async fn postgres_upgrades_a_first_release_database(backend: Backend) {
    let url = crate::common::namespaced_url(backend).await;
    let first_only = tempfile::tempdir().unwrap();
    let name = "0001_sessions.sql";
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    std::fs::copy(migrations.join(name), first_only.path().join(name)).unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(first_only.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO sessions (tenant, session_id, version, expires_at, doc) VALUES ('shop', 'old', 3, NULL, 'old doc')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let store = session_context::store::open(&url.parse().unwrap()).await.unwrap();
    old_record_loads_as_generation_zero_and_updates(store.as_ref(), "old").await;
}

on_backend!(postgres_upgrade, Postgres, postgres_upgrades_a_first_release_database);

/// The files of the SQLite database at `path`: the database, its WAL and its shared memory.
fn sqlite_files(path: &std::path::Path) -> [std::path::PathBuf; 3] {
    let side = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    [path.to_owned(), side("-wal"), side("-shm")]
}

fn unavailable<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{what}: {result:?}");
}

/// Every operation of a store whose file is gone (or is another file now) is refused as
/// unavailable: writes (their outcome unknown, never acknowledged), reads, sweeps and the ping.
async fn sqlite_refuses_everything(store: &dyn SessionStore, existing: &StoredSession) {
    unavailable(
        store
            .write(&key("after"), Expect::Absent, &record(1, None, "after"), NOW)
            .await,
        "a creation",
    );
    unavailable(
        store
            .write(&key("s"), Expect::unchanged(existing), &record(2, None, "v2"), NOW)
            .await,
        "an update",
    );
    unavailable(store.delete(&key("s"), existing.revision(), NOW).await, "a delete");
    unavailable(
        store.extend(&key("s"), existing.revision(), Some(NOW + 1), NOW).await,
        "an extend",
    );
    unavailable(store.sweep_expired(NOW, 10).await, "a sweep");
    unavailable(store.ping().await, "the ping");
    unavailable(store.load(&key("s"), NOW).await, "a read");
    // and it stays so
    unavailable(
        store
            .write(&key("later"), Expect::Absent, &record(1, None, "x"), NOW)
            .await,
        "a later creation",
    );
    unavailable(store.ping().await, "a later ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_takes_no_write_once_its_file_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let store = session_context::store::SqliteStore::open(&path).await.unwrap();
    let existing = record(1, None, "v1");
    store.write(&key("s"), Expect::Absent, &existing, NOW).await.unwrap();
    store.ping().await.unwrap();
    for file in sqlite_files(&path) {
        let _ = std::fs::remove_file(file);
    }
    sqlite_refuses_everything(&store, &existing).await;
    assert!(!path.exists(), "the store created a new file at the deleted one's path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_takes_no_write_once_its_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let store = session_context::store::SqliteStore::open(&path).await.unwrap();
    let existing = record(1, None, "v1");
    store.write(&key("s"), Expect::Absent, &existing, NOW).await.unwrap();
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE unrelated (x INTEGER);")
        .unwrap();
    std::fs::rename(&other, &path).unwrap();
    sqlite_refuses_everything(&store, &existing).await;
    let replacement = rusqlite::Connection::open(&path).unwrap();
    let tables: Vec<String> = replacement
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["unrelated"], "the store wrote into the replacement");
}

/// Only the database file deleted, its WAL left at its path: the store empties that WAL once
/// it sees the loss, so that a restart does not replay it into the new, empty database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_empties_the_wal_it_leaves_behind_a_deleted_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let store = session_context::store::SqliteStore::open(&path).await.unwrap();
    let existing = record(1, None, "v1");
    store.write(&key("s"), Expect::Absent, &existing, NOW).await.unwrap();
    let [_, wal, _] = sqlite_files(&path);
    assert!(std::fs::metadata(&wal).unwrap().len() > 0, "the record is in the WAL");
    std::fs::remove_file(&path).unwrap();
    // The readiness check finds the loss, and answers once the writer has emptied the WAL.
    unavailable(store.ping().await, "the ping");
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        0,
        "the WAL left behind is empty"
    );
    drop(store);
    let restarted = session_context::store::SqliteStore::open(&path).await.unwrap();
    assert_eq!(restarted.load(&key("s"), NOW).await.unwrap(), None);
    restarted
        .write(&key("s"), Expect::Absent, &record(1, None, "new"), NOW)
        .await
        .unwrap();
}

// ---- A customer's sessions -------------------------------------------------------------------

/// Session `id` of `customer` at version 1, last modified at `modified_at`.
fn of_customer(customer: &str, modified_at: i64, expires_at: Option<i64>) -> StoredSession {
    StoredSession {
        customer: Some(customer.to_owned()),
        modified_at,
        ..record(1, expires_at, &format!(r#"{{"customerId":"{customer}"}}"#))
    }
}

fn customer(id: &str) -> CustomerKey {
    CustomerKey::new("shop", id)
}

fn page(offset: u64, limit: u64) -> Page {
    Page { offset, limit }
}

/// The ids of a list, in its order.
fn ids(list: &CustomerSessions) -> Vec<&str> {
    list.sessions.iter().map(|(id, _)| id.as_str()).collect()
}

async fn create(store: &dyn SessionStore, id: &str, record: &StoredSession, now: i64) {
    store.write(&key(id), Expect::Absent, record, now).await.unwrap();
}

async fn a_customers_sessions_list_newest_first_in_stable_pages(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    // modified at 50, 40, 40, 30, 20: the two at 40 go by session id
    for (id, at) in [("s3", 30), ("s1", 50), ("s2b", 40), ("s2a", 40), ("s4", 20)] {
        create(store.as_ref(), id, &of_customer("c1", NOW + at, None), NOW).await;
    }
    create(store.as_ref(), "other", &of_customer("c2", NOW + 99, None), NOW).await;
    create(store.as_ref(), "anonymous", &record(1, None, "{}"), NOW).await;
    let mut seen = Vec::new();
    for offset in [0, 2, 4] {
        let list = store
            .list_customer_sessions(&customer("c1"), page(offset, 2), NOW)
            .await
            .unwrap();
        assert_eq!(list.total, 5);
        seen.extend(ids(&list).into_iter().map(str::to_owned));
    }
    assert_eq!(seen, ["s1", "s2a", "s2b", "s3", "s4"]);
    let whole = store
        .list_customer_sessions(&customer("c1"), page(0, 100), NOW)
        .await
        .unwrap();
    assert_eq!(
        whole.sessions[0].1,
        of_customer("c1", NOW + 50, None),
        "the record as loaded"
    );
    let beyond = store
        .list_customer_sessions(&customer("c1"), page(5, 10), NOW)
        .await
        .unwrap();
    assert_eq!((beyond.sessions.len(), beyond.total), (0, 5));
    let nobody = store
        .list_customer_sessions(&customer("nobody"), page(0, 10), NOW)
        .await
        .unwrap();
    assert_eq!(nobody, CustomerSessions::default());
}

async fn expired_and_deleted_sessions_are_never_listed_nor_counted(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let end = NOW + 60_000;
    create(store.as_ref(), "brief", &of_customer("c1", NOW + 3, Some(end)), NOW).await;
    create(store.as_ref(), "kept", &of_customer("c1", NOW + 2, None), NOW).await;
    let gone = of_customer("c1", NOW + 1, None);
    create(store.as_ref(), "gone", &gone, NOW).await;
    store.delete(&key("gone"), gone.revision(), NOW).await.unwrap();
    let before = store
        .list_customer_sessions(&customer("c1"), page(0, 10), end - 1)
        .await
        .unwrap();
    assert_eq!((ids(&before), before.total), (vec!["brief", "kept"], 2));
    for _ in 0..2 {
        // twice: the first read may tidy the index, the second must agree
        let after = store
            .list_customer_sessions(&customer("c1"), page(0, 10), end)
            .await
            .unwrap();
        assert_eq!((ids(&after), after.total), (vec!["kept"], 1));
    }
    // an expired session is not reported as deleted
    let removed = store
        .delete_customer_sessions(&customer("c1"), None, end)
        .await
        .unwrap();
    let removed: Vec<&str> = removed.iter().map(|r| r.session_id.as_str()).collect();
    assert_eq!(removed, ["kept"]);
}

async fn the_same_customer_id_in_two_tenants_is_two_customers(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let (alpha, beta) = (CustomerKey::new("alpha", "c1"), CustomerKey::new("beta", "c1"));
    for (tenant, id) in [("alpha", "a1"), ("alpha", "a2"), ("beta", "b1")] {
        store
            .write(
                &SessionKey::new(tenant, id),
                Expect::Absent,
                &of_customer("c1", NOW, None),
                NOW,
            )
            .await
            .unwrap();
    }
    let list = store.list_customer_sessions(&beta, page(0, 10), NOW).await.unwrap();
    assert_eq!((ids(&list), list.total), (vec!["b1"], 1));
    let removed = store.delete_customer_sessions(&alpha, None, NOW).await.unwrap();
    assert_eq!(removed.len(), 2);
    assert!(store.load(&SessionKey::new("beta", "b1"), NOW).await.unwrap().is_some());
    assert_eq!(
        store
            .list_customer_sessions(&alpha, page(0, 10), NOW)
            .await
            .unwrap()
            .total,
        0
    );
}

async fn a_session_follows_its_customer_when_it_changes_or_goes(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let first = of_customer("a", NOW, None);
    create(store.as_ref(), "s", &first, NOW).await;
    let moved = StoredSession {
        version: 2,
        ..of_customer("b", NOW + 1, None)
    };
    store
        .write(&key("s"), Expect::unchanged(&first), &moved, NOW)
        .await
        .unwrap();
    let total = |list: CustomerSessions| (list.sessions.len(), list.total);
    let of = |id: &'static str| {
        let store = store.clone();
        async move {
            store
                .list_customer_sessions(&customer(id), page(0, 10), NOW + 2)
                .await
                .unwrap()
        }
    };
    assert_eq!(total(of("a").await), (0, 0));
    assert_eq!(ids(&of("b").await), ["s"]);
    // a's delete does not touch what is b's now
    assert!(
        store
            .delete_customer_sessions(&customer("a"), None, NOW + 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.load(&key("s"), NOW + 2).await.unwrap().is_some());
    // and a session that loses its customer is nobody's
    let anonymous = StoredSession {
        version: 3,
        ..record(3, None, "{}")
    };
    store
        .write(&key("s"), Expect::unchanged(&moved), &anonymous, NOW + 2)
        .await
        .unwrap();
    assert_eq!(total(of("b").await), (0, 0));
    // back to a: listed again
    let back = StoredSession {
        version: 4,
        ..of_customer("a", NOW + 3, None)
    };
    store
        .write(&key("s"), Expect::unchanged(&anonymous), &back, NOW + 3)
        .await
        .unwrap();
    assert_eq!(ids(&of("a").await), ["s"]);
    assert_eq!(total(of("b").await), (0, 0));
}

async fn a_customers_delete_spares_the_exception_and_everyone_else(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    for id in ["s1", "s2", "current"] {
        create(store.as_ref(), id, &of_customer("c1", NOW, None), NOW).await;
    }
    let later = StoredSession {
        version: 2,
        ..of_customer("c1", NOW + 1, None)
    };
    store
        .write(
            &key("s2"),
            Expect::unchanged(&of_customer("c1", NOW, None)),
            &later,
            NOW,
        )
        .await
        .unwrap();
    create(store.as_ref(), "other", &of_customer("c2", NOW, None), NOW).await;
    create(store.as_ref(), "anonymous", &record(1, None, "{}"), NOW).await;
    let mut removed = store
        .delete_customer_sessions(&customer("c1"), Some("current"), NOW)
        .await
        .unwrap();
    removed.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    assert_eq!(
        removed,
        [
            RemovedSession {
                session_id: "s1".into(),
                revision: Revision {
                    version: 1,
                    generation: GENERATION
                }
            },
            RemovedSession {
                session_id: "s2".into(),
                revision: later.revision()
            },
        ]
    );
    for (id, kept) in [
        ("s1", false),
        ("s2", false),
        ("current", true),
        ("other", true),
        ("anonymous", true),
    ] {
        assert_eq!(store.load(&key(id), NOW).await.unwrap().is_some(), kept, "{id}");
    }
    let left = store
        .list_customer_sessions(&customer("c1"), page(0, 10), NOW)
        .await
        .unwrap();
    assert_eq!((ids(&left), left.total), (vec!["current"], 1));
    // nothing more to remove the second time
    assert!(
        store
            .delete_customer_sessions(&customer("c1"), Some("current"), NOW)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Sessions of the customer keep being created while the delete runs: every session that
/// existed when it began is gone afterwards.
async fn a_customers_delete_removes_all_that_existed_despite_a_concurrent_writer(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let before: Vec<String> = (0..300).map(|i| format!("old{i}")).collect();
    write_many(&store, &before, "c1").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let record = of_customer("c1", NOW + n, None);
                store
                    .write(&key(&format!("new{n}")), Expect::Absent, &record, NOW)
                    .await
                    .unwrap();
                n += 1;
                tokio::task::yield_now().await;
            }
            n
        }
    });
    // let the writer get going
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let removed = store
        .delete_customer_sessions(&customer("c1"), None, NOW)
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let created = writer.await.unwrap();
    assert!(removed.len() >= before.len(), "{} removed", removed.len());
    for id in &before {
        assert_eq!(store.load(&key(id), NOW).await.unwrap(), None, "{id} survived");
    }
    // what the writer created after the delete is still listed, and counted right
    let left = store
        .list_customer_sessions(&customer("c1"), page(0, 100_000), NOW)
        .await
        .unwrap();
    assert_eq!(left.total as usize, left.sessions.len());
    assert_eq!(removed.len() + left.sessions.len(), before.len() + created as usize);
}

/// A write that loses its race lists nothing under the customer it would have given the
/// session, and customer ids with the characters of keys and hash tags name one customer each.
async fn failed_writes_and_odd_customer_ids_list_nothing_wrong(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let odd = ["a:b", "a", "b", "{a}:b", "a%3Ab", "x}{"];
    for (i, customer_id) in odd.iter().enumerate() {
        create(
            store.as_ref(),
            &format!("s{i}"),
            &of_customer(customer_id, NOW, None),
            NOW,
        )
        .await;
    }
    for (i, customer_id) in odd.iter().enumerate() {
        let list = store
            .list_customer_sessions(&CustomerKey::new("shop", *customer_id), page(0, 10), NOW)
            .await
            .unwrap();
        assert_eq!(ids(&list), [format!("s{i}")], "{customer_id}");
    }
    // s0 exists: a creation of it for "late" fails, an update from a stale revision too
    let lost = store
        .write(&key("s0"), Expect::Absent, &of_customer("late", NOW, None), NOW)
        .await;
    assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
    let stale = store
        .write(&key("s0"), current(9), &of_customer("late", NOW, None), NOW)
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict)), "{stale:?}");
    let late = store
        .list_customer_sessions(&customer("late"), page(0, 10), NOW)
        .await
        .unwrap();
    assert_eq!(late, CustomerSessions::default());
    assert!(
        store
            .delete_customer_sessions(&customer("late"), None, NOW)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.load(&key("s0"), NOW).await.unwrap().is_some());
}

/// Writes sessions `ids` of `customer` (modified at NOW + their index), many at a time.
async fn write_many(store: &Arc<dyn SessionStore>, ids: &[String], customer: &str) {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        if tasks.len() >= 64 {
            tasks.join_next().await.unwrap().unwrap();
        }
        let (store, id, record) = (store.clone(), id.clone(), of_customer(customer, NOW + i as i64, None));
        tasks.spawn(async move { store.write(&key(&id), Expect::Absent, &record, NOW).await.unwrap() });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// 10,000 sessions of one customer: a page is listed, and all are deleted, in seconds (on Redis
/// a list checks every entry of the index: see ARCHITECTURE.md). Timings are printed, not
/// asserted.
async fn a_customer_with_many_sessions_lists_a_page_and_deletes_them_all(backend: Backend) {
    let (store, _dir) = open_store(backend).await;
    let many = 10_000;
    let all: Vec<String> = (0..many).map(|i| format!("m{i:05}")).collect();
    let started = std::time::Instant::now();
    write_many(&store, &all, "big").await;
    let written = started.elapsed();
    let started = std::time::Instant::now();
    let list = store
        .list_customer_sessions(&customer("big"), page(many as u64 / 2, 60), NOW)
        .await
        .unwrap();
    let listed = started.elapsed();
    assert_eq!(list.total, many as u64);
    // newest first: index many/2 is the (many/2 + 1)-th newest
    let expected: Vec<String> = (0..60).map(|i| format!("m{:05}", many / 2 - 1 - i)).collect();
    assert_eq!(ids(&list), expected);
    let started = std::time::Instant::now();
    let removed = store
        .delete_customer_sessions(&customer("big"), None, NOW)
        .await
        .unwrap();
    let deleted = started.elapsed();
    assert_eq!(removed.len(), many);
    assert_eq!(
        store
            .list_customer_sessions(&customer("big"), page(0, 10), NOW)
            .await
            .unwrap()
            .total,
        0
    );
    eprintln!(
        "{backend:?}: {many} sessions written in {written:?}, a page listed in {listed:?}, all deleted in {deleted:?}"
    );
}

/// The document of a session written by an earlier release: customer `c1` when `customer`,
/// last modified at 2026-02-04T16:30:04.047Z plus `seconds`.
fn old_doc(id: &str, customer: bool, seconds: u32) -> String {
    let customer = if customer { r#""customerId":"c1","# } else { "" };
    format!(
        r#"{{"sessionId":"{id}",{customer}"context":{{}},"metadata":{{"version":3,"createdAt":"2026-02-04T16:30:00.000Z","modifiedAt":"2026-02-04T16:30:{:02}.047Z"}}}}"#,
        4 + seconds
    )
}

/// 2026-02-04T16:30:04.047Z
const OLD_MODIFIED: i64 = 1_770_222_604_047;

/// After the upgrade, `store` finds the sessions `old_doc` wrote for `c1` ("new" modified a
/// second after "old"), with their customer and time, and only those.
async fn old_sessions_are_found_by_customer(store: &dyn SessionStore) {
    let list = store
        .list_customer_sessions(&customer("c1"), page(0, 10), NOW)
        .await
        .unwrap();
    assert_eq!((ids(&list), list.total), (vec!["new", "old"], 2));
    let (_, old) = &list.sessions[1];
    assert_eq!((old.customer.as_deref(), old.modified_at), (Some("c1"), OLD_MODIFIED));
    assert_eq!(list.sessions[0].1.modified_at, OLD_MODIFIED + 1_000);
    assert_eq!(old.doc, old_doc("old", true, 0));
    let removed = store
        .delete_customer_sessions(&customer("c1"), None, NOW)
        .await
        .unwrap();
    assert_eq!(removed.len(), 2);
    assert!(
        store.load(&key("anon"), NOW).await.unwrap().is_some(),
        "an anonymous session stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrade_finds_existing_sessions_by_customer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    {
        // the schema as the third migration left it
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE sessions (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, session_id TEXT NOT NULL,
                 version INTEGER NOT NULL, expires_at INTEGER, doc TEXT NOT NULL,
                 generation INTEGER NOT NULL DEFAULT 0);
             CREATE UNIQUE INDEX sessions_key ON sessions (tenant, session_id);
             CREATE INDEX sessions_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;
             PRAGMA user_version = 3;",
        )
        .unwrap();
        for (id, customer, seconds) in [("old", true, 0), ("new", true, 1), ("anon", false, 2)] {
            conn.execute(
                "INSERT INTO sessions (tenant, session_id, version, expires_at, doc) VALUES ('shop', ?1, 3, NULL, ?2)",
                rusqlite::params![id, old_doc(id, customer, seconds)],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO sessions (tenant, session_id, version, expires_at, doc) VALUES ('shop', 'odd', 1, NULL, 'not json')",
            [],
        )
        .unwrap();
    }
    let store = session_context::store::SqliteStore::open(&path).await.unwrap();
    old_sessions_are_found_by_customer(&store).await;
    assert_eq!(store.load(&key("odd"), NOW).await.unwrap().unwrap().doc, "not json");
}

/// A database migrated by the release before the customer index (two migrations) gets it,
/// built from its sessions' documents.
async fn postgres_upgrade_finds_existing_sessions_by_customer(backend: Backend) {
    let url = crate::common::namespaced_url(backend).await;
    let before = tempfile::tempdir().unwrap();
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    for name in ["0001_sessions.sql", "0002_generation.sql"] {
        std::fs::copy(migrations.join(name), before.path().join(name)).unwrap();
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(before.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let rows = [
        ("old", old_doc("old", true, 0)),
        ("new", old_doc("new", true, 1)),
        ("anon", old_doc("anon", false, 2)),
        ("odd", "not json".to_owned()),
    ];
    for (id, doc) in rows {
        sqlx::query(
            "INSERT INTO sessions (tenant, session_id, version, expires_at, doc) VALUES ('shop', $1, 3, NULL, $2)",
        )
        .bind(id)
        .bind(doc)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let store = session_context::store::open(&url.parse().unwrap()).await.unwrap();
    old_sessions_are_found_by_customer(store.as_ref()).await;
    assert_eq!(store.load(&key("odd"), NOW).await.unwrap().unwrap().doc, "not json");
}

on_backend!(
    postgres_customer_upgrade,
    Postgres,
    postgres_upgrade_finds_existing_sessions_by_customer
);

/// Sessions written before the customer index (hashes without fields `c` and `m`, no index
/// entry) are listed under their customer by the backfill the store starts when it opens, and
/// a write or delete of them keeps the index right.
async fn redis_upgrade_finds_existing_sessions_by_customer(backend: Backend) {
    let url = crate::common::namespaced_url(backend).await;
    let prefix = url.rsplit_once("prefix=").unwrap().1.to_owned();
    let base = backend.server_url().unwrap();
    let old_hashes = [
        ("old", old_doc("old", true, 0)),
        ("new", old_doc("new", true, 1)),
        ("anon", old_doc("anon", false, 2)),
        ("odd", "not json".to_owned()),
    ];
    if backend == Backend::RedisCluster {
        let nodes: Vec<String> = base
            .trim_start_matches("redis-cluster://")
            .split(',')
            .map(|n| format!("redis://{n}"))
            .collect();
        let client = ::redis::cluster::ClusterClient::new(nodes).unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        for (id, doc) in &old_hashes {
            let _: () = ::redis::cmd("HSET")
                .arg(format!("{prefix}:{{shop:{id}}}"))
                .arg(&["v", "3", "d", doc.as_str()])
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    } else {
        let mut conn = ::redis::Client::open(base.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for (id, doc) in &old_hashes {
            let _: () = ::redis::cmd("HSET")
                .arg(format!("{prefix}:{{shop:{id}}}"))
                .arg(&["v", "3", "d", doc.as_str()])
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    let store = session_context::store::open(&url.parse().unwrap()).await.unwrap();
    // the backfill runs in the background: wait for it (it takes milliseconds here)
    for _ in 0..100 {
        let list = store
            .list_customer_sessions(&customer("c1"), page(0, 10), NOW)
            .await
            .unwrap();
        if list.total == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // an old session loads with its customer and time, from its document
    let old = store.load(&key("old"), NOW).await.unwrap().unwrap();
    assert_eq!((old.customer.as_deref(), old.modified_at), (Some("c1"), OLD_MODIFIED));
    old_sessions_are_found_by_customer(store.as_ref()).await;
    assert_eq!(store.load(&key("odd"), NOW).await.unwrap().unwrap().doc, "not json");
}

on_backend!(
    redis_customer_upgrade,
    Redis,
    redis_upgrade_finds_existing_sessions_by_customer
);
on_backend!(
    redis_cluster_customer_upgrade,
    RedisCluster,
    redis_upgrade_finds_existing_sessions_by_customer
);
