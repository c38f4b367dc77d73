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
//! - **HTTP/2 limits**: concurrent streams and the header list size.
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

/// Largest request head hyper buffers on an HTTP/1 connection. hyper's
/// floor for this setting is 8 KiB; a head over [`super::MAX_HEADER_BYTES`]
/// but under this is refused by the front's guard, a larger one by hyper.
pub const MAX_HEAD_BUFFER: usize = 2 * super::MAX_HEADER_BYTES;

/// `[http]`: limits of the HTTP front's listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeLimits {
    /// A request head must arrive whole within this (and an idle keep-alive
    /// connection is closed after it).
    pub header_read_timeout_ms: u64,
    /// Open connections at most; more wait to be accepted.
    pub max_connections: usize,
    /// HTTP/2: streams open at once on one connection.
    pub max_concurrent_streams: u32,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits { header_read_timeout_ms: 10_000, max_connections: 4_096, max_concurrent_streams: 128 }
    }
}

impl ServeLimits {
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=300_000).contains(&self.header_read_timeout_ms) {
            return Err("http.header_read_timeout_ms must be 100..=300000".into());
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

/// Serves `router` on `listener` until `shutdown` resolves, then lets open
/// requests finish for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    open_connections: prometheus_client::metrics::gauge::Gauge,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(MAX_HEAD_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(super::MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(Some(20))
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            async move { tower::Service::call(&mut router, req).await }
        });
        let (builder, watcher, gauge) = (builder.clone(), graceful.watcher(), open_connections.clone());
        gauge.inc();
        tokio::spawn(async move {
            // The first byte is awaited here: until hyper knows HTTP/1 from
            // HTTP/2, its own header-read timeout has not started, and a
            // connection that never speaks must not hold a slot for ever.
            let mut first = [0u8; 1];
            if let Ok(Ok(1)) = tokio::time::timeout(header_timeout, tcp.peek(&mut first)).await {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).into_owned();
                // A client that times out or hangs up mid-request is not an error of ours.
                let _ = watcher.watch(conn).await;
            }
            gauge.dec();
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("HTTP connections still open after the drain period; closing them");
    }
}
