//! Reverse-proxy mode against a real upstream (a hyper server in this
//! process that records what reaches it): requests verified as
//! `/auth/verify` verifies them, the identity injected and every client
//! copy of it removed, Gatehouse's own credential kept back; refusals that
//! never reach the upstream; an upstream down (502) or slow (504); server-
//! sent events streamed as they come; a WebSocket tunnelled, counted
//! against the connection cap, and closed by a revocation and by the
//! drain; 1 GiB up and down with flat memory; every request-smuggling
//! variant refused before the upstream sees it; a TLS handshake that
//! stalls bounded by the connect timeout; and a stateless front's proxy.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{create_key, TestCluster};
use gatehouse::config::{ProxySettings, UpstreamSettings};
use gatehouse_domain::Payload;
use gatehouse_proto::events::RevokeApiKey;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The tests of this file run one at a time: one of them measures the
/// process's resident memory, which the others would move.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Chunks = futures::channel::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>;
type Reply = hyper::Response<http_body_util::Either<http_body_util::Full<Bytes>, StreamBody<Chunks>>>;

/// The upstream: what reached it, and a gate the SSE stream waits on.
#[derive(Clone, Default)]
struct Upstream {
    hits: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    paths: Arc<Mutex<Vec<String>>>,
    next_event: Arc<tokio::sync::Notify>,
    /// Download bytes handed to hyper so far.
    sent: Arc<AtomicU64>,
}

