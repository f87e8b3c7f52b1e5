//! `sqlite://PATH`: an embedded database in one file, in WAL mode with `synchronous=FULL`, so
//! that every acknowledged write is on disk before the answer leaves (it survives `kill -9`
//! and power loss). Reads run right on the async threads with a pooled connection. Writes go to
//! one writer thread that commits them in groups: it takes every write waiting for it, runs
//! them in one transaction and answers them all after one commit, so many concurrent writers
//! share one fsync instead of queueing for one each. Each change in a group is still its own
//! conditional statement, applied in arrival order: a write is `UPDATE ... WHERE version = ?`
//! or `INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`, a delete `DELETE ... WHERE version
//! = ? AND generation = ?`, and moving an expiry `UPDATE sessions SET expires_at = ? WHERE
//! version = ? AND generation = ?` (only that column: version, generation and document stay).
//! Moving an expiry is a write like any other here, so it goes through the writer thread, the
//! group commit and the file checks below before it is acknowledged.
//! A customer's sessions are found through columns `customer_id` and `modified_at` and an index
//! on them (the fourth migration): a page is read in one read transaction (count, then
//! `LIMIT`/`OFFSET` along the index), and a delete of them all is one `DELETE ... RETURNING`
//! job of the writer thread, atomic like every other.
//!
//! **The outbox** (with events on; see "The outbox" in docs/ARCHITECTURE.md): a job that changes
//! a session also writes the change's entries into table `outbox`, right after its conditional
//! statement and only when that statement changed a row, so they commit (or roll back) with the
//! change in the group's transaction. Claims and settlements are jobs of the writer too: one
//! writer, so two claims never take the same entry. With events off the jobs run exactly the
//! statements they ran before.
//!
//! **The file under the service.** SQLite keeps writing to the file it opened even after that
//! file was deleted, or another one renamed over its path: the writes succeed, and are gone at
//! the next start, which opens whatever the path names then. So the store remembers which file
//! it opened (device and inode, and those of its WAL) and, after every group commit and before
//! answering the group, checks that the paths still name those files. Checking after the commit
//! closes the race: a delete that lands before the commit has finished is seen by the check, so
//! no write that went to a deleted or replaced file is acknowledged (its writes answer
//! `Unavailable`, a 503 whose outcome is unknown, as the contract says). From then on the store
//! refuses everything (writes, reads, sweeps, the ping) until the service is restarted on a
//! file an operator chose: it never opens the path again by itself, which would silently serve
//! an empty or restored database. Reads are refused too because they could no longer be
//! consistent: pooled connections still see the old file, but a connection the pool opens anew
//! would see the replacement (reading connections never create a file, so a deleted database is
//! not recreated empty by a read). Between the delete and its detection (the next commit or the
//! next readiness check) reads still come from the old file, which holds what was acknowledged,
//! or, on a connection the pool happened to open meanwhile, from the replacement. Once the loss
//! is seen, the writer also empties the WAL it leaves at its path and keeps its connection open
//! until the process ends (see [`retire`]), so that a restart cannot replay that WAL into
//! whatever file the path names then.
//!
//! **A disk that refuses writes.** Readiness (`ping`) is not a `SELECT 1`: it checks the files
//! as above, then writes a probe of at least [`PROBE_FLOOR`] (more if a larger record was ever
//! written, or twice what the last group that failed for lack of room needed) to a file next
//! to the database that is unlinked at once and never synced. A tiny write to the database
//! itself would prove nothing: the WAL reuses its own space after a checkpoint, so a small
//! commit can succeed while any write that needs the file to grow fails. The probe only asks
//! the file system for room (tmpfs allocates at once; ext4, XFS and btrfs reserve blocks at
//! write time), and it is gone before the kernel would write it back, so it usually costs no
//! disk I/O. Its result is kept for [`READINESS_TTL`], so callers hammering `/health/ready` cost
//! at most two probes a second. A group commit that fails with a full disk or an I/O error makes
//! a kept "ready" stale (after [`RECHECK_AT_LEAST_AFTER`]), so readiness turns 503 at once; once
//! the probe finds room again readiness is 200 and writes work, without a restart. The probe is an
//! estimate: with less room than the floor free, readiness is 503 a little before writes
//! fail; a write needing more than its estimate can still fail while readiness says 200, and
//! then it answers 503 and the next probe asks for twice its size.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, mpsc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::outbox::{EventKind, EventRecord, OutboxStats, PendingEvent, Settlement};
use super::{
    CustomerKey, CustomerSessions, Expect, Page, RemovedSession, Revision, SQL_COLUMNS, SQL_OUTBOX_COLUMNS, SessionKey,
    SessionStore, SqlOutboxRow, SqlRow, StoreError, StoredSession, pending_from_sql, sql_entry, sql_version,
};
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
    // A customer's sessions, newest first (see "The customer index" in docs/ARCHITECTURE.md):
    // the customer and the modification time as columns of their own, filled in for the rows
    // written before from their document (`modifiedAt` is always `YYYY-MM-DDTHH:MM:SS.mmmZ`:
    // whole seconds from strftime, the milliseconds from characters 21 to 23). A document that
    // is not JSON (never written by the service) gets no customer and time 0.
    "ALTER TABLE sessions ADD COLUMN customer_id TEXT;
    ALTER TABLE sessions ADD COLUMN modified_at INTEGER NOT NULL DEFAULT 0;
    UPDATE sessions SET
        customer_id = CASE WHEN json_valid(doc) THEN
            CASE WHEN json_type(doc, '$.customerId') = 'text' THEN json_extract(doc, '$.customerId') END END,
        modified_at = COALESCE(CASE WHEN json_valid(doc) THEN
            CASE WHEN json_type(doc, '$.metadata.modifiedAt') = 'text' THEN
                CAST(strftime('%s', json_extract(doc, '$.metadata.modifiedAt')) AS INTEGER) * 1000
                + CAST(substr(json_extract(doc, '$.metadata.modifiedAt'), 21, 3) AS INTEGER) END END, 0);
    CREATE INDEX sessions_customer ON sessions (tenant, customer_id, modified_at DESC, session_id)
        WHERE customer_id IS NOT NULL;",
    // The outbox (see "The outbox" in docs/ARCHITECTURE.md): one row per event and destination,
    // written in the transaction of the change it tells of. `seq` is the order of the changes;
    // AUTOINCREMENT so that a number is never used twice (a late settlement of an entry must not
    // hit a newer one). The claim walks due rows in `outbox_due` order and keeps the oldest row
    // of each (destination, session), found through `outbox_session`.
    "CREATE TABLE outbox (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        destination     INTEGER NOT NULL,
        tenant          TEXT    NOT NULL,
        session_id      TEXT    NOT NULL,
        event_id        TEXT    NOT NULL,
        kind            TEXT    NOT NULL,
        version         INTEGER NOT NULL,
        customer_id     TEXT,
        doc             TEXT,
        event_time      INTEGER NOT NULL,
        recorded_at     INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        claim_owner     TEXT,
        claimed_until   INTEGER
    );
    CREATE INDEX outbox_session ON outbox (destination, tenant, session_id, seq);
    CREATE INDEX outbox_due ON outbox (next_attempt_at, seq);",
];

const BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 5000;";

/// Most writes committed together; bounds how long one commit holds the others.
const MAX_GROUP: usize = 256;

/// The least room the readiness probe asks the file system for.
const PROBE_FLOOR: u64 = 1 << 20;

/// The most it asks for, whatever was written before.
const PROBE_CEILING: u64 = 64 << 20;

/// How long a readiness result is kept (unless a group commit fails meanwhile).
const READINESS_TTL: Duration = Duration::from_millis(500);

/// How long a "ready" is kept at least, even when group commits fail meanwhile: bounds how
/// often failing writes can make the probe run.
const RECHECK_AT_LEAST_AFTER: Duration = Duration::from_millis(50);

/// What one job is reckoned to add to the WAL besides its document: a few frames of a page
/// each (the row's leaf, the leaves of both indexes, a parent on a split).
const JOB_OVERHEAD: u64 = 4 * (4096 + 24);

/// A job for the writer thread. Every answer is a count (0 or 1 for a write, a delete or an
/// extend, 1 = done; the number removed for a sweep; the entries settled) except a customer's
/// delete's, which is the list of the live sessions it removed, and a claim's, the entries
/// claimed. `events` is the number of event destinations when the job was made: with 0, a change
/// runs exactly the statements it ran before the outbox; else its outbox rows are written by the
/// same job, hence in the same transaction.
enum Job {
    Write {
        key: SessionKey,
        expect: Expect,
        record: StoredSession,
        now: Millis,
        events: u16,
    },
    Delete {
        key: SessionKey,
        revision: Revision,
        now: Millis,
        events: u16,
    },
    Extend {
        key: SessionKey,
        revision: Revision,
        expires_at: Option<Millis>,
        now: Millis,
    },
    Sweep {
        now: Millis,
        limit: i64,
        events: u16,
    },
    DeleteCustomer {
        customer: CustomerKey,
        except: Option<String>,
        now: Millis,
        events: u16,
    },
    /// Claims due outbox entries (see [`claim`]).
    Claim {
        owner: String,
        limit: i64,
        until: Millis,
        now: Millis,
    },
    /// Settles one outbox entry.
    Settle {
        seq: i64,
        settlement: Settlement,
    },
    /// Nothing to apply: wakes the writer up after the readiness check found the files lost,
    /// so that it retires the connection (see [`retire`]) before readiness answers.
    Retire,
}

/// What applying one job did.
enum Applied {
    Count(usize),
    Removed(Vec<RemovedSession>),
    Claimed(Vec<SqlOutboxRow>),
}

impl Applied {
    fn count(self) -> Result<usize, StoreError> {
        match self {
            Applied::Count(n) => Ok(n),
            Applied::Removed(_) | Applied::Claimed(_) => Err(StoreError::Backend(
                "the SQLite writer answered a count with a list".into(),
            )),
        }
    }
}

