//! The tenant policy through the router, on every store: size and attribute limits for every
//! token, attributes a shopper may not write or see, allowed values, per-tenant tables. The
//! rules are the domain's (`domain::policy`, tested there without a store); these tests show
//! that every endpoint holds them and that a refused change stores nothing.

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use session_context::domain::policy::{AllowedValues, Patterns, TenantPolicy};
use session_context::service::Policy;

use crate::common::*;

fn policy(f: impl FnOnce(&mut TenantPolicy)) -> Policy {
    let mut tenant = test_policy().tenants.default;
    f(&mut tenant);
    Policy::uniform(tenant)
}

async fn post_me(app: &TestApp, token: &str, key: &str, value: Value) -> Reply {
    app.call(
        Method::POST,
        &me_path("/attributes"),
        Some(token),
        Some(json!({"key": key, "value": value})),
    )
    .await
}

async fn post_managed(app: &TestApp, id: &str, key: &str, value: Value) -> Reply {
    app.call(
        Method::POST,
        &context_path(id, "/attributes"),
        Some(&manager()),
        Some(json!({"key": key, "value": value})),
    )
    .await
}

async fn patch_me(app: &TestApp, token: &str, body: Value) -> Reply {
    app.call(Method::PATCH, &me_path(""), Some(token), Some(body)).await
}

fn assert_status(reply: &Reply, status: u16) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
}

/// The case: with one anonymous token, 60 KB attributes again and again. The first
/// fits the default 64 KiB; every later one is refused with 413 and nothing past the limit is
/// ever stored, through `/me` and the management API alike.
async fn a_session_never_grows_past_the_size_limit(backend: Backend) {
    let app = TestApp::new(backend).await.with_policy(test_policy());
    let token = anonymous("big");
    app.call(Method::PATCH, &me_path("?upsert=true"), Some(&token), Some(json!({})))
        .await;
    let chunk = "x".repeat(60_000);
    assert_status(&post_me(&app, &token, "a0", json!(chunk)).await, 201);
    for i in 1..20 {
        let refused = post_me(&app, &token, &format!("a{i}"), json!(chunk)).await;
        refused.assert_error(413, "session_too_large");
        assert!(
            refused.json["message"].as_str().unwrap().contains("65536"),
            "{}",
            refused.text
        );
    }
    post_managed(&app, "big", "m", json!(chunk))
        .await
        .assert_error(413, "session_too_large");
    // Nothing of it was stored: one attribute, version 2, under the limit.
    let stored = app.read("big").await;
    assert_eq!(stored.version(), 2, "{}", stored.text);
    assert!(stored.text.len() <= 65_536, "{} bytes stored", stored.text.len());
    assert_eq!(stored.json["context"].as_object().unwrap().len(), 1);
    // The limit is on the session as stored: a 30 KB attribute still fits next to nothing.
    let small = app
        .call(Method::DELETE, &me_path("/attributes/a0"), Some(&token), None)
        .await;
    assert_status(&small, 204);
    assert_status(&post_me(&app, &token, "half", json!("y".repeat(30_000))).await, 201);
}

/// PUT and PATCH are held to the limit too (under a limit below the body limit, since a body
/// at the default limit cannot make a session larger than it).
async fn put_and_patch_are_held_to_the_size_limit(backend: Backend) {
    let app = TestApp::new(backend)
        .await
        .with_policy(policy(|p| p.max_session_bytes = 20_000));
    let chunk = "x".repeat(12_000);
    app.create("s1", json!({"context": {"a": chunk}})).await;
    let put = app
        .call(
            Method::PUT,
            &context_path("s1", ""),
            Some(&manager()),
            Some(json!({"context": {"a": chunk, "b": chunk}, "metadata": {"version": 1}})),
        )
        .await;
    put.assert_error(413, "session_too_large");
    let created = app
        .call(
            Method::PUT,
            &context_path("s2", "?upsert=true"),
            Some(&manager()),
            Some(json!({"context": {"a": chunk, "b": chunk}})),
        )
        .await;
    created.assert_error(413, "session_too_large");
    patch_me(
        &app,
        &anonymous("s1"),
        json!({"context": {"b": chunk}, "metadata": {"version": 1}}),
    )
    .await
    .assert_error(413, "session_too_large");
    assert_eq!(app.read("s1").await.version(), 1, "nothing was stored");
    app.read("s2").await.assert_error(404, "resource_not_found");
}

