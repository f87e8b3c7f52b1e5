//! Any path, method, headers and body through the whole router (memory store): the service
//! answers, never with a 5xx, and every error answer is the contract's JSON body.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use session_context::auth::mint::{TokenSpec, mint_hs256};
use session_context::auth::{AuthSettings, ClaimNames, KeySource, Verifier};
use session_context::clock::SystemClock;
use session_context::http::metrics::Metrics;
use session_context::http::{self, AppState};
use session_context::service::Sessions;
use session_context::store::MemoryStore;
use tower::ServiceExt;

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
    token: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let verifier = Verifier::new(&AuthSettings {
        access: KeySource::Secret(SECRET.to_vec()),
        saas: None,
        issuer: None,
        audience: None,
        claims: ClaimNames::default(),
    })
    .expect("the fuzz key is valid");
    let sessions = Sessions::new(Arc::new(MemoryStore::default()), Arc::new(SystemClock), Some(3_600_000));
    let state = AppState::new(sessions, Arc::new(verifier), Arc::new(Metrics::default()));
    let token = mint_hs256(
        SECRET,
        &TokenSpec {
            tenant: Some("shop".into()),
            scope: Some("session_context.context_manage".into()),
            session_id: Some("s1".into()),
            ttl: Duration::from_secs(24 * 3600),
            ..Default::default()
        },
    )
    .expect("a token");
    Fixture {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
        router: http::router(state, 65_536, Duration::from_secs(30)),
        token,
    }
});

const METHODS: [Method; 6] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
];

fuzz_target!(|data: &[u8]| {
    // Layout: method selector, one flags byte, then the path and the body split at the first 0.
    let [selector, flags, rest @ ..] = data else { return };
    let (path, body) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else { return };
    let fixture = &*FIXTURE;
    let mut builder = Request::builder()
        .method(METHODS[usize::from(*selector) % METHODS.len()].clone())
        .uri(format!("/session-context/shop/{path}"));
    if flags & 1 == 1 {
        builder = builder.header("authorization", format!("Bearer {}", fixture.token));
    }
    if flags & 2 == 2 {
        builder = builder.header("content-type", "application/json");
    }
    if flags & 4 == 4 {
        builder = builder.header("if-match", "*");
    }
    let Ok(request) = builder.body(Body::from(body.to_vec())) else {
        return;
    };
    let head = request.method() == Method::HEAD;
    fixture.runtime.block_on(async {
        let response = fixture
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router answers");
        let status = response.status();
        assert!(!status.is_server_error(), "{status} for {path}");
        let bytes = response.into_body().collect().await.expect("a body").to_bytes();
        // A HEAD answer has no body to check.
        if status.is_client_error() && !head {
            let error: serde_json::Value = serde_json::from_slice(&bytes).expect("errors are JSON");
            assert_eq!(error["code"], status.as_u16(), "{error}");
        }
    });
});
