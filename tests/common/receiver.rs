//! A webhook receiver for the events tests: a small HTTP server on 127.0.0.1 that records every
//! request it gets (the Standard Webhooks headers, the content type and the body) and answers
//! as the test says (accept, fail with 500, or hang), and that can be taken down (the port
//! refuses connections, the ones open are cut) and brought back on the same port. With it, the
//! check of what a receiver gets: the Standard Webhooks signature and the CloudEvent body.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 204 at once (any 2xx acknowledges; this one is not 200 on purpose).
    Accept,
    /// 500 at once.
    Fail,
    /// 200 after this long, or as the new behaviour says as soon as it is switched (a slow
    /// receiver that the test can release).
    Hang(Duration),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook_id: Option<String>,
    pub webhook_timestamp: Option<String>,
    pub webhook_signature: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    /// When it arrived.
    pub received: Instant,
    /// When it arrived, Unix seconds.
    pub received_unix: u64,
    /// What the receiver answered (`None` while it is still hanging).
    pub answered: Option<u16>,
}

impl Delivery {
    /// Whether the receiver acknowledged it (answered 2xx).
    pub fn accepted(&self) -> bool {
        self.answered.is_some_and(|s| (200..300).contains(&s))
    }
}

struct Shared {
    log: Mutex<Vec<Delivery>>,
    behaviour: watch::Sender<Behaviour>,
}

/// A running (or stopped) receiver.
pub struct Receiver {
    pub port: u16,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Starts on a free port, answering `behaviour`.
    pub async fn start(behaviour: Behaviour) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            log: Mutex::new(Vec::new()),
            behaviour: watch::channel(behaviour).0,
        });
        Receiver {
            port,
            task: Some(tokio::spawn(serve(listener, Arc::clone(&shared)))),
            shared,
        }
    }

    /// A receiver that is down from the start: its port refuses connections until
    /// [`Receiver::restart`].
    pub async fn down() -> Receiver {
        let mut receiver = Self::start(Behaviour::Accept).await;
        receiver.stop().await;
        receiver
    }

    /// The URL to give `--webhook-url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/session-context", self.port)
    }

    /// Answers `behaviour` from now on (requests hanging now answer by it at once).
    pub fn set(&self, behaviour: Behaviour) {
        self.shared.behaviour.send_replace(behaviour);
    }

    /// Goes down: the port is closed and every open connection cut.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Comes back on the same port.
    pub async fn restart(&mut self) {
        assert!(self.task.is_none(), "the receiver is running");
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the same port again");
        self.task = Some(tokio::spawn(serve(listener, Arc::clone(&self.shared))));
    }

    /// Every request so far, in the order they arrived.
    pub fn log(&self) -> Vec<Delivery> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the log, at most `within`; panics saying `what` did not
    /// happen (and what came) otherwise.
    pub async fn wait_for(&self, within: Duration, what: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if done(&log) {
                return log;
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = log.iter().map(|d| d.body.chars().take(200).collect()).collect();
                panic!(
                    "{what}: not within {within:?}; {} requests came: {:#?}",
                    log.len(),
                    &seen[seen.len().saturating_sub(3)..]
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this set, so aborting this task cuts them all.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(Arc::clone(&shared), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let mut delivery = Delivery {
        webhook_id: header("webhook-id"),
        webhook_timestamp: header("webhook-timestamp"),
        webhook_signature: header("webhook-signature"),
        content_type: header("content-type"),
        body: String::new(),
        received: Instant::now(),
        received_unix: SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs(),
        answered: None,
    };
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    delivery.body = String::from_utf8_lossy(&body).into_owned();
    let index = {
        let mut log = shared.log.lock().unwrap();
        log.push(delivery);
        log.len() - 1
    };
    let mut behaviour = shared.behaviour.subscribe();
    let status = loop {
        let now = *behaviour.borrow_and_update();
        match now {
            Behaviour::Accept => break 204,
            Behaviour::Fail => break 500,
            Behaviour::Hang(how_long) => {
                tokio::select! {
                    () = tokio::time::sleep(how_long) => break 200,
                    _ = behaviour.changed() => {}
                }
            }
        }
    };
    shared.log.lock().unwrap()[index].answered = Some(status);
    let response = Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("a valid response");
    Ok(response)
}

/// The key of a Standard Webhooks secret: the base64 after `whsec_`, or else the secret's bytes.
pub fn key_of(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => BASE64.decode(encoded).expect("a whsec_ secret is base64"),
        None => secret.as_bytes().to_vec(),
    }
}

/// Whether `header` (`webhook-signature`: space-separated `v1,<base64>` entries) holds a valid
/// signature of `body` under `id` and `timestamp` with `key`, as a Standard Webhooks receiver
/// checks it (constant-time comparison).
pub fn signature_valid(key: &[u8], id: &str, timestamp: &str, body: &str, header: &str) -> bool {
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|signature| {
            let Ok(signature) = BASE64.decode(signature) else {
                return false;
            };
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
            mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
            mac.verify_slice(&signature).is_ok()
        })
}

/// The CloudEvent a delivery carried, as a receiver reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    /// `created`, `updated`, `deleted` or `expired` (the type without `session-context.`).
    pub kind: String,
    pub tenant: String,
    pub session_id: String,
    pub version: u64,
    pub customer_id: Option<String>,
    /// The whole resource after the change (created, updated).
    pub session: Option<Value>,
    /// RFC 3339 with milliseconds and `Z`.
    pub time: String,
}

