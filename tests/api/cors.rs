//! Browser storefronts (CORS) through the router, in process: preflights from allowed and
//! refused origins, `*`, the headers on successes and on every kind of error answer, and no
//! CORS at all without `--cors-origin`. CORS does not depend on the store, so these run on
//! memory only. (`tests/binary/cors.rs` checks the same with a real browser.)

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use hyper::body::Frame;
use serde_json::json;

use crate::common::*;

const SHOP: &str = "https://shop.example";
const OTHER: &str = "https://other.example";

/// The headers the contract says a preflight must allow.
const REQUEST_HEADERS: [&str; 8] = [
    "authorization",
    "content-type",
    "saas-token",
    "if-match",
    "if-none-match",
    "emporix-tenant",
    "accept-language",
    "content-language",
];

fn preflight(path: &str, origin: &str, method: &str) -> Request<Body> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri(path)
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", "authorization,content-type,if-match")
        .body(Body::empty())
        .unwrap()
}

/// A request from a page on `origin`, with a token when given.
fn from(origin: &str, method: Method, path: &str, token: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path).header("origin", origin);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Body::empty()).unwrap()
}

/// The comma-separated items of a header, lowercased.
fn items(reply: &Reply, name: &str) -> Vec<String> {
    reply
        .headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|item| item.trim().to_ascii_lowercase())
        .collect()
}

/// What every answer to an allowed origin carries: the origin (with `Vary: Origin`), ETag
/// exposed, and never credentials.
fn assert_answered_to(reply: &Reply, origin: &str) {
    assert_eq!(reply.header("access-control-allow-origin"), Some(origin), "{reply:?}");
    assert!(items(reply, "vary").contains(&"origin".into()), "{reply:?}");
    assert_eq!(items(reply, "access-control-expose-headers"), ["etag"], "{reply:?}");
    assert_eq!(reply.header("access-control-allow-credentials"), None, "{reply:?}");
}

/// What a preflight answer from an allowed origin carries.
fn assert_preflight_allowed(reply: &Reply, origin: &str) {
    assert!(
        matches!(reply.status, StatusCode::OK | StatusCode::NO_CONTENT),
        "{reply:?}"
    );
    assert_eq!(reply.header("access-control-allow-origin"), Some(origin), "{reply:?}");
    assert!(items(reply, "vary").contains(&"origin".into()), "{reply:?}");
    let methods = items(reply, "access-control-allow-methods");
    for method in ["get", "put", "patch", "post", "delete"] {
        assert!(methods.contains(&method.into()), "{method} missing: {reply:?}");
    }
    let headers = items(reply, "access-control-allow-headers");
    for header in REQUEST_HEADERS {
        assert!(headers.contains(&header.into()), "{header} missing: {reply:?}");
    }
    let max_age: u64 = reply
        .header("access-control-max-age")
        .expect("a max age")
        .parse()
        .unwrap();
    assert!(max_age > 0);
    assert_eq!(reply.header("access-control-allow-credentials"), None, "{reply:?}");
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_on_every_api_path_without_a_token() {
    let app = TestApp::with_cors(&[SHOP, "http://localhost:3000"]);
    for (path, method) in [
        (me_path(""), "PATCH"),
        (me_path(""), "GET"),
        (me_path("/attributes"), "POST"),
        (me_path("/attributes/colour"), "DELETE"),
        (context_path("s1", "?upsert=true"), "PUT"),
        (context_path("s1", "/attributes"), "POST"),
        ("/session-context/shop/unknown/route".into(), "GET"),
    ] {
        let reply = app.send(preflight(&path, SHOP, method)).await;
        assert_preflight_allowed(&reply, SHOP);
    }
    let reply = app.send(preflight(&me_path(""), "http://localhost:3000", "GET")).await;
    assert_preflight_allowed(&reply, "http://localhost:3000");
}

#[tokio::test]
async fn an_origin_not_on_the_list_never_gets_allow_origin() {
    let app = TestApp::with_cors(&[SHOP]);
    app.create("s1", json!({"metadata": {"version": 1}})).await;
    for origin in [OTHER, "https://shop.example:8443", "http://shop.example", "null"] {
        let reply = app.send(preflight(&me_path(""), origin, "GET")).await;
        assert_eq!(reply.header("access-control-allow-origin"), None, "{reply:?}");
        // The service still answers a request that is sent anyway; the browser refuses it.
        let reply = app
            .send(from(origin, Method::GET, &me_path(""), Some(&anonymous("s1"))))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("access-control-allow-origin"), None, "{reply:?}");
    }
}

