//! A real nginx (Debian package) with `auth_request` to `/auth/verify` on
//! all three nodes, in front of a small upstream: allowed, denied, revoked,
//! role-restricted.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::HeaderMap;
use common::{create_key, http, wait_until, TestCluster};
use gatehouse_domain::Payload;
use gatehouse_proto::events::RevokeApiKey;
use reqwest::StatusCode;

fn nginx_bin() -> &'static str {
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!("nginx is not installed: run scripts/deps.sh (make test does)");
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether what listens on `port` is nginx (its `Server` header).
async fn answers_as_nginx(port: u16) -> bool {
    let Ok(r) = http().get(format!("http://127.0.0.1:{port}/")).send().await else { return false };
    r.headers().get("server").and_then(|v| v.to_str().ok()).is_some_and(|s| s.starts_with("nginx"))
}

/// Starts nginx in `dir` on a free port and waits until it listens. The
/// port is free when picked but not reserved, so another process may take
/// it first: then nginx exits (it cannot bind) and we try another port. A
/// listener only counts if it answers as nginx, so a stranger on the port
/// is never mistaken for it.
async fn start_nginx(dir: &Path, upstream: u16, fronts: &[String]) -> (Nginx, u16) {
    let conf = dir.join("nginx.conf");
    for _ in 0..5 {
        let port = free_port();
        std::fs::write(&conf, config(dir, port, upstream, fronts)).unwrap();
        let child = Command::new(nginx_bin())
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut nginx = Nginx(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if nginx.0.try_wait().unwrap().is_some() {
                break; // exited: most likely the port was taken meanwhile
            }
            if answers_as_nginx(port).await {
                return (nginx, port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        eprintln!("nginx did not start on port {port}, trying another: {}", log.lines().last().unwrap_or(""));
    }
    panic!("nginx did not start in 5 attempts (see error.log in the test's directory)");
}

/// An upstream that echoes the identity nginx passes on.
async fn upstream() -> u16 {
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let user = headers.get("x-auth-user").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        format!("hello {user}")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn config(dir: &Path, port: u16, upstream: u16, fronts: &[String]) -> String {
    let d = dir.display();
    let servers: String = fronts.iter().map(|f| format!("server {f};\n")).collect();
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
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream gatehouse {{ {servers} }}
    server {{
        listen 127.0.0.1:{port};
        location = /_auth {{
            internal;
            proxy_pass http://gatehouse/auth/verify;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Method $request_method;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Uri $request_uri;
        }}
        location = /_auth_admin {{
            internal;
            proxy_pass http://gatehouse/auth/verify?role=admin;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        location /admin/ {{
            auth_request /_auth_admin;
            auth_request_set $user $upstream_http_x_auth_user;
            proxy_set_header X-Auth-User $user;
            proxy_pass http://127.0.0.1:{upstream};
        }}
        location / {{
            auth_request /_auth;
            auth_request_set $user $upstream_http_x_auth_user;
            proxy_set_header X-Auth-User $user;
            proxy_pass http://127.0.0.1:{upstream};
        }}
    }}
}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_auth_request_allows_denies_and_honours_revocation() {
    let c = TestCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let up = upstream().await;
    let fronts: Vec<String> = c.nodes.values().map(|n| n.http_addr().to_string()).collect();
    let (_nginx, port) = start_nginx(dir.path(), up, &fronts).await;
    let url = format!("http://127.0.0.1:{port}");

    let viewer = create_key(c.node(1), "nora", &["viewer"]).await;
    let admin = c.admin_key.clone();

    // No credential, a forged one: 401 from nginx, the upstream never sees them.
    let r = http().get(format!("{url}/app")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http()
        .get(format!("{url}/app"))
        .bearer_auth("gk_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Allowed, with the identity passed on; nginx spreads subrequests over all nodes.
    for _ in 0..30 {
        let r = http().get(format!("{url}/app")).bearer_auth(&viewer).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), "hello nora");
    }
    // Role-restricted location.
    assert_eq!(
        http().get(format!("{url}/admin/panel")).bearer_auth(&viewer).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let r = http().get(format!("{url}/admin/panel")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "hello admin");

    // Revoked: denied through nginx at once, whichever node answers.
    let key_id = viewer.split('_').nth(1).unwrap().to_string();
    let cmd = c.node(2).cluster().command(Payload::RevokeApiKey(RevokeApiKey { key_id: key_id.clone() }));
    c.node(2).cluster().propose_one(cmd).await.unwrap();
    wait_until("revocation applied everywhere", Duration::from_secs(2), || {
        let all =
            c.nodes.values().all(|n| n.cluster().view().read().api_key(&key_id).is_some_and(|k| k.revoked_at != 0));
        async move { all }
    })
    .await;
    for _ in 0..30 {
        assert_eq!(
            http().get(format!("{url}/app")).bearer_auth(&viewer).send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    c.shutdown().await;
}