type Reply = oneshot::Sender<Result<Applied, StoreError>>;

impl Job {
    /// About how many bytes committing this job adds to the WAL.
    fn size(&self) -> u64 {
        match self {
            // With events, the document again in each outbox row.
            Job::Write { record, events, .. } => (JOB_OVERHEAD + record.doc.len() as u64) * (1 + u64::from(*events)),
            Job::Delete { events, .. } => JOB_OVERHEAD * (1 + u64::from(*events)),
            Job::Extend { .. }
            | Job::Sweep { .. }
            | Job::DeleteCustomer { .. }
            | Job::Claim { .. }
            | Job::Settle { .. } => JOB_OVERHEAD,
            Job::Retire => 0,
        }
    }
}

/// Sessions in an SQLite file.
pub struct SqliteStore {
    writer: mpsc::Sender<(Job, Reply)>,
    /// How many event destinations the outbox records for (0 = events off).
    events: AtomicU16,
    readers: r2d2::Pool<SqliteConnectionManager>,
    files: Arc<Files>,
    /// The last readiness result (one check runs at a time; callers meanwhile wait for it).
    readiness: tokio::sync::Mutex<Option<Readiness>>,
}

/// A readiness result, kept for [`READINESS_TTL`].
struct Readiness {
    at: Instant,
    /// [`Files::failures`] when it was found: once that moved, a "ready" is stale.
    failures: u64,
    result: Result<(), StoreError>,
}

impl Readiness {
    fn fresh(&self, failures: u64) -> bool {
        let age = self.at.elapsed();
        let unchanged = self.failures == failures || self.result.is_err();
        age < READINESS_TTL && (unchanged || age < RECHECK_AT_LEAST_AFTER)
    }
}

/// Which file is which: two paths name the same file when these match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    device: u64,
    inode: u64,
}

impl FileId {
    #[cfg(unix)]
    fn of(path: &Path) -> io::Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(FileId {
            device: meta.dev(),
            inode: meta.ino(),
        })
    }

    /// Without inodes only a deleted file is told apart, not a replaced one.
    #[cfg(not(unix))]
    fn of(path: &Path) -> io::Result<FileId> {
        std::fs::metadata(path).map(|_| FileId { device: 0, inode: 0 })
    }
}

/// The files the store has open, shared by the writer thread and the readiness check: whether
/// their paths still name them, and whether the disk still has room (see the module doc).
struct Files {
    /// The database as SQLite names it (symbolic links resolved), and its identity at open.
    database: PathBuf,
    database_id: FileId,
    /// The WAL next to it, and its identity at open (none if SQLite is not in WAL mode).
    wal: PathBuf,
    wal_id: Option<FileId>,
    /// Set once the paths name other files or none: why the store refuses everything.
    lost: OnceLock<String>,
    /// The size of the last group that failed for lack of room; 0 once a group commits.
    failed_group_size: AtomicU64,
    /// Group commits failed for lack of room so far (a kept readiness result is stale once
    /// this moved).
    failures: AtomicU64,
    /// The largest change committed or tried so far.
    largest_change: AtomicU64,
}

impl Files {
    /// Identifies the files `conn` has open, right after it opened them.
    fn of(conn: &Connection) -> Result<Files, StoreError> {
        let database = PathBuf::from(
            conn.path()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| StoreError::Unavailable("the SQLite database is not a file on disk".into()))?,
        );
        let database_id = FileId::of(&database)
            .map_err(|e| StoreError::Unavailable(format!("cannot examine {}: {e}", database.display())))?;
        let mut wal = database.clone().into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let wal_id = FileId::of(&wal).ok();
        Ok(Files {
            database,
            database_id,
            wal,
            wal_id,
            lost: OnceLock::new(),
            failed_group_size: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            largest_change: AtomicU64::new(0),
        })
    }

    /// `Unavailable` once the store has lost its files.
    fn refuse_if_lost(&self) -> Result<(), StoreError> {
        match self.lost.get() {
            Some(reason) => Err(StoreError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }

    /// Checks that the paths still name the files the store opened. When they name another
    /// file or none, the store is lost for good; when they cannot be examined (an I/O error),
    /// only this check fails.
    fn verify(&self) -> Result<(), StoreError> {
        self.refuse_if_lost()?;
        let checks = [(&self.database, Some(self.database_id)), (&self.wal, self.wal_id)];
        for (path, opened) in checks {
            let Some(opened) = opened else { continue };
            let problem = match FileId::of(path) {
                Ok(now) if now == opened => continue,
                Ok(_) => "was replaced by another file",
                Err(e) if e.kind() == io::ErrorKind::NotFound => "was deleted",
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "cannot check that {} is still the open database file: {e}",
                        path.display()
                    )));
                }
            };
            let reason = format!(
                "{} {problem} under the running service; it takes no write until restarted",
                path.display()
            );
            if self.lost.set(reason.clone()).is_ok() {
                tracing::error!(%reason, "the SQLite database file is gone");
            }
            return self.refuse_if_lost();
        }
        Ok(())
    }

    /// Records how the commit of `group` went.
    fn record_commit(&self, group: &[(Job, Reply)], committed: &rusqlite::Result<Vec<Applied>>) {
        let largest = group.iter().map(|(job, _)| job.size()).max().unwrap_or(0);
        self.largest_change.fetch_max(largest, Ordering::Relaxed);
        match committed {
            Ok(_) if self.failed_group_size.load(Ordering::Relaxed) != 0 => {
                self.failed_group_size.store(0, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) if refuses_writes(e) => {
                let size = group.iter().map(|(job, _)| job.size()).sum();
                self.failed_group_size.store(size, Ordering::Relaxed);
                self.failures.fetch_add(1, Ordering::Release);
            }
            Err(_) => {}
        }
    }

    /// How much room the readiness probe asks for.
    fn probe_size(&self) -> u64 {
        let largest = self.largest_change.load(Ordering::Relaxed);
        let failed = self.failed_group_size.load(Ordering::Relaxed).saturating_mul(2);
        PROBE_FLOOR.max(largest).max(failed).min(PROBE_CEILING)
    }

    /// The readiness check proper (blocking): the files are still ours and the disk has room.
    fn check(&self) -> Result<(), StoreError> {
        self.verify()?;
        let dir = self.database.parent().unwrap_or(Path::new("."));
        let size = self.probe_size();
        probe_room(dir, size).map_err(|e| {
            StoreError::Unavailable(format!(
                "the disk under {} refuses a {size}-byte write: {e}",
                dir.display()
            ))
        })
    }
}

