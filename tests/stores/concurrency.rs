//! Many concurrent writers against one session, on every backend: optimistic locking never
//! loses an update, concurrent attribute changes all survive, and a change never lands on a
//! session created anew after the one it read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::*;
use async_trait::async_trait;
use axum::http::{Method, StatusCode};
use serde_json::json;
use session_context::clock::Millis;
use session_context::store::outbox::{OutboxStats, PendingEvent, Settlement};
use session_context::store::{
    CustomerKey, CustomerSessions, Expect, Page, RemovedSession, Revision, SessionKey, SessionStore, StoreError,
    StoredSession,
};
use tokio::sync::Notify;

const CLIENTS: u64 = 16;
const INCREMENTS: u64 = 8;

/// Reads the counter, writes counter + 1 with the version read, retries on 409.
async fn increment_with_put(app: &TestApp, id: &str) -> u64 {
    let mut conflicts = 0;
    loop {
        let read = app.read(id).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.text);
        let counter = read.json["context"]["counter"].as_u64().unwrap();
        let mut context = read.json["context"].clone();
        context["counter"] = json!(counter + 1);
        let body = json!({"context": context, "metadata": {"version": read.version()}});
        let reply = app
            .call(Method::PUT, &context_path(id, ""), Some(&manager()), Some(body))
            .await;
        match reply.status {
            StatusCode::NO_CONTENT => return conflicts,
            StatusCode::CONFLICT => {
                assert!(reply.json["currentVersion"].as_u64().unwrap() > read.version());
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
}

async fn concurrent_read_modify_write_loses_no_update(backend: Backend) {
    let app = Arc::new(TestApp::new(backend).await);
    app.create("hot", json!({"context": {"counter": 0}, "metadata": {"version": 1}}))
        .await;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..INCREMENTS {
                    conflicts += increment_with_put(&app, "hot").await;
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let read = app.read("hot").await;
    assert_eq!(read.json["context"]["counter"], json!(CLIENTS * INCREMENTS));
    assert_eq!(read.version(), 1 + CLIENTS * INCREMENTS);
    println!("{backend:?}: {conflicts} conflicts were retried");
}

async fn concurrent_attribute_posts_all_survive(backend: Backend) {
    let app = Arc::new(TestApp::new(backend).await);
    app.create("hot", json!({"metadata": {"version": 1}})).await;
    let posts = 64;
    let tasks: Vec<_> = (0..posts)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let (path, token) = if i % 2 == 0 {
                    (context_path("hot", "/attributes"), manager())
                } else {
                    (me_path("/attributes"), anonymous("hot"))
                };
                let reply = app
                    .call(
                        Method::POST,
                        &path,
                        Some(&token),
                        Some(json!({"key": format!("k{i}"), "value": i})),
                    )
                    .await;
                assert!(reply.status.is_success(), "{}", reply.text);
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let read = app.read("hot").await;
    let context = read.json["context"].as_object().unwrap();
    assert_eq!(context.len(), posts);
    for i in 0..posts {
        assert_eq!(context[&format!("k{i}")], json!(i));
    }
    assert_eq!(read.version(), 1 + posts as u64);
}

async fn versioned_patches_and_attribute_changes_interleave_without_loss(backend: Backend) {
    let app = Arc::new(TestApp::new(backend).await);
    app.create("hot", json!({"context": {"counter": 0}, "metadata": {"version": 1}}))
        .await;
    let patchers: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let token = anonymous("hot");
                let mut done = 0;
                while done < 5 {
                    let read = app.call(Method::GET, &me_path(""), Some(&token), None).await;
                    let counter = read.json["context"]["counter"].as_u64().unwrap();
                    let body = json!({"context": {"counter": counter + 1}, "metadata": {"version": read.version()}});
                    let reply = app.call(Method::PATCH, &me_path(""), Some(&token), Some(body)).await;
                    match reply.status {
                        StatusCode::NO_CONTENT => done += 1,
                        StatusCode::CONFLICT => {}
                        other => panic!("unexpected {other}: {}", reply.text),
                    }
                }
            })
        })
        .collect();
    let posters: Vec<_> = (0..24)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let body = json!({"key": format!("a{i}"), "value": true});
                let reply = app
                    .call(
                        Method::POST,
                        &context_path("hot", "/attributes"),
                        Some(&manager()),
                        Some(body),
                    )
                    .await;
                assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
            })
        })
        .collect();
    for task in patchers.into_iter().chain(posters) {
        task.await.unwrap();
    }
    let read = app.read("hot").await;
    let context = read.json["context"].as_object().unwrap();
    assert_eq!(context["counter"], json!(40));
    assert_eq!(context.len(), 25);
    assert_eq!(read.version(), 1 + 40 + 24);
}

