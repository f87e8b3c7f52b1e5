//! Reading a request body as JSON: the nesting depth is checked by a byte scan before any
//! parser runs, then the body is parsed with duplicate object keys refused. RFC 8259 leaves
//! duplicates to the reader; we refuse them, so that no two readers of one body (a proxy, a
//! log, this service) can disagree about what it says.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::validate::{FieldError, MAX_BODY_DEPTH, nests_deeper_than};

/// Reads `bytes` as a JSON object, or says why it is not an acceptable one.
pub fn read_object(bytes: &[u8]) -> Result<Map<String, Value>, FieldError> {
    if nests_deeper_than(bytes, MAX_BODY_DEPTH) {
        return Err(FieldError::new(
            "body",
            "too_deep",
            format!("the body nests deeper than {MAX_BODY_DEPTH} levels"),
        ));
    }
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(map))) => Ok(map),
        Ok(_) => Err(FieldError::new(
            "body",
            "invalid_type",
            "the body must be a JSON object",
        )),
        Err(e) => Err(FieldError::new(
            "body",
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// A JSON value whose objects have no duplicate keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom("an object has the same key twice"));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_objects_as_serde_json_does() {
        let text = br#"{"a":1,"b":[true,null,-2,3.5,"x"],"c":{"d":{}},"e":18446744073709551615}"#;
        let expected: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(Value::Object(read_object(text).unwrap()), expected);
    }

    #[test]
    fn numbers_survive_being_stored_and_read_back() {
        // Found by fuzzing: without exact float parsing, a large integer literal read once and
        // then stored and read back came out one ulp off, so a session's data drifted.
        let body = read_object(b"{\"n\":[31133330000000000000000010232598767690969414,0.1,1e-300]}").unwrap();
        let stored = serde_json::to_string(&body).unwrap();
        let again: Map<String, Value> = serde_json::from_str(&stored).unwrap();
        assert_eq!(again, body);
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        for text in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"c":{"k":1,"k":1}}"#,
            br#"{"l":[{"x":0,"x":0}]}"#,
        ] {
            assert_eq!(
                read_object(text).unwrap_err().kind,
                "invalid_json",
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        assert_eq!(read_object(br#"{"a":{"a":1}}"#).unwrap()["a"], json!({"a": 1}));
    }

    #[test]
    fn refuses_what_is_not_an_acceptable_object() {
        for (text, kind) in [
            (&b"[1]"[..], "invalid_type"),
            (b"\"s\"", "invalid_type"),
            (b"{", "invalid_json"),
            (b"", "invalid_json"),
            (br#"{"n":1e400}"#, "invalid_json"),
            (b"{\"s\":\"\xff\"}", "invalid_json"),
        ] {
            assert_eq!(
                read_object(text).unwrap_err().kind,
                kind,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(read_object(deep.as_bytes()).unwrap_err().kind, "too_deep");
    }
}