/// Incompressible bytes for the probe (zeros could be stored as a hole, or compressed away).
static NOISE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
});

/// Asks the file system under `dir` for `size` bytes: writes them to a new file that is
/// unlinked first (so nothing is left behind, even if the process dies meanwhile) and never
/// synced, then lets it go.
fn probe_room(dir: &Path, size: u64) -> io::Result<()> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".session-context-probe-{}-{n}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    // Where an open file cannot be unlinked, it is removed once closed.
    let unlinked = std::fs::remove_file(&path).is_ok();
    let mut left = size;
    let written = loop {
        if left == 0 {
            break Ok(());
        }
        let chunk = left.min(NOISE.len() as u64) as usize;
        if let Err(e) = file.write_all(&NOISE[..chunk]) {
            break Err(e);
        }
        left -= chunk as u64;
    };
    drop(file);
    if !unlinked {
        std::fs::remove_file(&path)?;
    }
    written
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
        let files = Arc::new(Files::of(&writer)?);
        // No SQLITE_OPEN_CREATE: a reading connection opened after the file was deleted must
        // fail, not create an empty database at its path.
        let manager = SqliteConnectionManager::file(path)
            .with_flags(
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .with_init(|c| c.execute_batch(&format!("{BUSY_TIMEOUT} PRAGMA query_only = 1;")));
        let readers = r2d2::Pool::builder()
            // More connections than the runtime has threads: an inline read never waits for one.
            .max_size(std::thread::available_parallelism().map_or(8, |n| n.get() * 2).max(8) as u32)
            .connection_timeout(Duration::from_secs(5))
            .build(manager)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (sender, receiver) = mpsc::channel();
        let writer_files = files.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_in_groups(writer, receiver, &writer_files))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            writer: sender,
            events: AtomicU16::new(0),
            readers,
            files,
            readiness: tokio::sync::Mutex::new(None),
        })
    }

    /// How many event destinations changes record for now.
    fn events(&self) -> u16 {
        self.events.load(Ordering::Relaxed)
    }

    /// Hands `job` to the writer thread and waits for its commit; its count.
    async fn submit(&self, job: Job) -> Result<usize, StoreError> {
        self.submit_job(job).await?.count()
    }

    /// Hands `job` to the writer thread and waits for its commit.
    async fn submit_job(&self, job: Job) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send((job, reply))
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the SQLite writer dropped a job".into()))?
    }

    /// Runs `f` on a pooled reading connection, right on the calling thread. A read by primary
    /// key in WAL mode takes microseconds and never waits for the writer, so handing it to a
    /// blocking thread would cost more than it saves. The pool has more connections than the
    /// runtime has threads, and a connection is never held across an `.await`, so getting one
    /// does not wait either. Refused once the store lost its file (see the module doc).
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.files.refuse_if_lost()?;
        let conn = self.readers.get().map_err(|e| StoreError::Unavailable(e.to_string()))?;
        f(&conn)
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn load(&self, key: &SessionKey, now: Millis) -> Result<Option<StoredSession>, StoreError> {
        self.with_reader(|conn| {
            let row = conn
                .prepare_cached(&format!(
                    "SELECT {SQL_COLUMNS} FROM sessions
                     WHERE tenant = ?1 AND session_id = ?2 AND (expires_at IS NULL OR expires_at > ?3)"
                ))
                .and_then(|mut stmt| {
                    stmt.query_row(params![key.tenant, key.session_id, now], |row| sql_row(row, 0))
                        .optional()
                })
                .map_err(from_sqlite)?;
            row.map(StoredSession::from_sql).transpose()
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
        let job = Job::Write {
            key: key.clone(),
            expect,
            record: record.clone(),
            now,
            events: self.events(),
        };
        StoreError::unless_held(self.submit(job).await? == 1)
    }

    async fn delete(&self, key: &SessionKey, revision: Revision, now: Millis) -> Result<(), StoreError> {
        let job = Job::Delete {
            key: key.clone(),
            revision,
            now,
            events: self.events(),
        };
        StoreError::unless_held(self.submit(job).await? == 1)
    }

    async fn extend(
        &self,
        key: &SessionKey,
        revision: Revision,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let job = Job::Extend {
            key: key.clone(),
            revision,
            expires_at,
            now,
        };
        StoreError::unless_held(self.submit(job).await? == 1)
    }

    /// The count and the page in one read transaction, hence from one snapshot; both walk the
    /// index `sessions_customer`, the page from `OFFSET` on (SQLite steps over the skipped
    /// entries of the index, without reading their documents).
    async fn list_customer_sessions(
        &self,
        customer: &CustomerKey,
        page: Page,
        now: Millis,
    ) -> Result<CustomerSessions, StoreError> {
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        let offset = i64::try_from(page.offset).unwrap_or(i64::MAX);
        self.with_reader(|conn| {
            let tx = conn.unchecked_transaction().map_err(from_sqlite)?;
            let live = "tenant = ?1 AND customer_id = ?2 AND (expires_at IS NULL OR expires_at > ?3)";
            let total: i64 = tx
                .prepare_cached(&format!("SELECT count(*) FROM sessions WHERE {live}"))
                .and_then(|mut stmt| stmt.query_row(params![customer.tenant, customer.customer_id, now], |r| r.get(0)))
                .map_err(from_sqlite)?;
            let rows: Vec<(String, SqlRow)> = tx
                .prepare_cached(&format!(
                    "SELECT session_id, {SQL_COLUMNS} FROM sessions WHERE {live}
                     ORDER BY modified_at DESC, session_id LIMIT ?4 OFFSET ?5"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(
                        params![customer.tenant, customer.customer_id, now, limit, offset],
                        |row| Ok((row.get(0)?, sql_row(row, 1)?)),
                    )?
                    .collect()
                })
                .map_err(from_sqlite)?;
            tx.finish().map_err(from_sqlite)?;
            let sessions = rows
                .into_iter()
                .map(|(id, row)| Ok((id, StoredSession::from_sql(row)?)))
                .collect::<Result<_, StoreError>>()?;
            Ok(CustomerSessions {
                sessions,
                total: u64::try_from(total).unwrap_or(0),
            })
        })
    }

    /// One `DELETE ... RETURNING` in one transaction: all of it or nothing, also across a
    /// crash.
    async fn delete_customer_sessions(
        &self,
        customer: &CustomerKey,
        except: Option<&str>,
        now: Millis,
    ) -> Result<Vec<RemovedSession>, StoreError> {
        let job = Job::DeleteCustomer {
            customer: customer.clone(),
            except: except.map(str::to_owned),
            now,
            events: self.events(),
        };
        match self.submit_job(job).await? {
            Applied::Removed(removed) => Ok(removed),
            Applied::Count(_) | Applied::Claimed(_) => Err(StoreError::Backend(
                "the SQLite writer answered a list of sessions with something else".into(),
            )),
        }
    }

    async fn sweep_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let events = self.events();
        self.submit(Job::Sweep { now, limit, events }).await
    }

    fn set_event_destinations(&self, destinations: u16) {
        self.events.store(destinations, Ordering::Relaxed);
    }

    /// One `UPDATE ... RETURNING` job of the writer thread: the claim is a write (it is made
    /// durable with the others of its group), and the writer applies one job at a time, so two
    /// claims never see the same entry unclaimed.
    async fn claim_events(
        &self,
        owner: &str,
        limit: usize,
        lease: Millis,
        now: Millis,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        let job = Job::Claim {
            owner: owner.to_owned(),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            until: now.saturating_add(lease),
            now,
        };
        let Applied::Claimed(mut rows) = self.submit_job(job).await? else {
            return Err(StoreError::Backend(
                "the SQLite writer answered a claim with something else".into(),
            ));
        };
        rows.sort_by_key(|row| row.0);
        rows.into_iter().map(pending_from_sql).collect()
    }

    async fn settle_event(&self, entry: &str, settlement: &Settlement) -> Result<(), StoreError> {
        let job = Job::Settle {
            seq: sql_entry(entry)?,
            settlement: settlement.clone(),
        };
        self.submit(job).await.map(|_| ())
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.with_reader(|conn| {
            let (pending, oldest_recorded_at): (i64, Option<Millis>) = conn
                .prepare_cached("SELECT count(*), min(recorded_at) FROM outbox")
                .and_then(|mut stmt| stmt.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
                .map_err(from_sqlite)?;
            Ok(OutboxStats {
                pending: u64::try_from(pending).unwrap_or(0),
                oldest_recorded_at,
            })
        })
    }

    /// Ready while the database files are still the ones opened, the disk has room for a
    /// write (both kept for [`READINESS_TTL`]) and a reading connection answers.
    async fn ping(&self) -> Result<(), StoreError> {
        self.files.refuse_if_lost()?;
        {
            let mut kept = self.readiness.lock().await;
            let failures = self.files.failures.load(Ordering::Acquire);
            match &*kept {
                Some(last) if last.fresh(failures) => last.result.clone()?,
                _ => {
                    let files = self.files.clone();
                    let result = tokio::task::spawn_blocking(move || files.check())
                        .await
                        .map_err(|e| StoreError::Backend(e.to_string()))?;
                    *kept = Some(Readiness {
                        at: Instant::now(),
                        failures,
                        result: result.clone(),
                    });
                    if self.files.lost.get().is_some() {
                        // Not ready, and not answered so before the writer has retired.
                        let _ = self.submit(Job::Retire).await;
                    }
                    result?
                }
            }
        }
        self.with_reader(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(from_sqlite))
    }
}

