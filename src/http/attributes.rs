//! Attributes of a session's `context`, set (3, 7) and removed (4, 8) one at a time, through
//! the management resource or the caller's own session. No version is checked, yet every
//! change is atomic: concurrent changes of different attributes all survive.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::auth::{ManagementPrincipal, MePrincipal};
use super::error::{ApiError, BodyErrors, SessionErrors};
use super::extract::{AttributeNameParam, JsonBody, SessionIdParam};
use super::{AppState, etag, write_response};
use crate::domain::SessionKey;
use crate::domain::request;
use crate::service::{Caller, Outcome};

/// Sets one attribute of a session.
#[utoipa::path(
    post,
    path = "/session-context/{tenant}/context/{sessionId}/attributes",
    tag = "Session context modification",
    params(super::openapi::TenantPath, super::openapi::SessionIdPath),
    request_body(content = super::openapi::AttributeBody, content_type = "application/json"),
    responses(
        (status = 204, description = "The attribute was set"),
        SessionErrors, BodyErrors,
    ),
    security(("bearer" = ["session_context.context_manage"]))
)]
pub async fn post_attribute(
    State(state): State<AppState>,
    principal: ManagementPrincipal,
    SessionIdParam(id): SessionIdParam,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let key = SessionKey::new(principal.tenant, &id);
    let (_, outcome) = set(&state, &key, &Caller::Management, &body).await?;
    Ok(write_response(outcome))
}

/// Removes one attribute of a session; removing a missing one is not an error.
#[utoipa::path(
    delete,
    path = "/session-context/{tenant}/context/{sessionId}/attributes/{attributeName}",
    tag = "Session context modification",
    params(super::openapi::TenantPath, super::openapi::SessionIdPath, super::openapi::AttributeNamePath),
    responses(
        (status = 204, description = "The attribute is gone"),
        SessionErrors,
    ),
    security(("bearer" = ["session_context.context_manage"]))
)]
pub async fn delete_attribute(
    State(state): State<AppState>,
    principal: ManagementPrincipal,
    SessionIdParam(id): SessionIdParam,
    AttributeNameParam(name): AttributeNameParam,
) -> Result<Response, ApiError> {
    let key = SessionKey::new(principal.tenant, &id);
    remove(&state, &key, &Caller::Management, &name).await
}

/// Sets one attribute of the caller's own session; answers with the attribute's name.
#[utoipa::path(
    post,
    path = "/session-context/{tenant}/me/context/attributes",
    tag = "Own session context modification",
    params(super::openapi::TenantPath),
    request_body(content = super::openapi::AttributeBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The attribute was set", body = String, content_type = "application/json",
            headers(("ETag" = String, description = "The new version in quotes"))),
        SessionErrors, BodyErrors,
    ),
    security(("bearer" = []))
)]
pub async fn post_me_attribute(
    State(state): State<AppState>,
    me: MePrincipal,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let key = SessionKey::new(me.tenant, &me.session_id);
    let caller = Caller::Me(me.shopper);
    let (name, outcome) = set(&state, &key, &caller, &body).await?;
    let mut response = (StatusCode::CREATED, Json(name)).into_response();
    if let Outcome::Created { version } | Outcome::Updated { version } = outcome {
        response.headers_mut().insert(axum::http::header::ETAG, etag(version));
    }
    Ok(response)
}

/// Removes one attribute of the caller's own session.
#[utoipa::path(
    delete,
    path = "/session-context/{tenant}/me/context/attributes/{attributeName}",
    tag = "Own session context modification",
    params(super::openapi::TenantPath, super::openapi::AttributeNamePath),
    responses(
        (status = 204, description = "The attribute is gone"),
        SessionErrors,
    ),
    security(("bearer" = []))
)]
pub async fn delete_me_attribute(
    State(state): State<AppState>,
    me: MePrincipal,
    AttributeNameParam(name): AttributeNameParam,
) -> Result<Response, ApiError> {
    let key = SessionKey::new(me.tenant, &me.session_id);
    let caller = Caller::Me(me.shopper);
    remove(&state, &key, &caller, &name).await
}

async fn set(
    state: &AppState,
    key: &SessionKey,
    caller: &Caller,
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<(String, Outcome), ApiError> {
    let (name, value) = request::read_attribute(body).map_err(|d| ApiError::bad_request("Invalid attribute", d))?;
    let outcome = state.sessions.set_attribute(key, caller, &name, &value).await?;
    Ok((name, outcome))
}

async fn remove(state: &AppState, key: &SessionKey, caller: &Caller, name: &str) -> Result<Response, ApiError> {
    let outcome = state.sessions.remove_attribute(key, caller, name).await?;
    Ok(write_response(outcome))
}
