//! Signing in through an upstream OIDC provider, end to end, against a
//! real provider (Authlib's server side, `common/oidc_provider.py`): the
//! code flow with PKCE on a three-node cluster, the user made at the first
//! sign-in and found again by issuer and subject, groups mapped to roles
//! and taken back, the person disabled upstream losing every session on
//! every node within the re-check interval, and back-channel logout ending
//! them at once.
//!
//! And the attacks: a replayed callback (on another node too), a callback
//! without this browser's flow cookie, ID tokens signed by another key,
//! unsigned, HMAC-signed with the client secret, for another audience,
//! expired, from another issuer, with another nonce or a wrong `at_hash`;
//! an unverified address, an address in an allowed domain whose subject
//! belongs to someone else (never linked by email), and forged, replayed
//! or malformed logout tokens.

mod common;

use std::time::Duration;

use common::forms::{browser, set_cookie};
use common::oidc::{user, Provider};
use common::{audited, base, create_user_with_password, login, wait_until, TestCluster};
use reqwest::header::LOCATION;
use reqwest::StatusCode;

const PUBLIC: &str = "https://login.example.com";
const SESSION: &str = "__Host-gatehouse_session";
const FLOW: &str = "__Host-gatehouse_sso";
const RD: &str = "https://app.example.com/reports?q=1";

fn users() -> Vec<serde_json::Value> {
    vec![
        user("u-ann", "ann", "ann@example.com", &["eng", "ops"]),
        user("u-bea", "bea", "bea@example.com", &["eng"]),
        user("u-out", "out", "out@elsewhere.org", &["eng"]),
        // An address of the local user `root`, asserted by a subject that is not root's.
        user("u-mallory", "mallory", "root@example.com", &["ops"]),
    ]
}

