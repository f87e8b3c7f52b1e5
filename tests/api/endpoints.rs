//! The HTTP suite: every row of the contract through the real router, in process, on the
//! memory store and SQLite (the stores themselves are the `stores` binary's), with a manual
//! clock for expiry.

use crate::common::*;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

const SID: &str = "62528895-b561-4518-bfdc-2cbf52a07845";

fn full_body(version: u64) -> Value {
    json!({
        "siteCode": "main", "currency": "EUR", "targetLocation": "DE", "language": "de",
        "cartId": "61079711ce0eb90861357045",
        "context": {"legalEntityId": "68cd05d71aeab17fc69f81b7", "geo": {"lat": 52.5}},
        "metadata": {"version": version}
    })
}

async fn get_returns_the_session_with_its_etag(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    let reply = app.read(SID).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("etag"), Some("\"1\""));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.json,
        json!({
            "sessionId": SID, "siteCode": "main", "currency": "EUR", "targetLocation": "DE",
            "language": "de", "cartId": "61079711ce0eb90861357045",
            "context": {"legalEntityId": "68cd05d71aeab17fc69f81b7", "geo": {"lat": 52.5}},
            "metadata": {"version": 1, "createdAt": "2026-02-04T16:30:04.047Z", "modifiedAt": "2026-02-04T16:30:04.047Z"}
        })
    );
}

async fn get_of_a_missing_session_is_404_naming_it(backend: Backend) {
    let app = TestApp::new(backend).await;
    let reply = app.read("missing-1").await;
    reply.assert_error(404, "resource_not_found");
    assert_eq!(reply.json["sessionId"], json!("missing-1"));
}

