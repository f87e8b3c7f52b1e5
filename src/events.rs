//! Events (the contract's "Events"): every change of a session, delivered to each
//! `--webhook-url` as a CloudEvents 1.0 JSON body signed the Standard Webhooks way.
//!
//! The stores record each event in the same atomic step as the change (the transactional
//! outbox, `store::outbox`); this module only delivers what they recorded. The [`Dispatcher`]
//! claims due outbox entries (the store gives each destination a session's events in order,
//! one at a time, and one dispatcher at a time), POSTs each, and settles it: a 2xx is done,
//! anything else is retried with exponential backoff (first retry within a second, at most
//! `--webhook-max-backoff`) until `--webhook-retention` has passed, then dropped and counted.
//! Events wait in the store, not in memory: a receiver that never comes back costs storage,
//! never RAM. Any number of instances may dispatch from one store.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::{Clock, Millis, format_rfc3339_millis};
use crate::store::SessionStore;
use crate::store::outbox::{PendingEvent, Settlement};

/// Most deliveries in flight at once to one destination, per instance: a destination that
/// hangs holds at most this many, and the others keep theirs.
const MAX_IN_FLIGHT_PER_DESTINATION: usize = 64;
/// How long a claim holds an entry: longer than any delivery may take (and what an instance
/// killed with claims in hand delays their redelivery by).
const LEASE: Millis = 20_000;
/// When an entry claimed for a destination that has no room is offered again: long enough
/// that a slow destination's backlog is not claimed and given back over and over (each of its
/// entries at most once per this while it stays full), short next to how slow it is.
const RELEASE_DELAY: Millis = 5_000;
/// Longest one delivery may take before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often to look for due events when the last look found none.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often the pending-events gauges are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(5);
/// The first retry comes after about this long (with jitter: within a second).
const FIRST_BACKOFF: Millis = 500;

/// How events are delivered (`--webhook-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// The receivers; an entry's destination is its index here.
    pub urls: Vec<url::Url>,
    /// The HMAC key (the secret's bytes, or the base64-decoded rest of a `whsec_` secret).
    pub key: Vec<u8>,
    pub max_backoff: Duration,
    pub retention: Duration,
}

impl WebhookSettings {
    /// The key a secret stands for: a `whsec_` secret is base64 after the prefix (the Standard
    /// Webhooks form); any other secret is used as its bytes.
    pub fn key_of(secret: &str) -> Result<Vec<u8>, String> {
        match secret.strip_prefix("whsec_") {
            Some(encoded) => BASE64
                .decode(encoded)
                .map_err(|e| format!("--webhook-secret: a whsec_ secret must be base64 after the prefix: {e}")),
            None => Ok(secret.as_bytes().to_vec()),
        }
    }
}

/// The events' metrics (registered with the others in `/metrics`).
#[derive(Debug, Default, Clone)]
pub struct EventMetrics {
    /// Outbox entries waiting (every destination's), sampled.
    pub pending: Gauge,
    /// Age of the oldest of them, seconds, sampled.
    pub oldest_pending_age: Gauge<f64, AtomicU64>,
    pub delivered: Counter,
    pub failed_attempts: Counter,
    /// Given up: past the retention, or for a destination no longer configured.
    pub dropped: Counter,
}

/// The CloudEvents JSON of an event (the same bytes on every delivery of it).
pub fn render(pending: &PendingEvent) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Data<'a> {
        tenant: &'a str,
        session_id: &'a str,
        version: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        customer_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        session: Option<&'a RawValue>,
    }
    #[derive(Serialize)]
    struct CloudEvent<'a> {
        specversion: &'static str,
        id: &'a str,
        source: String,
        #[serde(rename = "type")]
        kind: String,
        subject: &'a str,
        time: String,
        datacontenttype: &'static str,
        data: Data<'a>,
    }
    let event = &pending.event;
    let session = event
        .session
        .as_deref()
        .map(serde_json::from_str::<&RawValue>)
        .transpose()?;
    serde_json::to_string(&CloudEvent {
        specversion: "1.0",
        id: &event.id,
        source: format!("/session-context/{}", pending.key.tenant),
        kind: format!("session-context.{}", event.kind.as_str()),
        subject: &pending.key.session_id,
        time: format_rfc3339_millis(event.time),
        datacontenttype: "application/json",
        data: Data {
            tenant: &pending.key.tenant,
            session_id: &pending.key.session_id,
            version: event.version,
            customer_id: event.customer.as_deref(),
            session,
        },
    })
}

