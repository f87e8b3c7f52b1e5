use super::mint::{TokenSpec, mint_hs256};
use super::*;
use crate::clock::ManualClock;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn settings(access: KeySource) -> AuthSettings {
    AuthSettings {
        access,
        saas: None,
        issuer: None,
        audience: None,
        claims: ClaimNames::default(),
    }
}

fn hs_verifier() -> Verifier {
    Verifier::new(&settings(KeySource::Secret(SECRET.to_vec()))).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn sign(header: Header, claims: serde_json::Value, key: &EncodingKey) -> String {
    encode(&header, &claims, key).unwrap()
}

#[test]
fn short_secrets_are_refused_at_startup() {
    let err = Verifier::new(&settings(KeySource::Secret(b"short".to_vec())))
        .err()
        .unwrap();
    assert!(err.contains("at least 32"), "{err}");
}

#[test]
fn a_minted_management_token_verifies_with_its_claims() {
    let spec = TokenSpec {
        tenant: Some("shop".into()),
        scope: Some("session_context.context_manage tenant=other".into()),
        ttl: Duration::from_secs(60),
        ..Default::default()
    };
    let claims = hs_verifier()
        .verify_access(&mint_hs256(SECRET, &spec).unwrap())
        .unwrap();
    assert!(claims.is_for_tenant("shop"));
    assert!(claims.is_for_tenant("other"));
    assert!(!claims.is_for_tenant("third"));
    assert!(claims.may_manage());
    assert_eq!(claims.customer_id, None);
}

#[test]
fn customer_falls_back_to_sub_and_scope_may_be_a_list() {
    let token = sign(
        Header::default(),
        json!({"exp": now() + 60, "sub": "C5", "sessionId": "s1", "scope": ["sessioncontext.context_manage"]}),
        &EncodingKey::from_secret(SECRET),
    );
    let claims = hs_verifier().verify_access(&token).unwrap();
    assert_eq!(claims.customer_id.as_deref(), Some("C5"));
    assert_eq!(claims.session_id.as_deref(), Some("s1"));
    assert!(claims.may_manage());
}

#[test]
fn bad_tokens_are_refused() {
    let good_claims = json!({"exp": now() + 60, "tenant": "shop"});
    let wrong_key = sign(
        Header::default(),
        good_claims.clone(),
        &EncodingKey::from_secret(&[7u8; 32]),
    );
    let expired = sign(
        Header::default(),
        json!({"exp": now() - 1, "tenant": "shop"}),
        &EncodingKey::from_secret(SECRET),
    );
    let no_exp = sign(
        Header::default(),
        json!({"tenant": "shop"}),
        &EncodingKey::from_secret(SECRET),
    );
    let not_yet = sign(
        Header::default(),
        json!({"exp": now() + 60, "nbf": now() + 30}),
        &EncodingKey::from_secret(SECRET),
    );
    let good = sign(Header::default(), good_claims, &EncodingKey::from_secret(SECRET));
    let mut parts: Vec<&str> = good.split('.').collect();
    // alg: none, with the signature dropped
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let alg_none = format!("{none_header}.{}.", parts[1]);
    // a tampered payload under the original signature
    let tampered_payload = base64_url(&json!({"exp": now() + 60, "tenant": "evil"}).to_string());
    parts[1] = &tampered_payload;
    let tampered = parts.join(".");
    let verifier = hs_verifier();
    for (name, token) in [
        ("wrong key", wrong_key),
        ("expired", expired),
        ("no exp", no_exp),
        ("not yet valid", not_yet),
        ("alg none", alg_none),
        ("tampered", tampered),
        ("garbage", "not.a.jwt".to_string()),
        ("empty", String::new()),
    ] {
        assert!(verifier.verify_access(&token).is_err(), "{name} was accepted");
    }
}

#[test]
fn rs256_pem_keys_verify_and_refuse_hs256_signed_with_the_public_key() {
    let verifier = Verifier::new(&settings(KeySource::PublicKeyPem(keys_dir().join("rsa_public.pem")))).unwrap();
    let private = std::fs::read(keys_dir().join("rsa_private.pem")).unwrap();
    let claims = json!({"exp": now() + 60, "tenant": "shop"});
    let rs = sign(
        Header::new(jsonwebtoken::Algorithm::RS256),
        claims.clone(),
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    );
    assert!(verifier.verify_access(&rs).unwrap().is_for_tenant("shop"));
    let public = std::fs::read(keys_dir().join("rsa_public.pem")).unwrap();
    let confused = sign(Header::default(), claims, &EncodingKey::from_secret(&public));
    assert!(verifier.verify_access(&confused).is_err());
}

#[test]
fn jwks_keys_are_chosen_by_kid() {
    let verifier = Verifier::new(&settings(KeySource::Jwks(keys_dir().join("jwks.json")))).unwrap();
    let ec_private = std::fs::read(keys_dir().join("ec_private.pem")).unwrap();
    let key = EncodingKey::from_ec_pem(&ec_private).unwrap();
    let claims = json!({"exp": now() + 60, "tenant": "shop"});
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("ec-1".into());
    assert!(
        verifier
            .verify_access(&sign(header.clone(), claims.clone(), &key))
            .is_ok()
    );
    header.kid = Some("unknown".into());
    assert!(
        verifier
            .verify_access(&sign(header.clone(), claims.clone(), &key))
            .is_err()
    );
    header.kid = Some("rsa-1".into());
    assert!(verifier.verify_access(&sign(header, claims.clone(), &key)).is_err());
    // two keys in the set: a token without kid cannot be matched
    let no_kid = sign(Header::new(jsonwebtoken::Algorithm::ES256), claims, &key);
    assert!(verifier.verify_access(&no_kid).is_err());
}

#[test]
fn issuer_and_audience_are_required_when_configured() {
    let mut s = settings(KeySource::Secret(SECRET.to_vec()));
    s.issuer = Some("https://idp".into());
    s.audience = Some("session-context".into());
    let verifier = Verifier::new(&s).unwrap();
    let key = EncodingKey::from_secret(SECRET);
    let ok = sign(
        Header::default(),
        json!({"exp": now() + 60, "iss": "https://idp", "aud": "session-context"}),
        &key,
    );
    let wrong_iss = sign(
        Header::default(),
        json!({"exp": now() + 60, "iss": "https://x", "aud": "session-context"}),
        &key,
    );
    let missing_aud = sign(
        Header::default(),
        json!({"exp": now() + 60, "iss": "https://idp"}),
        &key,
    );
    assert!(verifier.verify_access(&ok).is_ok());
    assert!(verifier.verify_access(&wrong_iss).is_err());
    assert!(verifier.verify_access(&missing_aud).is_err());
}

#[test]
fn saas_tokens_may_have_their_own_secret() {
    let saas_secret = b"ffffffffffffffffffffffffffffffff".to_vec();
    let mut s = settings(KeySource::Secret(SECRET.to_vec()));
    s.saas = Some(KeySource::Secret(saas_secret.clone()));
    let verifier = Verifier::new(&s).unwrap();
    let spec = TokenSpec {
        subject: Some("C1".into()),
        ttl: Duration::from_secs(60),
        ..Default::default()
    };
    assert_eq!(
        verifier
            .verify_saas(&mint_hs256(&saas_secret, &spec).unwrap(), "shop")
            .unwrap(),
        "C1"
    );
    assert!(
        verifier
            .verify_saas(&mint_hs256(SECRET, &spec).unwrap(), "shop")
            .is_err()
    );
}

#[test]
fn a_saas_token_is_bound_to_the_tenant_it_names() {
    let verifier = hs_verifier();
    let key = EncodingKey::from_secret(SECRET);
    let saas = |claims: serde_json::Value| sign(Header::default(), claims, &key);
    for own in [
        json!({"exp": now() + 60, "sub": "C1"}),
        json!({"exp": now() + 60, "sub": "C1", "tenant": "acme"}),
        json!({"exp": now() + 60, "sub": "C1", "scope": "openid tenant=acme"}),
        json!({"exp": now() + 60, "sub": "C1", "tenant": "acme", "scope": ["tenant=acme"]}),
    ] {
        assert_eq!(
            verifier.verify_saas(&saas(own.clone()), "acme"),
            Ok("C1".into()),
            "{own}"
        );
    }
    for foreign in [
        json!({"exp": now() + 60, "sub": "C1", "tenant": "globex"}),
        json!({"exp": now() + 60, "sub": "C1", "scope": "tenant=globex"}),
        json!({"exp": now() + 60, "sub": "C1", "tenant": "acme", "scope": "tenant=globex"}),
        json!({"exp": now() + 60, "sub": "C1", "tenant": ""}),
        json!({"exp": now() + 60, "sub": "C1", "tenant": 7}),
        json!({"exp": now() + 60, "sub": "C1", "tenant": null}),
    ] {
        assert_eq!(
            verifier.verify_saas(&saas(foreign.clone()), "acme"),
            Err(SaasRefused::OtherTenant),
            "{foreign}"
        );
    }
}

#[test]
fn access_tokens_are_not_saas_tokens() {
    let verifier = hs_verifier();
    let key = EncodingKey::from_secret(SECRET);
    for access in [
        json!({"exp": now() + 60, "sub": "C1", "tenant": "acme", "sessionId": "s1"}),
        json!({"exp": now() + 60, "sub": "C1", "sessionId": ""}),
        json!({"exp": now() + 60, "sub": "C1", "sessionId": null}),
        json!({"exp": now() + 60, "sub": "C1", "tenant": "acme", "scope": "session_context.context_manage"}),
        json!({"exp": now() + 60, "sub": "C1", "scope": ["openid", "sessioncontext.context_manage"]}),
        // another tenant's access token is an access token first
        json!({"exp": now() + 60, "sub": "C1", "tenant": "globex", "sessionId": "s1"}),
    ] {
        let refused = verifier.verify_saas(&sign(Header::default(), access.clone(), &key), "acme");
        assert!(matches!(refused, Err(SaasRefused::Invalid(_))), "{access}: {refused:?}");
    }
    let no_sub = sign(Header::default(), json!({"exp": now() + 60}), &key);
    assert!(matches!(
        verifier.verify_saas(&no_sub, "acme"),
        Err(SaasRefused::Invalid(_))
    ));
}

#[test]
fn the_session_claim_that_marks_an_access_token_is_the_configured_one() {
    let mut s = settings(KeySource::Secret(SECRET.to_vec()));
    s.claims.session_id = "sid".into();
    let verifier = Verifier::new(&s).unwrap();
    let key = EncodingKey::from_secret(SECRET);
    let storefront = sign(
        Header::default(),
        json!({"exp": now() + 60, "sub": "C1", "sid": "s1"}),
        &key,
    );
    assert!(matches!(
        verifier.verify_saas(&storefront, "acme"),
        Err(SaasRefused::Invalid(_))
    ));
    let with_other_claim = sign(
        Header::default(),
        json!({"exp": now() + 60, "sub": "C1", "sessionId": "s1"}),
        &key,
    );
    assert_eq!(verifier.verify_saas(&with_other_claim, "acme"), Ok("C1".into()));
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// A token whose payload is `payload` exactly as written (so numbers keep the form they are
/// given in: `1e10`, `5.0`), signed with HS256 and the test secret.
fn sign_text(payload: &str) -> String {
    let signed = format!(
        "{}.{}",
        base64_url(r#"{"alg":"HS256","typ":"JWT"}"#),
        base64_url(payload)
    );
    let signature =
        jsonwebtoken::crypto::sign(signed.as_bytes(), &EncodingKey::from_secret(SECRET), Algorithm::HS256).unwrap();
    format!("{signed}.{signature}")
}

#[test]
fn a_remembered_token_still_expires() {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let verifier = Verifier::with_clock(&settings(KeySource::Secret(SECRET.to_vec())), clock.clone()).unwrap();
    let token = sign(
        Header::default(),
        json!({"exp": now() + 1, "tenant": "shop"}),
        &EncodingKey::from_secret(SECRET),
    );
    let fractional = sign_text(&format!(r#"{{"exp":{}.0,"tenant":"shop"}}"#, now() + 1));
    for token in [&token, &fractional] {
        assert!(verifier.verify_access(token).is_ok());
        assert!(
            verifier.verify_access(token).is_ok(),
            "the second use is answered from memory"
        );
    }
    clock.advance(Duration::from_millis(2100));
    assert!(verifier.verify_access(&token).is_err(), "a remembered token expired");
    assert!(
        verifier.verify_access(&fractional).is_err(),
        "a remembered token expired"
    );
}

#[test]
fn numeric_dates_may_have_a_fraction_on_every_use() {
    let verifier = hs_verifier();
    let (later, earlier) = (now() + 600, now() - 10);
    for payload in [
        format!(r#"{{"exp":{later}.0,"tenant":"shop"}}"#),
        format!(r#"{{"exp":{later}.5,"tenant":"shop"}}"#),
        r#"{"exp":1e10,"tenant":"shop"}"#.to_string(),
        format!(r#"{{"exp":{later},"nbf":{earlier}.25,"iat":{earlier}.75,"tenant":"shop"}}"#),
    ] {
        let token = sign_text(&payload);
        for use_number in 1..=3 {
            let verified = verifier.verify_access(&token);
            assert!(verified.is_ok(), "{payload}, use {use_number}: {verified:?}");
        }
    }
    let expired = sign_text(&format!(r#"{{"exp":{}.5,"tenant":"shop"}}"#, now() - 5));
    for _ in 1..=2 {
        assert!(verifier.verify_access(&expired).is_err());
    }
    let not_yet = sign_text(&format!(r#"{{"exp":{later},"nbf":{}.5,"tenant":"shop"}}"#, now() + 30));
    assert!(verifier.verify_access(&not_yet).is_err());
}

#[test]
fn numeric_dates_are_read_in_milliseconds_saturating() {
    assert_eq!(numeric_date_millis(&json!(1_796_037_307)), Some(1_796_037_307_000));
    assert_eq!(numeric_date_millis(&json!(1_796_037_307.5)), Some(1_796_037_307_500));
    assert_eq!(numeric_date_millis(&json!(1e10)), Some(10_000_000_000_000));
    assert_eq!(numeric_date_millis(&json!(u64::MAX)), Some(i64::MAX));
    assert_eq!(numeric_date_millis(&json!(1e300)), Some(i64::MAX));
    assert_eq!(numeric_date_millis(&json!(-1e300)), Some(i64::MIN));
    assert_eq!(numeric_date_millis(&json!("1796037307")), None);
}

#[test]
fn scopes_are_separated_by_ascii_spaces_only() {
    let verifier = hs_verifier();
    let claims_of = |scope: &str| {
        let token = sign(
            Header::default(),
            json!({"exp": now() + 60, "tenant": "shop", "scope": scope}),
            &EncodingKey::from_secret(SECRET),
        );
        verifier.verify_access(&token).unwrap()
    };
    for separator in ["\u{a0}", "\t", "\n", "\u{2003}", "\u{3000}", "\u{85}"] {
        let claims = claims_of(&format!("openid{separator}session_context.context_manage"));
        assert!(!claims.may_manage(), "{separator:?} separated a scope");
        let claims = claims_of(&format!("openid{separator}tenant=other"));
        assert!(!claims.is_for_tenant("other"), "{separator:?} separated a tenant entry");
    }
    let spaced = claims_of("  openid   session_context.context_manage tenant=other ");
    assert!(spaced.may_manage() && spaced.is_for_tenant("other"));
    assert_eq!(spaced.scopes, ["openid", "session_context.context_manage"]);
}