/// A store that, once armed, holds the next write until the test releases it.
struct Gate {
    inner: Arc<dyn SessionStore>,
    armed: AtomicBool,
    reached: Notify,
    release: Notify,
}

#[async_trait]
impl SessionStore for Gate {
    async fn load(&self, key: &SessionKey, now: Millis) -> Result<Option<StoredSession>, StoreError> {
        self.inner.load(key, now).await
    }

    async fn write(
        &self,
        key: &SessionKey,
        expect: Expect,
        record: &StoredSession,
        now: Millis,
    ) -> Result<(), StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.release.notified().await;
        }
        self.inner.write(key, expect, record, now).await
    }

    async fn delete(&self, key: &SessionKey, revision: Revision, now: Millis) -> Result<(), StoreError> {
        self.inner.delete(key, revision, now).await
    }

    async fn extend(
        &self,
        key: &SessionKey,
        revision: Revision,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.inner.extend(key, revision, expires_at, now).await
    }

    async fn list_customer_sessions(
        &self,
        customer: &CustomerKey,
        page: Page,
        now: Millis,
    ) -> Result<CustomerSessions, StoreError> {
        self.inner.list_customer_sessions(customer, page, now).await
    }

    async fn delete_customer_sessions(
        &self,
        customer: &CustomerKey,
        except: Option<&str>,
        now: Millis,
    ) -> Result<Vec<RemovedSession>, StoreError> {
        self.inner.delete_customer_sessions(customer, except, now).await
    }

    async fn sweep_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        self.inner.sweep_expired(now, limit).await
    }

    fn set_event_destinations(&self, destinations: u16) {
        self.inner.set_event_destinations(destinations)
    }

    async fn claim_events(
        &self,
        owner: &str,
        limit: usize,
        lease: Millis,
        now: Millis,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        self.inner.claim_events(owner, limit, lease, now).await
    }

    async fn settle_event(&self, entry: &str, settlement: &Settlement) -> Result<(), StoreError> {
        self.inner.settle_event(entry, settlement).await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.inner.outbox_stats().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// Found by the history checker (tests/histories): an attribute change read version 1 of a
/// session, the session was deleted and created again (version 1 again), and the change then
/// landed on the new session, built from the old one's content. The write must see that the
/// session it read is gone, read again, and apply the change to the new one. The delete and the
/// new life come through a second instance on the same store: inside one instance, writers of
/// a session take turns, so only another instance can cut in between a read and its write.
async fn a_change_read_from_a_deleted_session_does_not_land_on_its_successor(backend: Backend) {
    let (inner, dir) = open_store(backend).await;
    let gate = Arc::new(Gate {
        inner,
        armed: AtomicBool::new(false),
        reached: Notify::new(),
        release: Notify::new(),
    });
    let app = Arc::new(TestApp::on_store(gate.clone(), dir, 65_536));
    let other = TestApp::on_store(gate.clone(), None, 65_536);
    app.create("s", json!({"context": {"life": "first"}, "metadata": {"version": 1}}))
        .await;
    gate.armed.store(true, Ordering::SeqCst);
    let change = tokio::spawn({
        let app = app.clone();
        async move {
            let body = json!({"key": "x", "value": 1});
            app.call(
                Method::POST,
                &context_path("s", "/attributes"),
                Some(&manager()),
                Some(body),
            )
            .await
        }
    });
    // The change has read the first life and is about to write.
    gate.reached.notified().await;
    let deleted = other
        .call(Method::DELETE, &context_path("s", ""), Some(&manager()), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    other
        .create("s", json!({"context": {"life": "second"}, "metadata": {"version": 1}}))
        .await;
    gate.release.notify_one();
    let changed = change.await.unwrap();
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{}", changed.text);
    assert_eq!(changed.header("etag"), Some("\"2\""));
    let read = app.read("s").await;
    assert_eq!(read.json["context"], json!({"life": "second", "x": 1}), "{}", read.text);
    assert_eq!(read.version(), 2);
}

on_every_backend!(
    a_change_read_from_a_deleted_session_does_not_land_on_its_successor,
    concurrent_read_modify_write_loses_no_update,
    concurrent_attribute_posts_all_survive,
    versioned_patches_and_attribute_changes_interleave_without_loss,
);