/// A limit lowered under stored sessions: a change that makes one smaller is allowed, one that
/// does not is refused.
async fn a_session_over_a_lowered_limit_can_only_shrink(backend: Backend) {
    let app = TestApp::new(backend).await.with_policy(test_policy());
    app.create(
        "s1",
        json!({"context": {"a": "x".repeat(3_000), "b": "y".repeat(3_000), "c": 1}}),
    )
    .await;
    let app = app.with_policy(policy(|p| {
        p.max_session_bytes = 2_000;
        p.max_attributes = 2;
    }));
    // Over both: a change that shrinks neither is refused (the attribute count is checked first).
    post_managed(&app, "s1", "c", json!(2))
        .await
        .assert_error(400, "validation_error");
    // One that makes it smaller in both measures is allowed.
    let smaller = app
        .call(
            Method::DELETE,
            &context_path("s1", "/attributes/a"),
            Some(&manager()),
            None,
        )
        .await;
    assert_status(&smaller, 204);
    assert_eq!(app.read("s1").await.version(), 2);
    // Still over the byte limit: a change that does not shrink it is refused.
    post_managed(&app, "s1", "c", json!(3))
        .await
        .assert_error(413, "session_too_large");
    assert_eq!(app.read("s1").await.version(), 2);
}

async fn too_many_attributes_are_refused_on_every_endpoint(backend: Backend) {
    let app = TestApp::new(backend)
        .await
        .with_policy(policy(|p| p.max_attributes = 3));
    let token = anonymous("many");
    let created = app
        .call(
            Method::PATCH,
            &me_path("?upsert=true"),
            Some(&token),
            Some(json!({"context": {"a": 1, "b": 2, "c": 3}})),
        )
        .await;
    assert_status(&created, 201);
    let refusals = [
        post_me(&app, &token, "d", json!(4)).await,
        post_managed(&app, "many", "d", json!(4)).await,
        patch_me(&app, &token, json!({"context": {"d": 4}, "metadata": {"version": 1}})).await,
        app.call(
            Method::PUT,
            &context_path("many", ""),
            Some(&manager()),
            Some(json!({"context": {"a": 1, "b": 2, "c": 3, "d": 4}, "metadata": {"version": 1}})),
        )
        .await,
        // Creating a session with too many is refused too.
        app.call(
            Method::PUT,
            &context_path("other", "?upsert=true"),
            Some(&manager()),
            Some(json!({"context": {"a": 1, "b": 2, "c": 3, "d": 4}})),
        )
        .await,
    ];
    for refused in refusals {
        refused.assert_error(400, "validation_error");
        assert_eq!(
            refused.json["details"][0]["type"],
            json!("too_many_attributes"),
            "{}",
            refused.text
        );
        assert_eq!(refused.json["details"][0]["field"], json!("context"));
    }
    assert_eq!(app.read("many").await.version(), 1, "nothing was stored");
    app.read("other").await.assert_error(404, "resource_not_found");
    // Overwriting an existing key does not add one.
    assert_status(&post_me(&app, &token, "a", json!(10)).await, 201);
}

