//! The real binary as a child process: started on a free port, its log drained, stopped or
//! killed on demand and always killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{SECRET, context_path, manager};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_session-context");

/// A running `session-context serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub stdout: mpsc::Receiver<String>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Self::start_listening("127.0.0.1:0", args)
    }

    /// Starts on `listen` (for a restart on the address a killed server had).
    pub fn start_listening(listen: &str, args: &[&str]) -> Server {
        Self::start_with_env(listen, args, &[])
    }

    /// Starts on `listen` with these `SESSION_CONTEXT_*` variables (and no others).
    pub fn start_with_env(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(BIN);
        command.arg("serve").args(["--listen", listen]).args(args);
        for (name, _) in std::env::vars() {
            if name.starts_with("SESSION_CONTEXT_") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied());
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let (addr_tx, addr_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            // Keep draining the log so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("address=").nth(1) {
                    let _ = addr_tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let (out_tx, out_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        let address = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the server logs its address");
        Server {
            child,
            base: format!("http://{address}"),
            stdout: out_rx,
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn secret() -> &'static str {
    std::str::from_utf8(SECRET).unwrap()
}

/// `serve` on `store_url` with the tests' secret.
pub fn start(store_url: &str) -> Server {
    start_at("127.0.0.1:0", store_url)
}

/// `serve` on `store_url` with the tests' secret, listening on `listen`.
pub fn start_at(listen: &str, store_url: &str) -> Server {
    Server::start_listening(
        listen,
        &["--store", store_url, "--jwt-secret", secret(), "--anonymous-ttl", "1h"],
    )
}

pub fn context_url(server: &Server, id: &str) -> String {
    format!("{}{}", server.base, context_path(id, ""))
}

pub async fn read(client: &reqwest::Client, server: &Server, id: &str) -> (StatusCode, Value) {
    let response = client
        .get(context_url(server, id))
        .bearer_auth(manager())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The status of `GET /health/ready`.
pub async fn readiness(client: &reqwest::Client, server: &Server) -> StatusCode {
    let ready = client.get(format!("{}/health/ready", server.base)).send().await;
    ready.unwrap().status()
}

/// Creates session `id` with currency EUR (a PUT with upsert).
pub async fn create_in_euros(client: &reqwest::Client, server: &Server, id: &str) {
    let created = client
        .put(format!("{}?upsert=true", context_url(server, id)))
        .bearer_auth(manager())
        .json(&json!({"currency": "EUR", "metadata": {"version": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
}

/// Checks that `server` is ready, and creates and reads back a session through it.
pub async fn service_round_trip(server: &Server) {
    let client = reqwest::Client::new();
    assert_eq!(readiness(&client, server).await, StatusCode::OK);
    create_in_euros(&client, server, "rt").await;
    let (status, body) = read(&client, server, "rt").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["currency"], json!("EUR"));
}

/// Checks that requests fail fast with 503 and the service is not ready while the store is away,
/// and that it recovers by itself once `bring_back` has run.
pub async fn outage_and_recovery<Away, Back>(server: &Server, take_away: Away, bring_back: Back)
where
    Away: AsyncFnOnce(),
    Back: AsyncFnOnce(),
{
    let client = reqwest::Client::new();
    create_in_euros(&client, server, "s1").await;

    take_away().await;
    let started = Instant::now();
    let (status, body) = read(&client, server, "s1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], json!(503));
    assert_eq!(body["type"], json!("service_unavailable"));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "503 came after {:?}",
        started.elapsed()
    );
    assert_eq!(readiness(&client, server).await, StatusCode::SERVICE_UNAVAILABLE);
    let live = client.get(format!("{}/health/live", server.base)).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK, "the process itself stays alive");

    bring_back().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = read(&client, server, "s1").await;
        if status == StatusCode::OK {
            assert_eq!(body["currency"], json!("EUR"), "the data is still there");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not recover: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(readiness(&client, server).await, StatusCode::OK);
}

/// The store of one test, shared by its processes (and their restarts): a fresh SQLite file,
/// memory, or its own namespace on a networked store.
pub struct Store {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Store {
    pub async fn fresh(backend: super::Backend) -> Store {
        match backend {
            super::Backend::Memory => Store {
                url: "memory://".into(),
                _dir: None,
            },
            super::Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                Store {
                    url: format!("sqlite://{}", dir.path().join("sessions.db").display()),
                    _dir: Some(dir),
                }
            }
            other => Store {
                url: super::namespaced_url(other).await,
                _dir: None,
            },
        }
    }
}
