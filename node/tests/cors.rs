//! CORS for the JSON API over real HTTP: a listed origin's preflight and
//! credentialed calls get their headers; an unlisted origin, a disallowed
//! method or header, and every path outside `/api/v1/` get none; `*` is
//! refused outside dev mode.

mod common;

use common::{base, create_user_with_password, TestCluster};
use reqwest::{Method, StatusCode};

const APP: &str = "https://app.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listed_origin_may_call_the_json_api_with_credentials_and_no_other() {
    let c = TestCluster::start_with(1, |c| c.identity.cors_origins = vec![APP.into()]).await;
    create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        http.request(Method::OPTIONS, format!("{}/api/v1/login", base(c.node(1))))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .send()
    };
    let ok = preflight(APP, "POST", "content-type,x-requested-with").await.unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let h = ok.headers();
    assert_eq!(
        (h["access-control-allow-origin"].to_str().unwrap(), h["access-control-allow-credentials"].to_str().unwrap()),
        (APP, "true")
    );
    assert_eq!(h["vary"], "Origin");
    for (origin, method, headers) in [
        ("https://evil.example", "POST", "content-type"),
        ("https://app.example.com.evil.example", "POST", "content-type"),
        ("null", "POST", "content-type"),
        (APP, "PUT", "content-type"),
        (APP, "POST", "x-forwarded-for"),
    ] {
        let refused = preflight(origin, method, headers).await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{origin} {method} {headers}");
        assert!(refused.headers().get("access-control-allow-origin").is_none());
    }

    // The app's own calls: its login, then the caller, with the cookie.
    let login = http
        .post(format!("{}/api/v1/login", base(c.node(1))))
        .header("origin", APP)
        .header("x-requested-with", "fetch")
        .json(&serde_json::json!({ "username": "ann", "password": "pw-of-ann-0001" }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(login.headers()["access-control-allow-origin"], APP);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let me = |origin: &'static str| {
        http.get(format!("{}/api/v1/me", base(c.node(1)))).header("origin", origin).header("cookie", &cookie).send()
    };
    let mine = me(APP).await.unwrap();
    assert_eq!((mine.status(), mine.headers()["access-control-allow-origin"].to_str().unwrap()), (StatusCode::OK, APP));
    assert!(mine.headers()["access-control-expose-headers"].to_str().unwrap().contains("retry-after"));
    // Another site: no CORS header, so its browser never shows it the answer.
    let theirs = me("https://evil.example").await.unwrap();
    assert!(theirs.headers().get("access-control-allow-origin").is_none());
    // Forward-auth and the pages are not for scripts.
    let verify = http
        .get(format!("{}/auth/verify", base(c.node(1))))
        .header("origin", APP)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status(), StatusCode::OK);
    assert!(verify.headers().get("access-control-allow-origin").is_none());
    c.shutdown().await;
}

#[test]
fn a_wildcard_or_malformed_origin_is_refused_outside_dev_mode() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["*", "app.example.com", "https://app.example.com/login", "https://user@app.example.com"] {
        let mut config = common::config(1, &dir);
        config.identity.cors_origins = vec![bad.into()];
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("cors_origins"), "{bad}: {e}");
    }
    let mut dev = common::config(1, &dir);
    dev.mode = gatehouse::config::Mode::Dev;
    dev.identity.cors_origins = vec!["*".into()];
    assert!(dev.validate().is_ok());
}
