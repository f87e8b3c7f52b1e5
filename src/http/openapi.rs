//! The OpenAPI document's frame: title, security scheme and the request-body schemas. The
//! paths come from the handlers' own `#[utoipa::path]` annotations, registered together with
//! their routes, so that the document cannot drift from what is served.

use serde_json::{Map, Value};
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

// The input rules of the contract, as JSON Schema patterns (ECMA 262 regular expressions).
// Attribute names may be 256 bytes of UTF-8; JSON Schema counts characters, so the document
// promises 64 characters, which is at most 256 bytes whatever they are.

/// `{tenant}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // a schema only
pub struct TenantPath {
    /// The tenant: 3 to 16 lowercase letters and digits, starting with a letter.
    #[param(pattern = "^[a-z][a-z0-9]+$", min_length = 3, max_length = 16)]
    pub tenant: String,
}

/// `{sessionId}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // a schema only
pub struct SessionIdPath {
    /// The session: 1 to 128 characters of A-Z a-z 0-9 . _ : -
    #[param(
        rename = "sessionId",
        pattern = "^[A-Za-z0-9._:-]+$",
        min_length = 1,
        max_length = 128
    )]
    pub session_id: String,
}

/// `{attributeName}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // a schema only
pub struct AttributeNamePath {
    /// The attribute: 1 to 256 bytes of UTF-8 without control characters.
    #[param(
        rename = "attributeName",
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$",
        min_length = 1,
        max_length = 64
    )]
    pub attribute_name: String,
}

/// A `context` map in a request: keys follow the attribute-name rule, values are any JSON.
fn context_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(64))
                .pattern(Some("^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
        ))
        .build()
}

/// The `metadata` a client sends: only `version` is read.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct MetadataUpdate {
    /// The version the client last read; required (or an `If-Match` header).
    #[schema(minimum = 0)]
    pub version: u64,
}

/// The body of PUT: any field of the resource; `null` removes a field, an absent one stays.
/// A `sessionId` may be sent too, but must equal the path's.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // a schema only
pub struct PutBody {
    /// Setting or changing it needs a `saas-token` for that customer.
    #[schema(min_length = 1, max_length = 256)]
    pub customer_id: Option<String>,
    #[schema(max_length = 256)]
    pub site_code: Option<String>,
    /// Three capital letters.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// Two capital letters.
    #[schema(pattern = "^[A-Z]{2}$")]
    pub target_location: Option<String>,
    /// A BCP-47 language tag.
    #[schema(pattern = "^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$", max_length = 35)]
    pub language: Option<String>,
    #[schema(max_length = 256)]
    pub cart_id: Option<String>,
    /// Replaces the whole stored map.
    #[schema(schema_with = context_schema)]
    pub context: Option<Map<String, Value>>,
    pub metadata: MetadataUpdate,
}

/// The body of PATCH /me/context: only these fields are applied; any other is ignored.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // a schema only
pub struct PatchBody {
    #[schema(max_length = 256)]
    pub site_code: Option<String>,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    #[schema(pattern = "^[A-Z]{2}$")]
    pub target_location: Option<String>,
    #[schema(pattern = "^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$", max_length = 35)]
    pub language: Option<String>,
    /// Merged key by key (JSON Merge Patch at the first level): `null` removes a key.
    #[schema(schema_with = context_schema)]
    pub context: Option<Map<String, Value>>,
    pub metadata: MetadataUpdate,
}

/// The body of an attribute POST.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct AttributeBody {
    /// The attribute's name: 1 to 256 bytes of UTF-8, no control characters.
    #[schema(min_length = 1, max_length = 64, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub key: String,
    /// Any JSON value but null.
    #[schema(value_type = Object)]
    pub value: Value,
}

/// The document's frame; `http::router` adds the paths.
#[derive(OpenApi)]
#[openapi(
    info(title = "session-context", description = "A self-hostable service that speaks the Emporix Session-context API."),
    modifiers(&BearerAuth),
    tags(
        (name = "Session management"), (name = "Session context modification"),
        (name = "Own session management"), (name = "Own session context modification"),
        (name = "Operations"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
