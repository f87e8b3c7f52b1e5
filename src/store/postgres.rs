//! `postgres://`: one row per session, shared by any number of service instances. The
//! conditional write is one statement (`UPDATE ... WHERE version = $v AND generation = $g` or
//! `INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`), so there are no table locks and no
//! lost updates. The conditional delete (`DELETE ... WHERE version = $v AND generation = $g`)
//! and moving an expiry (`UPDATE sessions SET expires_at = $e WHERE version = $v AND
//! generation = $g`, which touches no other column) are one statement each too. Migrations
//! run at start under sqlx's advisory lock, so instances may start together. Every call is
//! bounded by the statement timeout, also on the client side, so an unreachable database
//! answers 503 instead of hanging. A customer's sessions are found through columns
//! `customer_id` and `modified_at` and an index on them (migration `0003_customer_index.sql`):
//! a page is one statement, a delete of them all one `DELETE ... RETURNING`.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::url::PostgresOptions;
use super::{
    CustomerKey, CustomerSessions, Expect, Page, RemovedSession, Revision, SQL_COLUMNS, SessionKey, SessionStore,
    SqlRow, StoreError, StoredSession, sql_version,
};
use crate::clock::Millis;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Sessions in a PostgreSQL table.
pub struct PostgresStore {
    pool: PgPool,
    timeout: Duration,
}

