//! `proxy`: Gatehouse's reverse-proxy mode beside nginx `proxy_pass` and
//! two bare hyper proxies to the same bare upstream, same run. nginx is
//! Debian's, with a keep-alive pool to the upstream as Gatehouse keeps
//! one, and as many workers as cores; [`spawn`] and [`temp_paths`] also
//! start the nginx of the tests that put it in front of Gatehouse.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A running nginx, stopped when dropped.
pub type Nginx = crate::load::Killed;

fn binary() -> anyhow::Result<&'static str> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow::anyhow!("nginx is not installed: run scripts/deps.sh"))
}

/// The `http { }` lines that keep nginx's temporary files in `dir` (by
/// default they go under its install prefix, which a test may not write).
pub fn temp_paths(dir: &Path) -> String {
    let d = dir.display();
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .map(|kind| format!("    {kind}_temp_path {d}/{};\n", kind.trim_start_matches("client_")))
        .concat()
}

/// nginx started on `conf` with `dir` as its prefix, its output dropped;
/// stopped when dropped.
pub fn spawn(dir: &Path, conf: &Path) -> anyhow::Result<Nginx> {
    let child = Command::new(binary()?)
        .arg("-c")
        .arg(conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(crate::load::Killed(child))
}

/// nginx in `dir` on `port`, proxying everything to `upstream` (host:port).
pub async fn nginx(dir: &Path, port: u16, upstream: &str) -> anyhow::Result<Nginx> {
    let d = dir.display();
    let temp_paths = temp_paths(dir);
    let conf = format!(
        r#"
daemon off;
master_process on;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp_paths}    upstream app {{ server {upstream}; keepalive 256; keepalive_requests 100000000; }}
    # The load's keep-alive connections stay open for the whole step (by
    # default nginx closes one after 1000 requests).
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let nginx = spawn(dir, &path)?;
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "nginx did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(nginx)
}

/// How a bare hyper proxy holds its upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Upstreams {
    /// hyper-util's pooled client, as Gatehouse's `[proxy]` uses: any
    /// client connection's request takes any idle upstream connection,
    /// each driven by a task of its own.
    Pooled,
    /// One upstream connection per client connection, driven in the same
    /// task: hyper at its leanest, no pool, no channel between tasks.
    PerConnection,
}

/// The proxy's own ceilings: a bare hyper HTTP/1.1 server passing every
/// request to `upstream` (host:port), with nothing else: no verification,
/// no header pass, no timeouts. Run in a process of its own
/// (`gatehouse-load baseline-proxy`), so that what separates it from nginx
/// is hyper and tokio, and what separates Gatehouse from it is Gatehouse's
/// own work.
pub async fn serve_baseline_proxy(
    listener: tokio::net::TcpListener,
    upstream: String,
    upstreams: Upstreams,
) -> anyhow::Result<()> {
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let pool: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(connector);
    let authority: hyper::http::uri::Authority = upstream.parse()?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let server = hyper::server::conn::http1::Builder::new();
        if upstreams == Upstreams::PerConnection {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(to) = tokio::net::TcpStream::connect(upstream.as_str()).await else { return };
                let _ = to.set_nodelay(true);
                let Ok((sender, upstream)) = hyper::client::conn::http1::handshake(TokioIo::new(to)).await else {
                    return;
                };
                // hyper's server asks for one answer at a time.
                let sender = std::sync::Arc::new(std::sync::Mutex::new(sender));
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let answer = sender.lock().expect("not poisoned").send_request(req);
                    async move { Ok::<_, anyhow::Error>(answer.await?) }
                });
                tokio::select! {
                    _ = server.serve_connection(TokioIo::new(stream), svc) => {}
                    _ = upstream => {}
                }
            });
            continue;
        }
        let (pool, authority) = (pool.clone(), authority.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: hyper::Request<Incoming>| {
                let pool = pool.clone();
                let mut uri = std::mem::take(req.uri_mut()).into_parts();
                uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
                uri.authority = Some(authority.clone());
                async move {
                    *req.uri_mut() = hyper::Uri::from_parts(uri)?;
                    Ok::<_, anyhow::Error>(pool.request(req).await?)
                }
            });
            let _ = server.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
