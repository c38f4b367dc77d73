//! The sign-in pages over real HTTP: the page and its headers (strict CSP
//! with a nonce, CSRF cookie), a password sign-in that lands back on the
//! app, `/auth/verify` sending a browser to sign in, "my account" with its
//! sessions, sign-out; and the attacks: forged forms (CSRF), open
//! redirects, markup injected through an echoed field, malformed and
//! repeated form fields, an account page opened with a bearer token.

mod common;

use common::forms::{browser, hidden, set_cookie};
use common::{base, create_user_with_password, TestCluster};
use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

const SESSION: &str = "__Host-gatehouse_session";
const CSRF: &str = "__Host-gatehouse_csrf";

async fn cluster() -> TestCluster {
    TestCluster::start_with(1, |c| {
        c.pages.return_domains = vec!["example.com".into()];
        c.pages.public_url = Some("https://login.example.com".into());
        c.pages.product_name = "Example <SSO>".into();
    })
    .await
}

/// A browser's CSRF cookie and token, from the sign-in page.
async fn csrf(c: &TestCluster) -> String {
    let resp = browser().get(format!("{}/login", base(c.node(1)))).send().await.unwrap();
    let token = set_cookie(resp.headers(), CSRF).expect("a CSRF cookie");
    assert_eq!(hidden(&resp.text().await.unwrap(), "csrf"), token);
    token
}

/// `POST /login` as a browser with `token` in its cookie and `fields`.
async fn post_login(c: &TestCluster, token: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    browser()
        .post(format!("{}/login", base(c.node(1))))
        .header("cookie", format!("{CSRF}={token}"))
        .form(fields)
        .send()
        .await
        .unwrap()
}