/// The writer thread: waits for a job, takes every other job already waiting (up to
/// `MAX_GROUP`), commits them in one transaction, checks that the database file is still the
/// one it opened, and only then answers each. Ends when the store is dropped.
fn write_in_groups(mut conn: Connection, jobs: mpsc::Receiver<(Job, Reply)>, files: &Files) {
    let mut retired = false;
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let outcome = files.refuse_if_lost().and_then(|()| {
            let committed = commit_group(&mut conn, &group);
            files.record_commit(&group, &committed);
            // After the commit, before any answer: a write that went to a file deleted or
            // replaced meanwhile is not acknowledged.
            files.verify()?;
            committed.map_err(from_sqlite)
        });
        // Before answering: once a client has seen the 503, no WAL of the lost file is left
        // behind for a restart to replay, even if the process is killed right after.
        if !retired && files.lost.get().is_some() {
            retire(&conn);
            retired = true;
        }
        match outcome {
            Ok(answers) => {
                for ((_, reply), answer) in group.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                // Nothing of the group was acknowledged: every job in it failed.
                tracing::error!(error = %e, size = group.len(), "an SQLite group commit failed");
                for (_, reply) in group {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    if retired {
        // Closing the last connection deletes the WAL and shared-memory files *by name*, and
        // those names may now be another database's: keep it open until the process ends.
        std::mem::forget(conn);
    }
}

/// Once the files are lost: copies what the WAL holds into the database file the connection
/// has open (wherever it is now: moved away, or deleted) and empties the WAL. A WAL left
/// behind at its path would otherwise be replayed, at the next start, into whatever file the
/// database path names then (a replacement, or a new empty database), corrupting it.
fn retire(conn: &Connection) {
    let checkpoint = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match checkpoint {
        Ok((0, _, _)) => tracing::warn!("emptied the WAL of the lost SQLite database"),
        Ok((_, frames, copied)) => {
            tracing::error!(frames, copied, "could not empty the WAL of the lost SQLite database")
        }
        Err(e) => tracing::error!(error = %e, "could not empty the WAL of the lost SQLite database"),
    }
}

/// Applies a group in one transaction. A job whose condition does not hold counts 0 and
/// leaves the others alone; any real error rolls the whole group back.
fn commit_group(conn: &mut Connection, group: &[(Job, Reply)]) -> rusqlite::Result<Vec<Applied>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut answers = Vec::with_capacity(group.len());
    for (job, _) in group {
        answers.push(apply(&tx, job)?);
    }
    tx.commit()?;
    Ok(answers)
}

/// The columns of a [`SqlRow`] from column `first` of `row` on.
fn sql_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<SqlRow> {
    Ok((
        row.get(first)?,
        row.get(first + 1)?,
        row.get(first + 2)?,
        row.get(first + 3)?,
        row.get(first + 4)?,
        row.get(first + 5)?,
    ))
}

fn apply(conn: &Connection, job: &Job) -> rusqlite::Result<Applied> {
    match job {
        Job::DeleteCustomer {
            customer,
            except,
            now,
            events,
        } => delete_customer(conn, customer, except.as_deref(), *now, *events).map(Applied::Removed),
        Job::Claim {
            owner,
            limit,
            until,
            now,
        } => claim(conn, owner, *limit, *until, *now).map(Applied::Claimed),
        _ => apply_counted(conn, job).map(Applied::Count),
    }
}

/// Every row of `customer` but `except`, in one statement; the live ones are returned. With
/// events, each row removed records `deleted` (`expired` if it had expired already).
fn delete_customer(
    conn: &Connection,
    customer: &CustomerKey,
    except: Option<&str>,
    now: Millis,
    events: u16,
) -> rusqlite::Result<Vec<RemovedSession>> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM sessions WHERE tenant = ?1 AND customer_id = ?2 AND session_id IS NOT ?3
         RETURNING session_id, version, generation, expires_at",
    )?;
    let rows = stmt
        .query_map(params![customer.tenant, customer.customer_id, except], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Option<i64>>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut removed = Vec::new();
    for (session_id, version, generation, expires_at) in rows {
        let live = expires_at.is_none_or(|at| at > now);
        if events > 0 {
            let (kind, time) = match expires_at {
                Some(at) if !live => (EventKind::Expired, at),
                _ => (EventKind::Deleted, now),
            };
            let event = ended(kind, version, Some(customer.customer_id.clone()), time)?;
            record_event(conn, events, &customer.session(&session_id), &event, now)?;
        }
        if live {
            removed.push(RemovedSession {
                session_id,
                revision: Revision {
                    version: u64::try_from(version).unwrap_or(0),
                    generation,
                },
            });
        }
    }
    Ok(removed)
}

fn apply_counted(conn: &Connection, job: &Job) -> rusqlite::Result<usize> {
    match job {
        Job::Write {
            key,
            expect: Expect::Current { version, generation },
            record,
            now,
            events,
        } => {
            let changed = conn
                .prepare_cached(
                    "UPDATE sessions SET version = ?3, expires_at = ?4, doc = ?5, generation = ?9,
                       customer_id = ?10, modified_at = ?11
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
                        record.generation,
                        record.customer,
                        record.modified_at
                    ])
                })?;
            if changed == 1 && *events > 0 {
                let event = ours(EventRecord::of(EventKind::Updated, record, *now))?;
                record_event(conn, *events, key, &event, *now)?;
            }
            Ok(changed)
        }
        Job::Write {
            key,
            expect: Expect::Absent,
            record,
            now,
            events,
        } => {
            // With events, the expired record a creation replaces (if any) ends first: read it
            // before it is overwritten (the writer is alone, so it is still there after).
            let replaced: Option<(i64, Option<String>, i64)> = if *events > 0 {
                conn.prepare_cached(
                    "SELECT version, customer_id, expires_at FROM sessions
                     WHERE tenant = ?1 AND session_id = ?2 AND expires_at IS NOT NULL AND expires_at <= ?3",
                )?
                .query_row(params![key.tenant, key.session_id, now], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()?
            } else {
                None
            };
            let changed = conn
                .prepare_cached(
                    "INSERT INTO sessions (tenant, session_id, version, generation, expires_at, doc,
                         customer_id, modified_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8, ?9)
                     ON CONFLICT (tenant, session_id) DO UPDATE
                       SET version = excluded.version, generation = excluded.generation,
                           expires_at = excluded.expires_at, doc = excluded.doc,
                           customer_id = excluded.customer_id, modified_at = excluded.modified_at
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
                        now,
                        record.customer,
                        record.modified_at
                    ])
                })?;
            if changed == 1 && *events > 0 {
                if let Some((version, customer, expired_at)) = replaced {
                    let event = ended(EventKind::Expired, version, customer, expired_at)?;
                    record_event(conn, *events, key, &event, *now)?;
                }
                let event = ours(EventRecord::of(EventKind::Created, record, *now))?;
                record_event(conn, *events, key, &event, *now)?;
            }
            Ok(changed)
        }
        Job::Delete {
            key,
            revision,
            now,
            events: 0,
        } => conn
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
        Job::Delete {
            key,
            revision,
            now,
            events,
        } => {
            let gone: Option<(i64, Option<String>)> = conn
                .prepare_cached(
                    "DELETE FROM sessions WHERE tenant = ?1 AND session_id = ?2 AND version = ?3
                       AND generation = ?4 AND (expires_at IS NULL OR expires_at > ?5)
                     RETURNING version, customer_id",
                )?
                .query_row(
                    params![
                        key.tenant,
                        key.session_id,
                        sql_version(revision.version).unwrap_or(-1),
                        revision.generation,
                        now
                    ],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((version, customer)) = gone else {
                return Ok(0);
            };
            let event = ended(EventKind::Deleted, version, customer, *now)?;
            record_event(conn, *events, key, &event, *now)?;
            Ok(1)
        }
        Job::Extend {
            key,
            revision,
            expires_at,
            now,
        } => conn
            .prepare_cached(
                "UPDATE sessions SET expires_at = ?3
                 WHERE tenant = ?1 AND session_id = ?2 AND version = ?4 AND generation = ?5
                   AND (expires_at IS NULL OR expires_at > ?6)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    key.tenant,
                    key.session_id,
                    expires_at,
                    sql_version(revision.version).unwrap_or(-1),
                    revision.generation,
                    now
                ])
            }),
        Job::Sweep { now, limit, events: 0 } => conn
            .prepare_cached(
                "DELETE FROM sessions WHERE id IN (
                   SELECT id FROM sessions WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
            )
            .and_then(|mut stmt| stmt.execute(params![now, limit])),
        Job::Sweep { now, limit, events } => {
            let gone = conn
                .prepare_cached(
                    "DELETE FROM sessions WHERE id IN (
                       SELECT id FROM sessions WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)
                     RETURNING tenant, session_id, version, customer_id, expires_at",
                )?
                .query_map(params![now, limit], |row| {
                    Ok((
                        SessionKey::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                        row.get::<_, i64>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, Option<i64>>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (key, version, customer, expires_at) in &gone {
                let event = ended(
                    EventKind::Expired,
                    *version,
                    customer.clone(),
                    expires_at.unwrap_or(*now),
                )?;
                record_event(conn, *events, key, &event, *now)?;
            }
            Ok(gone.len())
        }
        Job::Settle {
            seq,
            settlement: Settlement::Done,
        } => conn
            .prepare_cached("DELETE FROM outbox WHERE seq = ?1")
            .and_then(|mut stmt| stmt.execute(params![seq])),
        Job::Settle {
            seq,
            settlement: settlement @ (Settlement::Retry { .. } | Settlement::Release { .. }),
        } => conn
            // The rows behind it wait with it (see `claim`): they were never claimed.
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + (seq = ?1 AND ?3), next_attempt_at = ?2,
                   claim_owner = NULL, claimed_until = NULL
                 WHERE (destination, tenant, session_id) =
                         (SELECT destination, tenant, session_id FROM outbox WHERE seq = ?1)
                   AND seq >= ?1",
            )
            .and_then(|mut stmt| {
                let (next_attempt_at, failed) = settlement.again().unwrap_or_default();
                stmt.execute(params![seq, next_attempt_at, failed])
            }),
        Job::Retire | Job::DeleteCustomer { .. } | Job::Claim { .. } => Ok(0),
    }
}

