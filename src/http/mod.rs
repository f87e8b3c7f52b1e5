//! The HTTP face of the service: the router, the shared [`AppState`], and the small helpers
//! that turn use-case outcomes into responses. One handler file per resource; errors in
//! `error`, principals in `auth`, other extractors in `extract`.

pub mod admission;
pub mod attributes;
pub mod auth;
pub mod context;
pub mod cors;
pub mod customers;
pub mod error;
pub mod extract;
pub mod me;
pub mod metrics;
pub mod openapi;
pub mod ops;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Verifier;
use crate::service::{Outcome, Sessions, Snapshot};
use error::{ApiError, ErrorKind};
use metrics::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub sessions: Sessions,
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<Metrics>,
    /// The OpenAPI document of exactly these routes, rendered once.
    pub openapi: Arc<str>,
}

impl AppState {
    pub fn new(sessions: Sessions, verifier: Arc<Verifier>, metrics: Arc<Metrics>) -> Self {
        let (_, doc) = api();
        AppState {
            sessions,
            verifier,
            metrics,
            openapi: Arc::from(doc.to_json().unwrap_or_else(|_| "{}".into())),
        }
    }
}

/// The routes and the OpenAPI document describing exactly them.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(
            context::get_context,
            context::put_context,
            context::delete_context
        ))
        .routes(routes!(attributes::post_attribute))
        .routes(routes!(attributes::delete_attribute))
        .routes(routes!(me::get_me, me::patch_me, me::delete_me))
        .routes(routes!(attributes::post_me_attribute))
        .routes(routes!(attributes::delete_me_attribute))
        .routes(routes!(customers::list_contexts, customers::delete_contexts))
        .routes(routes!(customers::list_my_contexts, customers::delete_my_contexts))
        .routes(routes!(ops::live))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .split_for_parts()
}

/// The limits on each request and on all of them together, and the browser origins that may
/// send them.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Largest request body (413 past it).
    pub max_body_bytes: usize,
    /// Most bytes of request bodies held at once, service-wide (503 past it).
    pub max_inflight_body_bytes: usize,
    /// Longest one request may take, body upload included (408 past it).
    pub request_timeout: Duration,
    /// Browser origins allowed to call the API (CORS); off by default.
    pub cors_origins: cors::CorsOrigins,
    /// Tenants with browser origins of their own (replacing `cors_origins` for them).
    pub tenant_cors_origins: std::collections::HashMap<String, cors::CorsOrigins>,
}

impl Default for RequestLimits {
    /// The command line's defaults: 64 KiB, 64 MiB, 30 s, no CORS.
    fn default() -> Self {
        RequestLimits {
            max_body_bytes: 64 * 1024,
            max_inflight_body_bytes: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            cors_origins: cors::CorsOrigins::Off,
            tenant_cors_origins: std::collections::HashMap::new(),
        }
    }
}

/// The whole application, ready to serve, within `limits`.
pub fn router(state: AppState, limits: &RequestLimits) -> Router {
    let request_timeout = limits.request_timeout;
    let budget = Arc::new(admission::BodyBudget::new(
        limits.max_body_bytes,
        limits.max_inflight_body_bytes,
    ));
    let (routes, _) = api();
    let app = routes
        .fallback(|| async { ApiError::from(ErrorKind::RouteNotFound) })
        .method_not_allowed_fallback(|| async { ApiError::from(ErrorKind::MethodNotAllowed) })
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| async move {
                match tokio::time::timeout(request_timeout, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => ApiError::from(ErrorKind::RequestTimeout).into_response(),
                }
            },
        ))
        .layer(axum::middleware::from_fn_with_state(budget, admission::admit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            ApiError::from(ErrorKind::Internal).into_response()
        }))
        .layer(axum::middleware::from_fn(error::render_errors))
        .with_state(state);
    // CORS goes outermost, so that every answer to an allowed origin carries its headers,
    // including those the other layers make themselves (500 from catch-panic, 413/503 from
    // admission, 408 from the timeout). It answers preflights itself, so they need no token
    // (and are not counted in the metrics).
    match cors::tenant_layer(&limits.cors_origins, &limits.tenant_cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

/// `"<version>"`, the entity tag of a session at `version`.
pub fn etag(version: u64) -> HeaderValue {
    // Digits and quotes are always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).expect("a quoted number is a valid header value")
}

/// 200 with a stored session's JSON and its ETag.
pub fn session_response(record: Snapshot) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (header::ETAG, etag(record.version)),
        ],
        record.doc,
    )
        .into_response()
}

/// 200 with the session, or 304 with only its ETag when `If-None-Match` matched.
pub fn read_response(record: Snapshot, if_none_match: &extract::IfNoneMatch) -> Response {
    if if_none_match.matches(record.version) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag(record.version))]).into_response();
    }
    session_response(record)
}

/// 201 for a created session, 204 for a changed or unchanged one; the ETag when it changed.
pub fn write_response(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Created { version } => (StatusCode::CREATED, [(header::ETAG, etag(version))]).into_response(),
        Outcome::Updated { version } => (StatusCode::NO_CONTENT, [(header::ETAG, etag(version))]).into_response(),
        Outcome::Unchanged => no_content(),
    }
}

/// 204 without headers.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}
