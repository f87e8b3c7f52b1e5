//! Concurrent histories: many clients hammer a few sessions on each store, through the HTTP API
//! (the real binary, two instances of it on the shared stores), and every operation is recorded
//! with its call time, its return time and what it answered. Each session's history must then be
//! linearizable against the one sequential model of the contract (`../model.rs`, the clock
//! standing still): the version-checked PUTs
//! and PATCHes, the unconditional attribute changes, deletes, reads (which may extend a
//! session's expiry, never its version) and logins that adopt a session racing all of these
//! fit one order that respects real time. The run ends with a read of every session, so an acknowledged change
//! that was lost or overwritten shows up as a violation.
//!
//! Crash rounds kill one service process with SIGKILL while the clients run and restart it on
//! the same store; requests left without an answer may or may not have happened.
//!
//! The checker is shown to catch what it must: unit tests on hand-made histories in
//! `checker.rs`, and here a store that skips the version check is caught losing updates.
//!
//! In CI each store gets a short run. For longer ones (rounds of fresh sessions until a time
//! bound): `scripts/histories.sh`, or
//! `HISTORY_SECONDS=600 cargo test --release --test stores histories::`.
//! `HISTORY_SEED` replays a run's choices; `HISTORY_CLIENTS` and `HISTORY_OPS` size a round.

mod checker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::server::{Server, start, start_at};
use crate::common::*;
use crate::model::{Context, Contract, Input, Output, State, View};
use async_trait::async_trait;
use axum::http::Method;
use serde_json::{Value, json};
use session_context::clock::Millis;
use session_context::store::outbox::{OutboxStats, PendingEvent, Settlement};
use session_context::store::{
    CustomerKey, CustomerSessions, Expect, MemoryStore, Page, RemovedSession, Revision, SessionKey, SessionStore,
    StoreError, StoredSession,
};

const KEYS: [&str; 3] = ["a", "b", "c"];

/// The model as the histories use it. A run lasts seconds and sessions idle out after an hour,
/// so the model's clock stands still at 0 and nothing expires.
const CONTRACT: Contract = Contract {
    idle: Some(60 * 60 * 1000),
    max_age: None,
};

impl checker::Model for Contract {
    type State = State;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> State {
        None
    }

    fn step(&self, state: &State, input: &Input, output: &Output) -> Vec<State> {
        let (expected, next) = self.apply(state, input, 0);
        match output {
            Output::Unknown if next != *state => vec![state.clone(), next],
            _ if *output == expected || *output == Output::Unknown => vec![next],
            _ => vec![],
        }
    }
}

/// A small, seedable generator (xorshift64*), so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
        .unwrap_or(default)
}

/// Where requests go: the router in this process, or real service processes.
enum Target {
    InProcess(Box<TestApp>),
    /// The base URLs of running service processes.
    Processes(Vec<String>, reqwest::Client),
}

/// The request never reached a server (connection refused): it certainly did not happen.
struct NotSent;

/// What came back: status, ETag version and body.
struct Answer {
    status: u16,
    etag: Option<u64>,
    json: Value,
}

/// C1's saas-token as a service process without a saas key of its own verifies it.
fn saas_for_processes() -> String {
    sign(session_context::auth::mint::TokenSpec {
        subject: Some("C1".into()),
        ttl: Duration::from_secs(3600),
        ..Default::default()
    })
}

fn etag_version(value: Option<&str>) -> Option<u64> {
    value?.trim_matches('"').parse().ok()
}

