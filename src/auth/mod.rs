//! Token verification: an `Authorization: Bearer` JWT becomes [`AccessClaims`], a `saas-token`
//! becomes the customer it speaks for. Keys and validation rules are built once at startup;
//! the HTTP extractors in `http::auth` turn claims into typed principals.

mod keys;
pub mod mint;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use quick_cache::sync::Cache;
use serde_json::{Map, Value};

use crate::clock::{Clock, Millis, SystemClock};
use crate::domain::TextField;

pub use keys::{KeySet, KeySource, MIN_SECRET_BYTES};

/// The management scope, and the spelling of it that Emporix also uses.
pub const MANAGE_SCOPES: [&str; 2] = ["session_context.context_manage", "sessioncontext.context_manage"];

/// Names of the claims the service reads; configurable for other identity providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    pub tenant: String,
    pub scope: String,
    pub session_id: String,
    pub customer_id: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            tenant: "tenant".into(),
            scope: "scope".into(),
            session_id: "sessionId".into(),
            customer_id: "customerId".into(),
        }
    }
}

/// How tokens are verified.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Keys for access tokens.
    pub access: KeySource,
    /// Keys for saas-tokens; `None` = the access keys.
    pub saas: Option<KeySource>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub claims: ClaimNames,
}

/// What a verified access token says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessClaims {
    /// The tenant claim and any `tenant=<name>` scope entries.
    pub tenants: Vec<String>,
    pub scopes: Vec<String>,
    pub session_id: Option<String>,
    /// The customer claim, else `sub`; `None` for anonymous tokens.
    pub customer_id: Option<String>,
    /// When the token was issued (`iat`), in ms since the epoch.
    pub issued_at: Option<Millis>,
    /// The `siteCode`, `currency`, `language` and `targetLocation` claims, as sent (a session
    /// created on first use starts with the valid ones).
    pub session_defaults: Vec<(TextField, String)>,
}

impl AccessClaims {
    /// Whether the token is for `tenant`.
    pub fn is_for_tenant(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|t| t == tenant)
    }

    /// Whether the token may use the management endpoints.
    pub fn may_manage(&self) -> bool {
        self.scopes.iter().any(|s| MANAGE_SCOPES.contains(&s.as_str()))
    }
}

/// Why a token was refused. The reason goes to the log, never to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid token: {0}")]
pub struct InvalidToken(pub String);

/// Why a `saas-token` does not speak for a customer of the path's tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaasRefused {
    /// It does not verify, or it is an access token rather than a saas-token (401).
    #[error(transparent)]
    Invalid(#[from] InvalidToken),
    /// A valid saas-token that names another tenant (403).
    #[error("the saas-token is for another tenant")]
    OtherTenant,
}

/// How many verified access tokens are remembered.
const VERIFIED_TOKENS: usize = 16_384;

/// A verified access token's claims and when it expires.
struct Verified {
    claims: Arc<AccessClaims>,
    expires_at: Millis,
}

/// Verifies access tokens and saas-tokens.
pub struct Verifier {
    access: KeySet,
    saas: KeySet,
    validations: Vec<(Algorithm, Validation)>,
    claims: ClaimNames,
    /// Storefronts send the same token with every request: remembering a verified token (by
    /// its exact text) saves the signature check and the JSON parsing on all but the first.
    /// Only tokens that verified are kept, and their expiry is checked on every use.
    verified: Cache<String, Arc<Verified>>,
    /// Whether a remembered token has expired is read from this clock.
    clock: Arc<dyn Clock>,
}

impl Verifier {
    /// Builds the keys and rules; the error names what is wrong with the configuration.
    /// Remembered tokens expire by the system clock.
    pub fn new(settings: &AuthSettings) -> Result<Self, String> {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    /// As [`Verifier::new`], with remembered tokens expiring by `clock` (a `ManualClock` in
    /// tests). A token's first verification (signature, `exp`, `nbf`) is jsonwebtoken's, against
    /// the system time.
    pub fn with_clock(settings: &AuthSettings, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let access = KeySet::load(&settings.access)?;
        let saas = match &settings.saas {
            Some(source) => KeySet::load(source)?,
            None => access.clone(),
        };
        let validations = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256]
            .into_iter()
            .map(|alg| (alg, validation(alg, settings)))
            .collect();
        Ok(Verifier {
            access,
            saas,
            validations,
            claims: settings.claims.clone(),
            verified: Cache::new(VERIFIED_TOKENS),
            clock,
        })
    }

    /// Verifies an access token and reads its claims.
    pub fn verify_access(&self, token: &str) -> Result<Arc<AccessClaims>, InvalidToken> {
        let now = self.clock.now();
        if let Some(known) = self.verified.get(token) {
            if known.expires_at > now {
                return Ok(Arc::clone(&known.claims));
            }
            return Err(InvalidToken("the token has expired".into()));
        }
        let raw = self.verify(&self.access, token)?;
        let claims = Arc::new(self.read_access_claims(&raw));
        // `exp` is required and was checked, so a verified token has a numeric one.
        let expires_at = raw.get("exp").and_then(numeric_date_millis).unwrap_or(now);
        let verified = Verified {
            claims: Arc::clone(&claims),
            expires_at,
        };
        self.verified.insert(token.to_owned(), Arc::new(verified));
        Ok(claims)
    }

