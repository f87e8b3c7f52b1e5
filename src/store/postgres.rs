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
//!
//! With events on (see "The outbox" in docs/ARCHITECTURE.md), each change is still one
//! statement: its conditional `UPDATE`/`INSERT`/`DELETE` is a data-modifying CTE feeding the
//! `INSERT` of its outbox rows, so both commit together or not at all. Instances claim due
//! entries with `FOR UPDATE SKIP LOCKED`, only the oldest of each destination and session. With
//! events off every change runs exactly the statement it ran before.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::outbox::{EventRecord, OutboxStats, PendingEvent, Settlement};
use super::url::PostgresOptions;
use super::{
    CustomerKey, CustomerSessions, Expect, Page, RemovedSession, Revision, SQL_COLUMNS, SQL_OUTBOX_COLUMNS, SessionKey,
    SessionStore, SqlOutboxRow, SqlRow, StoreError, StoredSession, pending_from_sql, sql_entry, sql_version,
};
use crate::clock::Millis;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Sessions in a PostgreSQL table.
pub struct PostgresStore {
    pool: PgPool,
    timeout: Duration,
    /// How many event destinations the outbox records for (0 = events off).
    events: AtomicU16,
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
            events: AtomicU16::new(0),
        })
    }

    /// How many event destinations changes record for now.
    fn events(&self) -> u16 {
        self.events.load(Ordering::Relaxed)
    }

    async fn bounded<T>(&self, work: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result.map_err(from_sqlx),
            Err(_) => Err(StoreError::Unavailable("postgres did not answer in time".into())),
        }
    }

    /// `write` with events on: still one statement, whose data-modifying steps feed the
    /// `INSERT` of the outbox rows, so the change and its events commit together or not at all.
    /// A condition that fails changes nothing and records nothing; the statement's outbox rows
    /// tell whether it held.
    async fn write_recording(
        &self,
        key: &SessionKey,
        expect: Expect,
        record: &StoredSession,
        now: Millis,
        events: u16,
    ) -> Result<(), StoreError> {
        let version = sql_version(record.version)?;
        let query = match expect {
            Expect::Current {
                version: expected,
                generation,
            } => sqlx::query(
                "WITH changed AS (
                   UPDATE sessions SET version = $3, expires_at = $4, doc = $5, generation = $9,
                     customer_id = $10, modified_at = $11
                   WHERE tenant = $1 AND session_id = $2 AND version = $6 AND generation = $7
                     AND (expires_at IS NULL OR expires_at > $8)
                   RETURNING version, customer_id, doc)
                 INSERT INTO outbox (destination, tenant, session_id, event_id, kind, version, customer_id,
                     doc, event_time, recorded_at, next_attempt_at)
                 SELECT d, $1, $2, $12, 'updated', c.version, c.customer_id, c.doc, $8, $8,
                   GREATEST($8, (
                     SELECT w.next_attempt_at FROM outbox AS w
                     WHERE w.destination = d AND w.tenant = $1 AND w.session_id = $2
                     ORDER BY w.seq LIMIT 1))
                 FROM changed AS c CROSS JOIN generate_series(0, $13 - 1) AS d",
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
            .bind(record.modified_at)
            .bind(EventRecord::new_id()?)
            .bind(i32::from(events)),
            // The record replaced, if expired, is read and locked (`old`, `FOR UPDATE`: the
            // latest version of the row, rechecked) and then overwritten (`replaced`), so that
            // its last version and customer are those of the record that really ends, never
            // one a concurrent writer changed meanwhile; with no expired record the session is
            // inserted (`inserted`), and a live one makes the insert do nothing (a conflict).
            // The expired record's end comes before the new life's creation (`ORDER BY`).
            Expect::Absent => sqlx::query(
                "WITH old AS (
                   SELECT version, customer_id, expires_at FROM sessions
                   WHERE tenant = $1 AND session_id = $2 AND expires_at IS NOT NULL AND expires_at <= $7
                   FOR UPDATE),
                 replaced AS (
                   UPDATE sessions AS s SET version = $3, generation = $4, expires_at = $5, doc = $6,
                     customer_id = $8, modified_at = $9
                   FROM old WHERE s.tenant = $1 AND s.session_id = $2
                   RETURNING old.version, old.customer_id, old.expires_at),
                 inserted AS (
                   INSERT INTO sessions (tenant, session_id, version, generation, expires_at, doc,
                       customer_id, modified_at)
                   SELECT $1, $2, $3, $4, $5, $6, $8, $9 WHERE NOT EXISTS (SELECT FROM old)
                   ON CONFLICT (tenant, session_id) DO NOTHING
                   RETURNING version),
                 happened (ord, event_id, kind, version, customer_id, doc, event_time) AS (
                   SELECT 0, $10, 'expired', r.version, r.customer_id, NULL, r.expires_at FROM replaced AS r
                   UNION ALL
                   SELECT 1, $11, 'created', $3, $8, $6, $7
                   WHERE EXISTS (SELECT FROM replaced) OR EXISTS (SELECT FROM inserted))
                 INSERT INTO outbox (destination, tenant, session_id, event_id, kind, version, customer_id,
                     doc, event_time, recorded_at, next_attempt_at)
                 SELECT d, $1, $2, h.event_id, h.kind, h.version, h.customer_id, h.doc, h.event_time, $7,
                   GREATEST($7, (
                     SELECT w.next_attempt_at FROM outbox AS w
                     WHERE w.destination = d AND w.tenant = $1 AND w.session_id = $2
                     ORDER BY w.seq LIMIT 1))
                 FROM happened AS h CROSS JOIN generate_series(0, $12 - 1) AS d
                 ORDER BY h.ord, d",
            )
            .bind(&key.tenant)
            .bind(&key.session_id)
            .bind(version)
            .bind(record.generation)
            .bind(record.expires_at)
            .bind(&record.doc)
            .bind(now)
            .bind(&record.customer)
            .bind(record.modified_at)
            .bind(EventRecord::new_id()?)
            .bind(EventRecord::new_id()?)
            .bind(i32::from(events)),
        };
        let done = self.bounded(query.execute(&self.pool)).await?;
        StoreError::unless_held(done.rows_affected() > 0)
    }

    /// `sweep_expired` with events on: the same `DELETE` (rows taken `FOR UPDATE SKIP LOCKED`),
    /// feeding the `INSERT` of an `expired` event per row in the same statement.
    async fn sweep_recording(&self, now: Millis, limit: usize, events: u16) -> Result<usize, StoreError> {
        let (swept,): (i64,) = self
            .bounded(
                sqlx::query_as(
                    "WITH gone AS (
                       DELETE FROM sessions WHERE (tenant, session_id) IN (
                         SELECT tenant, session_id FROM sessions
                         WHERE expires_at IS NOT NULL AND expires_at <= $1
                         LIMIT $2 FOR UPDATE SKIP LOCKED)
                       RETURNING tenant, session_id, version, customer_id, expires_at),
                     ended AS MATERIALIZED (
                       SELECT g.*, gen_random_uuid()::text AS event_id FROM gone AS g),
                     recorded AS (
                       INSERT INTO outbox (destination, tenant, session_id, event_id, kind, version,
                           customer_id, event_time, recorded_at, next_attempt_at)
                       SELECT d, e.tenant, e.session_id, e.event_id, 'expired', e.version, e.customer_id,
                              COALESCE(e.expires_at, $1), $1,
                              GREATEST($1, (
                                SELECT w.next_attempt_at FROM outbox AS w
                                WHERE w.destination = d AND w.tenant = e.tenant AND w.session_id = e.session_id
                                ORDER BY w.seq LIMIT 1))
                       FROM ended AS e CROSS JOIN generate_series(0, $3 - 1) AS d)
                     SELECT count(*) FROM gone",
                )
                .bind(now)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(i32::from(events))
                .fetch_one(&self.pool),
            )
            .await?;
        Ok(usize::try_from(swept).unwrap_or(0))
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
        let events = self.events();
        if events > 0 {
            return self.write_recording(key, expect, record, now, events).await;
        }
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

    /// With events, one statement still: the `DELETE ... RETURNING` feeds the `INSERT` of its
    /// outbox rows (nothing when the condition fails).
    async fn delete(&self, key: &SessionKey, revision: Revision, now: Millis) -> Result<(), StoreError> {
        let events = self.events();
        let query = if events == 0 {
            sqlx::query(
                "DELETE FROM sessions WHERE tenant = $1 AND session_id = $2 AND version = $3
                   AND generation = $4 AND (expires_at IS NULL OR expires_at > $5)",
            )
        } else {
            sqlx::query(
                "WITH gone AS (
                   DELETE FROM sessions WHERE tenant = $1 AND session_id = $2 AND version = $3
                     AND generation = $4 AND (expires_at IS NULL OR expires_at > $5)
                   RETURNING version, customer_id)
                 INSERT INTO outbox (destination, tenant, session_id, event_id, kind, version, customer_id,
                     event_time, recorded_at, next_attempt_at)
                 SELECT d, $1, $2, $6, 'deleted', g.version, g.customer_id, $5, $5,
                   GREATEST($5, (
                     SELECT w.next_attempt_at FROM outbox AS w
                     WHERE w.destination = d AND w.tenant = $1 AND w.session_id = $2
                     ORDER BY w.seq LIMIT 1))
                 FROM gone AS g CROSS JOIN generate_series(0, $7 - 1) AS d",
            )
        };
        let query = query
            .bind(&key.tenant)
            .bind(&key.session_id)
            .bind(sql_version(revision.version).unwrap_or(-1))
            .bind(revision.generation)
            .bind(now);
        let query = if events == 0 {
            query
        } else {
            query.bind(EventRecord::new_id()?).bind(i32::from(events))
        };
        let done = self.bounded(query.execute(&self.pool)).await?;
        // Without events the one row deleted, with events its outbox rows.
        StoreError::unless_held(done.rows_affected() == u64::from(events.max(1)))
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
        let events = self.events();
        let query = if events == 0 {
            sqlx::query_as(
                "DELETE FROM sessions
                 WHERE tenant = $1 AND customer_id = $2 AND session_id IS DISTINCT FROM $3
                 RETURNING session_id, version, generation, expires_at",
            )
        } else {
            // With events, the same statement records one event per row removed (its id drawn
            // once per row, in a materialized step, so every destination gets the same id).
            sqlx::query_as(
                "WITH gone AS (
                   DELETE FROM sessions
                   WHERE tenant = $1 AND customer_id = $2 AND session_id IS DISTINCT FROM $3
                   RETURNING session_id, version, generation, expires_at, customer_id),
                 ended AS MATERIALIZED (
                   SELECT g.session_id, g.version, g.customer_id, gen_random_uuid()::text AS event_id,
                          CASE WHEN g.expires_at IS NULL OR g.expires_at > $4 THEN 'deleted' ELSE 'expired' END
                            AS kind,
                          CASE WHEN g.expires_at IS NULL OR g.expires_at > $4 THEN $4 ELSE g.expires_at END
                            AS event_time
                   FROM gone AS g),
                 recorded AS (
                   INSERT INTO outbox (destination, tenant, session_id, event_id, kind, version, customer_id,
                       event_time, recorded_at, next_attempt_at)
                   SELECT d, $1, e.session_id, e.event_id, e.kind, e.version, e.customer_id, e.event_time, $4,
                     GREATEST($4, (
                       SELECT w.next_attempt_at FROM outbox AS w
                       WHERE w.destination = d AND w.tenant = $1 AND w.session_id = e.session_id
                       ORDER BY w.seq LIMIT 1))
                   FROM ended AS e CROSS JOIN generate_series(0, $5 - 1) AS d)
                 SELECT session_id, version, generation, expires_at FROM gone",
            )
        };
        let query = query.bind(&customer.tenant).bind(&customer.customer_id).bind(except);
        let query = if events == 0 {
            query
        } else {
            query.bind(now).bind(i32::from(events))
        };
        let rows: Vec<(String, i64, i64, Option<i64>)> = self.bounded(query.fetch_all(&self.pool)).await?;
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
        let events = self.events();
        if events > 0 {
            return self.sweep_recording(now, limit, events).await;
        }
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
        self.events.store(destinations, Ordering::Relaxed);
    }

    /// One statement: the candidates (the oldest row of each destination and session, due,
    /// not held by another owner's running claim), locked `FOR UPDATE SKIP LOCKED` up to the
    /// limit, the longest due first, then marked as this owner's. The walk follows `outbox_due`
    /// and stops at the limit: the rows behind a session's oldest one are not due before it
    /// (they are recorded, and moved on a retry, with its next attempt), so a backlog behind a
    /// receiver that is down is not walked at every claim. A row another instance is claiming
    /// at the same moment is locked, hence skipped; one it claimed just before is rechecked
    /// after its commit (`READ COMMITTED`) and no longer qualifies. The "oldest" test sees
    /// older rows whether locked or not, so a session whose oldest row is being claimed
    /// elsewhere yields nothing here: never its next row.
    async fn claim_events(
        &self,
        owner: &str,
        limit: usize,
        lease: Millis,
        now: Millis,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        let mut rows: Vec<SqlOutboxRow> = self
            .bounded(
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "WITH picked AS (
                       SELECT c.seq AS picked_seq FROM outbox AS c
                       WHERE c.next_attempt_at <= $3
                         AND (c.claim_owner IS NULL OR c.claim_owner = $1 OR c.claimed_until <= $3)
                         AND NOT EXISTS (
                           SELECT FROM outbox AS older
                           WHERE older.destination = c.destination AND older.tenant = c.tenant
                             AND older.session_id = c.session_id AND older.seq < c.seq)
                       ORDER BY c.next_attempt_at, c.seq
                       LIMIT $4
                       FOR UPDATE OF c SKIP LOCKED)
                     UPDATE outbox SET claim_owner = $1, claimed_until = $2
                     WHERE seq = ANY (ARRAY (SELECT picked_seq FROM picked))
                     RETURNING {SQL_OUTBOX_COLUMNS}"
                )))
                .bind(owner)
                .bind(now.saturating_add(lease))
                .bind(now)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool),
            )
            .await?;
        rows.sort_by_key(|row| row.0);
        rows.into_iter().map(pending_from_sql).collect()
    }

    async fn settle_event(&self, entry: &str, settlement: &Settlement) -> Result<(), StoreError> {
        let seq = sql_entry(entry)?;
        let query = match settlement {
            Settlement::Done => sqlx::query("DELETE FROM outbox WHERE seq = $1").bind(seq),
            // The rows behind it wait with it (see `claim_events`): they were never claimed.
            Settlement::Retry { .. } | Settlement::Release { .. } => sqlx::query(
                "UPDATE outbox AS o SET attempts = o.attempts + CASE WHEN o.seq = $1 AND $3 THEN 1 ELSE 0 END,
                   next_attempt_at = $2, claim_owner = NULL, claimed_until = NULL
                 FROM outbox AS h
                 WHERE h.seq = $1 AND o.destination = h.destination AND o.tenant = h.tenant
                   AND o.session_id = h.session_id AND o.seq >= $1",
            )
            .bind(seq)
            .bind(settlement.again().unwrap_or_default().0)
            .bind(settlement.again().unwrap_or_default().1),
        };
        self.bounded(query.execute(&self.pool)).await.map(|_| ())
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let (pending, oldest_recorded_at): (i64, Option<Millis>) = self
            .bounded(sqlx::query_as("SELECT count(*), min(recorded_at) FROM outbox").fetch_one(&self.pool))
            .await?;
        Ok(OutboxStats {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest_recorded_at,
        })
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
