//! Sign-in links by mail, end to end: a real SMTP server (aiosmtpd, with
//! STARTTLS required) receives the mail; the link in it is opened like a
//! browser and like a mail scanner, spent once on a three-node cluster,
//! and refused when replayed on another node, spent twice at the same
//! moment, opened in another browser, late, or forged. Addresses without
//! an account, outside the allowed domains or over their limit get the
//! same answer and no mail. The same through a stateless front.

mod common;

use std::time::Duration;

use common::forms::{browser, hidden, set_cookie};
use common::smtp::{link_in, Smtp};
use common::{audited, base, create_user_with_password, wait_until, TestCluster};
use reqwest::header::LOCATION;
use reqwest::StatusCode;

const SESSION: &str = "__Host-gatehouse_session";
const CSRF: &str = "__Host-gatehouse_csrf";
const LINK: &str = "__Host-gatehouse_link";
const SENT: &str = "If this address belongs to an account, a sign-in link is on its way.";

async fn cluster(n: u64, smtp: &Smtp, tweak: impl Fn(&mut gatehouse::config::Config)) -> TestCluster {
    let mail = smtp.settings();
    let c = TestCluster::start_with(n, move |c| {
        c.pages.return_domains = vec!["example.com".into()];
        c.pages.public_url = Some("https://login.example.com".into());
        c.pages.email_links = true;
        c.pages.allowed_email_domains = vec!["example.com".into()];
        c.mail = Some(mail.clone());
        c.rate_limits.enabled = false;
        tweak(c);
    })
    .await;
    create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    c.wait_replicated("ann").await;
    newest_version(&c).await;
    c
}

/// Waits until the cluster runs this build's command version: links are
/// written only then (the leader raises it once every node answers).
async fn newest_version(c: &TestCluster) {
    let newest = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("the cluster version is raised", Duration::from_secs(20), || async {
        c.nodes.values().all(|n| n.cluster().cluster_version() == newest)
    })
    .await;
}

/// A browser's CSRF token (also its cookie), from the sign-in page at `base`.
async fn csrf(base: &str) -> String {
    let resp = browser().get(format!("{base}/login")).send().await.unwrap();
    let token = set_cookie(resp.headers(), CSRF).expect("a CSRF cookie");
    let page = resp.text().await.unwrap();
    assert!(page.contains("action=\"/login/email\""), "the link form is offered: {page}");
    token
}

/// Asks for a link for `email` at `base`; returns the page's status and
/// text and the link cookie it set (`link`: the browser's, if it had one).
async fn ask(base: &str, email: &str, link: Option<&str>) -> (StatusCode, String, Option<String>) {
    let token = csrf(base).await;
    let mut cookie = format!("{CSRF}={token}");
    if let Some(l) = link {
        cookie += &format!("; {LINK}={l}");
    }
    let resp = browser()
        .post(format!("{base}/login/email"))
        .header("cookie", cookie)
        .form(&[("csrf", token.as_str()), ("rd", "https://app.example.com/report?q=1"), ("email", email)])
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let set = set_cookie(resp.headers(), LINK);
    (status, resp.text().await.unwrap(), set)
}

/// The path and query of a mailed link (the test reaches the node directly).
fn path_of(link: &str) -> String {
    link.strip_prefix("https://login.example.com").expect("the public address").to_string()
}

