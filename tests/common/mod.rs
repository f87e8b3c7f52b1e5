//! Shared test helpers of the three test binaries (`stores`, `api`, `process`): an in-process
//! app on any backend with a manual clock, token minting, a one-call request helper, the macros
//! that run a test on each backend, and the record of tests that were skipped.
#![allow(dead_code)] // each test binary uses a different part

pub mod browser;
pub mod proxy;
pub mod receiver;
pub mod redis_server;
pub mod server;

use std::io::Write;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use session_context::auth::mint::{TokenSpec, mint_hs256};
use session_context::auth::{AuthSettings, ClaimNames, KeySource, Verifier};
use session_context::clock::ManualClock;
use session_context::domain::Lifetime;
use session_context::http::metrics::Metrics;
use session_context::http::{self, AppState};
use session_context::service::{Policy, Sessions};
use session_context::store::{self, MemoryStore, SessionStore, SqliteStore, StoreUrl};
use tower::ServiceExt;

pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
pub const SAAS_SECRET: &[u8] = b"saas-secret-saas-secret-saas-secret!";
pub const TENANT: &str = "shop";
pub const MANAGE: &str = "session_context.context_manage";
/// 2026-02-04T16:30:04.047Z
pub const START: i64 = 1_770_222_604_047;
pub const TTL: Duration = Duration::from_secs(3600);

/// Which backend an app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqlite,
    Postgres,
    Redis,
    RedisCluster,
}

impl Backend {
    /// The environment variable that names the server of a networked backend.
    pub fn url_variable(self) -> Option<&'static str> {
        match self {
            Backend::Memory | Backend::Sqlite => None,
            Backend::Postgres => Some("SESSION_CONTEXT_TEST_POSTGRES_URL"),
            Backend::Redis => Some("SESSION_CONTEXT_TEST_REDIS_URL"),
            Backend::RedisCluster => Some("SESSION_CONTEXT_TEST_REDIS_CLUSTER_URL"),
        }
    }

    /// The server URL of a networked backend, when it is configured.
    pub fn server_url(self) -> Option<String> {
        std::env::var(self.url_variable()?).ok().filter(|url| !url.is_empty())
    }

    /// Whether the backend removes expired records by itself (so its sweep has nothing to do).
    pub fn expires_natively(self) -> bool {
        matches!(self, Backend::Redis | Backend::RedisCluster)
    }

    /// Whether this backend can run here: embedded ones always can, a networked one when its
    /// server's URL is set. Without it the running test is recorded as skipped (see [`skip`]);
    /// under `CI=true` that is a failure instead.
    pub fn available(self) -> bool {
        let Some(variable) = self.url_variable() else {
            return true;
        };
        if self.server_url().is_some() {
            return true;
        }
        assert!(
            !under_ci(),
            "{variable} is not set: CI must run the {self:?} tests against a real server"
        );
        skip(&format!("{variable} is not set"));
        false
    }

    /// For a test on the shared Redis Cluster, a share of it for as long as the guard lives:
    /// the outage test, which pauses every node, waits for all shares to end and holds off new
    /// ones ([`pause_shared_cluster`]). Tests run side by side within a binary, and the
    /// cluster is shared by all of them. `None` for the other backends.
    pub async fn share(self) -> Option<tokio::sync::RwLockReadGuard<'static, ()>> {
        (self == Backend::RedisCluster).then_some(SHARED_CLUSTER.read().await)
    }
}

static SHARED_CLUSTER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The shared Redis Cluster to this test alone, for as long as the guard lives.
pub async fn pause_shared_cluster() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    SHARED_CLUSTER.write().await
}

