//! The HTTP front's accept loop: hyper with the limits a public listener
//! needs, which `axum::serve` does not expose.
//!
//! - **A header-read timeout** (slowloris): a connection that has not sent
//!   its first byte, or a whole request head this long after it started
//!   one, is closed.
//! - **A connection cap**: past `max_connections` open connections, new ones
//!   wait in the kernel's backlog until one closes, instead of each costing a
//!   task and buffers.
//! - **The head limit while reading**: hyper stops buffering a request head
//!   at [`MAX_HEAD_BUFFER`] and answers 431, instead of reading ~400 KiB
//!   before [`super::MAX_HEADER_BYTES`] is checked.
//! - **A request timeout**: a request (its body read and answered) not done
//!   within `request_timeout_ms` gets 408 and the connection is closed, so a
//!   body dribbled a byte at a time cannot hold a slot.
//! - **HTTP/2 only when asked** (`h2c`, or `h2` by ALPN over TLS), with
//!   limits on concurrent streams, the header list size and resets; the
//!   preface is awaited with the header-read timeout.
//! - **TLS when configured** (HTTPS): the handshake must finish within the
//!   header-read timeout too, so a client that starts one and stalls holds
//!   a slot no longer than one that sends nothing. A failed handshake
//!   (plaintext to the TLS port, garbage, an old protocol) ends that
//!   connection only.
//! - **An idle limit**: a connection with no request in flight for
//!   `header_read_timeout_ms` is closed gracefully (HTTP/2 has no read
//!   timeout between streams of its own); see [`super::conn`], which
//!   chooses each connection's protocol under the same deadline.
//! - **Strict framing when asked** (`strict_framing`, the proxy): see
//!   [`super::framing`].
//!
//! Every request carries `ConnectInfo<SocketAddr>` as `axum::serve` gives it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::conn::{drive, first_bytes_tls, sniff_plain, Activity, Prefixed, Proto, Tracked};
use super::framing::{asks_to_switch, Answers, Framing};

/// Largest request head hyper buffers on an HTTP/1 connection. hyper's
/// floor for this setting is 8 KiB; a head over [`super::MAX_HEADER_BYTES`]
/// but under this is refused by the front's guard, a larger one by hyper.
pub const MAX_HEAD_BUFFER: usize = 2 * super::MAX_HEADER_BYTES;

/// `[http]`: limits of the HTTP front's listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeLimits {
    /// A connection must send its first byte, and then each request head
    /// whole, within this.
    pub header_read_timeout_ms: u64,
    /// A request (its body read and answered) must be done within this.
    pub request_timeout_ms: u64,
    /// Open connections at most; more wait to be accepted.
    pub max_connections: usize,
    /// Serve HTTP/2 without TLS (prior knowledge) beside HTTP/1.1. Off by
    /// default: proxies speak HTTP/1.1 to a forward-auth service. (An idle
    /// HTTP/2 connection is closed after `header_read_timeout_ms`, like an
    /// idle HTTP/1.1 one.)
    pub h2c: bool,
    /// HTTP/2: streams open at once on one connection.
    pub max_concurrent_streams: u32,
    /// An exchange in flight that moves no body byte for this long has its
    /// connection dropped (`None`: `request_timeout_ms`). Set by the
    /// listener, not in `[http]` (the proxy uses its idle timeout).
    #[serde(skip)]
    pub stall_ms: Option<u64>,
    /// Refuse with 400 an HTTP/1.1 request with both `Content-Length` and
    /// `Transfer-Encoding`, or more than one `Content-Length`, which hyper
    /// would accept normalised ([`super::framing`]). Set by a listener that
    /// passes bodies on (the proxy), not in `[http]`.
    #[serde(skip)]
    pub strict_framing: bool,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_connections: 4_096,
            h2c: false,
            max_concurrent_streams: 128,
            stall_ms: None,
            strict_framing: false,
        }
    }
}

impl ServeLimits {
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=300_000).contains(&self.header_read_timeout_ms) {
            return Err("http.header_read_timeout_ms must be 100..=300000".into());
        }
        if !(100..=600_000).contains(&self.request_timeout_ms) {
            return Err("http.request_timeout_ms must be 100..=600000".into());
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err("http.max_connections must be 1..=1000000".into());
        }
        if !(1..=10_000).contains(&self.max_concurrent_streams) {
            return Err("http.max_concurrent_streams must be 1..=10000".into());
        }
        Ok(())
    }
}

/// The front's connection series: open now, and accepted since the start.
#[derive(Clone, Default)]
pub struct Connections {
    pub open: prometheus_client::metrics::gauge::Gauge,
    pub accepted: prometheus_client::metrics::counter::Counter,
}

