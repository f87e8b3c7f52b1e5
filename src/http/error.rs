//! [`ApiError`]: every way a request can fail, each mapped in one place to its status and to
//! the contract's JSON error body. Internal details are logged here and never sent.
//!
//! One error path: an `ApiError` becomes a response with its status and headers, and the
//! [`render_errors`] middleware, around everything, writes its body, naming the session the
//! request addressed once an extractor has noted it ([`Addressed`]). So no handler attaches the
//! session id itself, and errors made by other layers (413, 503, 408) get the same body.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{FieldError, PolicyError};
use crate::service::ServiceError;

/// A failed request: what went wrong and, when one was addressed, which session.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub session_id: Option<String>,
}

/// The kinds of failure, each with its status.
#[derive(Debug, Clone)]
pub enum ErrorKind {
    /// 400: the request breaks an input rule; `details` names the fields.
    BadRequest { message: String, details: Vec<FieldError> },
    /// 401: no token, or one that does not verify (`WWW-Authenticate: Bearer`).
    Unauthenticated { message: &'static str },
    /// 403: a valid token that does not grant this.
    Forbidden { message: &'static str },
    /// 403: a shopper's change to an attribute the tenant's policy keeps from shoppers.
    ProtectedAttribute { key: String },
    /// 404: the session does not exist (or has expired).
    SessionNotFound,
    /// 404: no such route.
    RouteNotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 408: the request (headers and body) took longer than the request timeout.
    RequestTimeout,
    /// 409: `metadata.version` is not the stored version.
    VersionConflict { current: u64 },
    /// 412: `If-Match` is not the stored version.
    PreconditionFailed { current: u64 },
    /// 413: the body is larger than the configured limit.
    PayloadTooLarge,
    /// 413: the change would make the session larger than the tenant's limit.
    SessionTooLarge { limit: usize },
    /// 415: a body that is not `application/json`, or that comes with a `Content-Encoding`.
    UnsupportedMediaType { message: &'static str },
    /// 500: a bug or a corrupt record; details are in the log.
    Internal,
    /// 503: the store cannot be reached, or the session is too contended right now.
    Unavailable,
}

/// The error answers of every route that addresses a session, as the OpenAPI document lists
/// them (with [`BodyErrors`] and [`VersionErrors`] where they apply): written once here.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description only
pub enum SessionErrors {
    /// The request breaks an input rule, the tenant's attribute limit (`details[].type`
    /// `too_many_attributes`) or its allowed values (`not_allowed`); `details` names the fields.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No token, or one that does not verify (or a missing saas-token).
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// A valid token that does not grant this, or a storefront token changing an attribute the
    /// tenant protects or hides from shoppers (`details` names it, type `protected`).
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The session does not exist or has expired.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The store cannot be reached, or the service is busy; retry shortly.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The error answers of a route that takes a body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description only
pub enum BodyErrors {
    /// The body is larger than the limit (`payload_too_large`), or the change would make the
    /// session larger than the tenant's limit (`session_too_large`); nothing is stored.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// The body is not `application/json`, or is encoded.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
}

/// The error answers of a version-checked write.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description only
pub enum VersionErrors {
    /// `metadata.version` is not the stored version; `currentVersion` says which is.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// `If-Match` is not the stored version; `currentVersion` says which is.
    #[response(status = 412)]
    PreconditionFailed(ErrorBody),
}

/// The JSON error body: the reference's `code`/`message` and the Emporix house style's
/// `status`/`type`/`details`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The HTTP status code.
    pub code: u16,
    /// The HTTP status code again (Emporix house style).
    pub status: u16,
    /// A machine-readable kind, e.g. `resource_not_found`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What happened, for a person.
    pub message: String,
    /// The session addressed, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The stored version, on 409 and 412.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// The offending fields, on validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub details: Vec<FieldError>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, details: Vec<FieldError>) -> Self {
        ErrorKind::BadRequest {
            message: message.into(),
            details,
        }
        .into()
    }

    /// One invalid field.
    pub fn invalid(error: FieldError) -> Self {
        Self::bad_request(error.message.clone(), vec![error])
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden { .. } | ErrorKind::ProtectedAttribute { .. } => StatusCode::FORBIDDEN,
            ErrorKind::SessionNotFound | ErrorKind::RouteNotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::VersionConflict { .. } => StatusCode::CONFLICT,
            ErrorKind::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ErrorKind::PayloadTooLarge | ErrorKind::SessionTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn body(self) -> ErrorBody {
        let status = self.status().as_u16();
        let (kind, message, current_version, details) = match self.kind {
            ErrorKind::BadRequest { message, details } => ("validation_error", message, None, details),
            ErrorKind::Unauthenticated { message } => ("unauthorized", message.into(), None, vec![]),
            ErrorKind::Forbidden { message } => ("forbidden", message.into(), None, vec![]),
            ErrorKind::ProtectedAttribute { key } => (
                "forbidden",
                format!("The attribute `{key}` may not be changed with this token"),
                None,
                vec![FieldError::new(
                    format!("context.{key}"),
                    "protected",
                    "this attribute is set by the shop, not by the shopper",
                )],
            ),
            ErrorKind::SessionNotFound => ("resource_not_found", "Session not found".into(), None, vec![]),
            ErrorKind::RouteNotFound => ("resource_not_found", "No such resource".into(), None, vec![]),
            ErrorKind::MethodNotAllowed => (
                "method_not_allowed",
                "This method is not allowed on this resource".into(),
                None,
                vec![],
            ),
            ErrorKind::RequestTimeout => (
                "request_timeout",
                "The request took too long to arrive or to answer".into(),
                None,
                vec![],
            ),
            ErrorKind::VersionConflict { current } => (
                "conflict",
                format!("metadata.version does not match the stored version {current}"),
                Some(current),
                vec![],
            ),
            ErrorKind::PreconditionFailed { current } => (
                "precondition_failed",
                format!("If-Match does not match the stored version {current}"),
                Some(current),
                vec![],
            ),
            ErrorKind::PayloadTooLarge => (
                "payload_too_large",
                "The request body is too large".into(),
                None,
                vec![],
            ),
            ErrorKind::SessionTooLarge { limit } => (
                "session_too_large",
                format!("The session would be larger than the limit of {limit} bytes"),
                None,
                vec![],
            ),
            ErrorKind::UnsupportedMediaType { message } => ("unsupported_media_type", message.into(), None, vec![]),
            ErrorKind::Internal => ("internal_error", "An internal error occurred".into(), None, vec![]),
            ErrorKind::Unavailable => (
                "service_unavailable",
                "The service is temporarily unavailable; retry shortly".into(),
                None,
                vec![],
            ),
        };
        ErrorBody {
            code: status,
            status,
            kind,
            message,
            session_id: self.session_id,
            current_version,
            details,
        }
    }
}

impl From<ErrorKind> for ApiError {
    fn from(kind: ErrorKind) -> Self {
        ApiError { kind, session_id: None }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let kind = match err {
            ServiceError::NotFound => ErrorKind::SessionNotFound,
            // A stale If-Match is 412 instead: `extract::VersionCheck::refusal` decides.
            ServiceError::VersionMismatch { current } => ErrorKind::VersionConflict { current },
            ServiceError::SaasUnauthenticated => ErrorKind::Unauthenticated {
                message: "A valid saas-token for the session's customer is required",
            },
            ServiceError::SaasForbidden => ErrorKind::Forbidden {
                message: "The saas-token is for another customer or another tenant",
            },
            ServiceError::NotYourSession => ErrorKind::Forbidden {
                message: "The session belongs to another customer",
            },
            ServiceError::CreatedAfterLogin => ErrorKind::Forbidden {
                message: "The anonymous session was created after the customer's login; it is not adopted",
            },
            ServiceError::VersionRequired => {
                return ApiError::invalid(FieldError::new(
                    "metadata.version",
                    "required",
                    "metadata.version (or If-Match) is required to update an existing session",
                ));
            }
            ServiceError::Policy(refusal) => match refusal {
                PolicyError::TooLarge { limit } => ErrorKind::SessionTooLarge { limit },
                PolicyError::TooManyAttributes { limit } => {
                    return ApiError::invalid(FieldError::new(
                        "context",
                        "too_many_attributes",
                        format!("a session may have at most {limit} attributes"),
                    ));
                }
                PolicyError::Protected { key } => ErrorKind::ProtectedAttribute { key },
                PolicyError::NotAllowed(field) => return ApiError::invalid(field),
            },
            ServiceError::Contention => {
                tracing::warn!("gave up on a change after too many concurrent writers");
                ErrorKind::Unavailable
            }
            ServiceError::Unavailable(reason) => {
                tracing::error!(%reason, "store unavailable");
                ErrorKind::Unavailable
            }
            ServiceError::Internal(reason) => {
                tracing::error!(%reason, "store failure");
                ErrorKind::Internal
            }
        };
        kind.into()
    }
}

impl IntoResponse for ApiError {
    /// The status and headers; the body is written by [`render_errors`] (or, outside it, by
    /// [`ApiError::render`] at once).
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = status.into_response();
        let headers = response.headers_mut();
        if matches!(self.kind, ErrorKind::Unauthenticated { .. }) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(Unrendered(self));
        response
    }
}

/// An error answer whose body is still to be written.
#[derive(Clone)]
struct Unrendered(ApiError);

impl ApiError {
    /// Writes the contract's JSON body into an error answer made by `into_response`.
    fn render(mut self, response: &mut Response, addressed: Option<&str>) {
        if self.session_id.is_none() {
            self.session_id = addressed.map(str::to_owned);
        }
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        *response.body_mut() = Body::from(body);
    }
}

/// Where the extractors note the session a request addresses (its path's `sessionId`, or the
/// `/me` token's), so that any error answer to it names it.
#[derive(Clone, Default)]
pub struct Addressed(Arc<OnceLock<String>>);

impl Addressed {
    /// Notes that the request in `parts` addresses session `id`.
    pub fn note(parts: &Parts, id: &str) {
        if let Some(addressed) = parts.extensions.get::<Addressed>() {
            let _ = addressed.0.set(id.to_owned());
        }
    }
}

/// The middleware that writes every error answer's body (see the module doc).
pub async fn render_errors(mut request: Request, next: Next) -> Response {
    let addressed = Addressed::default();
    request.extensions_mut().insert(addressed.clone());
    let mut response = next.run(request).await;
    if let Some(Unrendered(error)) = response.extensions_mut().remove::<Unrendered>() {
        error.render(&mut response, addressed.0.get().map(String::as_str));
    }
    response
}