    fn read_access_claims(&self, claims: &Map<String, Value>) -> AccessClaims {
        let names = &self.claims;
        let (scopes, tenants) = scopes_and_tenants(claims, names);
        AccessClaims {
            tenants,
            scopes,
            session_id: string_claim(claims, &names.session_id),
            customer_id: string_claim(claims, &names.customer_id).or_else(|| string_claim(claims, "sub")),
            issued_at: claims.get("iat").and_then(numeric_date_millis),
            session_defaults: TextField::PATCHABLE
                .into_iter()
                .filter_map(|field| string_claim(claims, field.json_name()).map(|value| (field, value)))
                .collect(),
        }
    }

    /// Verifies a saas-token for `tenant` and returns the customer it speaks for (its `sub`).
    ///
    /// A saas-token says who the customer is and nothing else. One that names a tenant (the
    /// tenant claim or a `tenant=` scope entry) must name only `tenant`: a token minted for
    /// another tenant's customer of the same id is refused as [`SaasRefused::OtherTenant`].
    /// One that carries a session claim or the management scope is an access token (a
    /// storefront's or a manager's, whose `sub` may well be a customer id): it is
    /// [`SaasRefused::Invalid`], as if it had not verified.
    pub fn verify_saas(&self, token: &str, tenant: &str) -> Result<String, SaasRefused> {
        let claims = self.verify(&self.saas, token)?;
        let names = &self.claims;
        if claims.contains_key(&names.session_id) {
            return Err(InvalidToken("an access token with a session claim is not a saas-token".into()).into());
        }
        let (scopes, tenants) = scopes_and_tenants(&claims, names);
        if scopes.iter().any(|s| MANAGE_SCOPES.contains(&s.as_str())) {
            return Err(InvalidToken("a management token is not a saas-token".into()).into());
        }
        // A tenant claim that is there must be the tenant's name (not "", a number or null).
        let claimed_elsewhere = claims.get(&names.tenant).is_some_and(|v| v.as_str() != Some(tenant));
        if claimed_elsewhere || tenants.iter().any(|t| t != tenant) {
            return Err(SaasRefused::OtherTenant);
        }
        string_claim(&claims, "sub").ok_or_else(|| InvalidToken("saas-token has no sub".into()).into())
    }

    fn verify(&self, keys: &KeySet, token: &str) -> Result<Map<String, Value>, InvalidToken> {
        let header = decode_header(token).map_err(|e| InvalidToken(e.to_string()))?;
        let key = keys
            .pick(header.kid.as_deref())
            .ok_or_else(|| InvalidToken("no key for this kid".into()))?;
        if header.alg != key.algorithm {
            return Err(InvalidToken(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let (_, validation) = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == key.algorithm)
            .ok_or_else(|| InvalidToken("unsupported algorithm".into()))?;
        decode::<Map<String, Value>>(token, &key.key, validation)
            .map(|data| data.claims)
            .map_err(|e| InvalidToken(e.to_string()))
    }
}

fn validation(alg: Algorithm, settings: &AuthSettings) -> Validation {
    let mut v = Validation::new(alg);
    // An expired token is expired: no grace period.
    v.leeway = 0;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = &settings.issuer {
        v.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &settings.audience {
        Some(audience) => {
            v.set_audience(&[audience]);
            required.push("aud");
        }
        // No audience configured: there is nothing to compare a token's `aud` with.
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// The scopes a token grants and the tenants it names: the tenant claim and any
/// `tenant=<name>` scope entries (which are not scopes).
fn scopes_and_tenants(claims: &Map<String, Value>, names: &ClaimNames) -> (Vec<String>, Vec<String>) {
    let mut scopes: Vec<String> = match claims.get(&names.scope) {
        // RFC 6749 3.3: scopes are separated by spaces (%x20) and nothing else; a tab or a
        // no-break space is part of a scope word, so it cannot smuggle one in.
        Some(Value::String(s)) => s.split(' ').filter(|w| !w.is_empty()).map(str::to_owned).collect(),
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    let mut tenants: Vec<String> = scopes
        .iter()
        .filter_map(|s| s.strip_prefix("tenant=").map(str::to_owned))
        .collect();
    tenants.extend(string_claim(claims, &names.tenant));
    scopes.retain(|s| !s.starts_with("tenant="));
    (scopes, tenants)
}

/// A NumericDate (RFC 7519: seconds since the epoch, which may have a fraction, in any JSON
/// number form: `1796037307`, `1796037307.5`, `1e10`) in milliseconds, saturating at the ends.
fn numeric_date_millis(value: &Value) -> Option<Millis> {
    // `as` saturates; every date a token can mean is far inside f64's exact integers.
    value.as_f64().map(|seconds| (seconds * 1000.0) as Millis)
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests;
