//! Request bodies read into typed changes, with every input rule applied and every
//! offending field named. Reading a body never touches stored state.

use serde_json::{Map, Value};

use super::session::TextField;
use super::validate::{self, FieldError};

/// How a request treats one text field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldChange {
    /// `null` in the body: remove the stored value.
    Remove,
    /// A string in the body: store it.
    Set(String),
}

/// What a `PUT /context/{sessionId}` asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PutRequest {
    /// Named text fields; a field not listed was absent and stays as stored.
    pub fields: Vec<(TextField, FieldChange)>,
    /// A new `context` map replacing the stored one, when present.
    pub context: Option<Map<String, Value>>,
    /// `metadata.version`, when given.
    pub version: Option<u64>,
}

impl PutRequest {
    /// What the request does to `field`, if it names it.
    pub fn field(&self, field: TextField) -> Option<&FieldChange> {
        self.fields.iter().find(|(f, _)| *f == field).map(|(_, c)| c)
    }
}

/// How a PATCH treats the `context` map.
#[derive(Debug, Clone, PartialEq)]
pub enum ContextPatch {
    /// `"context": null`: every attribute is removed.
    Clear,
    /// A JSON Merge Patch at the first level: `null` removes a key, other values replace it.
    Merge(Map<String, Value>),
}

/// What a `PATCH /me/context` asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatchRequest {
    /// Changes to the patchable text fields only.
    pub fields: Vec<(TextField, FieldChange)>,
    pub context: Option<ContextPatch>,
    pub version: Option<u64>,
}

/// Reads a PUT body. `path_session_id` is the session the path names; a `sessionId` in the
/// body must equal it.
pub fn read_put(body: &Map<String, Value>, path_session_id: &str) -> Result<PutRequest, Vec<FieldError>> {
    let mut errors = Vec::new();
    match body.get("sessionId") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == path_session_id => {}
        Some(Value::String(_)) => errors.push(FieldError::new(
            "sessionId",
            "mismatch",
            "sessionId in the body must equal the one in the path",
        )),
        Some(_) => errors.push(FieldError::new(
            "sessionId",
            "invalid_type",
            "sessionId must be a string",
        )),
    }
    let fields = read_text_fields(body, &TextField::ALL, &mut errors);
    // `null` empties the map: `context` is always present.
    let context = read_context(body, &mut errors).map(Option::unwrap_or_default);
    let version = read_version(body, &mut errors);
    finish(
        errors,
        PutRequest {
            fields,
            context,
            version,
        },
    )
}

/// Reads a PATCH body: only the patchable fields and `context` are read, everything else
/// (the rest of a session a storefront read earlier) is ignored.
pub fn read_patch(body: &Map<String, Value>) -> Result<PatchRequest, Vec<FieldError>> {
    let mut errors = Vec::new();
    let fields = read_text_fields(body, &TextField::PATCHABLE, &mut errors);
    let context = read_context(body, &mut errors).map(|c| c.map_or(ContextPatch::Clear, ContextPatch::Merge));
    let version = read_version(body, &mut errors);
    finish(
        errors,
        PatchRequest {
            fields,
            context,
            version,
        },
    )
}

/// Reads an attribute body `{"key": "<name>", "value": <any JSON value but null>}`.
pub fn read_attribute(body: &Map<String, Value>) -> Result<(String, Value), Vec<FieldError>> {
    let mut errors = Vec::new();
    let key = match body.get("key") {
        Some(Value::String(key)) => {
            if let Err(e) = validate::attribute_name("key", key) {
                errors.push(e);
            }
            Some(key.clone())
        }
        None | Some(Value::Null) => {
            errors.push(FieldError::new("key", "required", "key is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("key", "invalid_type", "key must be a string"));
            None
        }
    };
    let value = match body.get("value") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(
                "value",
                "required",
                "value is required and may not be null",
            ));
            None
        }
        Some(value) => Some(value.clone()),
    };
    match (key, value) {
        (Some(key), Some(value)) if errors.is_empty() => Ok((key, value)),
        _ => Err(errors),
    }
}

fn read_text_fields(
    body: &Map<String, Value>,
    allowed: &[TextField],
    errors: &mut Vec<FieldError>,
) -> Vec<(TextField, FieldChange)> {
    let mut fields = Vec::new();
    for &field in allowed {
        let name = field.json_name();
        match body.get(name) {
            None => {}
            Some(Value::Null) => fields.push((field, FieldChange::Remove)),
            Some(Value::String(value)) => match validate::text_field(field, value) {
                Ok(()) => fields.push((field, FieldChange::Set(value.clone()))),
                Err(e) => errors.push(e),
            },
            Some(_) => errors.push(FieldError::new(
                name,
                "invalid_type",
                format!("{name} must be a string or null"),
            )),
        }
    }
    fields
}

