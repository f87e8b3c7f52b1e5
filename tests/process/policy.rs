//! The tenant policy as an operator configures it and a shopper meets it: the real binary with a
//! `--config` file and environment variables, a shopper's token trying to grow its session
//! without bound, and a config file with a mistake.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use session_context::auth::mint::TokenSpec;

use crate::common::server::{BIN, Server, secret};
use crate::common::{anonymous, context_path, manager, me_path, sign};

const CONFIG: &str = r#"
# what an operator writes
max-attributes = 3
protected-attributes = ["b2b.*"]
hidden-attributes = ["internal.*"]

[tenants.outlet]
max-attributes = 1
"#;

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("session-context.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn post(client: &reqwest::Client, url: String, token: &str, key: &str, value: Value) -> (u16, Value) {
    let response = client
        .post(url)
        .bearer_auth(token)
        .json(&json!({"key": key, "value": value}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The file configures the binary, the environment wins over the file's top level, and a
/// tenant's table wins over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_and_the_environment_configure_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, CONFIG);
    let server = Server::start_with_env(
        "127.0.0.1:0",
        &["--store", "memory://", "--config", &config],
        &[
            ("SESSION_CONTEXT_JWT_SECRET", secret()),
            ("SESSION_CONTEXT_MAX_ATTRIBUTES", "4"),
        ],
    );
    let client = reqwest::Client::new();
    let me = format!("{}{}", server.base, me_path(""));
    let token = anonymous("s1");
    let created = client
        .patch(format!("{me}?upsert=true"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // Four attributes (the environment's limit, not the file's three), then 400.
    for key in ["a", "b", "c", "d"] {
        assert_eq!(
            post(&client, format!("{me}/attributes"), &token, key, json!(1)).await.0,
            201
        );
    }
    let (status, body) = post(&client, format!("{me}/attributes"), &token, "e", json!(1)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["details"][0]["type"], json!("too_many_attributes"));
    // The file's patterns: protected and hidden attributes.
    let managed = format!("{}{}", server.base, context_path("s2", ""));
    let put = client
        .put(format!("{managed}?upsert=true"))
        .bearer_auth(manager())
        .json(&json!({"context": {"b2b.entity": "LE1", "internal.risk": 9}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let shopper = anonymous("s2");
    let (status, body) = post(
        &client,
        format!("{me}/attributes"),
        &shopper,
        "b2b.entity",
        json!("LE2"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["details"][0]["field"], json!("context.b2b.entity"));
    let seen: Value = client
        .get(&me)
        .bearer_auth(&shopper)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["context"], json!({"b2b.entity": "LE1"}), "{seen}");
    // The outlet tenant's own table: one attribute.
    let outlet = sign(TokenSpec {
        tenant: Some("outlet".into()),
        session_id: Some("s1".into()),
        ttl: Duration::from_secs(600),
        ..Default::default()
    });
    let outlet_me = format!("{}/session-context/outlet/me/context", server.base);
    let created = client
        .patch(format!("{outlet_me}?upsert=true"))
        .bearer_auth(&outlet)
        .json(&json!({"context": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let (status, _) = post(&client, format!("{outlet_me}/attributes"), &outlet, "b", json!(1)).await;
    assert_eq!(status, 400);
}

/// The issue's case against the binary on SQLite: one anonymous token, 200 attributes of 60 KB.
/// Before the limit, all were accepted and the session grew to 12 MB; now the first fits, every
/// other is 413, and what is stored stays under the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_cannot_grow_a_session_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let server = Server::start(&["--store", &store, "--jwt-secret", secret()]);
    let client = reqwest::Client::new();
    let me = format!("{}{}", server.base, me_path(""));
    let token = anonymous("grow");
    let created = client
        .patch(format!("{me}?upsert=true"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let chunk = "x".repeat(60_000);
    let mut statuses = Vec::new();
    for i in 0..200 {
        let (status, body) = post(
            &client,
            format!("{me}/attributes"),
            &token,
            &format!("k{i}"),
            json!(chunk),
        )
        .await;
        if status == 413 {
            assert_eq!(body["type"], json!("session_too_large"), "{body}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses[0], 201);
    assert!(statuses[1..].iter().all(|&s| s == 413), "{statuses:?}");
    let stored = client
        .get(format!("{}{}", server.base, context_path("grow", "")))
        .bearer_auth(manager())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(stored.len() <= 65_536, "{} bytes stored", stored.len());
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["metadata"]["version"], json!(2));
}

/// A config file with a mistake stops the start, naming the key and its line.
#[test]
fn a_bad_config_file_stops_the_start_with_the_key_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key, line) in [
        ("max-attributes = 3\nmax-atributes = 4\n", "max-atributes", ":2"),
        (
            "\n\n[tenants.outlet]\nhidden-attribute = [\"x\"]\n",
            "hidden-attribute",
            "line 4",
        ),
        ("customer-ttl = \"one day\"\n", "customer-ttl", ":1"),
    ] {
        let config = write_config(&dir, text);
        let output = Command::new(BIN)
            .args([
                "serve",
                "--store",
                "memory://",
                "--jwt-secret",
                secret(),
                "--config",
                &config,
            ])
            .env_remove("SESSION_CONTEXT_CONFIG")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{text:?} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key) && stderr.contains(line), "{text:?}: {stderr}");
    }
}
