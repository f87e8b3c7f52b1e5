//! The storefront resource `/session-context/{tenant}/me/context`: the caller's own session,
//! named by its token, read (5), partially updated (6) and ended (10, the storefront's logout).
//! The first of these with a customer token on an anonymous session adopts it (login).

use axum::extract::State;
use axum::response::Response;

use super::auth::MePrincipal;
use super::error::{ApiError, BodyErrors, SessionErrors, VersionErrors};
use super::extract::{IfMatch, IfNoneMatch, JsonBody, Upsert, VersionCheck};
use super::{AppState, no_content, read_response, write_response};
use crate::domain::SessionKey;
use crate::domain::request;
use crate::domain::session::SessionContext;
use crate::service::Caller;

/// Reads the caller's own session context.
#[utoipa::path(
    get,
    path = "/session-context/{tenant}/me/context",
    tag = "Own session management",
    params(
        super::openapi::TenantPath,
        ("If-None-Match" = Option<String>, Header, nullable = false,
            description = "Entity tags (\"3\") or *: 304 without a body when the session's matches"),
    ),
    responses(
        (status = 200, description = "The session context, without the attributes the tenant hides from shoppers (--hidden-attribute)", body = SessionContext,
            headers(("ETag" = String, description = "The version in quotes"))),
        (status = 304, description = "Not modified: If-None-Match matched",
            headers(("ETag" = String, description = "The version in quotes"))),
        SessionErrors,
    ),
    security(("bearer" = []))
)]
pub async fn get_me(
    State(state): State<AppState>,
    me: MePrincipal,
    if_none_match: IfNoneMatch,
) -> Result<Response, ApiError> {
    let key = SessionKey::new(me.tenant, &me.session_id);
    let record = state.sessions.get(&key, &Caller::Me(me.shopper)).await?;
    Ok(read_response(record, &if_none_match))
}

/// Ends the caller's own session (an extension: the storefront's logout); a customer session
/// only with that customer's token.
#[utoipa::path(
    delete,
    path = "/session-context/{tenant}/me/context",
    tag = "Own session management",
    params(super::openapi::TenantPath),
    responses(
        (status = 204, description = "Deleted"),
        SessionErrors,
    ),
    security(("bearer" = []))
)]
pub async fn delete_me(State(state): State<AppState>, me: MePrincipal) -> Result<Response, ApiError> {
    let key = SessionKey::new(me.tenant, &me.session_id);
    state.sessions.delete_own(&key, &me.shopper).await?;
    Ok(no_content())
}

/// Partially updates the caller's own session context, or creates it with `upsert=true`.
#[utoipa::path(
    patch,
    path = "/session-context/{tenant}/me/context",
    tag = "Own session management",
    params(
        super::openapi::TenantPath,
        ("upsert" = Option<bool>, Query, description = "Create the session if it does not exist"),
        super::openapi::IfMatchHeader,
    ),
    request_body(content = super::openapi::PatchBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created"), (status = 204, description = "Updated"),
        SessionErrors, BodyErrors, VersionErrors,
    ),
    security(("bearer" = []))
)]
pub async fn patch_me(
    State(state): State<AppState>,
    me: MePrincipal,
    Upsert(upsert): Upsert,
    IfMatch(if_match): IfMatch,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req = request::read_patch(&body).map_err(|d| ApiError::bad_request("Invalid session context", d))?;
    let check = VersionCheck::new(if_match, req.version);
    let key = SessionKey::new(me.tenant, &me.session_id);
    let outcome = state
        .sessions
        .patch(&key, &me.shopper, &req, check.expected, upsert)
        .await
        .map_err(|e| check.refusal(e))?;
    Ok(write_response(outcome))
}
