//! The OpenAPI document's frame: title, security scheme and the request-body schemas. The
//! paths come from the handlers' own `#[utoipa::path]` annotations, registered together with
//! their routes, so that the document cannot drift from what is served.

use serde_json::{Map, Value};
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::domain::validate::{
    self, ATTRIBUTE_NAME_FORBIDDEN, ATTRIBUTE_NAME_RULE, MAX_ATTRIBUTE_NAME_BYTES, MAX_TEXT_CHARS, StringRule,
};

// The input rules of the contract, as JSON Schema patterns (ECMA 262 regular expressions).

/// Attribute names may be 256 bytes of UTF-8; JSON Schema counts characters, so the document
/// promises 64 characters, which are at most 256 bytes whatever they are.
const ATTRIBUTE_NAME_MAX_CHARS: usize = MAX_ATTRIBUTE_NAME_BYTES / 4;

/// The attribute-name rule as a pattern, built from the definition the check reads
/// ([`ATTRIBUTE_NAME_FORBIDDEN`]): one or more characters outside the forbidden ranges,
/// written as `\uXXXX` escapes (every forbidden character is in the Basic Multilingual Plane,
/// so the pattern means the same with or without ECMA 262's `u` flag).
fn attribute_name_pattern() -> String {
    let escape = |c: char| format!("\\u{:04X}", u32::from(c));
    let class: String = ATTRIBUTE_NAME_FORBIDDEN
        .iter()
        .map(|&(from, to)| {
            if from == to {
                escape(from)
            } else {
                format!("{}-{}", escape(from), escape(to))
            }
        })
        .collect();
    format!("^[^{class}]+$")
}

/// An attribute name's schema, wherever a name is taken: a path parameter, an attribute
/// body's `key`, the keys of `context`.
fn attribute_name_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(ATTRIBUTE_NAME_MAX_CHARS))
        .pattern(Some(attribute_name_pattern()))
}

/// The `key` of an attribute body.
fn attribute_key_schema() -> Object {
    attribute_name_schema()
        .description(Some(format!("The attribute's name: {ATTRIBUTE_NAME_RULE}.")))
        .build()
}

/// A string schema from one of the contract's rules.
fn rule_schema(rule: &StringRule) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(rule.pattern))
        .min_length(Some(rule.min_chars))
        .max_length(Some(rule.max_chars))
}

/// A path or header parameter from one of the contract's rules.
fn rule_parameter(name: &str, place: ParameterIn, required: Required, rule: &StringRule, about: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(place)
        .required(required)
        .description(Some(format!("{about} ({})", rule.words)))
        .schema(Some(rule_schema(rule).build()))
        .build()
}

/// `{tenant}`.
pub struct TenantPath;

impl IntoParams for TenantPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let about = "The tenant";
        vec![rule_parameter(
            "tenant",
            ParameterIn::Path,
            Required::True,
            &validate::TENANT,
            about,
        )]
    }
}

/// `{sessionId}`.
pub struct SessionIdPath;

impl IntoParams for SessionIdPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let about = "The session";
        vec![rule_parameter(
            "sessionId",
            ParameterIn::Path,
            Required::True,
            &validate::SESSION_ID,
            about,
        )]
    }
}

/// `q` of a customer's sessions (11, 12).
pub struct CustomerQueryParam;

impl IntoParams for CustomerQueryParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let about = "customerId:<id>: the customer (required; the only form understood)";
        vec![rule_parameter(
            "q",
            ParameterIn::Query,
            Required::True,
            &validate::CUSTOMER_QUERY,
            about,
        )]
    }
}

/// `except` of a delete by customer (12).
pub struct ExceptParam;

impl IntoParams for ExceptParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let about = "A session of the customer to keep";
        vec![rule_parameter(
            "except",
            ParameterIn::Query,
            Required::False,
            &validate::SESSION_ID,
            about,
        )]
    }
}

/// The `If-Match` header of PUT and PATCH.
pub struct IfMatchHeader;

impl IntoParams for IfMatchHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let about = "The expected version; stands in for metadata.version";
        vec![rule_parameter(
            "If-Match",
            ParameterIn::Header,
            Required::False,
            &validate::VERSION_TAG,
            about,
        )]
    }
}

/// `siteCode`, `cartId`: free text.
fn free_text_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_TEXT_CHARS))
        .build()
}

/// `customerId`: free text, not empty (setting it needs the customer's `saas-token`).
fn customer_id_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_TEXT_CHARS))
        .description(Some("Setting or changing it needs a `saas-token` for that customer."))
        .build()
}

fn currency_schema() -> Object {
    rule_schema(&validate::CURRENCY).build()
}

fn target_location_schema() -> Object {
    rule_schema(&validate::TARGET_LOCATION).build()
}

fn language_schema() -> Object {
    rule_schema(&validate::LANGUAGE).build()
}

/// `{attributeName}`.
pub struct AttributeNamePath;