/// The Standard Webhooks signature header value: `v1,<base64 of HMAC-SHA256 over
/// "{id}.{timestamp}.{body}">`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// When to try again after `attempts` failed deliveries (this one included): about 0.5 s,
/// then doubling, at most `max`; ±20 % jitter so that retries of many events spread out.
pub fn backoff(attempts: u32, max: Duration, jitter: f64) -> Millis {
    let base = FIRST_BACKOFF.saturating_mul(1_i64 << attempts.saturating_sub(1).min(40));
    let max = Millis::try_from(max.as_millis()).unwrap_or(Millis::MAX);
    let jittered = (base as f64 * (0.8 + 0.4 * jitter.clamp(0.0, 1.0))) as Millis;
    jittered.min(max).max(1)
}

/// Counts a finished delivery off its destination's in-flight deliveries.
fn settled(busy: &mut [usize], done: Result<u16, tokio::task::JoinError>) {
    if let Ok(destination) = done
        && let Some(b) = busy.get_mut(usize::from(destination))
    {
        *b = b.saturating_sub(1);
    }
}

/// Delivers the outbox's events until told to stop.
pub struct Dispatcher {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    settings: WebhookSettings,
    client: reqwest::Client,
    metrics: EventMetrics,
    /// Unique per process; each claim adds a counter, so this instance's own claims in flight
    /// count as another owner's and are not claimed twice.
    instance: String,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn SessionStore>,
        clock: Arc<dyn Clock>,
        settings: WebhookSettings,
        metrics: EventMetrics,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .user_agent(concat!("session-context/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        let instance = crate::store::outbox::EventRecord::new_id().map_err(|e| e.to_string())?;
        Ok(Dispatcher {
            store,
            clock,
            settings,
            client,
            metrics,
            instance,
        })
    }

    /// Runs until `stop` turns true: claims what is due, delivers, settles; samples the
    /// outbox for the metrics. Deliveries in flight when it stops are abandoned: their claims
    /// run out and another dispatcher (or this one after a restart) delivers them again.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        // Deliveries in flight, each answering with its destination; and how many per destination.
        let mut in_flight: JoinSet<u16> = JoinSet::new();
        let mut busy = vec![0usize; this.settings.urls.len()];
        let mut claims = 0u64;
        let mut last_stats = tokio::time::Instant::now() - STATS_EVERY;
        loop {
            if *stop.borrow() {
                return;
            }
            if last_stats.elapsed() >= STATS_EVERY {
                this.sample_stats().await;
                last_stats = tokio::time::Instant::now();
            }
            let room: usize = busy.iter().map(|b| MAX_IN_FLIGHT_PER_DESTINATION - b).sum();
            // Deliveries this round started (entries given back for a full destination do not
            // count: claiming again at once would only give them back again).
            let mut found = 0;
            if room > 0 {
                claims += 1;
                let owner = format!("{}/{claims}", this.instance);
                match this.store.claim_events(&owner, room, LEASE, this.clock.now()).await {
                    Ok(claimed) => {
                        for pending in claimed {
                            let destination = pending.destination;
                            match busy.get_mut(usize::from(destination)) {
                                // A destination without room (one that hangs, say) does not
                                // take the others' turn: its entry is offered again shortly.
                                Some(b) if *b >= MAX_IN_FLIGHT_PER_DESTINATION => {
                                    this.release(&pending).await;
                                    continue;
                                }
                                Some(b) => *b += 1,
                                None => {} // no longer configured: dropped at once
                            }
                            found += 1;
                            let this = Arc::clone(&this);
                            in_flight.spawn(async move {
                                this.deliver_and_settle(pending).await;
                                destination
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming events failed"),
                }
            }
            while let Some(done) = in_flight.try_join_next() {
                settled(&mut busy, done);
            }
            if found == 0 || room == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    Some(done) = in_flight.join_next(), if !in_flight.is_empty() => settled(&mut busy, done),
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// Gives a claimed entry back untried, to be offered again shortly (its attempts as they
    /// were, so its backoff after a real failure is still the first one's).
    async fn release(&self, pending: &PendingEvent) {
        let again = Settlement::Release {
            next_attempt_at: self.clock.now() + RELEASE_DELAY,
        };
        if let Err(e) = self.store.settle_event(&pending.entry, &again).await {
            tracing::debug!(error = %e, "giving back an event failed; its claim runs out instead");
        }
    }

    async fn sample_stats(&self) {
        match self.store.outbox_stats().await {
            Ok(stats) => {
                self.metrics
                    .pending
                    .set(i64::try_from(stats.pending).unwrap_or(i64::MAX));
                let age = stats
                    .oldest_recorded_at
                    .map_or(0.0, |at| (self.clock.now() - at).max(0) as f64 / 1000.0);
                self.metrics.oldest_pending_age.set(age);
            }
            Err(e) => tracing::debug!(error = %e, "reading the outbox's size failed"),
        }
    }

    async fn deliver_and_settle(&self, pending: PendingEvent) {
        let now = self.clock.now();
        let retention = Millis::try_from(self.settings.retention.as_millis()).unwrap_or(Millis::MAX);
        let settlement = match self.settings.urls.get(usize::from(pending.destination)) {
            None => {
                tracing::warn!(
                    destination = pending.destination,
                    "dropping an event for a webhook URL no longer configured"
                );
                self.metrics.dropped.inc();
                Settlement::Done
            }
            Some(url) => match self.deliver(url, &pending).await {
                Ok(()) => {
                    self.metrics.delivered.inc();
                    Settlement::Done
                }
                Err(reason) => {
                    self.metrics.failed_attempts.inc();
                    if now.saturating_sub(pending.recorded_at) >= retention {
                        tracing::warn!(%reason, event = %pending.event.id, "dropping an event past its retention");
                        self.metrics.dropped.inc();
                        Settlement::Done
                    } else {
                        tracing::debug!(%reason, event = %pending.event.id, attempts = pending.attempts + 1, "event delivery failed");
                        let jitter = getrandom::u32().map_or(0.5, |r| f64::from(r) / f64::from(u32::MAX));
                        Settlement::Retry {
                            next_attempt_at: now + backoff(pending.attempts + 1, self.settings.max_backoff, jitter),
                        }
                    }
                }
            },
        };
        if let Err(e) = self.store.settle_event(&pending.entry, &settlement).await {
            // The claim runs out and the event is delivered again: at least once.
            tracing::warn!(error = %e, "settling an event failed");
        }
    }

    /// One POST of the event; `Err` says why it did not count as delivered.
    async fn deliver(&self, url: &url::Url, pending: &PendingEvent) -> Result<(), String> {
        let body = render(pending).map_err(|e| format!("the stored event does not render: {e}"))?;
        let timestamp = u64::try_from(self.clock.now() / 1000).unwrap_or(0);
        let signature = sign(&self.settings.key, &pending.event.id, timestamp, &body);
        let response = self
            .client
            .post(url.clone())
            .header("content-type", "application/cloudevents+json")
            .header("webhook-id", &pending.event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SessionKey;
    use crate::store::outbox::{EventKind, EventRecord};

    fn pending(kind: EventKind, session: Option<&str>, customer: Option<&str>) -> PendingEvent {
        PendingEvent {
            entry: "1".into(),
            destination: 0,
            key: SessionKey::new("shop", "s1"),
            event: EventRecord {
                id: "9f1c1f6e-3b1a-4d2e-9a7b-2b7c1d3e4f50".into(),
                kind,
                version: 3,
                customer: customer.map(str::to_owned),
                session: session.map(str::to_owned),
                time: 1_770_222_604_047,
            },
            attempts: 0,
            recorded_at: 1_770_222_604_047,
        }
    }

    #[test]
    fn events_render_as_cloudevents_with_the_stored_session_as_is() {
        let doc = r#"{"sessionId":"s1","context":{"n":1.50},"metadata":{"version":3}}"#;
        let body = render(&pending(EventKind::Updated, Some(doc), Some("C1"))).unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["id"], "9f1c1f6e-3b1a-4d2e-9a7b-2b7c1d3e4f50");
        assert_eq!(json["source"], "/session-context/shop");
        assert_eq!(json["type"], "session-context.updated");
        assert_eq!(json["subject"], "s1");
        assert_eq!(json["time"], "2026-02-04T16:30:04.047Z");
        assert_eq!(json["data"]["tenant"], "shop");
        assert_eq!(json["data"]["sessionId"], "s1");
        assert_eq!(json["data"]["version"], 3);
        assert_eq!(json["data"]["customerId"], "C1");
        assert!(
            body.contains(r#""session":{"sessionId":"s1","context":{"n":1.50}"#),
            "{body}"
        );
        // Absent fields are left out, never null.
        let gone = render(&pending(EventKind::Deleted, None, None)).unwrap();
        assert!(
            !gone.contains("null") && !gone.contains("customerId") && !gone.contains("\"session\""),
            "{gone}"
        );
        assert!(gone.contains("session-context.deleted"));
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The test vector of the Standard Webhooks reference libraries.
        let key = WebhookSettings::key_of("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // Any other secret is its bytes.
        assert_eq!(WebhookSettings::key_of("plain").unwrap(), b"plain");
        assert!(WebhookSettings::key_of("whsec_***").is_err());
    }

    #[test]
    fn backoff_starts_within_a_second_doubles_and_is_capped() {
        let max = Duration::from_secs(300);
        for jitter in [0.0, 0.5, 1.0] {
            assert!(
                (400..=600).contains(&backoff(1, max, jitter)),
                "{}",
                backoff(1, max, jitter)
            );
        }
        assert_eq!(backoff(2, max, 0.5), 1_000);
        assert_eq!(backoff(3, max, 0.5), 2_000);
        assert_eq!(backoff(20, max, 1.0), 300_000);
        assert_eq!(backoff(u32::MAX, max, 0.0), 300_000);
    }
}
