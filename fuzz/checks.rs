//! What each fuzz target asserts, as plain functions: the `cargo fuzz` targets in
//! `fuzz_targets/` call them with the fuzzer's input, and `tests/api/fuzz_regressions.rs` in the
//! main crate calls them with every committed seed and every input that once found a bug
//! (`fuzz/regressions/<target>/`), so `cargo test` replays them without a fuzzer.
//! A panic is a finding.
#![allow(dead_code)] // each fuzz target uses one of the checks

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use session_context::auth::mint::{TokenSpec, mint_hs256};
use session_context::auth::{AuthSettings, ClaimNames, KeySource, Verifier};
use session_context::clock::SystemClock;
use session_context::domain::{SessionContext, json, request, rules};
use session_context::http::metrics::Metrics;
use session_context::http::{self, AppState};
use session_context::service::Sessions;
use session_context::store::MemoryStore;
use tower::ServiceExt;

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";

fn verifier() -> Verifier {
    Verifier::new(&AuthSettings {
        access: KeySource::Secret(SECRET.to_vec()),
        saas: None,
        issuer: None,
        audience: None,
        claims: ClaimNames::default(),
    })
    .expect("the fuzz key is valid")
}

/// Any bytes as a request body: reading them never panics, and whatever PUT, PATCH or an
/// attribute body accepts can be applied to a session and served back as JSON, unchanged.
pub fn request_bodies(data: &[u8]) {
    let Ok(body) = json::read_object(data) else { return };
    let stored = SessionContext::new("s1", 1_000);
    if let Ok(put) = request::read_put(&body, "s1") {
        let next = rules::apply_put(Some(stored.clone()), "s1", &put, 2_000);
        let text = serde_json::to_string(&next).expect("a session serializes");
        let back: SessionContext = serde_json::from_str(&text).expect("a served session reads back");
        assert_eq!(back, next);
    }
    if let Ok(patch) = request::read_patch(&body) {
        let next = rules::apply_patch(Some(stored.clone()), "s1", None, &patch, 2_000);
        assert_eq!(next.metadata.version, 2);
    }
    if let Ok((key, value)) = request::read_attribute(&body) {
        let next = rules::set_attribute(stored, &key, &value, 2_000);
        assert_eq!(next.context.get(&key), Some(&value));
    }
}

static VERIFIER: LazyLock<Verifier> = LazyLock::new(verifier);

/// Any text as a bearer token or saas-token: verifying it never panics, and nothing that is not
/// signed with the key is accepted (random input cannot carry a valid HMAC of the secret).
pub fn tokens(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    assert!(VERIFIER.verify_access(token).is_err());
    assert!(VERIFIER.verify_saas(token, "shop").is_err());
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
    token: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let sessions = Sessions::new(
        Arc::new(MemoryStore::default()),
        Arc::new(SystemClock),
        Default::default(),
    );
    let state = AppState::new(sessions, Arc::new(verifier()), Arc::new(Metrics::default()));
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
        router: http::router(state, &Default::default()),
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

/// Any path, method, headers and body through the whole router (memory store): the service
/// answers, never with a 5xx, and every error answer is the contract's JSON body.
/// Layout: a method selector, one flags byte, then the path and the body split at the first 0.
pub fn http_requests(data: &[u8]) {
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
}