impl PostgresStore {
    /// Connects, and brings the schema up to date.
    pub async fn open(options: &PostgresOptions) -> Result<Self, StoreError> {
        let statement_ms = options.statement_timeout.as_millis().to_string();
        let connect = PgConnectOptions::from_str(&options.url)
            .map_err(|e| StoreError::Backend(format!("invalid postgres URL: {e}")))?
            .application_name("session-context")
            .options([("statement_timeout", statement_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size)
            .acquire_timeout(options.connect_timeout)
            // sqlx pings every pooled connection before lending it: a second round trip per
            // query. A broken connection shows itself on the query instead (503, and sqlx
            // drops it), so the ping buys nothing here.
            .test_before_acquire(false)
            .connect_with(connect)
            .await
            .map_err(from_sqlx)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrations failed: {e}")))?;
        Ok(PostgresStore {
            pool,
            // The client-side guard covers waiting for a connection plus the statement itself.
            timeout: options.connect_timeout + options.statement_timeout,
        })
    }

    async fn bounded<T>(&self, work: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result.map_err(from_sqlx),
            Err(_) => Err(StoreError::Unavailable("postgres did not answer in time".into())),
        }
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn load(&self, key: &SessionKey, now: Millis) -> Result<Option<StoredSession>, StoreError> {
        let row: Option<SqlRow> = self
            .bounded(
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {SQL_COLUMNS} FROM sessions
                     WHERE tenant = $1 AND session_id = $2 AND (expires_at IS NULL OR expires_at > $3)"
                )))
                .bind(&key.tenant)
                .bind(&key.session_id)
                .bind(now)
                .fetch_optional(&self.pool),
            )
            .await?;
        row.map(StoredSession::from_sql).transpose()
    }

    async fn write(
        &self,
        key: &SessionKey,
        expect: Expect,
        record: &StoredSession,
        now: Millis,
    ) -> Result<(), StoreError> {
        let version = sql_version(record.version)?;
        let query = match expect {
            Expect::Current {
                version: expected,
                generation,
            } => sqlx::query(
                "UPDATE sessions SET version = $3, expires_at = $4, doc = $5, generation = $9,
                   customer_id = $10, modified_at = $11
                 WHERE tenant = $1 AND session_id = $2 AND version = $6 AND generation = $7
                   AND (expires_at IS NULL OR expires_at > $8)",
            )
            .bind(&key.tenant)
            .bind(&key.session_id)
            .bind(version)
            .bind(record.expires_at)
            .bind(&record.doc)
            .bind(sql_version(expected).unwrap_or(-1))
            .bind(generation)
            .bind(now)
            .bind(record.generation)
            .bind(&record.customer)
            .bind(record.modified_at),
            Expect::Absent => sqlx::query(
                "INSERT INTO sessions (tenant, session_id, version, generation, expires_at, doc,
                     customer_id, modified_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $8, $9)
                 ON CONFLICT (tenant, session_id) DO UPDATE
                   SET version = EXCLUDED.version, generation = EXCLUDED.generation,
                       expires_at = EXCLUDED.expires_at, doc = EXCLUDED.doc,
                       customer_id = EXCLUDED.customer_id, modified_at = EXCLUDED.modified_at
                 WHERE sessions.expires_at IS NOT NULL AND sessions.expires_at <= $7",
            )
            .bind(&key.tenant)
            .bind(&key.session_id)
            .bind(version)
            .bind(record.generation)
            .bind(record.expires_at)
            .bind(&record.doc)
            .bind(now)
            .bind(&record.customer)
            .bind(record.modified_at),
        };
        let done = self.bounded(query.execute(&self.pool)).await?;
        StoreError::unless_held(done.rows_affected() == 1)
    }

    async fn delete(&self, key: &SessionKey, revision: Revision, now: Millis) -> Result<(), StoreError> {
        let done = self
            .bounded(
                sqlx::query(
                    "DELETE FROM sessions WHERE tenant = $1 AND session_id = $2 AND version = $3
                       AND generation = $4 AND (expires_at IS NULL OR expires_at > $5)",
                )
                .bind(&key.tenant)
                .bind(&key.session_id)
                .bind(sql_version(revision.version).unwrap_or(-1))
                .bind(revision.generation)
                .bind(now)
                .execute(&self.pool),
            )
            .await?;
        StoreError::unless_held(done.rows_affected() == 1)
    }

    async fn extend(
        &self,
        key: &SessionKey,
        revision: Revision,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let done = self
            .bounded(
                sqlx::query(
                    "UPDATE sessions SET expires_at = $3
                     WHERE tenant = $1 AND session_id = $2 AND version = $4 AND generation = $5
                       AND (expires_at IS NULL OR expires_at > $6)",
                )
                .bind(&key.tenant)
                .bind(&key.session_id)
                .bind(expires_at)
                .bind(sql_version(revision.version).unwrap_or(-1))
                .bind(revision.generation)
                .bind(now)
                .execute(&self.pool),
            )
            .await?;
        StoreError::unless_held(done.rows_affected() == 1)
    }

    /// One statement, hence one snapshot: the count (over the index `sessions_customer`) joined
    /// with the page (`LIMIT`/`OFFSET` along that index), so that an empty page still carries
    /// the total.
    async fn list_customer_sessions(
        &self,
        customer: &CustomerKey,
        page: Page,
        now: Millis,
    ) -> Result<CustomerSessions, StoreError> {
        type Row = (
            i64,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<i64>,
        );
        let rows: Vec<Row> = self
            .bounded(
                sqlx::query_as(
                    "WITH mine AS NOT MATERIALIZED (
                       SELECT * FROM sessions WHERE tenant = $1 AND customer_id = $2
                         AND (expires_at IS NULL OR expires_at > $3))
                     SELECT total.n, p.session_id, p.version, p.generation, p.expires_at, p.doc,
                            p.customer_id, p.modified_at
                     FROM (SELECT count(*) AS n FROM mine) AS total
                     LEFT JOIN LATERAL (
                       SELECT * FROM mine ORDER BY modified_at DESC, session_id LIMIT $4 OFFSET $5
                     ) AS p ON true",
                )
                .bind(&customer.tenant)
                .bind(&customer.customer_id)
                .bind(now)
                .bind(i64::try_from(page.limit).unwrap_or(i64::MAX))
                .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
                .fetch_all(&self.pool),
            )
            .await?;
        let total = rows.first().map_or(0, |row| u64::try_from(row.0).unwrap_or(0));
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            let (_, Some(id), Some(version), Some(generation), expires_at, Some(doc), customer, Some(modified_at)) =
                row
            else {
                continue; // the one row of an empty page
            };
            let record = StoredSession::from_sql((version, generation, expires_at, doc, customer, modified_at))?;
            sessions.push((id, record));
        }
        Ok(CustomerSessions { sessions, total })
    }

    /// One `DELETE ... RETURNING`: atomic, also across a crash. A row updated meanwhile by
    /// another transaction is checked again after that one commits (PostgreSQL re-reads it
    /// under `READ COMMITTED`), so a session that became someone else's is left alone; a row
    /// inserted after the statement began is not seen.
    async fn delete_customer_sessions(
        &self,
        customer: &CustomerKey,
        except: Option<&str>,
        now: Millis,
    ) -> Result<Vec<RemovedSession>, StoreError> {
        let rows: Vec<(String, i64, i64, Option<i64>)> = self
            .bounded(
                sqlx::query_as(
                    "DELETE FROM sessions
                     WHERE tenant = $1 AND customer_id = $2 AND session_id IS DISTINCT FROM $3
                     RETURNING session_id, version, generation, expires_at",
                )
                .bind(&customer.tenant)
                .bind(&customer.customer_id)
                .bind(except)
                .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, _, _, expires_at)| expires_at.is_none_or(|at| at > now))
            .map(|(session_id, version, generation, _)| RemovedSession {
                session_id,
                revision: Revision {
                    version: u64::try_from(version).unwrap_or(0),
                    generation,
                },
            })
            .collect())
    }

    async fn sweep_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        // SKIP LOCKED: instances sweeping at once take different rows and never wait on each
        // other or on a request that is updating one of them.
        let done = self
            .bounded(
                sqlx::query(
                    "DELETE FROM sessions WHERE (tenant, session_id) IN (
                       SELECT tenant, session_id FROM sessions
                       WHERE expires_at IS NOT NULL AND expires_at <= $1
                       LIMIT $2 FOR UPDATE SKIP LOCKED)",
                )
                .bind(now)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .execute(&self.pool),
            )
            .await?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }

    fn set_event_destinations(&self, destinations: u16) {
        // TODO(outbox): events on this store are being built; refuse them until then.
        assert!(destinations == 0, "events are not supported on this store yet");
    }

    async fn claim_events(
        &self,
        _owner: &str,
        _limit: usize,
        _lease: Millis,
        _now: Millis,
    ) -> Result<Vec<super::outbox::PendingEvent>, StoreError> {
        Ok(Vec::new())
    }

    async fn settle_event(&self, _entry: &str, _settlement: &super::outbox::Settlement) -> Result<(), StoreError> {
        Ok(())
    }

    async fn outbox_stats(&self) -> Result<super::outbox::OutboxStats, StoreError> {
        Ok(super::outbox::OutboxStats::default())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }
}

fn from_sqlx(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err.to_string()),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exceptions, 53: insufficient resources, 57: operator
            // intervention (shutdown, statement timeout), 40001/40P01: retryable conflicts.
            if code.starts_with("08") || code.starts_with("53") || code.starts_with("57") || code.starts_with("40") {
                StoreError::Unavailable(err.to_string())
            } else {
                StoreError::Backend(err.to_string())
            }
        }
        _ => StoreError::Backend(err.to_string()),
    }
}
