//! A person in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, over WebDriver) opens an app behind a real nginx
//! running our example `deploy/nginx/gatehouse.conf` over HTTPS, is sent
//! to the sign-in page, signs in with a password, and lands back on the
//! page it wanted; then signs another of its sessions out from "my
//! account", and signs out; then signs in again with a link mailed to it
//! (a real SMTP server). Screenshots of each page are written to
//! `$GATEHOUSE_SCREENSHOTS` when it is set (the ones in `docs/screenshots/`
//! were made so).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{create_user_with_password, login_at, wait_until, TestCluster};
use fantoccini::{Client, ClientBuilder, Locator};

/// chromedriver on a free port, stopped when dropped.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn chromedriver() -> Driver {
    let bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromedriver is not installed: run scripts/deps.sh test (make test does)");
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut driver = Driver(child, port);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if driver.0.try_wait().unwrap().is_some() {
                break;
            }
            let ready = reqwest::get(format!("http://127.0.0.1:{port}/status")).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("chromedriver did not start");
}

/// A headless Chromium session that reaches every `*.example.test` host on
/// this machine and takes the test CA's certificates.
async fn browser(driver: &Driver) -> Client {
    // The WebDriver client's TLS (unused: chromedriver is plain HTTP on
    // loopback) wants a process-wide provider; ours is ring.
    let _ = rustls::crypto::CryptoProvider::install_default((*gatehouse_tls::provider()).clone());
    let mut caps = serde_json::Map::new();
    caps.insert("acceptInsecureCerts".into(), true.into());
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=800,900", "--host-resolver-rules=MAP *.example.test 127.0.0.1",
            ],
        }),
    );
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("a WebDriver session")
}

/// Saves a screenshot of the page shown as `name`.png, when asked to.
async fn screenshot(b: &Client, name: &str) {
    let Some(dir) = std::env::var_os("GATEHOUSE_SCREENSHOTS").map(PathBuf::from) else { return };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), b.screenshot().await.unwrap()).unwrap();
}

