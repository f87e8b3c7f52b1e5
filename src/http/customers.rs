//! A customer's sessions: list them (11, management; 13, the customer's own token) and end them
//! all (12, 14), for "sign out everywhere", "sign out my other devices" and erasure requests.

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::{CustomerPrincipal, ManagementPrincipal};
use super::error::{ApiError, SessionErrors};
use crate::domain::session::SessionContext;
use crate::domain::{FieldError, validate};
use crate::service::{Caller, CustomerPage, PageRequest, Shopper};

/// The default `pageSize`.
pub const DEFAULT_PAGE_SIZE: u64 = 60;
/// The largest `pageSize`.
pub const MAX_PAGE_SIZE: u64 = 1_000;

/// The query of 11 and 13 (and `q`/`except` of 12, `keepCurrent` of 14), as sent: each value
/// is checked below so that a bad one is named in `details`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    q: Option<String>,
    page_number: Option<String>,
    page_size: Option<String>,
    except: Option<String>,
    keep_current: Option<String>,
}

/// The answer of 12 and 14.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    /// How many sessions were ended.
    pub deleted: u64,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(FieldError::new(field, "invalid_format", message))
}

/// The query string as a [`ListQuery`], or 400 (a key given twice, for example).
fn query(query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>) -> Result<ListQuery, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|_| invalid("query", "the query string could not be read (a parameter given twice?)"))
}

impl ListQuery {
    /// The customer `q` names: `customerId:<id>`, required, and the only form understood.
    fn customer(&self) -> Result<String, ApiError> {
        let q = self
            .q
            .as_deref()
            .ok_or_else(|| ApiError::invalid(FieldError::new("q", "required", "q=customerId:<id> is required")))?;
        let id = validate::customer_query(q).map_err(ApiError::invalid)?;
        Ok(id.to_owned())
    }

    /// `pageNumber` (from 1, default 1) and `pageSize` (1 to 1000, default 60).
    fn page(&self) -> Result<PageRequest, ApiError> {
        let number = match self.page_number.as_deref() {
            None => 1,
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid("pageNumber", "pageNumber must be a whole number from 1"))?,
        };
        let size = match self.page_size.as_deref() {
            None => DEFAULT_PAGE_SIZE,
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "pageSize",
                        format!("pageSize must be a whole number from 1 to {MAX_PAGE_SIZE}"),
                    )
                })?,
        };
        Ok(PageRequest { number, size })
    }

    /// `except` of 12: a session id to keep, checked like a path's.
    fn except(&self) -> Result<Option<String>, ApiError> {
        match &self.except {
            None => Ok(None),
            Some(id) => validate::session_id(id)
                .map(|()| Some(id.clone()))
                .map_err(|e| invalid("except", e.message)),
        }
    }

    /// `keepCurrent` of 14: `true` or `false`, absent = false.
    fn keep_current(&self) -> Result<bool, ApiError> {
        match self.keep_current.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(invalid("keepCurrent", "keepCurrent must be true or false")),
        }
    }
}

/// 200 with the page as a JSON array of the stored sessions (each exactly as stored, or as a
/// shopper may see it) and `X-Total-Count`.
fn page_response(page: CustomerPage) -> Response {
    let mut body = String::with_capacity(2 + page.sessions.iter().map(|s| s.doc.len() + 1).sum::<usize>());
    body.push('[');
    for (i, session) in page.sessions.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&session.doc);
    }
    body.push(']');
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (
                header::HeaderName::from_static("x-total-count"),
                HeaderValue::from(page.total),
            ),
        ],
        body,
    )
        .into_response()
}

fn deleted_response(deleted: u64) -> Response {
    axum::Json(Deleted { deleted }).into_response()
}

