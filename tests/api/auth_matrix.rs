//! The token matrix: every kind of bad or insufficient token, on every endpoint, answered
//! with 401 (plus `WWW-Authenticate: Bearer`) or 403, and nothing stored changes.

use crate::common::*;
use axum::http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use session_context::auth::mint::TokenSpec;
use std::time::Duration;

/// Every endpoint that needs a token, with a body that would succeed.
fn endpoints() -> Vec<(Method, String, Option<Value>, bool)> {
    let manage = |s: &str| context_path("s1", s);
    let attr = json!({"key": "k", "value": 1});
    let version = json!({"metadata": {"version": 1}});
    vec![
        (Method::GET, manage(""), None, true),
        (Method::PUT, manage(""), Some(version.clone()), true),
        (Method::POST, manage("/attributes"), Some(attr.clone()), true),
        (Method::DELETE, manage("/attributes/k"), None, true),
        (Method::DELETE, manage(""), None, true),
        (Method::GET, me_path(""), None, false),
        (Method::PATCH, me_path(""), Some(version), false),
        (Method::POST, me_path("/attributes"), Some(attr), false),
        (Method::DELETE, me_path("/attributes/k"), None, false),
    ]
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn raw(claims: Value) -> String {
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

async fn app_with_session() -> TestApp {
    app_on(Backend::Memory).await
}

async fn app_on(backend: Backend) -> TestApp {
    let app = TestApp::new(backend).await;
    app.create("s1", json!({"context": {"k": 0}, "metadata": {"version": 1}}))
        .await;
    app
}

async fn assert_untouched(app: &TestApp) {
    let read = app.read("s1").await;
    assert_eq!(read.version(), 1);
    assert_eq!(read.json["context"], json!({"k": 0}));
}

/// Tokens that must be refused with 401, whatever they claim.
fn unauthenticated_tokens() -> Vec<(&'static str, Option<String>)> {
    let good = json!({"exp": now() + 600, "tenant": TENANT, "scope": MANAGE, "sessionId": "s1"});
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 5);
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let wrong_key = encode(&Header::default(), &good, &EncodingKey::from_secret(&[1u8; 40])).unwrap();
    let valid = raw(good.clone());
    let parts: Vec<&str> = valid.split('.').collect();
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    let tampered = {
        use base64::Engine;
        let mut claims = good.clone();
        claims["tenant"] = json!("other");
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{}.{}.{}", parts[0], payload, parts[2])
    };
    let rsa = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa_private.pem")).unwrap();
    let rs256 = encode(
        &Header::new(Algorithm::RS256),
        &good,
        &EncodingKey::from_rsa_pem(&rsa).unwrap(),
    )
    .unwrap();
    vec![
        ("no token", None),
        ("malformed", Some("not-a-jwt".into())),
        ("wrong key", Some(wrong_key)),
        ("alg none", Some(alg_none)),
        ("expired", Some(raw(expired))),
        ("no exp", Some(raw(no_exp))),
        ("tampered payload", Some(tampered)),
        ("another algorithm family", Some(rs256)),
    ]
}

#[tokio::test]
async fn bad_tokens_are_401_with_a_bearer_challenge_on_every_endpoint() {
    let app = app_with_session().await;
    for (name, token) in unauthenticated_tokens() {
        for (method, path, body, _) in endpoints() {
            let reply = app.call(method.clone(), &path, token.as_deref(), body).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{name}: {method} {path}: {}",
                reply.text
            );
            reply.assert_error(401, "unauthorized");
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{name}");
            assert!(!reply.text.contains("InvalidSignature") && !reply.text.contains("ExpiredSignature"));
        }
    }
    assert_untouched(&app).await;
}

#[tokio::test]
async fn a_basic_or_empty_authorization_header_is_401() {
    let app = app_with_session().await;
    for header in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "token abc"] {
        let request = axum::http::Request::builder()
            .uri(context_path("s1", ""))
            .header("authorization", header)
            .body(axum::body::Body::empty())
            .unwrap();
        app.send(request).await.assert_error(401, "unauthorized");
    }
}

/// On memory and SQLite: the tenant is part of every key, and the token's tenant must be the path's.
async fn tokens_for_another_tenant_are_403_on_every_endpoint(backend: Backend) {
    let app = app_on(backend).await;
    let other = sign(TokenSpec {
        tenant: Some("other".into()),
        scope: Some(MANAGE.into()),
        session_id: Some("s1".into()),
        ttl: Duration::from_secs(600),
        ..Default::default()
    });
    for (method, path, body, _) in endpoints() {
        app.call(method, &path, Some(&other), body)
            .await
            .assert_error(403, "forbidden");
    }
    assert_untouched(&app).await;
}

