//! A real nginx (the Debian package) for the tests that put it in front of
//! Gatehouse: started on a free port with a configuration of the test's,
//! and our example `deploy/nginx/gatehouse.conf` read from the tree.

use std::path::Path;
use std::time::Duration;

pub use gatehouse_chaos::load_proxy::Nginx;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The example everyone copies, `deploy/nginx/gatehouse.conf`.
pub fn example() -> String {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    std::fs::read_to_string(Path::new(&manifest).join("../deploy/nginx/gatehouse.conf")).unwrap()
}

/// A minimal `nginx.conf` that keeps everything in `dir` and includes
/// `dir/gatehouse.conf` inside `http { }`.
pub fn main_conf(dir: &Path) -> String {
    let d = dir.display();
    let temp_paths = gatehouse_chaos::load_proxy::temp_paths(dir);
    format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp_paths}    include {d}/gatehouse.conf;
}}
"#
    )
}

/// Whether what listens on `port` is nginx (its `Server` header).
async fn answers_as_nginx(port: u16, https: bool) -> bool {
    let client = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let url = format!("{}://127.0.0.1:{port}/", if https { "https" } else { "http" });
    let Ok(r) = client.get(url).send().await else { return false };
    r.headers().get("server").and_then(|v| v.to_str().ok()).is_some_and(|s| s.starts_with("nginx"))
}

/// Starts nginx in `dir` on a free port (`gatehouse_conf(port)` is its
/// `gatehouse.conf`) and waits until it listens. The port is free when
/// picked but not reserved, so another process may take it first: then
/// nginx exits (it cannot bind) and another port is tried. A listener only
/// counts if it answers as nginx, so a stranger on the port is never
/// mistaken for it.
pub async fn start(dir: &Path, https: bool, gatehouse_conf: impl Fn(u16) -> String) -> (Nginx, u16) {
    for _ in 0..5 {
        let port = free_port();
        if let Some(nginx) = start_at(dir, https, port, &gatehouse_conf(port)).await {
            return (nginx, port);
        }
    }
    panic!("nginx did not start in 5 attempts (see error.log in the test's directory)");
}

/// Starts nginx in `dir` on `port` (picked earlier, when something else
/// must name it first); `None` if it could not listen there.
pub async fn start_at(dir: &Path, https: bool, port: u16, gatehouse_conf: &str) -> Option<Nginx> {
    let conf = dir.join("nginx.conf");
    std::fs::write(dir.join("gatehouse.conf"), gatehouse_conf).unwrap();
    std::fs::write(&conf, main_conf(dir)).unwrap();
    let mut nginx = gatehouse_chaos::load_proxy::spawn(dir, &conf).expect("nginx (make test installs it)");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if nginx.0.try_wait().unwrap().is_some() {
            break; // exited: most likely the port was taken meanwhile
        }
        if answers_as_nginx(port, https).await {
            return Some(nginx);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    eprintln!("nginx did not start on port {port}: {}", log.lines().last().unwrap_or(""));
    None
}
