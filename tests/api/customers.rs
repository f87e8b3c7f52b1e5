//! A customer's sessions (endpoints 11 to 14) through the router, on every store: lists newest
//! first page by page with `X-Total-Count`, deletes by customer (with `except` and
//! `keepCurrent`), who may call them, the query rules, tenants and other customers untouched.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use session_context::auth::mint::TokenSpec;

use crate::common::*;

fn contexts(query: &str) -> String {
    format!("/session-context/{TENANT}/contexts{query}")
}

fn my_contexts(query: &str) -> String {
    format!("/session-context/{TENANT}/me/contexts{query}")
}

/// Creates session `id` of `customer` through the management API, then gives it `extra`
/// changes (each one a later `modifiedAt`).
async fn create_for(app: &TestApp, id: &str, customer: &str) {
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

fn ids(reply: &Reply) -> Vec<String> {
    reply
        .json
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {}", reply.text))
        .iter()
        .map(|s| s["sessionId"].as_str().unwrap().to_owned())
        .collect()
}

fn total(reply: &Reply) -> u64 {
    reply.header("x-total-count").expect("X-Total-Count").parse().unwrap()
}

async fn list(app: &TestApp, query: &str) -> Reply {
    let reply = app.call(Method::GET, &contexts(query), Some(&manager()), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply
}

/// Sessions `c1`..`c5` of customer C, each changed after the one before (so c5 is newest),
/// then c2 changed again (now the newest).
async fn five_sessions(app: &TestApp) {
    for i in 1..=5 {
        create_for(app, &format!("c{i}"), "C").await;
        app.clock.advance(std::time::Duration::from_millis(10));
    }
    let touched = app
        .call(
            Method::POST,
            &context_path("c2", "/attributes"),
            Some(&manager()),
            Some(json!({"key": "colour", "value": "red"})),
        )
        .await;
    assert_eq!(touched.status, StatusCode::NO_CONTENT, "{}", touched.text);
}

async fn lists_are_newest_first_page_by_page(backend: Backend) {
    let app = TestApp::new(backend).await;
    five_sessions(&app).await;
    create_for(&app, "other", "D").await;
    let all = list(&app, "?q=customerId:C").await;
    assert_eq!(ids(&all), ["c2", "c5", "c4", "c3", "c1"]);
    assert_eq!(total(&all), 5);
    // The full resource, as GET returns it.
    assert_eq!(all.json[0], app.read("c2").await.json);
    let mut seen = Vec::new();
    for n in 1..=4 {
        let page = list(&app, &format!("?q=customerId:C&pageSize=2&pageNumber={n}")).await;
        assert_eq!(total(&page), 5, "page {n}");
        assert!(ids(&page).len() <= 2);
        seen.extend(ids(&page));
    }
    assert_eq!(
        seen,
        ["c2", "c5", "c4", "c3", "c1"],
        "the pages, in order, are the list"
    );
    // A customer with none: an empty list.
    let none = list(&app, "?q=customerId:nobody").await;
    assert_eq!((ids(&none).len(), total(&none)), (0, 0));
}

async fn deleted_and_expired_sessions_are_never_listed(backend: Backend) {
    let app = TestApp::new(backend).await;
    five_sessions(&app).await;
    let delete = axum::http::Request::builder()
        .method(Method::DELETE)
        .uri(context_path("c3", ""))
        .header("authorization", format!("Bearer {}", manager()))
        .header("saas-token", saas("C"))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.send(delete).await.status, StatusCode::NO_CONTENT);
    let after = list(&app, "?q=customerId:C").await;
    assert_eq!(ids(&after), ["c2", "c5", "c4", "c1"]);
    assert_eq!(total(&after), 4);
    // An anonymous session that a customer token adopts joins the list.
    let adopted = app
        .call(
            Method::PATCH,
            &me_path("?upsert=true"),
            Some(&anonymous("anon")),
            Some(json!({})),
        )
        .await;
    assert_eq!(adopted.status, StatusCode::CREATED);
    app.clock.advance(std::time::Duration::from_secs(1));
    let login = sign(TokenSpec {
        tenant: Some(TENANT.into()),
        session_id: Some("anon".into()),
        customer_id: Some("C".into()),
        ttl: std::time::Duration::from_secs(3600),
        ..Default::default()
    });
    let read = app.call(Method::GET, &me_path(""), Some(&login), None).await;
    assert_eq!(read.json["customerId"], json!("C"), "{}", read.text);
    assert_eq!(ids(&list(&app, "?q=customerId:C").await)[0], "anon");
    // Under a customer idle timeout, sessions idle past it are gone from the list at once.
    let mut policy = test_policy();
    policy.tenants.default.lifetime.customer_ttl = Some(60_000);
    let app = app.with_policy(policy);
    create_for(&app, "fresh", "C").await;
    app.clock.advance(std::time::Duration::from_secs(61));
    create_for(&app, "newer", "C").await;
    // (the sessions made before the policy changed never expire: they were written without)
    let live = list(&app, "?q=customerId:C").await;
    assert_eq!(ids(&live), ["newer", "anon", "c2", "c5", "c4", "c1"], "{}", live.text);
    assert_eq!(total(&live), 6);
}

async fn a_delete_by_customer_ends_every_session_of_that_customer_only(backend: Backend) {
    let app = TestApp::new(backend).await;
    five_sessions(&app).await;
    create_for(&app, "d1", "D").await;
    let reply = app
        .call(
            Method::DELETE,
            &contexts("?q=customerId:C&except=c4"),
            Some(&manager()),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json, json!({"deleted": 4}));
    for id in ["c1", "c2", "c3", "c5"] {
        app.read(id).await.assert_error(404, "resource_not_found");
    }
    assert_eq!(app.read("c4").await.status, StatusCode::OK, "the exception stays");
    assert_eq!(app.read("d1").await.status, StatusCode::OK, "another customer's stays");
    assert_eq!(ids(&list(&app, "?q=customerId:C").await), ["c4"]);
    // Idempotent: nothing more to end.
    let again = app
        .call(
            Method::DELETE,
            &contexts("?q=customerId:C&except=c4"),
            Some(&manager()),
            None,
        )
        .await;
    assert_eq!(again.json, json!({"deleted": 0}));
}

async fn the_same_customer_id_in_two_tenants_is_two_customers(backend: Backend) {
    let app = TestApp::new(backend).await;
    create_for(&app, "c1", "C").await;
    let other_manager = sign(TokenSpec {
        tenant: Some("other".into()),
        scope: Some(MANAGE.into()),
        ttl: std::time::Duration::from_secs(600),
        ..Default::default()
    });
    let put = axum::http::Request::builder()
        .method(Method::PUT)
        .uri("/session-context/other/context/c1?upsert=true")
        .header("authorization", format!("Bearer {other_manager}"))
        .header("saas-token", saas("C"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(json!({"customerId": "C"}).to_string()))
        .unwrap();
    assert_eq!(app.send(put).await.status, StatusCode::CREATED);
    let deleted = app
        .call(
            Method::DELETE,
            "/session-context/other/contexts?q=customerId:C",
            Some(&other_manager),
            None,
        )
        .await;
    assert_eq!(deleted.json, json!({"deleted": 1}), "{}", deleted.text);
    assert_eq!(
        ids(&list(&app, "?q=customerId:C").await),
        ["c1"],
        "the test tenant's stays"
    );
    // A management token of one tenant cannot list another's.
    let refused = app
        .call(
            Method::GET,
            "/session-context/other/contexts?q=customerId:C",
            Some(&manager()),
            None,
        )
        .await;
    refused.assert_error(403, "forbidden");
}

async fn a_customer_lists_and_ends_its_own_sessions(backend: Backend) {
    let app = TestApp::new(backend).await;
    five_sessions(&app).await;
    create_for(&app, "d1", "D").await;
    let token = customer("c5", "C");
    let mine = app
        .call(Method::GET, &my_contexts("?pageSize=3"), Some(&token), None)
        .await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text);
    assert_eq!(ids(&mine), ["c2", "c5", "c4"]);
    assert_eq!(total(&mine), 5);
    // Sign out my other devices.
    let others = app
        .call(Method::DELETE, &my_contexts("?keepCurrent=true"), Some(&token), None)
        .await;
    assert_eq!(others.json, json!({"deleted": 4}), "{}", others.text);
    assert_eq!(ids(&list(&app, "?q=customerId:C").await), ["c5"]);
    // Sign out everywhere.
    let all = app.call(Method::DELETE, &my_contexts(""), Some(&token), None).await;
    assert_eq!(all.json, json!({"deleted": 1}));
    app.read("c5").await.assert_error(404, "resource_not_found");
    assert_eq!(app.read("d1").await.status, StatusCode::OK);
}

async fn hidden_attributes_are_left_out_of_a_customers_own_list(backend: Backend) {
    use session_context::domain::policy::Patterns;
    let mut policy = test_policy();
    policy.tenants.default.hidden = Patterns::new(&["internal.*"]).unwrap();
    let app = TestApp::new(backend).await.with_policy(policy);
    create_for(&app, "c1", "C").await;
    let set = app
        .call(
            Method::POST,
            &context_path("c1", "/attributes"),
            Some(&manager()),
            Some(json!({"key": "internal.risk", "value": 9})),
        )
        .await;
    assert_eq!(set.status, StatusCode::NO_CONTENT);
    let mine = app
        .call(Method::GET, &my_contexts(""), Some(&customer("c1", "C")), None)
        .await;
    assert_eq!(mine.json[0]["context"], json!({}), "{}", mine.text);
    assert_eq!(
        list(&app, "?q=customerId:C").await.json[0]["context"]["internal.risk"],
        json!(9)
    );
}

async fn who_may_call_and_what_the_query_must_be(backend: Backend) {
    let app = TestApp::new(backend).await;
    // Anonymous tokens: 403 on 13 and 14. Storefront tokens on 11 and 12: 403. None: 401.
    for method in [Method::GET, Method::DELETE] {
        app.call(method.clone(), &my_contexts(""), Some(&anonymous("s1")), None)
            .await
            .assert_error(403, "forbidden");
        app.call(
            method.clone(),
            &contexts("?q=customerId:C"),
            Some(&customer("s1", "C")),
            None,
        )
        .await
        .assert_error(403, "forbidden");
        app.call(method.clone(), &contexts("?q=customerId:C"), None, None)
            .await
            .assert_error(401, "unauthorized");
        app.call(method.clone(), &my_contexts(""), None, None)
            .await
            .assert_error(401, "unauthorized");
    }
    let bad: [(&str, &str); 12] = [
        ("", "q"),
        ("?q=", "q"),
        ("?q=customerId:", "q"),
        ("?q=cartId:1", "q"),
        ("?q=C", "q"),
        ("?q=customerId:C&pageNumber=0", "pageNumber"),
        ("?q=customerId:C&pageNumber=-1", "pageNumber"),
        ("?q=customerId:C&pageNumber=x", "pageNumber"),
        ("?q=customerId:C&pageSize=0", "pageSize"),
        ("?q=customerId:C&pageSize=1001", "pageSize"),
        ("?q=customerId:C&pageSize=1.5", "pageSize"),
        ("?q=customerId:C&q=customerId:D", "query"),
    ];
    for (query, field) in bad {
        let reply = app.call(Method::GET, &contexts(query), Some(&manager()), None).await;
        reply.assert_error(400, "validation_error");
        assert_eq!(
            reply.json["details"][0]["field"],
            json!(field),
            "{query}: {}",
            reply.text
        );
    }
    for (query, field) in [("", "q"), ("?q=customerId:C&except=a%20b", "except")] {
        let reply = app.call(Method::DELETE, &contexts(query), Some(&manager()), None).await;
        reply.assert_error(400, "validation_error");
        assert_eq!(
            reply.json["details"][0]["field"],
            json!(field),
            "{query}: {}",
            reply.text
        );
    }
    for (query, field) in [("?pageSize=5000", "pageSize"), ("?pageNumber=0", "pageNumber")] {
        let reply = app
            .call(Method::GET, &my_contexts(query), Some(&customer("s1", "C")), None)
            .await;
        assert_eq!(
            reply.json["details"][0]["field"],
            json!(field),
            "{query}: {}",
            reply.text
        );
    }
    let reply = app
        .call(
            Method::DELETE,
            &my_contexts("?keepCurrent=maybe"),
            Some(&customer("s1", "C")),
            None,
        )
        .await;
    assert_eq!(
        reply.json["details"][0]["field"],
        json!("keepCurrent"),
        "{}",
        reply.text
    );
    // Accepted forms: the colon percent-encoded, the largest page size.
    let ok = list(&app, "?q=customerId%3AC&pageSize=1000&pageNumber=999999999").await;
    assert_eq!(ok.json, Value::Array(vec![]));
}

crate::on_every_backend!(
    lists_are_newest_first_page_by_page,
    deleted_and_expired_sessions_are_never_listed,
    a_delete_by_customer_ends_every_session_of_that_customer_only,
    the_same_customer_id_in_two_tenants_is_two_customers,
    a_customer_lists_and_ends_its_own_sessions,
    hidden_attributes_are_left_out_of_a_customers_own_list,
    who_may_call_and_what_the_query_must_be,
);
