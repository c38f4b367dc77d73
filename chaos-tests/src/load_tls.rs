//! The TLS benchmark scenarios' parts: HTTPS keep-alive clients, new TLS
//! connections per second (full handshakes and resumed ones), and the bare
//! hyper + rustls server they are measured against (the same rustls server
//! configuration Gatehouse's front uses, answering 200 to everything).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::figures::{histogram, merge, Figures};

/// A client trusting the CA in `ca_file` only; `resume`: whether it keeps
/// sessions to resume (otherwise every handshake is a full one).
pub fn client(ca_file: &std::path::Path, resume: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut config = rustls::ClientConfig::builder_with_provider(gatehouse_tls::provider())
        .with_protocol_versions(gatehouse_tls::VERSIONS)?
        .with_root_certificates(gatehouse_tls::pem::roots(ca_file)?)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Connects to `addr` (`ip:port`) and, with `tls`, finishes a handshake
/// naming the IP; returns an HTTP/1.1 sender whose connection runs on a task.
pub async fn connect(
    addr: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    match tls {
        None => http1(stream).await,
        Some(config) => {
            let ip: std::net::SocketAddr = addr.parse()?;
            let name = ServerName::IpAddress(ip.ip().into());
            let stream = tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream).await?;
            http1(stream).await
        }
    }
}

async fn http1<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// New TLS connections per second to `addr`: `clients` each connect,
/// handshake, send one `GET path`, read the answer and close, as fast as
/// they can, for `duration`. Latency is the whole of it, from the connect.
/// Whether handshakes are full or resumed is `tls`'s (see [`client`]).
pub async fn handshakes(
    addr: &str,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    use http_body_util::{BodyExt, Empty};
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (addr, uri, tls) = (addr.to_string(), format!("https://{addr}{path}"), tls.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                let one = async {
                    let mut sender = connect(&addr, Some(&tls)).await?;
                    let req = hyper::Request::get(&uri)
                        .header("connection", "close")
                        .body(Empty::<bytes::Bytes>::new())
                        .expect("valid request");
                    let resp = sender.send_request(req).await?;
                    let status = resp.status();
                    let _ = resp.into_body().collect().await;
                    anyhow::ensure!(status == hyper::StatusCode::OK, "answered {status}");
                    Ok::<_, anyhow::Error>(())
                };
                match one.await {
                    Ok(()) => {
                        ok += 1;
                        hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                    }
                    Err(_) => errors += 1,
                }
            }
            (hist, ok, errors, 0)
        }));
    }
    merge(tasks, started, clients).await
}

/// The bare server every TLS figure is set beside: Gatehouse's own front
/// configuration (`gatehouse_tls::server::https`) with `material`, hyper
/// HTTP/1.1 behind it, 200 to every request.
pub async fn serve_baseline(
    listener: tokio::net::TcpListener,
    material: gatehouse_tls::Material,
) -> anyhow::Result<()> {
    use http_body_util::Empty;
    use hyper::service::service_fn;
    let acceptor = tokio_rustls::TlsAcceptor::from(gatehouse_tls::server::https(&material, false)?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else { return };
            let svc = service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<bytes::Bytes>::new()))
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
