//! The OpenAPI document's frame: title, security scheme and the request-body schemas. The
//! paths come from the handlers' own `#[utoipa::path]` annotations, registered together with
//! their routes, so that the document cannot drift from what is served.

use serde_json::{Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The `metadata` a client sends: only `version` is read.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct MetadataUpdate {
    /// The version the client last read; required (or an `If-Match` header).
    pub version: u64,
}

/// The body of PUT: any field of the resource; `null` removes a field, an absent one stays.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // a schema only
pub struct PutBody {
    /// Must equal the path's sessionId when given.
    pub session_id: Option<String>,
    pub customer_id: Option<String>,
    pub site_code: Option<String>,
    /// Three capital letters.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// Two capital letters.
    #[schema(pattern = "^[A-Z]{2}$")]
    pub target_location: Option<String>,
    /// A BCP-47 language tag.
    #[schema(max_length = 35)]
    pub language: Option<String>,
    pub cart_id: Option<String>,
    /// Replaces the whole stored map.
    #[schema(value_type = Option<Object>)]
    pub context: Option<Map<String, Value>>,
    pub metadata: MetadataUpdate,
}

/// The body of PATCH /me/context: only these fields are applied; any other is ignored.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // a schema only
pub struct PatchBody {
    pub site_code: Option<String>,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    #[schema(pattern = "^[A-Z]{2}$")]
    pub target_location: Option<String>,
    #[schema(max_length = 35)]
    pub language: Option<String>,
    /// Merged key by key (JSON Merge Patch at the first level): `null` removes a key.
    #[schema(value_type = Option<Object>)]
    pub context: Option<Map<String, Value>>,
    pub metadata: MetadataUpdate,
}

/// The body of an attribute POST.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct AttributeBody {
    /// The attribute's name: 1 to 256 bytes, no control characters.
    #[schema(min_length = 1, max_length = 256)]
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