async fn shoppers_cannot_change_protected_attributes(backend: Backend) {
    let app = TestApp::new(backend).await.with_policy(policy(|p| {
        p.protected = Patterns::new(&["b2b.*", "priceList"]).unwrap()
    }));
    // The shop writes them through the management API.
    app.create("s1", json!({"context": {"priceList": "P1", "b2b.legalEntity": "LE1"}}))
        .await;
    let token = anonymous("s1");
    let refusals = [
        ("priceList", post_me(&app, &token, "priceList", json!("P2")).await),
        ("b2b.new", post_me(&app, &token, "b2b.new", json!(1)).await),
        (
            "b2b.legalEntity",
            app.call(
                Method::DELETE,
                &me_path("/attributes/b2b.legalEntity"),
                Some(&token),
                None,
            )
            .await,
        ),
        (
            "priceList",
            patch_me(
                &app,
                &token,
                json!({"context": {"priceList": "P0"}, "metadata": {"version": 1}}),
            )
            .await,
        ),
        (
            "priceList",
            patch_me(
                &app,
                &token,
                json!({"context": {"priceList": null}, "metadata": {"version": 1}}),
            )
            .await,
        ),
        // Clearing the whole context would remove them.
        (
            "b2b.legalEntity",
            patch_me(&app, &token, json!({"context": null, "metadata": {"version": 1}})).await,
        ),
    ];
    for (key, refused) in refusals {
        refused.assert_error(403, "forbidden");
        assert_eq!(
            refused.json["details"][0]["field"],
            json!(format!("context.{key}")),
            "{}",
            refused.text
        );
        assert_eq!(refused.json["details"][0]["type"], json!("protected"));
    }
    assert_eq!(app.read("s1").await.version(), 1, "nothing was stored");
    // What a storefront sends back unchanged is not a change: the whole object it read.
    let read = app.call(Method::GET, &me_path(""), Some(&token), None).await;
    let mut body = read.json.clone();
    body["currency"] = json!("EUR");
    body["context"]["colour"] = json!("red");
    assert_status(&patch_me(&app, &token, body).await, 204);
    // Deleting a protected key that is not there changes nothing: 204.
    let absent = app
        .call(Method::DELETE, &me_path("/attributes/b2b.absent"), Some(&token), None)
        .await;
    assert_status(&absent, 204);
    // The shop may change them.
    assert_status(&post_managed(&app, "s1", "priceList", json!("P3")).await, 204);
    let stored = app.read("s1").await;
    assert_eq!(stored.json["context"]["priceList"], json!("P3"));
    assert_eq!(stored.json["context"]["colour"], json!("red"));
}

async fn hidden_attributes_are_neither_seen_nor_written_by_shoppers(backend: Backend) {
    let app = TestApp::new(backend)
        .await
        .with_policy(policy(|p| p.hidden = Patterns::new(&["internal.*"]).unwrap()));
    app.create("s1", json!({"context": {"internal.risk": 9, "colour": "red"}}))
        .await;
    let token = anonymous("s1");
    let read = app.call(Method::GET, &me_path(""), Some(&token), None).await;
    assert_status(&read, 200);
    assert_eq!(read.json["context"], json!({"colour": "red"}), "{}", read.text);
    assert_eq!(read.header("etag"), Some("\"1\""), "the stored version");
    // The management API sees them.
    assert_eq!(app.read("s1").await.json["context"]["internal.risk"], json!(9));
    // A shopper naming one is refused, whether or not it is stored (the answer tells nothing).
    for key in ["internal.risk", "internal.absent"] {
        post_me(&app, &token, key, json!(9))
            .await
            .assert_error(403, "forbidden");
        app.call(
            Method::DELETE,
            &me_path(&format!("/attributes/{key}")),
            Some(&token),
            None,
        )
        .await
        .assert_error(403, "forbidden");
        patch_me(&app, &token, json!({"context": {key: 9}, "metadata": {"version": 1}}))
            .await
            .assert_error(403, "forbidden");
    }
    // Clearing the context clears what the shopper sees; the hidden attributes stay.
    assert_status(
        &patch_me(&app, &token, json!({"context": null, "metadata": {"version": 1}})).await,
        204,
    );
    let stored = app.read("s1").await;
    assert_eq!(stored.json["context"], json!({"internal.risk": 9}), "{}", stored.text);
    let seen = app.call(Method::GET, &me_path(""), Some(&token), None).await;
    assert_eq!(seen.json["context"], json!({}));
}

async fn values_outside_the_allowed_lists_are_refused(backend: Backend) {
    let app = TestApp::new(backend).await.with_policy(policy(|p| {
        p.allowed = AllowedValues {
            currency: vec!["EUR".into(), "CHF".into()],
            language: vec!["de".into(), "fr-CH".into()],
            ..AllowedValues::default()
        };
    }));
    let token = anonymous("s1");
    let created = app
        .call(
            Method::PATCH,
            &me_path("?upsert=true"),
            Some(&token),
            Some(json!({"currency": "CHF", "language": "fr_ch"})),
        )
        .await;
    assert_status(&created, 201);
    for (field, body) in [
        ("currency", json!({"currency": "USD", "metadata": {"version": 1}})),
        ("language", json!({"language": "en", "metadata": {"version": 1}})),
    ] {
        let refused = patch_me(&app, &token, body.clone()).await;
        refused.assert_error(400, "validation_error");
        assert_eq!(refused.json["details"][0]["field"], json!(field), "{}", refused.text);
        assert_eq!(refused.json["details"][0]["type"], json!("not_allowed"));
        let put = app
            .call(Method::PUT, &context_path("s1", ""), Some(&manager()), Some(body))
            .await;
        put.assert_error(400, "validation_error");
    }
    assert_eq!(app.read("s1").await.version(), 1, "nothing was stored");
    // Any site: its list is empty.
    assert_status(
        &patch_me(&app, &token, json!({"siteCode": "outlet", "metadata": {"version": 1}})).await,
        204,
    );
}

