//! Slow and hostile clients against the real binary: trickled headers are cut off, clients at
//! the connection cap do not starve others for longer than the header deadline, and a body that
//! never finishes gets 408 with the contract's body.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::server::{Server, secret};
use common::{context_path, manager};

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
