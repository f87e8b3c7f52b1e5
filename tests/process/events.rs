//! Events through the real binary (the contract's "Events", issue 12), against real HTTP
//! receivers started by the tests (`common::receiver`), on every store: each acknowledged
//! change is one signed CloudEvent with the right type, version and body; expiry is told within
//! two sweeps; a receiver that fails, is down or hangs gets everything later and in order per
//! session, without holding back another URL; SIGKILL under a write load loses no event; two
//! instances on one store send each event once; a receiver that never comes back costs storage,
//! not memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::common::receiver::{Behaviour, Delivery, Event, Receiver, key_of, signature_valid, verify};
use crate::common::server::{Server, Store, secret};
use crate::common::*;

/// The key events are signed with; the service gets it in the Standard Webhooks form.
const KEY: &[u8] = b"events-test-key-events-test-key!";

fn webhook_secret() -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(KEY))
}

/// `serve` on `store` with events to `urls` (short backoff: 1 s at most), anonymous sessions
/// idling out after `anonymous_ttl`, and `extra` flags.
fn start_service(store: &str, urls: &[String], anonymous_ttl: &str, extra: &[&str]) -> Server {
    let saas_secret = std::str::from_utf8(SAAS_SECRET).unwrap();
    let secret_of_webhooks = webhook_secret();
    let mut args = vec![
        "--store",
        store,
        "--jwt-secret",
        secret(),
        "--saas-token-secret",
        saas_secret,
        "--anonymous-ttl",
        anonymous_ttl,
        "--webhook-secret",
        &secret_of_webhooks,
        "--webhook-max-backoff",
        "1s",
    ];
    for url in urls {
        args.extend(["--webhook-url", url.as_str()]);
    }
    args.extend(extra);
    Server::start(&args)
}

