//! A real Caddy (the Debian package) with `forward_auth` to `/auth/verify`,
//! as docs/sign-in.md configures it, over HTTPS: a browser without a
//! session is redirected to the sign-in page with the page it wanted as
//! the return URL (302, or 303 for a POST); an API client keeps its 401;
//! a signed-in browser reaches the app with the identity headers, and
//! never with a client's forged copies of them; requests with missing or
//! forged credentials never reach the app.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{create_user_with_password, login, TestCluster};
use reqwest::StatusCode;

struct Caddy(Child);

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client that resolves `app.example.com` to this machine and takes
/// Caddy's own CA (`tls internal`); redirects are shown, not followed.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .resolve("app.example.com", "127.0.0.1:0".parse().unwrap())
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Starts Caddy in `dir` for `https://app.example.com:<port>`, in front of
/// `app`, asking Gatehouse at `gatehouse`; waits until it answers.
async fn start_caddy(dir: &Path, gatehouse: &str, app: u16) -> (Caddy, u16) {
    assert!(Path::new("/usr/bin/caddy").exists(), "caddy is not installed: run scripts/deps.sh test (make test does)");
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let caddyfile = format!(
            r#"{{
    admin off
    skip_install_trust
    local_certs
}}
https://app.example.com:{port} {{
    bind 127.0.0.1
    tls internal
    forward_auth {gatehouse} {{
        uri /auth/verify?redirect=true
        copy_headers X-Auth-User X-Auth-User-Id X-Auth-Roles X-Auth-MFA
    }}
    request_header -X-Auth-MFA-Age
    reverse_proxy 127.0.0.1:{app}
}}
"#
        );
        std::fs::write(dir.join("Caddyfile"), caddyfile).unwrap();
        let child = Command::new("/usr/bin/caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(dir.join("Caddyfile"))
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("caddy.log")).unwrap())
            .spawn()
            .unwrap();
        let mut caddy = Caddy(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            if caddy.0.try_wait().unwrap().is_some() {
                break;
            }
            let url = format!("https://app.example.com:{port}/");
            if client().get(url).header("accept", "application/json").send().await.is_ok() {
                return (caddy, port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(dir.join("caddy.log")).unwrap_or_default();
        eprintln!("caddy did not start on port {port}: {}", log.lines().last().unwrap_or(""));
    }
    panic!("caddy did not start in 5 attempts");
}

/// An app that says who Caddy says is calling (and with which roles and
/// factor, every copy of each header), counting the requests it gets.
async fn upstream() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let all = |name: &str| {
                headers.get_all(name).iter().map(|v| v.to_str().unwrap_or("?")).collect::<Vec<_>>().join("|")
            };
            let user = all("x-auth-user");
            let extra = ["x-auth-roles", "x-auth-mfa", "x-auth-mfa-age"].map(|h| format!("{h}={}", all(h))).join(" ");
            format!("reports for {user} ({extra})")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caddy_sends_a_browser_to_sign_in_and_lets_a_signed_in_one_through() {
    let c = TestCluster::start_with(1, |c| {
        c.pages.return_domains = vec!["example.com".into()];
        c.pages.public_url = Some("https://login.example.com".into());
    })
    .await;
    create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (app, reached) = upstream().await;
    let (_caddy, port) = start_caddy(dir.path(), &c.node(1).http_addr().to_string(), app).await;
    let site = format!("https://app.example.com:{port}");
    let wanted = format!("{site}/reports?week=49");
    let sign_in = format!(
        "https://login.example.com/login?rd={}",
        url::form_urlencoded::byte_serialize(wanted.as_bytes()).collect::<String>()
    );

    // A browser: redirected to sign in, and back to this page after.
    let resp = client().get(&wanted).header("accept", "text/html").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()["location"], sign_in.as_str());
    let resp = client().post(&wanted).header("accept", "text/html").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "a POST is sent on with a GET");
    // An API client: its 401.
    let resp = client().get(&wanted).header("accept", "application/json").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("location").is_none());

    // Signed in: through to the app, with the identity.
    let session = login(c.node(1), "ann", "pw-of-ann-0001").await;
    let cookie = session.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let resp = client().get(&wanted).header("accept", "text/html").header("cookie", &cookie).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "reports for ann (x-auth-roles=viewer x-auth-mfa=none x-auth-mfa-age=)");

    // Client copies of the identity headers never reach the app as
    // identity: Gatehouse's answer replaces them, and one it does not send
    // (no factor: no age) is removed.
    let forged = client()
        .get(&wanted)
        .header("accept", "text/html")
        .header("cookie", &cookie)
        .header("x-auth-user", "admin")
        .header("x-auth-roles", "admin")
        .header("x-auth-mfa", "totp")
        .header("x-auth-mfa-age", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::OK);
    assert_eq!(forged.text().await.unwrap(), "reports for ann (x-auth-roles=viewer x-auth-mfa=none x-auth-mfa-age=)");

    // Missing or forged credentials with forged identity headers: refused
    // at Caddy, the app never asked.
    let before = reached.load(std::sync::atomic::Ordering::SeqCst);
    let guessed = "__Host-gatehouse_session=gs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for cookie in [None, Some(guessed), Some("__Host-gatehouse_session=not-a-token")] {
        let mut req = client().get(&wanted).header("accept", "application/json").header("x-auth-user", "ann");
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        let resp = req.header("authorization", "Bearer gk_forged.notakey").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{cookie:?}");
    }
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), before, "no refused request reached the app");
    c.shutdown().await;
}