/// Lists a customer's sessions, newest change first.
#[utoipa::path(
    get,
    path = "/session-context/{tenant}/contexts",
    tag = "Session management",
    params(
        super::openapi::TenantPath,
        super::openapi::CustomerQueryParam,
        ("pageNumber" = Option<u64>, Query, minimum = 1, description = "The page, from 1 (default 1)"),
        ("pageSize" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Sessions per page, 1 to 1000 (default 60)"),
    ),
    responses(
        (status = 200, description = "The customer's live sessions, newest modifiedAt first", body = Vec<SessionContext>,
            headers(("X-Total-Count" = u64, description = "How many live sessions the customer has in all"))),
        SessionErrors,
    ),
    security(("bearer" = ["session_context.context_manage"]))
)]
pub async fn list_contexts(
    State(state): State<AppState>,
    principal: ManagementPrincipal,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let (customer, page) = (q.customer()?, q.page()?);
    let found = state
        .sessions
        .list_customer(&principal.tenant, &customer, page, &Caller::Management)
        .await?;
    Ok(page_response(found))
}

/// Ends every session of a customer (sign out everywhere, or erasure), but `except`.
#[utoipa::path(
    delete,
    path = "/session-context/{tenant}/contexts",
    tag = "Session management",
    params(
        super::openapi::TenantPath,
        super::openapi::CustomerQueryParam,
        super::openapi::ExceptParam,
    ),
    responses(
        (status = 200, description = "How many sessions were ended; every session the customer had when the request arrived is gone", body = Deleted),
        SessionErrors,
    ),
    security(("bearer" = ["session_context.context_manage"]))
)]
pub async fn delete_contexts(
    State(state): State<AppState>,
    principal: ManagementPrincipal,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let (customer, except) = (q.customer()?, q.except()?);
    let deleted = state
        .sessions
        .delete_customer(&principal.tenant, &customer, except.as_deref())
        .await?;
    Ok(deleted_response(deleted))
}

/// Lists the calling customer's own sessions, newest change first.
#[utoipa::path(
    get,
    path = "/session-context/{tenant}/me/contexts",
    tag = "Own session management",
    params(
        super::openapi::TenantPath,
        ("pageNumber" = Option<u64>, Query, minimum = 1, description = "The page, from 1 (default 1)"),
        ("pageSize" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Sessions per page, 1 to 1000 (default 60)"),
    ),
    responses(
        (status = 200, description = "The customer's live sessions, newest modifiedAt first, without hidden attributes", body = Vec<SessionContext>,
            headers(("X-Total-Count" = u64, description = "How many live sessions the customer has in all"))),
        SessionErrors,
    ),
    security(("bearer" = []))
)]
pub async fn list_my_contexts(
    State(state): State<AppState>,
    principal: CustomerPrincipal,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let page = query(q)?.page()?;
    let caller = Caller::Me(Shopper {
        customer: Some(principal.customer.clone()),
        ..Shopper::default()
    });
    let found = state
        .sessions
        .list_customer(&principal.tenant, &principal.customer, page, &caller)
        .await?;
    Ok(page_response(found))
}

/// Ends the calling customer's sessions: everywhere, or (`keepCurrent=true`) on every other
/// device.
#[utoipa::path(
    delete,
    path = "/session-context/{tenant}/me/contexts",
    tag = "Own session management",
    params(
        super::openapi::TenantPath,
        ("keepCurrent" = Option<bool>, Query, description = "Keep the session the token names (default false)"),
    ),
    responses(
        (status = 200, description = "How many sessions were ended", body = Deleted),
        SessionErrors,
    ),
    security(("bearer" = []))
)]
pub async fn delete_my_contexts(
    State(state): State<AppState>,
    principal: CustomerPrincipal,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let except = match query(q)?.keep_current()? {
        false => None,
        true => Some(principal.session_id.ok_or_else(|| {
            ApiError::from(super::error::ErrorKind::Forbidden {
                message: "keepCurrent=true needs a token that names its session",
            })
        })?),
    };
    let deleted = state
        .sessions
        .delete_customer(&principal.tenant, &principal.customer, except.as_deref())
        .await?;
    Ok(deleted_response(deleted))
}
