//! Second factors on a real cluster: an authenticator app enrolled from
//! "my account" (codes made by an independent implementation, Python's
//! pyotp), codes and recovery codes spent once cluster-wide (the same code
//! on three nodes at once: one sign-in), the pages' second step with a
//! waiting session that opens nothing else, lockout after guessing on
//! every node, and the hostile side of enrollment and removal (forged
//! forms, another session's secret, a wrong password or code).

mod common;

use std::time::Duration;

use common::forms::{browser, hidden, set_cookie};
use common::totp::{now_secs, pyotp, secret_bytes};
use common::{audited, base, create_user_with_password, wait_until, TestCluster};
use reqwest::header::LOCATION;
use reqwest::StatusCode;

const SESSION: &str = "__Host-gatehouse_session";
const CSRF: &str = "__Host-gatehouse_csrf";
const PASSWORD: &str = "pw-of-ann-0001";

/// `n` voters with `[secrets]` (TOTP secrets are sealed with it), on the
/// newest command version.
async fn cluster(n: u64, tweak: impl Fn(&mut gatehouse::config::Config)) -> TestCluster {
    let c = TestCluster::start_with_dir(n, |dir, c| {
        let key = dir.path().join("kek");
        if !key.exists() {
            std::fs::write(&key, hex::encode([9u8; 32])).unwrap();
        }
        c.secrets.keys = vec![gatehouse::config::KeySettings { id: "k1".into(), file: key }];
        c.rate_limits.enabled = false;
        tweak(c);
    })
    .await;
    let newest = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("the cluster version is raised", Duration::from_secs(20), || async {
        c.nodes.values().all(|n| n.cluster().cluster_version() == newest)
    })
    .await;
    c
}

/// The password form posted at `base`: the response (not followed).
async fn password_form(base: &str, username: &str, password: &str, rd: &str) -> (reqwest::Response, String) {
    let page = browser().get(format!("{base}/login")).send().await.unwrap();
    let csrf = set_cookie(page.headers(), CSRF).unwrap();
    let resp = browser()
        .post(format!("{base}/login"))
        .header("cookie", format!("{CSRF}={csrf}"))
        .form(&[("csrf", csrf.as_str()), ("rd", rd), ("username", username), ("password", password)])
        .send()
        .await
        .unwrap();
    (resp, csrf)
}

/// A full sign-in without a second factor: (session, csrf).
async fn sign_in(base: &str, username: &str, password: &str) -> (String, String) {
    let (resp, csrf) = password_form(base, username, password, "").await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/account", "no second factor is asked for yet");
    (set_cookie(resp.headers(), SESSION).expect("a session"), csrf)
}

async fn get(base: &str, path: &str, session: &str, csrf: &str) -> reqwest::Response {
    browser()
        .get(format!("{base}{path}"))
        .header("cookie", format!("{CSRF}={csrf}; {SESSION}={session}"))
        .send()
        .await
        .unwrap()
}

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

/// The enrollment page's secret (base32) and sealed form value.
async fn offered(base: &str, session: &str, csrf: &str) -> (String, String) {
    let resp = get(base, "/account/totp", session, csrf).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let page = resp.text().await.unwrap();
    assert!(page.contains("<svg") && page.contains("<path"), "an inline QR code");
    let start = page.find("id=\"totp-secret\">").unwrap() + "id=\"totp-secret\">".len();
    let secret = page[start..].split('<').next().unwrap().to_string();
    (secret, hidden(&page, "sealed"))
}

/// The codes a recovery-codes page shows.
fn shown_codes(page: &str) -> Vec<String> {
    page.split("<li><code>").skip(1).map(|s| s.split('<').next().unwrap().to_string()).collect()
}

struct Enrolled {
    secret: String,
    recovery: Vec<String>,
    session: String,
    csrf: String,
}

/// `username` signs in at `base` and turns an authenticator app on.
async fn enroll(base: &str, username: &str, password: &str) -> Enrolled {
    let (session, csrf) = sign_in(base, username, password).await;
    let (secret, sealed) = offered(base, &session, &csrf).await;
    let code = pyotp(&secret, now_secs());
    let fields = [("sealed", sealed.as_str()), ("code", code.as_str()), ("password", password)];
    let resp = post(base, "/account/totp", &session, &csrf, &fields).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let page = resp.text().await.unwrap();
    let recovery = shown_codes(&page);
    assert_eq!(recovery.len(), 10, "{page}");
    Enrolled { secret, recovery, session, csrf }
}

/// `POST /api/v1/login` with an optional `totp`.
async fn login(base: &str, username: &str, password: &str, totp: Option<&str>) -> reqwest::Response {
    let mut body = serde_json::json!({ "username": username, "password": password });
    if let Some(code) = totp {
        body["totp"] = code.into();
    }
    browser().post(format!("{base}/api/v1/login")).header("x-requested-with", "test").json(&body).send().await.unwrap()
}