impl IntoParams for AttributeNamePath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("attributeName")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(format!("The attribute: {ATTRIBUTE_NAME_RULE}.")))
                .schema(Some(attribute_name_schema().build()))
                .build(),
        ]
    }
}

/// A `context` map in a request: keys follow the attribute-name rule, values are any JSON.
fn context_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(attribute_name_schema()))
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
    #[schema(schema_with = customer_id_schema)]
    pub customer_id: Option<String>,
    #[schema(schema_with = free_text_schema)]
    pub site_code: Option<String>,
    #[schema(schema_with = currency_schema)]
    pub currency: Option<String>,
    #[schema(schema_with = target_location_schema)]
    pub target_location: Option<String>,
    #[schema(schema_with = language_schema)]
    pub language: Option<String>,
    #[schema(schema_with = free_text_schema)]
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
    #[schema(schema_with = free_text_schema)]
    pub site_code: Option<String>,
    #[schema(schema_with = currency_schema)]
    pub currency: Option<String>,
    #[schema(schema_with = target_location_schema)]
    pub target_location: Option<String>,
    #[schema(schema_with = language_schema)]
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
    /// The attribute's name (described by its schema).
    #[schema(schema_with = attribute_key_schema)]
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::domain::validate;

    /// Every attribute-name schema in the served document: the `attributeName` path
    /// parameters, the attribute body's `key` and the `propertyNames` of each `context`.
    fn attribute_name_schemas(doc: &Value) -> Vec<(String, Value)> {
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for param in operation["parameters"].as_array().into_iter().flatten() {
                    if param["name"] == "attributeName" {
                        found.push((format!("{method} {path}"), param["schema"].clone()));
                    }
                }
            }
        }
        for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
            if let Some(key) = schema["properties"].get("key") {
                found.push((format!("{name}.key"), key.clone()));
            }
            if let Some(names) = schema["properties"]["context"].get("propertyNames") {
                found.push((format!("{name}.context"), names.clone()));
            }
        }
        found
    }

    /// The characters a pattern of the shape `^[^<class>]+$` refuses, its class made of
    /// `\uXXXX` escapes and `\uXXXX-\uXXXX` ranges: read without a regular-expression engine,
    /// and any other shape fails the test, so the document cannot drift into one it does not check.
    fn refused_code_units(pattern: &str) -> Vec<(u16, u16)> {
        let class = pattern
            .strip_prefix("^[^")
            .and_then(|p| p.strip_suffix("]+$"))
            .unwrap_or_else(|| panic!("{pattern} is not a negated class"));
        let escape = |text: &str| -> (u16, usize) {
            let hex = text.strip_prefix("\\u").and_then(|t| t.get(..4));
            let unit = hex.and_then(|h| u16::from_str_radix(h, 16).ok());
            (unit.unwrap_or_else(|| panic!("{text} in {pattern}")), 6)
        };
        let (mut ranges, mut rest) = (Vec::new(), class);
        while !rest.is_empty() {
            let (from, used) = escape(rest);
            rest = &rest[used..];
            let to = match rest.strip_prefix('-') {
                Some(after) => {
                    let (to, used) = escape(after);
                    rest = &after[used..];
                    to
                }
                None => from,
            };
            ranges.push((from, to));
        }
        ranges
    }

    /// How ECMA 262 (without the `u` flag) applies such a pattern: to UTF-16 code units.
    fn pattern_accepts(refused: &[(u16, u16)], name: &str) -> bool {
        !name.is_empty()
            && name
                .encode_utf16()
                .all(|unit| !refused.iter().any(|&(from, to)| (from..=to).contains(&unit)))
    }

    #[test]
    fn the_document_states_the_attribute_name_rule_the_service_checks() {
        let (_, doc) = super::super::api();
        let doc: Value = serde_json::from_str(&doc.to_json().unwrap()).unwrap();
        let schemas = attribute_name_schemas(&doc);
        let places: Vec<&str> = schemas.iter().map(|(place, _)| place.as_str()).collect();
        assert_eq!(
            schemas.len(),
            5,
            "two path parameters, one key, two context maps: {places:?}"
        );
        let pattern = schemas[0].1["pattern"].as_str().unwrap().to_owned();
        for (place, schema) in &schemas {
            assert_eq!(schema["pattern"], Value::from(pattern.clone()), "{place}");
            assert_eq!(schema["minLength"], 1, "{place}");
            // What the document allows the service accepts: its characters fit in 256 bytes.
            let max_chars = schema["maxLength"].as_u64().unwrap() as usize;
            assert!(max_chars * 4 <= validate::MAX_ATTRIBUTE_NAME_BYTES, "{place}");
        }
        let refused = refused_code_units(&pattern);
        let agree = |name: &str| {
            let checked = validate::attribute_name("key", name).is_ok();
            assert_eq!(pattern_accepts(&refused, name), checked, "{name:?}: {pattern}");
        };
        // Every character, alone and inside a name.
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            agree(&c.to_string());
            agree(&format!("a{c}b"));
        }
        for name in [
            "",
            "colour",
            "b2b.legalEntity",
            "\u{1F469}\u{200D}\u{1F4BB}",
            "a\u{202E}b",
        ] {
            agree(name);
        }
    }

    #[test]
    fn the_attribute_name_pattern_escapes_only_the_basic_plane() {
        // `\uXXXX` reaches U+FFFF; a forbidden character past it would need the `u` flag.
        for (from, to) in validate::ATTRIBUTE_NAME_FORBIDDEN {
            assert!(from <= to && u32::from(to) <= 0xFFFF, "{from:?}..={to:?}");
        }
        assert_eq!(
            attribute_name_pattern(),
            "^[^\\u0000-\\u001F\\u007F-\\u009F\\u200B\\u202A-\\u202E\\u2066-\\u2069\\uFEFF]+$"
        );
    }

    /// Every `pattern` in the served document, where it is, and its schema.
    fn patterns(doc: &Value) -> Vec<(String, Value)> {
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for param in operation["parameters"].as_array().into_iter().flatten() {
                    let place = format!("{method} {path} {}", param["name"]);
                    found.push((place, param["schema"].clone()));
                }
            }
        }
        for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
            for (field, property) in schema["properties"].as_object().into_iter().flatten() {
                found.push((format!("{name}.{field}"), property.clone()));
                found.push((format!("{name}.{field} keys"), property["propertyNames"].clone()));
            }
        }
        found.retain(|(_, schema)| schema.get("pattern").is_some());
        found
    }

    /// Strings to hold a pattern and a check against each other: short random ones from an
    /// alphabet that every rule cares about, and long runs near every rule's length bounds.
    fn corpus() -> Vec<String> {
        let alphabet: Vec<char> = "aqzAQZ059._:-*\"+ /é".chars().collect();
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut corpus = Vec::new();
        for _ in 0..60_000 {
            let len = (next() % 12) as usize;
            corpus.push(
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect(),
            );
        }
        for n in 0..=140 {
            for unit in ["a", "A", "7", "a-", "_b", "x1"] {
                corpus.push(unit.repeat(n));
            }
            corpus.push(format!("\"{}\"", "7".repeat(n)));
            corpus.push(format!("de{}", "-abc".repeat(n)));
        }
        corpus.extend(["*", "\"\"", "\"+5\"", "en_US", "de__DE", "EUR", "DE", "shop"].map(String::from));
        for id in ["C1", "a b\nc", "\u{7f}", "{x}:%y"] {
            corpus.push(format!("customerId:{id}"));
        }
        corpus.push(format!("customerId:{}", "é".repeat(256)));
        corpus.push(format!("customerId:{}", "é".repeat(257)));
        corpus.extend(["customerId:", "customerid:C1", "cartId:C1"].map(String::from));
        corpus
    }

    #[test]
    fn every_pattern_in_the_document_is_a_rule_the_service_checks_alike() {
        use crate::domain::TextField;
        type Check = fn(&str) -> bool;
        let rules: [(StringRule, Check); 7] = [
            (validate::CUSTOMER_QUERY, |v| validate::customer_query(v).is_ok()),
            (validate::TENANT, |v| validate::tenant(v).is_ok()),
            (validate::SESSION_ID, |v| validate::session_id(v).is_ok()),
            (validate::CURRENCY, |v| {
                validate::text_field(TextField::Currency, v).is_ok()
            }),
            (validate::TARGET_LOCATION, |v| {
                validate::text_field(TextField::TargetLocation, v).is_ok()
            }),
            (validate::LANGUAGE, |v| {
                validate::text_field(TextField::Language, v).is_ok()
            }),
            (validate::VERSION_TAG, |v| validate::version_tag(v).is_some()),
        ];
        let (_, doc) = super::super::api();
        let doc: Value = serde_json::from_str(&doc.to_json().unwrap()).unwrap();
        let found = patterns(&doc);
        assert!(found.len() >= 10, "{found:?}");
        for (place, schema) in &found {
            let pattern = schema["pattern"].as_str().unwrap();
            if pattern == attribute_name_pattern() {
                continue; // held equal to its check by the test above, character by character
            }
            let (rule, _) = rules
                .iter()
                .find(|(rule, _)| rule.pattern == pattern)
                .unwrap_or_else(|| panic!("{place}: {pattern} is not one of the contract's rules"));
            assert_eq!(schema["minLength"], rule.min_chars, "{place}");
            assert_eq!(schema["maxLength"], rule.max_chars, "{place}");
        }
        let corpus = corpus();
        for (rule, check) in rules {
            let regex = regex::Regex::new(rule.pattern).unwrap();
            let mut accepted = 0;
            for value in &corpus {
                let length = value.chars().count();
                let by_document = regex.is_match(value) && (rule.min_chars..=rule.max_chars).contains(&length);
                assert_eq!(by_document, check(value), "{value:?} against {}", rule.pattern);
                accepted += usize::from(by_document);
            }
            assert!(accepted > 0, "the corpus never meets {}", rule.pattern);
        }
    }
}
