//! `proxy`: Gatehouse's reverse-proxy mode beside nginx `proxy_pass` to the
//! same bare upstream, same run. nginx is Debian's, with a keep-alive pool
//! to the upstream as Gatehouse keeps one, and as many workers as cores.

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

/// nginx in `dir` on `port`, proxying everything to `upstream` (host:port).
pub async fn nginx(dir: &Path, port: u16, upstream: &str) -> anyhow::Result<Nginx> {
    let d = dir.display();
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
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream app {{ server {upstream}; keepalive 256; keepalive_requests 100000000; }}
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
    let child = Command::new(binary()?)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let nginx = crate::load::Killed(child);
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "nginx did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(nginx)
}
