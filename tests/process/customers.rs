//! A customer's sessions (endpoints 11 to 14, issue 11) through the real binary, on every store:
//! a delete by customer removes every session it had when the request arrived, also when the
//! service is killed with SIGKILL in its middle (a retry after the restart finishes it) and when
//! another instance on the same store creates sessions meanwhile; a list never shows a session
//! that is gone; and the basics an operator meets (403, 400 with `details`, tenants, paging).
//!
//! Memory takes part only where a test lives within one process: its sessions die with it.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use session_context::auth::mint::TokenSpec;
use tokio::task::JoinHandle;

use crate::common::server::{BIN, Server, Store, secret};
use crate::common::*;

/// The customer whose sessions are listed and ended.
const CUSTOMER: &str = "alice";
/// Another customer of the same tenant, never touched.
const BYSTANDER: &str = "bob";
/// A second tenant, with a customer of the same id.
const OTHER_TENANT: &str = "outlet";

/// `serve` on `store_url` with the tests' access-token and saas-token secrets.
fn serve(store_url: &str) -> Server {
    let saas_secret = std::str::from_utf8(SAAS_SECRET).unwrap();
    Server::start(&[
        "--store",
        store_url,
        "--jwt-secret",
        secret(),
        "--saas-token-secret",
        saas_secret,
        "--anonymous-ttl",
        "1h",
    ])
}

