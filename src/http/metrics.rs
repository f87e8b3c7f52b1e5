//! Request metrics and the request log: one middleware times every request, counts it by
//! method, route template and status for `/metrics`, and writes one log line. Tokens and
//! bodies are never logged.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 15))
}

/// The service's metrics, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
    swept: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("session_context");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let swept = Counter::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method, route and status",
            latency.clone(),
        );
        registry.register(
            "expired_sessions_swept",
            "Expired sessions removed by the sweep",
            swept.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            swept,
        }
    }
}

impl Metrics {
    /// The metrics in the Prometheus / OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Registers the events' metrics (with `--webhook-url`).
    pub fn register_events(&mut self, events: &crate::events::EventMetrics) {
        let registry = &mut self.registry;
        registry.register(
            "events_pending",
            "Events waiting in the outbox (all destinations)",
            events.pending.clone(),
        );
        registry.register(
            "events_oldest_pending_age_seconds",
            "Age of the oldest event waiting in the outbox",
            events.oldest_pending_age.clone(),
        );
        registry.register(
            "events_delivered",
            "Events delivered (answered 2xx)",
            events.delivered.clone(),
        );
        registry.register(
            "events_failed_attempts",
            "Event deliveries that failed (each retried until the retention)",
            events.failed_attempts.clone(),
        );
        registry.register(
            "events_dropped",
            "Events given up: past the retention, or for a destination no longer configured",
            events.dropped.clone(),
        );
    }

    /// Counts sessions removed by the expiry sweep.
    pub fn record_swept(&self, count: usize) {
        self.swept.inc_by(count as u64);
    }
}

/// The method as a metrics label: the methods the API knows by name, every other one as
/// `other`. HTTP allows any token as a method, and one label set per method an anonymous
/// client makes up would grow the registry (and `/metrics`) without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Times, counts and logs one request.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    tracing::info!(
        method = %method,
        route = %route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    let labels = RequestLabels { method, route, status };
    state.metrics.requests.get_or_create(&labels).inc();
    state
        .metrics
        .latency
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
    response
}