/// `cors-origins` in a `[tenants.<name>]` table replaces the top-level list for that tenant's
/// paths; other tenants (and paths outside a tenant) keep the top-level list.
#[tokio::test]
async fn a_tenant_with_origins_of_its_own_replaces_the_top_level_list() {
    const OUTLET: &str = "https://outlet.example";
    let app = TestApp::with_limits(session_context::http::RequestLimits {
        cors_origins: cors_origins(&[SHOP]),
        tenant_cors_origins: std::collections::HashMap::from([("outlet".to_owned(), cors_origins(&[OUTLET]))]),
        ..Default::default()
    });
    let outlet_path = "/session-context/outlet/me/context";
    assert_preflight_allowed(&app.send(preflight(outlet_path, OUTLET, "PATCH")).await, OUTLET);
    let refused = app.send(preflight(outlet_path, SHOP, "PATCH")).await;
    assert_eq!(refused.header("access-control-allow-origin"), None, "{refused:?}");
    assert_preflight_allowed(&app.send(preflight(&me_path(""), SHOP, "PATCH")).await, SHOP);
    let refused = app.send(preflight(&me_path(""), OUTLET, "PATCH")).await;
    assert_eq!(refused.header("access-control-allow-origin"), None, "{refused:?}");
    // Answers (not only preflights) follow the same lists, errors included.
    let answer = app.send(from(OUTLET, Method::GET, outlet_path, None)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_answered_to(&answer, OUTLET);
    // A tenant whose list is empty has no CORS at all, though the top level has.
    let app = TestApp::with_limits(session_context::http::RequestLimits {
        cors_origins: cors_origins(&[SHOP]),
        tenant_cors_origins: std::collections::HashMap::from([("outlet".to_owned(), cors_origins(&[]))]),
        ..Default::default()
    });
    let refused = app.send(preflight(outlet_path, SHOP, "PATCH")).await;
    assert_eq!(refused.header("access-control-allow-origin"), None, "{refused:?}");
}

#[tokio::test]
async fn a_star_allows_any_origin_with_a_star() {
    let app = TestApp::with_cors(&["*"]);
    app.create("s1", json!({"metadata": {"version": 1}})).await;
    let reply = app.send(preflight(&me_path(""), OTHER, "PATCH")).await;
    assert_preflight_allowed(&reply, "*");
    let reply = app
        .send(from(OTHER, Method::GET, &me_path(""), Some(&anonymous("s1"))))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert_eq!(items(&reply, "access-control-expose-headers"), ["etag"]);
    assert_eq!(reply.header("access-control-allow-credentials"), None);
}

#[tokio::test]
async fn answers_to_an_allowed_origin_carry_the_headers_errors_included() {
    let app = TestApp::with_cors(&[SHOP]);
    app.create("s1", json!({"metadata": {"version": 1}})).await;

    let ok = app
        .send(from(SHOP, Method::GET, &me_path(""), Some(&anonymous("s1"))))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("etag"), Some("\"1\""));
    assert_answered_to(&ok, SHOP);

    let unauthorized = app.send(from(SHOP, Method::GET, &me_path(""), None)).await;
    unauthorized.assert_error(401, "unauthorized");
    assert_answered_to(&unauthorized, SHOP);

    let missing = app
        .send(from(SHOP, Method::GET, &context_path("nobody", ""), Some(&manager())))
        .await;
    missing.assert_error(404, "resource_not_found");
    assert_answered_to(&missing, SHOP);

    let no_route = app.send(from(SHOP, Method::GET, "/nothing/here", None)).await;
    no_route.assert_error(404, "resource_not_found");
    assert_answered_to(&no_route, SHOP);

    let wrong_method = app
        .send(from(SHOP, Method::POST, &context_path("s1", ""), Some(&manager())))
        .await;
    wrong_method.assert_error(405, "method_not_allowed");
    assert_answered_to(&wrong_method, SHOP);

    // 413 from the admission middleware, before anything of the body is read.
    let mut too_large = from(SHOP, Method::PUT, &context_path("s1", ""), Some(&manager()));
    too_large
        .headers_mut()
        .insert("content-length", "10000000".parse().unwrap());
    let too_large = app.send(too_large).await;
    too_large.assert_error(413, "payload_too_large");
    assert_answered_to(&too_large, SHOP);
}

/// A body that never sends a byte.
struct Stalled;

impl hyper::body::Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

/// The answers the outer middleware makes itself, 503 (the body budget is spent) and 408 (the
/// request took too long), carry the headers too: the CORS layer sits outside them.
#[tokio::test]
async fn admission_503_and_timeout_408_carry_the_headers_too() {
    let app = TestApp::with_limits(session_context::http::RequestLimits {
        max_body_bytes: 1024,
        max_inflight_body_bytes: 1024,
        request_timeout: Duration::from_secs(2),
        cors_origins: cors_origins(&[SHOP]),
        ..Default::default()
    });
    let put = |body: Body, length: usize| {
        let mut request = from(SHOP, Method::PUT, &context_path("s1", "?upsert=true"), Some(&manager()));
        *request.body_mut() = body;
        request.headers_mut().insert("content-length", length.into());
        request
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        request
    };
    // This one holds the whole budget and never finishes its body.
    let router = app.router.clone();
    let stalled = tokio::spawn({
        let request = put(Body::new(Stalled), 1024);
        async move {
            use tower::ServiceExt;
            router.oneshot(request).await.unwrap()
        }
    });
    let started = Instant::now();
    let refused = loop {
        let body = json!({"metadata": {"version": 1}}).to_string();
        let length = body.len();
        let reply = app.send(put(Body::from(body), length)).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE || started.elapsed() > Duration::from_millis(1500) {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    refused.assert_error(503, "service_unavailable");
    assert_answered_to(&refused, SHOP);

    let timed_out = stalled.await.unwrap();
    assert_eq!(timed_out.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        timed_out
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(SHOP)
    );
    assert_eq!(
        timed_out
            .headers()
            .get("access-control-expose-headers")
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("etag")
    );
}

#[tokio::test]
async fn without_cors_origins_there_are_no_cors_headers_and_options_is_405() {
    let app = TestApp::new(Backend::Memory).await;
    app.create("s1", json!({"metadata": {"version": 1}})).await;
    let replies = [
        app.send(preflight(&me_path(""), SHOP, "GET")).await,
        app.send(from(SHOP, Method::GET, &me_path(""), Some(&anonymous("s1"))))
            .await,
        app.send(from(SHOP, Method::GET, &me_path(""), None)).await,
    ];
    replies[0].assert_error(405, "method_not_allowed");
    assert_eq!(replies[1].status, StatusCode::OK);
    replies[2].assert_error(401, "unauthorized");
    for reply in replies {
        let cors: Vec<_> = reply
            .headers
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{reply:?}");
        assert!(!items(&reply, "vary").contains(&"origin".into()), "{reply:?}");
    }
}