/// The API of one running service, as the tests call it.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    fn of(server: &Server) -> Api {
        Api {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            base: server.base.clone(),
        }
    }

    fn context(&self, id: &str, suffix: &str) -> String {
        format!("{}{}", self.base, context_path(id, suffix))
    }

    async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("the service answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// PUT (2) by a manager, with a saas-token for `saas_for` when given.
    async fn put(&self, id: &str, query: &str, body: Value, saas_for: Option<&str>) -> StatusCode {
        let mut request = self
            .client
            .put(self.context(id, query))
            .bearer_auth(manager())
            .json(&body);
        if let Some(customer) = saas_for {
            request = request.header("saas-token", saas(customer));
        }
        Self::answer(request).await.0
    }

    /// Creates anonymous session `id` (PUT with upsert) and checks it was created.
    async fn create(&self, id: &str, body: Value) {
        assert_eq!(self.put(id, "?upsert=true", body, None).await, StatusCode::CREATED);
    }

    async fn get(&self, id: &str) -> (StatusCode, Value) {
        Self::answer(self.client.get(self.context(id, "")).bearer_auth(manager())).await
    }

    /// The session as a manager reads it now (it must exist).
    async fn snapshot(&self, id: &str) -> Value {
        let (status, body) = self.get(id).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn try_add_attribute(&self, id: &str, key: &str, value: Value) -> Result<StatusCode, reqwest::Error> {
        let response = self
            .client
            .post(self.context(id, "/attributes"))
            .bearer_auth(manager())
            .json(&json!({"key": key, "value": value}))
            .send()
            .await?;
        Ok(response.status())
    }

    async fn add_attribute(&self, id: &str, key: &str, value: Value) -> StatusCode {
        self.try_add_attribute(id, key, value)
            .await
            .expect("the service answers")
    }

    async fn remove_attribute(&self, id: &str, key: &str) -> StatusCode {
        let url = self.context(id, &format!("/attributes/{key}"));
        Self::answer(self.client.delete(url).bearer_auth(manager())).await.0
    }

    async fn delete(&self, id: &str) -> StatusCode {
        Self::answer(self.client.delete(self.context(id, "")).bearer_auth(manager()))
            .await
            .0
    }

    /// DELETE /contexts?q=customerId:... (12).
    async fn delete_customer(&self, customer: &str) -> (StatusCode, Value) {
        let url = format!(
            "{}/session-context/{TENANT}/contexts?q=customerId:{customer}",
            self.base
        );
        Self::answer(self.client.delete(url).bearer_auth(manager())).await
    }

    /// A storefront request to `/me/context` with `token`.
    async fn me(&self, method: reqwest::Method, token: &str, query: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.base, me_path(query)))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::answer(request).await
    }

    /// The value of metric `name` in `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map(|value| value.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// Waits until metric `name` satisfies `done`, at most `within`; returns its value.
    async fn wait_metric(&self, name: &str, within: Duration, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let value = self.metric(name).await;
            if done(value) {
                return value;
            }
            assert!(Instant::now() < deadline, "{name} is still {value} after {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

const DELIVERED: &str = "session_context_events_delivered_total";
const FAILED: &str = "session_context_events_failed_attempts_total";
const PENDING: &str = "session_context_events_pending";
const OLDEST: &str = "session_context_events_oldest_pending_age_seconds";

/// `(sessionId, version, kind)` of a delivery, read without checks (for the waits).
fn peek(delivery: &Delivery) -> Option<(String, u64, String)> {
    let json: Value = serde_json::from_str(&delivery.body).ok()?;
    let kind = json["type"].as_str()?.strip_prefix("session-context.")?.to_owned();
    Some((
        json["data"]["sessionId"].as_str()?.to_owned(),
        json["data"]["version"].as_u64()?,
        kind,
    ))
}

/// The `(sessionId, version)` of every change the receiver acknowledged.
fn acknowledged(log: &[Delivery]) -> HashSet<(String, u64)> {
    log.iter()
        .filter(|d| d.accepted())
        .filter_map(peek)
        .map(|(session, version, _)| (session, version))
        .collect()
}

/// Whether the receiver acknowledged versions `1..=last` of each session of `last`.
fn has_every_version(log: &[Delivery], last: &BTreeMap<String, u64>) -> bool {
    let got = acknowledged(log);
    last.iter()
        .all(|(session, &last)| (1..=last).all(|v| got.contains(&(session.clone(), v))))
}

/// Every request of `receiver`, each checked as a receiver checks it (signature, body).
fn verified(receiver: &Receiver) -> Vec<(Delivery, Event)> {
    receiver
        .log()
        .into_iter()
        .map(|delivery| {
            let event = verify(&delivery, KEY);
            (delivery, event)
        })
        .collect()
}

/// Where an event stands in its session's history: its version, and whether it ends it.
fn position(event: &Event) -> (u64, u8) {
    (
        event.version,
        u8::from(matches!(event.kind.as_str(), "deleted" | "expired")),
    )
}

/// Checks the order in which one URL got each session's events (for sessions that are not
/// created again): never back in the history, no version skipped, and the next event only
/// after the one before was acknowledged (one at a time, in order).
fn assert_in_order(log: &[(Delivery, Event)]) {
    let mut last: HashMap<&str, ((u64, u8), bool)> = HashMap::new();
    for (delivery, event) in log {
        let now = position(event);
        if let Some(&(before, acknowledged)) = last.get(event.session_id.as_str()) {
            assert!(
                now >= before,
                "{} went back from {before:?} to {now:?}",
                event.session_id
            );
            if now > before {
                assert!(
                    acknowledged,
                    "{} {now:?} was sent before {before:?} was acknowledged",
                    event.session_id
                );
                assert!(
                    now.0 <= before.0 + 1,
                    "{} skipped from version {} to {}",
                    event.session_id,
                    before.0,
                    now.0
                );
            }
        }
        let entry = last.entry(event.session_id.as_str()).or_insert((now, false));
        if entry.0 != now {
            *entry = (now, false);
        }
        entry.1 |= delivery.accepted();
    }
}

/// Checks the event ids one URL got: every redelivery repeats its event's id with the same
/// body, and each change has one id. Returns how many ids came more than once.
fn assert_one_id_per_change(log: &[(Delivery, Event)]) -> usize {
    let mut by_id: HashMap<&str, (&Event, &str, usize)> = HashMap::new();
    let mut by_change: HashMap<(&str, u64, &str), &str> = HashMap::new();
    for (delivery, event) in log {
        let seen = by_id
            .entry(event.id.as_str())
            .or_insert((event, delivery.body.as_str(), 0));
        assert_eq!(seen.0, event, "one id, two events");
        assert_eq!(seen.1, delivery.body, "a redelivery with another body");
        seen.2 += 1;
        let id = by_change
            .entry((event.session_id.as_str(), event.version, event.kind.as_str()))
            .or_insert(event.id.as_str());
        assert_eq!(
            *id, event.id,
            "two ids for {} {} {}",
            event.kind, event.session_id, event.version
        );
    }
    by_id.values().filter(|(_, _, n)| *n > 1).count()
}

/// The ids acknowledged more than once, with when each acknowledgement came.
fn acknowledged_twice(log: &[(Delivery, Event)]) -> Vec<(String, Vec<Instant>)> {
    let mut times: BTreeMap<&str, Vec<Instant>> = BTreeMap::new();
    for (delivery, event) in log.iter().filter(|(d, _)| d.accepted()) {
        times.entry(event.id.as_str()).or_default().push(delivery.received);
    }
    times
        .into_iter()
        .filter(|(_, t)| t.len() > 1)
        .map(|(id, t)| (id.to_owned(), t))
        .collect()
}

/// The event ids one URL got, by change.
fn ids_by_change(log: &[(Delivery, Event)]) -> BTreeMap<(String, u64, String), String> {
    log.iter()
        .map(|(_, e)| ((e.session_id.clone(), e.version, e.kind.clone()), e.id.clone()))
        .collect()
}

/// One event a test expects, in its session's order.
#[derive(Debug)]
struct Expected {
    session: String,
    kind: &'static str,
    version: u64,
    customer: Option<String>,
    /// The session as a GET read it at that version (created, updated).
    snapshot: Option<Value>,
}

impl Expected {
    fn new(session: &str, kind: &'static str, version: u64, customer: Option<&str>, snapshot: Option<Value>) -> Self {
        if let Some(snapshot) = &snapshot {
            assert_eq!(snapshot["metadata"]["version"], json!(version), "{snapshot}");
        }
        Expected {
            session: session.to_owned(),
            kind,
            version,
            customer: customer.map(str::to_owned),
            snapshot,
        }
    }
}

/// (1) Each acknowledged change is one event: created, updated (attribute changes and the
/// login's adoption too), deleted (and deleted per session of a delete by customer), with the
/// version after the change, the customer when there is one and the session as a GET reads it
/// at that version; signed, and sent as `application/cloudevents+json`. Refused writes (409,
/// 403, 401, 404), attribute deletes that change nothing and reads emit nothing.
async fn each_change_is_one_signed_event(backend: Backend) {
    let store = Store::fresh(backend).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let server = start_service(&store.url, &[receiver.url()], "1h", &[]);
    let api = Api::of(&server);
    let (life, other, again) = (unique_name("life-"), unique_name("other-"), unique_name("again-"));
    let customer = unique_name("c");
    let mut expected = Vec::new();

    // A session's life: created, changed in every way, refused, read, adopted at login.
    api.create(
        &life,
        json!({"currency": "EUR", "siteCode": "main", "context": {"a": 1}}),
    )
    .await;
    expected.push(Expected::new(
        &life,
        "created",
        1,
        None,
        Some(api.snapshot(&life).await),
    ));
    let put = api
        .put(&life, "", json!({"currency": "USD", "metadata": {"version": 1}}), None)
        .await;
    assert_eq!(put, StatusCode::NO_CONTENT);
    expected.push(Expected::new(
        &life,
        "updated",
        2,
        None,
        Some(api.snapshot(&life).await),
    ));
    let stale = api
        .put(&life, "", json!({"currency": "GBP", "metadata": {"version": 1}}), None)
        .await;
    assert_eq!(stale, StatusCode::CONFLICT);
    let missing = api
        .put(&unique_name("nobody-"), "", json!({"metadata": {"version": 1}}), None)
        .await;
    assert_eq!(missing, StatusCode::NOT_FOUND);
    assert_eq!(
        api.add_attribute(&life, "color", json!("red")).await,
        StatusCode::NO_CONTENT
    );
    expected.push(Expected::new(
        &life,
        "updated",
        3,
        None,
        Some(api.snapshot(&life).await),
    ));
    assert_eq!(api.remove_attribute(&life, "color").await, StatusCode::NO_CONTENT);
    expected.push(Expected::new(
        &life,
        "updated",
        4,
        None,
        Some(api.snapshot(&life).await),
    ));
    assert_eq!(api.remove_attribute(&life, "never-set").await, StatusCode::NO_CONTENT);
    let (patched, _) = api
        .me(
            reqwest::Method::PATCH,
            &anonymous(&life),
            "",
            Some(json!({"language": "de", "context": {"b": {"c": [1, 2]}}, "metadata": {"version": 4}})),
        )
        .await;
    assert_eq!(patched, StatusCode::NO_CONTENT);
    expected.push(Expected::new(
        &life,
        "updated",
        5,
        None,
        Some(api.snapshot(&life).await),
    ));
    let login = customer_token(&life, &customer);
    let (status, adopted) = api.me(reqwest::Method::GET, &login, "", None).await;
    assert_eq!(status, StatusCode::OK, "{adopted}");
    assert_eq!(adopted["customerId"], json!(customer), "the login adopted the session");
    expected.push(Expected::new(
        &life,
        "updated",
        6,
        Some(&customer),
        Some(api.snapshot(&life).await),
    ));
    let (status, _) = api.me(reqwest::Method::GET, &login, "", None).await;
    assert_eq!(status, StatusCode::OK);
    let body = json!({"currency": "CHF", "metadata": {"version": 6}});
    let not_theirs = api.put(&life, "", body.clone(), Some("someone-else")).await;
    assert_eq!(not_theirs, StatusCode::FORBIDDEN);
    assert_eq!(api.put(&life, "", body, None).await, StatusCode::UNAUTHORIZED);
    let (status, _) = api
        .me(
            reqwest::Method::PATCH,
            &anonymous(&life),
            "",
            Some(json!({"language": "fr", "metadata": {"version": 6}})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an anonymous token on a customer's session"
    );
    let put = api
        .put(
            &life,
            "",
            json!({"siteCode": "outlet", "cartId": "cart-1", "metadata": {"version": 6}}),
            Some(&customer),
        )
        .await;
    assert_eq!(put, StatusCode::NO_CONTENT);
    expected.push(Expected::new(
        &life,
        "updated",
        7,
        Some(&customer),
        Some(api.snapshot(&life).await),
    ));

    // Another session of the customer; then the customer's sessions deleted at once.
    let created = api
        .put(&other, "?upsert=true", json!({"customerId": customer}), Some(&customer))
        .await;
    assert_eq!(created, StatusCode::CREATED);
    expected.push(Expected::new(
        &other,
        "created",
        1,
        Some(&customer),
        Some(api.snapshot(&other).await),
    ));
    let (status, deleted) = api.delete_customer(&customer).await;
    assert_eq!((status, &deleted), (StatusCode::OK, &json!({"deleted": 2})));
    expected.push(Expected::new(&life, "deleted", 7, Some(&customer), None));
    expected.push(Expected::new(&other, "deleted", 1, Some(&customer), None));
    assert_eq!(api.get(&life).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.delete(&other).await, StatusCode::NOT_FOUND);

    // A customer signs out their other sessions (14): deleted for each, nothing for the kept one.
    let (kept, ended, shopper) = (unique_name("kept-"), unique_name("ended-"), unique_name("c"));
    for id in [&kept, &ended] {
        let created = api
            .put(id, "?upsert=true", json!({"customerId": shopper}), Some(&shopper))
            .await;
        assert_eq!(created, StatusCode::CREATED);
        expected.push(Expected::new(
            id,
            "created",
            1,
            Some(&shopper),
            Some(api.snapshot(id).await),
        ));
    }
    let signed_out = api
        .client
        .delete(format!(
            "{}/session-context/{TENANT}/me/contexts?keepCurrent=true",
            api.base
        ))
        .bearer_auth(customer_token(&kept, &shopper));
    let (status, deleted) = Api::answer(signed_out).await;
    assert_eq!((status, &deleted), (StatusCode::OK, &json!({"deleted": 1})));
    expected.push(Expected::new(&ended, "deleted", 1, Some(&shopper), None));
    assert_eq!(
        api.add_attribute(&kept, "after", json!(1)).await,
        StatusCode::NO_CONTENT
    );
    expected.push(Expected::new(
        &kept,
        "updated",
        2,
        Some(&shopper),
        Some(api.snapshot(&kept).await),
    ));

    // Deleted, then created again: the deleted before the new created, each its own id.
    api.create(&again, json!({})).await;
    expected.push(Expected::new(
        &again,
        "created",
        1,
        None,
        Some(api.snapshot(&again).await),
    ));
    assert_eq!(api.delete(&again).await, StatusCode::NO_CONTENT);
    expected.push(Expected::new(&again, "deleted", 1, None, None));
    api.create(&again, json!({"language": "en-US"})).await;
    expected.push(Expected::new(
        &again,
        "created",
        1,
        None,
        Some(api.snapshot(&again).await),
    ));

    // Each session's last expected event is a change made after every refused write and read
    // of it, and a URL gets a session's events in order: once they are in, nothing else is due.
    let mut sessions: Vec<&String> = Vec::new();
    for wanted in &expected {
        if !sessions.contains(&&wanted.session) {
            sessions.push(&wanted.session);
        }
    }
    let lasts: Vec<(String, u64, String)> = sessions
        .iter()
        .map(|id| {
            let last = expected.iter().rev().find(|e| &e.session == *id).unwrap();
            (last.session.clone(), last.version, last.kind.to_owned())
        })
        .collect();
    let count_of = |id: &str| expected.iter().filter(|e| e.session == id).count();
    let counts: Vec<(String, usize)> = sessions.iter().map(|id| ((*id).clone(), count_of(id))).collect();
    receiver
        .wait_for(Duration::from_secs(10), "every change's event", |log| {
            counts.iter().all(|(id, n)| {
                let of_session: Vec<_> = log.iter().filter_map(peek).filter(|(s, _, _)| s == id).collect();
                of_session.len() >= *n && lasts.contains(of_session.last().unwrap())
            })
        })
        .await;
    let log = verified(&receiver);
    for (delivery, event) in &log {
        assert!(delivery.accepted());
        assert_eq!(event.tenant, TENANT);
    }
    for &id in &sessions {
        let got: Vec<&Event> = log.iter().map(|(_, e)| e).filter(|e| &e.session_id == id).collect();
        let wanted: Vec<&Expected> = expected.iter().filter(|e| &e.session == id).collect();
        let summary = |kind: &str, version: u64, customer: Option<&str>| format!("{kind} v{version} {customer:?}");
        assert_eq!(
            got.iter()
                .map(|e| summary(&e.kind, e.version, e.customer_id.as_deref()))
                .collect::<Vec<_>>(),
            wanted
                .iter()
                .map(|e| summary(e.kind, e.version, e.customer.as_deref()))
                .collect::<Vec<_>>(),
            "the events of {id}, in order"
        );
        for (event, wanted) in got.iter().zip(&wanted) {
            assert_eq!(
                event.session, wanted.snapshot,
                "data.session of {} v{} is the session as read at that version",
                event.kind, event.version
            );
        }
    }
    assert_eq!(log.len(), expected.len(), "no other event (no refused write, no read)");
    let ids: HashSet<&str> = log.iter().map(|(_, e)| e.id.as_str()).collect();
    assert_eq!(ids.len(), log.len(), "one id per change, each delivered once");

    // The signature is what a receiver checks: another key, or another body, does not verify.
    let (delivery, event) = &log[0];
    let (timestamp, signature) = (
        delivery.webhook_timestamp.as_deref().unwrap(),
        delivery.webhook_signature.as_deref().unwrap(),
    );
    assert!(signature.starts_with("v1,"), "{signature}");
    assert_eq!(key_of(&webhook_secret()), KEY);
    assert!(signature_valid(KEY, &event.id, timestamp, &delivery.body, signature));
    assert!(!signature_valid(
        b"another key",
        &event.id,
        timestamp,
        &delivery.body,
        signature
    ));
    let tampered = delivery.body.replace("\"version\":1", "\"version\":2");
    assert_ne!(tampered, delivery.body);
    assert!(!signature_valid(KEY, &event.id, timestamp, &tampered, signature));

    let total = expected.len() as f64;
    api.wait_metric(DELIVERED, Duration::from_secs(5), |n| n == total).await;
    assert_eq!(api.metric(FAILED).await, 0.0);
}

/// A customer token for session `id` (a login).
fn customer_token(id: &str, customer_id: &str) -> String {
    customer(id, customer_id)
}

/// (2) An anonymous session that idles out is told as `expired` (its last version, no
/// session) within two sweep intervals of its expiry, on every store; a customer session
/// without a TTL is not.
async fn expiry_is_told_within_two_sweeps(backend: Backend) {
    let store = Store::fresh(backend).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let sweep = Duration::from_secs(1);
    let server = start_service(&store.url, &[receiver.url()], "1s", &["--sweep-interval", "1s"]);
    let api = Api::of(&server);
    let (fleeting, kept, customer) = (unique_name("fleeting-"), unique_name("kept-"), unique_name("c"));
    let created = api
        .put(&kept, "?upsert=true", json!({"customerId": customer}), Some(&customer))
        .await;
    assert_eq!(created, StatusCode::CREATED);
    api.create(&fleeting, json!({"currency": "EUR"})).await;
    assert_eq!(
        api.add_attribute(&fleeting, "seen", json!(true)).await,
        StatusCode::NO_CONTENT
    );
    let last_use = Instant::now();
    let expires = last_use + Duration::from_secs(1);
    // The sweeps are jittered (up to 1.25 intervals apart); a second for delivery on top.
    let within = (expires + sweep.mul_f64(2.5) + Duration::from_secs(1)) - Instant::now();
    let log = receiver
        .wait_for(within, "the expired event", |log| {
            log.iter()
                .filter_map(peek)
                .any(|(s, _, kind)| s == fleeting && kind == "expired")
        })
        .await;
    println!(
        "{backend:?}: expired told {:?} after the expiry",
        log.last().unwrap().received.saturating_duration_since(expires)
    );
    let log = verified(&receiver);
    let of = |id: &str| -> Vec<(String, u64)> {
        log.iter()
            .filter(|(_, e)| e.session_id == id)
            .map(|(_, e)| (e.kind.clone(), e.version))
            .collect()
    };
    assert_eq!(
        of(&fleeting),
        [("created".into(), 1), ("updated".into(), 2), ("expired".into(), 2)]
    );
    let (_, expired) = log.iter().find(|(_, e)| e.kind == "expired").unwrap();
    assert_eq!((&expired.customer_id, &expired.session), (&None, &None));
    let (_, updated) = log.iter().find(|(_, e)| e.kind == "updated").unwrap();
    assert!(
        expired.time > updated.time,
        "an expiry is told at the session's expiry ({}), after its last change ({})",
        expired.time,
        updated.time
    );
    assert_eq!(api.get(&fleeting).await.0, StatusCode::NOT_FOUND);
    assert_eq!(of(&kept), [("created".into(), 1)], "a customer session does not expire");
    assert_one_id_per_change(&log);
}

/// How a receiver is unavailable for a while.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// It answers 500.
    Fails,
    /// Its port refuses connections.
    Down,
}

/// (3) A receiver that answers 500, or is down, for a while gets every event once it is
/// back: per session in order, redeliveries with the same id and body, the failed attempts
/// counted.
async fn a_receiver_gets_everything_after_an_outage(backend: Backend, outage: Outage) {
    let store = Store::fresh(backend).await;
    let mut receiver = match outage {
        Outage::Fails => Receiver::start(Behaviour::Fail).await,
        Outage::Down => Receiver::down().await,
    };
    let server = start_service(&store.url, &[receiver.url()], "1h", &[]);
    let api = Api::of(&server);
    let sessions: Vec<String> = (0..4).map(|_| unique_name("s-")).collect();
    let mut last = BTreeMap::new();
    for id in &sessions {
        api.create(id, json!({})).await;
        for n in 1..=4 {
            assert_eq!(
                api.add_attribute(id, &format!("k{n}"), json!(n)).await,
                StatusCode::NO_CONTENT
            );
        }
        last.insert(id.clone(), 5);
    }
    api.wait_metric(FAILED, Duration::from_secs(10), |n| n >= 8.0).await;
    if let Outage::Fails = outage {
        receiver
            .wait_for(Duration::from_secs(10), "a redelivery", |log| {
                let ids: HashSet<_> = log.iter().map(|d| d.webhook_id.clone()).collect();
                ids.len() < log.len()
            })
            .await;
    }
    match outage {
        Outage::Fails => receiver.set(Behaviour::Accept),
        Outage::Down => receiver.restart().await,
    }
    receiver
        .wait_for(Duration::from_secs(15), "every event after the outage", |log| {
            has_every_version(log, &last)
        })
        .await;
    let log = verified(&receiver);
    assert_in_order(&log);
    let repeated = assert_one_id_per_change(&log);
    if let Outage::Fails = outage {
        assert!(repeated > 0, "redeliveries repeat the id");
        assert!(
            log.iter().all(|(d, _)| d.accepted() || d.answered == Some(500)),
            "every request answered"
        );
    }
    assert!(
        acknowledged_twice(&log).is_empty(),
        "no event acknowledged twice without a crash"
    );
    assert!(api.metric(FAILED).await > 0.0);
    api.wait_metric(DELIVERED, Duration::from_secs(5), |n| n == 20.0).await;
    println!(
        "{backend:?} {outage:?}: {} requests for 20 events, {} failed attempts",
        log.len(),
        api.metric(FAILED).await
    );
}

async fn a_receiver_that_answers_500_gets_everything_later(backend: Backend) {
    a_receiver_gets_everything_after_an_outage(backend, Outage::Fails).await;
}

async fn a_receiver_that_is_down_gets_everything_later(backend: Backend) {
    a_receiver_gets_everything_after_an_outage(backend, Outage::Down).await;
}

/// Writers that add attributes (`{tag}-w{writer}-{n}`) to `sessions` through `apis` (taking
/// turns) until `stop`, or until a request is refused or fails (the service is gone); each
/// returns the `(session, attribute)` it had acknowledged. `acknowledged` counts them all.
fn spawn_writers(
    apis: &[Api],
    sessions: &[String],
    writers: usize,
    tag: &str,
    stop: &Arc<AtomicBool>,
    acknowledged: &Arc<AtomicUsize>,
) -> Vec<JoinHandle<Vec<(String, String)>>> {
    (0..writers)
        .map(|w| {
            let (apis, session) = (apis.to_vec(), sessions[w % sessions.len()].clone());
            let (stop, acknowledged, tag) = (Arc::clone(stop), Arc::clone(acknowledged), tag.to_owned());
            tokio::spawn(async move {
                let mut done = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("{tag}-w{w}-{n}");
                    match apis[n % apis.len()].try_add_attribute(&session, &key, json!(n)).await {
                        Ok(status) if status == StatusCode::NO_CONTENT => {
                            done.push((session.clone(), key));
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
                done
            })
        })
        .collect()
}

/// A random number in `range`.
fn random_in(range: std::ops::Range<u32>) -> u32 {
    range.start + getrandom::u32().unwrap() % (range.end - range.start)
}

/// (4) SIGKILL at random moments of a write load (writers changing a few sessions' attributes),
/// then a restart on the same store, twice: every version of every session (so every
/// acknowledged change) reaches each of two URLs, per session in order; an event comes twice
/// only across a kill. Memory loses everything on a kill, so not there.
async fn every_acknowledged_change_is_told_after_kill_9(backend: Backend) {
    let store = Store::fresh(backend).await;
    let receivers = [
        Receiver::start(Behaviour::Accept).await,
        Receiver::start(Behaviour::Accept).await,
    ];
    let urls: Vec<String> = receivers.iter().map(Receiver::url).collect();
    let sessions: Vec<String> = (0..3).map(|_| unique_name("k-")).collect();
    let mut server = start_service(&store.url, &urls, "1h", &[]);
    for id in &sessions {
        Api::of(&server).create(id, json!({})).await;
    }
    let (mut acknowledged, mut kills) = (Vec::new(), Vec::new());
    for round in 0..3 {
        if round > 0 {
            server = start_service(&store.url, &urls, "1h", &[]);
        }
        let (stop, count) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let writers = spawn_writers(&[Api::of(&server)], &sessions, 6, &format!("r{round}"), &stop, &count);
        let goal = random_in(10..80) as usize;
        let deadline = Instant::now() + Duration::from_secs(30);
        while count.load(Ordering::Relaxed) < goal {
            assert!(Instant::now() < deadline, "the load made too few writes in 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(u64::from(random_in(0..50)))).await;
            server.child.kill().unwrap(); // SIGKILL, in the middle of the load
            server.wait_exit(Duration::from_secs(5));
            kills.push(Instant::now());
        }
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            acknowledged.extend(writer.await.unwrap());
        }
    }
    let killed_at = Instant::now();
    let api = Api::of(&server);
    let mut last = BTreeMap::new();
    for id in &sessions {
        let session = api.snapshot(id).await;
        for (_, key) in acknowledged.iter().filter(|(s, _)| s == id) {
            assert!(
                session["context"].get(key).is_some(),
                "acknowledged {key} of {id} was lost"
            );
        }
        last.insert(id.clone(), session["metadata"]["version"].as_u64().unwrap());
    }
    // Deliveries in flight at a kill wait for their claim to run out (a minute) before the
    // restarted service sends them again.
    for receiver in &receivers {
        receiver
            .wait_for(Duration::from_secs(100), "every version after the kills", |log| {
                has_every_version(log, &last)
            })
            .await;
    }
    let recovered = killed_at.elapsed();
    let mut by_url = Vec::new();
    for receiver in &receivers {
        let log = verified(receiver);
        assert_in_order(&log);
        assert_one_id_per_change(&log);
        for (_, event) in &log {
            assert_eq!(event.kind, if event.version == 1 { "created" } else { "updated" });
            let context = event.session.as_ref().unwrap()["context"].as_object().unwrap();
            assert_eq!(
                context.len() as u64,
                event.version - 1,
                "each version adds one attribute: {event:?}"
            );
        }
        let twice = acknowledged_twice(&log);
        for (id, times) in &twice {
            assert!(
                kills.iter().any(|&kill| times[0] <= kill && kill <= times[1]),
                "{id} was acknowledged twice without a kill in between"
            );
        }
        by_url.push(ids_by_change(&log));
        println!(
            "{backend:?}: {} acknowledged writes, {} versions, {} requests, {} events twice (across a kill), all in {recovered:?} after the last start",
            acknowledged.len(),
            last.values().sum::<u64>(),
            log.len(),
            twice.len()
        );
    }
    assert_eq!(by_url[0], by_url[1], "each change has one id, the same for every URL");
}

/// (5) Two instances on one store, writes through both, one receiver: every event delivered,
/// in order, each exactly once (no failure, so no duplicate).
async fn two_instances_send_each_event_once(backend: Backend) {
    let store = Store::fresh(backend).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let servers = [
        start_service(&store.url, &[receiver.url()], "1h", &[]),
        start_service(&store.url, &[receiver.url()], "1h", &[]),
    ];
    let apis: Vec<Api> = servers.iter().map(Api::of).collect();
    let sessions: Vec<String> = (0..4).map(|_| unique_name("two-")).collect();
    for (n, id) in sessions.iter().enumerate() {
        apis[n % 2].create(id, json!({})).await;
    }
    let (stop, count) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let writers = spawn_writers(&apis, &sessions, 8, "two", &stop, &count);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::Relaxed) < 120 {
        assert!(Instant::now() < deadline, "the load made too few writes in 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.unwrap().len();
    }
    let mut last = BTreeMap::new();
    for id in &sessions {
        let version = apis[0].snapshot(id).await["metadata"]["version"].as_u64().unwrap();
        last.insert(id.clone(), version);
    }
    let events = last.values().sum::<u64>();
    assert_eq!(
        events as usize,
        sessions.len() + written,
        "every write was acknowledged"
    );
    receiver
        .wait_for(Duration::from_secs(20), "every event", |log| {
            has_every_version(log, &last)
        })
        .await;
    let log = verified(&receiver);
    assert_in_order(&log);
    assert_eq!(assert_one_id_per_change(&log), 0, "no event sent twice");
    assert_eq!(log.len() as u64, events, "each event once");
    let mut delivered = Vec::new();
    for api in &apis {
        delivered.push(api.metric(DELIVERED).await);
        assert_eq!(api.metric(FAILED).await, 0.0);
    }
    println!("{backend:?}: {events} events, delivered by the two instances: {delivered:?}");
    assert_eq!(delivered.iter().sum::<f64>(), events as f64);
}

/// How the slow one of two URLs is slow.
#[derive(Debug, Clone, Copy)]
enum Slow {
    /// It answers after 20 s (the service gives up on it before).
    Hangs,
    /// Its port refuses connections.
    Down,
}

/// (6) Two URLs, one slow: the other gets every event promptly (within a couple of seconds of
/// the writes), the slow one gets them later, and both get the same event ids.
async fn a_slow_url_does_not_hold_back_another(backend: Backend, slow: Slow, sessions: usize, changes: u64) {
    let store = Store::fresh(backend).await;
    let mut laggard = match slow {
        Slow::Hangs => Receiver::start(Behaviour::Hang(Duration::from_secs(20))).await,
        Slow::Down => Receiver::down().await,
    };
    let prompt = Receiver::start(Behaviour::Accept).await;
    // The slow URL first, so that a dispatcher serving URLs in order would show it.
    let server = start_service(&store.url, &[laggard.url(), prompt.url()], "1h", &[]);
    let api = Api::of(&server);
    let ids: Vec<String> = (0..sessions).map(|_| unique_name("fast-")).collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for part in 0..8 {
        let (api, ids) = (api.clone(), ids.clone());
        tasks.spawn(async move {
            for id in ids.iter().skip(part).step_by(8) {
                api.create(id, json!({})).await;
                for n in 1..changes {
                    assert_eq!(
                        api.add_attribute(id, &format!("k{n}"), json!(n)).await,
                        StatusCode::NO_CONTENT
                    );
                }
            }
        });
    }
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }
    let written = Instant::now();
    let last: BTreeMap<String, u64> = ids.iter().map(|id| (id.clone(), changes)).collect();
    prompt
        .wait_for(
            // Well before the slow URL's deliveries time out (10 s) and free their slots: a
            // dispatcher that let them hold back the other URL would not make it; the margin
            // is for a loaded machine.
            Duration::from_secs(8),
            "every event at the prompt URL while the other is slow",
            |log| has_every_version(log, &last),
        )
        .await;
    println!(
        "{backend:?} {slow:?}: {} events written in {:?}, all at the prompt URL {:?} later",
        sessions as u64 * changes,
        written - started,
        written.elapsed()
    );
    let held = laggard.log();
    assert!(
        held.iter().all(|d| !d.accepted() && peek(d).unwrap().1 == 1),
        "the slow URL has had at most each session's first event, unacknowledged"
    );
    match slow {
        Slow::Hangs => laggard.set(Behaviour::Accept),
        Slow::Down => laggard.restart().await,
    }
    laggard
        .wait_for(Duration::from_secs(15), "every event at the slow URL, later", |log| {
            has_every_version(log, &last)
        })
        .await;
    let (slow_log, prompt_log) = (verified(&laggard), verified(&prompt));
    assert_in_order(&slow_log);
    assert_in_order(&prompt_log);
    assert_one_id_per_change(&slow_log);
    assert_eq!(assert_one_id_per_change(&prompt_log), 0);
    assert_eq!(
        ids_by_change(&slow_log),
        ids_by_change(&prompt_log),
        "one id per change, the same for every URL"
    );
}

async fn a_hanging_url_does_not_hold_back_another(backend: Backend) {
    a_slow_url_does_not_hold_back_another(backend, Slow::Hangs, 3, 4).await;
}

async fn a_down_url_does_not_hold_back_another(backend: Backend) {
    a_slow_url_does_not_hold_back_another(backend, Slow::Down, 3, 4).await;
}

/// More sessions waiting for the hanging URL than deliveries one instance has in flight.
async fn a_url_hanging_on_many_sessions_does_not_hold_back_another(backend: Backend) {
    a_slow_url_does_not_hold_back_another(backend, Slow::Hangs, 400, 1).await;
}

/// `VmRSS`, `VmHWM`, ... of process `pid`, in bytes.
fn memory_of(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kb * 1024
}

/// (7) A receiver that never comes back: thousands of changes leave the events waiting in the
/// store (`events_pending` grows to all of them) while the service's memory stays bounded.
async fn a_receiver_that_never_comes_back_costs_storage_not_memory(backend: Backend) {
    const SESSIONS: usize = 300;
    const CHANGES: usize = 10; // per session: 3,000 events in all
    const MB: u64 = 1024 * 1024;
    let store = Store::fresh(backend).await;
    let gone = Receiver::down().await;
    let server = start_service(&store.url, &[gone.url()], "1h", &[]);
    let pid = server.child.id();
    let api = Api::of(&server);
    let ids: Vec<String> = (0..SESSIONS).map(|_| unique_name("gone-")).collect();
    let write = async |ids: &[String]| {
        let mut tasks = tokio::task::JoinSet::new();
        for part in 0..8 {
            let (api, ids) = (api.clone(), ids.to_vec());
            tasks.spawn(async move {
                for id in ids.iter().skip(part).step_by(8) {
                    api.create(id, json!({"currency": "EUR"})).await;
                    for n in 1..CHANGES {
                        let value = json!({"n": n, "padding": "x".repeat(100)});
                        assert_eq!(
                            api.add_attribute(id, &format!("k{n}"), value).await,
                            StatusCode::NO_CONTENT
                        );
                    }
                }
            });
        }
        while let Some(task) = tasks.join_next().await {
            task.unwrap();
        }
    };
    // Warm up (connections, caches, the dispatcher failing), then measure.
    write(&ids[..SESSIONS / 10]).await;
    api.wait_metric(FAILED, Duration::from_secs(10), |n| n > 0.0).await;
    let before = memory_of(pid, "VmRSS");
    write(&ids[SESSIONS / 10..]).await;
    let all = (SESSIONS * CHANGES) as f64;
    // The gauge is sampled every few seconds.
    api.wait_metric(PENDING, Duration::from_secs(20), |n| n >= all).await;
    // A few more rounds of retries of everything that is due.
    let failed = api.metric(FAILED).await;
    api.wait_metric(FAILED, Duration::from_secs(10), |n| n >= failed + SESSIONS as f64)
        .await;
    let (after, peak) = (memory_of(pid, "VmRSS"), memory_of(pid, "VmHWM"));
    println!(
        "{backend:?}: {all} events pending; RSS {} MB before the load, {} MB after, peak {} MB",
        before / MB,
        after / MB,
        peak / MB
    );
    assert!(
        peak.saturating_sub(before) < 30 * MB,
        "memory grew by {} MB (peak) with events waiting",
        peak.saturating_sub(before) / MB
    );
    assert_eq!(api.metric(DELIVERED).await, 0.0);
    assert!(api.metric(OLDEST).await > 0.0);
    assert!(gone.log().is_empty());
}

on_every_backend!(
    each_change_is_one_signed_event,
    expiry_is_told_within_two_sweeps,
    a_receiver_that_answers_500_gets_everything_later,
    a_receiver_that_is_down_gets_everything_later,
    a_hanging_url_does_not_hold_back_another,
    a_down_url_does_not_hold_back_another,
    a_url_hanging_on_many_sessions_does_not_hold_back_another,
    a_receiver_that_never_comes_back_costs_storage_not_memory,
);

// Memory loses everything on a kill: every other store.
on_backend!(kill_9_sqlite, Sqlite, every_acknowledged_change_is_told_after_kill_9);
on_backend!(
    kill_9_postgres,
    Postgres,
    every_acknowledged_change_is_told_after_kill_9
);
on_backend!(kill_9_redis, Redis, every_acknowledged_change_is_told_after_kill_9);
on_backend!(
    kill_9_redis_cluster,
    RedisCluster,
    every_acknowledged_change_is_told_after_kill_9
);

// Stores that several instances share.
on_backend!(two_instances_postgres, Postgres, two_instances_send_each_event_once);
on_backend!(two_instances_redis, Redis, two_instances_send_each_event_once);
on_backend!(
    two_instances_redis_cluster,
    RedisCluster,
    two_instances_send_each_event_once
);
