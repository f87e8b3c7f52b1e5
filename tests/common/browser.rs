//! A real browser for the tests that must behave as one: a page served from its own local
//! origin, opened in headless Chromium, which posts what its scripts saw back to the page's
//! server. The browser itself enforces CORS, so what the page reports is what a storefront on
//! that origin would get.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Chromium's command, when it is installed (a test without it says SKIPPED, or fails under
/// `CI=true`).
pub fn chromium() -> Option<&'static str> {
    super::tool_available("chromium").then_some("chromium")
}

/// A web server on its own port that serves one HTML page at `/` and passes every body POSTed
/// to `/report` to [`PageServer::open`].
pub struct PageServer {
    /// `http://127.0.0.1:<port>`, the page's origin.
    pub origin: String,
    reports: mpsc::Receiver<String>,
}

impl PageServer {
    pub fn start(html: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let (tx, reports) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (html, tx) = (html.clone(), tx.clone());
                std::thread::spawn(move || answer(stream, &html, &tx));
            }
        });
        PageServer { origin, reports }
    }

    /// Opens the page (`/` with `query`, e.g. `?api=...`) in headless Chromium and returns the
    /// first report it posts, or `None` when none arrives `within`. The browser is killed either
    /// way.
    pub fn open(&self, chromium: &str, query: &str, within: Duration) -> Option<String> {
        let profile = tempfile::tempdir().expect("a temp dir");
        let mut browser = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-extensions",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("{}/{query}", self.origin))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        let report = self.reports.recv_timeout(within).ok();
        let _ = browser.kill();
        let _ = browser.wait();
        report
    }
}

/// One HTTP/1.1 exchange: the page for `GET /` (any query), 204 for `POST /report` (its body reported),
/// 404 for anything else; then the connection closes.
fn answer(stream: TcpStream, html: &str, reports: &mpsc::Sender<String>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let (status, content) = match request_line.split_whitespace().take(2).collect::<Vec<_>>()[..] {
        ["GET", path] if path == "/" || path.starts_with("/?") => ("200 OK", html),
        ["POST", "/report"] => {
            let _ = reports.send(String::from_utf8_lossy(&body).into_owned());
            ("204 No Content", "")
        }
        _ => ("404 Not Found", ""),
    };
    let _ = (&stream).write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n{content}",
            content.len()
        )
        .as_bytes(),
    );
}