/// Whether this run is CI's (`CI=true`), where every test must run.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The tests of this binary that did not run, each as `(test, why)`.
static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Records that the running test did not run, and why. libtest has no outcome for a test that
/// decides at run time not to run: it is counted as passed. So the skip is said at once on the
/// terminal (`SKIPPED <test>: <why>`, written past libtest's capture of the test's output), and
/// when the binary ends, after libtest's `test result:` line, one line counts the skipped
/// tests. Callers decide first whether a skip is allowed (under `CI=true` it mostly is not).
pub fn skip(why: &str) {
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    SKIPPED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push((test, why.to_owned()));
    static AT_EXIT: Once = Once::new();
    // SAFETY: `atexit` only stores the pointer of a function that lives as long as the process.
    AT_EXIT.call_once(|| unsafe {
        atexit(report_skipped);
    });
}

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
    fn write(fd: std::ffi::c_int, buf: *const u8, count: usize) -> isize;
}

/// Runs as the process exits (after libtest's summary): the count of skipped tests, by reason.
/// It writes with `write(2)` itself, as Rust's standard streams may be gone by then.
extern "C" fn report_skipped() {
    let skipped = SKIPPED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut reasons: Vec<(&str, usize)> = Vec::new();
    for (_, why) in skipped.iter() {
        match reasons.iter_mut().find(|(r, _)| r == why) {
            Some((_, n)) => *n += 1,
            None => reasons.push((why, 1)),
        }
    }
    let reasons: Vec<String> = reasons.iter().map(|(why, n)| format!("{why}: {n}")).collect();
    let line = format!(
        "SKIPPED: {} of the tests counted as passed above did not run ({})\n\n",
        skipped.len(),
        reasons.join("; ")
    );
    // SAFETY: the buffer is valid for its length; a short or failed write only loses the line.
    unsafe {
        write(2, line.as_ptr(), line.len());
    }
}

/// The tests' policy: anonymous sessions idle out after [`TTL`]; nothing else.
pub fn test_policy() -> Policy {
    Policy::with_lifetime(Lifetime::anonymous(Some(TTL.as_millis() as i64)))
}

/// A fresh, random lowercase name, so that tests sharing one server never see each other's data.
pub fn unique_name(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("randomness");
    let suffix: String = bytes.iter().map(|b| char::from(b'a' + b % 26)).collect();
    format!("{prefix}{suffix}")
}

/// The store URL of a fresh namespace on a networked backend: its own schema on PostgreSQL,
/// its own key prefix on Redis.
pub async fn namespaced_url(backend: Backend) -> String {
    let base = backend.server_url().expect("the backend is available");
    let join = if base.contains('?') { '&' } else { '?' };
    match backend {
        Backend::Postgres => {
            let schema = unique_name("sc_test_");
            let pool = sqlx::PgPool::connect(&base).await.expect("PostgreSQL answers");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&pool)
                .await
                .expect("a schema");
            pool.close().await;
            format!("{base}{join}options[search_path]={schema}")
        }
        Backend::Redis | Backend::RedisCluster => format!("{base}{join}prefix={}", unique_name("t")),
        Backend::Memory | Backend::Sqlite => unreachable!("embedded backends have no URL"),
    }
}

/// An in-process app with a clock the test moves.
pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn SessionStore>,
    limits: http::RequestLimits,
    _dir: Option<tempfile::TempDir>,
}

pub async fn open_store(backend: Backend) -> (Arc<dyn SessionStore>, Option<tempfile::TempDir>) {
    match backend {
        Backend::Memory => (Arc::new(MemoryStore::default()), None),
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("a temp dir");
            let store = SqliteStore::open(&dir.path().join("sessions.db"))
                .await
                .expect("sqlite opens");
            (Arc::new(store), Some(dir))
        }
        Backend::Postgres | Backend::Redis | Backend::RedisCluster => {
            let url: StoreUrl = namespaced_url(backend).await.parse().expect("a valid store URL");
            (store::open(&url).await.expect("the store opens"), None)
        }
    }
}

impl TestApp {
    pub async fn new(backend: Backend) -> Self {
        Self::with_limit(backend, 65_536).await
    }