/// Waits until the page shown (maybe the next one, still loading) has
/// `text` as its heading.
async fn heading(b: &Client, text: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The element may belong to the page being left: read it again.
        if let Ok(h) = b.find(Locator::Css("h1")).await {
            if h.text().await.is_ok_and(|t| t == text) {
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let url = b.current_url().await.map(|u| u.to_string()).unwrap_or_default();
            let shown = match b.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("no page headed {text:?}; at {url}:\n{shown}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An app that says who nginx says is calling, and whether a Gatehouse
/// session cookie reached it (it must not).
async fn upstream() -> u16 {
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let user = headers.get("x-auth-user").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let cookies = headers.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
        let leaked = cookies.contains("gatehouse_session");
        axum::response::Html(format!(
            "<!doctype html><title>Reports</title><h1 id=\"who\">Reports for {user}</h1>\
             <p id=\"leaked\">{leaked}</p>"
        ))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// Our nginx example for app.example.test over HTTPS on `port` (a
/// certificate from a new CA written to `dir`), in front of the Gatehouse
/// node at `gatehouse` and the app on port `app`.
fn example_over_https(dir: &Path, port: u16, gatehouse: &str, app: u16) -> String {
    let ca = gatehouse_tls::issue::new_ca("browser test CA", 1).unwrap();
    let cert = gatehouse_tls::issue::node_certificate(&ca, 1, &["app.example.test".into()], &[], 1).unwrap();
    std::fs::write(dir.join("app.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.join("app.key"), cert.key_pem.expose()).unwrap();
    let mut example = common::nginx::example();
    for (from, to) in [
        (
            "    server 127.0.0.1:8080;\n    server 127.0.0.1:8081;\n    server 127.0.0.1:8082;\n".to_string(),
            format!("    server {gatehouse};\n"),
        ),
        ("server 127.0.0.1:3000;".to_string(), format!("server 127.0.0.1:{app};")),
        (
            "listen 80;".to_string(),
            format!(
                "listen 127.0.0.1:{port} ssl;\n    ssl_certificate {0}/app.pem;\n    ssl_certificate_key {0}/app.key;",
                dir.display()
            ),
        ),
    ] {
        assert_eq!(example.matches(&from).count(), 1, "the example no longer has {from:?}");
        example = example.replace(&from, &to);
    }
    example
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_signs_in_through_nginx_in_a_real_browser_and_manages_their_sessions() {
    let smtp = common::smtp::Smtp::start().await;
    let mail = smtp.settings();
    // nginx's port, picked first: the pages' public address names it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let site = format!("https://app.example.test:{port}");
    let public = site.clone();
    let c = TestCluster::start_with(1, move |c| {
        c.pages.return_domains = vec!["example.test".into()];
        c.pages.product_name = "Example SSO".into();
        c.pages.public_url = Some(public.clone());
        c.pages.email_links = true;
        c.mail = Some(mail.clone());
        c.rate_limits.enabled = false;
    })
    .await;
    create_user_with_password(c.node(1), "ann", "correct horse battery", &["viewer"]).await;
    let gatehouse = c.node(1).http_addr().to_string();

    // nginx over HTTPS for app.example.test, from our example.
    let dir = tempfile::tempdir().unwrap();
    let conf = example_over_https(dir.path(), port, &gatehouse, upstream().await);
    let _nginx = common::nginx::start_at(dir.path(), true, port, &conf).await.expect("nginx on the port picked");

    let driver = chromedriver().await;
    let b = browser(&driver).await;
    // Another session of ann's, elsewhere (the JSON API).
    let elsewhere = login_at(&format!("http://{gatehouse}"), "ann", "correct horse battery").await;
    assert!(elsewhere.status().is_success());
    let other = elsewhere
        .headers()
        .get_all("set-cookie")
        .iter()
        .find_map(|v| v.to_str().ok()?.split(';').next()?.strip_prefix("__Host-gatehouse_session=").map(String::from))
        .unwrap();

    // The app sends the browser to sign in, and back.
    b.goto(&format!("{site}/reports?week=49")).await.unwrap();
    let at = b.current_url().await.unwrap();
    assert_eq!(at.path(), "/login", "{at}");
    assert_eq!(
        at.query(),
        Some("rd=https%3A%2F%2Fapp.example.test%3A".to_string() + &format!("{port}%2Freports%3Fweek%3D49")).as_deref()
    );
    screenshot(&b, "sign-in").await;
    b.find(Locator::Id("username")).await.unwrap().send_keys("ann").await.unwrap();
    b.find(Locator::Id("password")).await.unwrap().send_keys("not the password").await.unwrap();
    b.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    let error = b.wait().for_element(Locator::Css("[role=alert]")).await.unwrap().text().await.unwrap();
    assert_eq!(error, "Wrong username or password.");
    screenshot(&b, "sign-in-error").await;
    assert_eq!(b.find(Locator::Id("username")).await.unwrap().prop("value").await.unwrap().as_deref(), Some("ann"));
    b.find(Locator::Id("password")).await.unwrap().send_keys("correct horse battery").await.unwrap();
    b.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    let who = b.wait().for_element(Locator::Id("who")).await.unwrap().text().await.unwrap();
    assert_eq!(who, "Reports for ann");
    assert_eq!(b.current_url().await.unwrap().as_str(), format!("{site}/reports?week=49"));

    // My account: both sessions; the other one signed out from here.
    b.goto(&format!("{site}/account")).await.unwrap();
    let rows = b.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 2);
    screenshot(&b, "account").await;
    b.find(Locator::Css("tbody form button")).await.unwrap().click().await.unwrap();
    let notice = b.wait().for_element(Locator::Css("[role=status]")).await.unwrap().text().await.unwrap();
    assert_eq!(notice, "The session is signed out.");
    assert_eq!(b.find_all(Locator::Css("tbody tr")).await.unwrap().len(), 1);
    let verify = |cookie: String| {
        let url = format!("http://{gatehouse}/auth/verify");
        async move { common::http().get(url).header("cookie", cookie).send().await.unwrap().status() }
    };
    wait_until("the other session is refused", Duration::from_secs(5), || {
        let cookie = format!("__Host-gatehouse_session={other}");
        async move { verify(cookie).await == reqwest::StatusCode::UNAUTHORIZED }
    })
    .await;

    // Signing out: back to the sign-in page, and the app asks again.
    b.find(Locator::Css("form[action=\"/logout\"] button")).await.unwrap().click().await.unwrap();
    // The account page has a status line too: wait for the sign-in page first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.current_url().await.unwrap().path() != "/login" {
        assert!(tokio::time::Instant::now() < deadline, "not sent to the sign-in page");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let notice = b.wait().for_element(Locator::Css("[role=status]")).await.unwrap().text().await.unwrap();
    assert_eq!(notice, "You are signed out.");
    b.goto(&format!("{site}/reports?week=50")).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().path(), "/login");

    // Signing in with a link by mail, opened in this browser.
    let newest = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("links can be written", Duration::from_secs(20), || async {
        c.node(1).cluster().cluster_version() == newest
    })
    .await;
    b.find(Locator::Id("email")).await.unwrap().send_keys("ann@example.com").await.unwrap();
    b.find(Locator::Css("form[action=\"/login/email\"] button")).await.unwrap().click().await.unwrap();
    heading(&b, "Check your email").await;
    screenshot(&b, "link-sent").await;
    let link = common::smtp::link_in(&smtp.wait_mail(1).await);
    assert!(link.starts_with(&format!("{site}/login/link?token=gl_")), "{link}");
    b.goto(&link).await.unwrap();
    let button = b.wait().for_element(Locator::Css("form[action=\"/login/link\"] button")).await.unwrap();
    screenshot(&b, "link-confirm").await;
    button.click().await.unwrap();
    let who = b.wait().for_element(Locator::Id("who")).await.unwrap().text().await.unwrap();
    assert_eq!(who, "Reports for ann");
    assert_eq!(b.current_url().await.unwrap().as_str(), format!("{site}/reports?week=50"));
    // The same link again, in this browser: used already.
    b.goto(&link).await.unwrap();
    b.wait().for_element(Locator::Css("form[action=\"/login/link\"] button")).await.unwrap().click().await.unwrap();
    let gone = b.wait().for_element(Locator::Css("[role=alert]")).await.unwrap().text().await.unwrap();
    assert!(gone.contains("used already"), "{gone}");
    b.close().await.unwrap();
    c.shutdown().await;
}

/// The sign-in host and the app differ (`login.example.test` for
/// `app.example.test`): one shared `__Secure-` session cookie for the
/// domain, the redirect between the two hosts and back, and nginx keeps
/// the cookie from the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_signs_in_on_the_sign_in_host_and_lands_on_the_app_host() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let login = format!("https://login.example.test:{port}");
    let app_site = format!("https://app.example.test:{port}");
    let public = login.clone();
    let c = TestCluster::start_with(1, move |c| {
        c.pages.return_domains = vec!["example.test".into()];
        c.pages.public_url = Some(public.clone());
        c.identity.cookie_domain = Some("example.test".into());
        c.rate_limits.enabled = false;
    })
    .await;
    create_user_with_password(c.node(1), "ann", "correct horse battery", &["viewer"]).await;
    let gatehouse = c.node(1).http_addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let ca = gatehouse_tls::issue::new_ca("browser test CA", 1).unwrap();
    let names = ["app.example.test".to_string(), "login.example.test".to_string()];
    let cert = gatehouse_tls::issue::node_certificate(&ca, 1, &names, &[], 1).unwrap();
    std::fs::write(dir.path().join("site.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("site.key"), cert.key_pem.expose()).unwrap();
    let app = upstream().await;
    let tls = format!(
        "listen 127.0.0.1:{port} ssl;\n    ssl_certificate {0}/site.pem;\n    ssl_certificate_key {0}/site.key;",
        dir.path().display()
    );
    // The example for the app host, and a server of its own for the pages.
    let mut conf = common::nginx::example();
    for (from, to) in [
        (
            "    server 127.0.0.1:8080;\n    server 127.0.0.1:8081;\n    server 127.0.0.1:8082;\n".to_string(),
            format!("    server {gatehouse};\n"),
        ),
        ("server 127.0.0.1:3000;".to_string(), format!("server 127.0.0.1:{app};")),
        ("listen 80;".to_string(), tls.clone()),
        ("server_name app.example.com;".to_string(), "server_name app.example.test;".to_string()),
    ] {
        assert_eq!(conf.matches(&from).count(), 1, "the example no longer has {from:?}");
        conf = conf.replace(&from, &to);
    }
    conf += &format!(
        r#"
server {{
    {tls}
    server_name login.example.test;
    location / {{
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header Connection "";
        proxy_http_version 1.1;
        proxy_pass http://gatehouse;
    }}
}}
"#
    );
    let _nginx = common::nginx::start_at(dir.path(), true, port, &conf).await.expect("nginx on the port picked");

    let driver = chromedriver().await;
    let b = browser(&driver).await;
    b.goto(&format!("{app_site}/reports?week=51")).await.unwrap();
    let at = b.current_url().await.unwrap();
    assert_eq!(at.origin().ascii_serialization(), login, "sent to the sign-in host: {at}");
    assert_eq!(at.path(), "/login");
    b.find(Locator::Id("username")).await.unwrap().send_keys("ann").await.unwrap();
    b.find(Locator::Id("password")).await.unwrap().send_keys("correct horse battery").await.unwrap();
    b.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    let who = b.wait().for_element(Locator::Id("who")).await.unwrap().text().await.unwrap();
    assert_eq!(who, "Reports for ann");
    assert_eq!(b.current_url().await.unwrap().as_str(), format!("{app_site}/reports?week=51"));
    assert_eq!(b.find(Locator::Id("leaked")).await.unwrap().text().await.unwrap(), "false");
    // One cookie for the domain, Secure and named so.
    let cookies = b.get_all_cookies().await.unwrap();
    let session = cookies.iter().find(|c| c.name() == "__Secure-gatehouse_session").expect("the shared session cookie");
    // A domain cookie (WebDriver names it with or without the leading dot).
    assert_eq!(session.domain().map(|d| d.trim_start_matches('.')), Some("example.test"));
    assert_eq!(session.secure(), Some(true));
    assert_eq!(session.http_only(), Some(true));
    assert!(cookies.iter().all(|c| c.name() != "__Host-gatehouse_session"));

    // Signing out on the sign-in host: the app asks again.
    b.goto(&format!("{login}/account")).await.unwrap();
    b.find(Locator::Css("form[action=\"/logout\"] button")).await.unwrap().click().await.unwrap();
    heading(&b, "Sign in").await;
    b.goto(&format!("{app_site}/reports")).await.unwrap();
    let at = b.current_url().await.unwrap();
    assert_eq!((at.origin().ascii_serialization(), at.path()), (login.clone(), "/login"));
    b.close().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_signs_in_through_their_identity_provider_and_lands_on_the_app() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let site = format!("https://app.example.test:{port}");
    let users = vec![common::oidc::user("u-ann", "ann", "ann@example.test", &["sre"])];
    let provider = common::oidc::Provider::start(users, &site, "corp").await;
    let mut settings = provider.settings("corp");
    settings.roles = [("sre".to_string(), vec!["operator".to_string()])].into();
    let key = provider.dir.path().join("kek");
    std::fs::write(&key, hex::encode([3u8; 32])).unwrap();
    let public = site.clone();
    let c = TestCluster::start_with(1, move |c| {
        c.pages.return_domains = vec!["example.test".into()];
        c.pages.product_name = "Example SSO".into();
        c.pages.public_url = Some(public.clone());
        c.sso.providers = vec![settings.clone()];
        c.secrets.keys = vec![gatehouse::config::KeySettings { id: "k1".into(), file: key.clone() }];
        c.rate_limits.enabled = false;
    })
    .await;
    let newest = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("the cluster version is raised", Duration::from_secs(20), || async {
        c.node(1).cluster().cluster_version() == newest
    })
    .await;
    let gatehouse = c.node(1).http_addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let conf = example_over_https(dir.path(), port, &gatehouse, upstream().await);
    let _nginx = common::nginx::start_at(dir.path(), true, port, &conf).await.expect("nginx on the port picked");

    let driver = chromedriver().await;
    let b = browser(&driver).await;
    b.goto(&format!("{site}/reports?week=50")).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().path(), "/login");
    let button = b.find(Locator::Css("a.button")).await.unwrap();
    assert_eq!(button.text().await.unwrap(), "Sign in with Example Corp");
    screenshot(&b, "sign-in-provider").await;
    button.click().await.unwrap();
    // At the provider: its own sign-in form.
    let field = b.wait().for_element(Locator::Id("username")).await.unwrap();
    assert!(b.current_url().await.unwrap().as_str().starts_with(&provider.issuer), "at the provider");
    field.send_keys("ann").await.unwrap();
    b.find(Locator::Id("approve")).await.unwrap().click().await.unwrap();
    // Back through nginx, signed in, on the page it wanted.
    let who = b.wait().for_element(Locator::Id("who")).await.unwrap().text().await.unwrap();
    assert_eq!(who, "Reports for ann");
    assert_eq!(b.current_url().await.unwrap().as_str(), format!("{site}/reports?week=50"));
    assert_eq!(b.find(Locator::Id("leaked")).await.unwrap().text().await.unwrap(), "false");
    let cookies = b.get_all_cookies().await.unwrap();
    assert!(cookies.iter().any(|c| c.name() == "__Host-gatehouse_session"));
    assert!(cookies.iter().all(|c| c.name() != "__Host-gatehouse_sso"), "the flow cookie is spent");
    // "My account" shows the provider's user with the mapped role.
    b.goto(&format!("{site}/account")).await.unwrap();
    heading(&b, "ann").await;
    let page = b.source().await.unwrap();
    assert!(page.contains("operator"), "{page}");
    screenshot(&b, "account-provider").await;
    b.close().await.unwrap();
    c.shutdown().await;
}

/// Two-step sign-in in a real browser through nginx: an authenticator app
/// added from "my account" (the key read off the page, codes from pyotp),
/// the recovery codes shown once, then a sign-in that asks for the code
/// after the password and lands on the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_turns_on_an_authenticator_app_and_signs_in_with_a_code() {
    use common::totp::{now_secs, pyotp};
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let site = format!("https://app.example.test:{port}");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("kek");
    std::fs::write(&key, hex::encode([4u8; 32])).unwrap();
    let public = site.clone();
    let c = TestCluster::start_with(1, move |c| {
        c.pages.return_domains = vec!["example.test".into()];
        c.pages.product_name = "Example SSO".into();
        c.pages.public_url = Some(public.clone());
        c.secrets.keys = vec![gatehouse::config::KeySettings { id: "k1".into(), file: key.clone() }];
        c.rate_limits.enabled = false;
        // The reports ask for a second factor from the last 30 seconds.
        c.identity.routes = vec![gatehouse::config::RouteRule {
            path_prefix: "/reports".into(),
            roles: vec!["viewer".into()],
            mfa_within: Some("30s".into()),
            ..Default::default()
        }];
    })
    .await;
    let newest = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("the cluster version is raised", Duration::from_secs(20), || async {
        c.node(1).cluster().cluster_version() == newest
    })
    .await;
    create_user_with_password(c.node(1), "ann", "correct horse battery", &["viewer"]).await;
    let gatehouse = c.node(1).http_addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let conf = example_over_https(dir.path(), port, &gatehouse, upstream().await);
    let _nginx = common::nginx::start_at(dir.path(), true, port, &conf).await.expect("nginx on the port picked");
    let driver = chromedriver().await;
    let b = browser(&driver).await;

    let sign_in = |b: Client| async move {
        b.find(Locator::Id("username")).await.unwrap().send_keys("ann").await.unwrap();
        b.find(Locator::Id("password")).await.unwrap().send_keys("correct horse battery").await.unwrap();
        b.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    };
    b.goto(&format!("{site}/account")).await.unwrap();
    sign_in(b.clone()).await;
    heading(&b, "ann").await;
    b.find(Locator::Css("a[href=\"/account/totp\"]")).await.unwrap().click().await.unwrap();
    heading(&b, "Add an authenticator app").await;
    assert!(b.find(Locator::Css("figure.qr svg")).await.is_ok(), "the QR code is drawn inline");
    screenshot(&b, "totp-enroll").await;
    let secret = b.find(Locator::Id("totp-secret")).await.unwrap().text().await.unwrap();
    b.find(Locator::Id("code")).await.unwrap().send_keys(&pyotp(&secret, now_secs())).await.unwrap();
    b.find(Locator::Id("password")).await.unwrap().send_keys("correct horse battery").await.unwrap();
    b.find(Locator::Css("form[action=\"/account/totp\"] button")).await.unwrap().click().await.unwrap();
    heading(&b, "Your recovery codes").await;
    assert_eq!(b.find_all(Locator::Css("#recovery-codes li")).await.unwrap().len(), 10);
    screenshot(&b, "totp-recovery-codes").await;

    // Signed out, the app asks again: the password, then the code.
    b.goto(&format!("{site}/account")).await.unwrap();
    b.find(Locator::Css("form[action=\"/logout\"] button")).await.unwrap().click().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.current_url().await.unwrap().path() != "/login" {
        assert!(tokio::time::Instant::now() < deadline, "not sent to the sign-in page");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.goto(&format!("{site}/reports?week=51")).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().path(), "/login");
    sign_in(b.clone()).await;
    heading(&b, "Confirm it is you").await;
    assert_eq!(b.current_url().await.unwrap().path(), "/login/factor");
    screenshot(&b, "totp-code").await;
    b.find(Locator::Id("code")).await.unwrap().send_keys("000000").await.unwrap();
    b.find(Locator::Css("form[action=\"/login/factor\"] button")).await.unwrap().click().await.unwrap();
    let error = b.wait().for_element(Locator::Css("[role=alert]")).await.unwrap().text().await.unwrap();
    assert_eq!(error, "That code is wrong or was used already.");
    b.find(Locator::Id("code")).await.unwrap().send_keys(&pyotp(&secret, now_secs() + 30)).await.unwrap();
    b.find(Locator::Css("form[action=\"/login/factor\"] button")).await.unwrap().click().await.unwrap();
    let who = b.wait().for_element(Locator::Id("who")).await.unwrap().text().await.unwrap();
    assert_eq!(who, "Reports for ann");
    assert_eq!(b.current_url().await.unwrap().as_str(), format!("{site}/reports?week=51"));

    // Past the reports' window (the time itself is the condition): asked
    // again, a step-up, and back to the report.
    tokio::time::sleep(Duration::from_secs(31)).await;
    b.goto(&format!("{site}/reports?week=52")).await.unwrap();
    heading(&b, "Confirm it is you").await;
    assert_eq!(b.current_url().await.unwrap().path(), "/login/factor");
    screenshot(&b, "totp-step-up").await;
    b.find(Locator::Id("code")).await.unwrap().send_keys(&pyotp(&secret, now_secs() + 30)).await.unwrap();
    b.find(Locator::Css("form[action=\"/login/factor\"] button")).await.unwrap().click().await.unwrap();
    let who = b.wait().for_element(Locator::Id("who")).await.unwrap().text().await.unwrap();
    assert_eq!(who, "Reports for ann");
    assert_eq!(b.current_url().await.unwrap().as_str(), format!("{site}/reports?week=52"));
    b.close().await.unwrap();
    c.shutdown().await;
}

/// A WebDriver extension command (here: the WebAuthn virtual
/// authenticators Chromium offers for tests).
#[derive(Debug)]
struct Extension {
    method: http::Method,
    path: String,
    body: Option<serde_json::Value>,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Extension {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/{}", session.unwrap_or_default(), self.path))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (self.method.clone(), self.body.as_ref().map(|b| b.to_string()))
    }
}

/// A platform authenticator in the browser (resident keys, user
/// verification passes): its id.
async fn virtual_authenticator(b: &Client) -> String {
    let body = serde_json::json!({
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": true,
        "hasUserVerification": true, "isUserVerified": true, "isUserConsenting": true,
    });
    let cmd = Extension { method: http::Method::POST, path: "webauthn/authenticator".into(), body: Some(body) };
    b.issue_cmd(cmd).await.expect("a virtual authenticator").as_str().expect("its id").to_string()
}

/// The credentials the virtual authenticator holds: (id, user handle), base64url.
async fn credentials(b: &Client, authenticator: &str) -> Vec<(String, String)> {
    let path = format!("webauthn/authenticator/{authenticator}/credentials");
    let list = b.issue_cmd(Extension { method: http::Method::GET, path, body: None }).await.unwrap();
    let b64 = |v: &serde_json::Value| {
        // WebDriver gives standard or URL-safe base64; the pages use URL-safe.
        v.as_str().unwrap_or("").replace('+', "-").replace('/', "_").trim_end_matches('=').to_string()
    };
    list.as_array().unwrap().iter().map(|c| (b64(&c["credentialId"]), b64(&c["userHandle"]))).collect()
}

/// Runs the passkey form's ceremony on the page shown without sending the
/// form: the answer (JSON) and the ceremony it was for. `allow` limits the
/// credential used; `handle` replaces the user handle in the answer (which
/// the authenticator does not sign).
async fn answer(b: &Client, allow: Option<&str>, handle: Option<&str>) -> (String, String) {
    let script = r#"
        const [allow, handle, done] = arguments;
        const form = document.getElementById("passkey-form");
        const bytes = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
        const text = (b) => btoa(String.fromCharCode(...new Uint8Array(b)))
            .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
        const o = JSON.parse(form.dataset.options).publicKey;
        o.challenge = bytes(o.challenge);
        if (allow) o.allowCredentials = [{ type: "public-key", id: allow }];
        for (const c of o.allowCredentials || []) c.id = bytes(c.id);
        navigator.credentials.get({ publicKey: o }).then((cred) => {
            const r = cred.response;
            done(JSON.stringify({
                id: cred.id, rawId: text(cred.rawId), type: cred.type, extensions: {},
                response: {
                    authenticatorData: text(r.authenticatorData), clientDataJSON: text(r.clientDataJSON),
                    signature: text(r.signature), userHandle: handle || (r.userHandle ? text(r.userHandle) : null),
                },
            }));
        }).catch((e) => done("refused: " + e));
    "#;
    let args = vec![allow.into(), handle.into()];
    let answer = b.execute_async(script, args).await.unwrap().as_str().unwrap().to_string();
    assert!(!answer.starts_with("refused"), "{answer}");
    let ceremony = b.execute("return document.getElementById('passkey-form').elements.ceremony.value", vec![]).await;
    (answer, ceremony.unwrap().as_str().unwrap().to_string())
}

/// Sends the passkey form of the page shown with `ceremony` and `answer`.
async fn send_answer(b: &Client, ceremony: &str, answer: &str) {
    let script = "const f = document.getElementById('passkey-form');
        f.elements.ceremony.value = arguments[0]; f.elements.passkey.value = arguments[1]; f.submit();";
    b.execute(script, vec![ceremony.into(), answer.into()]).await.unwrap();
}

/// The alert the page shown says, once it loaded.
async fn alert(b: &Client) -> String {
    b.wait().for_element(Locator::Css("[role=alert]")).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_adds_a_passkey_and_signs_in_with_it_alone_and_forged_answers_are_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let site = format!("https://app.example.test:{port}");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("kek");
    std::fs::write(&key, hex::encode([5u8; 32])).unwrap();
    let origin = site.clone();
    let c = TestCluster::start_with(1, move |c| {
        c.pages.return_domains = vec!["example.test".into()];
        c.pages.public_url = Some(origin.clone());
        c.secrets.keys = vec![gatehouse::config::KeySettings { id: "k1".into(), file: key.clone() }];
        c.mfa.passkeys =
            Some(gatehouse::config::PasskeySettings { rp_id: "example.test".into(), origins: vec![origin.clone()] });
        c.rate_limits.enabled = false;
    })
    .await;
    let newest = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("the cluster version is raised", Duration::from_secs(20), || async {
        c.node(1).cluster().cluster_version() == newest
    })
    .await;
    let ann = create_user_with_password(c.node(1), "ann", "correct horse battery", &["viewer"]).await;
    create_user_with_password(c.node(1), "bob", "battery staple horse", &["viewer"]).await;
    let gatehouse = c.node(1).http_addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let conf = example_over_https(dir.path(), port, &gatehouse, upstream().await);
    let _nginx = common::nginx::start_at(dir.path(), true, port, &conf).await.expect("nginx on the port picked");
    let driver = chromedriver().await;
    let b = browser(&driver).await;
    let authenticator = virtual_authenticator(&b).await;

    let sign_in = |b: Client, who: &'static str, password: &'static str| async move {
        b.find(Locator::Id("username")).await.unwrap().send_keys(who).await.unwrap();
        b.find(Locator::Id("password")).await.unwrap().send_keys(password).await.unwrap();
        b.find(Locator::Css("form[action=\"/login\"] button")).await.unwrap().click().await.unwrap();
    };
    let account = format!("{site}/account");
    let sign_out = |b: Client| {
        let account = account.clone();
        async move {
            b.goto(&account).await.unwrap();
            b.find(Locator::Css("form[action=\"/logout\"] button")).await.unwrap().click().await.unwrap();
            heading(&b, "Sign in").await;
        }
    };

    // Ann adds a passkey from her account: the page's script runs the
    // ceremony, and her first factor comes with recovery codes.
    b.goto(&format!("{site}/account")).await.unwrap();
    sign_in(b.clone(), "ann", "correct horse battery").await;
    heading(&b, "ann").await;
    b.find(Locator::Id("add-passkeys")).await.unwrap().click().await.unwrap();
    heading(&b, "Passkeys").await;
    b.find(Locator::Id("passkey-name")).await.unwrap().send_keys("Laptop").await.unwrap();
    b.find(Locator::Id("passkey-password")).await.unwrap().send_keys("correct horse battery").await.unwrap();
    screenshot(&b, "passkey-add").await;
    b.find(Locator::Css("#add-passkey button")).await.unwrap().click().await.unwrap();
    heading(&b, "Your recovery codes").await;
    assert_eq!(b.find_all(Locator::Css("#recovery-codes li")).await.unwrap().len(), 10);
    let held = credentials(&b, &authenticator).await;
    assert_eq!(held.len(), 1, "one resident credential");
    let (ann_credential, ann_handle) = held[0].clone();
    assert_eq!(hex::encode(base64_url(&ann_handle)), ann, "the handle is the user id");
    b.goto(&format!("{site}/account/passkeys")).await.unwrap();
    let row = b.find(Locator::Css("#passkeys tbody tr td")).await.unwrap().text().await.unwrap();
    assert_eq!(row, "Laptop");

    // Signed out, the passkey alone signs her in and the app sees her.
    sign_out(b.clone()).await;
    b.goto(&format!("{site}/reports?week=1")).await.unwrap();
    heading(&b, "Sign in").await;
    screenshot(&b, "passkey-sign-in").await;
    b.find(Locator::Id("sign-in-passkey")).await.unwrap().click().await.unwrap();
    let who = b.wait().for_element(Locator::Id("who")).await.unwrap().text().await.unwrap();
    assert_eq!(who, "Reports for ann");
    assert_eq!(b.current_url().await.unwrap().as_str(), format!("{site}/reports?week=1"));

    // Her password now asks for the second factor: the passkey pays it.
    sign_out(b.clone()).await;
    sign_in(b.clone(), "ann", "correct horse battery").await;
    heading(&b, "Confirm it is you").await;
    b.find(Locator::Id("use-passkey")).await.unwrap().click().await.unwrap();
    heading(&b, "ann").await;
    sign_out(b.clone()).await;

    // A replayed answer: taken once, then refused (its challenge is spent).
    let (first, ceremony) = answer(&b, None, None).await;
    send_answer(&b, &ceremony, &first).await;
    heading(&b, "ann").await;
    sign_out(b.clone()).await;
    send_answer(&b, &ceremony, &first).await;
    assert_eq!(alert(&b).await, "That passkey was not accepted. Try again, or sign in another way.");
    // An answer for another ceremony's challenge: refused.
    let unused = b.execute("return document.getElementById('passkey-form').elements.ceremony.value", vec![]).await;
    let unused = unused.unwrap().as_str().unwrap().to_string();
    b.goto(&format!("{site}/login")).await.unwrap();
    let (other, _) = answer(&b, None, None).await;
    send_answer(&b, &unused, &other).await;
    assert_eq!(alert(&b).await, "That passkey was not accepted. Try again, or sign in another way.");

    // Bob adds his own passkey to the same authenticator.
    sign_in(b.clone(), "bob", "battery staple horse").await;
    heading(&b, "bob").await;
    b.goto(&format!("{site}/account/passkeys")).await.unwrap();
    heading(&b, "Passkeys").await;
    b.find(Locator::Id("passkey-password")).await.unwrap().send_keys("battery staple horse").await.unwrap();
    b.find(Locator::Css("#add-passkey button")).await.unwrap().click().await.unwrap();
    heading(&b, "Your recovery codes").await;
    let bob_credential = credentials(&b, &authenticator)
        .await
        .into_iter()
        .find(|(id, _)| *id != ann_credential)
        .expect("bob's credential")
        .0;
    sign_out(b.clone()).await;
    // Bob's answer claiming to be Ann's (the user handle is not signed):
    // refused; the same answer as his own signs him in.
    let (forged, ceremony) = answer(&b, Some(&bob_credential), Some(&ann_handle)).await;
    send_answer(&b, &ceremony, &forged).await;
    assert_eq!(alert(&b).await, "That passkey was not accepted. Try again, or sign in another way.");
    let (honest, ceremony) = answer(&b, Some(&bob_credential), None).await;
    send_answer(&b, &ceremony, &honest).await;
    heading(&b, "bob").await;
    sign_out(b.clone()).await;

    // Ann's second step, answered with Bob's credential: not hers.
    sign_in(b.clone(), "ann", "correct horse battery").await;
    heading(&b, "Confirm it is you").await;
    let (not_hers, ceremony) = answer(&b, Some(&bob_credential), None).await;
    send_answer(&b, &ceremony, &not_hers).await;
    assert_eq!(alert(&b).await, "That passkey was not accepted. Try again, or enter a code.");

    // Another origin under the same domain (not one the config names): the
    // browser signs, the cluster refuses.
    let elsewhere = format!("https://other.example.test:{port}");
    b.goto(&format!("{elsewhere}/login")).await.unwrap();
    heading(&b, "Sign in").await;
    let (wrong_origin, ceremony) = answer(&b, Some(&ann_credential), None).await;
    send_answer(&b, &ceremony, &wrong_origin).await;
    assert_eq!(alert(&b).await, "That passkey was not accepted. Try again, or sign in another way.");
    // Each was refused for its own reason (the audit says which).
    for (action, why) in [
        ("login.failure", gatehouse_domain::passkeys::CHALLENGE_USED),
        ("login.failure", "challenge differs"),
        ("login.failure", gatehouse_domain::passkeys::NOT_A_PASSKEY),
        ("mfa.failure", "passkey"),
        ("login.failure", "origin does not match"),
    ] {
        // Audit records are written in batches: wait for this one.
        let what = format!("{action} audited for {why:?}");
        wait_until(&what, Duration::from_secs(10), || common::audited(&c, action, why)).await;
    }
    assert!(common::audited(&c, "login.success", "passkey").await);

    // An admin sees her passkey, and a reset (a lost device) removes it:
    // the authenticator still signs, the cluster no longer knows the key.
    let (endpoint, admin_key) = (c.endpoint(1), c.admin_key.clone());
    let admin = |args: &'static [&'static str]| common::admin_cli(&endpoint, &admin_key, args);
    let shown = admin(&["user", "get", "ann"]).await.unwrap();
    assert!(shown.contains("passkey"), "{shown}");
    admin(&["user", "reset-factors", "ann", "--yes"]).await.unwrap();
    b.goto(&format!("{site}/login")).await.unwrap();
    let (after_reset, ceremony) = answer(&b, Some(&ann_credential), None).await;
    send_answer(&b, &ceremony, &after_reset).await;
    assert_eq!(alert(&b).await, "That passkey was not accepted. Try again, or sign in another way.");
    b.close().await.unwrap();
    c.shutdown().await;
}

fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_a_stateless_front_a_voter_runs_every_passkey_ceremony() {
    // The front's own address, named in the passkey origins of both.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let site = format!("http://localhost:{port}");
    let passkeys = gatehouse::config::PasskeySettings { rp_id: "localhost".into(), origins: vec![site.clone()] };
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("kek");
    std::fs::write(&key, hex::encode([6u8; 32])).unwrap();
    let on_voters = passkeys.clone();
    let c = common::fronts::cluster_for_fronts(1, &[11], move |c| {
        c.secrets.keys = vec![gatehouse::config::KeySettings { id: "k1".into(), file: key.clone() }];
        c.mfa.passkeys = Some(on_voters.clone());
    })
    .await;
    let mut config = common::fronts::front_config(&c, 11);
    config.http_addr = format!("127.0.0.1:{port}").parse().unwrap();
    config.mfa.passkeys = Some(passkeys);
    let front = gatehouse::FrontNode::start(config).await.expect("the front starts on the port picked");
    assert!(front.wait_ready(Duration::from_secs(10)).await);
    let newest = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("the cluster version is raised", Duration::from_secs(20), || async {
        c.node(1).cluster().cluster_version() == newest
    })
    .await;
    create_user_with_password(c.node(1), "ann", "correct horse battery", &["viewer"]).await;
    let driver = chromedriver().await;
    let b = browser(&driver).await;
    virtual_authenticator(&b).await;

    // Added through the front: the voter begins and checks the ceremony.
    b.goto(&format!("{site}/login")).await.unwrap();
    b.find(Locator::Id("username")).await.unwrap().send_keys("ann").await.unwrap();
    b.find(Locator::Id("password")).await.unwrap().send_keys("correct horse battery").await.unwrap();
    b.find(Locator::Css("form[action=\"/login\"] button")).await.unwrap().click().await.unwrap();
    heading(&b, "ann").await;
    b.goto(&format!("{site}/account/passkeys")).await.unwrap();
    heading(&b, "Passkeys").await;
    b.find(Locator::Id("passkey-password")).await.unwrap().send_keys("correct horse battery").await.unwrap();
    b.find(Locator::Css("#add-passkey button")).await.unwrap().click().await.unwrap();
    heading(&b, "Your recovery codes").await;

    // Renamed, then a sign-in by passkey alone, all through the front.
    b.goto(&format!("{site}/account/passkeys")).await.unwrap();
    b.find(Locator::Id("name-1")).await.unwrap().send_keys("Phone").await.unwrap();
    b.find(Locator::Css("form[action=\"/account/passkeys/rename\"] button")).await.unwrap().click().await.unwrap();
    let notice = b.wait().for_element(Locator::Css("[role=status].notice")).await.unwrap().text().await.unwrap();
    assert_eq!(notice, "Your passkey is renamed.");
    assert_eq!(b.find(Locator::Css("#passkeys tbody td")).await.unwrap().text().await.unwrap(), "Phone");
    b.goto(&format!("{site}/account")).await.unwrap();
    b.find(Locator::Css("form[action=\"/logout\"] button")).await.unwrap().click().await.unwrap();
    heading(&b, "Sign in").await;
    let (first, ceremony) = answer(&b, None, None).await;
    send_answer(&b, &ceremony, &first).await;
    heading(&b, "ann").await;

    // The same answer again through the front: spent, on the voter.
    b.find(Locator::Css("form[action=\"/logout\"] button")).await.unwrap().click().await.unwrap();
    heading(&b, "Sign in").await;
    send_answer(&b, &ceremony, &first).await;
    assert_eq!(alert(&b).await, "That passkey was not accepted. Try again, or sign in another way.");

    // The password's second step, paid with the passkey through the front.
    b.find(Locator::Id("username")).await.unwrap().send_keys("ann").await.unwrap();
    b.find(Locator::Id("password")).await.unwrap().send_keys("correct horse battery").await.unwrap();
    b.find(Locator::Css("form[action=\"/login\"] button")).await.unwrap().click().await.unwrap();
    heading(&b, "Confirm it is you").await;
    b.find(Locator::Id("use-passkey")).await.unwrap().click().await.unwrap();
    heading(&b, "ann").await;
    let user = c.node(1).cluster().view().read().user_by_name("ann").unwrap().user_id.clone();
    let paid = c.node(1).cluster().view().read().sessions_of(&user).any(|s| s.factor == "passkey" && !s.factor_due);
    assert!(paid, "the voter paid the session");
    b.close().await.unwrap();
    front.shutdown().await.unwrap();
    c.shutdown().await;
}
