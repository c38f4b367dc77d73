//! Users, keys and sessions through the admin API and the CLI, against a
//! 3-node cluster: success, RBAC, hostile arguments, and revocation that
//! holds everywhere (`--wait all`).

mod common;

use common::{admin_cli, base, create_key, http, TestCluster};

use reqwest::StatusCode;

async fn verify(c: &TestCluster, id: u64, key: &str) -> StatusCode {
    http().get(format!("{}/auth/verify", base(c.node(id)))).bearer_auth(key).send().await.unwrap().status()
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn onboard_a_user_issue_a_key_and_revoke_it_everywhere() {
    let c = TestCluster::start_with(3, |cfg| cfg.identity.touch_flush_ms = 100).await;
    let admin = c.admin_key.clone();
    let out = admin_cli(
        &c.endpoint(2),
        &admin,
        &["--json", "user", "create", "Hank", "--email", "hank@example.com", "--role", "operator"],
    )
    .await
    .unwrap();
    let user = json(&out);
    assert_eq!(user["username"], "hank");
    assert_eq!(user["status"], "active");

    let out = admin_cli(
        &c.endpoint(3),
        &admin,
        &["--json", "key", "create", "--user", "hank", "--name", "ci", "--ttl", "90d"],
    )
    .await
    .unwrap();
    let created = json(&out);
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with(&format!("gk_{id}_")));
    for n in 1..=3 {
        assert_eq!(verify(&c, n, &key).await, StatusCode::OK);
    }

    // The use is flushed to the log by the node that saw it and shows everywhere.
    common::wait_until("last use replicated", std::time::Duration::from_secs(5), || {
        let all = c.nodes.values().all(|n| n.cluster().view().read().api_key(&id).is_some_and(|k| k.last_used > 0));
        async move { all }
    })
    .await;

    // Listing never shows a secret.
    let secret = gatehouse_domain::keys::parse_key(&key).expect("a well-formed key").1;
    for args in [&["key", "list"][..], &["--json", "key", "list", "--user", "hank"]] {
        let out = admin_cli(&c.endpoint(1), &admin, args).await.unwrap();
        assert!(out.contains(&id), "{out}");
        assert!(!out.contains(secret));
    }
    let users =
        json(&admin_cli(&c.endpoint(1), &admin, &["--json", "user", "list", "--role", "operator"]).await.unwrap());
    assert_eq!(users["users"].as_array().unwrap().len(), 1);

    let out = admin_cli(&c.endpoint(1), &admin, &["--json", "key", "revoke", &id, "--wait", "all"]).await.unwrap();
    let r = json(&out);
    assert_eq!(r["applied_on"], serde_json::json!([1, 2, 3]));
    for n in 1..=3 {
        assert_eq!(verify(&c, n, &key).await, StatusCode::UNAUTHORIZED);
    }
    let err = admin_cli(&c.endpoint(1), &admin, &["key", "revoke", &id]).await.unwrap_err();
    assert!(err.starts_with("failed precondition"), "{err}");
    let all = json(
        &admin_cli(&c.endpoint(1), &admin, &["--json", "key", "list", "--user", "hank", "--revoked"]).await.unwrap(),
    );
    assert!(all["keys"][0]["revoked_at"].as_u64().unwrap() > 0);

    // Disabling the user stops its other keys.
    let other = json(
        &admin_cli(&c.endpoint(1), &admin, &["--json", "key", "create", "--user", "hank", "--name", "other"])
            .await
            .unwrap(),
    );
    let other = other["key"].as_str().unwrap().to_string();
    admin_cli(&c.endpoint(2), &admin, &["user", "disable", "hank"]).await.unwrap();
    // `disable` returns once committed; each node refuses the key once it applied the change.
    for n in 1..=3 {
        let (c, other) = (&c, &other);
        common::wait_until("disabled user's key refused", std::time::Duration::from_secs(5), || async move {
            verify(c, n, other).await == StatusCode::FORBIDDEN
        })
        .await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_are_listed_and_revoked_by_admins() {
    let c = TestCluster::start(3).await;
    common::create_user_with_password(c.node(1), "ivy", "correct horse battery staple", &["viewer"]).await;
    let mut cookies = Vec::new();
    for n in 1..=2 {
        let r = http()
            .post(format!("{}/api/v1/login", base(c.node(n))))
            .header("x-requested-with", "t")
            .header("user-agent", "test-agent/1.0")
            .json(&serde_json::json!({ "username": "ivy", "password": "correct horse battery staple" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        cookies.push(r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string());
    }
    let list =
        json(&admin_cli(&c.endpoint(3), &c.admin_key, &["--json", "session", "list", "--user", "ivy"]).await.unwrap());
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0]["user_agent"], "test-agent/1.0");
    assert_eq!(sessions[0]["client_ip"], "127.0.0.1");

    let first = sessions[0]["id"].as_str().unwrap();
    let r = json(
        &admin_cli(&c.endpoint(3), &c.admin_key, &["--json", "session", "revoke", first, "--wait", "all"])
            .await
            .unwrap(),
    );
    assert_eq!(r["revoked"], 1);
    let r = json(
        &admin_cli(
            &c.endpoint(1),
            &c.admin_key,
            &["--json", "session", "revoke-all", "--user", "ivy", "--wait", "all"],
        )
        .await
        .unwrap(),
    );
    assert_eq!(r["revoked"], 1);
    assert_eq!(r["applied_on"], serde_json::json!([1, 2, 3]));
    for cookie in &cookies {
        for n in 1..=3 {
            let s = http()
                .get(format!("{}/auth/verify", base(c.node(n))))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(s, StatusCode::UNAUTHORIZED);
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rbac_and_hostile_arguments() {
    let c = TestCluster::start(3).await;
    let e = c.endpoint(1);
    let viewer = create_key(c.node(1), "viewer-vic", &["viewer"]).await;
    let operator = create_key(c.node(1), "operator-otto", &["operator"]).await;

    // Viewers read, operators write users and keys, nobody without a key.
    assert!(admin_cli(&e, &viewer, &["user", "list"]).await.is_ok());
    for args in [
        &["user", "create", "newbie", "--email", "n@example.com"][..],
        &["key", "create", "--user", "viewer-vic", "--name", "x"],
        &["user", "disable", "viewer-vic"],
        &["session", "revoke-all", "--user", "viewer-vic"],
    ] {
        let err = admin_cli(&e, &viewer, args).await.unwrap_err();
        assert!(err.starts_with("permission denied"), "{args:?}: {err}");
    }
    assert!(admin_cli(&e, &operator, &["user", "create", "newbie", "--email", "n@example.com", "--role", "viewer"])
        .await
        .is_ok());
    // A key acts as its user whatever roles it names: an operator cannot
    // mint one for an admin, even restricted to `viewer`.
    let keys_before = c.node(1).cluster().view().read().api_keys().count();
    for args in [
        &["key", "create", "--user", "admin", "--name", "x", "--role", "viewer"][..],
        &["key", "create", "--user", "admin", "--name", "x"],
    ] {
        let err = admin_cli(&e, &operator, args).await.unwrap_err();
        assert!(err.starts_with("permission denied"), "{args:?}: {err}");
    }
    assert_eq!(c.node(1).cluster().view().read().api_keys().count(), keys_before);
    assert!(admin_cli(&e, &operator, &["key", "create", "--user", "newbie", "--name", "x"]).await.is_ok());
    let err = admin_cli(&e, "gk_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &["user", "list"])
        .await
        .unwrap_err();
    assert!(err.starts_with("unauthenticated"), "{err}");

    let users_before = c.node(1).cluster().view().read().users().count();
    let admin = c.admin_key.clone();
    for (args, want) in [
        (&["user", "create", "bad name", "--email", "a@b.c"][..], "invalid argument"),
        (&["user", "create", "j\u{f6}rg", "--email", "a@b.c"], "invalid argument"),
        (&["user", "create", &"x".repeat(65), "--email", "a@b.c"], "invalid argument"),
        (&["user", "create", "okname", "--email", "not-an-email"], "invalid argument"),
        (&["user", "create", "okname", "--email", "a@b.c", "--role", "root"], "not found"),
        (&["user", "create", "newbie", "--email", "a@b.c"], "already exists"),
        (&["user", "disable", "nobody"], "not found"),
        (&["key", "create", "--user", "nobody", "--name", "x"], "not found"),
        (&["key", "create", "--user", "newbie", "--name", ""], "invalid argument"),
        (&["key", "create", "--user", "newbie", "--name", "x", "--role", "admin"], "failed precondition"),
        (&["key", "create", "--user", "newbie", "--name", "x", "--ttl", "4000years"], "invalid argument"),
        (&["key", "revoke", "NOT-AN-ID"], "invalid argument"),
        (&["key", "revoke", "0123456789abcdef"], "not found"),
        (&["session", "revoke", "xyz"], "invalid argument"),
        (&["session", "revoke", &"0".repeat(32)], "not found"),
        (&["session", "list", "--user", "nobody"], "not found"),
    ] {
        let err = admin_cli(&e, &admin, args).await.unwrap_err();
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    assert_eq!(c.node(1).cluster().view().read().users().count(), users_before);

    // An error echoes at most a short, escaped prefix of what was sent.
    let long = format!("evil\r\nforged log line\0{}", "x".repeat(100_000));
    for args in [
        &["user", "disable", &long][..],
        &["cluster", "add-learner", "7", &long],
        &["key", "create", "--user", "newbie", "--name", "x", "--role", &long],
        &["user", "create", "okname2", "--email", "a@b.c", "--role", &long],
    ] {
        let err = admin_cli(&e, &admin, args).await.unwrap_err();
        assert!(err.len() < 300, "{} bytes: {}", err.len(), &err[..300.min(err.len())]);
        assert!(!err.contains(['\r', '\n', '\0']), "{err:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn custom_roles_grant_their_permissions_on_every_node() {
    let c = TestCluster::start(3).await;
    let admin = c.admin_key.clone();
    let out = admin_cli(
        &c.endpoint(1),
        &admin,
        &[
            "--json",
            "role",
            "create",
            "deployer",
            "--permission",
            "keys.write",
            "--permission",
            "users.read",
            "--description",
            "CI deployers",
        ],
    )
    .await
    .unwrap();
    assert_eq!(json(&out)["permissions"], serde_json::json!(["keys.write", "users.read"]));
    // Created through node 1, used at once through node 2.
    admin_cli(&c.endpoint(2), &admin, &["user", "create", "dee", "--email", "dee@example.com", "--role", "deployer"])
        .await
        .unwrap();
    let key = json(
        &admin_cli(&c.endpoint(3), &admin, &["--json", "key", "create", "--user", "dee", "--name", "ci"])
            .await
            .unwrap(),
    )["key"]
        .as_str()
        .unwrap()
        .to_string();

    // The custom role's permissions, and nothing more, on every node.
    for n in 1..=3 {
        assert!(admin_cli(&c.endpoint(n), &key, &["user", "list"]).await.is_ok());
        let err = admin_cli(&c.endpoint(n), &key, &["user", "create", &format!("x{n}"), "--email", "x@example.com"])
            .await
            .unwrap_err();
        assert!(err.starts_with("permission denied"), "{err}");
    }
    assert!(admin_cli(&c.endpoint(2), &key, &["key", "create", "--user", "dee", "--name", "second"]).await.is_ok());
    let r =
        http().get(format!("{}/auth/verify?role=deployer", base(c.node(2)))).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-auth-roles"], "deployer");

    // Updating the role changes what its holders may do.
    admin_cli(&c.endpoint(1), &admin, &["role", "update", "deployer", "--permission", "users.read"]).await.unwrap();
    common::wait_until("the role update on every node", std::time::Duration::from_secs(5), || {
        let all = c
            .nodes
            .values()
            .all(|n| n.cluster().view().read().role("deployer").is_some_and(|r| r.permissions == ["users.read"]));
        async move { all }
    })
    .await;
    let err =
        admin_cli(&c.endpoint(3), &key, &["key", "create", "--user", "dee", "--name", "third"]).await.unwrap_err();
    assert!(err.starts_with("permission denied"), "{err}");

    let list = json(&admin_cli(&c.endpoint(3), &admin, &["--json", "role", "list"]).await.unwrap());
    let names: Vec<&str> = list["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "operator", "viewer", "deployer"]);

    // Refusals: in use, built-in, unknown permission, bad name, not allowed.
    for (args, want) in [
        (&["role", "delete", "deployer"][..], "failed precondition"),
        (&["role", "delete", "admin"], "failed precondition"),
        (&["role", "create", "admin", "--permission", "users.read"], "failed precondition"),
        (&["role", "create", "root", "--permission", "everything"], "invalid argument"),
        (&["role", "create", "Bad Name"], "invalid argument"),
        (&["role", "create", "deployer"], "already exists"),
        (&["role", "update", "ghost"], "not found"),
        (&["role", "delete", "ghost"], "not found"),
    ] {
        let err = admin_cli(&c.endpoint(1), &admin, args).await.unwrap_err();
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    let viewer = create_key(c.node(1), "vera", &["viewer"]).await;
    assert!(admin_cli(&c.endpoint(1), &viewer, &["role", "list"]).await.is_ok());
    let err = admin_cli(&c.endpoint(1), &viewer, &["role", "create", "sneaky", "--permission", "cluster.admin"])
        .await
        .unwrap_err();
    assert!(err.starts_with("permission denied"), "{err}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_key_works_at_once_on_every_nodes_admin_api() {
    use gatehouse_api::admin::auth::authorize;
    use gatehouse_domain::roles::Permission;

    let c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let followers: Vec<u64> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    // Each key is acknowledged by the leader and checked at once (no
    // connection set-up in between) by the followers' admin authentication,
    // before they necessarily applied it: they must catch up, not refuse.
    for i in 0..20 {
        let key = create_key(c.node(leader), &format!("fresh-{i}"), &["viewer"]).await;
        let mut meta = tonic::metadata::MetadataMap::new();
        meta.insert("authorization", format!("Bearer {key}").parse().unwrap());
        for &n in &followers {
            let r = authorize(c.node(n).api(), &meta, Permission::UsersRead).await;
            assert!(r.is_ok(), "key {i} on node {n}: {r:?}");
        }
    }
    // A session token is not an admin credential.
    let err = admin_cli(&c.endpoint(1), "gs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &["user", "list"])
        .await
        .unwrap_err();
    assert!(err.starts_with("unauthenticated"), "{err}");
    c.shutdown().await;
}

/// A crash after the bootstrap key file was written but before its admin
/// was proposed: the next start proposes that same key, so the file always
/// holds a working key and no admin exists whose key nobody has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bootstrap_interrupted_after_its_key_file_finishes_with_that_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("admin.key");
    let written = gatehouse_api::mint::new_api_key();
    gatehouse::bootstrap::write_private_atomic(&key_file, &written.key).unwrap();
    let mut cfg = common::config(1, &dir);
    cfg.initialize = true;
    cfg.bootstrap_admin_key_file = Some(key_file.clone());
    // A one-voter cluster never dials its own member address.
    cfg.initial_members = vec![gatehouse::config::Member { id: 1, addr: "127.0.0.1:1".into(), client_addr: None }];
    let mut node = gatehouse::Node::start(cfg).await.unwrap();
    assert_eq!(node.take_bootstrap_key().as_deref(), Some(written.key.as_str()));
    let out = admin_cli(&common::endpoint(&node), &written.key, &["--json", "user", "list"]).await.unwrap();
    assert_eq!(json(&out)["users"][0]["username"], "admin");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), written.key);
    node.shutdown().await.unwrap();
}

/// Every admin key lost: `gatehouse recover-admin` on a stopped node's data
/// directory, then a start carries it out through the log, audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_admin_key_is_recovered_offline_and_audited() {
    let mut c = TestCluster::start(3).await;
    create_key(c.node(1), "olga", &["operator"]).await;
    c.stop(3).await;
    let data_dir = c.configs[&3].data_dir.clone();
    let key = gatehouse::recovery::request(&data_dir, "rescue").unwrap();
    // Only the hash waits in the data directory.
    let secret = gatehouse_domain::keys::parse_key(&key).unwrap().1.to_string();
    let pending = std::fs::read_to_string(data_dir.join(gatehouse::recovery::FILE)).unwrap();
    assert!(!pending.contains(&secret));
    c.restart(3).await;
    common::wait_until("the recovered key works on every node", std::time::Duration::from_secs(15), || {
        let c = &c;
        let key = key.clone();
        async move {
            let mut ok = true;
            for n in 1..=3 {
                ok &= verify(c, n, &key).await == StatusCode::OK;
            }
            ok
        }
    })
    .await;
    let me = json(&admin_cli(&c.endpoint(1), &key, &["--json", "user", "get", "rescue"]).await.unwrap());
    assert_eq!(me["roles"], serde_json::json!(["admin"]));
    assert!(!data_dir.join(gatehouse::recovery::FILE).exists(), "the request is carried out once");
    common::wait_until("the recovery audited", std::time::Duration::from_secs(10), || {
        let c = &c;
        let key = key.clone();
        async move {
            let out =
                admin_cli(&c.endpoint(2), &key, &["--json", "audit", "query", "--action", "cluster.admin_recovered"])
                    .await;
            out.is_ok_and(|o| json(&o)["records"].as_array().is_some_and(|r| r.len() == 1))
        }
    })
    .await;
    c.shutdown().await;
}

/// A custom role that grants no admin permission (route rules guard a panel
/// with it) is not anyone's to hand out: only those it names may assign it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_custom_role_is_assigned_only_by_those_it_names() {
    let c = TestCluster::start(1).await;
    let (e, admin) = (c.endpoint(1), c.admin_key.clone());
    admin_cli(&e, &admin, &["role", "create", "ops-panel"]).await.unwrap();
    let named = json(
        &admin_cli(&e, &admin, &["--json", "role", "create", "deploy-panel", "--assignable-by", "operator"])
            .await
            .unwrap(),
    );
    assert_eq!(named["assignable_by"], serde_json::json!(["operator"]));
    admin_cli(&e, &admin, &["user", "create", "ivan", "--email", "ivan@example.com"]).await.unwrap();
    let operator = create_key(c.node(1), "olga", &["operator"]).await;
    for args in [
        &["role", "assign", "ops-panel", "--user", "ivan"][..],
        &["user", "create", "eve", "--email", "eve@example.com", "--role", "ops-panel"],
    ] {
        let err = admin_cli(&e, &operator, args).await.unwrap_err();
        assert!(err.starts_with("permission denied"), "{args:?}: {err}");
    }
    assert!(c.node(1).cluster().view().read().user_by_name("eve").is_none());
    admin_cli(&e, &operator, &["role", "assign", "deploy-panel", "--user", "ivan"]).await.unwrap();
    admin_cli(&e, &admin, &["role", "assign", "ops-panel", "--user", "ivan"]).await.unwrap();
    // Holding a role the operator may not give makes its holder one the
    // operator may not act on either.
    let err = admin_cli(&e, &operator, &["user", "disable", "ivan"]).await.unwrap_err();
    assert!(err.starts_with("permission denied"), "{err}");
    let err = admin_cli(&e, &admin, &["role", "create", "x-panel", "--assignable-by", "ghost"]).await.unwrap_err();
    assert!(err.starts_with("not found"), "{err}");
    c.shutdown().await;
}