/// `session-context seed`: sessions `<prefix>1` to `<prefix><count>` of `customer`, written
/// straight into the store (the bulk a delete has to work through).
fn seed(store_url: &str, customer: &str, prefix: &str, count: usize) {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("SESSION_CONTEXT_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(["seed", "--store", store_url, "--tenant", TENANT, "--customer", customer])
        .args(["--prefix", prefix, "--count", &count.to_string(), "--bytes", "200"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn management(tenant: &str) -> String {
    sign(TokenSpec {
        tenant: Some(tenant.into()),
        scope: Some(MANAGE.into()),
        ttl: TTL,
        ..Default::default()
    })
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A uniformly drawn number below `n`.
fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    u64::from_le_bytes(bytes) % n
}

fn session_url(base: &str, tenant: &str, id: &str) -> String {
    format!("{base}/session-context/{tenant}/context/{id}")
}

fn customer_url(base: &str, tenant: &str, customer: &str) -> String {
    format!("{base}/session-context/{tenant}/contexts?q=customerId:{customer}")
}

/// Creates session `id` of `customer` in `tenant` (PUT with upsert and the customer's
/// saas-token): the status, or the error when the service is not there.
async fn create(
    client: &reqwest::Client,
    base: &str,
    tenant: &str,
    id: &str,
    customer: &str,
) -> Result<StatusCode, reqwest::Error> {
    let reply = client
        .put(format!("{}?upsert=true", session_url(base, tenant, id)))
        .bearer_auth(management(tenant))
        .header("saas-token", saas(customer))
        .json(&json!({"customerId": customer, "currency": "EUR", "metadata": {"version": 1}}))
        .send()
        .await?;
    Ok(reply.status())
}

async fn created(client: &reqwest::Client, base: &str, tenant: &str, id: &str, customer: &str) {
    let status = create(client, base, tenant, id, customer).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "creating {id} of {customer} in {tenant}");
}

/// `GET /context/{id}` with a management token: its status.
async fn status_of(client: &reqwest::Client, base: &str, tenant: &str, id: &str) -> StatusCode {
    client
        .get(session_url(base, tenant, id))
        .bearer_auth(management(tenant))
        .send()
        .await
        .unwrap()
        .status()
}

/// The status of each of `ids` (GET, a few at a time).
async fn statuses(client: &reqwest::Client, base: &str, tenant: &str, ids: &[String]) -> HashMap<String, u16> {
    let chunk = ids.len().div_ceil(8).max(1);
    let tasks: Vec<_> = ids
        .chunks(chunk)
        .map(|part| {
            let (client, base, tenant, part) = (client.clone(), base.to_owned(), tenant.to_owned(), part.to_vec());
            tokio::spawn(async move {
                let mut found = Vec::with_capacity(part.len());
                for id in part {
                    let status = status_of(&client, &base, &tenant, &id).await.as_u16();
                    found.push((id, status));
                }
                found
            })
        })
        .collect();
    let mut all = HashMap::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Checks that every one of `ids` answers `expected` to a GET; `what` says why it must.
async fn assert_all(client: &reqwest::Client, base: &str, tenant: &str, ids: &[String], expected: u16, what: &str) {
    let found = statuses(client, base, tenant, ids).await;
    let wrong: Vec<_> = found.iter().filter(|(_, status)| **status != expected).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} {what} do not answer {expected}, among them {:?}",
        wrong.len(),
        ids.len(),
        wrong.iter().take(10).collect::<Vec<_>>()
    );
}

/// One page of a list (11): the sessions and `X-Total-Count`.
async fn list_page(
    client: &reqwest::Client,
    base: &str,
    tenant: &str,
    customer: &str,
    number: u64,
    size: u64,
) -> (Vec<Value>, u64) {
    let reply = client
        .get(format!(
            "{}&pageNumber={number}&pageSize={size}",
            customer_url(base, tenant, customer)
        ))
        .bearer_auth(management(tenant))
        .send()
        .await
        .unwrap();
    page_of(reply).await
}

/// A 200 list answer as its sessions and `X-Total-Count`.
async fn page_of(reply: reqwest::Response) -> (Vec<Value>, u64) {
    let status = reply.status();
    let total = reply
        .headers()
        .get("x-total-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body: Value = reply.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "{body}");
    let sessions = body.as_array().expect("a list is a JSON array").clone();
    (sessions, total.expect("a list carries X-Total-Count"))
}

fn ids_of(sessions: &[Value]) -> Vec<String> {
    sessions
        .iter()
        .map(|s| s["sessionId"].as_str().expect("a listed session has its id").to_owned())
        .collect()
}

/// Every session of a list (11), page by page (1000 each), when nothing changes meanwhile:
/// checks that every page carries the same total, that the pages add up to it, that no id is
/// listed twice and that every session listed is `customer`'s.
async fn list_all(client: &reqwest::Client, base: &str, tenant: &str, customer: &str) -> Vec<String> {
    let (mut ids, mut total) = (Vec::new(), None);
    for number in 1.. {
        let (sessions, page_total) = list_page(client, base, tenant, customer, number, 1000).await;
        assert_eq!(
            *total.get_or_insert(page_total),
            page_total,
            "the total changed between pages"
        );
        for session in &sessions {
            assert_eq!(
                session["customerId"],
                json!(customer),
                "someone else's session listed: {session}"
            );
        }
        let last = sessions.len() < 1000;
        ids.extend(ids_of(&sessions));
        if last {
            break;
        }
    }
    assert_eq!(
        ids.len() as u64,
        total.unwrap(),
        "X-Total-Count is not the number of sessions listed"
    );
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "an id listed twice"
    );
    ids
}

/// `DELETE /contexts?q=customerId:{customer}` (12): the status and body, or the error when the
/// service is not there.
async fn delete_customer(
    client: &reqwest::Client,
    base: &str,
    tenant: &str,
    customer: &str,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let reply = client
        .delete(customer_url(base, tenant, customer))
        .bearer_auth(management(tenant))
        .send()
        .await?;
    let status = reply.status();
    Ok((status, reply.json().await.unwrap_or(Value::Null)))
}

/// One creation of a [`Load`]: when it was sent and, if it was acknowledged (201), when the
/// answer came.
#[derive(Debug, Clone)]
struct Creation {
    id: String,
    sent: Instant,
    acked: Option<Instant>,
}

/// Writers creating sessions of [`CUSTOMER`] one after the other, through whatever service
/// `base` names at the time, until stopped or `limit` are acknowledged; a refused connection
/// (the service killed or restarting) is waited out.
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
    writers: Vec<JoinHandle<Vec<Creation>>>,
}

impl Load {
    fn start(client: &reqwest::Client, base: Arc<Mutex<String>>, writers: usize, prefix: &str, limit: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let writers = (0..writers)
            .map(|w| {
                let (client, base, stop, acknowledged) =
                    (client.clone(), base.clone(), stop.clone(), acknowledged.clone());
                let prefix = format!("{prefix}{w}-");
                tokio::spawn(async move {
                    let mut log = Vec::new();
                    for n in 0.. {
                        if stop.load(Ordering::SeqCst) || acknowledged.load(Ordering::SeqCst) >= limit {
                            break;
                        }
                        let base = base.lock().unwrap().clone();
                        let id = format!("{prefix}{n}");
                        let sent = Instant::now();
                        let status = create(&client, &base, TENANT, &id, CUSTOMER).await;
                        let acked = match status {
                            Ok(StatusCode::CREATED) => {
                                acknowledged.fetch_add(1, Ordering::SeqCst);
                                Some(Instant::now())
                            }
                            // The service is gone, restarting, or its store is busy.
                            Err(_) | Ok(StatusCode::SERVICE_UNAVAILABLE) => {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                None
                            }
                            Ok(other) => panic!("creating {id}: {other}"),
                        };
                        log.push(Creation { id, sent, acked });
                    }
                    log
                })
            })
            .collect();
        Load {
            stop,
            acknowledged,
            writers,
        }
    }

    /// Waits until `n` more creations have been acknowledged.
    async fn until_acknowledged(&self, n: usize) {
        let target = self.acknowledged.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acknowledged.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the load made too few creations in 30 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn stop(self) -> Vec<Creation> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for writer in self.writers {
            all.extend(writer.await.unwrap());
        }
        all
    }
}

/// The ids of the creations acknowledged before `instant`.
fn acknowledged_before(load: &[Creation], instant: Instant) -> Vec<String> {
    load.iter()
        .filter(|c| c.acked.is_some_and(|a| a < instant))
        .map(|c| c.id.clone())
        .collect()
}

/// The ids of the acknowledged creations sent after `instant`.
fn sent_and_acknowledged_after(load: &[Creation], instant: Instant) -> Vec<String> {
    load.iter()
        .filter(|c| c.sent > instant && c.acked.is_some())
        .map(|c| c.id.clone())
        .collect()
}

/// Sessions no delete of [`CUSTOMER`] may touch: [`BYSTANDER`]'s in the test tenant and
/// [`CUSTOMER`]'s namesake's in [`OTHER_TENANT`]; created through `base`, ten each.
async fn bystanders(client: &reqwest::Client, base: &str) -> (Vec<String>, Vec<String>) {
    let (mut others, mut namesakes) = (Vec::new(), Vec::new());
    for n in 0..10 {
        let (other, namesake) = (format!("bob-{n}"), format!("namesake-{n}"));
        created(client, base, TENANT, &other, BYSTANDER).await;
        created(client, base, OTHER_TENANT, &namesake, CUSTOMER).await;
        others.push(other);
        namesakes.push(namesake);
    }
    (others, namesakes)
}

/// Checks that the [`bystanders`] are all there and listed.
async fn assert_bystanders_untouched(client: &reqwest::Client, base: &str, bystanders: &(Vec<String>, Vec<String>)) {
    let (others, namesakes) = bystanders;
    assert_all(client, base, TENANT, others, 200, "sessions of another customer").await;
    assert_all(
        client,
        base,
        OTHER_TENANT,
        namesakes,
        200,
        "sessions of the namesake in another tenant",
    )
    .await;
    let mut listed = list_all(client, base, TENANT, BYSTANDER).await;
    listed.sort();
    assert_eq!(&listed, others);
    let mut listed = list_all(client, base, OTHER_TENANT, CUSTOMER).await;
    listed.sort();
    assert_eq!(&listed, namesakes);
}

/// How many sessions of [`CUSTOMER`] are seeded before a delete, so that it takes a while.
const SEEDED: usize = 3_000;

/// SIGKILL in the middle of a delete by customer, under a load creating that customer's
/// sessions; after a restart on the same store the delete is retried until it answers 200:
/// then every session acknowledged before that request was sent is gone (GET 404, not listed),
/// the seeded bulk too, every session created after its answer is there, the list adds up, and
/// the other customers' sessions are untouched.
async fn a_delete_cut_short_by_sigkill_and_retried_removes_every_acknowledged_session(backend: Backend) {
    let started = Instant::now();
    let store = Store::fresh(backend).await;
    seed(&store.url, CUSTOMER, "seeded-", SEEDED);
    let client = http_client();
    let mut server = serve(&store.url);
    let bystanders = bystanders(&client, &server.base).await;
    let base = Arc::new(Mutex::new(server.base.clone()));
    let load = Load::start(&client, base.clone(), 4, "w", usize::MAX);
    load.until_acknowledged(50).await;

    let first = {
        let (client, base) = (client.clone(), server.base.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let answer = delete_customer(&client, &base, TENANT, CUSTOMER).await;
            (answer.ok(), sent.elapsed())
        })
    };
    let delay = Duration::from_millis(random_below(200));
    tokio::time::sleep(delay).await;
    server.child.kill().unwrap(); // SIGKILL, in the middle of the delete and the creations
    server.wait_exit(Duration::from_secs(5));
    let (first, first_took) = first.await.unwrap();

    let restarted = serve(&store.url);
    *base.lock().unwrap() = restarted.base.clone();
    let (_, left) = list_page(&client, &restarted.base, TENANT, CUSTOMER, 1, 1).await;
    load.until_acknowledged(20).await; // the load goes on against the restarted service

    // The caller's retry: until it answers 200.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (sent, answered, deleted) = loop {
        let sent = Instant::now();
        match delete_customer(&client, &restarted.base, TENANT, CUSTOMER).await {
            Ok((StatusCode::OK, body)) => break (sent, Instant::now(), body["deleted"].as_u64().unwrap()),
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the retried delete never answered 200: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    load.until_acknowledged(20).await;
    let load = load.stop().await;

    let gone = acknowledged_before(&load, sent);
    let kept = sent_and_acknowledged_after(&load, answered);
    assert!(gone.len() >= 70, "too few creations before the delete: {}", gone.len());
    assert!(!kept.is_empty(), "no creation after the delete");
    assert_all(
        &client,
        &restarted.base,
        TENANT,
        &gone,
        404,
        "sessions acknowledged before the delete",
    )
    .await;
    assert_all(
        &client,
        &restarted.base,
        TENANT,
        &kept,
        200,
        "sessions created after the delete",
    )
    .await;
    let seeded: Vec<String> = (1..=SEEDED).step_by(37).map(|n| format!("seeded-{n}")).collect();
    assert_all(&client, &restarted.base, TENANT, &seeded, 404, "seeded sessions").await;

    let listed = list_all(&client, &restarted.base, TENANT, CUSTOMER).await;
    let gone: HashSet<&String> = gone.iter().collect();
    let shown: Vec<&String> = listed
        .iter()
        .filter(|id| gone.contains(id) || id.starts_with("seeded-"))
        .collect();
    assert!(shown.is_empty(), "deleted sessions are listed: {shown:?}");
    let listed_set: HashSet<&String> = listed.iter().collect();
    let missing: Vec<&String> = kept.iter().filter(|id| !listed_set.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "sessions created after the delete are not listed: {missing:?}"
    );
    assert_all(&client, &restarted.base, TENANT, &listed, 200, "listed sessions").await;
    assert_bystanders_untouched(&client, &restarted.base, &bystanders).await;
    println!(
        "{backend:?}: killed {delay:?} after the delete was sent ({}; it had run {first_took:?}); \
         {left} sessions of the customer ({SEEDED} seeded) listed after the restart; the retry \
         deleted {deleted}; {} acknowledged creations gone, {} after it kept; {:?} in all",
        match first {
            Some((status, body)) => format!("it answered {status} {body}"),
            None => "it got no answer".into(),
        },
        gone.len(),
        kept.len(),
        started.elapsed()
    );
}

on_backend!(
    kill_9_sqlite,
    Sqlite,
    a_delete_cut_short_by_sigkill_and_retried_removes_every_acknowledged_session
);
on_backend!(
    kill_9_postgres,
    Postgres,
    a_delete_cut_short_by_sigkill_and_retried_removes_every_acknowledged_session
);
on_backend!(
    kill_9_redis,
    Redis,
    a_delete_cut_short_by_sigkill_and_retried_removes_every_acknowledged_session
);
on_backend!(
    kill_9_redis_cluster,
    RedisCluster,
    a_delete_cut_short_by_sigkill_and_retried_removes_every_acknowledged_session
);

/// Checks one list taken while sessions are being created and none deleted: only `customer`'s
/// sessions, none of `gone`, and every id listed still there (GET through `check`).
async fn assert_list_shows_only_live(
    client: &reqwest::Client,
    listed: &[Value],
    gone: &HashSet<&String>,
    check: &str,
    who: &str,
) {
    let ids = ids_of(listed);
    for session in listed {
        assert_eq!(
            session["customerId"],
            json!(CUSTOMER),
            "{who}: someone else's session listed"
        );
    }
    let shown: Vec<&String> = ids
        .iter()
        .filter(|id| gone.contains(id) || id.starts_with("seeded-"))
        .collect();
    assert!(shown.is_empty(), "{who} lists deleted sessions: {shown:?}");
    assert_all(client, check, TENANT, &ids, 200, &format!("sessions {who} listed")).await;
}

/// Checks that one list shows no id twice and as many sessions as its X-Total-Count says.
fn assert_no_id_twice(listed: &[Value], total: u64, who: &str) {
    let ids = ids_of(listed);
    let mut seen = HashSet::new();
    let twice: Vec<&String> = ids.iter().filter(|id| !seen.insert(*id)).collect();
    assert!(
        twice.is_empty(),
        "{who} (X-Total-Count {total}, {} ids) shows sessions twice: {twice:?}",
        ids.len()
    );
    assert_eq!(total, ids.len() as u64, "{who}: X-Total-Count is not the number listed");
}

/// Two instances on one store: instance A creates sessions of a customer while instance B
/// deletes them all. After B's 200, every session acknowledged before the delete was sent is
/// gone, as seen from both; lists from either, taken right after (the creations still going
/// on), show none of them and nothing that a GET says is gone; at the end both list the same.
async fn a_delete_on_one_instance_removes_what_another_acknowledged(backend: Backend) {
    let started = Instant::now();
    let store = Store::fresh(backend).await;
    seed(&store.url, CUSTOMER, "seeded-", SEEDED);
    let client = http_client();
    let (a, b) = (serve(&store.url), serve(&store.url));
    let bystanders = bystanders(&client, &a.base).await;
    let load = Load::start(&client, Arc::new(Mutex::new(a.base.clone())), 4, "a", usize::MAX);
    load.until_acknowledged(50).await;

    let sent = Instant::now();
    let (status, body) = delete_customer(&client, &b.base, TENANT, CUSTOMER).await.unwrap();
    let (answered, took) = (Instant::now(), sent.elapsed());
    assert_eq!(status, StatusCode::OK, "{body}");
    let deleted = body["deleted"].as_u64().unwrap();
    assert!(deleted >= SEEDED as u64, "{deleted} deleted");

    // Lists right after, from both, while A still creates.
    let (from_a, from_b) = tokio::join!(
        list_page(&client, &a.base, TENANT, CUSTOMER, 1, 1000),
        list_page(&client, &b.base, TENANT, CUSTOMER, 1, 1000)
    );
    load.until_acknowledged(20).await;
    let load = load.stop().await;
    let gone = acknowledged_before(&load, sent);
    let gone_set: HashSet<&String> = gone.iter().collect();
    assert_list_shows_only_live(&client, &from_a.0, &gone_set, &b.base, "instance A").await;
    assert_list_shows_only_live(&client, &from_b.0, &gone_set, &a.base, "instance B").await;

    let kept = sent_and_acknowledged_after(&load, answered);
    assert!(!kept.is_empty(), "no creation after the delete");
    for server in [&a, &b] {
        assert_all(
            &client,
            &server.base,
            TENANT,
            &gone,
            404,
            "sessions acknowledged before the delete",
        )
        .await;
        assert_all(
            &client,
            &server.base,
            TENANT,
            &kept,
            200,
            "sessions created after the delete",
        )
        .await;
    }
    let (mut listed_a, mut listed_b) = (
        list_all(&client, &a.base, TENANT, CUSTOMER).await,
        list_all(&client, &b.base, TENANT, CUSTOMER).await,
    );
    listed_a.sort();
    listed_b.sort();
    assert_eq!(listed_a, listed_b, "the instances list different sessions");
    let shown: Vec<&String> = listed_a
        .iter()
        .filter(|id| gone_set.contains(id) || id.starts_with("seeded-"))
        .collect();
    assert!(shown.is_empty(), "deleted sessions are listed: {shown:?}");
    let listed: HashSet<&String> = listed_a.iter().collect();
    let missing: Vec<&String> = kept.iter().filter(|id| !listed.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "sessions created after the delete are not listed: {missing:?}"
    );
    assert_bystanders_untouched(&client, &b.base, &bystanders).await;
    // Last, as it is the one check here that a list walking a long index by rank fails.
    assert_no_id_twice(&from_a.0, from_a.1, "a list on A right after the delete");
    assert_no_id_twice(&from_b.0, from_b.1, "a list on B right after the delete");
    println!(
        "{backend:?}: B deleted {deleted} in {took:?} while A created; {} acknowledged before it \
         gone, {} after it kept; lists right after: {} on A, {} on B; {:?} in all",
        gone.len(),
        kept.len(),
        from_a.1,
        from_b.1,
        started.elapsed()
    );
}

on_backend!(
    two_instances_postgres,
    Postgres,
    a_delete_on_one_instance_removes_what_another_acknowledged
);
on_backend!(
    two_instances_redis,
    Redis,
    a_delete_on_one_instance_removes_what_another_acknowledged
);
on_backend!(
    two_instances_redis_cluster,
    RedisCluster,
    a_delete_on_one_instance_removes_what_another_acknowledged
);

/// `n` sessions of [`CUSTOMER`], `stable-1` to `stable-<n>`, that nothing changes: seeded
/// straight into the store, or on memory created through the service.
async fn stable_sessions(
    backend: Backend,
    store: &Store,
    client: &reqwest::Client,
    base: &str,
    n: usize,
) -> Vec<String> {
    let ids: Vec<String> = (1..=n).map(|i| format!("stable-{i}")).collect();
    if backend == Backend::Memory {
        on_each(&ids, 8, |id| {
            let (client, base) = (client.clone(), base.to_owned());
            async move { created(&client, &base, TENANT, &id, CUSTOMER).await }
        })
        .await;
    } else {
        seed(&store.url, CUSTOMER, "stable-", n);
    }
    ids
}

/// Runs `f` on each of `ids`, `tasks` at a time.
async fn on_each<F, Fut>(ids: &[String], tasks: usize, f: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for id in ids {
        if set.len() >= tasks {
            set.join_next().await.unwrap().unwrap();
        }
        set.spawn(f(id.clone()));
    }
    while let Some(done) = set.join_next().await {
        done.unwrap();
    }
}

/// One list taken under concurrent changes: when it was sent, what it showed, its total, how
/// long it took.
struct Seen {
    sent: Instant,
    ids: Vec<String>,
    total: u64,
    took: Duration,
}

/// The longest of `seen`.
fn slowest(seen: &[Seen]) -> Duration {
    seen.iter().map(|s| s.took).max().unwrap_or_default()
}

/// Lists (11, one page of up to 1000) `listers` at a time until `done`, counting the lists
/// answered in `answered`.
fn keep_listing(
    client: &reqwest::Client,
    base: &str,
    listers: usize,
    done: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
) -> Vec<JoinHandle<Vec<Seen>>> {
    (0..listers)
        .map(|_| {
            let (client, base, done, answered) = (client.clone(), base.to_owned(), done.clone(), answered.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let (sessions, total) = list_page(&client, &base, TENANT, CUSTOMER, 1, 1000).await;
                    for session in &sessions {
                        assert_eq!(session["customerId"], json!(CUSTOMER), "someone else's session listed");
                    }
                    seen.push(Seen {
                        sent,
                        ids: ids_of(&sessions),
                        total,
                        took: sent.elapsed(),
                    });
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                seen
            })
        })
        .collect()
}

