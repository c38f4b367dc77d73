//! Identity on the HTTP front of a 3-node cluster: login, sessions and API
//! keys checked on every node, revocation everywhere, lockout, CSRF, and
//! hostile input.

mod common;

use std::time::Duration;

use common::{base, create_key, create_user_with_password, http, login, wait_until, TestCluster};
use gatehouse::Node;
use gatehouse_domain::Payload;
use gatehouse_proto::events::{RevokeApiKey, SetPassword, SetUserStatus, UserStatus};
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery staple";

/// The session cookie's `name=value` from a login response.
fn session_cookie(resp: &reqwest::Response) -> String {
    let c = resp.headers()["set-cookie"].to_str().unwrap();
    c.split(';').next().unwrap().to_string()
}

async fn verify_cookie(node: &Node, cookie: &str) -> StatusCode {
    http().get(format!("{}/auth/verify", base(node))).header("cookie", cookie).send().await.unwrap().status()
}

async fn verify_bearer(node: &Node, token: &str) -> reqwest::Response {
    http().get(format!("{}/auth/verify", base(node))).bearer_auth(token).send().await.unwrap()
}

async fn error_code(resp: reqwest::Response) -> String {
    let v: serde_json::Value = resp.json().await.unwrap();
    v["error"]["code"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_made_on_one_node_works_on_every_node_at_once_and_logout_ends_it() {
    let c = TestCluster::start(3).await;
    create_user_with_password(c.node(1), "alice", PASSWORD, &["viewer"]).await;
    let resp = login(c.node(1), "Alice", PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // One cookie, `__Host-` prefixed (Secure, Path=/, no Domain), whole value checked.
    let set_cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(set_cookies.len(), 1);
    let set_cookie = set_cookies[0].to_str().unwrap().to_string();
    let (pair, attrs) = set_cookie.split_once("; ").unwrap();
    let token = pair.strip_prefix("__Host-gatehouse_session=gs_").unwrap_or_else(|| panic!("{set_cookie}"));
    assert_eq!(token.len(), 43, "{set_cookie}");
    assert_eq!(attrs, "Path=/; HttpOnly; SameSite=Lax; Max-Age=43200; Secure");
    for (h, want) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(resp.headers()[h], want, "{h}");
    }
    let cookie = session_cookie(&resp);

    // Read your writes: every node accepts the new session right away.
    let mut unauthorized = 0;
    for i in 0..1000u64 {
        let node = c.node(1 + i % 3);
        if verify_cookie(node, &cookie).await != StatusCode::OK {
            unauthorized += 1;
        }
    }
    assert_eq!(unauthorized, 0);
    let ok = http().get(format!("{}/auth/verify", base(c.node(3)))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(ok.headers()["x-auth-user"], "alice");
    assert_eq!(ok.headers()["x-auth-roles"], "viewer");
    assert_eq!(ok.headers()["x-auth-user-id"].len(), 32);

    let me: serde_json::Value = http()
        .get(format!("{}/api/v1/me", base(c.node(2))))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "alice");
    assert_eq!(me["auth"]["type"], "session");
    let list: serde_json::Value = http()
        .get(format!("{}/api/v1/me/sessions", base(c.node(2))))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(list["sessions"][0]["current"], true);

    // Logout without CSRF proof is refused; with it, the session ends everywhere.
    let no_csrf =
        http().post(format!("{}/api/v1/logout", base(c.node(2)))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(no_csrf.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(no_csrf).await, "csrf_failed");
    let out = http()
        .post(format!("{}/api/v1/logout", base(c.node(2))))
        .header("cookie", &cookie)
        .header("origin", format!("http://{}", c.node(2).http_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::OK);
    assert_eq!(
        out.headers()["set-cookie"],
        "__Host-gatehouse_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; Secure"
    );
    // A second cookie of the name (planted by a sibling host) is refused, not picked.
    let (name, value) = cookie.split_once('=').unwrap();
    let login2 = session_cookie(&login(c.node(1), "alice", PASSWORD).await);
    assert_eq!(verify_cookie(c.node(1), &login2).await, StatusCode::OK);
    let doubled = format!("{login2}; {name}={value}");
    assert_eq!(verify_cookie(c.node(1), &doubled).await, StatusCode::UNAUTHORIZED);
    let doubled = format!("{login2}; {login2}");
    assert_eq!(verify_cookie(c.node(1), &doubled).await, StatusCode::UNAUTHORIZED);
    for id in 1..=3 {
        assert_eq!(verify_cookie(c.node(id), &cookie).await, StatusCode::UNAUTHORIZED);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_verify_everywhere_and_a_revocation_holds_everywhere() {
    let c = TestCluster::start(3).await;
    let key = create_key(c.node(2), "bob", &["operator"]).await;
    for i in 0..1000u64 {
        let r = verify_bearer(c.node(1 + i % 3), &key).await;
        assert_eq!(r.status(), StatusCode::OK, "try {i}");
    }
    // Role checks.
    assert_eq!(
        http()
            .get(format!("{}/auth/verify?role=operator", base(c.node(1))))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        http()
            .get(format!("{}/auth/verify?role=admin", base(c.node(1))))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        http()
            .get(format!("{}/auth/verify?role=Bad%20Role", base(c.node(1))))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );

    let key_id = key.split('_').nth(1).unwrap().to_string();
    let revoke = c.node(3).cluster().command(Payload::RevokeApiKey(RevokeApiKey { key_id }));
    c.node(3).cluster().propose_one(revoke).await.unwrap();
    // Acknowledged: within max_staleness no node may accept it; these nodes are fresh, so none does.
    wait_until("every node applied the revocation", Duration::from_secs(2), || {
        let applied = c.nodes.values().all(|n| {
            n.cluster().view().read().api_key(key.split('_').nth(1).unwrap()).is_some_and(|k| k.revoked_at != 0)
        });
        async move { applied }
    })
    .await;
    for i in 0..300u64 {
        let r = verify_bearer(c.node(1 + i % 3), &key).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key("www-authenticate"));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lockout_password_change_and_disabling_hold_on_every_node() {
    let c = TestCluster::start(3).await;
    let user_id = create_user_with_password(c.node(1), "carol", PASSWORD, &["viewer"]).await;

    // Wrong password and unknown user get the same answer.
    let wrong = login(c.node(1), "carol", "not the password!!").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let wrong_body = wrong.text().await.unwrap();
    let unknown = login(c.node(1), "nobody-here", "not the password!!").await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.text().await.unwrap(), wrong_body);

    // Five failures spread over the nodes lock this client's address out of
    // the account everywhere (other addresses: limits_audit.rs).
    for i in 0..4u64 {
        assert_eq!(login(c.node(1 + i % 3), "carol", "still not it!!!").await.status(), StatusCode::UNAUTHORIZED);
    }
    wait_until("the lockout on every node", Duration::from_secs(5), || {
        let now = gatehouse_cluster::clock::now_ms();
        let locked = c.nodes.values().all(|n| {
            n.cluster()
                .view()
                .read()
                .user(&user_id)
                .is_some_and(|u| gatehouse_domain::users::is_locked_from(u, "127.0.0.1", now))
        });
        async move { locked }
    })
    .await;
    for id in 1..=3 {
        assert_eq!(
            login(c.node(id), "carol", PASSWORD).await.status(),
            StatusCode::UNAUTHORIZED,
            "locked on node {id}"
        );
    }

    // A password change (which also unlocks) kills every existing session.
    let dave = create_user_with_password(c.node(2), "dave", PASSWORD, &["viewer"]).await;
    let cookie = session_cookie(&login(c.node(2), "dave", PASSWORD).await);
    assert_eq!(verify_cookie(c.node(3), &cookie).await, StatusCode::OK);
    let hash = gatehouse_api::passwords::PasswordPool::new(1, 2).hash("a whole new password".into()).await.unwrap();
    let cmd =
        c.node(1).cluster().command(Payload::SetPassword(SetPassword { user_id: dave.clone(), password_hash: hash }));
    let done = c.node(1).cluster().propose_one(cmd).await.unwrap();
    c.wait_applied_everywhere(done.log_index).await;
    for id in 1..=3 {
        assert_eq!(verify_cookie(c.node(id), &cookie).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(login(c.node(3), "dave", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login(c.node(3), "dave", "a whole new password").await.status(), StatusCode::OK);

    // A disabled user's keys stop working (403) and sessions end.
    let key = create_key(c.node(1), "erin", &["viewer"]).await;
    let erin = c.node(1).cluster().view().read().user_by_name("erin").unwrap().user_id.clone();
    let cmd = c
        .node(1)
        .cluster()
        .command(Payload::SetUserStatus(SetUserStatus { user_id: erin, status: UserStatus::Disabled as i32 }));
    let done = c.node(1).cluster().propose_one(cmd).await.unwrap();
    c.wait_applied_everywhere(done.log_index).await;
    for id in 1..=3 {
        assert_eq!(verify_bearer(c.node(id), &key).await.status(), StatusCode::FORBIDDEN);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input_gets_4xx_and_changes_nothing() {
    let c = TestCluster::start(3).await;
    create_user_with_password(c.node(1), "frank", PASSWORD, &["viewer"]).await;
    let cookie = session_cookie(&login(c.node(1), "frank", PASSWORD).await);
    create_user_with_password(c.node(1), "grace", PASSWORD, &["viewer"]).await;
    let grace = session_cookie(&login(c.node(1), "grace", PASSWORD).await);
    let grace_user = c.node(1).cluster().view().read().user_by_name("grace").unwrap().user_id.clone();
    let grace_session = c.node(1).cluster().view().read().sessions_of(&grace_user).next().unwrap().session_id;
    let snapshot = |c: &TestCluster| {
        let s = c.node(1).cluster().view().read();
        (s.users().count(), s.sessions().count(), s.api_keys().count(), s.roles().count())
    };
    let before = snapshot(&c);
    let n = c.node(2);
    let url = format!("{}/auth/verify", base(n));

    for bad in [
        "garbage",
        "gk_",
        "gk_0123456789abcdef_short",
        "gs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "gs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\u{e9}",
        "gk_zzzzzzzzzzzzzzzz_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let r = http().get(&url).header("authorization", format!("Bearer {bad}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
    let truncated = &cookie[..cookie.len() - 2];
    assert_eq!(verify_cookie(n, truncated).await, StatusCode::UNAUTHORIZED);
    let wrong_name = cookie.replace("gatehouse_session", "session");
    assert_eq!(verify_cookie(n, &wrong_name).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        http().get(&url).header("authorization", "Basic Zm9vOmJhcg==").send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let huge = "a".repeat(20 * 1024);
    assert_eq!(
        http().get(&url).header("x-junk", &huge).send().await.unwrap().status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let long_token = format!("gs_{}", "A".repeat(5000));
    assert_eq!(http().get(&url).bearer_auth(long_token).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    let login_url = format!("{}/api/v1/login", base(n));
    let post = |body: String| {
        http().post(&login_url).header("x-requested-with", "t").header("content-type", "application/json").body(body)
    };
    assert_eq!(post("{not json".into()).send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        post(r#"{"username": 5, "password": []}"#.into()).send().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(post(r#"{"username": "frank"}"#.into()).send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        post(r#"{"username": "frank", "password": "x", "admin": true}"#.into()).send().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(format!(r#"{{"username": "{}", "password": "x"}}"#, "x".repeat(100))).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(r#"{"username": "fr\u00e4nk", "password": "correct horse battery staple"}"#.into())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(format!(r#"{{"username": "frank", "password": "{}"}}"#, "p".repeat(70_000)))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Whatever the framework could not read is our JSON error, with a fixed
    // message that echoes nothing of the input.
    let base_url = base(n);
    let cases = [
        (http().get(format!("{url}?role=%FF%FE")), StatusCode::BAD_REQUEST, "invalid_argument"),
        (http().get(format!("{url}?role=a&role=b")), StatusCode::BAD_REQUEST, "invalid_argument"),
        (http().post(&url), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (http().delete(format!("{base_url}/api/v1/me/sessions/%FF%FE")), StatusCode::BAD_REQUEST, "invalid_argument"),
        (
            post(format!(r#"{{"username": "<script>", "password": "{}"}}"#, "p".repeat(70_000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (http().get(format!("{base_url}/nope/<script>")), StatusCode::NOT_FOUND, "not_found"),
    ];
    for (req, status, code) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let text = r.text().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["error"]["code"], code, "{text}");
        for echoed in ["script", "%FF", "\u{fffd}", "deserialize", "UTF-8", "duplicate"] {
            assert!(!text.contains(echoed), "{echoed} in {text}");
        }
    }
    // Login without CSRF proof.
    let r = http()
        .post(&login_url)
        .json(&serde_json::json!({ "username": "frank", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Someone else's session, or an unknown id: the same answer, and nothing revoked.
    for id in [grace_session, "0".repeat(32)] {
        let r = http()
            .delete(format!("{}/api/v1/me/sessions/{id}", base(n)))
            .header("cookie", &cookie)
            .header("x-requested-with", "t")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(verify_cookie(n, &grace).await, StatusCode::OK, "grace's session survived frank's attempt");
    let r = http().get(format!("{}/no/such/path", base(n))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "not_found");

    // The caller's own endpoints without, or with a wrong, credential; logout with a key.
    for path in ["/api/v1/me", "/api/v1/me/sessions"] {
        assert_eq!(http().get(format!("{}{path}", base(n))).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
        let r = http()
            .get(format!("{}{path}", base(n)))
            .header("cookie", "gatehouse_session=gs_forged")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = http().post(format!("{}/api/v1/logout", base(n))).bearer_auth(&c.admin_key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http().delete(format!("{}/api/v1/me/sessions/{}", base(n), "0".repeat(32))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Nothing above changed users, sessions, keys or roles (the refusals are
    // only audited), and the real session still works.
    assert_eq!(snapshot(&c), before);
    assert_eq!(verify_cookie(n, &cookie).await, StatusCode::OK);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_keys_fail_and_a_node_cut_off_from_its_leader_answers_503() {
    let mut c = TestCluster::start_with(3, |cfg| cfg.max_staleness_ms = 600).await;
    // A key that expires in a moment.
    let user_id = create_user_with_password(c.node(1), "gina", PASSWORD, &["viewer"]).await;
    let k = gatehouse_api::mint::new_api_key();
    let cmd = c.node(1).cluster().command(Payload::CreateApiKey(gatehouse_proto::events::CreateApiKey {
        key_id: k.key_id.clone(),
        user_id,
        name: "short".into(),
        secret_sha256: k.secret_sha256.to_vec(),
        expires_at: gatehouse_cluster::clock::now_ms() + 1_000,
        roles: vec![],
        roles_exact: false,
    }));
    c.node(1).cluster().propose_one(cmd).await.unwrap();
    assert_eq!(verify_bearer(c.node(2), &k.key).await.status(), StatusCode::OK);
    let node2 = c.node(2);
    wait_until("the key expired", Duration::from_secs(5), || async {
        verify_bearer(node2, &k.key).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;

    // Fail closed: stop two nodes; the survivor cannot prove freshness.
    let admin = c.admin_key.clone();
    let leader = c.wait_for_leader().await;
    let survivor = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    for id in [1, 2, 3] {
        if id != survivor {
            c.stop(id).await;
        }
    }
    let s = c.node(survivor);
    wait_until("readyz 503 on the cut-off node", Duration::from_secs(5), || async {
        http().get(format!("{}/readyz", base(s))).send().await.unwrap().status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let r = verify_bearer(s, &admin).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(r).await, "stale");
    assert_eq!(http().get(format!("{}/healthz", base(s))).send().await.unwrap().status(), StatusCode::OK);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_clock_runs_fast_cannot_expire_sessions_cluster_wide() {
    let c = TestCluster::start(3).await;
    create_user_with_password(c.node(1), "clocky", PASSWORD, &["viewer"]).await;
    let cookie = session_cookie(&login(c.node(1), "clocky", PASSWORD).await);
    let leader = c.wait_for_leader().await;
    let follower = c.node(if leader == 1 { 2 } else { 1 });
    // A command stamped a day ahead, as a node with a bad clock would, goes
    // through a follower. Log time is the leader's clock, so nothing expires.
    let mut cmd = follower.cluster().command(Payload::SetUserStatus(SetUserStatus {
        user_id: c.node(1).cluster().view().read().user_by_name("clocky").unwrap().user_id.clone(),
        status: UserStatus::Active as i32,
    }));
    cmd.proposed_at += 24 * 3600 * 1000;
    follower.cluster().propose(vec![cmd]).await.unwrap();
    for n in 1..=3 {
        assert_eq!(verify_cookie(c.node(n), &cookie).await, StatusCode::OK, "node {n}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_plaintext_password_token_or_key_reaches_any_data_directory() {
    let c = TestCluster::start_with(3, |cfg| {
        cfg.identity.touch_flush_ms = 100;
        cfg.raft.snapshot_every = 5;
    })
    .await;
    create_user_with_password(c.node(1), "secretive", PASSWORD, &["viewer"]).await;
    let resp = login(c.node(2), "secretive", PASSWORD).await;
    let cookie = session_cookie(&resp);
    let token = cookie.split_once('=').unwrap().1.to_string();
    let key = create_key(c.node(3), "keyholder", &["viewer"]).await;
    let key_secret = gatehouse_domain::keys::parse_key(&key).expect("a well-formed key").1.to_string();
    for n in 1..=3 {
        assert_eq!(verify_cookie(c.node(n), &cookie).await, StatusCode::OK);
        assert_eq!(verify_bearer(c.node(n), &key).await.status(), StatusCode::OK);
    }
    // Let the last-use flush and a snapshot happen, so every kind of file exists.
    let key_id = key.split('_').nth(1).unwrap().to_string();
    wait_until("last use flushed", Duration::from_secs(5), || {
        let done =
            c.nodes.values().all(|n| n.cluster().view().read().api_key(&key_id).is_some_and(|k| k.last_used > 0));
        async move { done }
    })
    .await;
    let admin = c.admin_key.clone();
    let admin_secret = gatehouse_domain::keys::parse_key(&admin).expect("a well-formed key").1.to_string();
    let dir = c.shutdown_keep_data().await;

    let files = common::files(dir.path());
    assert!(files.iter().any(|f| f.extension().is_some_and(|e| e == "snap")), "a snapshot was written");
    let needles = [PASSWORD.to_string(), token, key_secret, admin_secret];
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for n in &needles {
            assert!(!bytes.windows(n.len()).any(|w| w == n.as_bytes()), "plaintext secret in {}", f.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_rules_require_roles_by_forwarded_host_and_path() {
    let c = TestCluster::start_with(3, |cfg| {
        cfg.identity.routes = vec![
            gatehouse::config::RouteRule {
                host: Some("admin.example".into()),
                path_prefix: "/".into(),
                roles: vec!["admin".into()],
                ignore_case: false,
                ..Default::default()
            },
            gatehouse::config::RouteRule {
                host: None,
                path_prefix: "/ops".into(),
                roles: vec!["operator".into(), "admin".into()],
                ignore_case: false,
                ..Default::default()
            },
        ];
    })
    .await;
    let viewer = create_key(c.node(1), "rita", &["viewer"]).await;
    let operator = create_key(c.node(1), "otis", &["operator"]).await;
    let check = |key: String, host: &'static str, uri: &'static str| {
        let url = format!("{}/auth/verify", base(c.node(2)));
        async move {
            http()
                .get(url)
                .bearer_auth(key)
                .header("x-forwarded-host", host)
                .header("x-forwarded-uri", uri)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(check(viewer.clone(), "app.example", "/home").await, StatusCode::OK);
    assert_eq!(check(viewer.clone(), "app.example", "/ops/metrics").await, StatusCode::FORBIDDEN);
    assert_eq!(check(operator.clone(), "app.example", "/ops/metrics").await, StatusCode::OK);
    assert_eq!(check(operator.clone(), "admin.example", "/").await, StatusCode::FORBIDDEN);
    assert_eq!(check(c.admin_key.clone(), "ADMIN.example", "/anything").await, StatusCode::OK);
    // Spellings that would dodge the /ops rule are refused; a look-alike prefix is not the rule's.
    for dodge in ["//ops/metrics", "/./ops", "/x/../ops", "/%6Fps/metrics"] {
        assert_eq!(check(viewer.clone(), "app.example", dodge).await, StatusCode::FORBIDDEN, "{dodge}");
    }
    assert_eq!(check(viewer.clone(), "app.example", "/opsx").await, StatusCode::OK);
    // The host rule holds whatever port or case the proxy passed on.
    assert_eq!(check(viewer.clone(), "Admin.Example:443", "/").await, StatusCode::FORBIDDEN);
    assert_eq!(check(viewer.clone(), "admin.example.", "/").await, StatusCode::FORBIDDEN);
    // Raw bytes as nginx forwards `$request_uri`, `;` parameters, host lists
    // and missing headers have no one reading: refused, never taken as `/`.
    let raw = |headers: Vec<(&'static str, Vec<u8>)>| {
        let url = format!("{}/auth/verify", base(c.node(2)));
        let key = viewer.clone();
        async move {
            let mut req = http().get(url).bearer_auth(key);
            for (name, value) in headers {
                req = req.header(name, reqwest::header::HeaderValue::from_bytes(&value).unwrap());
            }
            req.send().await.unwrap().status()
        }
    };
    let host = || ("x-forwarded-host", b"app.example".to_vec());
    for uri in [&b"/ops/secret?\xff"[..], b"/ops;x/secret", b"/\xc3\xa9/ops"] {
        assert_eq!(raw(vec![host(), ("x-forwarded-uri", uri.to_vec())]).await, StatusCode::FORBIDDEN);
    }
    assert_eq!(raw(vec![host()]).await, StatusCode::FORBIDDEN, "no X-Forwarded-Uri");
    assert_eq!(raw(vec![("x-forwarded-uri", b"/home".to_vec())]).await, StatusCode::FORBIDDEN, "no host");
    let list = ("x-forwarded-host", b"app.example,admin.example".to_vec());
    assert_eq!(raw(vec![list, ("x-forwarded-uri", b"/".to_vec())]).await, StatusCode::FORBIDDEN);
    c.shutdown().await;
}

/// With `bind_sessions`, a session is taken only from the address and the
/// browser it began in: a stolen cookie replayed from elsewhere is refused
/// (and audited); an API key is not bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bound_session_is_refused_from_another_address_or_browser() {
    let c = TestCluster::start_with(1, |c| c.identity.bind_sessions = true).await;
    create_user_with_password(c.node(1), "ann", "pw-of-ann-0001", &["viewer"]).await;
    let from =
        |ip: &str| reqwest::Client::builder().local_address(ip.parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let login = from("127.0.0.1")
        .post(format!("{}/api/v1/login", base(c.node(1))))
        .header("x-requested-with", "test")
        .header("user-agent", "Browser A")
        .json(&serde_json::json!({ "username": "ann", "password": "pw-of-ann-0001" }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let verify = |ip: &'static str, agent: &'static str| {
        let cookie = cookie.clone();
        let url = format!("{}/auth/verify", base(c.node(1)));
        async move { from(ip).get(url).header("cookie", cookie).header("user-agent", agent).send().await.unwrap().status() }
    };
    assert_eq!(verify("127.0.0.1", "Browser A").await, StatusCode::OK);
    assert_eq!(verify("127.0.0.1", "Browser B").await, StatusCode::UNAUTHORIZED);
    assert_eq!(verify("127.0.0.2", "Browser A").await, StatusCode::UNAUTHORIZED);
    assert_eq!(verify("127.0.0.1", "Browser A").await, StatusCode::OK, "still good where it began");
    let key = create_key(c.node(1), "kim", &["viewer"]).await;
    let by_key =
        from("127.0.0.2").get(format!("{}/auth/verify", base(c.node(1)))).bearer_auth(&key).send().await.unwrap();
    assert_eq!(by_key.status(), StatusCode::OK, "keys are not bound");
    wait_until("the refusals are audited", Duration::from_secs(10), || async {
        let mut found = false;
        c.node(1)
            .audit_log()
            .scan(u64::MAX, true, |r| {
                found |= r.event.as_ref().is_some_and(|e| e.action == "session.binding_refused");
                !found
            })
            .unwrap();
        found
    })
    .await;
    c.shutdown().await;
}
