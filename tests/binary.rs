//! The real binary, as an operator runs it: start, serve over HTTP, stop with SIGTERM, crash
//! with SIGKILL in the middle of a write load and find every acknowledged write after a restart.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::server::{BIN, Server};
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
async fn acknowledged_writes_survive_kill_9(backend: common::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = match backend {
        common::Backend::Sqlite => format!("sqlite://{}", dir.path().join("db/sessions.db").display()),
        other => common::namespaced_url(other).await,
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
