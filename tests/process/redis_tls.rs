//! `rediss://` and `rediss-cluster://`: the Redis store over TLS, against real redis-servers
//! started here (one, or three forming a cluster with its bus on TLS too) with a private
//! certificate authority made by `openssl`. Needs redis-server, redis-cli and openssl on the
//! PATH (Debian's redis-server is built with TLS); without them the tests say SKIPPED, under
//! `CI=true` they fail.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::server::{service_round_trip, start};
use crate::common::{store_round_trip, tool_available, unique_name};
use session_context::store;

/// TLS-only redis-servers on free ports, killed when dropped.
struct TlsRedis {
    children: Vec<Child>,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = Command::new(program).current_dir(dir).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A free port whose cluster-bus port (+10000) is a valid port too.
fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 {
            return port;
        }
    }
}

impl TlsRedis {
    /// One server, or with `cluster` three nodes with all slots assigned.
    fn start(cluster: bool) -> Option<TlsRedis> {
        if !["redis-server", "redis-cli", "openssl"].into_iter().all(tool_available) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca_subject = "/CN=session-context test CA";
        run(
            d,
            "openssl",
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
                "-subj", ca_subject,
            ],
        );
        run(
            d,
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost").unwrap();
        run(
            d,
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "1",
                "-extfile",
                "ext",
            ],
        );
        let mut redis = TlsRedis {
            children: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for n in 0..if cluster { 3 } else { 1 } {
            let port = free_port();
            let mut command = Command::new("redis-server");
            command
                .current_dir(redis.dir.path())
                .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--tls-cert-file", "server.pem", "--tls-key-file", "server.key"])
                .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
                .args(["--save", "", "--appendonly", "no"]);
            if cluster {
                command
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--tls-cluster",
                        "yes",
                        "--cluster-node-timeout",
                        "2000",
                    ])
                    .args(["--cluster-config-file", &format!("nodes-{n}.conf")]);
            }
            redis
                .children
                .push(command.stdout(Stdio::null()).spawn().expect("redis-server starts"));
            redis.ports.push(port);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &redis.ports {
            while TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "a TLS redis-server did not listen");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if cluster {
            let tls = ["--tls", "--cacert", "ca.pem"];
            let nodes: Vec<String> = redis.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let mut create: Vec<&str> = tls.to_vec();
            create.extend(["--cluster", "create"]);
            create.extend(nodes.iter().map(String::as_str));
            create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
            run(redis.dir.path(), "redis-cli", &create);
            for port in &redis.ports {
                let port = port.to_string();
                let mut info: Vec<&str> = tls.to_vec();
                info.extend(["-p", &port, "cluster", "info"]);
                while !run(redis.dir.path(), "redis-cli", &info).contains("cluster_state:ok") {
                    assert!(Instant::now() < deadline, "the TLS cluster did not become ready");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Some(redis)
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The store URL; `query` is appended to its options.
    fn url(&self, query: &str) -> String {
        let prefix = unique_name("tls");
        let nodes: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        match nodes.as_slice() {
            [one] => format!("rediss://{one}/0?prefix={prefix}{query}"),
            _ => format!("rediss-cluster://{}?prefix={prefix}{query}", nodes.join(",")),
        }
    }

    fn trusting_url(&self) -> String {
        self.url(&format!("&ca={}", self.ca().display()))
    }
}

/// Writes, reads, updates and pings through a store that trusts the test CA.
async fn round_trip(redis: &TlsRedis) {
    let store = store::open(&redis.trusting_url().parse().unwrap())
        .await
        .expect("a TLS connection");
    store_round_trip(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_over_tls_with_a_private_ca() {
    let Some(redis) = TlsRedis::start(false) else { return };
    round_trip(&redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_store_works_over_tls_with_a_private_ca() {
    let Some(redis) = TlsRedis::start(true) else { return };
    round_trip(&redis).await;
    // The system's authorities do not know the test CA.
    let refused = store::open(&redis.url("&connect_timeout=1s").parse().unwrap()).await;
    assert!(refused.is_err(), "connected to cluster nodes nobody vouches for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let Some(redis) = TlsRedis::start(false) else { return };
    let refused = store::open(&redis.url("").parse().unwrap()).await;
    assert!(
        refused.is_err(),
        "connected to a server whose certificate nobody vouches for"
    );
    // Nor does plain TCP reach a TLS-only server.
    let plain = format!(
        "redis://127.0.0.1:{}/0?connect_timeout=1s&response_timeout=1s",
        redis.ports[0]
    );
    let refused = store::open(&plain.parse().unwrap()).await;
    assert!(refused.is_err(), "plain TCP to a TLS port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_serves_from_a_tls_redis() {
    let Some(redis) = TlsRedis::start(false) else { return };
    let server = start(&redis.trusting_url());
    service_round_trip(&server).await;
}