    pub async fn with_limit(backend: Backend, max_body_bytes: usize) -> Self {
        let (store, dir) = open_store(backend).await;
        Self::on_store(store, dir, max_body_bytes)
    }

    /// An app on a store the test built (for instance a wrapper that injects faults).
    pub fn on_store(store: Arc<dyn SessionStore>, dir: Option<tempfile::TempDir>, max_body_bytes: usize) -> Self {
        let limits = http::RequestLimits {
            max_body_bytes,
            ..Default::default()
        };
        Self::on_store_with_limits(store, dir, limits)
    }

    /// An in-memory app that lets browsers on `origins` call it, as `--cors-origin` does.
    pub fn with_cors(origins: &[&str]) -> Self {
        Self::with_limits(http::RequestLimits {
            cors_origins: cors_origins(origins),
            ..Default::default()
        })
    }

    /// An in-memory app with these limits (and CORS origins).
    pub fn with_limits(limits: http::RequestLimits) -> Self {
        Self::on_store_with_limits(Arc::new(MemoryStore::default()), None, limits)
    }

    /// An app on a store the test built, with these limits (and CORS origins).
    pub fn on_store_with_limits(
        store: Arc<dyn SessionStore>,
        dir: Option<tempfile::TempDir>,
        limits: http::RequestLimits,
    ) -> Self {
        let clock = Arc::new(ManualClock::new(START));
        let sessions = Sessions::new(store.clone(), clock.clone(), test_policy());
        let verifier = Verifier::new(&AuthSettings {
            access: KeySource::Secret(SECRET.to_vec()),
            saas: Some(KeySource::Secret(SAAS_SECRET.to_vec())),
            issuer: None,
            audience: None,
            claims: ClaimNames::default(),
        })
        .expect("test keys are valid");
        let state = AppState::new(sessions, Arc::new(verifier), Arc::new(Metrics::default()));
        TestApp {
            router: http::router(state.clone(), &limits),
            state,
            clock,
            store,
            limits,
            _dir: dir,
        }
    }

    /// The same app, on the same store and clock and with the same limits, with another
    /// lifetime policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        let sessions = Sessions::new(self.store.clone(), self.clock.clone(), policy);
        self.state = AppState::new(sessions, self.state.verifier.clone(), self.state.metrics.clone());
        self.router = http::router(self.state.clone(), &self.limits);
        self
    }

    /// Sends one request; `body` is sent as JSON when given.
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => builder
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => builder.body(Body::empty()),
        }
        .expect("a valid request");
        self.send(request).await
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.expect("the router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("a body").to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Creates session `id` with `body` (a PUT with upsert) and checks it was created.
    pub async fn create(&self, id: &str, body: Value) {
        let reply = self
            .call(
                Method::PUT,
                &context_path(id, "?upsert=true"),
                Some(&manager()),
                Some(body),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }

    /// Reads session `id` through the management API.
    pub async fn read(&self, id: &str) -> Reply {
        self.call(Method::GET, &context_path(id, ""), Some(&manager()), None)
            .await
    }
}

/// A response, its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Checks the contract's error body for `status`.
    pub fn assert_error(&self, status: u16, kind: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(self.json["code"], json!(status), "{}", self.text);
        assert_eq!(self.json["status"], json!(status), "{}", self.text);
        assert_eq!(self.json["type"], json!(kind), "{}", self.text);
        assert!(self.json["message"].is_string(), "{}", self.text);
        assert_eq!(self.header("content-type"), Some("application/json"));
    }

    pub fn version(&self) -> u64 {
        self.json["metadata"]["version"].as_u64().expect("a version")
    }
}

/// The allowed origins of `--cors-origin` values; panics on a bad one.
pub fn cors_origins(origins: &[&str]) -> http::cors::CorsOrigins {
    http::cors::CorsOrigins::parse(origins).expect("valid origins")
}

pub fn context_path(id: &str, suffix: &str) -> String {
    format!("/session-context/{TENANT}/context/{id}{suffix}")
}

