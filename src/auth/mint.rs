//! Signing HS256 tokens, for `session-context token`, for `serve --dev` and for tests.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Map, Value, json};

use super::MIN_SECRET_BYTES;
use crate::clock::{Clock, SystemClock};

/// The claims of a token to sign; absent parts are left out.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    pub tenant: Option<String>,
    pub scope: Option<String>,
    pub session_id: Option<String>,
    pub customer_id: Option<String>,
    /// `sub`: saas-tokens carry the customer here.
    pub subject: Option<String>,
    pub ttl: Duration,
}

/// Signs `spec` with HS256 and `secret` (at least 32 bytes), with the contract's claim names.
pub fn mint_hs256(secret: &[u8], spec: &TokenSpec) -> Result<String, String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!("the secret must be at least {MIN_SECRET_BYTES} bytes"));
    }
    let now = SystemClock.now() / 1000;
    let ttl = i64::try_from(spec.ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let mut claims = Map::new();
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now.saturating_add(ttl)));
    let optional = [
        ("tenant", &spec.tenant),
        ("scope", &spec.scope),
        ("sessionId", &spec.session_id),
        ("customerId", &spec.customer_id),
        ("sub", &spec.subject),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            claims.insert(name.into(), Value::String(value.clone()));
        }
    }
    encode(&Header::default(), &claims, &EncodingKey::from_secret(secret)).map_err(|e| e.to_string())
}
