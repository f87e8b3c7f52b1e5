//! Many concurrent writers against one session, on every backend: optimistic locking never
//! loses an update, and concurrent attribute changes all survive.

mod common;

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::json;

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

on_every_backend!(
    concurrent_read_modify_write_loses_no_update,
    concurrent_attribute_posts_all_survive,
    versioned_patches_and_attribute_changes_interleave_without_loss,
);