async fn cluster(p: &Provider, tweak: impl Fn(&mut gatehouse::config::Config)) -> TestCluster {
    let settings = {
        let mut s = p.settings("corp");
        s.allowed_email_domains = vec!["example.com".into()];
        s.default_roles = vec!["viewer".into()];
        s.roles = [("ops".to_string(), vec!["operator".to_string()])].into();
        s
    };
    let key = p.dir.path().join("kek");
    std::fs::write(&key, hex::encode([7u8; 32])).unwrap();
    let c = TestCluster::start_with(3, move |c| {
        c.pages.return_domains = vec!["example.com".into()];
        c.pages.public_url = Some(PUBLIC.into());
        c.sso.providers = vec![settings.clone()];
        c.sso.recheck_secs = 5;
        c.secrets.keys = vec![gatehouse::config::KeySettings { id: "k1".into(), file: key.clone() }];
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

/// A sign-in started on node `from`: the provider URL and the flow cookie.
async fn start(c: &TestCluster, from: u64) -> (String, String) {
    start_at(&base(c.node(from))).await
}

/// [`start`] on the HTTP front at `at` (a voter's or a stateless front's).
async fn start_at(at: &str) -> (String, String) {
    let rd: String = url::form_urlencoded::byte_serialize(RD.as_bytes()).collect();
    let resp = browser().get(format!("{at}/login/sso/corp?rd={rd}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let flow = set_cookie(resp.headers(), FLOW).expect("a flow cookie");
    let cookie_line = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with(FLOW))
        .unwrap();
    assert!(
        cookie_line.contains("HttpOnly") && cookie_line.contains("Secure") && cookie_line.contains("SameSite=Lax"),
        "{cookie_line}"
    );
    let to = resp.headers()[LOCATION].to_str().unwrap().to_string();
    let q: std::collections::HashMap<String, String> =
        url::Url::parse(&to).unwrap().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["redirect_uri"], format!("{PUBLIC}/login/sso/corp/callback"));
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    for k in ["state", "nonce", "code_challenge"] {
        assert!(q[k].len() >= 43, "{k}");
        assert!(!flow.contains(&q[k]), "the cookie holds no {k}");
    }
    (to, flow)
}

/// The callback on node `at`, as the browser holding `flow` (or none).
async fn callback(c: &TestCluster, at: u64, back: &str, flow: Option<&str>) -> reqwest::Response {
    callback_at(&base(c.node(at)), back, flow).await
}

/// [`callback`] on the HTTP front at `at`.
async fn callback_at(at: &str, back: &str, flow: Option<&str>) -> reqwest::Response {
    let path = back.strip_prefix(PUBLIC).expect("back to the public address");
    let mut req = browser().get(format!("{at}{path}"));
    if let Some(f) = flow {
        req = req.header("cookie", format!("{FLOW}={f}"));
    }
    req.send().await.unwrap()
}

/// Signs `username` in through the provider; the session cookie.
async fn sign_in(c: &TestCluster, p: &Provider, at: u64, username: &str) -> String {
    let (to, flow) = start(c, at).await;
    let back = p.authorize(&to, username).await;
    let resp = callback(c, at, &back, Some(&flow)).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{}", resp.text().await.unwrap());
    assert_eq!(resp.headers()[LOCATION], RD);
    set_cookie(resp.headers(), SESSION).expect("a session cookie")
}

/// `/auth/verify` on node `at` with session `token`: the status and the user it names.
async fn verify(c: &TestCluster, at: u64, token: &str) -> (StatusCode, String, String) {
    verify_at(&base(c.node(at)), token).await
}

/// [`verify`] on the HTTP front at `at`.
async fn verify_at(at: &str, token: &str) -> (StatusCode, String, String) {
    let resp =
        browser().get(format!("{at}/auth/verify")).header("cookie", format!("{SESSION}={token}")).send().await.unwrap();
    let header = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (resp.status(), header("x-auth-user"), header("x-auth-roles"))
}

async fn wait_audited(c: &TestCluster, action: &str, detail: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !audited(c, action, detail).await {
        if tokio::time::Instant::now() > deadline {
            let mut seen = Vec::new();
            c.node(1)
                .audit_log()
                .scan(u64::MAX, true, |r| {
                    seen.extend(r.event.as_ref().filter(|e| e.action == action).map(|e| e.detail.clone()));
                    true
                })
                .unwrap();
            panic!("no {action} with {detail:?} audited; these were: {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_signs_in_through_the_provider_once_per_flow_and_is_found_again_by_subject() {
    let p = Provider::start(users(), PUBLIC, "corp").await;
    let c = cluster(&p, |_| {}).await;

    // The sign-in page offers the provider.
    let page = browser().get(format!("{}/login", base(c.node(1)))).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("href=\"/login/sso/corp\"") && page.contains("Sign in with Example Corp"), "{page}");

    let (to, flow) = start(&c, 1).await;
    let back = p.authorize(&to, "ann").await;
    let resp = callback(&c, 1, &back, Some(&flow)).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], RD);
    let token = set_cookie(resp.headers(), SESSION).unwrap();
    // The flow cookie is spent with the answer.
    assert_eq!(set_cookie(resp.headers(), FLOW).as_deref(), Some(""));
    for n in 1..=3 {
        wait_until("the session on every node", Duration::from_secs(5), || async {
            verify(&c, n, &token).await.0 == StatusCode::OK
        })
        .await;
        let (_, who, roles) = verify(&c, n, &token).await;
        assert_eq!(who, "ann");
        assert_eq!(roles, "viewer,operator");
    }
    let ann = c.node(2).cluster().view().read().user_by_name("ann").cloned().unwrap();
    assert!(ann.password_hash.is_empty(), "no password for a provider's user");
    assert_eq!(ann.email, "ann@example.com");
    wait_audited(&c, "sso.user_created", "subject \"u-ann\"").await;
    wait_audited(&c, "sso.signed_in", "provider corp").await;

    // The same callback again, on another node: the flow is spent.
    let again = callback(&c, 2, &back, Some(&flow)).await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(again.headers(), SESSION).is_none());
    wait_audited(&c, "sso.refused", "the callback was used already").await;

    // A second sign-in finds the same user (a new user id is never made).
    let second = sign_in(&c, &p, 3, "ann").await;
    assert_eq!(verify(&c, 3, &second).await.1, "ann");
    let view = c.node(3).cluster().view();
    let users: Vec<_> =
        view.read().users().filter(|u| u.email == "ann@example.com").map(|u| u.user_id.clone()).collect();
    assert_eq!(users, vec![ann.user_id.clone()]);
    // The refresh token is sealed in the log, never in plaintext.
    let identity = view.read().upstream_identity(&p.issuer, "u-ann").cloned().unwrap();
    let sealed = identity.refresh_token.unwrap();
    assert_eq!(sealed.key_id, "k1");
    assert!(sealed.ciphertext.len() > 16);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callback_is_taken_only_from_the_browser_that_started_it() {
    let p = Provider::start(users(), PUBLIC, "corp").await;
    let c = cluster(&p, |_| {}).await;
    let (to, flow) = start(&c, 1).await;
    let back = p.authorize(&to, "ann").await;
    // Login CSRF: the attacker's callback URL, opened in a browser without the flow cookie.
    let resp = callback(&c, 1, &back, None).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(resp.headers(), SESSION).is_none());
    // Or with the cookie of another flow of its own.
    let (_, other) = start(&c, 1).await;
    assert_eq!(callback(&c, 1, &back, Some(&other)).await.status(), StatusCode::BAD_REQUEST);
    // A cookie changed to send the browser elsewhere afterwards.
    let mut parts: Vec<String> = flow.split('.').map(str::to_string).collect();
    use base64::Engine as _;
    parts[4] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("https://evil.example.org/");
    assert_eq!(callback(&c, 1, &back, Some(&parts.join("."))).await.status(), StatusCode::BAD_REQUEST);
    // The provider's refusal, and a callback with no code or an oversized one.
    let denied = format!("{PUBLIC}/login/sso/corp/callback?error=access_denied&state=x");
    assert_eq!(callback(&c, 1, &denied, Some(&flow)).await.status(), StatusCode::FORBIDDEN);
    let bare = format!("{PUBLIC}/login/sso/corp/callback");
    assert_eq!(callback(&c, 1, &bare, Some(&flow)).await.status(), StatusCode::BAD_REQUEST);
    let huge = format!("{PUBLIC}/login/sso/corp/callback?code={}&state=x", "a".repeat(5000));
    assert_eq!(callback(&c, 1, &huge, Some(&flow)).await.status(), StatusCode::BAD_REQUEST);
    // An unknown provider.
    let unknown = browser().get(format!("{}/login/sso/nope", base(c.node(1)))).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    // The flow itself still works afterwards, once.
    assert_eq!(callback(&c, 1, &back, Some(&flow)).await.status(), StatusCode::SEE_OTHER);
    wait_audited(&c, "sso.refused", "the callback is not this browser's flow").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_or_misdirected_id_tokens_are_refused() {
    let p = Provider::start(users(), PUBLIC, "corp").await;
    let c = cluster(&p, |_| {}).await;
    // Each mode, and what the audit log says of it.
    for (mode, why) in [
        ("wrong_key", "No matching key found"),
        ("wrong_key_same_kid", "bad signature"),
        ("alg_none", "No signature found"),
        ("hs256_with_client_secret", "Disallowed signature algorithm"),
        ("wrong_aud", "Invalid audiences"),
        ("expired", "Expired"),
        ("wrong_iss", "Invalid issuer"),
        ("wrong_nonce", "Invalid nonce"),
        ("no_at_hash_mismatch", "at_hash"),
    ] {
        p.mode(mode).await;
        let (to, flow) = start(&c, 1).await;
        let back = p.authorize(&to, "bea").await;
        let resp = callback(&c, 1, &back, Some(&flow)).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{mode}");
        assert!(set_cookie(resp.headers(), SESSION).is_none(), "{mode}");
        let page = resp.text().await.unwrap();
        assert!(
            page.contains("could not be accepted") && !page.contains("ignature"),
            "{mode}: no detail shown: {page}"
        );
        wait_audited(&c, "sso.refused", why).await;
    }
    assert!(c.node(1).cluster().view().read().user_by_name("bea").is_none(), "nobody was made");
    wait_audited(&c, "sso.refused", "ID token refused").await;
    p.mode("normal").await;
    sign_in(&c, &p, 1, "bea").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rules_refuse_and_nobody_is_linked_by_email() {
    let p = Provider::start(users(), PUBLIC, "corp").await;
    // Usernames from the provider's `preferred_username`: mallory's is her own.
    let c = cluster(&p, |c| c.sso.providers[0].username_claim = "preferred_username".into()).await;
    create_user_with_password(c.node(1), "root", "pw-of-root-0001", &["admin"]).await;
    c.wait_replicated("root").await;
    let refused = |username: &'static str| {
        let (c, p) = (&c, &p);
        async move {
            let (to, flow) = start(c, 1).await;
            let back = p.authorize(&to, username).await;
            let resp = callback(c, 1, &back, Some(&flow)).await;
            assert!(set_cookie(resp.headers(), SESSION).is_none(), "{username}");
            (resp.status(), resp.text().await.unwrap())
        }
    };
    // Outside the allowed domains.
    let (status, page) = refused("out").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("Accounts of your organisation cannot sign in here"), "{page}");
    wait_audited(&c, "sso.refused", "email domain not allowed").await;
    // An address the provider has not verified.
    p.mode("unverified_email").await;
    let (status, _) = refused("bea").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    wait_audited(&c, "sso.refused", "not verified").await;
    p.mode("normal").await;
    // Root's address from a subject that is not root's, under another
    // username: refused, never linked, root's account untouched.
    let (status, _) = refused("mallory").await;
    assert_eq!(status, StatusCode::CONFLICT);
    wait_audited(&c, "sso.refused", "belongs to another user").await;
    assert!(c.node(1).cluster().view().read().user_by_name("mallory").is_none());
    let view = c.node(1).cluster().view();
    let root = view.read().user_by_name("root").cloned().unwrap();
    assert!(view.read().sessions_of(&root.user_id).next().is_none());
    assert!(view.read().upstream_identities_of(&root.user_id).next().is_none());
    assert_eq!(login(c.node(1), "root", "pw-of-root-0001").await.status(), StatusCode::OK);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_follow_the_provider_and_a_person_disabled_there_is_signed_out_everywhere() {
    let p = Provider::start(users(), PUBLIC, "corp").await;
    let c = cluster(&p, |_| {}).await;
    let token = sign_in(&c, &p, 1, "ann").await;
    let key_of_ann = {
        let ann = c.node(1).cluster().view().read().user_by_name("ann").cloned().unwrap();
        assert_eq!(ann.roles, vec!["viewer".to_string(), "operator".to_string()]);
        ann.user_id
    };
    // Ann leaves `ops` upstream: `operator` goes at the next re-check (5 s).
    p.control("users/u-ann/groups", serde_json::json!({ "groups": ["eng"] })).await;
    wait_until("operator taken away", Duration::from_secs(15), || async {
        c.nodes.values().all(|n| n.cluster().view().read().user(&key_of_ann).is_some_and(|u| u.roles == ["viewer"]))
    })
    .await;
    wait_audited(&c, "sso.roles_changed", "groups changed").await;
    assert_eq!(verify(&c, 2, &token).await.2, "viewer");
    // Disabled upstream: every session on every node ends within the interval, and the user is disabled.
    p.control("users/u-ann/disable", serde_json::json!({})).await;
    wait_until("ann's session refused on every node", Duration::from_secs(15), || async {
        let mut all = true;
        for n in 1..=3 {
            all &= verify(&c, n, &token).await.0 == StatusCode::UNAUTHORIZED;
        }
        all
    })
    .await;
    let ann = c.node(3).cluster().view().read().user(&key_of_ann).cloned().unwrap();
    assert_eq!(ann.status, gatehouse_proto::events::UserStatus::Disabled as i32);
    wait_audited(&c, "sso.ended", "refused the refresh token").await;
    // Let in again upstream, ann signs in again and is enabled.
    p.control("users/u-ann/enable", serde_json::json!({})).await;
    let again = sign_in(&c, &p, 2, "ann").await;
    assert_eq!(verify(&c, 2, &again).await.0, StatusCode::OK);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn back_channel_logout_ends_sessions_at_once_and_only_once() {
    let p = Provider::start(users(), PUBLIC, "corp").await;
    let c = cluster(&p, |c| c.sso.recheck_secs = 3600).await;
    let first = sign_in(&c, &p, 1, "ann").await;
    let second = sign_in(&c, &p, 1, "ann").await;
    let sids: Vec<String> = p.sessions().await.into_iter().filter(|(s, _)| s == "u-ann").map(|(_, sid)| sid).collect();
    assert_eq!(sids.len(), 2);
    let post = |at: u64, body: String| {
        let c = &c;
        async move {
            browser()
                .post(format!("{}/login/sso/corp/backchannel-logout", base(c.node(at))))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let form = |t: &str| format!("logout_token={t}");
    // Forged and malformed tokens end nothing.
    for kind in ["wrong_key", "alg_none", "with_nonce", "no_events", "expired", "wrong_iss"] {
        let t = p.logout_token(Some("u-ann"), None, kind).await;
        let resp = post(2, form(&t)).await;
        let status = resp.status();
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{kind}: {}", resp.text().await.unwrap());
    }
    let other_aud =
        p.control("logout-token", serde_json::json!({ "sub": "u-ann", "aud": "someone-else", "kind": "normal" })).await;
    let other_aud = other_aud["logout_token"].as_str().unwrap().to_string();
    assert_eq!(post(2, form(&other_aud)).await.status(), StatusCode::BAD_REQUEST, "another audience");
    assert_eq!(post(2, "logout_token=".into()).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(post(2, "nothing=here".into()).await.status(), StatusCode::BAD_REQUEST);
    let t = p.logout_token(None, Some(&sids[0]), "normal").await;
    assert_eq!(post(2, format!("{}&{}", form(&t), form(&t))).await.status(), StatusCode::BAD_REQUEST, "two tokens");
    assert_eq!(post(2, format!("logout_token={}", "x".repeat(20_000))).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(verify(&c, 3, &first).await.0, StatusCode::OK);
    wait_audited(&c, "sso.logout_refused", "logout token refused").await;

    // The first provider session signs out: only its session ends, on every node.
    let resp = post(2, form(&t)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    wait_until("the first session ends everywhere", Duration::from_secs(2), || async {
        let mut gone = true;
        for n in 1..=3 {
            gone &= verify(&c, n, &first).await.0 == StatusCode::UNAUTHORIZED;
        }
        gone
    })
    .await;
    assert_eq!(verify(&c, 3, &second).await.0, StatusCode::OK);
    // The same token again, on another node: refused.
    assert_eq!(post(3, form(&t)).await.status(), StatusCode::BAD_REQUEST);
    wait_audited(&c, "sso.logout_refused", "replayed").await;
    // A logout by subject ends every session of the person.
    let all = p.logout_token(Some("u-ann"), None, "normal").await;
    assert_eq!(post(1, form(&all)).await.status(), StatusCode::OK);
    wait_until("every session of ann ends", Duration::from_secs(2), || async {
        verify(&c, 2, &second).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    wait_audited(&c, "sso.backchannel_logout", "sessions ended 1").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_signing_key_is_fetched_when_a_token_names_it() {
    let p = Provider::start(users(), PUBLIC, "corp").await;
    let c = cluster(&p, |_| {}).await;
    sign_in(&c, &p, 1, "ann").await;
    let before = p.requests().await["jwks"].as_u64().unwrap_or(0);
    p.control("rotate", serde_json::json!({ "publish_old": false })).await;
    sign_in(&c, &p, 1, "bea").await;
    let after = p.requests().await["jwks"].as_u64().unwrap_or(0);
    assert!(after > before, "the keys were fetched again ({before} → {after})");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_password_sign_in_off_only_the_break_glass_admin_uses_a_password() {
    let p = Provider::start(users(), PUBLIC, "corp").await;
    let c = cluster(&p, |c| {
        c.sso.password_sign_in = false;
        c.sso.break_glass_users = vec!["root".into()];
    })
    .await;
    create_user_with_password(c.node(1), "root", "pw-of-root-0001", &["admin"]).await;
    create_user_with_password(c.node(1), "local", "pw-of-local-001", &["viewer"]).await;
    c.wait_replicated("local").await;
    assert_eq!(login(c.node(1), "local", "pw-of-local-001").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login(c.node(2), "root", "pw-of-root-0001").await.status(), StatusCode::OK);
    // The page shows the provider only; the break-glass form is at ?local=1.
    let page = browser().get(format!("{}/login", base(c.node(1)))).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("/login/sso/corp") && !page.contains("name=\"password\""), "{page}");
    let local = browser().get(format!("{}/login?local=1", base(c.node(1)))).send().await.unwrap().text().await.unwrap();
    assert!(local.contains("name=\"password\""), "{local}");
    sign_in(&c, &p, 1, "bea").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stateless_front_sends_the_flow_to_a_voter_and_never_holds_the_client_secret() {
    let p = Provider::start(users(), PUBLIC, "corp").await;
    let mut settings = p.settings("corp");
    settings.roles = [("ops".to_string(), vec!["operator".to_string()])].into();
    let key = p.dir.path().join("kek");
    std::fs::write(&key, hex::encode([9u8; 32])).unwrap();
    let voter_settings = settings.clone();
    let c = common::fronts::cluster_for_fronts(3, &[11], move |c| {
        c.pages.public_url = Some(PUBLIC.into());
        c.pages.return_domains = vec!["example.com".into()];
        c.sso.providers = vec![voter_settings.clone()];
        c.secrets.keys = vec![gatehouse::config::KeySettings { id: "k1".into(), file: key.clone() }];
    })
    .await;
    let mut config = common::fronts::front_config(&c, 11);
    config.pages.return_domains = vec!["example.com".into()];
    config.pages.public_url = Some(PUBLIC.into());
    // The front names the provider; it has no client secret and no sealing key.
    config.sso.providers = vec![gatehouse::config::ProviderSettings { client_secret_file: None, ..settings }];
    let front = gatehouse::FrontNode::start(config).await.unwrap();
    let at = common::fronts::front_base(&front);
    let newest = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("the cluster version is raised", Duration::from_secs(20), || async {
        c.nodes.values().all(|n| n.cluster().cluster_version() == newest)
    })
    .await;

    let (to, flow) = start_at(&at).await;
    let back = p.authorize(&to, "ann").await;
    // A replay of the callback through the front is refused by the voter, once spent.
    let resp = callback_at(&at, &back, Some(&flow)).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{}", resp.text().await.unwrap());
    let token = set_cookie(resp.headers(), SESSION).unwrap();
    let (status, who, roles) = verify_at(&at, &token).await;
    assert_eq!((status, who.as_str(), roles.as_str()), (StatusCode::OK, "ann", "operator"));
    assert_eq!(callback_at(&at, &back, Some(&flow)).await.status(), StatusCode::BAD_REQUEST);
    // Refusals come back through the front as the same pages.
    p.mode("wrong_aud").await;
    let (to, flow) = start_at(&at).await;
    let back = p.authorize(&to, "bea").await;
    assert_eq!(callback_at(&at, &back, Some(&flow)).await.status(), StatusCode::BAD_GATEWAY);
    p.mode("normal").await;
    // The front's view holds the link, without the sealed refresh token.
    wait_until("the front applied the sign-in", Duration::from_secs(10), || async {
        front.api().view().read().upstream_identity(&p.issuer, "u-ann").is_some()
    })
    .await;
    assert!(front.api().view().read().upstream_identity(&p.issuer, "u-ann").unwrap().refresh_token.is_none());
    assert!(c.node(1).cluster().view().read().upstream_identity(&p.issuer, "u-ann").unwrap().refresh_token.is_some());
    // Back-channel logout through the front ends the session everywhere.
    let sid = p.sessions().await.into_iter().find(|(s, _)| s == "u-ann").unwrap().1;
    let t = p.logout_token(None, Some(&sid), "normal").await;
    let resp = browser()
        .post(format!("{at}/login/sso/corp/backchannel-logout"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("logout_token={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    wait_until("the session ends on the front", Duration::from_secs(5), || async {
        verify_at(&at, &token).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    front.shutdown().await.unwrap();
    c.shutdown().await;
}