/// A `[tenants.<name>]` table: its own limits and patterns, the others keep the defaults.
async fn each_tenant_has_its_own_policy(backend: Backend) {
    let mut policies = test_policy();
    let mut strict = policies.tenants.default.clone();
    strict.max_attributes = 1;
    strict.protected = Patterns::new(&["*"]).unwrap();
    policies.tenants.tenants = HashMap::from([("strict".to_owned(), strict)]);
    let app = TestApp::new(backend).await.with_policy(policies);
    let strict_token = sign(session_context::auth::mint::TokenSpec {
        tenant: Some("strict".into()),
        session_id: Some("s1".into()),
        ttl: std::time::Duration::from_secs(600),
        ..Default::default()
    });
    let strict_path = "/session-context/strict/me/context";
    let created = app
        .call(
            Method::PATCH,
            &format!("{strict_path}?upsert=true"),
            Some(&strict_token),
            Some(json!({})),
        )
        .await;
    assert_status(&created, 201);
    let refused = app
        .call(
            Method::POST,
            &format!("{strict_path}/attributes"),
            Some(&strict_token),
            Some(json!({"key": "a", "value": 1})),
        )
        .await;
    refused.assert_error(403, "forbidden");
    // The test tenant keeps the defaults.
    let token = anonymous("s1");
    app.call(Method::PATCH, &me_path("?upsert=true"), Some(&token), Some(json!({})))
        .await;
    for key in ["a", "b"] {
        assert_status(&post_me(&app, &token, key, json!(1)).await, 201);
    }
    assert_eq!(app.read("s1").await.status, StatusCode::OK);
}

/// Login adoption is never refused for size: a PUT that sets the customer (with the
/// customer's saas-token) on an anonymous session just under the limit adopts it; one that also
/// changes something else is held to the limit.
async fn adoption_is_never_refused_for_size(backend: Backend) {
    let app = TestApp::new(backend)
        .await
        .with_policy(policy(|p| p.max_session_bytes = 1_024));
    let token = anonymous("near");
    let create = async |filler: usize| {
        let created = app
            .call(
                Method::PATCH,
                &me_path("?upsert=true"),
                Some(&token),
                Some(json!({"context": {"f": "x".repeat(filler)}})),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        app.read("near").await.text.len()
    };
    // Sized to 10 bytes under the limit (one try to measure the frame, one to fit).
    let frame = create(500).await - 500;
    app.call(Method::DELETE, &me_path(""), Some(&token), None).await;
    assert_eq!(create(1_024 - 10 - frame).await, 1_014);
    let adopt = |body: Value| {
        axum::http::Request::builder()
            .method(Method::PUT)
            .uri(context_path("near", ""))
            .header("authorization", format!("Bearer {}", manager()))
            .header("saas-token", saas("C87362407845"))
            .header("if-match", "*")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    };
    let grows_too = app
        .send(adopt(json!({"customerId": "C87362407845", "siteCode": "main"})))
        .await;
    grows_too.assert_error(413, "session_too_large");
    let adopted = app.send(adopt(json!({"customerId": "C87362407845"}))).await;
    assert_status(&adopted, 204);
    let stored = app.read("near").await;
    assert_eq!(stored.json["customerId"], json!("C87362407845"));
    assert!(stored.text.len() > 1_024, "past the limit by the customer id alone");
}

crate::on_every_backend!(
    a_session_never_grows_past_the_size_limit,
    a_session_over_a_lowered_limit_can_only_shrink,
    put_and_patch_are_held_to_the_size_limit,
    too_many_attributes_are_refused_on_every_endpoint,
    shoppers_cannot_change_protected_attributes,
    hidden_attributes_are_neither_seen_nor_written_by_shoppers,
    values_outside_the_allowed_lists_are_refused,
    each_tenant_has_its_own_policy,
    adoption_is_never_refused_for_size,
);
