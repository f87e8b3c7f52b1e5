//! Serving connections: the accept loop and the limits that keep slow, idle or hostile clients
//! from locking everyone else out.
//!
//! Every connection is watched from the moment it is accepted, whatever protocol it turns out to
//! speak (the first bytes decide between HTTP/1 and HTTP/2, and that read has a deadline too):
//! - until its first complete request head it has `--header-timeout`, whatever it sends
//!   (nothing, one byte, half an HTTP/2 preface, the preface and SETTINGS but no request);
//! - on HTTP/1, each later request head must also arrive within `--header-timeout` of its first byte;
//! - with no request in flight, it is closed after `--idle-timeout` (HTTP/1 keep-alive and HTTP/2
//!   alike; HTTP/2 PINGs and other frames do not count as use).
//!
//! At the connection cap (`--max-connections`) a new connection does not wait behind the ones
//! that hold the slots: the oldest connection that has no request in flight (idle, or still
//! waiting for its first request) is closed to make room, so a flood of idle or half-open
//! connections cannot keep a real client out. Only when every connection has a request in flight
//! does a new one wait for a slot. On shutdown, requests in flight may finish (for at most
//! `drain_deadline`). The per-request deadline is a middleware in `http`; the HTTP/2 stream and
//! body-memory limits are set here and in `http::body_budget`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::ServiceExt;

/// Limits on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest a client may take to send a complete request head.
    pub header_timeout: Duration,
    /// Longest a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Most concurrent streams on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Most bytes of request headers (431 beyond).
    pub max_header_bytes: usize,
    /// Longest requests in flight may take to finish after shutdown begins.
    pub drain_deadline: Duration,
}

/// How long a connection being closed for a deadline or to make room may take to say goodbye
/// (an HTTP/2 GOAWAY) before it is dropped.
const GOODBYE: Duration = Duration::from_millis(250);

/// Serves `app` on `listener` until `shutdown` completes, then lets requests in flight finish
/// (for at most `limits.drain_deadline`).
pub async fn serve<F>(listener: TcpListener, app: Router, limits: ConnectionLimits, shutdown: F)
where
    F: Future<Output = ()> + Send,
{
    let registry = Arc::new(Registry::default());
    let builder = Arc::new(builder(&limits));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tokio::select! {
            () = registry.make_room(limits.max_connections) => {}
            () = &mut shutdown => break,
        }
        let _ = stream.set_nodelay(true);
        let watched = registry.register();
        tokio::spawn(serve_connection(
            stream,
            app.clone(),
            Arc::clone(&builder),
            watched,
            Arc::clone(&registry),
            limits,
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(limits.drain_deadline, registry.drained())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the drain deadline; stopping anyway");
    }
}

/// The protocol settings: HTTP/1 and HTTP/2 (cleartext, prior knowledge), with the header and
/// stream limits. The deadlines are not hyper's: hyper's HTTP/1 header timer also runs while a
/// keep-alive connection is idle, and it has none for the protocol detection nor for HTTP/2.
fn builder(limits: &ConnectionLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        // hyper answers 431 when the head does not fit; it needs at least 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Flow control bounds what one connection can make us buffer before the handlers read
        // it: one 64 KiB window per stream, and the connection's at most 16 of those.
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(16 * 65_535)
        .max_send_buf_size(64 * 1024);
    builder
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    builder: Arc<Builder<TokioExecutor>>,
    watched: Arc<Watched>,
    registry: Arc<Registry>,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let io = TokioIo::new(Tracked {
        inner: stream,
        watched: Arc::clone(&watched),
    });
    let service = {
        let watched = Arc::clone(&watched);
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let guard = watched.begin_request(request.version() == hyper::Version::HTTP_2);
            let response = app.clone().oneshot(request.map(Body::new));
            async move {
                let response = response.await;
                drop(guard);
                response
            }
        })
    };
    let mut connection = pin!(builder.serve_connection(io, service));
    let grace = tokio::select! {
        ended = connection.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            None
        }
        () = watched.expired(&limits) => Some(GOODBYE),
        () = watched.evicted.notified() => Some(GOODBYE),
        _ = stop.wait_for(|stopped| *stopped) => Some(limits.drain_deadline),
    };
    if let Some(grace) = grace {
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(grace, connection).await;
    }
    registry.remove(watched.id);
}

