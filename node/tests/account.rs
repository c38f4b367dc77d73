//! "My account" beyond sessions: API keys made from the page (shown once,
//! with the password given again or, without one, from a recent sign-in;
//! never with a role the person lacks) and revoked; the password changed
//! (the current one checked, every other session ended, this browser kept
//! signed in). The attacks: a cookie alone making a key, another person's
//! key revoked, forged forms, markup in a key's name, a wrong or guessed
//! password (limited). The same through a stateless front, where a voter
//! decides.

mod common;

use std::time::Duration;

use common::forms::{browser, set_cookie};
use common::{base, create_user_with_password, login_at, wait_until, TestCluster};
use reqwest::header::LOCATION;
use reqwest::StatusCode;

const SESSION: &str = "__Host-gatehouse_session";
const CSRF: &str = "__Host-gatehouse_csrf";
const PASSWORD: &str = "pw-of-ann-0001";

/// A browser signed in at `base` with the sign-in form: (session, csrf).
async fn sign_in(base: &str, username: &str, password: &str) -> (String, String) {
    let page = browser().get(format!("{base}/login")).send().await.unwrap();
    let csrf = set_cookie(page.headers(), CSRF).unwrap();
    let resp = browser()
        .post(format!("{base}/login"))
        .header("cookie", format!("{CSRF}={csrf}"))
        .form(&[("csrf", csrf.as_str()), ("rd", ""), ("username", username), ("password", password)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    (set_cookie(resp.headers(), SESSION).expect("a session"), csrf)
}

/// A form posted as the browser holding `session` and `csrf`.
async fn post(base: &str, path: &str, session: &str, csrf: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut form = vec![("csrf", csrf)];
    form.extend_from_slice(fields);
    browser()
        .post(format!("{base}{path}"))
        .header("cookie", format!("{CSRF}={csrf}; {SESSION}={session}"))
        .form(&form)
        .send()
        .await
        .unwrap()
}

async fn account(base: &str, session: &str, csrf: &str) -> String {
    let resp = browser()
        .get(format!("{base}/account"))
        .header("cookie", format!("{CSRF}={csrf}; {SESSION}={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.unwrap()
}

async fn verify_bearer(base: &str, key: &str) -> StatusCode {
    browser().get(format!("{base}/auth/verify")).bearer_auth(key).send().await.unwrap().status()
}

/// The key a "your new key" page shows.
fn shown_key(page: &str) -> String {
    let start = page.find("id=\"key\">").expect("the key is shown") + "id=\"key\">".len();
    page[start..].split('<').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recent_sign_in_makes_a_key_shown_once_and_revokes_it() {
    let c = TestCluster::start_with(1, |c| c.rate_limits.enabled = false).await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer", "operator"]).await;
    create_user_with_password(c.node(1), "bob", "pw-of-bob-0001", &["viewer"]).await;
    let at = base(c.node(1));
    let (session, csrf) = sign_in(&at, "ann", PASSWORD).await;
    let page = account(&at, &session, &csrf).await;
    assert!(page.contains("action=\"/account/keys\"") && page.contains("You have no API keys."), "{page}");

    let name = "<b>ci</b> & \"deploys\"";
    // The cookie alone makes no key: the password again, and the right one.
    for (password, status) in [("", StatusCode::FORBIDDEN), ("not my password", StatusCode::UNAUTHORIZED)] {
        let fields = [("name", "x"), ("role", ""), ("days", "30"), ("password", password)];
        assert_eq!(post(&at, "/account/keys", &session, &csrf, &fields).await.status(), status, "{password:?}");
    }
    let fields = [("name", name), ("role", "viewer"), ("days", "30"), ("password", PASSWORD)];
    let made = post(&at, "/account/keys", &session, &csrf, &fields).await;
    assert_eq!(made.status(), StatusCode::OK);
    assert_eq!(made.headers()["cache-control"], "no-store");
    let page = made.text().await.unwrap();
    assert!(!page.contains("<b>ci</b>") && page.contains("&#60;b&#62;ci&#60;/b&#62;"), "{page}");
    let key = shown_key(&page);
    assert!(key.starts_with("gk_"), "{key}");
    assert_eq!(verify_bearer(&at, &key).await, StatusCode::OK);
    // Listed, escaped, with only the role asked for; never the key itself.
    let page = account(&at, &session, &csrf).await;
    assert!(page.contains("&#60;b&#62;ci") && !page.contains(&key), "{page}");
    let key_id = key.split('_').nth(1).unwrap();
    assert!(page.contains(key_id));
    let record = c.node(1).cluster().view().read().api_key(key_id).cloned().unwrap();
    assert_eq!(record.roles, vec!["viewer".to_string()]);
    assert!(record.expires_at > 0, "every key from the pages expires");

    // Never a role the person lacks, a lifetime out of range, or a blank name.
    for (name, role, days) in
        [("x", "admin", "30"), ("x", "", "0"), ("x", "", "367"), ("x", "", "ten"), ("  ", "", "30")]
    {
        let fields = [("name", name), ("role", role), ("days", days), ("password", PASSWORD)];
        let refused = post(&at, "/account/keys", &session, &csrf, &fields).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{name:?} {role:?} {days:?}");
    }
    // Forged: no CSRF proof; a bearer key instead of a session.
    let forged = browser()
        .post(format!("{at}/account/keys"))
        .header("cookie", format!("{SESSION}={session}"))
        .form(&[("csrf", "0".repeat(64).as_str()), ("name", "x"), ("role", ""), ("days", "30"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let with_key = browser()
        .post(format!("{at}/account/keys"))
        .bearer_auth(&key)
        .header("cookie", format!("{CSRF}={csrf}"))
        .form(&[("csrf", csrf.as_str()), ("name", "x"), ("role", ""), ("days", "30"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), StatusCode::SEE_OTHER, "sent to sign in: a key is no sign-in");

    // Bob cannot revoke ann's key; ann can.
    let (bobs, bob_csrf) = sign_in(&at, "bob", "pw-of-bob-0001").await;
    let path = format!("/account/keys/{key_id}/revoke");
    assert_eq!(post(&at, &path, &bobs, &bob_csrf, &[]).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(verify_bearer(&at, &key).await, StatusCode::OK);
    let revoked = post(&at, &path, &session, &csrf, &[]).await;
    assert_eq!(revoked.status(), StatusCode::SEE_OTHER);
    assert_eq!(revoked.headers()[LOCATION], "/account?done=key_revoked");
    assert_eq!(verify_bearer(&at, &key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(post(&at, &path, &session, &csrf, &[]).await.status(), StatusCode::NOT_FOUND);
    c.shutdown().await;
}

/// A session opened for `user_id` through the log (as a mailed link
/// does for a person without a password): its token.
async fn session_for(c: &TestCluster, user_id: &str) -> String {
    let minted = gatehouse_api::mint::new_session_token();
    let now = gatehouse_cluster::clock::now_ms();
    let cmd =
        c.node(1).cluster().command(gatehouse_domain::Payload::CreateSession(gatehouse_proto::events::CreateSession {
            session_id: gatehouse_cluster::ids::new_id(),
            user_id: user_id.into(),
            token_sha256: minted.token_sha256.to_vec(),
            expires_at: now + 3_600_000,
            idle_timeout_ms: 0,
            client_ip: "127.0.0.1".into(),
            user_agent: "test".into(),
            factor: None,
            method: "pwd".into(),
        }));
    c.node(1).cluster().propose_one(cmd).await.unwrap();
    minted.token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_password_a_key_needs_a_recent_sign_in() {
    let c = TestCluster::start_with(1, |c| {
        c.rate_limits.enabled = false;
        c.pages.reauth_secs = 30;
    })
    .await;
    let cmd = common::create_user(c.node(1), "cyd");
    let Some(gatehouse_domain::Payload::CreateUser(u)) = &cmd.payload else { unreachable!() };
    let user_id = u.user_id.clone();
    c.node(1).cluster().propose_one(cmd).await.unwrap();
    let at = base(c.node(1));
    let page = browser().get(format!("{at}/login")).send().await.unwrap();
    let csrf = set_cookie(page.headers(), CSRF).unwrap();
    // Just signed in: a key, no password asked.
    let young = session_for(&c, &user_id).await;
    let page = account(&at, &young, &csrf).await;
    assert!(page.contains("action=\"/account/keys\"") && !page.contains("key-password"), "{page}");
    let fields = [("name", "x"), ("role", ""), ("days", "7"), ("password", "")];
    assert_eq!(post(&at, "/account/keys", &young, &csrf, &fields).await.status(), StatusCode::OK);
    // The shortest window is 30 s: this test waits it out.
    let began = std::time::Instant::now();
    wait_until("the sign-in is older than the window", Duration::from_secs(40), || async {
        began.elapsed() > Duration::from_secs(31)
    })
    .await;
    let page = account(&at, &young, &csrf).await;
    assert!(!page.contains("action=\"/account/keys\"") && page.contains("sign in again with a new link"), "{page}");
    let refused = post(&at, "/account/keys", &young, &csrf, &fields).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.text().await.unwrap().contains("Sign in again with a new link"));
    let keys = c.node(1).cluster().view().read().api_keys().filter(|k| k.user_id == user_id).count();
    assert_eq!(keys, 1, "only the key made while the sign-in was recent");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guessing_the_current_password_is_limited_like_a_login() {
    // The default limits: 5 logins a minute per address.
    let c = TestCluster::start_with(1, |c| c.rate_limits = Default::default()).await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    let at = base(c.node(1));
    let (session, csrf) = sign_in(&at, "ann", PASSWORD).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let guess = format!("guess number {i}");
        let fields = [
            ("current", guess.as_str()),
            ("new", "a new and longer passphrase"),
            ("repeat", "a new and longer passphrase"),
        ];
        statuses.push(post(&at, "/account/password", &session, &csrf, &fields).await.status());
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert_eq!(*statuses.last().unwrap(), StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    // And over the limit, the right password learns nothing either.
    let fields =
        [("current", PASSWORD), ("new", "a new and longer passphrase"), ("repeat", "a new and longer passphrase")];
    assert_eq!(post(&at, "/account/password", &session, &csrf, &fields).await.status(), StatusCode::TOO_MANY_REQUESTS);
    // The same for a key's password.
    let fields = [("name", "x"), ("role", ""), ("days", "7"), ("password", PASSWORD)];
    assert_eq!(post(&at, "/account/keys", &session, &csrf, &fields).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(login_at(&at, "ann", PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_change_checks_the_current_one_and_ends_every_other_session() {
    let c = TestCluster::start_with(3, |c| c.rate_limits.enabled = false).await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    c.wait_replicated("ann").await;
    let at = base(c.node(2));
    let (session, csrf) = sign_in(&at, "ann", PASSWORD).await;
    let elsewhere = login_at(&base(c.node(3)), "ann", PASSWORD).await;
    let other = set_cookie(elsewhere.headers(), SESSION).unwrap();
    let new = "a new and longer passphrase";
    for (current, new, repeat, status) in [
        ("not my password", new, new, StatusCode::UNAUTHORIZED),
        (PASSWORD, new, "a different passphrase", StatusCode::BAD_REQUEST),
        (PASSWORD, "short", "short", StatusCode::BAD_REQUEST),
    ] {
        let fields = [("current", current), ("new", new), ("repeat", repeat)];
        let refused = post(&at, "/account/password", &session, &csrf, &fields).await;
        assert_eq!(refused.status(), status, "{fields:?}");
        let page = refused.text().await.unwrap();
        assert!(page.contains("role=\"alert\"") && !page.contains(current) && !page.contains(new), "{page}");
    }
    let fields = [("current", PASSWORD), ("new", new), ("repeat", new)];
    let changed = post(&at, "/account/password", &session, &csrf, &fields).await;
    assert_eq!(changed.status(), StatusCode::SEE_OTHER);
    assert_eq!(changed.headers()[LOCATION], "/account?done=password");
    let kept = set_cookie(changed.headers(), SESSION).expect("this browser's new session");
    assert!(account(&at, &kept, &csrf).await.contains("Change your password"), "this browser stays signed in");
    // Every other session ended, on every node; the old password is gone.
    for id in 1..=3 {
        for old in [&session, &other] {
            let verify = browser()
                .get(format!("{}/auth/verify", base(c.node(id))))
                .header("cookie", format!("{SESSION}={old}"))
                .send()
                .await
                .unwrap();
            assert_eq!(verify.status(), StatusCode::UNAUTHORIZED, "node {id}");
        }
    }
    assert_eq!(login_at(&at, "ann", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login_at(&base(c.node(1)), "ann", new).await.status(), StatusCode::OK);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_a_front_a_voter_makes_the_key_and_changes_the_password() {
    let c = common::fronts::cluster_for_fronts(3, &[11], |_| {}).await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    c.wait_replicated("ann").await;
    let front = common::fronts::start_front(&c, 11).await;
    let at = common::fronts::front_base(&front);
    wait_until("the front has ann", Duration::from_secs(20), || async {
        front.api().view().read().user_by_name("ann").is_some()
    })
    .await;
    let (session, csrf) = sign_in(&at, "ann", PASSWORD).await;
    let page = account(&at, &session, &csrf).await;
    let fields = [("name", "ci"), ("role", ""), ("days", "30"), ("password", PASSWORD)];
    let made = post(&at, "/account/keys", &session, &csrf, &fields).await;
    assert_eq!(made.status(), StatusCode::OK, "{page}");
    let key = shown_key(&made.text().await.unwrap());
    assert_eq!(verify_bearer(&at, &key).await, StatusCode::OK);
    assert_eq!(verify_bearer(&base(c.node(2)), &key).await, StatusCode::OK);
    let key_id = key.split('_').nth(1).unwrap();
    assert!(account(&at, &session, &csrf).await.contains(key_id));
    let revoked = post(&at, &format!("/account/keys/{key_id}/revoke"), &session, &csrf, &[]).await;
    assert_eq!(revoked.status(), StatusCode::SEE_OTHER);
    assert_eq!(verify_bearer(&base(c.node(3)), &key).await, StatusCode::UNAUTHORIZED);

    let new = "a new and longer passphrase";
    let fields = [("current", PASSWORD), ("new", new), ("repeat", new)];
    let changed = post(&at, "/account/password", &session, &csrf, &fields).await;
    assert_eq!(changed.status(), StatusCode::SEE_OTHER);
    let kept = set_cookie(changed.headers(), SESSION).unwrap();
    assert!(account(&at, &kept, &csrf).await.contains("Change your password"), "this browser stays signed in");
    assert_eq!(login_at(&base(c.node(1)), "ann", new).await.status(), StatusCode::OK);
    front.shutdown().await.unwrap();
    c.shutdown().await;
}
