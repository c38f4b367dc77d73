//! One HTTP connection of the front, from its first byte to its close.
//!
//! hyper's own timers start only once a protocol is chosen, and
//! hyper-util's protocol sniffing (`ReadVersion`) has no timer at all. So
//! the protocol is chosen here, under the header-read deadline, before
//! hyper sees the connection:
//!
//! - plaintext: HTTP/1.1, or with `h2c` HTTP/2 once its whole preface (or
//!   bytes that are not it) arrived;
//! - TLS: the handshake, then HTTP/2 if ALPN chose `h2` and the whole
//!   preface arrived, else HTTP/1.1 once a first byte arrived. The bytes
//!   read to decide are handed to hyper first ([`Prefixed`]).
//!
//! A connection with no request in flight for the idle limit is closed
//! gracefully (HTTP/2 has no read timeout between streams, and a client
//! answering pings would hold its slot for ever); so is every connection
//! when the front drains.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The HTTP/2 connection preface a client starts with.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// Waits (until `deadline`) for enough plaintext bytes to tell the
/// protocol, without consuming them: one for HTTP/1 only; with `h2c`, until
/// the bytes stop looking like the HTTP/2 preface or it is whole. `None`
/// if the client closed or stayed silent.
pub async fn sniff_plain(tcp: &tokio::net::TcpStream, h2c: bool, deadline: Instant) -> Option<Proto> {
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        if !h2c || !PREFACE.starts_with(&buf[..n]) {
            return Some(Proto::Http1);
        }
        if n == PREFACE.len() {
            return Some(Proto::Http2);
        }
        // A prefix of the preface: more is on its way, or never comes.
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads (until `deadline`) what a TLS connection must send first: the
/// whole preface for HTTP/2, at least one byte for HTTP/1.1. `None` if it
/// did not, or sent something else than the preface after choosing `h2`.
pub async fn first_bytes_tls<S: AsyncRead + Unpin>(s: &mut S, proto: Proto, deadline: Instant) -> Option<Vec<u8>> {
    let want = match proto {
        Proto::Http2 => PREFACE.len(),
        Proto::Http1 => 1,
    };
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while got < want {
        match tokio::time::timeout_at(deadline, s.read(&mut buf[got..])).await {
            Ok(Ok(n)) if n > 0 => got += n,
            _ => return None,
        }
    }
    buf.truncate(got);
    if proto == Proto::Http2 && !buf.starts_with(PREFACE) {
        return None;
    }
    Some(buf)
}

/// A stream whose first bytes were already read: they are read again first.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed { prefix, at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Requests in flight on one connection (a streamed body counts until its
/// end), when the last one ended, and when one last made progress.
pub struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
    progress: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            progress: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    /// Marks a request in flight until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.touch();
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// A body frame went through: the exchange is moving.
    pub fn touch(&self) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long requests in flight have not moved (zero with none in flight).
    fn stalled_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            return Duration::ZERO;
        }
        self.progress.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }

    /// How long the connection has had no request in flight.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.last.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

pub struct InFlight(Arc<Activity>);

/// A request or response body that marks its connection as moving with
/// every frame, and (a response's) keeps its exchange in flight until it
/// ends: a long download or an event stream is not an idle connection,
/// and one that stops moving is found by [`drive`] however hyper waits.
pub struct Tracked<B> {
    inner: B,
    activity: Arc<Activity>,
    _in_flight: Option<InFlight>,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, activity: Arc<Activity>, in_flight: Option<InFlight>) -> Tracked<B> {
        Tracked { inner, activity, _in_flight: in_flight }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self.activity.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection hyper serves: a future that ends with it, and a graceful
/// close.
pub trait Graceful: std::future::Future {
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S, E, B> Graceful for auto::Connection<'_, I, S, E>
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Serves one connection (HTTP/1.1 with upgrades, for the proxy's
/// WebSockets; or HTTP/2), until it ends, it was idle for `idle`, an
/// exchange in flight stopped moving for `stall`, the front drains (a
/// graceful close), or the drain period is over (`closing`: dropped).
pub async fn drive<C: Graceful>(
    conn: C,
    activity: Arc<Activity>,
    idle: Duration,
    stall: Duration,
    mut draining: tokio::sync::watch::Receiver<bool>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(idle.min(Duration::from_secs(1)));
    // When a graceful close of an idle connection began: a client that does
    // not play along (an HTTP/2 one that never answers the GOAWAY's ping)
    // is dropped one idle period later.
    let mut ending: Option<Instant> = None;
    loop {
        tokio::select! {
            // A client that times out or hangs up mid-request is not an error of ours.
            _ = conn.as_mut() => return,
            _ = closing.wait_for(|c| *c) => return,
            _ = draining.wait_for(|d| *d), if ending.is_none() => {
                // Draining has its own end (`closing`): no idle drop here.
                ending = Some(Instant::now() + Duration::from_secs(3600));
                conn.as_mut().graceful();
            }
            _ = tick.tick() => {
                // An exchange that stopped moving (a peer that neither
                // sends nor reads): dropped, whatever hyper waits for.
                if activity.stalled_for() >= stall {
                    return;
                }
                match ending {
                None if activity.idle_for() >= idle => {
                    ending = Some(Instant::now());
                    conn.as_mut().graceful();
                }
                Some(at) if at.elapsed() >= idle && activity.idle_for() >= idle => return,
                _ => {}
            }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefixed_bytes_are_read_first_then_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world").await.unwrap();
        drop(a);
        let mut p = Prefixed::new(b"hello".to_vec(), b);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn tls_first_bytes_need_the_whole_preface_for_h2() {
        let deadline = Instant::now() + Duration::from_millis(200);
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, &PREFACE[..10]).await.unwrap();
        // Part of the preface, then silence: nothing by the deadline.
        assert_eq!(first_bytes_tls(&mut b, Proto::Http2, deadline).await, None);
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\n\r\nxxxxxx").await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(200);
        assert_eq!(first_bytes_tls(&mut b, Proto::Http2, deadline).await, None, "not the preface");
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, PREFACE).await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(200);
        assert_eq!(first_bytes_tls(&mut b, Proto::Http2, deadline).await.as_deref(), Some(&PREFACE[..]));
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_with_nothing_in_flight() {
        let a = Arc::new(Activity::default());
        let guard = a.start();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(a.idle_for(), Duration::ZERO, "a request in flight");
        drop(guard);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(a.idle_for() >= Duration::from_millis(30));
    }
}
