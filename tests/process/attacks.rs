//! Attacks against the real binary, each as an attacker would try it: trickled headers are cut
//! off, clients at the connection cap do not starve others for longer than the header deadline,
//! a body that never finishes gets 408 with the contract's body, and a management token cannot
//! take over a customer's session by deleting and re-creating it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::server::{Server, secret};
use crate::common::{context_path, customer, manager, me_path, sign};
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

// ---- connections: deadlines, the cap, HTTP/2 ----------------------------------------------

/// The HTTP/2 client preface, and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// What a hostile client sends on a connection it then leaves open.
fn hog_opening(kind: usize) -> Vec<u8> {
    match kind % 5 {
        0 => Vec::new(),
        1 => b"P".to_vec(),
        2 => H2_PREFACE[..10].to_vec(),
        3 => [H2_PREFACE, H2_EMPTY_SETTINGS].concat(),
        _ => b"GET /health/live HTTP/1.1\r\nHost: x\r\n".to_vec(),
    }
}

/// Whether the server has closed `stream` (a read sees the end, or a reset).
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An HTTP/2 server may send its SETTINGS or a GOAWAY first: read on.
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends one request on a fresh connection and says how long the answer took.
async fn probe(client: &reqwest::Client, url: &str) -> Duration {
    let started = Instant::now();
    let answer = client.get(url).timeout(Duration::from_secs(20)).send().await;
    let status = answer.map(|a| a.status().as_u16()).unwrap_or(0);
    assert!(matches!(status, 200 | 401), "{url}: {status}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_and_half_open_connections_do_not_lock_the_service_out() {
    const HOGS: usize = 3000;
    let header_timeout = Duration::from_secs(2);
    let server = start(&["--max-connections", "1000", "--header-timeout", "2s"]);
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut hogs = Vec::with_capacity(HOGS);
    for kind in 0..HOGS {
        use tokio::io::AsyncWriteExt;
        let mut hog = tokio::net::TcpStream::connect(&address).await.unwrap();
        let opening = hog_opening(kind);
        if !opening.is_empty() {
            // The server may already have closed an early hog to make room.
            let _ = hog.write_all(&opening).await;
        }
        hogs.push(hog);
    }
    // A client that opens a new connection for every request keeps being answered, far within
    // a second of the header timeout, while the hogs hold (or try to hold) every slot.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let mut slowest = Duration::ZERO;
    for round in 0..10 {
        for path in ["/health/live", "/health/ready", &context_path("nobody", "")] {
            let waited = probe(&client, &format!("{}{path}", server.base)).await;
            slowest = slowest.max(waited);
        }
        // More hogs arrive while the probes run.
        for kind in 0..100 {
            use tokio::io::AsyncWriteExt;
            if let Ok(mut hog) = tokio::net::TcpStream::connect(&address).await {
                let _ = hog.write_all(&hog_opening(kind + round)).await;
                hogs.push(hog);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        slowest < header_timeout + Duration::from_secs(1),
        "a probe waited {slowest:?}"
    );
    // And the server closes every hog by itself: none of them sent a complete request head.
    let mut open = 0;
    for hog in &mut hogs {
        if !closed_by_server(hog, header_timeout + Duration::from_secs(2)).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} of {} idle connections were never closed", hogs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_complete_request_head_is_closed_at_the_header_timeout() {
    let server = start(&["--header-timeout", "1s", "--idle-timeout", "30s"]);
    let address = server.base.trim_start_matches("http://").to_owned();
    for kind in 0..5 {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream.write_all(&hog_opening(kind)).await.unwrap();
        let started = Instant::now();
        assert!(
            closed_by_server(&mut stream, Duration::from_secs(5)).await,
            "opening {kind} was never closed"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
            "opening {kind} closed after {waited:?}"
        );
    }
}

#[test]
fn http1_keep_alive_lives_until_the_idle_timeout_and_a_later_partial_head_until_the_header_timeout() {
    let server = start(&["--header-timeout", "1s", "--idle-timeout", "3s"]);
    let request = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut stream = connect(&server);
    let read_answer = |stream: &mut TcpStream| {
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    stream.write_all(request).unwrap();
    assert!(read_answer(&mut stream).starts_with("HTTP/1.1 200"));
    // Idle for longer than the header timeout: still open.
    std::thread::sleep(Duration::from_millis(1800));
    stream.write_all(request).unwrap();
    assert!(read_answer(&mut stream).starts_with("HTTP/1.1 200"));
    // A later request head that never completes is cut at the header timeout, not the idle one.
    stream.write_all(b"GET /health/live HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    assert_eq!(read_all(&mut stream), "");
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(2500), "closed after {waited:?}");
    // An idle keep-alive connection is closed at the idle timeout.
    let mut idle = connect(&server);
    idle.write_all(request).unwrap();
    assert!(read_answer(&mut idle).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert_eq!(read_all(&mut idle), "");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2800) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

/// An HTTP/2 connection (cleartext, prior knowledge) to `server`, the task that runs it (it
/// ends when the server closes the connection), and the stream limit the server announced.
async fn h2_connect(
    server: &Server,
) -> (
    h2::client::SendRequest<axum::body::Bytes>,
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<usize>,
) {
    let address = server.base.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let (limit_tx, limit_rx) = tokio::sync::watch::channel(0);
    let running = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| {
            let polled = std::pin::Pin::new(&mut connection).poll(cx);
            let _ = limit_tx.send(connection.max_concurrent_send_streams());
            polled
        })
        .await;
    });
    (client, running, limit_rx)
}

fn h2_request(server: &Server, method: &str, path: &str, token: &str) -> axum::http::Request<()> {
    axum::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", server.base))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_at_the_idle_timeout() {
    let server = start(&["--header-timeout", "1s", "--idle-timeout", "2s"]);
    let (mut client, running, _) = h2_connect(&server).await;
    let request = h2_request(&server, "GET", "/health/live", "");
    let (answer, _) = client.send_request(request, true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
    let started = Instant::now();
    // Idle past the header timeout, the connection stays; at the idle timeout it goes.
    let gone = tokio::time::timeout(Duration::from_secs(6), running).await;
    assert!(gone.is_ok(), "the idle HTTP/2 connection stayed open");
    drop(client);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1800), "closed after {waited:?}");
}

/// The resident memory of a process, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_flood_is_bounded_by_the_inflight_body_budget() {
    const CONNECTIONS: usize = 100;
    const STREAMS: usize = 200;
    const BUDGET: u64 = 8 * 1024 * 1024;
    let budget = BUDGET.to_string();
    let server = start(&["--max-inflight-body-bytes", &budget, "--request-timeout", "30s"]);
    let token = crate::common::anonymous("flood");
    // Warm up, then measure.
    let (mut warm, _running, limit) = h2_connect(&server).await;
    let (answer, _) = warm
        .send_request(h2_request(&server, "GET", "/health/live", ""), true)
        .unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
    // The server's SETTINGS may be applied only after the first answer: wait for them.
    let mut limit = limit;
    let announced = tokio::time::timeout(Duration::from_secs(5), limit.wait_for(|&n| n == 16))
        .await
        .is_ok();
    assert!(announced, "the server's stream limit is {}, not 16", *limit.borrow());
    let before = resident_bytes(server.child.id());

    let chunk = axum::body::Bytes::from(vec![b' '; 60 * 1024]);
    let mut held = Vec::new();
    let mut opened = 0;
    for _ in 0..CONNECTIONS {
        let (mut client, _running, _) = h2_connect(&server).await;
        for _ in 0..STREAMS {
            // The server allows only so many streams at once: stop where it makes us wait.
            let Ok(Ok(ready)) = tokio::time::timeout(Duration::from_millis(50), client.clone().ready()).await else {
                break;
            };
            client = ready;
            let mut request = h2_request(&server, "PATCH", &me_path(""), &token);
            request
                .headers_mut()
                .insert("content-length", (64 * 1024).to_string().parse().unwrap());
            let Ok((answer, mut body)) = client.send_request(request, false) else {
                break;
            };
            let _ = body.send_data(chunk.clone(), false);
            opened += 1;
            held.push((answer, body));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = resident_bytes(server.child.id());
    let grown = after.saturating_sub(before);
    println!(
        "{opened} streams sent; resident memory grew by {} MiB",
        grown / (1024 * 1024)
    );
    assert!(
        grown < 6 * BUDGET,
        "memory grew by {} MiB with a budget of {} MiB",
        grown / (1024 * 1024),
        BUDGET / (1024 * 1024)
    );
    // Past the budget, requests are refused at once with 503 and Retry-After.
    let mut answers = tokio::task::JoinSet::new();
    let mut bodies = Vec::new();
    for (answer, body) in held {
        bodies.push(body);
        answers.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(3), answer).await {
                Ok(Ok(answer)) => answer.status() == 503 && answer.headers().contains_key("retry-after"),
                _ => false,
            }
        });
    }
    let refused = answers.join_all().await.into_iter().filter(|refused| *refused).count();
    assert!(refused > 0, "no request was refused for lack of budget");
    // The service still answers.
    drop(bodies);
    let live = reqwest::get(format!("{}/health/live", server.base)).await.unwrap();
    assert_eq!(live.status(), 200);
}