async fn error_code(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn codes_from_another_implementation_are_spent_once_across_the_cluster() {
    // Replays and junk count as failures: the lockout is another test's.
    let c = cluster(3, |c| c.mfa.max_failures = 50).await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    let bases: Vec<String> = (1..=3).map(|i| base(c.node(i))).collect();
    let ann = enroll(&bases[0], "ann", PASSWORD).await;
    wait_until("the enrollment is audited", Duration::from_secs(10), || audited(&c, "mfa.enroll", "")).await;

    // The password alone no longer signs in, anywhere.
    let (status, code) = error_code(login(&bases[1], "ann", PASSWORD, None).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "second_factor_required"));
    // A right code never rescues a wrong password.
    let next = pyotp(&ann.secret, now_secs() + 30);
    let (status, code) = error_code(login(&bases[1], "ann", "wrong-password-0001", Some(&next)).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "invalid_credentials"));

    // One code on three nodes at once: exactly one sign-in.
    let tries = bases.iter().map(|b| login(b, "ann", PASSWORD, Some(&next)));
    let answers = futures::future::join_all(tries).await;
    let mut ok = 0;
    for resp in answers {
        if resp.status() == StatusCode::OK {
            ok += 1;
        } else {
            let (status, code) = error_code(resp).await;
            assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "invalid_second_factor"));
        }
    }
    assert_eq!(ok, 1, "a code is spent once, cluster-wide");
    for b in &bases {
        let (_, code) = error_code(login(b, "ann", PASSWORD, Some(&next)).await).await;
        assert_eq!(code, "invalid_second_factor", "used on another node");
    }

    // A recovery code, typed loosely, once.
    let typed = ann.recovery[0].to_uppercase().replace('-', " ");
    let resp = login(&bases[1], "ann", PASSWORD, Some(&typed)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, code) = error_code(login(&bases[2], "ann", PASSWORD, Some(&ann.recovery[0])).await).await;
    assert_eq!(code, "invalid_second_factor", "a recovery code is spent once");
    for junk in ["", "12345", "1234567", "abcd", &"9".repeat(65), "000000"] {
        let resp = login(&bases[2], "ann", PASSWORD, Some(junk)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{junk:?}");
    }

    // The session says which factor, and the account page how many codes are left.
    let resp = login(&bases[0], "ann", PASSWORD, Some(&ann.recovery[1])).await;
    let cookie = set_cookie(resp.headers(), SESSION).unwrap();
    let verify = browser()
        .get(format!("{}/auth/verify", bases[2]))
        .header("cookie", format!("{SESSION}={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status(), StatusCode::OK);
    assert_eq!(verify.headers()["x-auth-mfa"], "recovery");
    assert!(verify.headers()["x-auth-mfa-age"].to_str().unwrap().parse::<u64>().unwrap() < 60);
    let page = get(&bases[0], "/account", &cookie, &ann.csrf).await.text().await.unwrap();
    assert!(page.contains("You have 8 unused recovery codes"), "{page}");

    wait_until("failures are audited", Duration::from_secs(10), || audited(&c, "mfa.failure", "")).await;
    wait_until("the second step is audited", Duration::from_secs(10), || async {
        audited(&c, "login.success", "second factor given").await
    })
    .await;

    // Neither the secret nor its key is anywhere on disk in plaintext.
    let raw = secret_bytes(&ann.secret);
    assert_eq!(raw.len(), 20);
    for (id, config) in &c.configs {
        for entry in walk(&config.data_dir) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            let found = bytes.windows(raw.len()).any(|w| w == raw.as_slice())
                || bytes.windows(ann.secret.len()).any(|w| w == ann.secret.as_bytes());
            assert!(!found, "node {id}: the TOTP secret in plaintext in {}", entry.display());
        }
    }
    let _ = ann.session;
    c.shutdown().await;
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pages_ask_for_the_code_and_the_waiting_cookie_opens_nothing_else() {
    let c = cluster(1, |c| c.pages.return_domains = vec!["example.com".into()]).await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    let at = base(c.node(1));
    let ann = enroll(&at, "ann", PASSWORD).await;

    let rd = "https://app.example.com/x";
    let (resp, csrf) = password_form(&at, "ann", PASSWORD, rd).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let to = resp.headers()[LOCATION].to_str().unwrap().to_string();
    assert!(to.starts_with("/login/factor?rd="), "{to}");
    let waiting = set_cookie(resp.headers(), SESSION).unwrap();
    wait_until("first factors are audited", Duration::from_secs(10), || audited(&c, "login.first_factor", "")).await;

    // The waiting cookie opens nothing but the second step.
    let verify = |cookie: String| {
        let at = at.clone();
        async move {
            browser()
                .get(format!("{at}/auth/verify"))
                .header("cookie", format!("{SESSION}={cookie}"))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(verify(waiting.clone()).await.status(), StatusCode::UNAUTHORIZED);
    let me =
        browser().get(format!("{at}/api/v1/me")).header("cookie", format!("{SESSION}={waiting}")).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
    let account = get(&at, "/account", &waiting, &csrf).await;
    assert_eq!(account.status(), StatusCode::SEE_OTHER);
    assert!(account.headers()[LOCATION].to_str().unwrap().starts_with("/login/factor"));
    let key =
        post(&at, "/account/keys", &waiting, &csrf, &[("name", "k"), ("days", "7"), ("password", PASSWORD)]).await;
    assert_eq!(key.status(), StatusCode::SEE_OTHER, "sent to the second step");
    let keys = c.node(1).cluster().view().read().api_keys().count();
    assert_eq!(keys, 1, "no key from a waiting session (the one key is the admin's)");

    let page = get(&at, &to, &waiting, &csrf).await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("Confirm it is you") && page.contains("ann"), "{page}");
    let form_csrf = hidden(&page, "csrf");
    let form_rd = hidden(&page, "rd");
    assert_eq!(form_rd, rd);
    // A return URL off the allowed domains is dropped, never followed.
    let evil = get(&at, "/login/factor?rd=https%3A%2F%2Fevil.example%2Fx", &waiting, &csrf).await.text().await.unwrap();
    assert_eq!(hidden(&evil, "rd"), "");

    // A forged form, then a wrong code, then the right one.
    let forged = browser()
        .post(format!("{at}/login/factor"))
        .header("cookie", format!("{SESSION}={waiting}"))
        .form(&[("code", "123456"), ("rd", rd)])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let wrong = post(&at, "/login/factor", &waiting, &form_csrf, &[("code", "000000"), ("rd", rd)]).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.text().await.unwrap().contains("That code is wrong"));
    let code = pyotp(&ann.secret, now_secs() + 30);
    let right = post(&at, "/login/factor", &waiting, &form_csrf, &[("code", &code), ("rd", rd)]).await;
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    assert_eq!(right.headers()[LOCATION], rd);
    let signed_in = set_cookie(right.headers(), SESSION).unwrap();
    assert_ne!(signed_in, waiting, "the session gets a new token");

    let ok = verify(signed_in.clone()).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["x-auth-user"], "ann");
    assert_eq!(ok.headers()["x-auth-mfa"], "totp");
    assert_eq!(verify(waiting.clone()).await.status(), StatusCode::UNAUTHORIZED, "the waiting token is gone");
    // A step-up posted with a foreign return URL lands on the account page.
    let fields = [("code", ann.recovery[0].as_str()), ("rd", "https://evil.example/x")];
    let up = post(&at, "/login/factor", &signed_in, &form_csrf, &fields).await;
    assert_eq!(up.status(), StatusCode::SEE_OTHER);
    assert_eq!(up.headers()[LOCATION], "/account");
    // The same code again on the page: spent.
    let (resp, _) = password_form(&at, "ann", PASSWORD, "").await;
    let second = set_cookie(resp.headers(), SESSION).unwrap();
    let again = post(&at, "/login/factor", &second, &form_csrf, &[("code", &code), ("rd", "")]).await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);

    // A person without a factor: no second step, `none` said.
    create_user_with_password(c.node(1), "bob", "pw-of-bob-0001", &["viewer"]).await;
    let (bob, _) = sign_in(&at, "bob", "pw-of-bob-0001").await;
    let plain = verify(bob).await;
    assert_eq!(plain.headers()["x-auth-mfa"], "none");
    assert!(plain.headers().get("x-auth-mfa-age").is_none());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guessing_codes_locks_the_factor_on_every_node() {
    let c = cluster(3, |c| c.mfa.max_failures = 3).await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    let at = base(c.node(1));
    let ann = enroll(&at, "ann", PASSWORD).await;
    // Twelve guesses at once, four on each node: at most three are looked
    // at, as if they had come one at a time.
    let right = pyotp(&ann.secret, now_secs() + 30);
    let guesses: Vec<String> =
        (0..12).map(|i| format!("{:06}", (i * 7919 + 13) % 1_000_000)).filter(|g| *g != right).collect();
    let tries = guesses.iter().enumerate().map(|(i, g)| {
        let at = base(c.node(1 + (i as u64 % 3)));
        async move { error_code(login(&at, "ann", PASSWORD, Some(g)).await).await }
    });
    let answers = futures::future::join_all(tries).await;
    let looked_at = answers.iter().filter(|(_, code)| code == "invalid_second_factor").count();
    let locked =
        answers.iter().filter(|(s, code)| *s == StatusCode::FORBIDDEN && code == "second_factor_locked").count();
    assert!(looked_at <= 3, "{answers:?}");
    assert_eq!(looked_at + locked, guesses.len(), "{answers:?}");
    // Locked on every node, even for the right code.
    for n in 1..=3 {
        let (status, code) = error_code(login(&base(c.node(n)), "ann", PASSWORD, Some(&right)).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "second_factor_locked"), "node {n}");
    }
    wait_until("the lockout is audited", Duration::from_secs(10), || audited(&c, "mfa.locked", "")).await;
    // The account page says so.
    let page = get(&at, "/account", &ann.session, &ann.csrf).await.text().await.unwrap();
    assert!(page.contains("locked for a while"), "{page}");
    // The owner gets past a lockout someone with the password caused: a
    // recovery code (too long to guess) still works.
    let resp = login(&base(c.node(3)), "ann", PASSWORD, Some(&ann.recovery[0])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enrolling_and_removing_need_more_than_a_session() {
    let c = cluster(1, |_| {}).await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    create_user_with_password(c.node(1), "bob", "pw-of-bob-0001", &["viewer"]).await;
    let at = base(c.node(1));
    let has_factor = |name: &str| {
        let state = c.node(1).cluster().view().read();
        let id = state.user_by_name(name).unwrap().user_id.clone();
        state.has_factor(&id)
    };
    let (session, csrf) = sign_in(&at, "ann", PASSWORD).await;
    let (secret, sealed) = offered(&at, &session, &csrf).await;
    let code = pyotp(&secret, now_secs());

    // A forged form (no CSRF proof).
    let forged = browser()
        .post(format!("{at}/account/totp"))
        .header("cookie", format!("{SESSION}={session}"))
        .form(&[("sealed", sealed.as_str()), ("code", code.as_str()), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    // No password, a wrong password, a wrong code.
    let none = post(&at, "/account/totp", &session, &csrf, &[("sealed", &sealed), ("code", &code)]).await;
    assert_eq!(none.status(), StatusCode::FORBIDDEN);
    let fields = [("sealed", sealed.as_str()), ("code", code.as_str()), ("password", "wrong-password-01")];
    assert_eq!(post(&at, "/account/totp", &session, &csrf, &fields).await.status(), StatusCode::UNAUTHORIZED);
    let fields = [("sealed", sealed.as_str()), ("code", "000000"), ("password", PASSWORD)];
    let wrong = post(&at, "/account/totp", &session, &csrf, &fields).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.text().await.unwrap().contains("totp-secret"), "a fresh secret is offered again");
    // Ann's secret in another session of hers, or in bob's: not theirs.
    let (other, other_csrf) = sign_in(&at, "ann", PASSWORD).await;
    let fields = [("sealed", sealed.as_str()), ("code", code.as_str()), ("password", PASSWORD)];
    assert_eq!(post(&at, "/account/totp", &other, &other_csrf, &fields).await.status(), StatusCode::BAD_REQUEST);
    let (bob, bob_csrf) = sign_in(&at, "bob", "pw-of-bob-0001").await;
    let fields = [("sealed", sealed.as_str()), ("code", code.as_str()), ("password", "pw-of-bob-0001")];
    assert_eq!(post(&at, "/account/totp", &bob, &bob_csrf, &fields).await.status(), StatusCode::BAD_REQUEST);
    // Tampered or oversized sealed values.
    for bad in ["", "AAAA", "!!", &"A".repeat(600)] {
        let fields = [("sealed", bad), ("code", code.as_str()), ("password", PASSWORD)];
        let resp = post(&at, "/account/totp", &session, &csrf, &fields).await;
        assert!(resp.status().is_client_error(), "{bad:?}: {}", resp.status());
    }
    assert!(!has_factor("ann") && !has_factor("bob"), "nothing enrolled by any of that");

    // Done properly; then a second enrollment is not offered.
    let ann = enroll(&at, "ann", PASSWORD).await;
    assert!(has_factor("ann"));
    let again = get(&at, "/account/totp", &ann.session, &ann.csrf).await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);

    // New recovery codes need a current code: the old ones stop working.
    let fields = [("code", "000000"), ("password", PASSWORD)];
    assert_eq!(
        post(&at, "/account/recovery", &ann.session, &ann.csrf, &fields).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let fields = [("code", ann.recovery[0].as_str()), ("password", PASSWORD)];
    let fresh = post(&at, "/account/recovery", &ann.session, &ann.csrf, &fields).await;
    assert_eq!(fresh.status(), StatusCode::OK);
    let fresh = shown_codes(&fresh.text().await.unwrap());
    assert_eq!(fresh.len(), 10);
    let (_, code) = error_code(login(&at, "ann", PASSWORD, Some(&ann.recovery[1])).await).await;
    assert_eq!(code, "invalid_second_factor", "replaced codes are void");

    // Turning it off: the password and a code.
    let fields = [("code", fresh[0].as_str())];
    assert_eq!(
        post(&at, "/account/totp/remove", &ann.session, &ann.csrf, &fields).await.status(),
        StatusCode::FORBIDDEN
    );
    let fields = [("code", fresh[0].as_str()), ("password", PASSWORD)];
    let off = post(&at, "/account/totp/remove", &ann.session, &ann.csrf, &fields).await;
    assert_eq!(off.status(), StatusCode::SEE_OTHER);
    assert!(!has_factor("ann"));
    assert_eq!(login(&at, "ann", PASSWORD, None).await.status(), StatusCode::OK);
    wait_until("removal is audited", Duration::from_secs(10), || audited(&c, "mfa.remove", "")).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_a_stateless_front_a_voter_checks_every_step() {
    let keys = tempfile::tempdir().unwrap();
    let kek = keys.path().join("kek");
    std::fs::write(&kek, hex::encode([9u8; 32])).unwrap();
    let c = common::fronts::cluster_for_fronts(3, &[11], move |c| {
        c.secrets.keys = vec![gatehouse::config::KeySettings { id: "k1".into(), file: kek.clone() }];
        c.mfa.trusted_device_days = 7;
    })
    .await;
    // The version rises once the listed front runs (and understands it).
    let mut config = common::fronts::front_config(&c, 11);
    config.mfa.trusted_device_days = 7;
    let front = gatehouse::FrontNode::start(config).await.expect("the front starts");
    assert!(front.wait_ready(Duration::from_secs(10)).await);
    let at = common::fronts::front_base(&front);
    let newest = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("the cluster version is raised", Duration::from_secs(20), || async {
        c.nodes.values().all(|n| n.cluster().cluster_version() == newest)
    })
    .await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;

    // Enrolled through the front: it holds no key, its voter seals and checks.
    let ann = enroll(&at, "ann", PASSWORD).await;
    // Applied where the front's answer came from; every voter follows.
    wait_until("the enrollment reached every voter", Duration::from_secs(10), || async {
        c.nodes.values().all(|n| {
            let state = n.cluster().view().read();
            state.user_by_name("ann").is_some_and(|u| state.has_factor(&u.user_id))
        })
    })
    .await;

    // The second step through the front; "cancel" ends the waiting session.
    let (resp, csrf) = password_form(&at, "ann", PASSWORD, "").await;
    assert!(resp.headers()[LOCATION].to_str().unwrap().starts_with("/login/factor"));
    let waiting = set_cookie(resp.headers(), SESSION).unwrap();
    let waiting_sessions = || c.node(1).cluster().view().read().sessions().filter(|s| s.factor_due).count();
    wait_until("the waiting session reached node 1", Duration::from_secs(5), || async { waiting_sessions() == 1 })
        .await;
    let cancel = post(&at, "/logout", &waiting, &csrf, &[]).await;
    assert_eq!(cancel.status(), StatusCode::SEE_OTHER);
    wait_until("the waiting session ended", Duration::from_secs(5), || async { waiting_sessions() == 0 }).await;

    let (resp, csrf) = password_form(&at, "ann", PASSWORD, "").await;
    let waiting = set_cookie(resp.headers(), SESSION).unwrap();
    let code = pyotp(&ann.secret, now_secs() + 30);
    let wrong = post(&at, "/login/factor", &waiting, &csrf, &[("code", "000000"), ("rd", "")]).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = post(&at, "/login/factor", &waiting, &csrf, &[("code", &code), ("rd", ""), ("trust", "1")]).await;
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    let signed_in = set_cookie(right.headers(), SESSION).unwrap();
    // The front minted the browser's device token; its voter keeps the hash,
    // and the next password sign-in through the front skips the code.
    let device = set_cookie(right.headers(), DEVICE).expect("a device cookie from the front");
    assert_eq!(password_form_on_device(&at, &device).await.headers()[LOCATION], "/account");
    let verify = browser()
        .get(format!("{at}/auth/verify"))
        .header("cookie", format!("{SESSION}={signed_in}"))
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status(), StatusCode::OK);
    assert_eq!(verify.headers()["x-auth-mfa"], "totp");
    // Spent through the front: refused on every voter.
    for n in 1..=3 {
        let (_, code) = error_code(login(&base(c.node(n)), "ann", PASSWORD, Some(&code)).await).await;
        assert_eq!(code, "invalid_second_factor", "node {n}");
    }

    // New recovery codes and turning it off, through the front.
    let fields = [("code", ann.recovery[0].as_str()), ("password", PASSWORD)];
    let fresh = post(&at, "/account/recovery", &signed_in, &csrf, &fields).await;
    assert_eq!(fresh.status(), StatusCode::OK);
    let fresh = shown_codes(&fresh.text().await.unwrap());
    let fields = [("code", fresh[0].as_str()), ("password", "wrong-password-01")];
    assert_eq!(post(&at, "/account/totp/remove", &signed_in, &csrf, &fields).await.status(), StatusCode::UNAUTHORIZED);
    let fields = [("code", fresh[0].as_str()), ("password", PASSWORD)];
    assert_eq!(post(&at, "/account/totp/remove", &signed_in, &csrf, &fields).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(login(&at, "ann", PASSWORD, None).await.status(), StatusCode::OK);
    front.shutdown().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_that_requires_a_factor_cuts_sessions_without_one_and_enrolls_only_with_a_ticket() {
    let c = cluster(1, |c| c.pages.reauth_secs = 30).await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["operator"]).await;
    let at = base(c.node(1));
    let admin = |args: &'static [&'static str]| {
        let (endpoint, key) = (c.endpoint(1), c.admin_key.clone());
        async move { common::admin_cli(&endpoint, &key, args).await }
    };
    let (before, _) = sign_in(&at, "ann", PASSWORD).await;
    let verify = |cookie: String| {
        let at = at.clone();
        async move {
            browser()
                .get(format!("{at}/auth/verify"))
                .header("cookie", format!("{SESSION}={cookie}"))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(verify(before.clone()).await.status(), StatusCode::OK);

    // The policy: operators need a second factor. Ann's session stops at once.
    let said = admin(&["role", "mfa", "--require", "operator"]).await.unwrap();
    assert!(said.contains("operator"), "{said}");
    assert!(admin(&["role", "mfa"]).await.unwrap().contains("operator"));
    assert!(admin(&["role", "mfa", "--require", "nosuchrole"]).await.is_err());
    assert_eq!(verify(before.clone()).await.status(), StatusCode::UNAUTHORIZED);
    let (_, code) = error_code(login(&at, "ann", PASSWORD, None).await).await;
    assert_eq!(code, "second_factor_required", "the JSON API cannot enroll: it says so");

    // The password alone gets the enrollment page, which needs a ticket.
    let (resp, csrf) = password_form(&at, "ann", PASSWORD, "").await;
    assert!(resp.headers()[LOCATION].to_str().unwrap().starts_with("/login/factor"));
    let waiting = set_cookie(resp.headers(), SESSION).unwrap();
    let offer = |waiting: String, csrf: String| {
        let at = at.clone();
        async move {
            let page = get(&at, "/login/factor", &waiting, &csrf).await.text().await.unwrap();
            assert!(page.contains("Set up two-step sign-in") && page.contains("<svg"), "{page}");
            let start = page.find("id=\"totp-secret\">").unwrap() + "id=\"totp-secret\">".len();
            (page[start..].split('<').next().unwrap().to_string(), hidden(&page, "sealed"))
        }
    };
    let (secret, sealed) = offer(waiting.clone(), csrf.clone()).await;
    let code = pyotp(&secret, now_secs());
    let has_factor = || {
        let state = c.node(1).cluster().view().read();
        state.has_factor(&state.user_by_name("ann").unwrap().user_id.clone())
    };
    let long = "x".repeat(65);
    // A forged form (no CSRF proof) is refused before anything is read.
    let forged = browser()
        .post(format!("{at}/login/factor/enroll"))
        .header("cookie", format!("{SESSION}={waiting}"))
        .form(&[("sealed", sealed.as_str()), ("code", code.as_str()), ("ticket", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    for ticket in ["", "abcd-efgh-jkmn-pqrs", long.as_str()] {
        let fields = [("sealed", sealed.as_str()), ("code", code.as_str()), ("ticket", ticket), ("rd", "")];
        let resp = post(&at, "/login/factor/enroll", &waiting, &csrf, &fields).await;
        assert!(resp.status().is_client_error(), "{ticket:?}: {}", resp.status());
    }
    assert!(!has_factor(), "a stolen password alone enrolls nothing");

    // An admin's ticket (shown once, stored as a hash) does it.
    let out = admin(&["user", "enroll-ticket", "ann", "--hours", "1"]).await.unwrap();
    let ticket = out.lines().last().unwrap().trim().to_string();
    assert_eq!(ticket.len(), 19, "{out}");
    let (secret, sealed) = offer(waiting.clone(), csrf.clone()).await;
    let code = pyotp(&secret, now_secs());
    // Any other ticket, once one exists: refused, nothing enrolled.
    // One letter off (typed in capitals: the same ticket would pass).
    let first = if ticket.starts_with('z') { "y" } else { "z" };
    let one_off = format!("{first}{}", &ticket[1..]).to_uppercase();
    for other in ["abcd-efgh-jkmn-pqrs", one_off.as_str()] {
        let fields = [("sealed", sealed.as_str()), ("code", code.as_str()), ("ticket", other), ("rd", "")];
        let wrong = post(&at, "/login/factor/enroll", &waiting, &csrf, &fields).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{other}");
    }
    assert!(!has_factor());
    let fields = [("sealed", sealed.as_str()), ("code", code.as_str()), ("ticket", ticket.as_str()), ("rd", "")];
    let done = post(&at, "/login/factor/enroll", &waiting, &csrf, &fields).await;
    assert_eq!(done.status(), StatusCode::OK);
    let signed_in = set_cookie(done.headers(), SESSION).unwrap();
    assert_eq!(shown_codes(&done.text().await.unwrap()).len(), 10);
    assert!(has_factor());
    let ok = verify(signed_in.clone()).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["x-auth-mfa"], "totp");
    wait_until("the ticket is audited", Duration::from_secs(10), || audited(&c, "mfa.ticket", "")).await;

    // Its holder cannot turn the required factor off.
    let now_code = pyotp(&secret, now_secs() + 30);
    let off =
        post(&at, "/account/totp/remove", &signed_in, &csrf, &[("code", &now_code), ("password", PASSWORD)]).await;
    assert_eq!(off.status(), StatusCode::CONFLICT);
    assert!(has_factor());

    // A key needs a fresh factor: after the window, a code with it.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let fields = [("name", "ci"), ("days", "7"), ("password", PASSWORD)];
    let no_code = post(&at, "/account/keys", &signed_in, &csrf, &fields).await;
    assert_eq!(no_code.status(), StatusCode::FORBIDDEN);
    // So does a passkey added beside the app: refused before its answer
    // is looked at, the password alone adds no authenticator.
    let fields = [("name", "mine"), ("password", PASSWORD), ("ceremony", "x"), ("passkey", "{}")];
    let beside = post(&at, "/account/passkeys", &signed_in, &csrf, &fields).await;
    assert_eq!(beside.status(), StatusCode::FORBIDDEN);
    let fresh = pyotp(&secret, now_secs() + 30);
    let fields = [("name", "ci"), ("days", "7"), ("password", PASSWORD), ("code", fresh.as_str())];
    let made = post(&at, "/account/keys", &signed_in, &csrf, &fields).await;
    assert_eq!(made.status(), StatusCode::OK);

    // An admin's reset: no factor left, and every session of hers ends (a
    // lost device); enrolling again takes a new ticket: the spent one is void.
    let reset = admin(&["user", "reset-factors", "ann", "--yes"]).await.unwrap();
    assert!(reset.contains("reset"), "{reset}");
    assert!(!has_factor());
    assert_eq!(verify(signed_in.clone()).await.status(), StatusCode::UNAUTHORIZED);
    wait_until("the reset is audited", Duration::from_secs(10), || audited(&c, "mfa.reset", "")).await;
    let (resp, csrf) = password_form(&at, "ann", PASSWORD, "").await;
    let waiting = set_cookie(resp.headers(), SESSION).unwrap();
    let (secret, sealed) = offer(waiting.clone(), csrf.clone()).await;
    let code = pyotp(&secret, now_secs());
    let fields = [("sealed", sealed.as_str()), ("code", code.as_str()), ("ticket", ticket.as_str()), ("rd", "")];
    let spent = post(&at, "/login/factor/enroll", &waiting, &csrf, &fields).await;
    assert_eq!(spent.status(), StatusCode::UNAUTHORIZED, "a spent ticket enrolls nothing");
    assert!(!has_factor());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_rules_ask_for_a_second_factor_and_a_fresh_one() {
    let rule = |prefix: &str, mfa: bool, within: Option<&str>, allow_keys: bool| gatehouse::config::RouteRule {
        path_prefix: prefix.into(),
        roles: vec!["viewer".into()],
        mfa: mfa.then(|| "required".to_string()),
        mfa_within: within.map(str::to_string),
        allow_keys,
        ..Default::default()
    };
    let rules = vec![
        rule("/mfa", true, None, false),
        rule("/fresh", false, Some("30s"), false),
        rule("/tools", true, None, true),
    ];
    let c = cluster(1, move |c| {
        c.identity.routes = rules.clone();
        c.pages.return_domains = vec!["example.com".into()];
    })
    .await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    create_user_with_password(c.node(1), "bob", "pw-of-bob-0001", &["viewer"]).await;
    let at = base(c.node(1));
    let ann = enroll(&at, "ann", PASSWORD).await;
    let check = |cookie: Option<String>, key: Option<String>, uri: &'static str, page: bool| {
        let at = at.clone();
        async move {
            let mut r = browser()
                .get(format!("{at}/auth/verify"))
                .header("x-forwarded-host", "app.example.com")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-uri", uri);
            if let Some(cookie) = cookie {
                r = r.header("cookie", format!("{SESSION}={cookie}"));
            }
            if let Some(key) = key {
                r = r.bearer_auth(key);
            }
            if page {
                r = r.header("accept", "text/html");
            }
            r.send().await.unwrap()
        }
    };
    // Ann with a session that presented her factor (the enrollment's).
    let s = Some(ann.session.clone());
    assert_eq!(check(s.clone(), None, "/mfa/x", false).await.status(), StatusCode::OK);
    assert_eq!(check(s.clone(), None, "/fresh/x", false).await.status(), StatusCode::OK);

    // Bob has no factor: refused where one is required, sent to the second step.
    let (bob, _) = sign_in(&at, "bob", "pw-of-bob-0001").await;
    let b = Some(bob.clone());
    assert_eq!(check(b.clone(), None, "/open", false).await.status(), StatusCode::OK);
    let (status, code) = error_code(check(b.clone(), None, "/mfa/x", false).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "second_factor_required"));
    let page = check(b.clone(), None, "/mfa/x", true).await;
    assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
    let to = page.headers()[LOCATION].to_str().unwrap().to_string();
    assert!(to.contains("/login/factor?rd=https%3A%2F%2Fapp.example.com%2Fmfa%2Fx"), "{to}");
    // A forwarded host off the allowed domains: sent to the second step with no way back there.
    let foreign = browser()
        .get(format!("{at}/auth/verify"))
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-uri", "/mfa/x")
        .header("accept", "text/html")
        .header("cookie", format!("{SESSION}={bob}"))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::UNAUTHORIZED);
    assert!(foreign.headers()[LOCATION].to_str().unwrap().ends_with("/login/factor?rd="), "{:?}", foreign.headers());

    // Keys: refused unless the rule allows them.
    let key = common::create_key(c.node(1), "kim", &["viewer"]).await;
    let (status, _) = error_code(check(None, Some(key.clone()), "/mfa/x", false).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(check(None, Some(key.clone()), "/tools/x", false).await.status(), StatusCode::OK);

    // Past the window, a step-up: the page asks for a code and sends her back.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(check(s.clone(), None, "/mfa/x", false).await.status(), StatusCode::OK, "no window there");
    let stale = check(s.clone(), None, "/fresh/x", true).await;
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    let to = stale.headers()[LOCATION].to_str().unwrap().to_string();
    let page = get(
        &at,
        &to.replace("http://", "").split_once('/').map(|(_, p)| format!("/{p}")).unwrap_or(to.clone()),
        &ann.session,
        &ann.csrf,
    )
    .await;
    let page = page.text().await.unwrap();
    assert!(page.contains("Confirm it is you"), "{page}");
    let rd = hidden(&page, "rd");
    assert_eq!(rd, "https://app.example.com/fresh/x");
    let wrong = post(&at, "/login/factor", &ann.session, &ann.csrf, &[("code", "000000"), ("rd", &rd)]).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let code = pyotp(&ann.secret, now_secs() + 30);
    let up = post(&at, "/login/factor", &ann.session, &ann.csrf, &[("code", &code), ("rd", &rd)]).await;
    assert_eq!(up.status(), StatusCode::SEE_OTHER);
    assert_eq!(up.headers()[LOCATION], rd.as_str());
    let fresh = check(s.clone(), None, "/fresh/x", false).await;
    assert_eq!(fresh.status(), StatusCode::OK);
    assert!(fresh.headers()["x-auth-mfa-age"].to_str().unwrap().parse::<u64>().unwrap() < 5);
    wait_until("the step-up is audited", Duration::from_secs(10), || audited(&c, "mfa.step_up", "")).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_key_encryption_key_takes_over_every_secret_in_the_background() {
    // A secret sealed under the old key "k1"; the voters now seal under "k2"
    // and still hold "k1".
    let c = TestCluster::start_with_dir(3, |dir, c| {
        for (name, byte) in [("k1", 1u8), ("k2", 2u8)] {
            let path = dir.path().join(name);
            if !path.exists() {
                std::fs::write(&path, hex::encode([byte; 32])).unwrap();
            }
        }
        c.secrets.keys =
            ["k2", "k1"].map(|id| gatehouse::config::KeySettings { id: id.into(), file: dir.path().join(id) }).to_vec();
        c.secrets.reseal_secs = 1;
        c.rate_limits.enabled = false;
    })
    .await;
    let newest = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("the cluster version is raised", Duration::from_secs(20), || async {
        c.nodes.values().all(|n| n.cluster().cluster_version() == newest)
    })
    .await;
    let user_id = create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    let old = gatehouse_api::seal::Sealer::new(vec![("k1".into(), [1u8; 32])]).unwrap();
    let raw = [5u8; 20];
    let cmd = c.node(1).cluster().command(gatehouse_domain::Payload::EnrollTotp(gatehouse_proto::events::EnrollTotp {
        user_id: user_id.clone(),
        secret: Some(old.seal(&raw, &gatehouse_api::mfa::totp::context(&user_id))),
        step: now_secs() / 30 - 1,
        recovery_sha256: vec![vec![1; 32]],
        ..Default::default()
    }));
    c.node(1).cluster().propose_one(cmd).await.unwrap();
    let key_of = |n: u64| {
        let state = c.node(n).cluster().view().read();
        state
            .factors_of(&user_id)
            .and_then(|f| f.totp.as_ref())
            .and_then(|t| t.secret.as_ref())
            .map(|s| s.key_id.clone())
    };
    wait_until("every node holds the secret under the new key", Duration::from_secs(20), || async {
        (1..=3).all(|n| key_of(n).as_deref() == Some("k2"))
    })
    .await;
    wait_until("the move is audited", Duration::from_secs(10), || audited(&c, "secrets.resealed", "1 value")).await;
    // The same secret still gives working codes (pyotp's), on any node.
    let secret = gatehouse_api::mfa::totp::base32(&raw);
    let code = pyotp(&secret, now_secs() + 30);
    assert_eq!(login(&base(c.node(3)), "ann", PASSWORD, Some(&code)).await.status(), StatusCode::OK);
    // Every voter's pass says none is left under the old key.
    wait_until("no stale secret is counted", Duration::from_secs(10), || async {
        (1..=3).all(|n| c.node(n).api().metrics().encode().lines().any(|l| l == "gatehouse_secrets_stale 0"))
    })
    .await;
    c.shutdown().await;
}

/// The password form posted with this browser's device cookie too.
async fn password_form_on_device(base: &str, device: &str) -> reqwest::Response {
    let page = browser().get(format!("{base}/login")).send().await.unwrap();
    let csrf = set_cookie(page.headers(), CSRF).unwrap();
    browser()
        .post(format!("{base}/login"))
        .header("cookie", format!("{CSRF}={csrf}; {DEVICE}={device}"))
        .form(&[("csrf", csrf.as_str()), ("rd", ""), ("username", "ann"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap()
}

const DEVICE: &str = "__Host-gatehouse_device";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trusted_browser_skips_the_second_step_on_every_node_until_forgotten() {
    let c = cluster(3, |c| c.mfa.trusted_device_days = 30).await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    let bases: Vec<String> = (1..=3).map(|n| base(c.node(n))).collect();
    let ann = enroll(&bases[0], "ann", PASSWORD).await;

    // The second step, asking to trust this browser: a device cookie for
    // 30 days beside the session.
    let (resp, csrf) = password_form(&bases[0], "ann", PASSWORD, "").await;
    let waiting = set_cookie(resp.headers(), SESSION).unwrap();
    let page = get(&bases[0], "/login/factor", &waiting, &csrf).await.text().await.unwrap();
    assert!(page.contains("Trust this browser for 30 days"), "{page}");
    let code = pyotp(&ann.secret, now_secs() + 30);
    let paid = post(&bases[0], "/login/factor", &waiting, &csrf, &[("code", &code), ("trust", "1")]).await;
    assert_eq!(paid.status(), StatusCode::SEE_OTHER);
    let device = set_cookie(paid.headers(), DEVICE).expect("a device cookie");
    let set: Vec<_> = paid.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    let cookie = set.iter().find(|s| s.starts_with(DEVICE)).unwrap();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Max-Age=2592000", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Domain="), "a __Host- cookie names no domain");

    // The password alone now signs in from that browser, on any node: the
    // session is paid, its factor is the trusted browser.
    for b in &bases {
        let resp = password_form_on_device(b, &device).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(resp.headers()[LOCATION], "/account", "{b}: no second step");
        let session = set_cookie(resp.headers(), SESSION).unwrap();
        let verify =
            browser().get(format!("{b}/auth/verify")).header("cookie", format!("{SESSION}={session}")).send().await;
        let verify = verify.unwrap();
        assert_eq!(verify.status(), StatusCode::OK);
        assert_eq!(verify.headers()["x-auth-mfa"], "device");
    }
    wait_until("the trusted sign-in is audited", Duration::from_secs(10), || {
        audited(&c, "login.success", "a trusted browser")
    })
    .await;

    // Another browser, a forged token, or a trusted browser's cookie with
    // someone else's password: the second step is asked for.
    let forged = format!("gd_{}", "A".repeat(43));
    for other in [forged.as_str(), "not-a-token", ""] {
        let resp = password_form_on_device(&bases[1], other).await;
        assert_eq!(resp.headers()[LOCATION], "/login/factor", "{other:?}");
    }
    // A wrong password is a wrong password, trusted browser or not.
    let page = browser().get(format!("{}/login", bases[2])).send().await.unwrap();
    let csrf2 = set_cookie(page.headers(), CSRF).unwrap();
    let wrong = browser()
        .post(format!("{}/login", bases[2]))
        .header("cookie", format!("{CSRF}={csrf2}; {DEVICE}={device}"))
        .form(&[("csrf", csrf2.as_str()), ("rd", ""), ("username", "ann"), ("password", "not-her-password")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // Forgotten from "my account" (on another node): refused everywhere at
    // once, and this browser's cookie is cleared.
    let resp = password_form_on_device(&bases[0], &device).await;
    let session = set_cookie(resp.headers(), SESSION).unwrap();
    let account = get(&bases[2], "/account", &session, &csrf).await.text().await.unwrap();
    assert!(account.contains("1 browser skips the second step"), "{account}");
    let forget = post(&bases[2], "/account/devices/forget", &session, &csrf, &[]).await;
    assert_eq!(forget.status(), StatusCode::SEE_OTHER);
    assert!(forget
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().unwrap().starts_with(&format!("{DEVICE}=;"))));
    for b in &bases {
        let resp = password_form_on_device(b, &device).await;
        assert_eq!(resp.headers()[LOCATION], "/login/factor", "{b}: forgotten");
    }
    wait_until("the forgetting is audited", Duration::from_secs(10), || audited(&c, "mfa.forget_devices", "")).await;

    // Trusted again. The JSON login ignores the cookie; a role that comes
    // to require a second factor asks for it at every sign-in, trust or not.
    let (resp, csrf) = password_form(&bases[0], "ann", PASSWORD, "").await;
    let waiting = set_cookie(resp.headers(), SESSION).unwrap();
    let fields = [("code", ann.recovery[0].as_str()), ("trust", "1")];
    let paid = post(&bases[0], "/login/factor", &waiting, &csrf, &fields).await;
    let device = set_cookie(paid.headers(), DEVICE).expect("trusted again");
    assert_eq!(password_form_on_device(&bases[1], &device).await.headers()[LOCATION], "/account");
    let json = browser()
        .post(format!("{}/api/v1/login", bases[1]))
        .header("x-requested-with", "test")
        .header("cookie", format!("{DEVICE}={device}"))
        .json(&serde_json::json!({ "username": "ann", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(json).await, (StatusCode::UNAUTHORIZED, "second_factor_required".to_string()));
    let (endpoint, admin_key) = (c.endpoint(1), c.admin_key.clone());
    let admin = |args: &'static [&'static str]| common::admin_cli(&endpoint, &admin_key, args);
    admin(&["role", "mfa", "--require", "viewer"]).await.unwrap();
    let required = || async {
        let state = c.node(2).cluster().view().read();
        state.factor_required(&state.user_by_name("ann").unwrap().user_id)
    };
    wait_until("the policy reached node 2", Duration::from_secs(10), required).await;
    assert_eq!(password_form_on_device(&bases[1], &device).await.headers()[LOCATION], "/login/factor");
    admin(&["role", "mfa", "--none"]).await.unwrap();
    wait_until("the policy is lifted on node 2", Duration::from_secs(10), || async { !required().await }).await;
    assert_eq!(password_form_on_device(&bases[1], &device).await.headers()[LOCATION], "/account");
    // An admin's reset ends it with the factors.
    admin(&["user", "reset-factors", "ann", "--yes"]).await.unwrap();
    wait_until("the reset reached node 2", Duration::from_secs(10), || async {
        let state = c.node(2).cluster().view().read();
        let id = state.user_by_name("ann").unwrap().user_id.clone();
        state.factors_of(&id).is_none()
    })
    .await;
    // No factor left: the password signs in, and no device is named.
    let resp = password_form_on_device(&bases[1], &device).await;
    assert_eq!(resp.headers()[LOCATION], "/account");
    let session = set_cookie(resp.headers(), SESSION).unwrap();
    let verify = browser().get(format!("{}/auth/verify", bases[1])).header("cookie", format!("{SESSION}={session}"));
    assert_eq!(verify.send().await.unwrap().headers()["x-auth-mfa"], "none");
    c.shutdown().await;
}