/// Claims for `owner` until `until` up to `limit` entries due at `now`: of each (destination,
/// session) only the oldest entry (the lowest `seq`), when it is due and not held by another
/// owner's claim that still runs; the longest due first. One statement of the one writer, so
/// nothing claims in between. It walks `outbox_due` and stops at the limit: the rows behind a
/// session's oldest one are not due before it (they are recorded, and moved on a retry, with its
/// next attempt), so a backlog behind a receiver that is down is not walked at every claim.
fn claim(
    conn: &Connection,
    owner: &str,
    limit: i64,
    until: Millis,
    now: Millis,
) -> rusqlite::Result<Vec<SqlOutboxRow>> {
    conn.prepare_cached(&format!(
        "UPDATE outbox SET claim_owner = ?1, claimed_until = ?2
         WHERE seq IN (
           SELECT c.seq FROM outbox AS c
           WHERE c.next_attempt_at <= ?3
             AND (c.claim_owner IS NULL OR c.claim_owner = ?1 OR c.claimed_until <= ?3)
             AND NOT EXISTS (
               SELECT 1 FROM outbox AS older
               WHERE older.destination = c.destination AND older.tenant = c.tenant
                 AND older.session_id = c.session_id AND older.seq < c.seq)
           ORDER BY c.next_attempt_at, c.seq LIMIT ?4)
         RETURNING {SQL_OUTBOX_COLUMNS}"
    ))?
    .query_map(params![owner, until, now, limit], |row| {
        Ok((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
            row.get(6)?,
            row.get(7)?,
            row.get(8)?,
            row.get(9)?,
            row.get(10)?,
            row.get(11)?,
        ))
    })?
    .collect()
}

