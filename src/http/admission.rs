//! Admitting a request's body before anything of it is read. A body whose declared length is
//! over the limit gets 413 at once (so a client that sent `Expect: 100-continue` never gets
//! `100 Continue`), and every admitted body takes its size, as declared or else the limit,
//! from one service-wide budget (`--max-inflight-body-bytes`) until its request ends. When the
//! budget is spent, new requests with bodies get 503 with `Retry-After`: the memory that
//! request bodies hold is bounded by the budget, not by how many connections or HTTP/2 streams
//! clients open.

use std::sync::Arc;

use axum::body::HttpBody;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::{ApiError, ErrorKind};

/// The budget is counted in units of this many bytes.
const UNIT: usize = 1024;

/// How long a client refused for lack of budget is asked to wait, in seconds.
const RETRY_AFTER: &str = "1";

/// The body limits of the whole service.
#[derive(Debug)]
pub struct BodyBudget {
    max_body_bytes: usize,
    units: Arc<Semaphore>,
}

impl BodyBudget {
    /// A budget of `inflight_bytes` for bodies of at most `max_body_bytes` each.
    pub fn new(max_body_bytes: usize, inflight_bytes: usize) -> Self {
        let units = inflight_bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget {
            max_body_bytes,
            units: Arc::new(Semaphore::new(units)),
        }
    }

    /// How many units a body of (at most) `bytes` takes; 0 for none.
    fn units_for(bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
    }
}

/// The middleware: 413 for a declared length over the limit, 503 when the budget is spent,
/// else the request runs holding its share of the budget.
pub async fn admit(State(budget): State<Arc<BodyBudget>>, request: Request, next: Next) -> Response {
    let declared = declared_length(&request);
    let bytes = match declared {
        Some(n) if n > budget.max_body_bytes as u64 => {
            return ApiError::from(ErrorKind::PayloadTooLarge).into_response();
        }
        // `n` is at most the limit here, so it fits.
        Some(n) => usize::try_from(n).unwrap_or(budget.max_body_bytes),
        // Chunked or an HTTP/2 body without content-length: it may grow to the limit.
        None => budget.max_body_bytes,
    };
    let units = BodyBudget::units_for(bytes);
    if units == 0 {
        return next.run(request).await;
    }
    let Ok(share) = Arc::clone(&budget.units).try_acquire_many_owned(units) else {
        tracing::debug!(bytes, "request refused: the in-flight body budget is spent");
        let mut response = ApiError::from(ErrorKind::Unavailable).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
        return response;
    };
    let response = next.run(request).await;
    drop(share);
    response
}

/// The body's length as the request declares it: its `Content-Length`, or 0 when it has no
/// body at all; `None` when the length is not known in advance.
fn declared_length(request: &Request) -> Option<u64> {
    if let Some(length) = request.headers().get(header::CONTENT_LENGTH) {
        // hyper has already refused a malformed Content-Length; be safe anyway.
        return Some(length.to_str().ok().and_then(|l| l.parse().ok()).unwrap_or(u64::MAX));
    }
    let hint = request.body().size_hint();
    hint.exact()
}
