//! Operational endpoints: liveness, readiness (the store can take writes), Prometheus metrics and the
//! service's own OpenAPI document. None of them needs a token.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorKind};

/// The body of a health answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "Operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn live() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// The process is up and its store can take writes.
#[utoipa::path(get, path = "/health/ready", tag = "Operations",
    responses((status = 200, description = "Ready", body = Health),
              (status = 503, description = "The store cannot take writes: unreachable, an SQLite file deleted or replaced, or a disk that refuses writes", body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<axum::Json<Health>, ApiError> {
    match state.sessions.ready().await {
        Ok(()) => Ok(axum::Json(Health { status: "ok" })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ErrorKind::Unavailable.into())
        }
    }
}

/// Request counts and latency histograms per route and status.
#[utoipa::path(get, path = "/metrics", tag = "Operations",
    responses((status = 200, description = "OpenMetrics text format", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/session-context/openapi.json", tag = "Operations",
    responses((status = 200, description = "The OpenAPI 3 document of this service", content_type = "application/json")))]
pub async fn openapi(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], state.openapi.to_string()).into_response()
}
