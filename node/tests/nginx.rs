//! A real nginx (Debian package) running our own example,
//! `deploy/nginx/gatehouse.conf`, with `auth_request` to `/auth/verify` on
//! all three nodes, in front of a small upstream: allowed, denied, revoked,
//! role-restricted, and safe against what a client spoofs.

mod common;

use std::path::Path;
use std::time::Duration;

use axum::http::HeaderMap;
use common::nginx::Nginx;
use common::{create_key, http, wait_until, TestCluster};
use gatehouse_domain::Payload;
use gatehouse_proto::events::RevokeApiKey;
use reqwest::StatusCode;

/// Starts nginx with the example, pointed at `upstream` and `fronts`.
async fn start_nginx(dir: &Path, upstream: u16, fronts: &[String], tls_ca: Option<&Path>) -> (Nginx, u16) {
    common::nginx::start(dir, false, |port| config(port, upstream, fronts, tls_ca)).await
}

/// An upstream that echoes what nginx passed on: the identity headers, and
/// whether a credential or cookie reached it.
async fn upstream() -> u16 {
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        axum::Json(serde_json::json!({
            "user": h("x-auth-user"),
            "user_id": h("x-auth-user-id"),
            "roles": h("x-auth-roles"),
            "mfa": h("x-auth-mfa"),
            "mfa_age": h("x-auth-mfa-age"),
            "authorization": h("authorization"),
            "cookie": h("cookie"),
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// `deploy/nginx/gatehouse.conf`, the example users copy, with only its
/// addresses changed. With `tls_ca`, nginx reaches Gatehouse over HTTPS as
/// the example's comment says to: `https://gatehouse`, the `proxy_ssl_*`
/// lines uncommented (verifying against `tls_ca`).
fn config(port: u16, upstream: u16, fronts: &[String], tls_ca: Option<&Path>) -> String {
    let servers: String = fronts.iter().map(|f| format!("    server {f};\n")).collect();
    let mut example = common::nginx::example();
    for (from, to) in [
        ("    server 127.0.0.1:8080;\n    server 127.0.0.1:8081;\n    server 127.0.0.1:8082;\n".to_string(), servers),
        ("server 127.0.0.1:3000;".to_string(), format!("server 127.0.0.1:{upstream};")),
        ("listen 80;".to_string(), format!("listen 127.0.0.1:{port};")),
    ] {
        assert_eq!(example.matches(&from).count(), 1, "the example no longer has {from:?}");
        example = example.replace(&from, &to);
    }
    if let Some(ca) = tls_ca {
        assert_eq!(example.matches("proxy_pass http://gatehouse").count(), 4, "the example's comment counts four");
        example = example.replace("proxy_pass http://gatehouse", "proxy_pass https://gatehouse");
        let commented = example.matches("    #proxy_ssl_").count();
        assert!(commented >= 5, "the example no longer has its proxy_ssl lines");
        example = example.replace("    #proxy_ssl_", "    proxy_ssl_");
        let trusted = "proxy_ssl_trusted_certificate /etc/gatehouse/tls/ca.pem;";
        assert_eq!(example.matches(trusted).count(), 1);
        example = example.replace(trusted, &format!("proxy_ssl_trusted_certificate {};", ca.display()));
    }
    example
}

/// A client whose connections come from `ip` (127.0.0.0/8 is all local), so
/// nginx sees it as a client and not as itself.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Sends `head` (a request head, raw bytes) to nginx and returns the status.
async fn raw_status(port: u16, head: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(head).await.unwrap();
    let mut buf = vec![0; 64];
    let n = s.read(&mut buf).await.unwrap();
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_auth_request_allows_denies_and_honours_revocation() {
    forward_auth(false).await;
}

/// The same, with nginx verifying every node over HTTPS against the
/// cluster's CA, on kept-alive upstream connections; and an nginx that
/// trusts another CA gets no answer from Gatehouse (it fails closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_verifies_gatehouse_over_https_and_forward_auth_holds() {
    forward_auth(true).await;
}

/// Node certificates carrying the one name nginx checks for every node.
fn https_pki(dir: &Path) -> impl Fn(&mut gatehouse::config::Config) {
    use gatehouse_tls::issue::{new_ca, node_certificate};
    let ca = new_ca("cluster CA", 30).unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
    let localhost = ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()];
    for id in 1..=3 {
        let issued = node_certificate(&ca, id, &["gatehouse.internal".into()], &localhost, 30).unwrap();
        std::fs::write(dir.join(format!("node-{id}.pem")), &issued.cert_pem).unwrap();
        std::fs::write(dir.join(format!("node-{id}.key")), issued.key_pem.expose()).unwrap();
    }
    let other = new_ca("someone else's CA", 30).unwrap();
    std::fs::write(dir.join("other-ca.pem"), &other.cert_pem).unwrap();
    let dir = dir.to_path_buf();
    move |cfg| {
        cfg.https = Some(gatehouse::config::HttpsConfig {
            cert_file: dir.join(format!("node-{}.pem", cfg.node_id)),
            key_file: dir.join(format!("node-{}.key", cfg.node_id)),
            http2: true,
            hsts_max_age_secs: 0,
            hsts_include_subdomains: false,
        });
    }
}

async fn forward_auth(tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let pki = tempfile::tempdir().unwrap();
    let c = if tls { TestCluster::start_with(3, https_pki(pki.path())).await } else { TestCluster::start(3).await };
    let up = upstream().await;
    let fronts: Vec<String> = c.nodes.values().map(|n| n.http_addr().to_string()).collect();
    let ca = pki.path().join("ca.pem");
    let (_nginx, port) = start_nginx(dir.path(), up, &fronts, tls.then_some(ca.as_path())).await;
    let url = format!("http://127.0.0.1:{port}");
    if tls {
        // nginx trusting another CA: every node's certificate is refused,
        // and the request is not let through.
        let elsewhere = tempfile::tempdir().unwrap();
        let other = pki.path().join("other-ca.pem");
        let (_wrong, wrong_port) = start_nginx(elsewhere.path(), up, &fronts, Some(other.as_path())).await;
        let r =
            http().get(format!("http://127.0.0.1:{wrong_port}/app")).bearer_auth(&c.admin_key).send().await.unwrap();
        assert!(r.status().is_server_error(), "{}", r.status());
        let log = std::fs::read_to_string(elsewhere.path().join("error.log")).unwrap();
        assert!(log.contains("upstream SSL certificate verify error"), "{log}");
    }

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

    // Allowed, with the identity passed on; nginx spreads subrequests over
    // all nodes, on connections it keeps open (`keepalive`): far fewer
    // connections than requests.
    let accepted = || c.nodes.values().map(|n| n.api().metrics().http_connections_accepted.get()).sum::<u64>();
    let before = accepted();
    for _ in 0..30 {
        let r = http().get(format!("{url}/app")).bearer_auth(&viewer).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.json::<serde_json::Value>().await.unwrap()["user"], "nora");
    }
    let opened = accepted() - before;
    assert!(opened <= 6, "{opened} connections for 30 requests: nginx did not keep them alive");
    // Role-restricted location.
    assert_eq!(
        http().get(format!("{url}/admin/panel")).bearer_auth(&viewer).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let r = http().get(format!("{url}/admin/panel")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["user"], "admin");

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

/// What a client sends to fool the example changes nothing: its own
/// `X-Forwarded-For` (limits and audit name the real client),
/// `X-Forwarded-Uri` (route rules see the real path), `X-Auth-*` (the app
/// sees only what Gatehouse said); and the app never receives the key or
/// the session cookie Gatehouse verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_config_ignores_what_a_client_spoofs() {
    const PASSWORD: &str = "correct horse battery staple";
    let c = TestCluster::start_with(3, |cfg| {
        cfg.identity.routes = vec![gatehouse::config::RouteRule {
            host: None,
            path_prefix: "/ops".into(),
            roles: vec!["admin".into()],
            ignore_case: false,
            ..Default::default()
        }];
        // nginx (127.0.0.1) is the one trusted proxy; the client is 127.0.0.5.
        cfg.rate_limits = gatehouse_api::rate_limit::LimitsConfig {
            enabled: true,
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
            ..Default::default()
        };
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let up = upstream().await;
    let fronts: Vec<String> = c.nodes.values().map(|n| n.http_addr().to_string()).collect();
    let (_nginx, port) = start_nginx(dir.path(), up, &fronts, None).await;
    let url = format!("http://127.0.0.1:{port}");
    let client = client_from("127.0.0.5");
    let viewer = create_key(c.node(1), "nora", &["viewer"]).await;
    common::create_user_with_password(c.node(1), "vera", PASSWORD, &["viewer"]).await;

    // Spoofed identity headers: replaced by Gatehouse's, or refused without a credential.
    let r = client
        .get(format!("{url}/app"))
        .bearer_auth(&viewer)
        .header("x-auth-user", "admin")
        .header("x-auth-roles", "admin")
        .header("x-auth-user-id", "0".repeat(32))
        .header("x-auth-mfa", "totp")
        .header("x-auth-mfa-age", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!((seen["user"].as_str(), seen["roles"].as_str()), (Some("nora"), Some("viewer")));
    assert_ne!(seen["user_id"], "0".repeat(32));
    // A key presented no second factor: the app hears so, not the client's claim.
    assert_eq!((seen["mfa"].as_str(), seen["mfa_age"].as_str()), (Some("none"), Some("")));
    assert_eq!(seen["authorization"], "", "the verified key stayed at nginx");
    let r = client.get(format!("{url}/app")).header("x-auth-user", "admin").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A spoofed X-Forwarded-Uri does not move the request out of the /ops rule.
    let r = client.get(format!("{url}/ops/secret")).bearer_auth(&viewer).header("x-forwarded-uri", "/public");
    assert_eq!(r.send().await.unwrap().status(), StatusCode::FORBIDDEN);
    let r = client.get(format!("{url}/public")).bearer_auth(&viewer).header("x-forwarded-uri", "/ops/secret");
    assert_eq!(r.send().await.unwrap().status(), StatusCode::OK);
    // nginx forwards `$request_uri` raw: a non-ASCII byte is refused, not read as `/`.
    let head =
        format!("GET /ops/secret?\\xff HTTP/1.1\r\nHost: app.example.com\r\nAuthorization: Bearer {viewer}\r\n\r\n");
    let mut bytes = head.into_bytes();
    let at = bytes.windows(4).position(|w| w == b"\\xff").unwrap();
    bytes.splice(at..at + 4, [0xff]);
    assert_eq!(raw_status(port, &bytes).await, 403);

    // The session cookie reaches Gatehouse, never the app; other cookies do.
    let login = client
        .post(format!("{url}/api/v1/login"))
        .header("x-requested-with", "test")
        .header("x-forwarded-for", "203.0.113.9")
        .json(&serde_json::json!({ "username": "vera", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let session = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert!(session.starts_with("__Host-gatehouse_session="), "{session}");
    for (sent, left) in [
        (format!("theme=dark; {session}; lang=en"), "theme=dark; lang=en"),
        (format!("theme=dark; {session}"), "theme=dark"),
        (session.clone(), ""),
    ] {
        let r = client.get(format!("{url}/app")).header("cookie", &sent).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{sent}");
        let seen: serde_json::Value = r.json().await.unwrap();
        assert_eq!(seen["user"], "vera");
        assert_eq!(seen["cookie"], left, "{sent}");
    }

    // A spoofed X-Forwarded-For: the audit log names the real client.
    let r = client
        .post(format!("{url}/api/v1/login"))
        .header("x-requested-with", "test")
        .header("x-forwarded-for", "203.0.113.9")
        .json(&serde_json::json!({ "username": "vera", "password": "not the password at all" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let leader = c.wait_for_leader().await;
    wait_until("the failed login audited", Duration::from_secs(5), || {
        let state_ips = c.node(leader).audit_log().clone();
        async move {
            let mut ips = Vec::new();
            state_ips
                .scan(0, false, |rec| {
                    let e = rec.event.unwrap_or_default();
                    if e.action.starts_with("login.") {
                        ips.push(e.client_ip);
                    }
                    true
                })
                .unwrap();
            assert!(!ips.iter().any(|ip| ip == "203.0.113.9"), "{ips:?}");
            ips.iter().filter(|ip| *ip == "127.0.0.5").count() >= 2
        }
    })
    .await;
    c.shutdown().await;
}
