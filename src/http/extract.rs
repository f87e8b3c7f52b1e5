//! Extractors for everything a request carries besides its token: path parameters checked
//! against the contract's rules, `?upsert`, `If-Match` (and the one place that tells 409 from
//! 412), `If-None-Match`, the `saas-token`, and a JSON body read
//! within the size limit and refused before parsing if it nests too deep.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::AppState;
use super::error::{Addressed, ApiError, ErrorKind};
use crate::auth::SaasRefused;
use crate::domain::json;
use crate::domain::validate::{self, FieldError};
use crate::service::{Precondition, SaasToken, ServiceError};

/// The path's parameters, percent-decoded once per request and kept with it for every
/// extractor that needs one (the principal its tenant, the handler its session id).
#[derive(Clone)]
struct PathParams(std::sync::Arc<[(String, String)]>);

/// The value of one named path parameter, percent-decoded.
pub async fn path_param(parts: &mut Parts, name: &str) -> Result<String, ApiError> {
    let params = match parts.extensions.get::<PathParams>() {
        Some(params) => params.clone(),
        None => {
            let raw = RawPathParams::from_request_parts(parts, &()).await.map_err(|_| {
                ApiError::invalid(FieldError::new(name, "invalid_format", "the path is not valid UTF-8"))
            })?;
            let params = PathParams(raw.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect());
            parts.extensions.insert(params.clone());
            params
        }
    };
    params
        .0
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ErrorKind::RouteNotFound.into())
}

/// The `{sessionId}` path parameter, checked.
pub struct SessionIdParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SessionIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let id = path_param(parts, "sessionId").await?;
        validate::session_id(&id).map_err(ApiError::invalid)?;
        Addressed::note(parts, &id);
        Ok(SessionIdParam(id))
    }
}

/// The `{attributeName}` path parameter, checked.
pub struct AttributeNameParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AttributeNameParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let name = path_param(parts, "attributeName").await?;
        validate::attribute_name("attributeName", &name).map_err(ApiError::invalid)?;
        Ok(AttributeNameParam(name))
    }
}

/// `?upsert=true|false`; absent means false.
pub struct Upsert(pub bool);

#[derive(Deserialize)]
struct UpsertQuery {
    upsert: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Upsert {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let invalid = || {
            ApiError::invalid(FieldError::new(
                "upsert",
                "invalid_format",
                "upsert must be true or false",
            ))
        };
        let Query(query) = Query::<UpsertQuery>::from_request_parts(parts, state)
            .await
            .map_err(|_| invalid())?;
        match query.upsert.as_deref() {
            None | Some("false") => Ok(Upsert(false)),
            Some("true") => Ok(Upsert(true)),
            Some(_) => Err(invalid()),
        }
    }
}

/// An `If-Match` header: `"<version>"` or `*`.
pub struct IfMatch(pub Option<Precondition>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = value.to_str().unwrap_or("").trim();
        match validate::version_tag(text) {
            Some(None) => Ok(IfMatch(Some(Precondition::AnyVersion))),
            Some(Some(version)) => Ok(IfMatch(Some(Precondition::Version(version)))),
            None => Err(ApiError::invalid(FieldError::new(
                "If-Match",
                "invalid_format",
                format!("If-Match must be {}", validate::VERSION_TAG.words),
            ))),
        }
    }
}

/// Which version a PUT or PATCH expects, and how the client said it: `If-Match` if sent (it
/// is the HTTP-level precondition, so it wins over the body), else `metadata.version`. Neither
/// is needed to create a session with `upsert=true`; updating one without either is refused by
/// the use case.
pub struct VersionCheck {
    pub expected: Option<Precondition>,
    by_header: bool,
}

impl VersionCheck {
    pub fn new(if_match: Option<Precondition>, body: Option<u64>) -> Self {
        VersionCheck {
            by_header: if_match.is_some(),
            expected: if_match.or(body.map(Precondition::Version)),
        }
    }

    /// The answer to a refused write, the one place that tells 409 from 412: a stale
    /// `metadata.version` is a conflict, a stale `If-Match` a failed precondition.
    pub fn refusal(&self, error: ServiceError) -> ApiError {
        match error {
            ServiceError::VersionMismatch { current } if self.by_header => {
                ErrorKind::PreconditionFailed { current }.into()
            }
            other => other.into(),
        }
    }
}

/// An `If-None-Match` header on a GET: the entity tags (`"3"`, `W/"3"`, a comma-separated
/// list) or `*`. An unreadable header matches nothing, so the GET answers in full.
pub struct IfNoneMatch(Option<String>);

impl IfNoneMatch {
    /// Whether a session at `version` matches, so that the GET answers 304.
    pub fn matches(&self, version: u64) -> bool {
        let Some(tags) = &self.0 else { return false };
        let wanted = format!("\"{version}\"");
        tags.split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == wanted)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let tags = parts
            .headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(IfNoneMatch(tags))
    }
}

/// The `saas-token` header, verified.
pub struct Saas(pub SaasToken);

impl FromRequestParts<AppState> for Saas {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("saas-token") else {
            return Ok(Saas(SaasToken::Missing));
        };
        let token = value.to_str().unwrap_or("").trim();
        let token = token.strip_prefix("Bearer ").unwrap_or(token).to_owned();
        // A saas-token is bound to the tenant it is used on; the principal extractor, which
        // runs first, has already checked the tenant's format.
        let tenant = path_param(parts, "tenant").await?;
        Ok(Saas(match state.verifier.verify_saas(&token, &tenant) {
            Ok(customer) => SaasToken::Customer(customer),
            Err(SaasRefused::OtherTenant) => {
                tracing::debug!("saas-token for another tenant refused");
                SaasToken::OtherTenant
            }
            Err(SaasRefused::Invalid(e)) => {
                tracing::debug!(reason = %e, "saas-token refused");
                SaasToken::Missing
            }
        }))
    }
}

/// A JSON object body: `application/json` without a content coding, within the size limit,
/// at most 32 levels deep.
pub struct JsonBody(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ErrorKind::UnsupportedMediaType {
                message: "The request body must be application/json",
            }
            .into());
        }
        if !is_identity(req.headers().get_all(header::CONTENT_ENCODING)) {
            return Err(ErrorKind::UnsupportedMediaType {
                message: "The request body must not have a Content-Encoding (other than identity)",
            }
            .into());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::from(ErrorKind::PayloadTooLarge)
            } else {
                ApiError::bad_request("The request body could not be read", vec![])
            }
        })?;
        json::read_object(&bytes).map(JsonBody).map_err(ApiError::invalid)
    }
}

/// Whether the `Content-Encoding` headers, if any, name no coding but `identity`. The service
/// decodes nothing, so a compressed body would be read as if it were plain JSON; an empty
/// or unreadable value is refused too, as it names no coding the service knows.
fn is_identity(encodings: header::GetAll<'_, header::HeaderValue>) -> bool {
    encodings.iter().all(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .all(|coding| coding.trim().eq_ignore_ascii_case("identity"))
        })
    })
}

fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}