/// Signs `ann` in; returns the session token.
async fn sign_in(c: &TestCluster) -> String {
    let token = csrf(c).await;
    let resp =
        post_login(c, &token, &[("csrf", &token), ("rd", ""), ("username", "ann"), ("password", "pw-of-ann-0001")])
            .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    set_cookie(resp.headers(), SESSION).expect("a session cookie")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sign_in_page_is_html_under_a_strict_csp_with_a_csrf_cookie() {
    let c = cluster().await;
    let resp = browser().get(format!("{}/login", base(c.node(1)))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap().to_string();
    assert!(csp.starts_with("default-src 'none'; style-src 'nonce-"), "{csp}");
    assert!(!csp.contains("unsafe") && !csp.contains("script-src"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self' https://example.com"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    let cookie = h.get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).find(|c| c.starts_with(CSRF));
    let cookie = cookie.expect("a CSRF cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Secure"), "{cookie}");
    let page = resp.text().await.unwrap();
    let nonce = csp.split("'nonce-").nth(1).unwrap().split('\'').next().unwrap();
    assert!(page.contains(&format!("<style nonce=\"{nonce}\">")), "the one inline style carries the nonce");
    assert!(!page.contains("<script"), "no script at all");
    assert!(page.contains("<label for=\"username\">") && page.contains("<label for=\"password\">"));
    assert!(page.contains("autocomplete=\"current-password\""));
    // The product name is configuration, and escaped like everything else.
    assert!(page.contains("Example &#60;SSO&#62;") || page.contains("Example &lt;SSO&gt;"), "{page}");
    // Two requests, two nonces.
    let again = browser().get(format!("{}/login", base(c.node(1)))).send().await.unwrap();
    assert_ne!(again.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap(), csp);
    c.shutdown().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_sign_in_lands_back_on_the_app_and_the_account_page_shows_it() {
    let c = cluster().await;
    create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    let token = csrf(&c).await;
    let wanted = "https://app.example.com/reports?q=1";
    let page = browser()
        .get(format!("{}/login", base(c.node(1))))
        .query(&[("rd", wanted)])
        .header("cookie", format!("{CSRF}={token}"))
        .send()
        .await
        .unwrap();
    let page = page.text().await.unwrap();
    assert_eq!(hidden(&page, "rd"), "https://app.example.com/reports?q=1".replace('&', "&#38;"));
    let resp = post_login(
        &c,
        &token,
        &[("csrf", &token), ("rd", wanted), ("username", "ann"), ("password", "pw-of-ann-0001")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], wanted);
    let session = set_cookie(resp.headers(), SESSION).unwrap();
    let raw = resp
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with(SESSION))
        .unwrap();
    assert!(raw.contains("HttpOnly") && raw.contains("Secure") && raw.contains("SameSite=Lax"), "{raw}");

    // The session works for forward-auth, and the account page shows it.
    let verified = browser()
        .get(format!("{}/auth/verify", base(c.node(1))))
        .header("cookie", format!("{SESSION}={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), StatusCode::OK);
    assert_eq!(verified.headers()["x-auth-user"], "ann");
    let account = browser()
        .get(format!("{}/account", base(c.node(1))))
        .header("cookie", format!("{SESSION}={session}; {CSRF}={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(account.status(), StatusCode::OK);
    let account = account.text().await.unwrap();
    assert!(account.contains("<h1>ann</h1>") && account.contains("ann@example.com"), "{account}");
    assert!(account.contains("this browser"), "{account}");
    c.shutdown().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_gets_one_answer_and_echoed_input_is_escaped() {
    let c = cluster().await;
    create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    let token = csrf(&c).await;
    let hostile = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";
    for (username, password) in [("ann", "wrong"), ("nobody", "wrong"), (hostile, "wrong")] {
        let resp =
            post_login(&c, &token, &[("csrf", &token), ("rd", ""), ("username", username), ("password", password)])
                .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{username}");
        assert!(set_cookie(resp.headers(), SESSION).is_none());
        let page = resp.text().await.unwrap();
        assert!(page.contains("Wrong username or password."), "{page}");
        assert!(!page.contains("<script>") && !page.contains("<img"), "{page}");
    }
    // Empty fields: asked for, not tried.
    let resp = post_login(&c, &token, &[("csrf", &token), ("rd", ""), ("username", "ann"), ("password", "")]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    c.shutdown().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_form_refuses_a_forged_post() {
    let c = cluster().await;
    create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    let token = csrf(&c).await;
    let url = format!("{}/login", base(c.node(1)));
    let fields = [("csrf", token.as_str()), ("rd", ""), ("username", "ann"), ("password", "pw-of-ann-0001")];
    let forged = [
        // No cookie (another site's form): login CSRF.
        browser().post(&url).form(&fields),
        // A token that is not the cookie's.
        browser().post(&url).header("cookie", format!("{CSRF}={}", "ab".repeat(32))).form(&fields),
        // The right pair, from another origin, or a cross-site fetch.
        browser()
            .post(&url)
            .header("cookie", format!("{CSRF}={token}"))
            .header("origin", "https://evil.example")
            .form(&fields),
        browser()
            .post(&url)
            .header("cookie", format!("{CSRF}={token}"))
            .header("sec-fetch-site", "cross-site")
            .form(&fields),
    ];
    for req in forged {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(set_cookie(resp.headers(), SESSION).is_none());
        assert!(resp.text().await.unwrap().contains("expired or was sent from another site"));
    }
    // Sign-out, revocations, keys and the password need the token too: a
    // session stays, and nothing is made or changed.
    let session = sign_in(&c).await;
    let cookies = format!("{SESSION}={session}");
    for path in [
        "/logout",
        "/account/sessions/0123456789abcdef0123456789abcdef/revoke",
        "/account/keys",
        "/account/keys/0123456789abcdef/revoke",
        // (The sign-in link forms: node/tests/links.rs.)
        "/account/password",
    ] {
        let resp = browser()
            .post(format!("{}{path}", base(c.node(1))))
            .header("cookie", &cookies)
            .form(&[("csrf", "")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // The right pair, sent cross-site, changes no password either.
    let both = format!("{CSRF}={token}; {SESSION}={session}");
    let new = "a new and longer passphrase";
    let resp = browser()
        .post(format!("{}/account/password", base(c.node(1))))
        .header("cookie", &both)
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", token.as_str()), ("current", "pw-of-ann-0001"), ("new", new), ("repeat", new)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let still =
        browser().get(format!("{}/auth/verify", base(c.node(1)))).header("cookie", &cookies).send().await.unwrap();
    assert_eq!(still.status(), StatusCode::OK);
    assert_eq!(common::login(c.node(1), "ann", "pw-of-ann-0001").await.status(), StatusCode::OK);
    c.shutdown().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_return_url_off_the_allowed_domains_is_dropped_never_followed() {
    let c = cluster().await;
    create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    let token = csrf(&c).await;
    for rd in [
        "https://evil.com/",
        "//evil.com",
        "/\\evil.com",
        "https:evil.com",
        "https://example.com@evil.com/",
        "https://example.com.evil.com/",
        "javascript:alert(1)",
        "https://app.example.com\t.evil.com/",
        "http://app.example.com/",
    ] {
        let page = browser().get(format!("{}/login", base(c.node(1)))).query(&[("rd", rd)]).send().await.unwrap();
        assert_eq!(hidden(&page.text().await.unwrap(), "rd"), "", "{rd:?}");
        let resp = post_login(
            &c,
            &token,
            &[("csrf", &token), ("rd", rd), ("username", "ann"), ("password", "pw-of-ann-0001")],
        )
        .await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{rd:?}");
        assert_eq!(resp.headers()[LOCATION], "/account", "{rd:?}");
    }
    c.shutdown().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_sends_a_browser_to_sign_in_and_an_api_client_gets_a_plain_401() {
    let c = cluster().await;
    let verify = |redirect: bool| {
        let url = format!("{}/auth/verify{}", base(c.node(1)), if redirect { "?redirect=true" } else { "" });
        browser()
            .get(url)
            .header("accept", "text/html,application/xhtml+xml")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "app.example.com")
            .header("x-forwarded-uri", "/reports?q=1")
    };
    let want = "https://login.example.com/login?rd=https%3A%2F%2Fapp.example.com%2Freports%3Fq%3D1";
    // nginx: 401, and where to go (auth_request_set $upstream_http_location).
    let resp = verify(false).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()[LOCATION], want);
    // Traefik, Caddy: a redirect the browser follows; 303 for a POST.
    let resp = verify(true).send().await.unwrap();
    assert_eq!((resp.status(), resp.headers()[LOCATION].to_str().unwrap()), (StatusCode::FOUND, want));
    let resp = verify(true).header("x-forwarded-method", "POST").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    // An app off the return domains: sent to sign in, not back there.
    let off = browser()
        .get(format!("{}/auth/verify", base(c.node(1))))
        .header("accept", "text/html")
        .header("x-forwarded-host", "evil.com")
        .header("x-forwarded-uri", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(off.headers()[LOCATION], "https://login.example.com/login?rd=");
    // An API client: the plain 401, no redirect.
    for api in [
        browser().get(format!("{}/auth/verify?redirect=true", base(c.node(1)))).header("accept", "application/json"),
        browser()
            .get(format!("{}/auth/verify?redirect=true", base(c.node(1))))
            .bearer_auth("gk_unknown")
            .header("accept", "text/html"),
    ] {
        let resp = api.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers().get(LOCATION).is_none());
    }
    c.shutdown().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_account_page_lists_sessions_and_signs_another_out() {
    let c = cluster().await;
    create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    create_user_with_password(c.node(1), "bob", "pw-of-bob-0001", &["viewer"]).await;
    // Without a session: to sign in, and back here.
    let resp = browser().get(format!("{}/account", base(c.node(1)))).send().await.unwrap();
    assert_eq!(
        (resp.status(), resp.headers()[LOCATION].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "https://login.example.com/login?rd=%2Faccount")
    );
    // A bearer token is an API client's: no page.
    let resp = browser().get(format!("{}/account", base(c.node(1)))).bearer_auth("gk_x").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);

    let (laptop, phone) = (sign_in(&c).await, sign_in(&c).await);
    let token = csrf(&c).await;
    let cookies = format!("{SESSION}={laptop}; {CSRF}={token}");
    let page = browser().get(format!("{}/account", base(c.node(1)))).header("cookie", &cookies).send().await.unwrap();
    let page = page.text().await.unwrap();
    assert_eq!(page.matches("/revoke\"").count(), 1, "one other session to sign out: {page}");
    let action = page.split("action=\"").find(|s| s.contains("/revoke")).unwrap().split('"').next().unwrap();

    // Another person's session id: not found, nothing ended.
    let bobs = {
        let t = csrf(&c).await;
        let resp =
            post_login(&c, &t, &[("csrf", &t), ("rd", ""), ("username", "bob"), ("password", "pw-of-bob-0001")]).await;
        set_cookie(resp.headers(), SESSION).unwrap()
    };
    let bob_page = browser()
        .get(format!("{}/account", base(c.node(1))))
        .header("cookie", format!("{SESSION}={bobs}; {CSRF}={token}"))
        .send()
        .await
        .unwrap();
    assert!(bob_page.text().await.unwrap().contains("this browser"));
    let not_mine = "/account/sessions/ffffffffffffffffffffffffffffffff/revoke";
    let resp = browser()
        .post(format!("{}{not_mine}", base(c.node(1))))
        .header("cookie", &cookies)
        .form(&[("csrf", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // The phone's session, signed out from the laptop.
    let resp = browser()
        .post(format!("{}{action}", base(c.node(1))))
        .header("cookie", &cookies)
        .form(&[("csrf", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        (resp.status(), resp.headers()[LOCATION].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "/account?done=revoked")
    );
    let verify = |session: String| {
        browser()
            .get(format!("{}/auth/verify", base(c.node(1))))
            .header("cookie", format!("{SESSION}={session}"))
            .send()
    };
    assert_eq!(verify(phone).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(verify(laptop.clone()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(verify(bobs).await.unwrap().status(), StatusCode::OK);

    // Signing out ends this session and clears its cookie.
    let resp = browser()
        .post(format!("{}/logout", base(c.node(1))))
        .header("cookie", &cookies)
        .form(&[("csrf", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        (resp.status(), resp.headers()[LOCATION].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "/login?done=signed_out")
    );
    assert_eq!(set_cookie(resp.headers(), SESSION).as_deref(), Some(""));
    assert_eq!(verify(laptop).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    c.shutdown().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_forms_are_refused_and_pages_can_be_turned_off() {
    let c = cluster().await;
    let token = csrf(&c).await;
    let url = format!("{}/login", base(c.node(1)));
    for body in [
        format!("csrf={token}&csrf={token}&username=ann&password=x"),
        format!("csrf={token}&username=ann&password=x&admin=1"),
        format!("csrf={token}&username={}&password=x", "a".repeat(129)),
        format!("csrf={token}&username=a%00b&password=x"),
    ] {
        let resp = browser()
            .post(&url)
            .header("cookie", format!("{CSRF}={token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    }
    let off = TestCluster::start_with(1, |c| c.pages.enabled = false).await;
    let resp = browser().get(format!("{}/login", base(off.node(1)))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    off.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_a_browser_sends_passes_and_a_cookie_that_is_no_session_signs_nobody_in() {
    let logo = tempfile::NamedTempFile::with_suffix(".svg").unwrap();
    std::fs::write(logo.path(), "<svg xmlns=\"http://www.w3.org/2000/svg\"/>").unwrap();
    let logo_path = logo.path().to_path_buf();
    let c = TestCluster::start_with(1, move |c| c.pages.logo_file = Some(logo_path.clone())).await;
    create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    let token = csrf(&c).await;
    // Chromium's own form post from a page: `Origin: null` under a strict
    // referrer policy, and the fetch metadata.
    let resp = browser()
        .post(format!("{}/login", base(c.node(1))))
        .header("cookie", format!("{CSRF}={token}"))
        .header("origin", "null")
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf", token.as_str()), ("rd", ""), ("username", "ann"), ("password", "pw-of-ann-0001")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let first = set_cookie(resp.headers(), SESSION).unwrap();
    // Signing in again from the same browser ends the session it had.
    let resp = browser()
        .post(format!("{}/login", base(c.node(1))))
        .header("cookie", format!("{CSRF}={token}; {SESSION}={first}"))
        .form(&[("csrf", token.as_str()), ("rd", ""), ("username", "ann"), ("password", "pw-of-ann-0001")])
        .send()
        .await
        .unwrap();
    let second = set_cookie(resp.headers(), SESSION).unwrap();
    let verify = |session: String| {
        browser()
            .get(format!("{}/auth/verify", base(c.node(1))))
            .header("cookie", format!("{SESSION}={session}"))
            .send()
    };
    assert_eq!(verify(first).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(verify(second).await.unwrap().status(), StatusCode::OK);
    // An API key in the session cookie (planted by a sibling subdomain with
    // the cookie domain shared) is no sign-in on the pages.
    let key = common::create_key(c.node(1), "kim", &["viewer"]).await;
    let planted = format!("{SESSION}={key}; {CSRF}={token}");
    let resp = browser().get(format!("{}/account", base(c.node(1)))).header("cookie", &planted).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = browser()
        .post(format!("{}/logout", base(c.node(1))))
        .header("cookie", &planted)
        .form(&[("csrf", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(set_cookie(resp.headers(), SESSION).as_deref(), Some(""), "the cookie is cleared all the same");
    // Pages keep their forms' Origin; the logo is cached.
    let page = browser().get(format!("{}/login", base(c.node(1)))).send().await.unwrap();
    assert_eq!(page.headers()["referrer-policy"], "same-origin");
    let logo = browser().get(format!("{}/assets/logo", base(c.node(1)))).send().await.unwrap();
    assert_eq!(
        (logo.headers()[CONTENT_TYPE].to_str().unwrap(), logo.headers()["cache-control"].to_str().unwrap()),
        ("image/svg+xml", "public, max-age=86400")
    );
    assert!(
        logo.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().starts_with("default-src 'none'"),
        "no script in an SVG"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sign_in_form_counts_toward_the_login_limit_and_says_so_in_a_page() {
    use gatehouse_api::rate_limit::policy::{By, LimitsConfig, Mode};
    let c = TestCluster::start_with(1, |c| {
        let mut login = common::policy("login", By::Ip, 2, Mode::Strict);
        login.path_prefix = Some("/api/v1/login".into());
        c.rate_limits = LimitsConfig { enabled: true, policies: vec![login], ..Default::default() };
    })
    .await;
    let token = csrf(&c).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp =
            post_login(&c, &token, &[("csrf", &token), ("rd", ""), ("username", "ann"), ("password", "wrong")]).await;
        statuses.push(resp.status());
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(resp.headers().contains_key("retry-after"));
            assert_eq!(resp.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
            assert!(resp.text().await.unwrap().contains("Too many attempts"));
        }
    }
    assert_eq!(statuses, [StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS]);
    c.shutdown().await;
}
