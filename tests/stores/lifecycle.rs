//! The background sweep: expired sessions are removed from storage (not only hidden), the
//! sweep is counted in the metrics, and it stops when told to.

use std::time::Duration;

use crate::common::*;
use axum::http::{Method, StatusCode};
use serde_json::json;
use session_context::startup::spawn_sweeper;
use session_context::store::SessionKey;
use tokio::sync::watch;

async fn the_sweep_removes_expired_sessions_and_stops_when_told(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create("anon", json!({"metadata": {"version": 1}})).await;
    let created = app
        .call(
            Method::PATCH,
            &me_path("?upsert=true"),
            Some(&customer("cust", "C1")),
            Some(json!({"metadata": {"version": 1}})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    app.clock.advance(TTL + Duration::from_secs(1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = spawn_sweeper(app.state.clone(), Duration::from_millis(10), stop_rx);
    // Loading as of the creation time would still see the record unless it is physically gone.
    let anon = SessionKey::new(TENANT, "anon");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.store.load(&anon, START).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweep never removed the expired session"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let customer_key = SessionKey::new(TENANT, "cust");
    assert!(
        app.store.load(&customer_key, START).await.unwrap().is_some(),
        "customer sessions are kept"
    );
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), sweeper)
        .await
        .expect("the sweep stops when told")
        .unwrap();
    let metrics = app.call(Method::GET, "/metrics", None, None).await.text;
    assert!(
        metrics.contains("session_context_expired_sessions_swept_total 1"),
        "{metrics}"
    );
}

// Redis expires sessions natively, so it has no sweep to test (see the store contract suite).
on_backend!(memory, Memory, the_sweep_removes_expired_sessions_and_stops_when_told);
on_backend!(sqlite, Sqlite, the_sweep_removes_expired_sessions_and_stops_when_told);
on_backend!(
    postgres,
    Postgres,
    the_sweep_removes_expired_sessions_and_stops_when_told
);
