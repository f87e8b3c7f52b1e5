//! The management resource `/session-context/{tenant}/context/{sessionId}`: read (1),
//! replace or create (2) and end (9) a session.

use axum::extract::State;
use axum::response::Response;

use super::auth::ManagementPrincipal;
use super::error::{ApiError, BodyErrors, SessionErrors, VersionErrors};
use super::extract::{IfMatch, IfNoneMatch, JsonBody, Saas, SessionIdParam, Upsert, VersionCheck};
use super::{AppState, no_content, read_response, write_response};
use crate::domain::SessionKey;
use crate::domain::request;
use crate::domain::session::SessionContext;
use crate::service::Caller;

/// Reads a session context.
#[utoipa::path(
    get,
    path = "/session-context/{tenant}/context/{sessionId}",
    tag = "Session management",
    params(
        super::openapi::TenantPath, super::openapi::SessionIdPath,
        ("If-None-Match" = Option<String>, Header, nullable = false,
            description = "Entity tags (\"3\") or *: 304 without a body when the session's matches"),
    ),
    responses(
        (status = 200, description = "The session context", body = SessionContext,
            headers(("ETag" = String, description = "The version in quotes"))),
        (status = 304, description = "Not modified: If-None-Match matched",
            headers(("ETag" = String, description = "The version in quotes"))),
        SessionErrors,
    ),
    security(("bearer" = ["session_context.context_manage"]))
)]
pub async fn get_context(
    State(state): State<AppState>,
    principal: ManagementPrincipal,
    SessionIdParam(id): SessionIdParam,
    if_none_match: IfNoneMatch,
) -> Result<Response, ApiError> {
    let key = SessionKey::new(principal.tenant, &id);
    let record = state.sessions.get(&key, &Caller::Management).await?;
    Ok(read_response(record, &if_none_match))
}

/// Updates a session context, or creates it with `upsert=true`.
#[utoipa::path(
    put,
    path = "/session-context/{tenant}/context/{sessionId}",
    tag = "Session management",
    params(
        super::openapi::TenantPath, super::openapi::SessionIdPath,
        ("upsert" = Option<bool>, Query, description = "Create the session if it does not exist"),
        ("saas-token" = Option<String>, Header, nullable = false, description = "The customer's token; required when the session has or gets a customerId"),
        super::openapi::IfMatchHeader,
    ),
    request_body(content = super::openapi::PutBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created"), (status = 204, description = "Updated"),
        SessionErrors, BodyErrors, VersionErrors,
    ),
    security(("bearer" = ["session_context.context_manage"]))
)]
pub async fn put_context(
    State(state): State<AppState>,
    principal: ManagementPrincipal,
    SessionIdParam(id): SessionIdParam,
    Upsert(upsert): Upsert,
    IfMatch(if_match): IfMatch,
    Saas(saas): Saas,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req = request::read_put(&body, &id).map_err(|d| ApiError::bad_request("Invalid session context", d))?;
    let check = VersionCheck::new(if_match, req.version);
    let key = SessionKey::new(principal.tenant, &id);
    let outcome = state
        .sessions
        .put(&key, &req, check.expected, upsert, &saas)
        .await
        .map_err(|e| check.refusal(e))?;
    Ok(write_response(outcome))
}

/// Ends a session (an extension of the reference API, e.g. at logout); a customer session
/// only with that customer's `saas-token`.
#[utoipa::path(
    delete,
    path = "/session-context/{tenant}/context/{sessionId}",
    tag = "Session management",
    params(
        super::openapi::TenantPath, super::openapi::SessionIdPath,
        ("saas-token" = Option<String>, Header, nullable = false, description = "The customer's token; required when the session has a customerId"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        SessionErrors,
    ),
    security(("bearer" = ["session_context.context_manage"]))
)]
pub async fn delete_context(
    State(state): State<AppState>,
    principal: ManagementPrincipal,
    SessionIdParam(id): SessionIdParam,
    Saas(saas): Saas,
) -> Result<Response, ApiError> {
    let key = SessionKey::new(principal.tenant, &id);
    state.sessions.delete(&key, &saas).await?;
    Ok(no_content())
}