async fn put_with_upsert_creates_at_version_one(backend: Backend) {
    let app = TestApp::new(backend).await;
    let reply = app
        .call(
            Method::PUT,
            &context_path("new", "?upsert=true"),
            Some(&manager()),
            Some(json!({"metadata": {"version": 77}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.header("etag"), Some("\"1\""));
    let read = app.read("new").await;
    assert_eq!(
        read.json,
        json!({"sessionId": "new", "context": {}, "metadata": {
        "version": 1, "createdAt": "2026-02-04T16:30:04.047Z", "modifiedAt": "2026-02-04T16:30:04.047Z"}})
    );
}

async fn put_of_a_missing_session_without_upsert_is_404(backend: Backend) {
    let app = TestApp::new(backend).await;
    for suffix in ["", "?upsert=false"] {
        let reply = app
            .call(
                Method::PUT,
                &context_path("nope", suffix),
                Some(&manager()),
                Some(full_body(1)),
            )
            .await;
        reply.assert_error(404, "resource_not_found");
    }
    assert_eq!(app.read("nope").await.status, StatusCode::NOT_FOUND);
}

async fn put_with_the_current_version_updates_and_bumps_it(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    app.clock.advance(std::time::Duration::from_millis(1500));
    let reply = app
        .call(
            Method::PUT,
            &context_path(SID, ""),
            Some(&manager()),
            Some(json!({"currency": "USD", "metadata": {"version": 1}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    assert_eq!(reply.header("etag"), Some("\"2\""));
    let read = app.read(SID).await;
    assert_eq!(read.version(), 2);
    assert_eq!(read.json["currency"], json!("USD"));
    assert_eq!(read.json["siteCode"], json!("main"), "absent fields stay as stored");
    assert_eq!(
        read.json["context"]["geo"],
        json!({"lat": 52.5}),
        "absent context stays"
    );
    assert_eq!(read.json["metadata"]["createdAt"], json!("2026-02-04T16:30:04.047Z"));
    assert_eq!(read.json["metadata"]["modifiedAt"], json!("2026-02-04T16:30:05.547Z"));
}

async fn stale_version_is_rejected_with_409_and_changes_nothing(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    let before = app.read(SID).await;
    for stale in [0, 2, 99] {
        let reply = app
            .call(
                Method::PUT,
                &context_path(SID, ""),
                Some(&manager()),
                Some(json!({"currency": "USD", "metadata": {"version": stale}})),
            )
            .await;
        reply.assert_error(409, "conflict");
        assert_eq!(reply.json["currentVersion"], json!(1));
        assert_eq!(reply.json["sessionId"], json!(SID));
    }
    assert_eq!(app.read(SID).await.json, before.json);
}

async fn updating_without_a_version_is_400_but_creating_needs_none(backend: Backend) {
    let app = TestApp::new(backend).await;
    let manager = manager();
    let put = async |suffix: &str, body: Value| {
        app.call(Method::PUT, &context_path(SID, suffix), Some(&manager), Some(body))
            .await
    };
    put("", json!({"currency": "EUR"}))
        .await
        .assert_error(404, "resource_not_found");
    // Creating with upsert needs no version, nor metadata at all.
    let created = put("?upsert=true", json!({"currency": "EUR"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    for suffix in ["", "?upsert=true"] {
        let reply = put(suffix, json!({"currency": "USD"})).await;
        reply.assert_error(400, "validation_error");
        assert_eq!(reply.json["details"][0]["field"], json!("metadata.version"));
    }
    // The same on /me.
    let token = anonymous("s-me");
    let patch = async |body: Value| {
        app.call(Method::PATCH, &me_path("?upsert=true"), Some(&token), Some(body))
            .await
    };
    let created = patch(json!({"language": "de_DE"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let reply = patch(json!({"language": "en_US"})).await;
    reply.assert_error(400, "validation_error");
    assert_eq!(reply.json["details"][0]["field"], json!("metadata.version"));
    let me = app.call(Method::GET, &me_path(""), Some(&token), None).await;
    assert_eq!(
        me.json["language"],
        json!("de_DE"),
        "the underscore form is stored as sent"
    );
    assert_eq!(app.read(SID).await.json["currency"], json!("EUR"));
}

async fn put_null_removes_fields_and_context_replaces_the_map(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    let reply = app
        .call(
            Method::PUT,
            &context_path(SID, ""),
            Some(&manager()),
            Some(json!({"cartId": null, "language": null, "context": {"only": "this"}, "metadata": {"version": 1}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let read = app.read(SID).await.json;
    assert!(
        read.get("cartId").is_none(),
        "removed fields are left out, not null: {read}"
    );
    assert!(read.get("language").is_none());
    assert_eq!(read["currency"], json!("EUR"));
    assert_eq!(read["context"], json!({"only": "this"}));
}

async fn put_body_session_id_must_match_the_path(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    let ok = app
        .call(
            Method::PUT,
            &context_path(SID, ""),
            Some(&manager()),
            Some(json!({"sessionId": SID, "metadata": {"version": 1}})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    let bad = app
        .call(
            Method::PUT,
            &context_path(SID, ""),
            Some(&manager()),
            Some(json!({"sessionId": "other", "metadata": {"version": 2}})),
        )
        .await;
    bad.assert_error(400, "validation_error");
    assert_eq!(bad.json["details"][0]["field"], json!("sessionId"));
}

async fn put_ignores_timestamps_and_unknown_fields(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    let reply = app
        .call(
            Method::PUT,
            &context_path(SID, ""),
            Some(&manager()),
            Some(json!({"unknown": [1], "metadata": {"version": 1, "createdAt": "1999-01-01T00:00:00.000Z", "modifiedAt": "x"}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    let read = app.read(SID).await.json;
    assert_eq!(read["metadata"]["createdAt"], json!("2026-02-04T16:30:04.047Z"));
    assert!(read.get("unknown").is_none());
}

async fn upsert_accepts_only_true_or_false(backend: Backend) {
    let app = TestApp::new(backend).await;
    for bad in [
        "?upsert=yes",
        "?upsert=TRUE",
        "?upsert=",
        "?upsert=1",
        "?upsert=true&upsert=false",
    ] {
        let reply = app
            .call(
                Method::PUT,
                &context_path(SID, bad),
                Some(&manager()),
                Some(full_body(1)),
            )
            .await;
        reply.assert_error(400, "validation_error");
    }
}

async fn invalid_fields_are_named_in_details(backend: Backend) {
    let app = TestApp::new(backend).await;
    let body = json!({"currency": "eur", "targetLocation": "DEU", "language": "de DE", "siteCode": "x".repeat(257),
                      "context": {"": 1}, "metadata": {"version": 1}});
    let reply = app
        .call(
            Method::PUT,
            &context_path(SID, "?upsert=true"),
            Some(&manager()),
            Some(body),
        )
        .await;
    reply.assert_error(400, "validation_error");
    let fields: Vec<&str> = reply.json["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for field in ["currency", "targetLocation", "language", "siteCode", "context"] {
        assert!(fields.contains(&field), "{field} missing from {fields:?}");
    }
    assert_eq!(app.read(SID).await.status, StatusCode::NOT_FOUND, "nothing was stored");
}

async fn customer_sessions_need_the_customers_saas_token(backend: Backend) {
    let app = TestApp::new(backend).await;
    let put = |suffix: &'static str, saas_token: Option<String>, body: Value| {
        let mut builder = Request::builder()
            .method(Method::PUT)
            .uri(context_path(SID, suffix))
            .header("authorization", format!("Bearer {}", manager()))
            .header("content-type", "application/json");
        if let Some(token) = saas_token {
            builder = builder.header("saas-token", token);
        }
        builder.body(Body::from(body.to_string())).unwrap()
    };
    let create = json!({"customerId": "C1", "metadata": {"version": 1}});
    let missing = app.send(put("?upsert=true", None, create.clone())).await;
    missing.assert_error(401, "unauthorized");
    assert!(missing.header("www-authenticate").unwrap().starts_with("Bearer"));
    app.send(put("?upsert=true", Some("garbage".into()), create.clone()))
        .await
        .assert_error(401, "unauthorized");
    app.send(put("?upsert=true", Some(saas("C2")), create.clone()))
        .await
        .assert_error(403, "forbidden");
    // signed with the access-token secret instead of the saas secret
    app.send(put("?upsert=true", Some(manager()), create.clone()))
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(
        app.send(put("?upsert=true", Some(saas("C1")), create)).await.status,
        StatusCode::CREATED
    );
    // the stored customer needs its token for any later change
    let update = json!({"currency": "EUR", "metadata": {"version": 1}});
    app.send(put("", None, update.clone()))
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(
        app.send(put("", Some(saas("C1")), update)).await.status,
        StatusCode::NO_CONTENT
    );
    // changing the customer needs the new customer's token
    let switch = json!({"customerId": "C2", "metadata": {"version": 2}});
    app.send(put("", Some(saas("C1")), switch.clone()))
        .await
        .assert_error(403, "forbidden");
    assert_eq!(
        app.send(put("", Some(saas("C2")), switch)).await.status,
        StatusCode::NO_CONTENT
    );
    // removing the customer needs the stored customer's token
    let logout = json!({"customerId": null, "metadata": {"version": 3}});
    app.send(put("", Some(saas("C1")), logout.clone()))
        .await
        .assert_error(403, "forbidden");
    assert_eq!(
        app.send(put("", Some(saas("C2")), logout)).await.status,
        StatusCode::NO_CONTENT
    );
    // an anonymous session needs no saas-token
    let anonymous = json!({"siteCode": "main", "metadata": {"version": 4}});
    assert_eq!(app.send(put("", None, anonymous)).await.status, StatusCode::NO_CONTENT);
}

async fn if_match_stands_in_for_the_version(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    let put = |if_match: &str, body: Value| {
        Request::builder()
            .method(Method::PUT)
            .uri(context_path(SID, ""))
            .header("authorization", format!("Bearer {}", manager()))
            .header("content-type", "application/json")
            .header("if-match", if_match)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let ok = app.send(put("\"1\"", json!({"currency": "CHF"}))).await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{}", ok.text);
    assert_eq!(ok.header("etag"), Some("\"2\""));
    let stale = app.send(put("\"1\"", json!({"currency": "GBP"}))).await;
    stale.assert_error(412, "precondition_failed");
    assert_eq!(stale.json["currentVersion"], json!(2));
    // If-Match wins over the body's version
    let wins = app.send(put("\"2\"", json!({"metadata": {"version": 1}}))).await;
    assert_eq!(wins.status, StatusCode::NO_CONTENT, "{}", wins.text);
    app.send(put("two", json!({})))
        .await
        .assert_error(400, "validation_error");
    assert_eq!(
        app.send(put("*", json!({"currency": "JPY"}))).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.read(SID).await.json["currency"], json!("JPY"));
}

async fn patch_me_with_upsert_creates_the_tokens_session(backend: Backend) {
    let app = TestApp::new(backend).await;
    let token = customer("s-cust", "C42");
    let reply = app
        .call(
            Method::PATCH,
            &me_path("?upsert=true"),
            Some(&token),
            Some(json!({"currency": "EUR", "metadata": {"version": 1}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.header("etag"), Some("\"1\""));
    let me = app.call(Method::GET, &me_path(""), Some(&token), None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.header("etag"), Some("\"1\""));
    assert_eq!(me.json["sessionId"], json!("s-cust"));
    assert_eq!(me.json["customerId"], json!("C42"));
    assert_eq!(me.json["currency"], json!("EUR"));
}

async fn patch_me_applies_only_the_storefront_fields(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create("s1", full_body(1)).await;
    let read = app
        .call(Method::GET, &me_path(""), Some(&anonymous("s1")), None)
        .await
        .json;
    let mut body = read.clone();
    body["customerId"] = json!("C-evil");
    body["cartId"] = json!("other-cart");
    body["sessionId"] = json!("another-session");
    body["currency"] = json!("USD");
    body["unknownKey"] = json!(true);
    let reply = app
        .call(Method::PATCH, &me_path(""), Some(&anonymous("s1")), Some(body))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    let after = app.read("s1").await.json;
    assert_eq!(after["currency"], json!("USD"));
    assert!(after.get("customerId").is_none());
    assert_eq!(after["cartId"], read["cartId"]);
    assert_eq!(after["sessionId"], json!("s1"));
    assert_eq!(after["metadata"]["version"], json!(2));
}

async fn patch_me_merges_context_key_by_key(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create("s1", full_body(1)).await;
    let body = json!({"context": {"geo": null, "new": {"deep": [1]}}, "metadata": {"version": 1}});
    let reply = app
        .call(Method::PATCH, &me_path(""), Some(&anonymous("s1")), Some(body))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.read("s1").await.json["context"],
        json!({"legalEntityId": "68cd05d71aeab17fc69f81b7", "new": {"deep": [1]}})
    );
}

async fn patch_me_checks_versions_and_existence(backend: Backend) {
    let app = TestApp::new(backend).await;
    let token = anonymous("s1");
    app.call(
        Method::PATCH,
        &me_path(""),
        Some(&token),
        Some(json!({"metadata": {"version": 1}})),
    )
    .await
    .assert_error(404, "resource_not_found");
    app.create("s1", full_body(1)).await;
    let stale = app
        .call(
            Method::PATCH,
            &me_path(""),
            Some(&token),
            Some(json!({"metadata": {"version": 5}})),
        )
        .await;
    stale.assert_error(409, "conflict");
    assert_eq!(stale.json["currentVersion"], json!(1));
    assert_eq!(stale.json["sessionId"], json!("s1"));
    app.call(
        Method::PATCH,
        &me_path(""),
        Some(&token),
        Some(json!({"currency": "USD"})),
    )
    .await
    .assert_error(400, "validation_error");
    app.call(
        Method::PATCH,
        &me_path(""),
        Some(&token),
        Some(json!({"currency": "usd", "metadata": {"version": 1}})),
    )
    .await
    .assert_error(400, "validation_error");
    assert_eq!(app.read("s1").await.version(), 1);
}

async fn a_customer_session_is_closed_to_other_storefront_tokens(backend: Backend) {
    let app = TestApp::new(backend).await;
    let created = app
        .call(
            Method::PATCH,
            &me_path("?upsert=true"),
            Some(&customer("s1", "C1")),
            Some(json!({"metadata": {"version": 1}})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    for token in [customer("s1", "C2"), anonymous("s1")] {
        app.call(Method::GET, &me_path(""), Some(&token), None)
            .await
            .assert_error(403, "forbidden");
        app.call(
            Method::PATCH,
            &me_path(""),
            Some(&token),
            Some(json!({"metadata": {"version": 1}})),
        )
        .await
        .assert_error(403, "forbidden");
        app.call(
            Method::POST,
            &me_path("/attributes"),
            Some(&token),
            Some(json!({"key": "k", "value": 1})),
        )
        .await
        .assert_error(403, "forbidden");
        app.call(Method::DELETE, &me_path("/attributes/k"), Some(&token), None)
            .await
            .assert_error(403, "forbidden");
    }
    assert_eq!(app.read("s1").await.version(), 1);
}

async fn management_attribute_post_sets_and_overwrites(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    let path = context_path(SID, "/attributes");
    let reply = app
        .call(
            Method::POST,
            &path,
            Some(&manager()),
            Some(json!({"key": "colour", "value": "red"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.header("etag"), Some("\"2\""));
    let reply = app
        .call(
            Method::POST,
            &path,
            Some(&manager()),
            Some(json!({"key": "colour", "value": {"r": 255}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let read = app.read(SID).await;
    assert_eq!(read.json["context"]["colour"], json!({"r": 255}));
    assert_eq!(read.version(), 3);
}

async fn me_attribute_post_answers_201_with_the_name(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create("s1", full_body(1)).await;
    let reply = app
        .call(
            Method::POST,
            &me_path("/attributes"),
            Some(&anonymous("s1")),
            Some(json!({"key": "wish list", "value": [1, 2]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.json, json!("wish list"));
    assert_eq!(reply.header("etag"), Some("\"2\""));
    assert_eq!(app.read("s1").await.json["context"]["wish list"], json!([1, 2]));
}

async fn attribute_posts_need_a_key_and_a_value_and_a_session(backend: Backend) {
    let app = TestApp::new(backend).await;
    let path = context_path(SID, "/attributes");
    app.call(
        Method::POST,
        &path,
        Some(&manager()),
        Some(json!({"key": "k", "value": 1})),
    )
    .await
    .assert_error(404, "resource_not_found");
    app.create(SID, full_body(1)).await;
    for bad in [
        json!({"key": "k", "value": null}),
        json!({"key": "k"}),
        json!({"value": 1}),
        json!({"key": "a\u{0007}", "value": 1}),
    ] {
        app.call(Method::POST, &path, Some(&manager()), Some(bad))
            .await
            .assert_error(400, "validation_error");
    }
    assert_eq!(app.read(SID).await.version(), 1);
}

async fn attribute_delete_is_idempotent(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    let path = context_path(SID, "/attributes/legalEntityId");
    let first = app.call(Method::DELETE, &path, Some(&manager()), None).await;
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    assert_eq!(first.header("etag"), Some("\"2\""));
    let second = app.call(Method::DELETE, &path, Some(&manager()), None).await;
    assert_eq!(second.status, StatusCode::NO_CONTENT);
    assert_eq!(second.header("etag"), None, "nothing changed");
    let read = app.read(SID).await;
    assert_eq!(read.version(), 2);
    assert!(read.json["context"].get("legalEntityId").is_none());
    app.call(
        Method::DELETE,
        &context_path("missing", "/attributes/x"),
        Some(&manager()),
        None,
    )
    .await
    .assert_error(404, "resource_not_found");
}

async fn me_attribute_delete_removes_from_the_own_session(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create("s1", full_body(1)).await;
    // percent-encoded names are decoded
    let reply = app
        .call(
            Method::DELETE,
            &me_path("/attributes/legal%45ntityId"),
            Some(&anonymous("s1")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(app.read("s1").await.json["context"].get("legalEntityId").is_none());
}

async fn deleting_a_session_ends_it(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    let reply = app
        .call(Method::DELETE, &context_path(SID, ""), Some(&manager()), None)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(app.read(SID).await.status, StatusCode::NOT_FOUND);
    app.call(Method::DELETE, &context_path(SID, ""), Some(&manager()), None)
        .await
        .assert_error(404, "resource_not_found");
}

async fn anonymous_sessions_expire_after_their_last_use(backend: Backend) {
    let app = TestApp::new(backend).await;
    let ms = std::time::Duration::from_millis;
    app.create("anon", json!({"metadata": {"version": 1}})).await;
    app.clock.advance(TTL / 2);
    let post = app
        .call(
            Method::POST,
            &context_path("anon", "/attributes"),
            Some(&manager()),
            Some(json!({"key": "k", "value": 1})),
        )
        .await;
    assert_eq!(post.status, StatusCode::NO_CONTENT);
    // Half of the idle timeout after the change, exactly half is left: a read does not extend.
    app.clock.advance(TTL / 2);
    let read = app.read("anon").await;
    assert_eq!(read.status, StatusCode::OK, "a change restarts the lifetime");
    // Just under half left: this read extends, and is not a change.
    app.clock.advance(ms(1));
    let extended = app.read("anon").await;
    assert_eq!(extended.status, StatusCode::OK);
    assert_eq!(
        extended.json["metadata"], read.json["metadata"],
        "version and modifiedAt stay"
    );
    assert_eq!(extended.headers["etag"], read.headers["etag"]);
    // Without that read it would be gone at TTL after the change; now it lives on.
    app.clock.advance(TTL / 2 + ms(10));
    assert_eq!(
        app.read("anon").await.status,
        StatusCode::OK,
        "a read restarted the lifetime"
    );
    // Then unused for a whole idle timeout: gone, for reads and updates alike.
    app.clock.advance(TTL + ms(1));
    app.read("anon").await.assert_error(404, "resource_not_found");
    app.call(
        Method::PUT,
        &context_path("anon", ""),
        Some(&manager()),
        Some(json!({"metadata": {"version": 2}})),
    )
    .await
    .assert_error(404, "resource_not_found");
    app.create("anon", json!({"metadata": {"version": 2}})).await;
    let fresh = app.read("anon").await;
    assert_eq!(fresh.version(), 1, "an expired session is created anew");
    assert_eq!(fresh.json["context"], json!({}));
}

async fn customer_sessions_do_not_expire_until_the_customer_is_removed(backend: Backend) {
    let app = TestApp::new(backend).await;
    let token = customer("s1", "C1");
    let created = app
        .call(
            Method::PATCH,
            &me_path("?upsert=true"),
            Some(&token),
            Some(json!({"metadata": {"version": 1}})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    app.clock.advance(TTL * 48);
    let me = app.call(Method::GET, &me_path(""), Some(&token), None).await;
    assert_eq!(me.status, StatusCode::OK, "customer sessions never expire");
    let logout = Request::builder()
        .method(Method::PUT)
        .uri(context_path("s1", ""))
        .header("authorization", format!("Bearer {}", manager()))
        .header("content-type", "application/json")
        .header("saas-token", saas("C1"))
        .body(Body::from(
            json!({"customerId": null, "metadata": {"version": 1}}).to_string(),
        ))
        .unwrap();
    assert_eq!(app.send(logout).await.status, StatusCode::NO_CONTENT);
    app.clock.advance(TTL + std::time::Duration::from_secs(1));
    app.read("s1").await.assert_error(404, "resource_not_found");
}

async fn path_parameters_follow_the_input_rules(backend: Backend) {
    let app = TestApp::new(backend).await;
    let token = manager();
    for path in [
        "/session-context/shop/context/a%20b".to_string(),
        format!("/session-context/shop/context/{}", "x".repeat(129)),
        "/session-context/shop/context/%FF%FE".to_string(),
        "/session-context/shop/context/a%2Fb".to_string(),
        format!("/session-context/shop/context/s1/attributes/{}", "k".repeat(257)),
        "/session-context/shop/context/s1/attributes/%0A".to_string(),
        "/session-context/shop/context/s1/attributes/%C3%28".to_string(),
    ] {
        let method = if path.contains("/attributes/") {
            Method::DELETE
        } else {
            Method::GET
        };
        let reply = app.call(method, &path, Some(&token), None).await;
        reply.assert_error(400, "validation_error");
    }
    for tenant in ["ab", "Shop", "1shop", "shop-x", "abcdefghijklmnopq"] {
        let reply = app
            .call(
                Method::GET,
                &format!("/session-context/{tenant}/context/s1"),
                Some(&token),
                None,
            )
            .await;
        reply.assert_error(400, "validation_error");
        assert_eq!(reply.json["details"][0]["field"], json!("tenant"));
    }
}

async fn bodies_must_be_json_objects_within_limits(backend: Backend) {
    let app = TestApp::with_limit(backend, 1024).await;
    app.create(SID, full_body(1)).await;
    let raw = |content_type: Option<&str>, body: String| {
        let mut builder = Request::builder()
            .method(Method::PUT)
            .uri(context_path(SID, ""))
            .header("authorization", format!("Bearer {}", manager()));
        if let Some(ct) = content_type {
            builder = builder.header("content-type", ct);
        }
        builder.body(Body::from(body)).unwrap()
    };
    let json_ct = Some("application/json");
    app.send(raw(json_ct, "{not json".into()))
        .await
        .assert_error(400, "validation_error");
    app.send(raw(json_ct, "[1,2]".into()))
        .await
        .assert_error(400, "validation_error");
    app.send(raw(json_ct, String::new()))
        .await
        .assert_error(400, "validation_error");
    let deep = format!("{{\"context\":{{\"a\":{}{}}}}}", "[".repeat(40), "]".repeat(40));
    app.send(raw(json_ct, deep)).await.assert_error(400, "validation_error");
    let hostile = "[".repeat(200_000);
    app.send(raw(json_ct, hostile))
        .await
        .assert_error(413, "payload_too_large");
    let big = json!({"context": {"blob": "x".repeat(2000)}, "metadata": {"version": 1}}).to_string();
    app.send(raw(json_ct, big)).await.assert_error(413, "payload_too_large");
    app.send(raw(Some("text/plain"), "{}".into()))
        .await
        .assert_error(415, "unsupported_media_type");
    app.send(raw(None, "{}".into()))
        .await
        .assert_error(415, "unsupported_media_type");
    let charset = app
        .send(raw(
            Some("application/json; charset=utf-8"),
            json!({"metadata": {"version": 1}}).to_string(),
        ))
        .await;
    assert_eq!(charset.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.read(SID).await.version(),
        2,
        "only the valid request changed the session"
    );
}

/// Names a person cannot see or that reorder what is shown around them: bidirectional
/// embeddings, overrides and isolates, zero-width space and the byte-order mark.
const INVISIBLE_NAMES: [&str; 9] = [
    "a\u{202A}b",
    "price\u{202E}gnp.exe",
    "a\u{202D}",
    "\u{2066}x",
    "x\u{2067}y",
    "x\u{2069}",
    "\u{200B}",
    "a\u{200B}b",
    "\u{FEFF}key",
];

/// Refused on every route that takes an attribute name (400, `details` naming the field);
/// an emoji joined by U+200D is a name like any other.
#[tokio::test]
async fn attribute_names_may_not_hide_or_reorder_characters() {
    let app = TestApp::new(Backend::Memory).await;
    app.create("s1", full_body(1)).await;
    let encoded = |name: &str| name.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    for name in INVISIBLE_NAMES {
        let attribute = json!({"key": name, "value": 1});
        let context = json!({"context": {name: 1}, "metadata": {"version": 1}});
        let removal = format!("/attributes/{}", encoded(name));
        // Every route that takes the name: (method, path, token, body, the field named).
        let attempts = [
            (
                Method::POST,
                context_path("s1", "/attributes"),
                manager(),
                Some(attribute.clone()),
                "key",
            ),
            (
                Method::POST,
                me_path("/attributes"),
                anonymous("s1"),
                Some(attribute),
                "key",
            ),
            (
                Method::DELETE,
                context_path("s1", &removal),
                manager(),
                None,
                "attributeName",
            ),
            (
                Method::DELETE,
                me_path(&removal),
                anonymous("s1"),
                None,
                "attributeName",
            ),
            (
                Method::PUT,
                context_path("s1", ""),
                manager(),
                Some(context.clone()),
                "context",
            ),
            (Method::PATCH, me_path(""), anonymous("s1"), Some(context), "context"),
        ];
        for (method, path, token, body, field) in attempts {
            let reply = app.call(method, &path, Some(&token), body).await;
            reply.assert_error(400, "validation_error");
            assert_eq!(
                reply.json["details"][0]["field"],
                json!(field),
                "{name:?}: {}",
                reply.text
            );
        }
    }
    assert_eq!(app.read("s1").await.version(), 1, "nothing was stored");

    let coder = "\u{1F469}\u{200D}\u{1F4BB}"; // 👩‍💻, joined by U+200D
    for (path, token) in [
        (context_path("s1", "/attributes"), manager()),
        (me_path("/attributes"), anonymous("s1")),
    ] {
        let reply = app
            .call(
                Method::POST,
                &path,
                Some(&token),
                Some(json!({"key": coder, "value": 1})),
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.text);
    }
    assert_eq!(app.read("s1").await.json["context"][coder], json!(1));
    let reply = app
        .call(
            Method::DELETE,
            &me_path(&format!("/attributes/{}", encoded(coder))),
            Some(&anonymous("s1")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    assert!(app.read("s1").await.json["context"].get(coder).is_none());
}

/// A body under any `Content-Encoding` but `identity` is refused with 415 before it is read,
/// on every endpoint that takes a body; nothing is decoded, nothing is stored.
#[tokio::test]
async fn bodies_with_a_content_encoding_are_415() {
    let app = TestApp::new(Backend::Memory).await;
    app.create("s1", full_body(1)).await;
    let version = json!({"metadata": {"version": 1}});
    let attribute = json!({"key": "k", "value": 1});
    let with_body = [
        (Method::PUT, context_path("s1", ""), manager(), version.clone()),
        (
            Method::POST,
            context_path("s1", "/attributes"),
            manager(),
            attribute.clone(),
        ),
        (Method::PATCH, me_path(""), anonymous("s1"), version),
        (Method::POST, me_path("/attributes"), anonymous("s1"), attribute),
    ];
    let request = |method: &Method, path: &str, token: &str, body: &Value, encoding: Option<&str>| {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json");
        if let Some(encoding) = encoding {
            builder = builder.header("content-encoding", encoding);
        }
        builder.body(Body::from(body.to_string())).unwrap()
    };
    for (method, path, token, body) in &with_body {
        for encoding in [
            "gzip",
            "GZIP",
            "deflate",
            "br",
            "x-gzip",
            "identity, gzip",
            "gzip, identity",
            "",
            "identityx",
        ] {
            let reply = app.send(request(method, path, token, body, Some(encoding))).await;
            reply.assert_error(415, "unsupported_media_type");
            assert!(
                reply.json["message"].as_str().unwrap().contains("Content-Encoding"),
                "{method} {path} {encoding:?}: {}",
                reply.text
            );
        }
    }
    assert_eq!(app.read("s1").await.version(), 1, "nothing was stored");
    // `identity` (any case) is no encoding at all.
    for (method, path, token, body) in &with_body {
        for encoding in [Some("identity"), Some("IDENTITY"), None] {
            let body = match body.get("metadata") {
                Some(_) => json!({"metadata": {"version": app.read("s1").await.version()}}),
                None => body.clone(),
            };
            let reply = app.send(request(method, path, token, &body, encoding)).await;
            assert!(
                reply.status.is_success(),
                "{method} {path} {encoding:?}: {}",
                reply.text
            );
        }
    }
}

/// Numbers at and past the edges: versions beyond u64, floats beyond f64, and extreme values
/// that are valid and must come back exactly as sent.
async fn numbers_out_of_range_are_refused_and_extreme_ones_kept(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    let raw_put = |body: &str, if_match: Option<&str>| {
        let mut builder = Request::builder()
            .method(Method::PUT)
            .uri(context_path(SID, ""))
            .header("authorization", format!("Bearer {}", manager()))
            .header("content-type", "application/json");
        if let Some(tag) = if_match {
            builder = builder.header("if-match", tag);
        }
        builder.body(Body::from(body.to_owned())).unwrap()
    };
    for body in [
        r#"{"metadata":{"version":18446744073709551616}}"#,
        r#"{"metadata":{"version":1e400}}"#,
        r#"{"metadata":{"version":-0.5}}"#,
        r#"{"context":{"n":1e400},"metadata":{"version":1}}"#,
        r#"{"context":{"n":-1e400},"metadata":{"version":1}}"#,
    ] {
        app.send(raw_put(body, None))
            .await
            .assert_error(400, "validation_error");
    }
    app.send(raw_put("{}", Some("\"18446744073709551616\"")))
        .await
        .assert_error(400, "validation_error");
    // The largest version is a valid number, just not the current one.
    let max = app
        .send(raw_put(r#"{"metadata":{"version":18446744073709551615}}"#, None))
        .await;
    max.assert_error(409, "conflict");
    assert_eq!(max.json["currentVersion"], json!(1));
    let extremes = r#"{"context":{"big":18446744073709551615,"small":-9223372036854775808,"huge":1.7976931348623157e308,"tiny":5e-324,"long":31133330000000000000000010232598767690969414},"metadata":{"version":1}}"#;
    let stored = app.send(raw_put(extremes, None)).await;
    assert_eq!(stored.status, StatusCode::NO_CONTENT, "{}", stored.text);
    let sent: Value = serde_json::from_str(extremes).unwrap();
    let read = app.read(SID).await;
    assert_eq!(read.json["context"], sent["context"], "{}", read.text);
    assert_eq!(read.version(), 2, "only the valid request changed the session");
}

async fn unknown_routes_and_methods_answer_with_the_error_body(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.call(Method::GET, "/nothing/here", None, None)
        .await
        .assert_error(404, "resource_not_found");
    app.call(Method::GET, &context_path("s1", "/extra/parts"), Some(&manager()), None)
        .await
        .assert_error(404, "resource_not_found");
    app.call(Method::POST, &context_path("s1", ""), Some(&manager()), None)
        .await
        .assert_error(405, "method_not_allowed");
    app.call(Method::PUT, &me_path(""), Some(&manager()), None)
        .await
        .assert_error(405, "method_not_allowed");
}

async fn the_same_session_id_under_two_tenants_is_two_sessions(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create(SID, full_body(1)).await;
    let other_manager = sign(session_context::auth::mint::TokenSpec {
        tenant: Some("other".into()),
        scope: Some(MANAGE.into()),
        ttl: std::time::Duration::from_secs(60),
        ..Default::default()
    });
    let other = format!("/session-context/other/context/{SID}");
    app.call(Method::GET, &other, Some(&other_manager), None)
        .await
        .assert_error(404, "resource_not_found");
    app.call(Method::GET, &other, Some(&manager()), None)
        .await
        .assert_error(403, "forbidden");
    let created = app
        .call(
            Method::PUT,
            &format!("{other}?upsert=true"),
            Some(&other_manager),
            Some(json!({"currency": "PLN", "metadata": {"version": 1}})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(app.read(SID).await.json["currency"], json!("EUR"));
    assert_eq!(
        app.call(Method::GET, &other, Some(&other_manager), None).await.json["currency"],
        json!("PLN")
    );
}

async fn health_metrics_and_openapi_are_served_without_a_token(backend: Backend) {
    let app = TestApp::new(backend).await;
    let live = app.call(Method::GET, "/health/live", None, None).await;
    assert_eq!(
        (live.status, live.json.clone()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let ready = app.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    app.read("counted").await;
    let metrics = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.text.contains(
            r#"session_context_http_requests_total{method="GET",route="/session-context/{tenant}/context/{sessionId}",status="404"} 1"#
        ),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("session_context_http_request_duration_seconds_bucket")
    );
    let doc = app.call(Method::GET, "/session-context/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.json["openapi"].as_str().unwrap().starts_with("3."));
    let mut operations: Vec<String> = doc.json["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| format!("{m} {path}")))
        .collect();
    operations.sort();
    let base = "/session-context/{tenant}";
    let mut expected = vec![
        format!("get {base}/context/{{sessionId}}"),
        format!("put {base}/context/{{sessionId}}"),
        format!("delete {base}/context/{{sessionId}}"),
        format!("post {base}/context/{{sessionId}}/attributes"),
        format!("delete {base}/context/{{sessionId}}/attributes/{{attributeName}}"),
        format!("get {base}/me/context"),
        format!("patch {base}/me/context"),
        format!("delete {base}/me/context"),
        format!("post {base}/me/context/attributes"),
        format!("delete {base}/me/context/attributes/{{attributeName}}"),
        format!("get {base}/contexts"),
        format!("delete {base}/contexts"),
        format!("get {base}/me/contexts"),
        format!("delete {base}/me/contexts"),
        "get /health/live".to_string(),
        "get /health/ready".to_string(),
        "get /metrics".to_string(),
        "get /session-context/openapi.json".to_string(),
    ];
    expected.sort();
    assert_eq!(operations, expected);
    // Every path parameter states its input rule, so generated clients and fuzzers send what
    // the service accepts.
    for (path, item) in doc.json["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for param in operation["parameters"].as_array().into_iter().flatten() {
                if param["in"] == "path" {
                    assert!(param["schema"]["pattern"].is_string(), "{method} {path}: {param}");
                }
            }
        }
    }
}

on_memory_and_sqlite!(
    get_returns_the_session_with_its_etag,
    get_of_a_missing_session_is_404_naming_it,
    put_with_upsert_creates_at_version_one,
    put_of_a_missing_session_without_upsert_is_404,
    put_with_the_current_version_updates_and_bumps_it,
    stale_version_is_rejected_with_409_and_changes_nothing,
    updating_without_a_version_is_400_but_creating_needs_none,
    put_null_removes_fields_and_context_replaces_the_map,
    put_body_session_id_must_match_the_path,
    put_ignores_timestamps_and_unknown_fields,
    upsert_accepts_only_true_or_false,
    invalid_fields_are_named_in_details,
    customer_sessions_need_the_customers_saas_token,
    if_match_stands_in_for_the_version,
    patch_me_with_upsert_creates_the_tokens_session,
    patch_me_applies_only_the_storefront_fields,
    patch_me_merges_context_key_by_key,
    patch_me_checks_versions_and_existence,
    a_customer_session_is_closed_to_other_storefront_tokens,
    management_attribute_post_sets_and_overwrites,
    me_attribute_post_answers_201_with_the_name,
    attribute_posts_need_a_key_and_a_value_and_a_session,
    attribute_delete_is_idempotent,
    me_attribute_delete_removes_from_the_own_session,
    deleting_a_session_ends_it,
    anonymous_sessions_expire_after_their_last_use,
    customer_sessions_do_not_expire_until_the_customer_is_removed,
    path_parameters_follow_the_input_rules,
    bodies_must_be_json_objects_within_limits,
    numbers_out_of_range_are_refused_and_extreme_ones_kept,
    unknown_routes_and_methods_answer_with_the_error_body,
    the_same_session_id_under_two_tenants_is_two_sessions,
    health_metrics_and_openapi_are_served_without_a_token,
);
