//! Private redis-servers on free ports (one, or three forming a cluster), for tests that do to a
//! server what must not happen to the ones the other tests share (`CLIENT PAUSE` stops a whole
//! server). Plain TCP, nothing on disk; killed when dropped.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;

use super::tool_available;

/// A redis-server, or a cluster of three, of this test's own.
pub struct PrivateRedis {
    children: Vec<Child>,
    /// The client port of each server.
    pub ports: Vec<u16>,
    cluster: bool,
    dir: tempfile::TempDir,
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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

impl PrivateRedis {
    /// One server, or `None` without `redis-server` on the PATH (the test says SKIPPED; under
    /// `CI=true` it fails).
    pub fn start() -> Option<PrivateRedis> {
        Self::launch(false)
    }

    /// Three cluster nodes with all slots assigned and no replicas, or `None` without
    /// `redis-server` and `redis-cli`.
    pub fn start_cluster() -> Option<PrivateRedis> {
        Self::launch(true)
    }

    fn launch(cluster: bool) -> Option<PrivateRedis> {
        let tools: &[&str] = if cluster {
            &["redis-server", "redis-cli"]
        } else {
            &["redis-server"]
        };
        if !tools.iter().all(|tool| tool_available(tool)) {
            return None;
        }
        let mut redis = PrivateRedis {
            children: Vec::new(),
            ports: Vec::new(),
            cluster,
            dir: tempfile::tempdir().unwrap(),
        };
        for n in 0..if cluster { 3 } else { 1 } {
            let port = free_port();
            let mut command = Command::new("redis-server");
            command
                .current_dir(redis.dir.path())
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"]);
            if cluster {
                command
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
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
                assert!(Instant::now() < deadline, "a private redis-server did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if cluster {
            let nodes: Vec<String> = redis.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let created = Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&nodes)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .unwrap();
            assert!(
                created.status.success(),
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&created.stderr)
            );
            for port in &redis.ports {
                loop {
                    let info = Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "cluster", "info"])
                        .output()
                        .unwrap();
                    if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                        break;
                    }
                    assert!(Instant::now() < deadline, "the private cluster did not become ready");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Some(redis)
    }

    /// The store URL (`redis://` or `redis-cluster://`), to which store options can be appended
    /// after a `?`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        if self.cluster {
            format!("redis-cluster://{}", nodes.join(","))
        } else {
            format!("redis://{}/0", nodes[0])
        }
    }

    /// Runs one command on the server on `port`, on a connection of its own.
    pub async fn command_on(&self, port: u16, args: &[&str]) -> Value {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Runs one command on every server.
    pub async fn command_on_all(&self, args: &[&str]) {
        for port in &self.ports {
            self.command_on(*port, args).await;
        }
    }

    /// The port of the server that holds keys with this hash tag (on a single server, its own).
    pub async fn port_of(&self, hash_tag: &str) -> u16 {
        if !self.cluster {
            return self.ports[0];
        }
        let any = self.ports[0];
        let slot: i64 = redis::from_redis_value(self.command_on(any, &["CLUSTER", "KEYSLOT", hash_tag]).await).unwrap();
        // CLUSTER SLOTS: one entry per range, [start, end, [ip, port, id, ...] of the primary, ...]
        let ranges: Vec<Vec<Value>> =
            redis::from_redis_value(self.command_on(any, &["CLUSTER", "SLOTS"]).await).unwrap();
        for range in ranges {
            let start: i64 = redis::from_redis_value(range[0].clone()).unwrap();
            let end: i64 = redis::from_redis_value(range[1].clone()).unwrap();
            if (start..=end).contains(&slot) {
                let primary: Vec<Value> = redis::from_redis_value(range[2].clone()).unwrap();
                return redis::from_redis_value(primary[1].clone()).unwrap();
            }
        }
        panic!("no node serves slot {slot}")
    }
}