/// Waits until `n` lists have been answered (a lister that failed stops the test here).
async fn wait_for_lists(answered: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "the lists stopped: {n} expected");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Checks that every list of `seen` shows each of `stable` (alive all along) exactly once and
/// no id twice.
fn assert_each_shown_once(seen: &[Seen], stable: &[String]) {
    for (n, list) in seen.iter().enumerate() {
        let mut counts: HashMap<&String, usize> = HashMap::new();
        for id in &list.ids {
            *counts.entry(id).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).map(|(id, _)| *id).collect();
        assert!(
            twice.is_empty(),
            "list {n} of {} (X-Total-Count {}, {} ids) shows sessions twice: {twice:?}",
            seen.len(),
            list.total,
            list.ids.len()
        );
        let missing: Vec<&String> = stable.iter().filter(|id| !counts.contains_key(id)).collect();
        assert!(
            missing.is_empty(),
            "list {n} of {} (X-Total-Count {}, {} ids) misses {} sessions that were alive all along, among them {:?}",
            seen.len(),
            list.total,
            list.ids.len(),
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
}

/// How many sessions nothing changes in the list tests: more than one batch of the walk over a
/// Redis index (500).
const STABLE: usize = 600;

/// Single sessions of a customer are deleted (DELETE /context/{id} with the customer's
/// saas-token) while lists of the customer are taken: no list shows a session whose delete was
/// acknowledged before the list was sent, every list shows each session that nothing touched,
/// and afterwards a list shows exactly those.
async fn a_list_never_shows_a_deleted_session(backend: Backend) {
    let started = Instant::now();
    let store = Store::fresh(backend).await;
    let client = http_client();
    let server = serve(&store.url);
    let stable = stable_sessions(backend, &store, &client, &server.base, STABLE).await;
    // The sessions to delete, changed once after their creation (the newest of the customer).
    let doomed: Vec<String> = (0..150).map(|n| format!("doomed-{n}")).collect();
    on_each(&doomed, 4, |id| {
        let (client, base) = (client.clone(), server.base.clone());
        async move {
            created(&client, &base, TENANT, &id, CUSTOMER).await;
            let changed = client
                .put(session_url(&base, TENANT, &id))
                .bearer_auth(manager())
                .header("saas-token", saas(CUSTOMER))
                .json(&json!({"customerId": CUSTOMER, "currency": "USD", "metadata": {"version": 1}}))
                .send()
                .await
                .unwrap();
            assert_eq!(changed.status(), StatusCode::NO_CONTENT);
        }
    })
    .await;

    let (done, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let listers = keep_listing(&client, &server.base, 2, done.clone(), answered.clone());
    let deleted_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // The deletes are spread over at least LISTS lists, however slow a list is here.
    const LISTS: usize = 12;
    let begun = Arc::new(AtomicUsize::new(0));
    let mut order = doomed.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, random_below(i as u64 + 1) as usize);
    }
    let deleters: Vec<_> = order
        .chunks(order.len().div_ceil(3))
        .map(|part| {
            let (client, base, part, deleted_at) =
                (client.clone(), server.base.clone(), part.to_vec(), deleted_at.clone());
            let (answered, begun, count) = (answered.clone(), begun.clone(), doomed.len());
            tokio::spawn(async move {
                for id in part {
                    let n = begun.fetch_add(1, Ordering::SeqCst);
                    wait_for_lists(&answered, (n * LISTS).div_ceil(count)).await;
                    let reply = client
                        .delete(session_url(&base, TENANT, &id))
                        .bearer_auth(manager())
                        .header("saas-token", saas(CUSTOMER))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(reply.status(), StatusCode::NO_CONTENT, "deleting {id}");
                    deleted_at.lock().unwrap().insert(id, Instant::now());
                }
            })
        })
        .collect();
    for deleter in deleters {
        deleter.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let mut seen = Vec::new();
    for lister in listers {
        seen.extend(lister.await.unwrap());
    }

    let deleted_at = deleted_at.lock().unwrap().clone();
    for (n, list) in seen.iter().enumerate() {
        let shown: Vec<&String> = list
            .ids
            .iter()
            .filter(|id| deleted_at.get(*id).is_some_and(|at| *at < list.sent))
            .collect();
        assert!(
            shown.is_empty(),
            "list {n} of {} shows sessions deleted before it was sent: {shown:?}",
            seen.len()
        );
    }
    let mut listed = list_all(&client, &server.base, TENANT, CUSTOMER).await;
    listed.sort();
    let mut expected = stable.clone();
    expected.sort();
    assert_eq!(listed, expected, "afterwards the list shows exactly the sessions left");
    // Last: what a list walking a long index by rank while it changes gets wrong.
    assert_each_shown_once(&seen, &stable);
    println!(
        "{backend:?}: {} lists (the slowest in {:?}) during {} deletes; {:?} in all",
        seen.len(),
        slowest(&seen),
        doomed.len(),
        started.elapsed()
    );
}

/// Sessions of a customer are created while lists of the customer are taken: every list shows
/// each session that existed all along exactly once, no id twice, and as many as X-Total-Count
/// says.
async fn a_list_during_creations_shows_each_session_once(backend: Backend) {
    let started = Instant::now();
    let store = Store::fresh(backend).await;
    let client = http_client();
    let server = serve(&store.url);
    let stable = stable_sessions(backend, &store, &client, &server.base, STABLE).await;
    // At most 300 more: every list still fits one page of 1000.
    let load = Load::start(&client, Arc::new(Mutex::new(server.base.clone())), 3, "new", 300);
    load.until_acknowledged(5).await;
    let (done, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let listers = keep_listing(&client, &server.base, 2, done.clone(), answered.clone());
    load.until_acknowledged(250).await;
    wait_for_lists(&answered, 6).await;
    done.store(true, Ordering::SeqCst);
    let mut seen = Vec::new();
    for lister in listers {
        seen.extend(lister.await.unwrap());
    }
    let load = load.stop().await;
    let listed = list_all(&client, &server.base, TENANT, CUSTOMER).await;
    let created = load.iter().filter(|c| c.acked.is_some()).count();
    assert_eq!(
        listed.len(),
        STABLE + created,
        "afterwards the list shows every session"
    );
    // Last: what a list walking a long index by rank while it changes gets wrong.
    assert_each_shown_once(&seen, &stable);
    for (n, list) in seen.iter().enumerate() {
        assert_eq!(
            list.total,
            list.ids.len() as u64,
            "list {n} of {}: X-Total-Count is not the number of sessions listed",
            seen.len()
        );
    }
    println!(
        "{backend:?}: {} lists (the slowest in {:?}) during {created} creations; {:?} in all",
        seen.len(),
        slowest(&seen),
        started.elapsed()
    );
}

on_every_backend!(
    a_list_never_shows_a_deleted_session,
    a_list_during_creations_shows_each_session_once
);

/// Sends `method` to `url` with `token`: the status and the body.
async fn call(client: &reqwest::Client, method: Method, url: &str, token: &str) -> (StatusCode, Value) {
    let reply = client.request(method, url).bearer_auth(token).send().await.unwrap();
    let status = reply.status();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// The endpoints as an operator and a storefront meet them through the binary (on SQLite):
/// 403 for an anonymous token on 13 and 14, 400 with `details` naming the field for a bad `q`,
/// `pageNumber`, `pageSize` or `keepCurrent`, pages newest `modifiedAt` first with the right
/// X-Total-Count, `keepCurrent=true`, `except`, and tenants kept apart.
async fn the_endpoints_answer_as_the_contract_says(backend: Backend) {
    let store = Store::fresh(backend).await;
    let client = http_client();
    let server = serve(&store.url);
    let base = server.base.as_str();
    let me = format!("{base}/session-context/{TENANT}/me/contexts");
    let contexts = format!("{base}/session-context/{TENANT}/contexts");

    // 13 and 14 are a customer's: an anonymous token, or one without a customer, gets 403.
    for token in [anonymous("anon-1"), manager()] {
        for method in [Method::GET, Method::DELETE] {
            let (status, body) = call(&client, method.clone(), &me, &token).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} /me/contexts: {body}");
            assert_eq!(body["type"], json!("forbidden"), "{body}");
        }
    }

    // A bad query: 400, `details` naming the field.
    let own = customer("s3", CUSTOMER);
    let bad = [
        (Method::GET, contexts.clone(), "q"),
        (Method::GET, format!("{contexts}?q=email:alice"), "q"),
        (Method::GET, format!("{contexts}?q=customerId:"), "q"),
        (Method::DELETE, contexts.clone(), "q"),
        (Method::DELETE, format!("{contexts}?q=sessionId:s1"), "q"),
        (
            Method::GET,
            format!("{contexts}?q=customerId:alice&pageNumber=0"),
            "pageNumber",
        ),
        (
            Method::GET,
            format!("{contexts}?q=customerId:alice&pageNumber=-1"),
            "pageNumber",
        ),
        (
            Method::GET,
            format!("{contexts}?q=customerId:alice&pageNumber=one"),
            "pageNumber",
        ),
        (
            Method::GET,
            format!("{contexts}?q=customerId:alice&pageSize=0"),
            "pageSize",
        ),
        (
            Method::GET,
            format!("{contexts}?q=customerId:alice&pageSize=1001"),
            "pageSize",
        ),
        (
            Method::GET,
            format!("{contexts}?q=customerId:alice&pageSize=ten"),
            "pageSize",
        ),
        (Method::GET, format!("{me}?pageNumber=0"), "pageNumber"),
        (Method::GET, format!("{me}?pageSize=1001"), "pageSize"),
        (Method::DELETE, format!("{me}?keepCurrent=yes"), "keepCurrent"),
    ];
    for (method, url, field) in bad {
        let token = if url.starts_with(&me) { own.clone() } else { manager() };
        let (status, body) = call(&client, method.clone(), &url, &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {url}: {body}");
        assert_eq!(body["type"], json!("validation_error"), "{method} {url}: {body}");
        let fields: Vec<&str> = body["details"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {url}: no details: {body}"))
            .iter()
            .filter_map(|d| d["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{method} {url}: {field} not named in {body}");
    }

    // Five sessions of the customer, one after the other, then the second changed: it is the
    // newest.
    for n in 1..=5 {
        created(&client, base, TENANT, &format!("s{n}"), CUSTOMER).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let touched = client
        .post(format!("{}/attributes", session_url(base, TENANT, "s2")))
        .bearer_auth(manager())
        .json(&json!({"key": "seen", "value": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(touched.status(), StatusCode::NO_CONTENT);
    created(&client, base, TENANT, "bob-1", BYSTANDER).await;
    created(&client, base, OTHER_TENANT, "o1", CUSTOMER).await;
    created(&client, base, OTHER_TENANT, "o2", CUSTOMER).await;

    let newest_first = ["s2", "s5", "s4", "s3", "s1"];
    let mut all = Vec::new();
    for (number, expected) in [
        (1, &newest_first[0..2]),
        (2, &newest_first[2..4]),
        (3, &newest_first[4..]),
        (4, &[][..]),
    ] {
        let (page, total) = list_page(&client, base, TENANT, CUSTOMER, number, 2).await;
        assert_eq!(total, 5, "X-Total-Count of page {number}");
        assert_eq!(ids_of(&page), expected, "page {number}");
        all.extend(page);
    }
    let modified: Vec<&str> = all
        .iter()
        .map(|s| s["metadata"]["modifiedAt"].as_str().unwrap())
        .collect();
    let mut sorted = modified.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(modified, sorted, "not newest modifiedAt first");
    assert_eq!(all[0]["context"]["seen"], json!(true), "a list shows the whole session");
    // The default page, and the customer's own list (13).
    let (page, total) = page_of(
        client
            .get(customer_url(base, TENANT, CUSTOMER))
            .bearer_auth(manager())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((ids_of(&page), total), (newest_first.map(String::from).to_vec(), 5));
    let (page, total) = page_of(
        client
            .get(format!("{me}?pageNumber=2&pageSize=3"))
            .bearer_auth(&own)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((ids_of(&page), total), (vec!["s3".to_owned(), "s1".to_owned()], 5));

    // 14 with keepCurrent=true: every other device signed out, the token's session kept.
    let (status, body) = call(&client, Method::DELETE, &format!("{me}?keepCurrent=true"), &own).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": 4})));
    assert_eq!(list_all(&client, base, TENANT, CUSTOMER).await, ["s3"]);
    for id in ["s1", "s2", "s4", "s5"] {
        assert_eq!(
            status_of(&client, base, TENANT, id).await,
            StatusCode::NOT_FOUND,
            "{id}"
        );
    }
    // 12 with except: nothing else to end.
    let (status, body) = call(
        &client,
        Method::DELETE,
        &format!("{contexts}?q=customerId:{CUSTOMER}&except=s3"),
        &manager(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": 0})));
    assert_eq!(status_of(&client, base, TENANT, "s3").await, StatusCode::OK);
    // 14 without keepCurrent: the last one too.
    let (status, body) = call(&client, Method::DELETE, &me, &own).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": 1})));
    assert_eq!(list_page(&client, base, TENANT, CUSTOMER, 1, 60).await, (vec![], 0));
    let (status, body) = call(
        &client,
        Method::DELETE,
        &format!("{contexts}?q=customerId:{CUSTOMER}"),
        &manager(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": 0})));

    // The namesake in the other tenant and the other customer are untouched.
    let mut namesakes = list_all(&client, base, OTHER_TENANT, CUSTOMER).await;
    namesakes.sort();
    assert_eq!(namesakes, ["o1", "o2"]);
    assert_eq!(status_of(&client, base, OTHER_TENANT, "o1").await, StatusCode::OK);
    assert_eq!(list_all(&client, base, TENANT, BYSTANDER).await, ["bob-1"]);
    // A tenant's token does not reach another tenant's sessions.
    let (status, body) = call(
        &client,
        Method::GET,
        &customer_url(base, OTHER_TENANT, CUSTOMER),
        &manager(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // And a delete there leaves this tenant's alone.
    created(&client, base, TENANT, "s6", CUSTOMER).await;
    let (status, body) = call(
        &client,
        Method::DELETE,
        &customer_url(base, OTHER_TENANT, CUSTOMER),
        &management(OTHER_TENANT),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": 2})));
    assert_eq!(list_all(&client, base, TENANT, CUSTOMER).await, ["s6"]);
    assert_eq!(
        list_page(&client, base, OTHER_TENANT, CUSTOMER, 1, 60).await,
        (vec![], 0)
    );
}

on_backend!(basics_sqlite, Sqlite, the_endpoints_answer_as_the_contract_says);
