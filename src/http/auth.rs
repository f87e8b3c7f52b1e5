//! Principals as extractors: a handler that takes a [`ManagementPrincipal`] or a
//! [`MePrincipal`] cannot run unless the bearer token verifies, is for the path's tenant, and
//! grants that kind of access. Checks run in the order 401 (token), 400 (tenant format),
//! 403 (tenant, scope, session claim).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::{Addressed, ApiError, ErrorKind};
use super::extract::path_param;
use crate::auth::AccessClaims;
use crate::domain::validate;
use crate::service::Shopper;

/// A caller with the management scope for `tenant`.
#[derive(Debug, Clone)]
pub struct ManagementPrincipal {
    pub tenant: String,
}

/// A storefront caller (customer or anonymous) acting on its own session.
#[derive(Debug, Clone)]
pub struct MePrincipal {
    pub tenant: String,
    pub session_id: String,
    /// Its customer (`None` for anonymous tokens), the token's `iat`, and the session field
    /// values its claims carry that pass the input rules (invalid ones are left out).
    pub shopper: Shopper,
}

/// A customer's storefront token, for the customer's own sessions (13, 14): anonymous tokens
/// are refused (403).
#[derive(Debug, Clone)]
pub struct CustomerPrincipal {
    pub tenant: String,
    pub customer: String,
    /// The session the token names, if any (the one `keepCurrent=true` keeps).
    pub session_id: Option<String>,
}

impl FromRequestParts<AppState> for CustomerPrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (tenant, claims) = authenticate(parts, state).await?;
        let customer = claims
            .customer_id
            .clone()
            .ok_or_else(|| forbidden("Only a customer's token may list or end the customer's sessions"))?;
        let session_id = claims.session_id.clone().filter(|id| validate::session_id(id).is_ok());
        Ok(CustomerPrincipal {
            tenant,
            customer,
            session_id,
        })
    }
}

impl FromRequestParts<AppState> for ManagementPrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (tenant, claims) = authenticate(parts, state).await?;
        if !claims.may_manage() {
            return Err(forbidden("The token lacks the session_context.context_manage scope"));
        }
        Ok(ManagementPrincipal { tenant })
    }
}

impl FromRequestParts<AppState> for MePrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (tenant, claims) = authenticate(parts, state).await?;
        let session_id = claims
            .session_id
            .clone()
            .filter(|id| validate::session_id(id).is_ok())
            .ok_or_else(|| forbidden("The token carries no valid session id"))?;
        let defaults = claims
            .session_defaults
            .iter()
            .filter(|(field, value)| validate::text_field(*field, value).is_ok())
            .cloned()
            .collect();
        Addressed::note(parts, &session_id);
        Ok(MePrincipal {
            tenant,
            session_id,
            shopper: Shopper {
                customer: claims.customer_id.clone(),
                issued_at: claims.issued_at,
                defaults,
            },
        })
    }
}

/// Verifies the bearer token and checks it is for the path's tenant.
async fn authenticate(parts: &mut Parts, state: &AppState) -> Result<(String, Arc<AccessClaims>), ApiError> {
    let token = bearer(parts).ok_or(ErrorKind::Unauthenticated {
        message: "A bearer token is required",
    })?;
    let claims = state.verifier.verify_access(token).map_err(|e| {
        tracing::debug!(reason = %e, "access token refused");
        ApiError::from(ErrorKind::Unauthenticated {
            message: "The bearer token is invalid or expired",
        })
    })?;
    let tenant = path_param(parts, "tenant").await?;
    validate::tenant(&tenant).map_err(ApiError::invalid)?;
    if !claims.is_for_tenant(&tenant) {
        return Err(forbidden("The token is not for this tenant"));
    }
    Ok((tenant, claims))
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn forbidden(message: &'static str) -> ApiError {
    ErrorKind::Forbidden { message }.into()
}
