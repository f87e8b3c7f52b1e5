//! Attacks against the real binary, each as an attacker would try it: trickled headers are cut
//! off, clients at the connection cap do not starve others for longer than the header deadline,
//! a body that never finishes gets 408 with the contract's body, and a management token cannot
//! take over a customer's session by deleting and re-creating it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::server::{Server, secret};
use common::{context_path, customer, manager, me_path, sign};
use serde_json::{Value, json};
use session_context::auth::mint::TokenSpec;

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--store", "memory://", "--jwt-secret", secret()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn connect(server: &Server) -> TcpStream {
    let address = server.base.trim_start_matches("http://");
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Reads until the peer closes or the read times out; returns what arrived.
fn read_all(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    String::from_utf8_lossy(&received).into_owned()
}

#[test]
fn a_client_that_trickles_its_headers_is_disconnected() {
    let server = start(&["--header-timeout", "1s"]);
    let mut stream = connect(&server);
    let started = Instant::now();
    stream.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n").unwrap();
    let answer = read_all(&mut stream);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the connection stayed open for {waited:?}"
    );
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_at_the_connection_cap_do_not_starve_others() {
    let server = start(&["--max-connections", "4", "--header-timeout", "1s"]);
    let mut hogs: Vec<TcpStream> = (0..4).map(|_| connect(&server)).collect();
    for hog in &mut hogs {
        hog.write_all(b"GET /health/live HTTP/1.1\r\n").unwrap();
    }
    let started = Instant::now();
    let live = reqwest::Client::new()
        .get(format!("{}/health/live", server.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("a normal client is served once the slow ones are cut off");
    assert_eq!(live.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
}

#[test]
fn a_body_that_never_finishes_gets_408() {
    let server = start(&["--request-timeout", "1s"]);
    let mut stream = connect(&server);
    let request = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"metadata\":",
        context_path("s1", "?upsert=true"),
        manager()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let started = Instant::now();
    let answer = read_all(&mut stream);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""type":"request_timeout""#), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_and_others_are_still_served() {
    let server = start(&[]);
    let mut stream = connect(&server);
    let huge = "x".repeat(1024 * 1024);
    let request = format!("GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n");
    // The server may close the connection before it has read everything we send.
    let _ = stream.write_all(request.as_bytes());
    let answer = read_all(&mut stream);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    let live = reqwest::get(format!("{}/health/live", server.base)).await.unwrap();
    assert_eq!(live.status(), 200);
}

/// A saas-token for `customer`, signed with the service's key (the binary has no saas key of its own).
fn saas_for(customer: &str) -> String {
    sign(TokenSpec {
        subject: Some(customer.into()),
        ttl: Duration::from_secs(3600),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_token_alone_cannot_delete_and_recreate_a_customer_session() {
    let server = start(&[]);
    let client = reqwest::Client::new();
    let url = format!("{}{}", server.base, context_path("s-cust", ""));
    let created = client
        .put(format!("{url}?upsert=true"))
        .bearer_auth(manager())
        .header("saas-token", saas_for("C1"))
        .json(&json!({"customerId": "C1", "cartId": "cart-1", "metadata": {"version": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // The attack: end the customer's session with a management token alone, then re-create it.
    for (saas, status) in [
        (None, 401),
        (Some("not-a-token".to_owned()), 401),
        (Some(saas_for("C2")), 403),
    ] {
        let mut delete = client.delete(&url).bearer_auth(manager());
        if let Some(token) = saas {
            delete = delete.header("saas-token", token);
        }
        let refused = delete.send().await.unwrap();
        assert_eq!(refused.status(), status);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["code"], json!(status));
        assert_eq!(body["sessionId"], json!("s-cust"));
    }
    let recreate = client
        .put(format!("{url}?upsert=true"))
        .bearer_auth(manager())
        .json(&json!({"cartId": "evil", "metadata": {"version": 1}}))
        .send()
        .await
        .unwrap();
    assert!(recreate.status().is_client_error(), "{}", recreate.status());

    // The customer still reads their own session, unchanged.
    let me = client
        .get(format!("{}{}", server.base, me_path("")))
        .bearer_auth(customer("s-cust", "C1"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["customerId"], json!("C1"));
    assert_eq!(me["cartId"], json!("cart-1"));
    assert_eq!(me["metadata"]["version"], json!(1));

    // With the customer's saas-token the session ends, as before.
    let ended = client
        .delete(&url)
        .bearer_auth(manager())
        .header("saas-token", saas_for("C1"))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 204);
    let gone = client.get(&url).bearer_auth(manager()).send().await.unwrap();
    assert_eq!(gone.status(), 404);
}