/// Records `event` of the session `key` in the outbox, once per destination `0..destinations`,
/// as recorded at `now`; first due then, or, behind an older entry of the session that waits
/// for a retry, with that entry (it cannot go before anyway).
fn record_event(
    conn: &Connection,
    destinations: u16,
    key: &SessionKey,
    event: &EventRecord,
    now: Millis,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO outbox (destination, tenant, session_id, event_id, kind, version, customer_id, doc,
             event_time, recorded_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, max(?10, coalesce(
           (SELECT next_attempt_at FROM outbox
            WHERE destination = ?1 AND tenant = ?2 AND session_id = ?3 ORDER BY seq LIMIT 1), ?10)))",
    )?;
    for destination in 0..destinations {
        stmt.execute(params![
            destination,
            key.tenant,
            key.session_id,
            event.id,
            event.kind.as_str(),
            sql_version(event.version).unwrap_or(i64::MAX),
            event.customer,
            event.session,
            event.time,
            now
        ])?;
    }
    Ok(())
}

/// The event of the end (`deleted`, `expired`) of a record that was at `version`.
fn ended(kind: EventKind, version: i64, customer: Option<String>, time: Millis) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        id: ours(EventRecord::new_id())?,
        kind,
        version: u64::try_from(version).unwrap_or(0),
        customer,
        session: None,
        time,
    })
}

/// A store error met inside the writer's transaction, as an SQLite error (it rolls the group
/// back like any other).
fn ours<T>(result: Result<T, StoreError>) -> rusqlite::Result<T> {
    result.map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
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

/// Whether `err` says the disk refuses writes (full, failing, read-only), as opposed to a busy
/// database or a bug.
fn refuses_writes(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::ReadOnly | ErrorCode::CannotOpen)
    )
}

fn from_sqlite(err: rusqlite::Error) -> StoreError {
    match err.sqlite_error_code() {
        _ if refuses_writes(&err) => StoreError::Unavailable(err.to_string()),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unavailable(err.to_string()),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt(err.to_string()),
        _ => StoreError::Backend(err.to_string()),
    }
}
