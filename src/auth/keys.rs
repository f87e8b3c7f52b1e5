//! Decoding keys, built once at startup from the configured secret, PEM file or JWKS file.
//! Each key carries the one algorithm it may verify, so `alg: none` and algorithm switching
//! (an HS256 token "signed" with an RSA public key) are refused.

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Shortest accepted HS256 secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where the keys come from, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An HS256 shared secret.
    Secret(Vec<u8>),
    /// A PEM public key file (RSA for RS256, P-256 for ES256).
    PublicKeyPem(std::path::PathBuf),
    /// A JWKS document; keys are chosen by `kid`.
    Jwks(std::path::PathBuf),
}

/// A key and the single algorithm it verifies.
#[derive(Clone)]
pub struct VerifyingKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

/// The keys a token may be verified with.
#[derive(Clone)]
pub enum KeySet {
    Single(VerifyingKey),
    /// JWKS keys by `kid`; a token without `kid` is accepted only when the set has one key.
    ByKid(HashMap<String, VerifyingKey>),
}

impl KeySet {
    /// Builds the keys; the error says what is wrong with the configuration.
    pub fn load(source: &KeySource) -> Result<Self, String> {
        match source {
            KeySource::Secret(secret) => {
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(format!(
                        "the HS256 secret is {} bytes; at least {MIN_SECRET_BYTES} are required",
                        secret.len()
                    ));
                }
                Ok(KeySet::Single(VerifyingKey {
                    key: DecodingKey::from_secret(secret),
                    algorithm: Algorithm::HS256,
                }))
            }
            KeySource::PublicKeyPem(path) => {
                let pem = read(path)?;
                let key = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    VerifyingKey {
                        key,
                        algorithm: Algorithm::RS256,
                    }
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    VerifyingKey {
                        key,
                        algorithm: Algorithm::ES256,
                    }
                } else {
                    return Err(format!("{} is not an RSA or EC public key in PEM form", path.display()));
                };
                Ok(KeySet::Single(key))
            }
            KeySource::Jwks(path) => {
                let text = read(path)?;
                let set: JwkSet = serde_json::from_slice(&text)
                    .map_err(|e| format!("{} is not a JWKS document: {e}", path.display()))?;
                let mut keys = HashMap::new();
                for jwk in &set.keys {
                    let algorithm = match &jwk.algorithm {
                        AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
                        _ => continue, // only RS256 and ES256 keys are used
                    };
                    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("a key in {}: {e}", path.display()))?;
                    let kid = jwk.common.key_id.clone().unwrap_or_default();
                    keys.insert(kid, VerifyingKey { key, algorithm });
                }
                if keys.is_empty() {
                    return Err(format!("{} holds no RS256 or ES256 key", path.display()));
                }
                Ok(KeySet::ByKid(keys))
            }
        }
    }

    /// The key for a token whose header names `kid`; `None` when there is none.
    pub fn pick(&self, kid: Option<&str>) -> Option<&VerifyingKey> {
        match (self, kid) {
            (KeySet::Single(key), _) => Some(key),
            (KeySet::ByKid(keys), Some(kid)) => keys.get(kid),
            (KeySet::ByKid(keys), None) if keys.len() == 1 => keys.values().next(),
            (KeySet::ByKid(_), None) => None,
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}