pub fn me_path(suffix: &str) -> String {
    format!("/session-context/{TENANT}/me/context{suffix}")
}

pub fn sign(spec: TokenSpec) -> String {
    mint_hs256(SECRET, &spec).expect("the test secret is long enough")
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

/// A management token for the test tenant.
pub fn manager() -> String {
    sign(TokenSpec {
        tenant: Some(TENANT.into()),
        scope: Some(MANAGE.into()),
        ttl: hour(),
        ..Default::default()
    })
}

/// An anonymous storefront token for session `id`.
pub fn anonymous(id: &str) -> String {
    sign(TokenSpec {
        tenant: Some(TENANT.into()),
        session_id: Some(id.into()),
        ttl: hour(),
        ..Default::default()
    })
}

/// A customer storefront token for session `id`.
pub fn customer(id: &str, customer: &str) -> String {
    sign(TokenSpec {
        tenant: Some(TENANT.into()),
        session_id: Some(id.into()),
        customer_id: Some(customer.into()),
        ttl: hour(),
        ..Default::default()
    })
}

/// A saas-token for `customer`, signed with the saas secret.
pub fn saas(customer: &str) -> String {
    mint_hs256(
        SAAS_SECRET,
        &TokenSpec {
            subject: Some(customer.into()),
            ttl: hour(),
            ..Default::default()
        },
    )
    .expect("the saas secret is long enough")
}

/// Runs each listed async test fn against every backend; a networked backend whose server is
/// not configured is skipped (reported as such; a failure under `CI=true`).
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $crate::on_backend!(memory, Memory, $($name),*);
        $crate::on_backend!(sqlite, Sqlite, $($name),*);
        $crate::on_backend!(postgres, Postgres, $($name),*);
        $crate::on_backend!(redis, Redis, $($name),*);
        $crate::on_backend!(redis_cluster, RedisCluster, $($name),*);
    };
}

/// Runs each listed async test fn on the embedded backends, memory and SQLite: the HTTP suite,
/// whose subject is the API, not the stores.
#[macro_export]
macro_rules! on_memory_and_sqlite {
    ($($name:ident),* $(,)?) => {
        $crate::on_backend!(memory, Memory, $($name),*);
        $crate::on_backend!(sqlite, Sqlite, $($name),*);
    };
}

/// One module of tests on one backend: each test is skipped (and reported so) when the
/// backend's server is not configured, and holds its share of the shared Redis Cluster.
#[macro_export]
macro_rules! on_backend {
    ($module:ident, $backend:ident, $($name:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = $crate::common::Backend::$backend;
                    if !backend.available() {
                        return;
                    }
                    let _share = backend.share().await;
                    super::$name(backend).await
                }
            )*
        }
    };
}

/// Whether `tool` is on the PATH. A test that needs it is skipped without it (see [`skip`]);
/// under `CI=true` that is a failure instead.
pub fn tool_available(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !under_ci(),
            "{tool} is not installed: CI must run the tests that need it"
        );
        skip(&format!("{tool} is not installed"));
    }
    found
}

/// Creates, reads, updates and pings through `store`.
pub async fn store_round_trip(store: &dyn SessionStore) {
    use session_context::store::{Expect, SessionKey, StoredSession};
    let key = SessionKey::new(TENANT, unique_name("rt"));
    let record = StoredSession {
        version: 1,
        generation: 5,
        expires_at: None,
        doc: "{}".into(),
        customer: None,
        modified_at: 0,
    };
    store.write(&key, Expect::Absent, &record, 0).await.unwrap();
    assert_eq!(store.load(&key, 0).await.unwrap(), Some(record.clone()));
    let next = StoredSession {
        version: 2,
        ..record.clone()
    };
    store.write(&key, Expect::unchanged(&record), &next, 0).await.unwrap();
    assert_eq!(store.load(&key, 0).await.unwrap(), Some(next));
    store.ping().await.unwrap();
}