impl Target {
    async fn send(
        &self,
        instance: usize,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<Option<Answer>, NotSent> {
        match self {
            Target::InProcess(app) => {
                let mut request = axum::http::Request::builder()
                    .method(method)
                    .uri(path)
                    .header("authorization", format!("Bearer {token}"))
                    .header("saas-token", crate::common::saas("C1"));
                let body = match body {
                    Some(body) => {
                        request = request.header("content-type", "application/json");
                        axum::body::Body::from(body.to_string())
                    }
                    None => axum::body::Body::empty(),
                };
                let reply = app.send(request.body(body).expect("a valid request")).await;
                Ok(Some(Answer {
                    status: reply.status.as_u16(),
                    etag: etag_version(reply.header("etag")),
                    json: reply.json,
                }))
            }
            Target::Processes(bases, client) => {
                let base = &bases[instance % bases.len()];
                // The processes verify saas-tokens with the service's own key.
                let mut request = client
                    .request(method, format!("{base}{path}"))
                    .bearer_auth(token)
                    .header("saas-token", saas_for_processes())
                    .timeout(Duration::from_secs(20));
                if let Some(body) = body {
                    request = request.json(&body);
                }
                let response = match request.send().await {
                    Ok(response) => response,
                    Err(e) if e.is_connect() => return Err(NotSent),
                    // Sent, perhaps received and applied, but no answer came.
                    Err(_) => return Ok(None),
                };
                let status = response.status().as_u16();
                let etag = etag_version(response.headers().get("etag").and_then(|v| v.to_str().ok()));
                let Ok(bytes) = response.bytes().await else {
                    return Ok(None);
                };
                Ok(Some(Answer {
                    status,
                    etag,
                    json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                }))
            }
        }
    }

    /// Sends until the request reaches a server (one may be restarting), for at most 30 s.
    async fn deliver(
        &self,
        instance: usize,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Option<Answer> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.send(instance, method.clone(), path, token, body.clone()).await {
                Ok(answer) => return answer,
                Err(NotSent) => {
                    assert!(Instant::now() < deadline, "no server took requests for 30 s");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn instances(&self) -> usize {
        match self {
            Target::InProcess(_) => 1,
            Target::Processes(bases, _) => bases.len(),
        }
    }
}

fn context_of(json: &Value) -> Option<Context> {
    Some(
        json["context"]
            .as_object()?
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
    )
}

/// Reads an answer as the model's output; anything the contract does not allow for the
/// operation becomes `Unknown` and is counted as a failure of the run. Through `/me` a POST
/// answers 201 and the name.
fn interpret(input: &Input, answer: Option<Answer>) -> Output {
    let Some(answer) = answer else { return Output::Unknown };
    let version = answer.etag;
    match (input, answer.status, version) {
        (Input::SetAttribute { key, me: true, .. }, 201, Some(v)) if answer.json == json!(key) => {
            Output::Updated { version: v }
        }
        (Input::SetAttribute { me, .. }, 201 | 204, _) if *me == (answer.status == 204) => Output::Unknown,
        (_, 403, _) if answer.json["type"] == json!("forbidden") => Output::Forbidden,
        (Input::Get { .. } | Input::Login, 200, Some(v)) if answer.json["metadata"]["version"] == json!(v) => {
            match context_of(&answer.json) {
                Some(context) => Output::Found(View {
                    version: v,
                    currency: answer.json["currency"].as_str().map(str::to_owned),
                    customer: answer.json["customerId"].as_str().map(str::to_owned),
                    context,
                }),
                None => Output::Unknown,
            }
        }
        (_, 404, _) => Output::Missing,
        (Input::Put { .. } | Input::Patch { .. }, 201, Some(v)) => Output::Created { version: v },
        (Input::Put { .. } | Input::Patch { .. }, 409, _) => match answer.json["currentVersion"].as_u64() {
            Some(current) => Output::Conflict { current },
            None => Output::Unknown,
        },
        (Input::Delete, 204, None) => Output::Deleted,
        (
            Input::Put { .. } | Input::Patch { .. } | Input::SetAttribute { .. } | Input::RemoveAttribute { .. },
            204,
            Some(v),
        ) => Output::Updated { version: v },
        (Input::RemoveAttribute { .. }, 204, None) => Output::Unchanged,
        _ => Output::Unknown,
    }
}

type Operation = checker::Operation<Input, Output>;

/// One client's run: random operations on random sessions of `ids`, each recorded.
async fn client(
    target: Arc<Target>,
    ids: Arc<Vec<String>>,
    id: usize,
    seed: u64,
    ops: u64,
    epoch: Instant,
) -> Vec<(usize, Operation)> {
    let mut rng = Rng(seed | 1);
    let manager = manager();
    let anonymous: Vec<String> = ids.iter().map(|s| crate::common::anonymous(s)).collect();
    let customers: Vec<String> = ids.iter().map(|s| crate::common::customer(s, "C1")).collect();
    // The version this client believes each session is at.
    let mut known = vec![1u64; ids.len()];
    let mut history = Vec::new();
    let mut n = 0;
    while n < ops {
        let s = rng.below(ids.len() as u64) as usize;
        let sid = &ids[s];
        let value = json!(format!("c{id}-{n}")).to_string();
        let key = KEYS[rng.below(KEYS.len() as u64) as usize].to_string();
        // Mostly the version last seen; sometimes one off, to meet conflicts and stale writes.
        let version = match rng.below(10) {
            0 => known[s].saturating_sub(1).max(1),
            1 => known[s] + 1,
            _ => known[s],
        };
        let upsert = rng.chance(70);
        let query = if upsert { "?upsert=true" } else { "" };
        let roll = rng.below(100);
        // Reads and attribute changes go through the management routes or through /me with
        // the session's own storefront token.
        let me = rng.chance(40);
        let (via, token) = if me {
            (me_path(""), &anonymous[s])
        } else {
            (context_path(sid, ""), &manager)
        };
        let (input, method, path, token, body) = if roll < 4 {
            (Input::Login, Method::GET, me_path(""), &customers[s], None)
        } else if roll < 25 {
            (Input::Get { me }, Method::GET, via, token, None)
        } else if roll < 50 {
            let context: Context = KEYS
                .iter()
                .filter(|_| rng.chance(50))
                .map(|k| (k.to_string(), value.clone()))
                .collect();
            let body_context: serde_json::Map<String, Value> = context
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::from_str(v).unwrap()))
                .collect();
            let body = json!({"context": body_context, "metadata": {"version": version}});
            (
                Input::Put {
                    version,
                    upsert,
                    currency: None,
                    customer: None,
                    context: Some(context),
                },
                Method::PUT,
                context_path(sid, query),
                &manager,
                Some(body),
            )
        } else if roll < 65 {
            let mut changes: BTreeMap<String, Option<String>> = BTreeMap::new();
            for k in KEYS {
                if rng.chance(50) {
                    changes.insert(k.to_string(), (!rng.chance(30)).then(|| value.clone()));
                }
            }
            let body_context: serde_json::Map<String, Value> = changes
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_deref().map_or(Value::Null, |v| serde_json::from_str(v).unwrap()),
                    )
                })
                .collect();
            let body = json!({"context": body_context, "metadata": {"version": version}});
            (
                Input::Patch {
                    version,
                    upsert,
                    changes,
                },
                Method::PATCH,
                me_path(query),
                &anonymous[s],
                Some(body),
            )
        } else if roll < 85 {
            let body = json!({"key": key, "value": serde_json::from_str::<Value>(&value).unwrap()});
            (
                Input::SetAttribute { key, value, me },
                Method::POST,
                format!("{via}/attributes"),
                token,
                Some(body),
            )
        } else if roll < 95 {
            let path = format!("{via}/attributes/{key}");
            (Input::RemoveAttribute { key, me }, Method::DELETE, path, token, None)
        } else {
            (Input::Delete, Method::DELETE, context_path(sid, ""), &manager, None)
        };
        let instance = rng.below(target.instances() as u64) as usize;
        let called = epoch.elapsed().as_nanos() as u64;
        let answer = match target.send(instance, method, &path, token, body).await {
            Ok(answer) => answer,
            Err(NotSent) => {
                // Not an operation at all; wait for the server to come back.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        n += 1;
        let output = interpret(&input, answer);
        let returned = match output {
            Output::Unknown => u64::MAX,
            _ => epoch.elapsed().as_nanos() as u64,
        };
        match &output {
            Output::Found(View { version, .. }) | Output::Created { version } | Output::Updated { version } => {
                known[s] = *version
            }
            Output::Conflict { current } => known[s] = *current,
            Output::Missing | Output::Deleted => known[s] = 1,
            Output::Unchanged | Output::Unknown | Output::Forbidden => {}
        }
        history.push((
            s,
            checker::Operation {
                client: id,
                input,
                output,
                called,
                returned,
            },
        ));
    }
    history
}

/// One round: `clients` clients on `sessions` fresh sessions; `meanwhile` runs alongside them
/// and has finished before the final read of each session. Returns each session's history.
async fn round(
    target: &Arc<Target>,
    sessions: usize,
    clients: usize,
    ops: u64,
    seed: u64,
    meanwhile: impl Future<Output = ()>,
) -> Vec<Vec<Operation>> {
    let ids: Arc<Vec<String>> = Arc::new((0..sessions).map(|_| unique_name("h")).collect());
    let epoch = Instant::now();
    let mut seeds = Rng(seed | 1);
    let tasks: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(client(target.clone(), ids.clone(), c, seeds.next(), ops, epoch)))
        .collect();
    meanwhile.await;
    let mut per_session: Vec<Vec<Operation>> = (0..sessions).map(|_| Vec::new()).collect();
    for task in tasks {
        for (s, op) in task.await.expect("a client finishes") {
            per_session[s].push(op);
        }
    }
    let manager = manager();
    for (s, sid) in ids.iter().enumerate() {
        let called = epoch.elapsed().as_nanos() as u64;
        let answer = target
            .deliver(0, Method::GET, &context_path(sid, ""), &manager, None)
            .await;
        let output = interpret(&Input::Get { me: false }, answer);
        let returned = epoch.elapsed().as_nanos() as u64;
        per_session[s].push(checker::Operation {
            client: clients,
            input: Input::Get { me: false },
            output,
            called,
            returned,
        });
    }
    per_session
}

