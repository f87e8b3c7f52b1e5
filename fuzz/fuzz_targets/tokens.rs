//! Any text as a bearer token or saas-token: verifying it never panics, and nothing that is not
//! signed with the key is accepted.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use session_context::auth::{AuthSettings, ClaimNames, KeySource, Verifier};

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::new(&AuthSettings {
        access: KeySource::Secret(b"fuzz-secret-fuzz-secret-fuzz-secret!".to_vec()),
        saas: None,
        issuer: None,
        audience: None,
        claims: ClaimNames::default(),
    })
    .expect("the fuzz key is valid")
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    // Random input cannot carry a valid HMAC of the secret.
    assert!(VERIFIER.verify_access(token).is_err());
    assert!(VERIFIER.verify_saas(token).is_err());
});
