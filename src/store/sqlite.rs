//! `sqlite://PATH`: an embedded database in one file, in WAL mode with `synchronous=FULL`, so
//! that every acknowledged write is on disk before the answer leaves (it survives `kill -9`
//! and power loss). Reads run right on the async threads with a pooled connection. Writes go to
//! one writer thread that commits them in groups: it takes every write waiting for it, runs
//! them in one transaction and answers them all after one commit, so many concurrent writers
//! share one fsync instead of queueing for one each. Each write in a group is still its own
//! conditional statement (`UPDATE ... WHERE version = ?` or `INSERT ... ON CONFLICT DO UPDATE
//! ... WHERE expired`), applied in arrival order.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{Expect, Revision, SessionKey, SessionStore, StoreError, StoredSession, sql_version};
use crate::clock::Millis;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE sessions (
        tenant      TEXT    NOT NULL,
        session_id  TEXT    NOT NULL,
        version     INTEGER NOT NULL,
        expires_at  INTEGER,
        doc         TEXT    NOT NULL,
        PRIMARY KEY (tenant, session_id)
    ) WITHOUT ROWID;
    CREATE INDEX sessions_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;",
    // A session's document (about 1 KiB) is too large for a WITHOUT ROWID table, where it spills
    // to overflow pages of the key's B-tree: keep rows in a rowid table and the key in an index.
    "CREATE TABLE sessions_by_rowid (
        id          INTEGER PRIMARY KEY,
        tenant      TEXT    NOT NULL,
        session_id  TEXT    NOT NULL,
        version     INTEGER NOT NULL,
        expires_at  INTEGER,
        doc         TEXT    NOT NULL
    );
    INSERT INTO sessions_by_rowid (tenant, session_id, version, expires_at, doc)
        SELECT tenant, session_id, version, expires_at, doc FROM sessions;
    DROP TABLE sessions;
    ALTER TABLE sessions_by_rowid RENAME TO sessions;
    CREATE UNIQUE INDEX sessions_key ON sessions (tenant, session_id);
    CREATE INDEX sessions_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;",
    // Which life of a session a row belongs to (see `StoredSession::generation`); rows written
    // before it share generation 0, which is still told apart from every newly drawn one.
    "ALTER TABLE sessions ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;",
];

const BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 5000;";

/// Most writes committed together; bounds how long one commit holds the others.
const MAX_GROUP: usize = 256;

/// A change for the writer thread. Every answer is a count: 0 or 1 for a write or a delete
/// (1 = done), the number removed for a sweep.
enum Change {
    Write {
        key: SessionKey,
        expect: Expect,
        record: StoredSession,
        now: Millis,
    },
    Delete {
        key: SessionKey,
        revision: Revision,
        now: Millis,
    },
    Sweep {
        now: Millis,
        limit: i64,
    },
}

type Reply = oneshot::Sender<Result<usize, StoreError>>;

/// Sessions in an SQLite file.
pub struct SqliteStore {
    writer: mpsc::Sender<(Change, Reply)>,
    readers: r2d2::Pool<SqliteConnectionManager>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    fn open_blocking(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut writer = Connection::open(path).map_err(from_sqlite)?;
        writer
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; {BUSY_TIMEOUT}"
            ))
            .map_err(from_sqlite)?;
        migrate(&mut writer)?;
        let manager = SqliteConnectionManager::file(path)
            .with_init(|c| c.execute_batch(&format!("{BUSY_TIMEOUT} PRAGMA query_only = 1;")));
        let readers = r2d2::Pool::builder()
            // More connections than the runtime has threads: an inline read never waits for one.
            .max_size(std::thread::available_parallelism().map_or(8, |n| n.get() * 2).max(8) as u32)
            .connection_timeout(Duration::from_secs(5))
            .build(manager)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_in_groups(writer, receiver))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            writer: sender,
            readers,
        })
    }

    /// Hands `change` to the writer thread and waits for its commit.
    async fn change(&self, change: Change) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send((change, reply))
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the SQLite writer dropped a change".into()))?
    }

    /// Runs `f` on a pooled reading connection, right on the calling thread. A read by primary
    /// key in WAL mode takes microseconds and never waits for the writer, so handing it to a
    /// blocking thread would cost more than it saves. The pool has more connections than the
    /// runtime has threads, and a connection is never held across an `.await`, so getting one
    /// does not wait either.
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.readers.get().map_err(|e| StoreError::Unavailable(e.to_string()))?;
        f(&conn)
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn load(&self, key: &SessionKey, now: Millis) -> Result<Option<StoredSession>, StoreError> {
        self.with_reader(|conn| {
            let row = conn
                .prepare_cached(
                    "SELECT version, generation, expires_at, doc FROM sessions
                     WHERE tenant = ?1 AND session_id = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![key.tenant, key.session_id, now], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, Option<i64>>(2)?,
                            row.get::<_, String>(3)?,
                        ))
                    })
                    .optional()
                })
                .map_err(from_sqlite)?;
            row.map(|(version, generation, expires_at, doc)| {
                StoredSession::from_sql(version, generation, expires_at, doc)
            })
            .transpose()
        })
    }

    async fn write(
        &self,
        key: &SessionKey,
        expect: Expect,
        record: &StoredSession,
        now: Millis,
    ) -> Result<(), StoreError> {
        sql_version(record.version)?;
        let change = Change::Write {
            key: key.clone(),
            expect,
            record: record.clone(),
            now,
        };
        match self.change(change).await? {
            1 => Ok(()),
            _ => Err(StoreError::Conflict),
        }
    }

    async fn delete(&self, key: &SessionKey, revision: Revision, now: Millis) -> Result<(), StoreError> {
        let change = Change::Delete {
            key: key.clone(),
            revision,
            now,
        };
        match self.change(change).await? {
            1 => Ok(()),
            _ => Err(StoreError::Conflict),
        }
    }

    async fn sweep_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.change(Change::Sweep { now, limit }).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_reader(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(from_sqlite))
    }
}