/// Checks each session's history; the description of the first violation, if any.
fn verify(histories: &[Vec<Operation>]) -> Result<(), String> {
    for (s, history) in histories.iter().enumerate() {
        if let Err(violation) = checker::check(&CONTRACT, history) {
            let show = |ops: &[usize]| {
                ops.iter()
                    .map(|&i| {
                        let op = &history[i];
                        let returned = if op.returned == u64::MAX {
                            "?".into()
                        } else {
                            op.returned.to_string()
                        };
                        format!(
                            "  #{i} client {} [{} ns .. {returned} ns] {:?} -> {:?}",
                            op.client, op.called, op.input, op.output
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let tail = violation.deepest_prefix.len().saturating_sub(8);
            return Err(format!(
                "session {s}: not linearizable ({} operations). Last of the deepest linearizable prefix:\n{}\nNone of these fits next:\n{}",
                history.len(),
                show(&violation.deepest_prefix[tail..]),
                show(&violation.stuck_on),
            ));
        }
    }
    Ok(())
}

fn seed() -> u64 {
    let seed = std::env::var("HISTORY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("randomness");
            u64::from_le_bytes(bytes)
        });
    eprintln!("HISTORY_SEED={seed}");
    seed
}

/// Rounds on `target` until `HISTORY_SECONDS` (default: one round); every history must check.
async fn histories_are_linearizable(target: Target) {
    let target = Arc::new(target);
    let seconds = setting("HISTORY_SECONDS", 0);
    let clients = setting("HISTORY_CLIENTS", 8) as usize;
    let ops = setting("HISTORY_OPS", 40);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut seeds = Rng(seed() | 1);
    let (mut rounds, mut operations) = (0, 0);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    loop {
        let histories = round(&target, 2, clients, ops, seeds.next(), async {}).await;
        let unknown: usize = histories
            .iter()
            .flatten()
            .filter(|op| op.output == Output::Unknown)
            .count();
        if let Err(violation) = verify(&histories) {
            panic!("round {rounds}: {violation}");
        }
        for op in histories.iter().flatten() {
            *outcomes.entry(outcome_name(&op.output)).or_insert(0) += 1;
        }
        assert_eq!(unknown, 0, "every request gets an answer the contract allows");
        rounds += 1;
        operations += histories.iter().map(Vec::len).sum::<usize>();
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!("{rounds} rounds, {operations} operations, all linearizable: {outcomes:?}");
    // A run that never met a conflict or a missing session tested less than it claims.
    for needed in ["found", "updated", "conflict", "created"] {
        assert!(outcomes.contains_key(needed), "no {needed} answer in {outcomes:?}");
    }
}

fn outcome_name(output: &Output) -> &'static str {
    match output {
        Output::Found(_) => "found",
        Output::Missing => "missing",
        Output::Created { .. } => "created",
        Output::Updated { .. } => "updated",
        Output::Unchanged => "unchanged",
        Output::Deleted => "deleted",
        Output::Conflict { .. } => "conflict",
        Output::Forbidden => "forbidden",
        Output::Unknown => "unknown",
    }
}

/// The target for `backend`: the memory store in process, one service process on SQLite, two
/// on a shared store (as deployed). The servers and the data directory live as long as `_keep`.
async fn real_processes(backend: Backend) -> (Target, (Vec<Server>, Option<tempfile::TempDir>)) {
    if backend == Backend::Memory {
        return (Target::InProcess(Box::new(TestApp::new(backend).await)), (vec![], None));
    }
    let (url, dir) = store_url(backend).await;
    let instances = if backend == Backend::Sqlite { 1 } else { 2 };
    let servers = (0..instances).map(|_| start(&url)).collect::<Vec<_>>();
    let bases = servers.iter().map(|s| s.base.clone()).collect();
    (Target::Processes(bases, reqwest::Client::new()), (servers, dir))
}

async fn concurrent_histories_are_linearizable(backend: Backend) {
    let (target, _keep) = real_processes(backend).await;
    histories_are_linearizable(target).await;
}

on_every_backend!(concurrent_histories_are_linearizable);

/// A store URL for `backend` and, for SQLite, the directory its file lives in.
async fn store_url(backend: Backend) -> (String, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("a temp dir");
            (
                format!("sqlite://{}", dir.path().join("sessions.db").display()),
                Some(dir),
            )
        }
        _ => (namespaced_url(backend).await, None),
    }
}

/// Rounds in which one service process is killed with SIGKILL while the clients run, and
/// restarted on the same address and store. Requests that were in flight have no answer and may
/// or may not have happened (the checker allows both); everything acknowledged must be there
/// and every history must still be linearizable. `HISTORY_CRASHES` rounds (default 1).
async fn histories_stay_linearizable_across_kill_9(backend: Backend) {
    let (url, _dir) = store_url(backend).await;
    let instances = if backend == Backend::Sqlite { 1 } else { 2 };
    let mut servers: Vec<Server> = (0..instances).map(|_| start(&url)).collect();
    let bases = servers.iter().map(|s| s.base.clone()).collect();
    let target = Arc::new(Target::Processes(bases, reqwest::Client::new()));
    let mut seeds = Rng(seed() | 1);
    let (mut unknown, mut operations) = (0, 0);
    for crash in 0..setting("HISTORY_CRASHES", 1) {
        let mut victim = servers.remove(0);
        let listen = victim.base.trim_start_matches("http://").to_owned();
        let (url, delay) = (url.clone(), Duration::from_millis(100 + seeds.below(300)));
        let (restarted_tx, restarted_rx) = std::sync::mpsc::channel();
        let crash_and_restart = async move {
            let restarted = tokio::task::spawn_blocking(move || {
                std::thread::sleep(delay);
                victim.child.kill().expect("SIGKILL");
                victim.wait_exit(Duration::from_secs(5));
                drop(victim);
                start_at(&listen, &url)
            })
            .await
            .expect("the server restarts");
            restarted_tx.send(restarted).expect("the test is waiting");
        };
        let histories = round(&target, 2, 8, 80, seeds.next(), crash_and_restart).await;
        servers.insert(0, restarted_rx.recv().expect("the restarted server"));
        if let Err(violation) = verify(&histories) {
            panic!("crash {crash}: {violation}");
        }
        unknown += histories
            .iter()
            .flatten()
            .filter(|op| op.output == Output::Unknown)
            .count();
        operations += histories.iter().map(Vec::len).sum::<usize>();
    }
    eprintln!("{operations} operations across SIGKILL, {unknown} without an answer, all linearizable");
}

on_backend!(sqlite_kill_9, Sqlite, histories_stay_linearizable_across_kill_9);
on_backend!(postgres_kill_9, Postgres, histories_stay_linearizable_across_kill_9);
on_backend!(redis_kill_9, Redis, histories_stay_linearizable_across_kill_9);
on_backend!(
    redis_cluster_kill_9,
    RedisCluster,
    histories_stay_linearizable_across_kill_9
);

/// A store that forgets the version check: it writes over whatever is there (last writer
/// wins), a moment after being asked, as a careless read-modify-write would.
struct LastWriterWins(MemoryStore);

#[async_trait]
impl SessionStore for LastWriterWins {
    async fn load(&self, key: &SessionKey, now: Millis) -> Result<Option<StoredSession>, StoreError> {
        self.0.load(key, now).await
    }

    async fn write(
        &self,
        key: &SessionKey,
        _expect: Expect,
        record: &StoredSession,
        now: Millis,
    ) -> Result<(), StoreError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let blind = match self.0.load(key, now).await? {
            Some(current) => Expect::unchanged(&current),
            None => Expect::Absent,
        };
        self.0.write(key, blind, record, now).await
    }

    async fn delete(&self, key: &SessionKey, revision: Revision, now: Millis) -> Result<(), StoreError> {
        self.0.delete(key, revision, now).await
    }

    async fn extend(
        &self,
        key: &SessionKey,
        revision: Revision,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.0.extend(key, revision, expires_at, now).await
    }

    async fn list_customer_sessions(
        &self,
        customer: &CustomerKey,
        page: Page,
        now: Millis,
    ) -> Result<CustomerSessions, StoreError> {
        self.0.list_customer_sessions(customer, page, now).await
    }

    async fn delete_customer_sessions(
        &self,
        customer: &CustomerKey,
        except: Option<&str>,
        now: Millis,
    ) -> Result<Vec<RemovedSession>, StoreError> {
        self.0.delete_customer_sessions(customer, except, now).await
    }

    async fn sweep_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        self.0.sweep_expired(now, limit).await
    }

    fn set_event_destinations(&self, destinations: u16) {
        self.0.set_event_destinations(destinations)
    }

    async fn claim_events(
        &self,
        owner: &str,
        limit: usize,
        lease: Millis,
        now: Millis,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        self.0.claim_events(owner, limit, lease, now).await
    }

    async fn settle_event(&self, entry: &str, settlement: &Settlement) -> Result<(), StoreError> {
        self.0.settle_event(entry, settlement).await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.0.outbox_stats().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_loses_updates_is_caught() {
    let store = Arc::new(LastWriterWins(MemoryStore::default()));
    let target = Arc::new(Target::InProcess(Box::new(TestApp::on_store(store, None, 65_536))));
    let mut seeds = Rng(seed() | 1);
    // Lost updates need two writers to meet in the store's 1 ms window; a few rounds make that
    // all but certain.
    for _ in 0..5 {
        let histories = round(&target, 2, 8, 40, seeds.next(), async {}).await;
        if let Err(violation) = verify(&histories) {
            eprintln!("caught, as it should be: {violation}");
            return;
        }
    }
    panic!("the checker accepted five rounds on a store that skips the version check");
}
