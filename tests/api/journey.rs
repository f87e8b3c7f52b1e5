//! The shopper's journey, on memory and SQLite: sessions that live as long as they are used (reads
//! included) within the anonymous cap, customer sessions' own idle timeout, login adopting the
//! anonymous session (exactly once under concurrent first requests), sessions created on first
//! use, the storefront's logout and conditional GETs.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use session_context::domain::Lifetime;
use session_context::service::Policy;

use crate::common::*;

const MINUTE: Duration = Duration::from_secs(60);

fn ms(duration: Duration) -> i64 {
    duration.as_millis() as i64
}

/// A storefront token with exactly these claims (and the test tenant), signed with the key.
fn storefront_token(claims: Value) -> String {
    let mut claims = claims;
    claims["tenant"] = json!(TENANT);
    claims["exp"] = json!(4_102_444_800i64); // 2100
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("the test secret signs")
}

async fn me(app: &TestApp, method: Method, token: &str, body: Option<Value>) -> Reply {
    app.call(method, &me_path(""), Some(token), body).await
}

async fn anonymous_visit(app: &TestApp, id: &str) {
    let created = app
        .call(
            Method::PATCH,
            &me_path("?upsert=true"),
            Some(&anonymous(id)),
            Some(json!({"currency": "EUR"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
}

/// Creates session `id` for `customer` through the management API (with its saas-token).
async fn create_for_customer(app: &TestApp, id: &str, customer: &str) {
    let put = axum::http::Request::builder()
        .method(Method::PUT)
        .uri(context_path(id, "?upsert=true"))
        .header("authorization", format!("Bearer {}", manager()))
        .header("saas-token", saas(customer))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(json!({"customerId": customer}).to_string()))
        .unwrap();
    let reply = app.send(put).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
}

async fn the_anonymous_cap_ends_a_session_however_much_it_is_used(backend: Backend) {
    let policy = Policy::with_lifetime(Lifetime {
        anonymous_ttl: Some(ms(60 * MINUTE)),
        anonymous_max_age: Some(ms(120 * MINUTE)),
        customer_ttl: None,
    });
    let app = TestApp::new(backend).await.with_policy(policy);
    anonymous_visit(&app, "busy").await;
    let token = anonymous("busy");
    // Used every 35 minutes, it outlives its idle timeout again and again...
    for _ in 0..3 {
        app.clock.advance(35 * MINUTE);
        let read = me(&app, Method::GET, &token, None).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    }
    // ...but not its cap, two hours after creation.
    app.clock.advance(15 * MINUTE + Duration::from_millis(1));
    me(&app, Method::GET, &token, None)
        .await
        .assert_error(404, "resource_not_found");
}

async fn customer_sessions_idle_out_only_with_a_customer_ttl(backend: Backend) {
    let app = TestApp::new(backend).await;
    create_for_customer(&app, "cust", "C1").await;
    let token = customer("cust", "C1");
    app.clock.advance(10 * TTL);
    assert_eq!(
        me(&app, Method::GET, &token, None).await.status,
        StatusCode::OK,
        "never, by default"
    );

    let policy = Policy::with_lifetime(Lifetime {
        customer_ttl: Some(ms(30 * MINUTE)),
        ..test_policy().tenants.default.lifetime
    });
    let app = app.with_policy(policy);
    // A write under the new policy starts the customer's idle timeout.
    let post = app
        .call(
            Method::POST,
            &me_path("/attributes"),
            Some(&token),
            Some(json!({"key": "k", "value": 1})),
        )
        .await;
    assert_eq!(post.status, StatusCode::CREATED, "{}", post.text);
    app.clock.advance(20 * MINUTE);
    assert_eq!(
        me(&app, Method::GET, &token, None).await.status,
        StatusCode::OK,
        "and extends it"
    );
    app.clock.advance(29 * MINUTE);
    assert_eq!(me(&app, Method::GET, &token, None).await.status, StatusCode::OK);
    app.clock.advance(31 * MINUTE);
    me(&app, Method::GET, &token, None)
        .await
        .assert_error(404, "resource_not_found");
}

async fn login_adopts_the_anonymous_session(backend: Backend) {
    let app = TestApp::new(backend).await;
    anonymous_visit(&app, "s1").await;
    let before = me(&app, Method::GET, &anonymous("s1"), None).await;
    assert_eq!(before.version(), 1);

    let shopper = customer("s1", "C1");
    let adopted = me(&app, Method::GET, &shopper, None).await;
    assert_eq!(adopted.status, StatusCode::OK, "{}", adopted.text);
    assert_eq!(adopted.json["customerId"], json!("C1"));
    assert_eq!(adopted.json["currency"], json!("EUR"), "the cart and choices stay");
    assert_eq!(adopted.version(), 2, "adoption is a change");
    assert_eq!(adopted.header("etag"), Some("\"2\""));
    assert_eq!(app.read("s1").await.json["customerId"], json!("C1"));

    // Now it is the customer's: the anonymous token is out, another customer too.
    me(&app, Method::GET, &anonymous("s1"), None)
        .await
        .assert_error(403, "forbidden");
    me(&app, Method::GET, &customer("s1", "C2"), None)
        .await
        .assert_error(403, "forbidden");
    // A write checked against the anonymous version is refused with the current one.
    let stale = me(
        &app,
        Method::PATCH,
        &shopper,
        Some(json!({"currency": "USD", "metadata": {"version": 1}})),
    )
    .await;
    stale.assert_error(409, "conflict");
    assert_eq!(stale.json["currentVersion"], json!(2));
    // The anonymous expiry is gone.
    app.clock.advance(5 * TTL);
    assert_eq!(
        me(&app, Method::GET, &shopper, None).await.version(),
        2,
        "read again, not adopted again"
    );
}

async fn login_on_a_write_adopts_first_then_writes(backend: Backend) {
    let app = TestApp::new(backend).await;
    anonymous_visit(&app, "s1").await;
    let shopper = customer("s1", "C1");
    let post = app
        .call(
            Method::POST,
            &me_path("/attributes"),
            Some(&shopper),
            Some(json!({"key": "wishlist", "value": [1]})),
        )
        .await;
    assert_eq!(post.status, StatusCode::CREATED, "{}", post.text);
    assert_eq!(post.header("etag"), Some("\"3\""), "adopted at 2, then changed at 3");
    let read = app.read("s1").await;
    assert_eq!(read.json["customerId"], json!("C1"));
    assert_eq!(read.json["context"]["wishlist"], json!([1]));
}

async fn concurrent_first_requests_adopt_exactly_once(backend: Backend) {
    let app = Arc::new(TestApp::new(backend).await);
    anonymous_visit(&app, "race").await;
    let shopper = customer("race", "C1");
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..24 {
        let app = Arc::clone(&app);
        let shopper = shopper.clone();
        requests.spawn(async move {
            match i % 3 {
                0 => me(&app, Method::GET, &shopper, None).await,
                1 => {
                    let body = json!({"key": format!("k{i}"), "value": i});
                    app.call(Method::POST, &me_path("/attributes"), Some(&shopper), Some(body))
                        .await
                }
                _ => {
                    app.call(Method::DELETE, &me_path("/attributes/none"), Some(&shopper), None)
                        .await
                }
            }
        });
    }
    for reply in requests.join_all().await {
        assert!(reply.status.is_success(), "{}: {}", reply.status, reply.text);
    }
    let read = app.read("race").await;
    assert_eq!(read.json["customerId"], json!("C1"));
    // One adoption and the eight attribute writes, nothing else: every change bumps by one.
    assert_eq!(read.version(), 1 + 1 + 8, "{}", read.text);
    assert_eq!(read.json["context"].as_object().unwrap().len(), 8);
}

async fn a_session_younger_than_the_login_is_not_adopted(backend: Backend) {
    let app = TestApp::new(backend).await;
    anonymous_visit(&app, "late").await; // created at the test clock's start
    let created = START / 1000;
    let too_old = storefront_token(json!({"sessionId": "late", "customerId": "C1", "iat": created - 61}));
    me(&app, Method::GET, &too_old, None)
        .await
        .assert_error(403, "forbidden");
    assert!(app.read("late").await.json.get("customerId").is_none(), "not adopted");
    let within_skew = storefront_token(json!({"sessionId": "late", "customerId": "C1", "iat": created - 59}));
    let adopted = me(&app, Method::GET, &within_skew, None).await;
    assert_eq!(adopted.status, StatusCode::OK, "{}", adopted.text);
    assert_eq!(adopted.json["customerId"], json!("C1"));
}

async fn put_with_a_customer_and_its_saas_token_adopts(backend: Backend) {
    let app = TestApp::new(backend).await;
    anonymous_visit(&app, "s1").await;
    let put = axum::http::Request::builder()
        .method(Method::PUT)
        .uri(context_path("s1", ""))
        .header("authorization", format!("Bearer {}", manager()))
        .header("saas-token", saas("C1"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            json!({"customerId": "C1", "metadata": {"version": 1}}).to_string(),
        ))
        .unwrap();
    let reply = app.send(put).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    app.clock.advance(5 * TTL);
    let read = me(&app, Method::GET, &customer("s1", "C1"), None).await;
    assert_eq!(
        read.version(),
        2,
        "the customer's session no longer expires: {}",
        read.text
    );
    assert_eq!(read.json["customerId"], json!("C1"));
}

async fn first_use_creates_the_session_from_the_token(backend: Backend) {
    let app = TestApp::new(backend).await;
    let token = storefront_token(json!({
        "sessionId": "fresh", "customerId": "C7", "iat": START / 1000,
        "siteCode": "main", "currency": "EUR", "language": "de_DE", "targetLocation": "germany"
    }));
    me(&app, Method::GET, &token, None)
        .await
        .assert_error(404, "resource_not_found");
    let app = app.with_policy(Policy {
        create_on_first_use: true,
        ..test_policy()
    });
    let read = me(&app, Method::GET, &token, None).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!(read.version(), 1);
    assert_eq!(read.json["customerId"], json!("C7"));
    assert_eq!(read.json["siteCode"], json!("main"));
    assert_eq!(read.json["currency"], json!("EUR"));
    assert_eq!(read.json["language"], json!("de_DE"));
    assert!(
        read.json.get("targetLocation").is_none(),
        "an invalid claim is left out"
    );
    // A write to a missing session too; management endpoints are not affected.
    let post = app
        .call(
            Method::POST,
            &me_path("/attributes"),
            Some(&anonymous("other")),
            Some(json!({"key": "k", "value": 1})),
        )
        .await;
    assert_eq!(post.status, StatusCode::CREATED, "{}", post.text);
    assert_eq!(app.read("other").await.version(), 2, "created at 1, then the attribute");
    app.read("nobody").await.assert_error(404, "resource_not_found");
}

async fn a_storefront_logs_out_with_delete_me(backend: Backend) {
    let app = TestApp::new(backend).await;
    anonymous_visit(&app, "anon").await;
    let token = anonymous("anon");
    assert_eq!(
        me(&app, Method::DELETE, &token, None).await.status,
        StatusCode::NO_CONTENT
    );
    me(&app, Method::DELETE, &token, None)
        .await
        .assert_error(404, "resource_not_found");
    app.read("anon").await.assert_error(404, "resource_not_found");

    anonymous_visit(&app, "cust").await;
    let shopper = customer("cust", "C1");
    assert_eq!(me(&app, Method::GET, &shopper, None).await.version(), 2, "adopted");
    for other in [anonymous("cust"), customer("cust", "C2")] {
        me(&app, Method::DELETE, &other, None)
            .await
            .assert_error(403, "forbidden");
    }
    assert_eq!(
        me(&app, Method::DELETE, &shopper, None).await.status,
        StatusCode::NO_CONTENT
    );
    app.read("cust").await.assert_error(404, "resource_not_found");
}

async fn a_get_with_a_matching_if_none_match_is_304(backend: Backend) {
    let app = TestApp::new(backend).await;
    anonymous_visit(&app, "s1").await;
    let get = |path: String, token: String, tag: &'static str| {
        let request = axum::http::Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("if-none-match", tag)
            .body(axum::body::Body::empty())
            .unwrap();
        app.send(request)
    };
    for (path, token) in [(context_path("s1", ""), manager()), (me_path(""), anonymous("s1"))] {
        for tag in ["\"1\"", "*", "W/\"1\"", "\"7\", \"1\""] {
            let reply = get(path.clone(), token.clone(), tag).await;
            assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{path} {tag}");
            assert_eq!(reply.header("etag"), Some("\"1\""));
            assert!(reply.text.is_empty(), "no body");
        }
        for tag in ["\"2\"", "nonsense"] {
            let reply = get(path.clone(), token.clone(), tag).await;
            assert_eq!(reply.status, StatusCode::OK, "{path} {tag}");
            assert_eq!(reply.version(), 1);
        }
    }
    // A missing session is still 404.
    get(context_path("none", ""), manager(), "*")
        .await
        .assert_error(404, "resource_not_found");
}

crate::on_memory_and_sqlite!(
    the_anonymous_cap_ends_a_session_however_much_it_is_used,
    customer_sessions_idle_out_only_with_a_customer_ttl,
    login_adopts_the_anonymous_session,
    login_on_a_write_adopts_first_then_writes,
    concurrent_first_requests_adopt_exactly_once,
    a_session_younger_than_the_login_is_not_adopted,
    put_with_a_customer_and_its_saas_token_adopts,
    first_use_creates_the_session_from_the_token,
    a_storefront_logs_out_with_delete_me,
    a_get_with_a_matching_if_none_match_is_304,
);