/// The writer thread: waits for a change, takes every other change already waiting (up to
/// `MAX_GROUP`), commits them in one transaction and answers each. Ends when the store is
/// dropped.
fn write_in_groups(mut conn: Connection, changes: mpsc::Receiver<(Change, Reply)>) {
    while let Ok(first) = changes.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match changes.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        match commit_group(&mut conn, &group) {
            Ok(counts) => {
                for ((_, reply), count) in group.into_iter().zip(counts) {
                    let _ = reply.send(count);
                }
            }
            Err(e) => {
                // Nothing of the group was committed: every change in it failed.
                tracing::error!(error = %e, size = group.len(), "an SQLite group commit failed");
                for (_, reply) in group {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Applies a group in one transaction. A change whose condition does not hold answers
/// `Ok(0)` and leaves the others alone; any real error rolls the whole group back.
fn commit_group(
    conn: &mut Connection,
    group: &[(Change, Reply)],
) -> Result<Vec<Result<usize, StoreError>>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(from_sqlite)?;
    let mut counts = Vec::with_capacity(group.len());
    for (change, _) in group {
        counts.push(Ok(apply(&tx, change)?));
    }
    tx.commit().map_err(from_sqlite)?;
    Ok(counts)
}

fn apply(conn: &Connection, change: &Change) -> Result<usize, StoreError> {
    match change {
        Change::Write {
            key,
            expect: Expect::Current { version, generation },
            record,
            now,
        } => conn
            .prepare_cached(
                "UPDATE sessions SET version = ?3, expires_at = ?4, doc = ?5, generation = ?9
                 WHERE tenant = ?1 AND session_id = ?2 AND version = ?6 AND generation = ?7
                   AND (expires_at IS NULL OR expires_at > ?8)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    key.tenant,
                    key.session_id,
                    sql_version(record.version).unwrap_or(i64::MAX),
                    record.expires_at,
                    record.doc,
                    sql_version(*version).unwrap_or(-1),
                    generation,
                    now,
                    record.generation
                ])
            }),
        Change::Write {
            key,
            expect: Expect::Absent,
            record,
            now,
        } => conn
            .prepare_cached(
                "INSERT INTO sessions (tenant, session_id, version, generation, expires_at, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (tenant, session_id) DO UPDATE
                   SET version = excluded.version, generation = excluded.generation,
                       expires_at = excluded.expires_at, doc = excluded.doc
                 WHERE sessions.expires_at IS NOT NULL AND sessions.expires_at <= ?7",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    key.tenant,
                    key.session_id,
                    sql_version(record.version).unwrap_or(i64::MAX),
                    record.generation,
                    record.expires_at,
                    record.doc,
                    now
                ])
            }),
        Change::Delete { key, revision, now } => conn
            .prepare_cached(
                "DELETE FROM sessions WHERE tenant = ?1 AND session_id = ?2 AND version = ?3
                   AND generation = ?4 AND (expires_at IS NULL OR expires_at > ?5)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    key.tenant,
                    key.session_id,
                    sql_version(revision.version).unwrap_or(-1),
                    revision.generation,
                    now
                ])
            }),
        Change::Sweep { now, limit } => conn
            .prepare_cached(
                "DELETE FROM sessions WHERE id IN (
                   SELECT id FROM sessions WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
            )
            .and_then(|mut stmt| stmt.execute(params![now, limit])),
    }
    .map_err(from_sqlite)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(from_sqlite)?;
    let applied: usize = tx
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(from_sqlite)?
        .try_into()
        .map_err(|_| StoreError::Corrupt("negative schema version".into()))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {applied} is newer than this binary knows ({})",
            MIGRATIONS.len()
        )));
    }
    for sql in &MIGRATIONS[applied..] {
        tx.execute_batch(sql).map_err(from_sqlite)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .map_err(from_sqlite)?;
    tx.commit().map_err(from_sqlite)
}

fn from_sqlite(err: rusqlite::Error) -> StoreError {
    match err.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure,
        ) => StoreError::Unavailable(err.to_string()),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt(err.to_string()),
        _ => StoreError::Backend(err.to_string()),
    }
}