/// `POST /login/link` at `base` with the token from `link`, as a browser
/// holding link cookie `secret` (or none).
async fn spend(base: &str, link: &str, secret: Option<&str>) -> reqwest::Response {
    // What opening the link shows: the confirmation page, spending nothing.
    let page = browser().get(format!("{base}{}", path_of(link))).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let csrf = set_cookie(page.headers(), CSRF).expect("a CSRF cookie");
    let text = page.text().await.unwrap();
    let mut cookie = format!("{CSRF}={csrf}");
    if let Some(s) = secret {
        cookie += &format!("; {LINK}={s}");
    }
    browser()
        .post(format!("{base}/login/link"))
        .header("cookie", cookie)
        .form(&[("csrf", csrf.as_str()), ("token", &hidden(&text, "token")), ("rd", &hidden(&text, "rd"))])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mailed_link_signs_in_once_and_only_the_browser_that_asked() {
    let smtp = Smtp::start().await;
    let c = cluster(3, &smtp, |_| {}).await;
    let (status, page, secret) = ask(&base(c.node(1)), "Ann@Example.com", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(SENT), "{page}");
    let secret = secret.expect("the link cookie");
    let mail = smtp.wait_mail(1).await;
    assert!(mail.contains("X-Envelope-To: ann@example.com") && mail.contains("X-Tls: yes"), "{mail}");
    assert!(mail.contains("Subject: Sign in to Gatehouse"), "{mail}");
    let link = link_in(&mail);
    assert!(link.starts_with("https://login.example.com/login/link?token=gl_"), "{link}");
    assert!(link.ends_with("&rd=https%3A%2F%2Fapp.example.com%2Freport%3Fq%3D1"), "{link}");

    // A mail scanner fetches the link: a page with a button, nothing spent.
    for id in 1..=3 {
        let scanned = browser().get(format!("{}{}", base(c.node(id)), path_of(&link))).send().await.unwrap();
        assert_eq!(scanned.status(), StatusCode::OK);
        assert!(scanned.text().await.unwrap().contains("Continue"));
    }
    // Another browser (a forwarded mail): no cookie, or another secret.
    let stranger = spend(&base(c.node(2)), &link, None).await;
    assert_eq!(stranger.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(stranger.headers(), SESSION).is_none());
    let other = hex::encode([9u8; 32]);
    assert_eq!(spend(&base(c.node(2)), &link, Some(&other)).await.status(), StatusCode::FORBIDDEN);
    wait_until("sign_in.link_refused", Duration::from_secs(10), || {
        audited(&c, "sign_in.link_refused", "another browser")
    })
    .await;

    // The browser that asked, on node 2: signed in, sent on to the app.
    let resp = spend(&base(c.node(2)), &link, Some(&secret)).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "https://app.example.com/report?q=1");
    let session = set_cookie(resp.headers(), SESSION).expect("a session cookie");
    for id in 1..=3 {
        let verify = browser()
            .get(format!("{}/auth/verify", base(c.node(id))))
            .header("cookie", format!("{SESSION}={session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(verify.status(), StatusCode::OK, "node {id}");
        assert_eq!(verify.headers()["x-auth-user"], "ann");
    }
    // Replayed on another node: spent already.
    for id in [3, 1] {
        let again = spend(&base(c.node(id)), &link, Some(&secret)).await;
        assert_eq!(again.status(), StatusCode::GONE, "node {id}");
        assert!(again.text().await.unwrap().contains("used already"));
    }
    wait_until("sign_in.link_used", Duration::from_secs(10), || audited(&c, "sign_in.link_used", "")).await;
    wait_until("sign_in.link_refused", Duration::from_secs(10), || audited(&c, "sign_in.link_refused", "used already"))
        .await;

    // Two spends of one link at the same moment, on two nodes: one wins.
    let (_, _, kept) = ask(&base(c.node(3)), "ann@example.com", Some(&secret)).await;
    assert_eq!(kept.as_deref(), Some(secret.as_str()), "the browser keeps its link secret, for longer");
    let link = link_in(&smtp.wait_mail(2).await);
    let (one, three) = (base(c.node(1)), base(c.node(3)));
    let (a, b) = tokio::join!(spend(&one, &link, Some(&secret)), spend(&three, &link, Some(&secret)));
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::SEE_OTHER, StatusCode::GONE]);

    // A forged token, well-formed or not.
    let forged = format!("https://login.example.com/login/link?token=gl_{}", "A".repeat(43));
    assert_eq!(spend(&base(c.node(1)), &forged, Some(&secret)).await.status(), StatusCode::GONE);
    let bad = browser().get(format!("{}/login/link?token=gl_short", base(c.node(1)))).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_address_gets_one_answer_and_only_accounts_get_mail() {
    let smtp = Smtp::start().await;
    let c = cluster(1, &smtp, |c| c.pages.links_per_address = 2).await;
    let outsider = "ann@elsewhere.org";
    let node = c.node(1);
    // Unknown, outside the allowed domains, and over the address's limit:
    // the same page as for an account.
    for email in ["nobody@example.com", outsider, "ann@example.com", "ann@example.com", "ann@example.com"] {
        let (status, page, _) = ask(&base(node), email, None).await;
        assert_eq!(status, StatusCode::OK, "{email}");
        assert!(page.contains(SENT), "{email}: {page}");
    }
    wait_until("the limit", Duration::from_secs(10), || audited(&c, "sign_in.link_refused", "as many")).await;
    wait_until("sign_in.link_refused", Duration::from_secs(10), || {
        audited(&c, "sign_in.link_refused", "no active account")
    })
    .await;
    wait_until("sign_in.link_refused", Duration::from_secs(10), || {
        audited(&c, "sign_in.link_refused", "domain not allowed")
    })
    .await;
    // Two mails (the limit), both to ann; nothing to anyone else.
    smtp.wait_mail(2).await;
    let mails = smtp.mails();
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert!(mails.iter().all(|m| m.contains("X-Envelope-To: ann@example.com")));

    // Malformed input: a clear refusal that echoes nothing as markup.
    let (status, page, set) = ask(&base(node), "\"><script>alert(1)</script>", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!page.contains("<script>alert") && page.contains("&#60;script&#62;"), "{page}");
    assert!(set.is_none(), "no link cookie for a refused form");
    let (status, _, _) = ask(&base(node), &format!("{}@example.com", "a".repeat(300)), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A forged form (no CSRF proof) on either step.
    let token = format!("gl_{}", "A".repeat(43));
    for (path, field, value) in [("/login/email", "email", "ann@example.com"), ("/login/link", "token", token.as_str())]
    {
        let forged = browser()
            .post(format!("{}{path}", base(node)))
            .form(&[("csrf", "0".repeat(64).as_str()), (field, value)])
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN, "{path}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_link_is_expired_and_a_disabled_users_link_is_void() {
    let smtp = Smtp::start().await;
    let c = cluster(1, &smtp, |c| c.pages.link_ttl_secs = 60).await;
    let node = base(c.node(1));
    let (_, _, secret) = ask(&node, "ann@example.com", None).await;
    let secret = secret.unwrap();
    let link = link_in(&smtp.wait_mail(1).await);
    // The shortest lifetime allowed is a minute: this test waits it out.
    let deadline = std::time::Instant::now() + Duration::from_secs(61);
    wait_until("the link's expiry", Duration::from_secs(70), || async { std::time::Instant::now() > deadline }).await;
    let late = spend(&node, &link, Some(&secret)).await;
    assert_eq!(late.status(), StatusCode::GONE);
    assert!(late.text().await.unwrap().contains("expired"));
    wait_until("sign_in.link_expired", Duration::from_secs(10), || audited(&c, "sign_in.link_expired", "expired"))
        .await;

    // A link asked for, then the account disabled: the link is void.
    ask(&node, "ann@example.com", Some(&secret)).await;
    let link = link_in(&smtp.wait_mail(2).await);
    let key = common::create_key(c.node(1), "ops", &["admin"]).await;
    let out = common::admin_cli(&c.endpoint(1), &key, &["user", "disable", "ann"]).await;
    assert!(out.is_ok(), "{out:?}");
    let refused = spend(&node, &link, Some(&secret)).await;
    assert_eq!(refused.status(), StatusCode::GONE);
    assert!(set_cookie(refused.headers(), SESSION).is_none());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_sends_links_on_and_the_voters_mail_and_spend_them() {
    let smtp = Smtp::start().await;
    let mail = smtp.settings();
    let c = common::fronts::cluster_for_fronts(3, &[11], move |c| {
        c.pages.public_url = Some("https://login.example.com".into());
        c.pages.return_domains = vec!["example.com".into()];
        c.pages.email_links = true;
        c.mail = Some(mail.clone());
    })
    .await;
    create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    c.wait_replicated("ann").await;
    let mut config = common::fronts::front_config(&c, 11);
    config.pages.return_domains = vec!["example.com".into()];
    config.pages.email_links = true;
    let front = gatehouse::FrontNode::start(config).await.unwrap();
    let at = common::fronts::front_base(&front);
    // The version rises once the front reports it too.
    newest_version(&c).await;
    wait_until("the front has ann", Duration::from_secs(20), || async {
        front.api().view().read().user_by_name("ann").is_some()
    })
    .await;
    let (status, page, secret) = ask(&at, "ann@example.com", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let secret = secret.unwrap();
    let link = link_in(&smtp.wait_mail(1).await);
    let resp = spend(&at, &link, Some(&secret)).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let session = set_cookie(resp.headers(), SESSION).unwrap();
    let verify = browser()
        .get(format!("{at}/auth/verify"))
        .header("cookie", format!("{SESSION}={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status(), StatusCode::OK);
    // Spent through the front: refused on a voter too.
    assert_eq!(spend(&base(c.node(2)), &link, Some(&secret)).await.status(), StatusCode::GONE);
    front.shutdown().await.unwrap();
    c.shutdown().await;
}