/// `context` as sent: `None` when absent (or invalid, with the error recorded), `Some(None)`
/// for `null`, `Some(Some(map))` for an object whose keys pass the attribute-name rule.
fn read_context(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<Option<Map<String, Value>>> {
    match body.get("context")? {
        Value::Null => Some(None),
        Value::Object(map) => {
            for key in map.keys() {
                if let Err(mut e) = validate::attribute_name("context", key) {
                    e.message = format!("context keys: {}", e.message);
                    errors.push(e);
                }
            }
            Some(Some(map.clone()))
        }
        _ => {
            errors.push(FieldError::new("context", "invalid_type", "context must be an object"));
            None
        }
    }
}

fn read_version(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<u64> {
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => return None,
        Some(Value::Object(m)) => m,
        Some(_) => {
            errors.push(FieldError::new(
                "metadata",
                "invalid_type",
                "metadata must be an object",
            ));
            return None;
        }
    };
    match metadata.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if whole_number(n).is_some() => whole_number(n),
        Some(_) => {
            errors.push(FieldError::new(
                "metadata.version",
                "invalid_type",
                "metadata.version must be a non-negative integer",
            ));
            None
        }
    }
}

/// A non-negative whole number: `3`, and also `3.0` (JSON does not tell them apart).
fn whole_number(n: &serde_json::Number) -> Option<u64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every whole f64 below is exact
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..EXACT).contains(f))
            .map(|f| f as u64)
    })
}

fn finish<T>(errors: Vec<FieldError>, value: T) -> Result<T, Vec<FieldError>> {
    if errors.is_empty() { Ok(value) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn put_distinguishes_absent_null_and_value() {
        let req = read_put(
            &obj(json!({"siteCode": "main", "cartId": null, "metadata": {"version": 4}})),
            "s1",
        )
        .unwrap();
        assert_eq!(req.field(TextField::SiteCode), Some(&FieldChange::Set("main".into())));
        assert_eq!(req.field(TextField::CartId), Some(&FieldChange::Remove));
        assert_eq!(req.field(TextField::Currency), None);
        assert_eq!(req.context, None);
        assert_eq!(req.version, Some(4));
    }

    #[test]
    fn put_names_every_offending_field() {
        let errors = read_put(
            &obj(json!({"sessionId": "other", "currency": "eu", "language": 7, "context": [], "metadata": {"version": -1}})),
            "s1",
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["sessionId", "currency", "language", "context", "metadata.version"]
        );
    }

    #[test]
    fn put_version_must_be_a_whole_number() {
        for bad in [json!("3"), json!(1.5), json!(-1), json!(-1.0), json!(1e30), json!(true)] {
            let body = obj(json!({"metadata": {"version": bad}}));
            assert!(read_put(&body, "s").is_err(), "{body:?}");
        }
    }

    #[test]
    fn put_version_may_be_written_with_a_zero_fraction() {
        assert_eq!(
            read_put(&obj(json!({"metadata": {"version": 7.0}})), "s")
                .unwrap()
                .version,
            Some(7)
        );
    }

    #[test]
    fn patch_ignores_fields_it_may_not_change() {
        let req = read_patch(&obj(json!({
            "sessionId": 5, "customerId": "C9", "cartId": {}, "metadata": {"version": 2, "createdAt": 1},
            "currency": "USD", "unknown": true
        })))
        .unwrap();
        assert_eq!(req.fields, vec![(TextField::Currency, FieldChange::Set("USD".into()))]);
        assert_eq!(req.version, Some(2));
    }

    #[test]
    fn attribute_body_needs_a_key_and_a_non_null_value() {
        assert_eq!(
            read_attribute(&obj(json!({"key": "k", "value": {"a": 1}}))).unwrap(),
            ("k".to_string(), json!({"a": 1}))
        );
        assert!(read_attribute(&obj(json!({"key": "k", "value": null}))).is_err());
        assert!(read_attribute(&obj(json!({"key": "k"}))).is_err());
        assert!(read_attribute(&obj(json!({"key": 1, "value": 1}))).is_err());
        assert!(read_attribute(&obj(json!({"key": "", "value": 1}))).is_err());
    }
}
