//! The real binary, as an operator runs it: start, serve over HTTP, stop with SIGTERM, crash
//! with SIGKILL in the middle of a write load and find every acknowledged write after a restart.

mod cors;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::server::{BIN, Server};
use serde_json::{Value, json};

const SECRET: &str = "binary-test-secret-binary-test-secret";

fn token(args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(["token", "--secret", SECRET, "--tenant", "shop"])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn sqlite_args(dir: &Path) -> Vec<String> {
    vec![
        "--store".into(),
        format!("sqlite://{}", dir.join("db/sessions.db").display()),
        "--jwt-secret".into(),
        SECRET.into(),
    ]
}

/// Kills the service with SIGKILL in the middle of a write load, restarts it on the same store,
/// and finds every write it had acknowledged. (On Redis this tests the service, not Redis: what a
/// restart of Redis itself keeps depends on its persistence settings, see docs/OPERATIONS.md.)
async fn acknowledged_writes_survive_kill_9(backend: crate::common::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = match backend {
        crate::common::Backend::Sqlite => format!("sqlite://{}", dir.path().join("db/sessions.db").display()),
        other => crate::common::namespaced_url(other).await,
    };
    let args = ["--store", store.as_str(), "--jwt-secret", SECRET];
    let manager = token(&["--scope", "session_context.context_manage"]);
    let mut server = Server::start(&args);
    let client = reqwest::Client::new();
    let base = format!("{}/session-context/shop/context", server.base);
    let created = client
        .put(format!("{base}/shared?upsert=true"))
        .bearer_auth(&manager)
        .json(&json!({"metadata": {"version": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, base, manager, stop) = (client.clone(), base.clone(), manager.clone(), stop.clone());
            let written = written.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("w{w}-{n}");
                    let put = client
                        .put(format!("{base}/{id}?upsert=true"))
                        .bearer_auth(&manager)
                        .json(&json!({"currency": "EUR", "metadata": {"version": 1}}))
                        .send()
                        .await;
                    let attr = client
                        .post(format!("{base}/shared/attributes"))
                        .bearer_auth(&manager)
                        .json(&json!({"key": id, "value": n}))
                        .send()
                        .await;
                    match (put, attr) {
                        (Ok(p), Ok(a)) if p.status() == 201 && a.status() == 204 => {
                            acknowledged.push(id);
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                        (Ok(p), _) if p.status() == 201 => {
                            acknowledged.push(format!("session-only:{id}"));
                            break;
                        }
                        _ => break, // the server is gone
                    }
                }
                acknowledged
            })
        })
        .collect();
    // Kill once the load is well under way (however slow this machine is right now).
    let deadline = Instant::now() + Duration::from_secs(30);
    while written.load(Ordering::Relaxed) < 40 {
        assert!(Instant::now() < deadline, "the load made too few writes in 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.child.kill().unwrap(); // SIGKILL, in the middle of the load
    server.wait_exit(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(
        acknowledged.len() > 20,
        "the load made too few writes: {}",
        acknowledged.len()
    );

    let restarted = Server::start(&args);
    println!(
        "{backend:?}: {} acknowledged writes checked after SIGKILL",
        acknowledged.len()
    );
    let base = format!("{}/session-context/shop/context", restarted.base);
    let shared: Value = client
        .get(format!("{base}/shared"))
        .bearer_auth(&manager)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for entry in &acknowledged {
        let id = entry.strip_prefix("session-only:").unwrap_or(entry);
        let get = client
            .get(format!("{base}/{id}"))
            .bearer_auth(&manager)
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 200, "acknowledged session {id} was lost");
        if !entry.starts_with("session-only:") {
            assert!(
                shared["context"].get(id).is_some(),
                "acknowledged attribute {id} was lost"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let args = sqlite_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start(&args);
    let live = reqwest::get(format!("{}/health/live", server.base)).await.unwrap();
    assert_eq!(live.status(), 200);
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(8));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sigterm_right_after_start_is_still_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let args = sqlite_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start(&args);
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(8));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn serve_without_a_key_exits_with_a_message_naming_the_flags() {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("SESSION_CONTEXT_") {
            command.env_remove(name);
        }
    }
    let output = command.args(["serve", "--store", "memory://"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for flag in ["--jwt-secret", "--jwt-public-key", "--jwks", "--dev"] {
        assert!(stderr.contains(flag), "{stderr}");
    }
}

#[test]
fn help_explains_every_flag() {
    let output = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--listen",
        "--store",
        "--jwt-secret",
        "--jwt-public-key",
        "--jwks",
        "--issuer",
        "--audience",
        "--saas-token-secret",
        "--claim-tenant",
        "--anonymous-ttl",
        "--max-body-bytes",
        "--max-session-bytes",
        "--max-attributes",
        "--protected-attribute",
        "--hidden-attribute",
        "--allowed-currency",
        "--config",
        "--dev",
    ] {
        assert!(help.contains(flag), "{flag} is missing from --help");
    }
    assert!(help.contains("SESSION_CONTEXT_LISTEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_tokens_that_work() {
    let server = Server::start(&["--dev", "--store", "memory://"]);
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l: &String| l.starts_with("anonymous token:")) {
        assert!(Instant::now() < deadline, "no tokens printed: {lines:?}");
        if let Ok(line) = server.stdout.recv_timeout(Duration::from_millis(100)) {
            lines.push(line);
        }
    }
    let find = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .unwrap()
    };
    let (anonymous, manager) = (find("anonymous token:"), find("management token:"));
    let client = reqwest::Client::new();
    let me = format!("{}/session-context/demo/me/context", server.base);
    let created = client
        .patch(format!("{me}?upsert=true"))
        .bearer_auth(&anonymous)
        .json(&json!({"currency": "EUR", "metadata": {"version": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let read: Value = client
        .get(&me)
        .bearer_auth(&anonymous)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = read["sessionId"].as_str().unwrap();
    let managed = client
        .get(format!("{}/session-context/demo/context/{id}", server.base))
        .bearer_auth(&manager)
        .send()
        .await
        .unwrap();
    assert_eq!(managed.status(), 200);
}

on_backend!(kill_9_sqlite, Sqlite, acknowledged_writes_survive_kill_9);
on_backend!(kill_9_postgres, Postgres, acknowledged_writes_survive_kill_9);
on_backend!(kill_9_redis, Redis, acknowledged_writes_survive_kill_9);
on_backend!(kill_9_redis_cluster, RedisCluster, acknowledged_writes_survive_kill_9);

/// Redis stops taking writes for a while (`CLIENT PAUSE WRITE` on every server, what a failover
/// does): a write stalls and answers 503 after the response timeout, and all the while reads of
/// another session on the same server and the readiness probe are answered at once, because
/// they never queue behind the stalled write. Afterwards the service works normally, the stalled
/// session holds its old state or its new one, and a retry of the stalled write with the same
/// version is safe. On private redis-servers: the pause stops a whole server.
async fn reads_are_answered_while_writes_are_paused(redis: crate::common::redis_server::PrivateRedis) {
    use crate::common::server::{context_url, create_in_euros, read, readiness, start};

    let server = start(&format!("{}?response_timeout=1s", redis.url()));
    let client = reqwest::Client::new();
    // Another session on the server that holds "a" (on a cluster, a single connection to each
    // node would queue it behind the stalled write).
    let home = redis.port_of(&format!("{}:a", crate::common::TENANT)).await;
    let mut other = None;
    for n in 0.. {
        let id = format!("b{n}");
        if redis.port_of(&format!("{}:{id}", crate::common::TENANT)).await == home {
            other = Some(id);
            break;
        }
    }
    let b = other.unwrap();
    create_in_euros(&client, &server, "a").await;
    create_in_euros(&client, &server, &b).await;
    let put_dollars = |id: &str| {
        client
            .put(context_url(&server, id))
            .bearer_auth(crate::common::manager())
            .json(&json!({"currency": "USD", "metadata": {"version": 1}}))
            .send()
    };

    let pause = Duration::from_secs(4);
    redis
        .command_on_all(&["CLIENT", "PAUSE", &pause.as_millis().to_string(), "WRITE"])
        .await;
    let paused = Instant::now();
    let stalled = {
        let request = put_dollars("a");
        tokio::spawn(async move {
            let started = Instant::now();
            let status = request.await.unwrap().status();
            (status, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await; // the write reaches Redis first

    let (mut reads, mut slowest) = (0, Duration::ZERO);
    while paused.elapsed() < pause - Duration::from_millis(500) {
        let started = Instant::now();
        let (status, body) = read(&client, &server, &b).await;
        let took = started.elapsed();
        assert_eq!(
            status, 200,
            "a read of another session during the pause, after {took:?}: {body}"
        );
        assert_eq!(body["currency"], json!("EUR"));
        assert!(took < Duration::from_millis(500), "a read took {took:?}");
        let started = Instant::now();
        readiness(&client, &server).await;
        let probe = started.elapsed();
        assert!(probe < Duration::from_millis(500), "the readiness probe took {probe:?}");
        (reads, slowest) = (reads + 1, slowest.max(took).max(probe));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, took) = stalled.await.unwrap();
    assert_eq!(status, 503, "the stalled write, after {took:?}");
    assert!(took >= Duration::from_millis(900), "the write answered after {took:?}");

    // After the pause: the stalled write either happened or did not, and a retry says which.
    tokio::time::sleep(pause.saturating_sub(paused.elapsed()) + Duration::from_millis(200)).await;
    let (status, a) = read(&client, &server, "a").await;
    assert_eq!(status, 200, "{a}");
    let stored = match (a["currency"].as_str(), a["metadata"]["version"].as_u64()) {
        (Some("EUR"), Some(1)) => false,
        (Some("USD"), Some(2)) => true,
        _ => panic!("neither the old state nor the new one: {a}"),
    };
    println!(
        "{reads} reads and probes during the pause, the slowest in {slowest:?}; the write: 503 after \
         {took:?}, then found {}",
        if stored { "stored" } else { "not stored" }
    );
    let retry = put_dollars("a").await.unwrap().status();
    assert_eq!(retry, if stored { 409 } else { 204 }, "the retry (stored: {stored})");
    assert_eq!(put_dollars(&b).await.unwrap().status(), 204);
    let (status, body) = read(&client, &server, &b).await;
    assert_eq!((status.as_u16(), &body["currency"]), (200, &json!("USD")), "{body}");
    assert_eq!(readiness(&client, &server).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reads_are_answered_while_writes_are_paused() {
    let Some(redis) = crate::common::redis_server::PrivateRedis::start() else {
        return;
    };
    reads_are_answered_while_writes_are_paused(redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_reads_are_answered_while_writes_are_paused() {
    let Some(redis) = crate::common::redis_server::PrivateRedis::start_cluster() else {
        return;
    };
    reads_are_answered_while_writes_are_paused(redis).await;
}

/// Removes the SQLite database at `db` and its `-wal` and `-shm` files, as a careless operator
/// (or a cleanup script) would under the running service.
fn remove_database(db: &Path) {
    std::fs::remove_file(db).unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
}

/// Checks the contract's 503 body (and `Retry-After`) of a write refused by the store.
async fn assert_unavailable(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 503, "{what}");
    assert_eq!(response.headers()["retry-after"], "1", "{what}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], json!(503), "{what}: {body}");
    assert_eq!(body["status"], json!(503), "{what}: {body}");
    assert_eq!(body["type"], json!("service_unavailable"), "{what}: {body}");
}

/// Writes that a test expects to be refused: a creation, and an attribute on `existing`.
async fn refused_writes(client: &reqwest::Client, server: &Server, new_id: &str, existing: &str) {
    let created = client
        .put(format!(
            "{}?upsert=true",
            crate::common::server::context_url(server, new_id)
        ))
        .bearer_auth(crate::common::manager())
        .json(&json!({"currency": "EUR", "context": {"note": "x".repeat(2000)}, "metadata": {"version": 1}}))
        .send()
        .await
        .unwrap();
    assert_unavailable(created, &format!("PUT {new_id}")).await;
    let attribute = client
        .post(format!(
            "{}/attributes",
            crate::common::server::context_url(server, existing)
        ))
        .bearer_auth(crate::common::manager())
        .json(&json!({"key": "later", "value": "y".repeat(2000)}))
        .send()
        .await
        .unwrap();
    assert_unavailable(attribute, &format!("POST {existing}/attributes")).await;
}

/// The SQLite file deleted under the running service, in the middle of a write load: no write
/// sent after the delete is acknowledged (they all answer 503, the contract's "outcome unknown"),
/// readiness turns 503 and stays so, and after a restart nothing written after the delete exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_sqlite_file_acknowledges_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let url = format!("sqlite://{}", db.display());
    let server = crate::common::server::start(&url);
    let client = reqwest::Client::new();
    crate::common::server::create_in_euros(&client, &server, "before").await;
    assert_eq!(crate::common::server::readiness(&client, &server).await, 200);

    let deleted = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, deleted, stop, written) = (client.clone(), deleted.clone(), stop.clone(), written.clone());
            let base = crate::common::server::context_url(&server, "");
            tokio::spawn(async move {
                // (id, status) of every write sent after the files were gone
                let mut after_delete = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let sent_after_delete = deleted.load(Ordering::SeqCst);
                    let id = format!("w{w}-{n}");
                    let status = client
                        .put(format!("{base}{id}?upsert=true"))
                        .bearer_auth(crate::common::manager())
                        .json(&json!({"currency": "EUR", "metadata": {"version": 1}}))
                        .send()
                        .await
                        .unwrap()
                        .status();
                    written.fetch_add(1, Ordering::SeqCst);
                    if sent_after_delete {
                        after_delete.push((id, status.as_u16()));
                    }
                }
                after_delete
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while written.load(Ordering::SeqCst) < 40 {
        assert!(Instant::now() < deadline, "the load made too few writes in 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    remove_database(&db);
    deleted.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut after_delete = Vec::new();
    for writer in writers {
        after_delete.extend(writer.await.unwrap());
    }
    assert!(!after_delete.is_empty(), "no write was sent after the delete");
    let answered: Vec<_> = after_delete.iter().filter(|(_, status)| *status != 503).collect();
    assert!(
        answered.is_empty(),
        "{} of {} writes sent after the delete were not refused with 503, among them {:?}",
        answered.len(),
        after_delete.len(),
        &answered[..answered.len().min(5)]
    );
    refused_writes(&client, &server, "after", "before").await;
    assert_eq!(crate::common::server::readiness(&client, &server).await, 503);
    tokio::time::sleep(Duration::from_millis(700)).await; // past any cached readiness
    assert_eq!(
        crate::common::server::readiness(&client, &server).await,
        503,
        "it stays unready"
    );
    println!("{} writes sent after the delete, all refused", after_delete.len());

    drop(server);
    let restarted = crate::common::server::start(&url);
    for id in after_delete.iter().map(|(id, _)| id.as_str()).chain(["after"]) {
        let (status, body) = crate::common::server::read(&client, &restarted, id).await;
        assert_eq!(status, 404, "{id}, written after the delete, exists: {body}");
    }
}

/// Another SQLite database renamed over the running service's file (a restore from a backup
/// while it runs): writes answer 503 and none of them lands in either file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_sqlite_file_acknowledges_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let (db, other) = (dir.path().join("db.sqlite"), dir.path().join("other.sqlite"));
    let client = reqwest::Client::new();
    {
        let mut server = crate::common::server::start(&format!("sqlite://{}", other.display()));
        crate::common::server::create_in_euros(&client, &server, "from-the-other-file").await;
        server.signal("TERM");
        assert!(server.wait_exit(Duration::from_secs(8)).success());
        // Fold what a WAL may still hold into the file: `other` is then one file.
        let conn = rusqlite::Connection::open(&other).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0))
            .unwrap();
        drop(conn);
        let mut wal = other.as_os_str().to_owned();
        wal.push("-wal");
        assert_eq!(
            std::fs::metadata(&wal).map_or(0, |m| m.len()),
            0,
            "other.sqlite-wal is empty"
        );
    }
    let url = format!("sqlite://{}", db.display());
    let server = crate::common::server::start(&url);
    crate::common::server::create_in_euros(&client, &server, "before").await;
    assert_eq!(crate::common::server::readiness(&client, &server).await, 200);

    std::fs::rename(&other, &db).unwrap();
    refused_writes(&client, &server, "after", "before").await;
    assert_eq!(crate::common::server::readiness(&client, &server).await, 503);
    // Reads are refused too: a new reading connection would open the replacement.
    let (status, body) = crate::common::server::read(&client, &server, "before").await;
    assert_eq!(status, 503, "{body}");

    drop(server);
    let restarted = crate::common::server::start(&url);
    let found = |id: &'static str| {
        let (client, restarted) = (client.clone(), &restarted);
        async move { crate::common::server::read(&client, restarted, id).await.0 }
    };
    assert_eq!(found("from-the-other-file").await, 200, "the replacement is served");
    assert_eq!(found("after").await, 404, "a write refused with 503 was stored");
    assert_eq!(found("before").await, 404);
}

/// Polls `/health/ready` until it answers `status` (the readiness probe is cached briefly).
async fn wait_for_readiness(client: &reqwest::Client, server: &Server, status: u16, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = crate::common::server::readiness(client, server).await;
        if now.as_u16() == status {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: /health/ready still answers {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if output.status.success() {
            Ok(Tmpfs(dir.to_owned()))
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(stderr.lines().next().unwrap_or("mount failed").trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills the file system under `path` with one file until it refuses another byte.
fn fill_until_full(path: &Path) {
    use std::io::Write;
    let mut filler = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 1 << 16];
    for size in [1 << 16, 1 << 12, 1] {
        loop {
            match filler.write(&chunk[..size]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
}

/// A full disk: writes answer 503 with the contract's body and readiness is 503; once space
/// returns, readiness is 200 again and writes work, without a restart. On a small tmpfs; where
/// none can be mounted (not root, no CAP_SYS_ADMIN), a directory that refuses new files stands
/// in for it, which checks readiness only (and says so). Under CI=true the tmpfs must work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_writes_and_readiness_to_503_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = Tmpfs::mount(dir.path(), "4m");
    let _mount = match mounted {
        Ok(mount) => mount,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI must be able to mount a tmpfs for the full-disk test: {e}")
        }
        Err(e) => return full_disk_fallback(dir.path(), &e).await,
    };
    let db = dir.path().join("db.sqlite");
    let server = crate::common::server::start(&format!("sqlite://{}", db.display()));
    let client = reqwest::Client::new();
    crate::common::server::create_in_euros(&client, &server, "before").await;
    assert_eq!(crate::common::server::readiness(&client, &server).await, 200);

    let filler = dir.path().join("filler");
    fill_until_full(&filler);
    wait_for_readiness(&client, &server, 503, "the disk is full").await;
    for n in 0..5 {
        refused_writes(&client, &server, &format!("full{n}"), "before").await;
    }
    assert_eq!(crate::common::server::readiness(&client, &server).await, 503);
    let (status, body) = crate::common::server::read(&client, &server, "before").await;
    assert_eq!(status, 200, "reads need no space: {body}");

    std::fs::remove_file(&filler).unwrap();
    wait_for_readiness(&client, &server, 200, "space is back").await;
    crate::common::server::create_in_euros(&client, &server, "after").await;
    let (status, body) = crate::common::server::read(&client, &server, "after").await;
    assert_eq!((status.as_u16(), &body["currency"]), (200, &json!("EUR")), "{body}");
    drop(server);
}

/// Without a tmpfs: a database directory that refuses new files makes readiness 503, and
/// allowing them again makes it 200. (Writes into the already-open WAL still succeed there, so
/// this checks readiness only.)
async fn full_disk_fallback(dir: &Path, mount_error: &str) {
    use std::os::unix::fs::PermissionsExt;
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() == "0" {
        crate::common::skip(&format!(
            "cannot mount a tmpfs ({mount_error}), and as root no directory refuses writes"
        ));
        return;
    }
    println!(
        "FALLBACK: cannot mount a tmpfs ({mount_error}): checking readiness against a directory \
         that refuses new files instead of a full disk (writes are not checked)"
    );
    let data = dir.join("data");
    let server = crate::common::server::start(&format!("sqlite://{}", data.join("db.sqlite").display()));
    let client = reqwest::Client::new();
    crate::common::server::create_in_euros(&client, &server, "before").await;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
    wait_for_readiness(&client, &server, 503, "the directory refuses new files").await;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    wait_for_readiness(&client, &server, 200, "the directory takes files again").await;
}

/// The real binary, over a raw connection: a body declared larger than the limit is refused
/// with 413 before any of it is read, and a client that asked `Expect: 100-continue` is never
/// invited to send it. A body within the limit still gets its `100 Continue`.
#[test]
fn a_declared_body_over_the_limit_gets_413_at_once_without_100_continue() {
    use crate::common::server::{Server, secret};
    use crate::common::{context_path, manager};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let server = Server::start(&["--store", "memory://", "--jwt-secret", secret()]);
    let connect = || {
        let stream = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        stream
    };
    // Reads until `done` holds for what arrived, the peer closes, or 5 s pass.
    let read_until = |stream: &mut TcpStream, done: &dyn Fn(&str) -> bool| {
        let (mut received, mut buffer) = (Vec::new(), [0u8; 4096]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !done(&String::from_utf8_lossy(&received)) {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&received).into_owned()
    };
    let head = |length: usize, expect: bool| {
        format!(
            "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
             {}Content-Length: {length}\r\n\r\n",
            context_path("s1", "?upsert=true"),
            manager(),
            if expect { "Expect: 100-continue\r\n" } else { "" },
        )
    };
    let final_answer = |text: &str| text.contains("payload_too_large") || text.contains("HTTP/1.1 2");

    // Over the limit with Expect: 413 at once, and no invitation to send the 10 MB.
    let mut stream = connect();
    stream.write_all(head(10_000_000, true).as_bytes()).unwrap();
    let started = Instant::now();
    let answer = read_until(&mut stream, &final_answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains(r#""type":"payload_too_large""#), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    // Over the limit without Expect: 413 as well, without waiting for the rest of the body.
    let mut stream = connect();
    stream.write_all(head(10_000_000, false).as_bytes()).unwrap();
    stream.write_all(&[b' '; 1024]).unwrap();
    let answer = read_until(&mut stream, &final_answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""type":"payload_too_large""#), "{answer}");

    // Within the limit with Expect: invited, then served.
    let body = json!({"metadata": {"version": 1}}).to_string();
    let mut stream = connect();
    stream.write_all(head(body.len(), true).as_bytes()).unwrap();
    let invitation = read_until(&mut stream, &|text: &str| text.contains("\r\n\r\n"));
    assert!(invitation.starts_with("HTTP/1.1 100 Continue"), "{invitation}");
    stream.write_all(body.as_bytes()).unwrap();
    let answer = read_until(&mut stream, &|text: &str| text.contains("HTTP/1.1 201"));
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

/// An operator's `sessions list` and `sessions delete`, straight on a store with the service
/// down: what `seed --customer` wrote is listed newest first and ended, others are untouched.
#[test]
fn an_operator_lists_and_ends_a_customers_sessions_without_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let run = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(args)
            .env_remove("SESSION_CONTEXT_STORE")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let seed = |prefix: &str, count: &str, customer: &str| {
        run(&[
            "seed",
            "--store",
            &store,
            "--tenant",
            "shop",
            "--prefix",
            prefix,
            "--count",
            count,
            "--bytes",
            "300",
            "--customer",
            customer,
        ]);
    };
    seed("c-", "25", "C1");
    seed("d-", "3", "C2");
    let listed = run(&[
        "sessions",
        "list",
        "--store",
        &store,
        "--tenant",
        "shop",
        "--customer",
        "C1",
    ]);
    let ids: Vec<String> = listed
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["sessionId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 25);
    assert_eq!((ids[0].as_str(), ids[24].as_str()), ("c-25", "c-1"), "newest first");
    let deleted = run(&[
        "sessions",
        "delete",
        "--store",
        &store,
        "--tenant",
        "shop",
        "--customer",
        "C1",
        "--except",
        "c-3",
    ]);
    assert_eq!(serde_json::from_str::<Value>(&deleted).unwrap(), json!({"deleted": 24}));
    let left = run(&[
        "sessions",
        "list",
        "--store",
        &store,
        "--tenant",
        "shop",
        "--customer",
        "C1",
    ]);
    assert_eq!(left.lines().count(), 1);
    let other = run(&[
        "sessions",
        "list",
        "--store",
        &store,
        "--tenant",
        "shop",
        "--customer",
        "C2",
    ]);
    assert_eq!(other.lines().count(), 3, "another customer's stay");
    // A bad tenant is refused with a message, as the API refuses it.
    let output = Command::new(BIN)
        .args([
            "sessions",
            "delete",
            "--store",
            &store,
            "--tenant",
            "Shop!",
            "--customer",
            "C1",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tenant"));
}
