//! PostgreSQL over TLS (`sslmode=verify-full` with `sslrootcert`): a private PostgreSQL server
//! with `ssl=on` is made here with `initdb` (as the `postgres` user when the tests run as root)
//! and a certificate authority made by `openssl`. Needs PostgreSQL's server binaries and
//! openssl; without them the tests are skipped (and reported so), under `CI=true` they fail.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::server::{service_round_trip, start};
use crate::common::{skip, store_round_trip, tool_available, under_ci};
use session_context::store;

/// The directory of `initdb` and `postgres`: on the PATH, or Debian's newest under
/// /usr/lib/postgresql.
fn server_binaries() -> Option<PathBuf> {
    let on_path = Command::new("sh")
        .args(["-c", "dirname \"$(command -v initdb)\""])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let debian = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|versions| {
        versions
            .filter_map(Result::ok)
            .map(|v| v.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
    });
    let found = on_path.or(debian);
    // As root, the server must run as an unprivileged `postgres` user.
    let user_ok = !running_as_root()
        || Command::new("id")
            .arg("postgres")
            .output()
            .is_ok_and(|o| o.status.success());
    if found.is_none() || !user_ok {
        assert!(
            !under_ci(),
            "PostgreSQL's server binaries (or, as root, a postgres user) are missing: CI must run the PostgreSQL TLS tests"
        );
        skip("no initdb (or, as root, no postgres user)");
        return None;
    }
    found.filter(|_| tool_available("openssl"))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A shell command run as the `postgres` user when we are root (PostgreSQL refuses to run as
/// root); `setpriv` execs, so killing the child kills the server.
fn as_server_user(script: &str) -> Command {
    let mut command;
    if running_as_root() {
        command = Command::new("setpriv");
        command.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
            "sh",
            "-c",
            script,
        ]);
    } else {
        command = Command::new("sh");
        command.args(["-c", script]);
    }
    command
}

fn run(script: &str) -> String {
    let output = as_server_user(script).output().unwrap();
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A PostgreSQL server that only accepts TLS from 127.0.0.1, killed and removed when dropped.
struct TlsPostgres {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TlsPostgres {
    fn start() -> Option<TlsPostgres> {
        let bin = server_binaries()?;
        let dir = PathBuf::from(run("mktemp -d"));
        let d = dir.display();
        let b = bin.display();
        run(&format!(
            "cd {d} && {b}/initdb -D data -A trust -U postgres >/dev/null \
             && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj '/CN=session-context test CA' 2>/dev/null \
             && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null \
             && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > ext \
             && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext 2>/dev/null \
             && chmod 600 server.key \
             && printf 'hostssl all all 127.0.0.1/32 trust\\n' > data/pg_hba.conf"
        ));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = as_server_user(&format!(
            "exec {b}/postgres -D {d}/data -p {port} -k {d} -c listen_addresses=127.0.0.1 \
             -c ssl=on -c ssl_cert_file={d}/server.pem -c ssl_key_file={d}/server.key -c fsync=off"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres starts");
        let server = TlsPostgres { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the TLS PostgreSQL did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    fn url(&self, params: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?{params}", self.port)
    }

    fn verified_url(&self) -> String {
        self.url(&format!(
            "sslmode=verify-full&sslrootcert={}",
            self.dir.join("ca.pem").display()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_over_verified_tls() {
    let Some(pg) = TlsPostgres::start() else { return };
    // The server may still be starting up behind its open port.
    let deadline = Instant::now() + Duration::from_secs(30);
    let store = loop {
        match store::open(&pg.verified_url().parse().unwrap()).await {
            Ok(store) => break store,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for PostgreSQL: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no TLS connection: {e}"),
        }
    };
    store_round_trip(store.as_ref()).await;

    // Without TLS the server's pg_hba refuses us; with TLS but without trusting the test CA,
    // the certificate is refused.
    let plain = store::open(&pg.url("sslmode=disable&connect_timeout=2s").parse().unwrap()).await;
    assert!(plain.is_err(), "connected without TLS");
    let unverified = store::open(&pg.url("sslmode=verify-full&connect_timeout=2s").parse().unwrap()).await;
    assert!(unverified.is_err(), "trusted a certificate from an unknown CA");

    // The service itself, end to end.
    service_round_trip(&start(&pg.verified_url())).await;
}