fn full(status: u16, body: impl Into<Bytes>) -> Reply {
    let mut r = hyper::Response::new(http_body_util::Either::Left(http_body_util::Full::new(body.into())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

fn streamed(rx: Chunks) -> Reply {
    hyper::Response::new(http_body_util::Either::Right(StreamBody::new(rx)))
}

impl Upstream {
    async fn start() -> (Upstream, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Upstream::default();
        let shared = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let up = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let up = up.clone();
                        async move { Ok::<_, std::convert::Infallible>(up.answer(req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).with_upgrades().await;
                });
            }
        });
        (up, addr)
    }

    async fn answer(&self, mut req: hyper::Request<hyper::body::Incoming>) -> Reply {
        self.hits.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(req.headers().clone());
        let path = req.uri().path().to_string();
        self.paths.lock().unwrap().push(path.clone());
        match path.as_str() {
            "/slow" => {
                // Longer than the proxy's first-byte timeout.
                tokio::time::sleep(Duration::from_secs(10)).await;
                full(200, "late")
            }
            "/events" => {
                let (mut tx, rx) = futures::channel::mpsc::channel(1);
                let gate = self.next_event.clone();
                tokio::spawn(async move {
                    use futures::SinkExt;
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n")))).await;
                    gate.notified().await;
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: two\n\n")))).await;
                });
                let mut r = streamed(rx);
                r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                r
            }
            "/download" => {
                let total: u64 = req.uri().query().and_then(|q| q.strip_prefix("n=")).unwrap().parse().unwrap();
                let (mut tx, rx) = futures::channel::mpsc::channel(1);
                let counted = self.sent.clone();
                tokio::spawn(async move {
                    use futures::SinkExt;
                    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
                    let mut sent = 0u64;
                    while sent < total {
                        let n = (total - sent).min(chunk.len() as u64) as usize;
                        if tx.send(Ok(Frame::data(chunk.slice(..n)))).await.is_err() {
                            return;
                        }
                        sent += n as u64;
                        counted.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
                streamed(rx)
            }
            "/upload" => {
                let mut body = req.into_body();
                let mut n = 0u64;
                while let Some(frame) = body.frame().await {
                    if let Ok(d) = frame.unwrap().into_data() {
                        n += d.len() as u64;
                    }
                }
                full(200, n.to_string())
            }
            "/socket" => {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(io) = upgrade.await else { return };
                    let mut io = hyper_util::rt::TokioIo::new(io);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut r = full(101, "");
                r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
                r.headers_mut().insert("connection", "upgrade".parse().unwrap());
                // RFC 6455's example key and its answer.
                r.headers_mut().insert("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap());
                r
            }
            "/cookie" => {
                let mut r = full(200, "cookies");
                r.headers_mut()
                    .append("set-cookie", "__Host-gatehouse_session=gs_fixed; Path=/; Secure".parse().unwrap());
                r.headers_mut().append("set-cookie", "gatehouse_csrf=planted".parse().unwrap());
                r.headers_mut().append("set-cookie", "app=1".parse().unwrap());
                r
            }
            _ => {
                let mut r = full(200, format!("{} {}", req.method(), req.uri()));
                r.headers_mut().insert("x-upstream", "yes".parse().unwrap());
                r.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
                r
            }
        }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn last(&self) -> http::HeaderMap {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

fn proxy_settings(upstream: SocketAddr) -> ProxySettings {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    ProxySettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: vec![
            UpstreamSettings {
                host: None,
                path_prefix: "/".into(),
                url: format!("http://{upstream}"),
                pass_credentials: false,
            },
            // Nothing listens there (the port was bound and let go).
            UpstreamSettings {
                host: None,
                path_prefix: "/down".into(),
                url: format!("http://{closed}"),
                pass_credentials: false,
            },
        ],
        connect_timeout: "1s".into(),
        first_byte_timeout: "1s".into(),
        idle_timeout: "5s".into(),
        headers: Default::default(),
        client_cert_file: None,
        client_key_file: None,
        upstream_ca_file: None,
    }
}

async fn cluster(upstream: SocketAddr) -> (TestCluster, String) {
    let c = TestCluster::start_with(1, |c| {
        c.rate_limits.enabled = false;
        // This test's own address is no proxy: its X-Forwarded-For is not believed.
        c.rate_limits.trusted_proxies = Vec::new();
        // Short, so a stream that outlives it shows it is not cut as idle.
        c.http.header_read_timeout_ms = 1_000;
        c.proxy = Some(proxy_settings(upstream));
        c.identity.routes = vec![gatehouse::config::RouteRule {
            path_prefix: "/ops".into(),
            roles: vec!["operator".into()],
            ..Default::default()
        }];
    })
    .await;
    let base = format!("http://{}", c.node(1).proxy_addr().expect("the proxy listens"));
    (c, base)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// A raw request on a new connection: the response's status line.
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.unwrap().unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_are_verified_then_sent_on_with_the_identity_and_without_the_credential() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (up, upstream) = Upstream::start().await;
    let (c, base) = cluster(upstream).await;
    let key = create_key(c.node(1), "ann", &["viewer"]).await;

    // No credential: 401 with WWW-Authenticate; the upstream sees nothing.
    let r = http().get(format!("{base}/echo")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let r = http().get(format!("{base}/echo")).bearer_auth("gk_guessed.guess").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(up.hits(), 0);

    // A key: the upstream gets the identity, never the client's copies of
    // it, nor the key, nor Gatehouse's session cookie.
    let r = http()
        .post(format!("{base}/echo?x=1"))
        .bearer_auth(&key)
        .header("x-auth-user", "mallory")
        .header("x-auth-roles", "admin")
        .header("x_auth_user", "mallory")
        .header("x-forwarded-user", "mallory")
        .header("x-forwarded-for", "10.9.9.9")
        .header("x-auth-email", "m@evil.example")
        .header("cookie", "theme=dark; __Host-gatehouse_session=gs_stolen")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "yes");
    assert!(r.headers().get("keep-alive").is_none(), "hop-by-hop headers stop at the proxy");
    assert_eq!(r.text().await.unwrap(), "POST /echo?x=1");
    let seen = up.last();
    assert_eq!(seen["x-auth-user"], "ann");
    assert_eq!(seen.get_all("x-auth-user").iter().count(), 1);
    assert_eq!(seen["x-auth-roles"], "viewer");
    assert_eq!(seen["x-auth-email"], "ann@example.com");
    assert_eq!(seen["x-forwarded-user"], "ann");
    assert_eq!(seen["x-forwarded-email"], "ann@example.com");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-auth-mfa"], "none");
    assert!(seen.get("x_auth_user").is_none());
    assert!(seen.get("authorization").is_none(), "the key stays with Gatehouse");
    assert!(seen.get("x-hop").is_none());
    assert_eq!(seen["cookie"], "theme=dark");
    assert_eq!(seen["host"], upstream.to_string());

    // A route rule applies as in forward-auth: refused, never sent on.
    let before = up.hits();
    let r = http().get(format!("{base}/ops/x")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = http().get(format!("{base}/a/../ops/x")).bearer_auth(&key).send().await.unwrap();
    assert!(r.status() == 400 || r.status() == 403, "{}", r.status());
    assert_eq!(up.hits(), before);

    // An upstream that is down: 502 at once. One that is slow: 504 at the
    // first-byte timeout. Neither says why beyond that.
    let r = http().get(format!("{base}/down/x")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("bad_gateway") && !body.contains("127.0.0.1"), "{body}");
    let started = std::time::Instant::now();
    let r = http().get(format!("{base}/slow")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // Server-sent events arrive as the upstream sends them: the first is
    // read while the upstream still holds the second back.
    let mut events = http().get(format!("{base}/events")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let first = events.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    // Quiet for longer than twice the listener's idle period: a stream in
    // flight is no idle connection.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    up.next_event.notify_one();
    let second = events.chunk().await.unwrap().unwrap();
    assert_eq!(&second[..], b"data: two\n\n");

    // An upstream cannot plant Gatehouse's own cookies.
    let r = http().get(format!("{base}/cookie")).bearer_auth(&key).send().await.unwrap();
    let set: Vec<&str> = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(set, ["app=1"]);

    // An upgrade to anything beside a WebSocket is no upgrade: the upstream
    // gets a plain GET, and its 101 is refused.
    let addr = base.trim_start_matches("http://").to_string();
    let two = format!(
        "GET /socket HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {key}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nUpgrade: h2c\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    assert!(raw(&addr, two.as_bytes()).await.starts_with("HTTP/1.1 502"));
    assert!(up.last().get("upgrade").is_none(), "{:?}", up.last());

    // A WebSocket upgrade is tunnelled both ways.
    let mut tcp = websocket(&addr, &key).await;
    // A masked text frame "ping", echoed back byte for byte.
    let frame = [0x81u8, 0x84, 1, 2, 3, 4, b'p' ^ 1, b'i' ^ 2, b'n' ^ 3, b'g' ^ 4];
    tcp.write_all(&frame).await.unwrap();
    let mut echoed = [0u8; 10];
    tcp.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, frame);
    // The tunnel still holds its connection's slot: the cap counts it.
    let metrics = c.node(1).api().metrics();
    assert_eq!(metrics.proxy_tunnels.get(), 1);
    assert!(metrics.proxy_connections.get() >= 1);
    // Revoking the key that opened it closes it, with no byte more through.
    revoke_key(c.node(1), &key).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel outlived the revocation");
    assert!(rest.is_empty(), "{rest:?}");
    common::wait_until("the tunnel is gone", Duration::from_secs(5), || {
        let gone = metrics.proxy_tunnels.get() == 0;
        async move { gone }
    })
    .await;
    // A tunnel open when the node shuts down is closed by the drain.
    let other = create_key(c.node(1), "bob", &["viewer"]).await;
    let mut tcp = websocket(&addr, &other).await;
    c.shutdown().await;
    let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel outlived the node's shutdown");
}

/// Revokes `key` through `node`; returns once acknowledged.
async fn revoke_key(node: &gatehouse::Node, key: &str) {
    let key_id = gatehouse_domain::keys::parse_key(key).unwrap().0.to_string();
    let revoke = node.cluster().command(Payload::RevokeApiKey(RevokeApiKey { key_id }));
    node.cluster().propose_one(revoke).await.unwrap();
}

/// A WebSocket opened through the proxy at `addr` with `key`, its 101 read.
async fn websocket(addr: &str, key: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let hello = format!(
        "GET /socket HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {key}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(hello.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tcp.read(&mut b).await.unwrap(), 1, "{}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_smuggling_never_reaches_the_upstream() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (up, upstream) = Upstream::start().await;
    let (c, base) = cluster(upstream).await;
    let key = create_key(c.node(1), "ann", &["viewer"]).await;
    let addr = base.trim_start_matches("http://").to_string();
    let auth = format!("Authorization: Bearer {key}\r\n");
    // The same request, well-formed, passes.
    let ok = format!("POST /echo HTTP/1.1\r\nHost: app\r\n{auth}Content-Length: 5\r\nConnection: close\r\n\r\nhello");
    assert!(raw(&addr, ok.as_bytes()).await.starts_with("HTTP/1.1 200"));
    // Content-Length beside Transfer-Encoding (either order), and two
    // Content-Lengths even when equal, each with a request smuggled behind
    // and after a well-framed request on the same connection: the good one
    // is answered, the ambiguous one gets 400 and the connection closes,
    // so what follows is never read.
    let before = up.hits();
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
    let good = format!("GET /echo HTTP/1.1\r\nHost: app\r\n{auth}\r\n");
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
        "Content-Length: 5\r\nContent-Length: 5",
    ] {
        let request = format!("{good}POST /echo HTTP/1.1\r\nHost: app\r\n{auth}{framing}\r\n\r\n0\r\n\r\n{smuggled}");
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut all)).await.unwrap().unwrap();
        let all = String::from_utf8_lossy(&all);
        let answers: Vec<&str> = all.match_indices("HTTP/1.1 ").map(|(at, _)| &all[at..at + 12]).collect();
        assert_eq!(answers, ["HTTP/1.1 200", "HTTP/1.1 400"], "{framing:?}: {all}");
    }
    assert_eq!(up.hits(), before + 3, "only the well-framed requests reached the upstream");
    // A request asking to change protocol, refused (no credential: 401),
    // does not turn the checks off for what follows on its connection.
    let upgrade = "GET /echo HTTP/1.1\r\nHost: app\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n";
    let ambiguous = format!(
        "POST /echo HTTP/1.1\r\nHost: app\r\n{auth}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(format!("{upgrade}{ambiguous}").as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut all)).await.unwrap().unwrap();
    let all = String::from_utf8_lossy(&all);
    let answers: Vec<&str> = all.match_indices("HTTP/1.1 ").map(|(at, _)| &all[at..at + 12]).collect();
    assert_eq!(answers, ["HTTP/1.1 401", "HTTP/1.1 400"], "{all}");
    assert_eq!(up.hits(), before + 3, "nothing behind the refused upgrade reached the upstream");
    assert!(!up.paths.lock().unwrap().iter().any(|p| p == "/smuggled"), "nothing smuggled reached the upstream");
    let before = up.hits();
    let hostile = [
        format!("POST /echo HTTP/1.1\r\nHost: app\r\n{auth}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        // A Transfer-Encoding other than chunked.
        format!("POST /echo HTTP/1.1\r\nHost: app\r\n{auth}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        format!("POST /echo HTTP/1.1\r\nHost: app\r\n{auth}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
        // Obsolete line folding.
        format!("GET /echo HTTP/1.1\r\nHost: app\r\n{auth}X-Folded: a\r\n b\r\n\r\n"),
        // Invalid bytes in a header value and a header name.
        format!("GET /echo HTTP/1.1\r\nHost: app\r\n{auth}X-Bad: a\x01b\r\n\r\n"),
        format!("GET /echo HTTP/1.1\r\nHost: app\r\n{auth}X Bad: a\r\n\r\n"),
        // A NUL in a value.
        format!("GET /echo HTTP/1.1\r\nHost: app\r\n{auth}X-Bad: a\0b\r\n\r\n"),
    ];
    for request in &hostile {
        let status = raw(&addr, request.as_bytes()).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{status:?} for {request:?}");
    }
    assert_eq!(up.hits(), before, "no hostile request reached the upstream");
    c.shutdown().await;
}

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gibibyte_streams_both_ways_in_flat_memory() {
    let _one = ONE_AT_A_TIME.lock().await;
    const GIB: u64 = 1 << 30;
    let (_up, upstream) = Upstream::start().await;
    let (c, base) = cluster(upstream).await;
    let key = create_key(c.node(1), "ann", &["viewer"]).await;
    let addr = base.trim_start_matches("http://").to_string();
    // The process's peak resident memory while the bytes flow.
    let start = rss();
    let peak = Arc::new(AtomicU64::new(start));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    async fn connect<B>(addr: &str) -> hyper::client::conn::http1::SendRequest<B>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        sender
    }
    // Down: 1 GiB read as it comes.
    let mut sender = connect(&addr).await;
    let req = hyper::Request::get(format!("/download?n={GIB}"))
        .header("host", "app")
        .header("authorization", format!("Bearer {key}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    let mut down_quarter = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            got += d.len() as u64;
        }
        if down_quarter == 0 && got >= GIB / 4 {
            down_quarter = peak.load(Ordering::SeqCst);
        }
    }
    assert_eq!(got, GIB);
    let down_end = peak.load(Ordering::SeqCst);
    // Up: 1 GiB sent as it is made, counted by the upstream.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let up_quarter = Arc::new(AtomicU64::new(0));
    let (quarter, sampled) = (up_quarter.clone(), peak.clone());
    tokio::spawn(async move {
        use futures::SinkExt;
        let chunk = Bytes::from(vec![9u8; 256 * 1024]);
        let chunks = GIB / chunk.len() as u64;
        for i in 0..chunks {
            if i == chunks / 4 {
                quarter.store(sampled.load(Ordering::SeqCst), Ordering::SeqCst);
            }
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
    });
    let mut sender = connect(&addr).await;
    let req = hyper::Request::post("/upload")
        .header("host", "app")
        .header("authorization", format!("Bearer {key}"))
        .body(StreamBody::new(rx))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let counted = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&counted), GIB.to_string());
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let up_end = peak.load(Ordering::SeqCst);
    // The proxy, the upstream and this client all live in this process, so
    // its memory holds all three (and the allocator's own arenas): what
    // must not happen is growth with the bytes moved. After the first
    // quarter of each direction, the peak stays where it was.
    let mib = |b: u64| b >> 20;
    let (down_rest, up_rest) =
        (down_end.saturating_sub(down_quarter), up_end.saturating_sub(up_quarter.load(Ordering::SeqCst)));
    let said = format!(
        "from {} MiB: {} MiB at a quarter of the download, {} MiB at its end; {} MiB at the end of the upload",
        mib(start),
        mib(down_quarter),
        mib(down_end),
        mib(up_end)
    );
    println!("resident memory {said}");
    assert!(down_rest < 32 << 20 && up_rest < 32 << 20, "memory grew with the bytes: {said}");
    assert!(up_end.saturating_sub(start) < 64 << 20, "{said}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_lets_the_upstream_tell_gatehouse_from_anyone_else() {
    let _one = ONE_AT_A_TIME.lock().await;
    use gatehouse_tls::issue::{new_ca, node_certificate};
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("upstream CA", 1).unwrap();
    let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let server = node_certificate(&ca, 1, &[], &[loopback], 1).unwrap();
    let gatehouse = node_certificate(&ca, 2, &[], &[], 1).unwrap();
    for (name, pem) in [
        ("ca.pem", ca.cert_pem.as_str()),
        ("proxy.pem", gatehouse.cert_pem.as_str()),
        ("proxy.key", gatehouse.key_pem.expose()),
    ] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    // The upstream: HTTPS that takes only clients with a certificate from the CA.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        r.add(gatehouse_tls::pem::certificates(&dir.path().join("ca.pem")).unwrap().remove(0)).unwrap();
        Arc::new(r)
    };
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, gatehouse_tls::provider()).build().unwrap();
    std::fs::write(dir.path().join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(dir.path().join("server.key"), server.key_pem.expose()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(gatehouse_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            gatehouse_tls::pem::certificates(&dir.path().join("server.pem")).unwrap(),
            gatehouse_tls::pem::private_key(&dir.path().join("server.key")).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let up = Upstream::default();
    let served = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, up) = (acceptor.clone(), served.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req| {
                    let up = up.clone();
                    async move { Ok::<_, std::convert::Infallible>(up.answer(req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    // An upstream that accepts the connection and never answers the handshake.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled_addr = stalled.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = stalled.accept().await {
            held.push(tcp);
        }
    });
    let d = dir.path().to_path_buf();
    let c = TestCluster::start_with(1, move |c| {
        c.rate_limits.enabled = false;
        c.proxy = Some(ProxySettings {
            upstreams: vec![
                UpstreamSettings {
                    host: None,
                    path_prefix: "/".into(),
                    url: format!("https://{upstream}"),
                    pass_credentials: false,
                },
                UpstreamSettings {
                    host: None,
                    path_prefix: "/stalled".into(),
                    url: format!("https://{stalled_addr}"),
                    pass_credentials: false,
                },
            ],
            upstream_ca_file: Some(d.join("ca.pem")),
            client_cert_file: Some(d.join("proxy.pem")),
            client_key_file: Some(d.join("proxy.key")),
            // Long, so a 504 would show the handshake was not bounded.
            first_byte_timeout: "30s".into(),
            idle_timeout: "30s".into(),
            ..proxy_settings(upstream)
        });
    })
    .await;
    let base = format!("http://{}", c.node(1).proxy_addr().unwrap());
    let key = create_key(c.node(1), "ann", &["viewer"]).await;
    let r = http().get(format!("{base}/echo")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last()["x-auth-user"], "ann");
    // Anyone else, without Gatehouse's certificate, is turned away at the handshake.
    let stranger = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let before = up.hits();
    let forged = stranger.get(format!("https://{upstream}/echo")).header("x-auth-user", "admin").send().await;
    assert!(forged.is_err(), "{forged:?}");
    assert_eq!(up.hits(), before);
    // A handshake that never finishes is bounded by connect_timeout (1 s): 502.
    let r = http().get(format!("{base}/stalled/x")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 502);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_browser_is_sent_to_sign_in_and_the_app_gets_a_signed_token_instead_of_the_key() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (up, upstream) = Upstream::start().await;
    let c = TestCluster::start_with_dir(1, move |dir, c| {
        c.rate_limits.enabled = false;
        c.proxy = Some(proxy_settings(upstream));
        c.pages.public_url = Some("https://login.example.com".into());
        c.pages.return_domains = vec!["example.com".into()];
        let kek = dir.path().join("kek");
        if !kek.exists() {
            std::fs::write(&kek, hex::encode([5u8; 32])).unwrap();
        }
        c.secrets.keys = vec![gatehouse::config::KeySettings { id: "k1".into(), file: kek }];
        c.jwt = Some(gatehouse::config::JwtSettings {
            issuer: "https://login.example.com".into(),
            audience: "apps".into(),
            lifetime: "60s".into(),
            algorithm: "EdDSA".into(),
            header: "Authorization".into(),
            publish_delay: "2s".into(),
        });
    })
    .await;
    let base = format!("http://{}", c.node(1).proxy_addr().unwrap());
    // A browser without a session: to the sign-in page, back here after.
    let r = http()
        .get(format!("{base}/reports?q=1"))
        .header("host", "app.example.com")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("https://login.example.com/login?rd="), "{location}");
    // Over plain HTTP the page it wanted is no return URL the pages keep
    // (only https:// ones on `return_domains`).
    assert_eq!(up.hits(), 0);
    // An app behind the proxy gets a token, never the key that was shown.
    common::wait_until("a first signing key", Duration::from_secs(20), || async {
        let now = gatehouse_cluster::clock::now_ms();
        c.node(1).cluster().view().read().signing_keys().current(now).is_some()
    })
    .await;
    let key = create_key(c.node(1), "ann", &["viewer"]).await;
    let r = http().get(format!("{base}/echo")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    let bearer = seen["authorization"].to_str().unwrap().to_string();
    let token = bearer.strip_prefix("Bearer ").unwrap();
    assert!(!bearer.contains("gk_"), "the key stays with Gatehouse");
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["name"], "ann");
    assert_eq!(claims["aud"], "apps");
    assert_eq!(claims["amr"], serde_json::json!(["key"]));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stateless_front_proxies_as_the_voters_decide() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (up, upstream) = Upstream::start().await;
    let c = TestCluster::start_with_dir(1, |dir, c| {
        c.peer_addr = Some("127.0.0.1:0".parse().unwrap());
        c.fronts_file = Some(common::fronts::fronts_file(dir, &[11]));
        c.rate_limits.enabled = false;
    })
    .await;
    let mut config = common::fronts::front_config(&c, 11);
    config.proxy = Some(ProxySettings {
        upstreams: vec![UpstreamSettings {
            host: Some("app.example".into()),
            path_prefix: "/".into(),
            url: format!("http://{upstream}"),
            pass_credentials: false,
        }],
        ..proxy_settings(upstream)
    });
    let front = gatehouse::FrontNode::start(config).await.expect("front starts");
    assert!(front.wait_ready(Duration::from_secs(10)).await);
    let base = format!("http://{}", front.proxy_addr().expect("the front's proxy listens"));
    let key = create_key(c.node(1), "ann", &["viewer"]).await;
    common::wait_until("the front knows the key", Duration::from_secs(10), || {
        let get = http().get(format!("{base}/echo")).header("host", "app.example").bearer_auth(&key).send();
        async move { get.await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    // A host no upstream serves: a stranger learns only that it must sign
    // in; a caller who passes learns there is nothing there.
    let r = http().get(format!("{base}/echo")).header("host", "other.example").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http().get(format!("{base}/echo")).header("host", "other.example").bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let seen = up.last();
    assert_eq!(seen["x-auth-user"], "ann");
    assert!(seen.get("authorization").is_none(), "the key stays with the front");
    // Forged identity and no credential: refused, nothing reaches the upstream.
    let before = up.hits();
    let r = http()
        .get(format!("{base}/echo"))
        .header("host", "app.example")
        .header("x-auth-user", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(up.hits(), before);
    // Revoked on the voter: the front's proxy refuses the key.
    revoke_key(c.node(1), &key).await;
    common::wait_until("the front refuses the revoked key", Duration::from_secs(10), || {
        let get = http().get(format!("{base}/echo")).header("host", "app.example").bearer_auth(&key).send();
        async move { get.await.is_ok_and(|r| r.status() == 401) }
    })
    .await;
    front.shutdown().await.unwrap();
    c.shutdown().await;
}

/// With `bind_sessions`, the proxy takes a session only from the address
/// and the browser it began in, as `/auth/verify` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bound_session_passes_the_proxy_only_from_where_it_began() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (up, upstream) = Upstream::start().await;
    let c = TestCluster::start_with(1, |c| {
        c.rate_limits.enabled = false;
        c.rate_limits.trusted_proxies = Vec::new();
        c.identity.bind_sessions = true;
        c.proxy = Some(proxy_settings(upstream));
    })
    .await;
    let base = format!("http://{}", c.node(1).proxy_addr().unwrap());
    common::create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let login = from("127.0.0.1")
        .post(format!("{}/api/v1/login", common::base(c.node(1))))
        .header("x-requested-with", "test")
        .header("user-agent", "Browser A")
        .json(&serde_json::json!({ "username": "ann", "password": "pw-of-ann-0001" }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let through = |ip: &'static str, agent: &'static str| {
        let (cookie, url) = (cookie.clone(), format!("{base}/echo"));
        async move { from(ip).get(url).header("cookie", cookie).header("user-agent", agent).send().await.unwrap().status() }
    };
    assert_eq!(through("127.0.0.1", "Browser A").await, 200);
    assert_eq!(up.last()["x-auth-user"], "ann");
    let before = up.hits();
    assert_eq!(through("127.0.0.1", "Browser B").await, 401);
    assert_eq!(through("127.0.0.2", "Browser A").await, 401);
    assert_eq!(up.hits(), before, "a replayed cookie reaches nothing");
    assert_eq!(through("127.0.0.1", "Browser A").await, 200, "still good where it began");
    c.shutdown().await;
}

/// A client that stops reading holds the upstream back: what the
/// upstream hands on stops at what the buffers between them hold, far
/// below what it has to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_holds_the_upstream_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    const GIB: u64 = 1 << 30;
    let (up, upstream) = Upstream::start().await;
    let (c, base) = cluster(upstream).await;
    let key = create_key(c.node(1), "ann", &["viewer"]).await;
    let addr = base.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let ask = format!("GET /download?n={GIB} HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {key}\r\n\r\n");
    tcp.write_all(ask.as_bytes()).await.unwrap();
    // One MiB read, then nothing.
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < 1 << 20 {
        got += tcp.read(&mut buf).await.unwrap();
    }
    // Wait until the upstream has stopped handing bytes on.
    let mut last = u64::MAX;
    let mut still = 0;
    for _ in 0..100 {
        let now = up.sent.load(Ordering::SeqCst);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(still, 5, "the upstream kept sending: {last} bytes");
    assert!(last < 64 << 20, "{} MiB left the upstream for a client that read 1", last >> 20);
    drop(tcp);
    c.shutdown().await;
}
