//! The HTTP front over TLS: real handshakes with rustls clients, HTTP/2 by
//! ALPN, HSTS, hostile TLS input, and certificates rotated without a restart.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{config, wait_until, TestCluster};
use gatehouse::config::{Config, HttpsConfig, Mode};
use gatehouse_tls::issue::{new_ca, node_certificate, Issued};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn write_pair(dir: &Path, issued: &Issued) {
    // Written beside, then renamed: a reload never sees half a file.
    for (name, body) in [("front.pem", issued.cert_pem.as_str()), ("front.key", issued.key_pem.expose())] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn https(dir: &Path) -> HttpsConfig {
    HttpsConfig {
        cert_file: dir.join("front.pem"),
        key_file: dir.join("front.key"),
        http2: true,
        hsts_max_age_secs: 31_536_000,
        hsts_include_subdomains: false,
    }
}

fn client(ca: &Issued) -> reqwest::ClientBuilder {
    let root = reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap();
    reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(false).add_root_certificate(root)
}

/// A finished TLS handshake with the front, offering `alpn`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &Issued,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(gatehouse_tls::provider())
        .with_protocol_versions(gatehouse_tls::VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
}

/// The serial of the certificate a fresh TLS connection to `addr` is shown.
async fn served_serial(addr: std::net::SocketAddr, ca: &Issued) -> String {
    let tls = tls_connect(addr, ca, &[]).await;
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    gatehouse_tls::identity::parse(&cert).unwrap().serial
}

async fn metric(base: &str, ca: &Issued, name: &str) -> f64 {
    let body = client(ca).build().unwrap().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_front_speaks_https_with_h2_hsts_and_rotates_its_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let ca = new_ca("test CA", 30).unwrap();
    let first = node_certificate(&ca, 1, &["localhost".into()], &["127.0.0.1".parse().unwrap()], 30).unwrap();
    write_pair(certs.path(), &first);
    let c = TestCluster::start_with(1, |cfg| {
        cfg.https = Some(https(certs.path()));
        cfg.metrics_on_front = Some(true);
        // A stalled handshake is cut after this.
        cfg.http.header_read_timeout_ms = 500;
    })
    .await;
    let addr = c.node(1).http_addr();
    let base = format!("https://localhost:{}", addr.port());

    // HTTP/2 by ALPN, HTTP/1.1 for a client that offers only that; HSTS on both.
    let h2 = client(&ca).build().unwrap().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!((h2.status().as_u16(), h2.version()), (200, reqwest::Version::HTTP_2));
    assert_eq!(h2.headers()["strict-transport-security"], "max-age=31536000");
    let h1 = client(&ca).http1_only().build().unwrap().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!((h1.status().as_u16(), h1.version()), (200, reqwest::Version::HTTP_11));
    assert_eq!(h1.headers()["strict-transport-security"], "max-age=31536000");
    // A verify over TLS: a plain 401 without a credential.
    let denied = client(&ca).build().unwrap().get(format!("{base}/auth/verify")).send().await.unwrap();
    assert_eq!(denied.status(), 401);

    // A client that does not trust the CA is refused in the handshake.
    let stranger = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    assert!(stranger.get(format!("{base}/healthz")).send().await.is_err());

    // Plaintext to the TLS port gets no HTTP answer; the front serves on.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await.expect("closed");
    assert!(!buf.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&buf));
    // Garbage in place of a ClientHello.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0xff, 0xff]).await.unwrap();
    garbage.write_all(&[0xab; 4096]).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut Vec::new())).await.expect("closed");
    // A handshake started and never finished is cut by the header-read timeout.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80]).await.unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut Vec::new())).await;
    assert!(cut.is_ok(), "a stalled handshake holds its connection");
    // A client that finishes the handshake and then says nothing is cut
    // too, whichever protocol it chose (hyper's own timers start only once
    // a request begins).
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut silent = tls_connect(addr, &ca, &[alpn]).await;
        let cut = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut Vec::new())).await;
        assert!(cut.is_ok(), "a silent {} connection holds its slot", String::from_utf8_lossy(alpn));
    }
    // An HTTP/2 connection with nothing in flight is closed once idle (it
    // has no read timeout between streams of its own).
    let tls = tls_connect(addr, &ca, &[b"h2"]).await;
    let (_requests, connection) = h2::client::handshake(tls).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection is kept open");
    let ok = client(&ca).build().unwrap().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);

    // Expiry in /metrics.
    let not_after = gatehouse_tls::identity::parse(&first.cert_der).unwrap().not_after as f64;
    let expiry = "gatehouse_tls_certificate_expiry_timestamp_seconds{listener=\"https\"}";
    assert_eq!(metric(&base, &ca, expiry).await, not_after);

    // Rotation: new files are served to new connections, no restart.
    assert_eq!(served_serial(addr, &ca).await, gatehouse_tls::identity::parse(&first.cert_der).unwrap().serial);
    let second = node_certificate(&ca, 1, &["localhost".into()], &["127.0.0.1".parse().unwrap()], 20).unwrap();
    write_pair(certs.path(), &second);
    let want = gatehouse_tls::identity::parse(&second.cert_der).unwrap().serial;
    wait_until("the new certificate is served", Duration::from_secs(15), || {
        let (want, ca) = (want.clone(), ca.clone());
        async move { served_serial(addr, &ca).await == want }
    })
    .await;
    // A half-written rotation (a certificate without its key) is refused;
    // the pair in use stays, and the refusal is counted.
    let third = node_certificate(&ca, 1, &["localhost".into()], &[], 30).unwrap();
    std::fs::write(certs.path().join("front.pem"), &third.cert_pem).unwrap();
    let refused = "gatehouse_tls_reloads_total{listener=\"https\",outcome=\"refused\"}";
    wait_until("the bad pair is refused", Duration::from_secs(15), || {
        let (base, ca) = (base.clone(), ca.clone());
        async move { metric(&base, &ca, refused).await >= 1.0 }
    })
    .await;
    assert_eq!(served_serial(addr, &ca).await, want);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_settings_that_cannot_work_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ca = new_ca("test CA", 30).unwrap();
    let node = node_certificate(&ca, 1, &["localhost".into()], &[], 30).unwrap();
    write_pair(certs.path(), &node);
    let start = |tweak: &dyn Fn(&mut Config)| {
        let mut cfg = config(1, &dir);
        cfg.https = Some(https(certs.path()));
        tweak(&mut cfg);
        async move { gatehouse::Node::start(cfg).await.err().map(|e| format!("{e:#}")) }
    };
    // A key that is not the certificate's.
    let other = node_certificate(&ca, 1, &[], &[], 30).unwrap();
    std::fs::write(certs.path().join("other.key"), other.key_pem.expose()).unwrap();
    let e = start(&|c| c.https.as_mut().unwrap().key_file = certs.path().join("other.key")).await.unwrap();
    assert!(e.contains("is not the key of"), "{e}");
    let e = start(&|c| c.https.as_mut().unwrap().cert_file = certs.path().join("missing.pem")).await.unwrap();
    assert!(e.contains("missing.pem"), "{e}");
    // The CA's own certificate is no certificate to serve.
    std::fs::write(certs.path().join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(certs.path().join("ca.key"), ca.key_pem.expose()).unwrap();
    let e = start(&|c| {
        let h = c.https.as_mut().unwrap();
        h.cert_file = certs.path().join("ca.pem");
        h.key_file = certs.path().join("ca.key");
    })
    .await
    .unwrap();
    assert!(e.contains("CA certificate"), "{e}");
    // No error quotes key material.
    assert!(!e.contains("PRIVATE KEY"), "{e}");

    // Production: a plaintext front off loopback needs TLS or the explicit
    // statement that a TLS-terminating proxy is in front.
    let mut open = config(1, &dir);
    open.http_addr = "0.0.0.0:0".parse().unwrap();
    let e = open.validate().unwrap_err().to_string();
    assert!(e.contains("plaintext") && e.contains("[https]"), "{e}");
    open.http_behind_tls_proxy = true;
    open.validate().unwrap();
    open.https = Some(https(certs.path()));
    assert!(open.validate().unwrap_err().to_string().contains("not both"));
    open.http_behind_tls_proxy = false;
    open.validate().unwrap();
    // Dev mode keeps working without TLS.
    let dev = Config { mode: Mode::Dev, http_addr: "0.0.0.0:0".parse().unwrap(), ..Config::dev() };
    dev.validate().unwrap();
}