/// Releases a connection's slot and gauge however its task ends (and
/// whatever holds it past its task: see [`Held`]).
struct Slot {
    gauge: prometheus_client::metrics::gauge::Gauge,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Handed to each request that asks to change protocol (it carries
/// `Upgrade`): what takes the connection over (the proxy's WebSocket
/// tunnel) keeps its slot, so the connection cap counts it until it
/// closes, and learns when the listener starts to drain.
#[derive(Clone)]
pub struct Held {
    _slot: Arc<Slot>,
    draining: tokio::sync::watch::Receiver<bool>,
}

impl Held {
    /// Resolves once the listener drains (or is gone).
    pub async fn draining(mut self) {
        let _ = self.draining.wait_for(|d| *d).await;
    }
}

/// The answer to a request not done within `request_timeout_ms`.
fn timed_out() -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({ "error": { "code": "request_timeout", "message": "the request took too long" } });
    let mut resp = (axum::http::StatusCode::REQUEST_TIMEOUT, axum::Json(body)).into_response();
    resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    resp
}

/// What watches a connection while hyper serves it (see [`drive`]).
struct Watch {
    activity: Arc<Activity>,
    idle: Duration,
    stall: Duration,
    draining: tokio::sync::watch::Receiver<bool>,
    closing: tokio::sync::watch::Receiver<bool>,
}

/// An HTTP/1.1 connection's framing checks ([`Framing`]): whether they
/// run, and how its service tells them the answer to a protocol change.
struct Checks {
    strict: bool,
    answers: Arc<Answers>,
}

/// Serves one connection, plain or TLS, in the protocol chosen for it.
async fn serve_io<IO, S, B>(
    io: IO,
    proto: Proto,
    framing: Checks,
    http1: &hyper::server::conn::http1::Builder,
    http2: &auto::Builder<TokioExecutor>,
    service: S,
    w: Watch,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if proto == Proto::Http2 {
        let conn = http2.serve_connection(TokioIo::new(io), service);
        drive(conn, w.activity, w.idle, w.stall, w.draining, w.closing).await;
    } else {
        let io = TokioIo::new(Framing::new(io, framing.strict, framing.answers));
        let conn = http1.serve_connection(io, service).with_upgrades();
        drive(conn, w.activity, w.idle, w.stall, w.draining, w.closing).await;
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open
/// requests finish for up to `drain` and closes what is left. With `tls`,
/// every connection is HTTPS (HTTP/2 when ALPN chose `h2`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Connections,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let request_timeout = Duration::from_millis(limits.request_timeout_ms);
    let stall = Duration::from_millis(limits.stall_ms.unwrap_or(limits.request_timeout_ms));
    let h2c = limits.h2c;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(super::MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(Some(20))
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    // One builder per protocol: the protocol is chosen before hyper sees
    // the connection (see `conn`), never by hyper-util's untimed sniffing.
    // HTTP/1.1 with upgrades (the proxy's WebSockets) from hyper's own
    // builder: hyper-util's upgradeable connections sniff the version again.
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(MAX_HEAD_BUFFER);
    let (http1, http2) = (Arc::new(http1), Arc::new(builder.http2_only()));
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (drain_tx, draining) = tokio::sync::watch::channel(false);
    let (force_close, closing) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // The cap: no accept until a connection slot is free.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let activity = Arc::new(Activity::default());
        let in_flight = activity.clone();
        connections.accepted.inc();
        connections.open.inc();
        let slot = Arc::new(Slot { gauge: connections.open.clone(), _permit: permit });
        let held = Held { _slot: slot.clone(), draining: draining.clone() };
        let answers = Arc::new(Answers::default());
        let told = answers.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            // Its answer decides what the connection's next bytes are.
            let switching = asks_to_switch(&req).then(|| told.clone());
            if switching.is_some() {
                req.extensions_mut().insert(held.clone());
            }
            let mut router = router.clone();
            let busy = in_flight.start();
            let activity = in_flight.clone();
            // Bodies mark the connection as moving (a GET has none to wrap).
            let req = if hyper::body::Body::is_end_stream(req.body()) {
                req.map(axum::body::Body::new)
            } else {
                req.map(|b| axum::body::Body::new(Tracked::new(b, activity.clone(), None)))
            };
            async move {
                let answer = tokio::time::timeout(request_timeout, tower::Service::call(&mut router, req)).await;
                let resp = answer.map_or_else(|_| timed_out(), |r| r.unwrap_or_else(|e| match e {}));
                if let Some(answers) = switching {
                    answers.answered(resp.status());
                }
                // A streamed answer keeps its exchange in flight until it ends.
                let resp = if hyper::body::Body::is_end_stream(resp.body()) {
                    drop(busy);
                    resp
                } else {
                    resp.map(|b| axum::body::Body::new(Tracked::new(b, activity, Some(busy))))
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let (http1, http2, tls) = (http1.clone(), http2.clone(), tls.clone());
        let watch =
            Watch { activity, idle: header_timeout, stall, draining: draining.clone(), closing: closing.clone() };
        let checks = Checks { strict: limits.strict_framing, answers };
        tokio::spawn(async move {
            let _slot = slot;
            // Everything before hyper's own timers run shares the
            // header-read deadline: the first bytes, the TLS handshake, the
            // bytes that choose the protocol.
            let deadline = tokio::time::Instant::now() + header_timeout;
            let Some(acceptor) = tls else {
                let Some(proto) = sniff_plain(&tcp, h2c, deadline).await else { return };
                serve_io(tcp, proto, checks, &http1, &http2, service, watch).await;
                return;
            };
            let mut stream = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    static FAILED: gatehouse_cluster::throttle::Throttle =
                        gatehouse_cluster::throttle::Throttle::new(1_000);
                    if let Some(suppressed) = FAILED.allow() {
                        tracing::info!(%peer, error = %e, suppressed, "TLS handshake failed");
                    }
                    return;
                }
                Err(_) => return,
            };
            let proto = if stream.get_ref().1.alpn_protocol() == Some(b"h2") { Proto::Http2 } else { Proto::Http1 };
            let Some(first) = first_bytes_tls(&mut stream, proto, deadline).await else { return };
            serve_io(Prefixed::new(first, stream), proto, checks, &http1, &http2, service, watch).await;
        });
    }
    drop(listener);
    // Drain: every connection finishes what it is doing and closes; past
    // the drain period, what is left is dropped.
    let _ = drain_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, permits.acquire_many(all)).await.is_err() {
        tracing::warn!("HTTP connections still open after the drain period; closing them");
        let _ = force_close.send(true);
    }
}