#[tokio::test]
async fn storefront_tokens_are_403_on_management_endpoints() {
    let app = app_with_session().await;
    for token in [anonymous("s1"), customer("s1", "C1")] {
        for (method, path, body, management) in endpoints() {
            if management {
                app.call(method, &path, Some(&token), body)
                    .await
                    .assert_error(403, "forbidden");
            }
        }
    }
    let no_scope = sign(TokenSpec {
        tenant: Some(TENANT.into()),
        scope: Some("cart.cart_manage".into()),
        ttl: Duration::from_secs(600),
        ..Default::default()
    });
    app.call(Method::GET, &context_path("s1", ""), Some(&no_scope), None)
        .await
        .assert_error(403, "forbidden");
    assert_untouched(&app).await;
}

#[tokio::test]
async fn tokens_without_a_session_claim_are_403_on_me_endpoints() {
    let app = app_with_session().await;
    let bad_session = sign(TokenSpec {
        tenant: Some(TENANT.into()),
        session_id: Some("has space".into()),
        ttl: Duration::from_secs(600),
        ..Default::default()
    });
    for token in [manager(), bad_session] {
        for (method, path, body, management) in endpoints() {
            if !management {
                app.call(method, &path, Some(&token), body)
                    .await
                    .assert_error(403, "forbidden");
            }
        }
    }
    assert_untouched(&app).await;
}

#[tokio::test]
async fn emporix_style_tenant_scope_and_scope_spelling_are_accepted() {
    let app = app_with_session().await;
    let emporix = raw(json!({"exp": now() + 600, "scope": format!("tenant={TENANT} sessioncontext.context_manage")}));
    let reply = app
        .call(Method::GET, &context_path("s1", ""), Some(&emporix), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

#[tokio::test]
async fn claim_names_are_configurable() {
    use session_context::auth::{AuthSettings, ClaimNames, KeySource, Verifier};
    let verifier = Verifier::new(&AuthSettings {
        access: KeySource::Secret(SECRET.to_vec()),
        saas: None,
        issuer: None,
        audience: None,
        claims: ClaimNames {
            tenant: "org".into(),
            scope: "perms".into(),
            session_id: "sid".into(),
            customer_id: "uid".into(),
        },
    })
    .unwrap();
    let claims = verifier
        .verify_access(&raw(
            json!({"exp": now() + 60, "org": "shop", "perms": MANAGE, "sid": "s9", "uid": "C3"}),
        ))
        .unwrap();
    assert!(claims.is_for_tenant("shop") && claims.may_manage());
    assert_eq!(claims.session_id.as_deref(), Some("s9"));
    assert_eq!(claims.customer_id.as_deref(), Some("C3"));
}

on_memory_and_sqlite!(tokens_for_another_tenant_are_403_on_every_endpoint);

/// A management PUT on customer session `s1` (customer C1) of the test tenant, with `saas_token`.
fn put_with_saas(saas_token: &str, body: Value) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::builder()
        .method(Method::PUT)
        .uri(context_path("s1", ""))
        .header("authorization", format!("Bearer {}", manager()))
        .header("content-type", "application/json")
        .header("saas-token", saas_token)
        .body(axum::body::Body::from(body.to_string()))
        .unwrap()
}

/// Claims signed with the saas-token key. With the default configuration saas-tokens and
/// access tokens share one key, so whatever an access token claims reaches the saas-token
/// checks; signing with the saas key here puts the test app in that position.
fn saas_signed(claims: Value) -> String {
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SAAS_SECRET)).unwrap()
}