/// What the server knows about one connection, shared by its socket, its requests and the
/// registry. Times are milliseconds since `Watched::opened` (0 = not set).
struct Watched {
    id: u64,
    opened: Instant,
    in_flight: AtomicUsize,
    served_any: AtomicBool,
    http2: AtomicBool,
    /// When the connection last became free of requests (accepted, or its last request ended).
    idle_since: AtomicU64,
    /// On HTTP/1: when the first byte of the next request head arrived.
    head_started: AtomicU64,
    /// Set once the registry asked it to close.
    evicting: AtomicBool,
    evicted: Notify,
}

impl Watched {
    fn now(&self) -> u64 {
        // At least 1, so that 0 keeps meaning "not set".
        u64::try_from(self.opened.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.opened + Duration::from_millis(millis)
    }

    /// A request head is complete and its request begins; the guard ends it.
    fn begin_request(self: &Arc<Self>, http2: bool) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served_any.store(true, Ordering::SeqCst);
        self.http2.store(http2, Ordering::Relaxed);
        self.head_started.store(0, Ordering::SeqCst);
        RequestGuard(Arc::clone(self))
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 && self.head_started.load(Ordering::Relaxed) == 0 {
            self.head_started.store(self.now(), Ordering::SeqCst);
        }
    }

    fn is_free(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && !self.evicting.load(Ordering::SeqCst)
    }

    /// When the connection must close if nothing changes; `None` while a request is in flight.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if !self.served_any.load(Ordering::SeqCst) {
            return Some(self.opened + limits.header_timeout);
        }
        let head_started = self.head_started.load(Ordering::SeqCst);
        if head_started != 0 && !self.http2.load(Ordering::Relaxed) {
            return Some(self.at(head_started) + limits.header_timeout);
        }
        Some(self.at(self.idle_since.load(Ordering::SeqCst)) + limits.idle_timeout)
    }

    /// Completes when the connection has passed its deadline with no request in flight.
    async fn expired(&self, limits: &ConnectionLimits) {
        loop {
            // While a request runs (bounded by the request timeout) look again regularly.
            let wake = self
                .deadline(limits)
                .unwrap_or_else(|| Instant::now() + limits.header_timeout.min(limits.idle_timeout));
            tokio::time::sleep_until(wake).await;
            if self.deadline(limits).is_some_and(|deadline| deadline <= Instant::now()) {
                return;
            }
        }
    }
}

/// Ends a request when dropped (also when its future is dropped half-way).
struct RequestGuard(Arc<Watched>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let watched = &self.0;
        watched.idle_since.store(watched.now(), Ordering::SeqCst);
        watched.head_started.store(0, Ordering::SeqCst);
        watched.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The open connections, so that at the cap one without a request in flight can make room.
#[derive(Default)]
struct Registry {
    connections: Mutex<HashMap<u64, Arc<Watched>>>,
    next_id: AtomicU64,
    /// Signalled when a connection closes.
    closed: Notify,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Watched>>> {
        // Every change under the lock is one insert or remove: a poisoned lock is still sound.
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn register(&self) -> Arc<Watched> {
        let watched = Arc::new(Watched {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served_any: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            idle_since: AtomicU64::new(1),
            head_started: AtomicU64::new(0),
            evicting: AtomicBool::new(false),
            evicted: Notify::new(),
        });
        self.lock().insert(watched.id, Arc::clone(&watched));
        watched
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.closed.notify_waiters();
    }

    /// Returns once there is a slot for one more connection: at once below the cap; else
    /// after closing the connection that has been free of requests the longest; else (every
    /// connection has a request in flight) when one closes.
    async fn make_room(&self, max: usize) {
        loop {
            // Registered before looking, so that a close in between is not missed.
            let mut closed = pin!(self.closed.notified());
            closed.as_mut().enable();
            {
                let connections = self.lock();
                let open = connections
                    .values()
                    .filter(|c| !c.evicting.load(Ordering::SeqCst))
                    .count();
                if open < max {
                    return;
                }
                let oldest_free = connections
                    .values()
                    .filter(|c| c.is_free())
                    .min_by_key(|c| c.at(c.idle_since.load(Ordering::SeqCst)));
                if let Some(victim) = oldest_free {
                    victim.evicting.store(true, Ordering::SeqCst);
                    victim.evicted.notify_one();
                    return;
                }
            }
            closed.await;
        }
    }

    /// Completes when every connection has closed.
    async fn drained(&self) {
        loop {
            let mut closed = pin!(self.closed.notified());
            closed.as_mut().enable();
            if self.lock().is_empty() {
                return;
            }
            closed.await;
        }
    }
}

/// The socket, noting when bytes arrive (for the HTTP/1 header deadline).
struct Tracked {
    inner: TcpStream,
    watched: Arc<Watched>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watched.on_read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