/// Every label the service makes from a request comes from a fixed set: thousands of odd
/// requests (made-up methods, unknown paths, random tenants and session ids, with and without
/// tokens) leave the number of series in `/metrics` as it was after one request of each kind.
#[test]
fn odd_requests_do_not_grow_the_metrics() {
    let server = start(&[]);
    let send = |request: String| {
        let mut stream = connect(&server);
        stream.write_all(request.as_bytes()).unwrap();
        read_all(&mut stream)
    };
    let odd = |i: usize| -> String {
        let path = match i % 5 {
            0 => "/health/live".to_owned(),
            1 => format!("/nowhere/{i}/x{i}"),
            2 => format!("/session-context/t{i:08}/context/s{i}"),
            3 => format!("/session-context/shop/context/s{i}/attributes/a{i}"),
            _ => format!("/session-context/shop/me/context?x{i}=y"),
        };
        let method = match i % 3 {
            0 => format!("XMETHOD{i}"),
            1 => "GET".to_owned(),
            _ => "DELETE".to_owned(),
        };
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t{i}\r\nConnection: close\r\n\r\n")
    };
    let series = |metrics: &str| metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
    let scrape = || send("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into());
    // One of each kind (and one scrape, which is itself a request), then thousands more.
    for i in 0..15 {
        send(odd(i));
    }
    scrape();
    let before = scrape();
    for i in 15..3_015 {
        let answer = send(odd(i));
        assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    }
    scrape();
    let after = scrape();
    assert_eq!(series(&after), series(&before), "before:\n{before}\nafter:\n{after}");
    assert!(!after.contains("XMETHOD"), "a made-up method became a label");
    assert!(after.contains(r#"method="other""#), "{after}");
    assert!(after.contains(r#"route="unmatched""#), "{after}");
}