/// An app holding customer session `s1` of C1 at version 2.
async fn app_with_a_customer_session() -> TestApp {
    let app = app_with_session().await;
    let reply = app
        .send(put_with_saas(
            &saas("C1"),
            json!({"customerId": "C1", "metadata": {"version": 1}}),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    app
}

async fn assert_customer_session_untouched(app: &TestApp) {
    let read = app.read("s1").await;
    assert_eq!(read.version(), 2, "{}", read.text);
    assert_eq!(read.json["customerId"], json!("C1"));
    assert!(read.json.get("cartId").is_none(), "{}", read.text);
}

#[tokio::test]
async fn a_saas_token_for_another_tenant_is_403() {
    let app = app_with_a_customer_session().await;
    let change = json!({"cartId": "evil", "metadata": {"version": 2}});
    let other_tenant = [
        json!({"exp": now() + 600, "sub": "C1", "tenant": "globex"}),
        json!({"exp": now() + 600, "sub": "C1", "scope": "tenant=globex"}),
        json!({"exp": now() + 600, "sub": "C1", "scope": ["openid", "tenant=globex"]}),
        // naming the path's tenant beside another one is still naming another one
        json!({"exp": now() + 600, "sub": "C1", "tenant": TENANT, "scope": "tenant=globex"}),
    ];
    for claims in other_tenant {
        let token = saas_signed(claims);
        app.send(put_with_saas(&token, change.clone()))
            .await
            .assert_error(403, "forbidden");
        let delete = axum::http::Request::builder()
            .method(Method::DELETE)
            .uri(context_path("s1", ""))
            .header("authorization", format!("Bearer {}", manager()))
            .header("saas-token", &token)
            .body(axum::body::Body::empty())
            .unwrap();
        app.send(delete).await.assert_error(403, "forbidden");
    }
    assert_customer_session_untouched(&app).await;
}

#[tokio::test]
async fn access_tokens_are_not_saas_tokens() {
    let app = app_with_a_customer_session().await;
    let change = json!({"cartId": "evil", "metadata": {"version": 2}});
    let access_tokens = [
        (
            "anonymous",
            json!({"exp": now() + 600, "sub": "C1", "tenant": TENANT, "sessionId": "s9"}),
        ),
        (
            "customer",
            json!({"exp": now() + 600, "sub": "C1", "tenant": TENANT, "sessionId": "s1", "customerId": "C1"}),
        ),
        (
            "management",
            json!({"exp": now() + 600, "sub": "C1", "tenant": TENANT, "scope": MANAGE}),
        ),
        (
            "management, Emporix spelling",
            json!({"exp": now() + 600, "sub": "C1", "scope": "sessioncontext.context_manage"}),
        ),
        (
            "management, no tenant",
            json!({"exp": now() + 600, "sub": "C1", "scope": [MANAGE]}),
        ),
    ];
    for (name, claims) in access_tokens {
        let reply = app.send(put_with_saas(&saas_signed(claims), change.clone())).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}: {}", reply.text);
        reply.assert_error(401, "unauthorized");
    }
    assert_customer_session_untouched(&app).await;
}

#[tokio::test]
async fn a_saas_token_for_the_paths_tenant_still_works() {
    let app = app_with_a_customer_session().await;
    let tokens = [
        json!({"exp": now() + 600, "sub": "C1"}),
        json!({"exp": now() + 600, "sub": "C1", "tenant": TENANT}),
        json!({"exp": now() + 600, "sub": "C1", "scope": format!("openid tenant={TENANT}")}),
    ];
    for (version, claims) in (2..).zip(tokens) {
        let body = json!({"cartId": format!("c{version}"), "metadata": {"version": version}});
        let reply = app.send(put_with_saas(&saas_signed(claims), body)).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    }
    assert_eq!(app.read("s1").await.version(), 5);
}

/// A token whose payload is `payload` exactly as written (numbers keep their form: `1e10`,
/// `5.0`), signed with HS256 and the access-token secret.
fn sign_text(payload: &str) -> String {
    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let signed = format!("{}.{}", b64(r#"{"alg":"HS256","typ":"JWT"}"#), b64(payload));
    let signature =
        jsonwebtoken::crypto::sign(signed.as_bytes(), &EncodingKey::from_secret(SECRET), Algorithm::HS256).unwrap();
    format!("{signed}.{signature}")
}

#[tokio::test]
async fn an_exp_with_a_fraction_works_on_every_use_until_it_passes() {
    let app = app_with_session().await;
    let later = now() + 600;
    for exp in [format!("{later}.0"), format!("{later}.5"), "1e10".to_string()] {
        let token = sign_text(&format!(r#"{{"exp":{exp},"tenant":"{TENANT}","scope":"{MANAGE}"}}"#));
        for use_number in 1..=3 {
            let reply = app.call(Method::GET, &context_path("s1", ""), Some(&token), None).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "exp {exp}, use {use_number}: {}",
                reply.text
            );
        }
    }
    let expired = sign_text(&format!(
        r#"{{"exp":{}.5,"tenant":"{TENANT}","scope":"{MANAGE}"}}"#,
        now() - 5
    ));
    for _ in 1..=2 {
        app.call(Method::GET, &context_path("s1", ""), Some(&expired), None)
            .await
            .assert_error(401, "unauthorized");
    }
}

#[tokio::test]
async fn scopes_joined_by_other_whitespace_grant_nothing() {
    let app = app_with_session().await;
    for separator in ["\u{a0}", "\t", "\u{2003}"] {
        let token = raw(json!({"exp": now() + 600, "tenant": TENANT, "scope": format!("openid{separator}{MANAGE}")}));
        for (method, path, body, management) in endpoints() {
            if management {
                app.call(method, &path, Some(&token), body)
                    .await
                    .assert_error(403, "forbidden");
            }
        }
    }
    assert_untouched(&app).await;
}
