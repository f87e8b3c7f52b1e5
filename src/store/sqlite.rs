//! `sqlite://PATH`: an embedded database in one file, in WAL mode with `synchronous=FULL`, so
//! that every acknowledged write is on disk before the answer leaves (it survives `kill -9`
//! and power loss). One connection writes, a pool of connections reads; all calls run on
//! tokio's blocking threads. The conditional write is a single `UPDATE ... WHERE version = ?`
//! or `INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::{Expect, SessionKey, SessionStore, StoreError, StoredSession, sql_version};
use crate::clock::Millis;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &["CREATE TABLE sessions (
        tenant      TEXT    NOT NULL,
        session_id  TEXT    NOT NULL,
        version     INTEGER NOT NULL,
        expires_at  INTEGER,
        doc         TEXT    NOT NULL,
        PRIMARY KEY (tenant, session_id)
    ) WITHOUT ROWID;
    CREATE INDEX sessions_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;"];

const BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 5000;";

/// Sessions in an SQLite file.
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
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
            .max_size(8)
            .connection_timeout(Duration::from_secs(5))
            .build(manager)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(writer)),
            readers,
        })
    }

    /// Runs `f` on the writing connection, on a blocking thread.
    async fn with_writer<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let writer = Arc::clone(&self.writer);
        run_blocking(move || {
            // A panic inside rusqlite cannot leave a transaction half-applied on disk,
            // so a poisoned lock still guards a usable connection.
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
    }

    /// Runs `f` on a pooled reading connection, on a blocking thread.
    async fn with_reader<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        run_blocking(move || {
            let conn = readers.get().map_err(|e| StoreError::Unavailable(e.to_string()))?;
            f(&conn)
        })
        .await
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn load(&self, key: &SessionKey, now: Millis) -> Result<Option<StoredSession>, StoreError> {
        let key = key.clone();
        self.with_reader(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT version, expires_at, doc FROM sessions
                     WHERE tenant = ?1 AND session_id = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![key.tenant, key.session_id, now], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, Option<i64>>(1)?,
                            row.get::<_, String>(2)?,
                        ))
                    })
                    .optional()
                })
                .map_err(from_sqlite)?;
            row.map(|(version, expires_at, doc)| StoredSession::from_sql(version, expires_at, doc))
                .transpose()
        })
        .await
    }

    async fn write(
        &self,
        key: &SessionKey,
        expect: Expect,
        record: &StoredSession,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (key, record) = (key.clone(), record.clone());
        let version = sql_version(record.version)?;
        self.with_writer(move |conn| {
            let changed = match expect {
                Expect::Version(expected) => conn
                    .prepare_cached(
                        "UPDATE sessions SET version = ?3, expires_at = ?4, doc = ?5
                         WHERE tenant = ?1 AND session_id = ?2 AND version = ?6
                           AND (expires_at IS NULL OR expires_at > ?7)",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            key.tenant,
                            key.session_id,
                            version,
                            record.expires_at,
                            record.doc,
                            sql_version(expected).unwrap_or(-1),
                            now
                        ])
                    }),
                Expect::Absent => conn
                    .prepare_cached(
                        "INSERT INTO sessions (tenant, session_id, version, expires_at, doc)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (tenant, session_id) DO UPDATE
                           SET version = excluded.version, expires_at = excluded.expires_at, doc = excluded.doc
                         WHERE sessions.expires_at IS NOT NULL AND sessions.expires_at <= ?6",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            key.tenant,
                            key.session_id,
                            version,
                            record.expires_at,
                            record.doc,
                            now
                        ])
                    }),
            }
            .map_err(from_sqlite)?;
            if changed == 1 {
                Ok(())
            } else {
                Err(StoreError::Conflict)
            }
        })
        .await
    }

    async fn delete(&self, key: &SessionKey, now: Millis) -> Result<bool, StoreError> {
        let key = key.clone();
        self.with_writer(move |conn| {
            let removed: Option<Option<i64>> = conn
                .prepare_cached("DELETE FROM sessions WHERE tenant = ?1 AND session_id = ?2 RETURNING expires_at")
                .and_then(|mut stmt| {
                    stmt.query_row(params![key.tenant, key.session_id], |r| r.get(0))
                        .optional()
                })
                .map_err(from_sqlite)?;
            Ok(matches!(removed, Some(expires_at) if expires_at.is_none_or(|at| at > now)))
        })
        .await
    }

    async fn sweep_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_writer(move |conn| {
            conn.prepare_cached(
                "DELETE FROM sessions WHERE (tenant, session_id) IN (
                   SELECT tenant, session_id FROM sessions
                   WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
            )
            .and_then(|mut stmt| stmt.execute(params![now, limit]))
            .map_err(from_sqlite)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_reader(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(from_sqlite))
            .await
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
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

async fn run_blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("blocking task failed: {e}")))?
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
