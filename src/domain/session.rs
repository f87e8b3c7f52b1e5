//! The session context resource: its fields and its JSON form (when it expires is
//! `domain::lifetime`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::clock::{Millis, format_rfc3339_millis, parse_rfc3339};

/// A session's identity: always the tenant *and* the session id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub tenant: String,
    pub session_id: String,
}

impl SessionKey {
    pub fn new(tenant: impl Into<String>, session_id: impl Into<String>) -> Self {
        SessionKey {
            tenant: tenant.into(),
            session_id: session_id.into(),
        }
    }
}

/// A session context as stored and as served (its JSON form is the API's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionContext {
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cart_id: Option<String>,
    /// Free-form attributes; always present (`{}` when empty).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: Map<String, Value>,
    pub metadata: Metadata,
}

/// Optimistic-locking version and timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Starts at 1 and grows by exactly 1 with every change.
    pub version: u64,
    /// UTC, RFC 3339 with milliseconds.
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
    /// UTC, RFC 3339 with milliseconds.
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub modified_at: Millis,
}

/// The optional top-level text fields, named once so that PUT and PATCH can treat them alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextField {
    CustomerId,
    SiteCode,
    Currency,
    TargetLocation,
    Language,
    CartId,
}

impl TextField {
    /// Every text field, in the order of the JSON form.
    pub const ALL: [TextField; 6] = [
        TextField::CustomerId,
        TextField::SiteCode,
        TextField::Currency,
        TextField::TargetLocation,
        TextField::Language,
        TextField::CartId,
    ];

    /// The fields a storefront may change through `PATCH /me/context`.
    pub const PATCHABLE: [TextField; 4] = [
        TextField::SiteCode,
        TextField::Currency,
        TextField::TargetLocation,
        TextField::Language,
    ];

    /// The field's name in JSON.
    pub fn json_name(self) -> &'static str {
        match self {
            TextField::CustomerId => "customerId",
            TextField::SiteCode => "siteCode",
            TextField::Currency => "currency",
            TextField::TargetLocation => "targetLocation",
            TextField::Language => "language",
            TextField::CartId => "cartId",
        }
    }
}

impl SessionContext {
    /// A new, empty session at version 1.
    pub fn new(session_id: &str, now: Millis) -> Self {
        SessionContext {
            session_id: session_id.to_owned(),
            customer_id: None,
            site_code: None,
            currency: None,
            target_location: None,
            language: None,
            cart_id: None,
            context: Map::new(),
            metadata: Metadata {
                version: 1,
                created_at: now,
                modified_at: now,
            },
        }
    }

    /// The value of `field`, if set.
    pub fn text(&self, field: TextField) -> Option<&str> {
        match field {
            TextField::CustomerId => &self.customer_id,
            TextField::SiteCode => &self.site_code,
            TextField::Currency => &self.currency,
            TextField::TargetLocation => &self.target_location,
            TextField::Language => &self.language,
            TextField::CartId => &self.cart_id,
        }
        .as_deref()
    }

    /// The slot that holds `field`.
    pub fn text_mut(&mut self, field: TextField) -> &mut Option<String> {
        match field {
            TextField::CustomerId => &mut self.customer_id,
            TextField::SiteCode => &mut self.site_code,
            TextField::Currency => &mut self.currency,
            TextField::TargetLocation => &mut self.target_location,
            TextField::Language => &mut self.language,
            TextField::CartId => &mut self.cart_id,
        }
    }

    /// Records a change made at `now`: the version grows by one and `modifiedAt` moves.
    pub fn touch(&mut self, now: Millis) {
        self.metadata.version += 1;
        // modifiedAt never goes backwards, even if the wall clock does.
        self.metadata.modified_at = now.max(self.metadata.modified_at);
    }
}

mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_rfc3339_millis(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        let text = String::deserialize(d)?;
        parse_rfc3339(&text).ok_or_else(|| D::Error::custom("not an RFC 3339 timestamp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_leaves_out_absent_fields_and_always_has_context() {
        let session = SessionContext::new("s1", 1_770_222_604_047);
        let json = serde_json::to_value(&session).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "sessionId": "s1",
                "context": {},
                "metadata": {
                    "version": 1,
                    "createdAt": "2026-02-04T16:30:04.047Z",
                    "modifiedAt": "2026-02-04T16:30:04.047Z"
                }
            })
        );
        let back: SessionContext = serde_json::from_value(json).unwrap();
        assert_eq!(back, session);
    }

    #[test]
    fn touch_bumps_version_by_one_and_never_moves_time_back() {
        let mut session = SessionContext::new("s1", 5_000);
        session.touch(4_000);
        assert_eq!(session.metadata.version, 2);
        assert_eq!(session.metadata.modified_at, 5_000);
        session.touch(6_000);
        assert_eq!(session.metadata.version, 3);
        assert_eq!(session.metadata.modified_at, 6_000);
    }
}