impl Event {
    /// `(sessionId, version)`.
    pub fn change(&self) -> (String, u64) {
        (self.session_id.clone(), self.version)
    }
}

/// Checks `delivery` as a careful receiver would, and returns its event: the content type,
/// the Standard Webhooks headers and signature with `key` (a timestamp within five minutes of
/// its arrival), and the CloudEvents 1.0 body (`data` as the contract says, no `null`
/// anywhere). Panics saying what is wrong.
pub fn verify(delivery: &Delivery, key: &[u8]) -> Event {
    let body = &delivery.body;
    assert_eq!(
        delivery.content_type.as_deref(),
        Some("application/cloudevents+json"),
        "content type of {body}"
    );
    let id = delivery.webhook_id.as_deref().expect("a webhook-id header");
    let timestamp = delivery
        .webhook_timestamp
        .as_deref()
        .expect("a webhook-timestamp header");
    let seconds: u64 = timestamp.parse().expect("webhook-timestamp is Unix seconds");
    assert!(
        seconds.abs_diff(delivery.received_unix) <= 300,
        "webhook-timestamp {seconds} is far from the arrival {}",
        delivery.received_unix
    );
    let signature = delivery
        .webhook_signature
        .as_deref()
        .expect("a webhook-signature header");
    assert!(
        signature_valid(key, id, timestamp, body, signature),
        "the signature {signature} of {id}.{timestamp}.{body} does not verify"
    );
    let json: Value = serde_json::from_str(body).expect("the body is JSON");
    assert_no_null(&json, body);
    assert_eq!(json["specversion"], "1.0", "{body}");
    assert_eq!(json["id"].as_str(), Some(id), "the body's id is the webhook-id: {body}");
    let kind = json["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("session-context."))
        .expect("type session-context.*");
    assert!(["created", "updated", "deleted", "expired"].contains(&kind), "{body}");
    let data = &json["data"];
    let tenant = data["tenant"].as_str().expect("data.tenant").to_owned();
    assert_eq!(json["source"], format!("/session-context/{tenant}"), "{body}");
    let session_id = data["sessionId"].as_str().expect("data.sessionId").to_owned();
    assert_eq!(json["subject"].as_str(), Some(session_id.as_str()), "{body}");
    let time = json["time"].as_str().expect("time").to_owned();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
        "time with milliseconds and Z: {time}"
    );
    let version = data["version"].as_u64().expect("data.version");
    assert!(version >= 1, "{body}");
    let customer_id = data
        .get("customerId")
        .map(|c| c.as_str().expect("customerId is a string").to_owned());
    let session = data.get("session").cloned();
    match kind {
        "created" | "updated" => {
            let session = session.as_ref().expect("data.session on created and updated");
            assert_eq!(session["sessionId"].as_str(), Some(session_id.as_str()), "{body}");
            assert_eq!(session["metadata"]["version"].as_u64(), Some(version), "{body}");
            assert_eq!(
                session.get("customerId").and_then(Value::as_str),
                customer_id.as_deref(),
                "data.customerId is the session's: {body}"
            );
        }
        _ => assert!(session.is_none(), "no data.session on {kind}: {body}"),
    }
    let known = ["tenant", "sessionId", "version", "customerId", "session"];
    for field in data.as_object().expect("data is an object").keys() {
        assert!(known.contains(&field.as_str()), "unknown data.{field}: {body}");
    }
    Event {
        id: id.to_owned(),
        kind: kind.to_owned(),
        tenant,
        session_id,
        version,
        customer_id,
        session,
        time,
    }
}

fn assert_no_null(value: &Value, body: &str) {
    match value {
        Value::Null => panic!("a null in {body}"),
        Value::Array(items) => items.iter().for_each(|v| assert_no_null(v, body)),
        Value::Object(fields) => fields.values().for_each(|v| assert_no_null(v, body)),
        _ => {}
    }
}
