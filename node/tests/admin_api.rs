//! The complete admin API: every RPC's authentication and RBAC, the user,
//! role, key and session operations added on top of the basics, pagination,
//! the event stream, leadership transfer, and the standard gRPC health and
//! reflection services. CLI calls parse `--json` output.

mod common;

use std::time::Duration;

use common::{admin_cli, base, create_key, http, login, wait_until, TestCluster};
use gatehouse_proto::admin::cluster_service_client::ClusterServiceClient;
use gatehouse_proto::admin::event_service_client::EventServiceClient;
use gatehouse_proto::admin::key_service_client::KeyServiceClient;
use gatehouse_proto::admin::role_service_client::RoleServiceClient;
use gatehouse_proto::admin::session_service_client::SessionServiceClient;
use gatehouse_proto::admin::user_service_client::UserServiceClient;
use gatehouse_proto::admin::*;
use reqwest::StatusCode;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

async fn cli_json(c: &TestCluster, node: u64, key: &str, args: &[&str]) -> serde_json::Value {
    let mut argv = vec!["--json"];
    argv.extend_from_slice(args);
    json(&admin_cli(&c.endpoint(node), key, &argv).await.unwrap_or_else(|e| panic!("{args:?}: {e}")))
}

async fn verify(c: &TestCluster, id: u64, token: &str) -> StatusCode {
    http().get(format!("{}/auth/verify", base(c.node(id)))).bearer_auth(token).send().await.unwrap().status()
}

fn cookie(resp: &reqwest::Response) -> String {
    resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string()
}

async fn verify_cookie(c: &TestCluster, id: u64, cookie: &str) -> StatusCode {
    http().get(format!("{}/auth/verify", base(c.node(id)))).header("cookie", cookie).send().await.unwrap().status()
}

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// A `*.read` permission every built-in role has.
    Read,
    /// `users.write`, `keys.write` or `sessions.write` (admin, operator).
    Write,
    /// `events.read` (admin, operator).
    Events,
    /// `cluster.admin` or `roles.write` (admin only).
    Admin,
}

fn code<T>(r: Result<T, Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

/// Calls every admin RPC once with `token` (or none) and returns each one's code.
async fn every_rpc(endpoint: &str, token: Option<&str>) -> Vec<(&'static str, Needs, Code)> {
    let ch = Channel::from_shared(endpoint.to_string()).unwrap().connect().await.unwrap();
    let auth: Option<tonic::metadata::MetadataValue<_>> = token.map(|t| format!("Bearer {t}").parse().unwrap());
    let add = move |mut r: Request<()>| {
        if let Some(v) = &auth {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    };
    let mut cluster = ClusterServiceClient::with_interceptor(ch.clone(), add.clone());
    let mut users = UserServiceClient::with_interceptor(ch.clone(), add.clone());
    let mut keys = KeyServiceClient::with_interceptor(ch.clone(), add.clone());
    let mut sessions = SessionServiceClient::with_interceptor(ch.clone(), add.clone());
    let mut roles = RoleServiceClient::with_interceptor(ch.clone(), add.clone());
    let mut events = EventServiceClient::with_interceptor(ch, add);
    let (nobody, no_key, no_session) = ("nobody-here".to_string(), "0123456789abcdef".to_string(), "0".repeat(32));
    use Needs::*;
    vec![
        ("cluster.status", Read, code(cluster.status(ClusterStatusRequest {}).await)),
        (
            "cluster.add_learner",
            Admin,
            code(
                cluster
                    .add_learner(AddLearnerRequest {
                        node_id: 99,
                        addr: "127.0.0.1:1".into(),
                        client_addr: String::new(),
                    })
                    .await,
            ),
        ),
        ("cluster.promote", Admin, code(cluster.promote(PromoteRequest { node_id: 99 }).await)),
        ("cluster.remove_node", Admin, code(cluster.remove_node(RemoveNodeRequest { node_id: 99 }).await)),
        ("cluster.trigger_snapshot", Admin, code(cluster.trigger_snapshot(TriggerSnapshotRequest {}).await)),
        (
            "cluster.transfer_leadership",
            Admin,
            code(cluster.transfer_leadership(TransferLeadershipRequest { node_id: 99 }).await),
        ),
        (
            "users.create",
            Write,
            code(
                users
                    .create(CreateUserRequest {
                        username: "rbac-probe".into(),
                        email: "r@example.com".into(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        ("users.get", Read, code(users.get(GetUserRequest { user: nobody.clone() }).await)),
        ("users.list", Read, code(users.list(ListUsersRequest::default()).await)),
        (
            "users.update",
            Write,
            code(
                users
                    .update(UpdateUserRequest {
                        user: nobody.clone(),
                        email: "n@example.com".into(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "users.set_status",
            Write,
            code(
                users
                    .set_status(SetUserStatusRequest {
                        user: nobody.clone(),
                        status: "disabled".into(),
                        wait_all: false,
                    })
                    .await,
            ),
        ),
        (
            "users.set_password",
            Write,
            code(
                users
                    .set_password(SetPasswordRequest {
                        user: nobody.clone(),
                        password: "a long enough password".into(),
                    })
                    .await,
            ),
        ),
        ("users.delete", Write, code(users.delete(DeleteUserRequest { user: nobody.clone() }).await)),
        (
            "keys.create",
            Write,
            code(keys.create(CreateKeyRequest { user: nobody.clone(), name: "k".into(), ..Default::default() }).await),
        ),
        ("keys.list", Read, code(keys.list(ListKeysRequest::default()).await)),
        ("keys.get", Read, code(keys.get(GetKeyRequest { id: no_key.clone() }).await)),
        ("keys.revoke", Write, code(keys.revoke(RevokeKeyRequest { id: no_key.clone(), wait_all: false }).await)),
        ("keys.rotate", Write, code(keys.rotate(RotateKeyRequest { id: no_key.clone(), grace_seconds: 0 }).await)),
        (
            "sessions.list",
            Read,
            code(sessions.list(ListSessionsRequest { user: nobody.clone(), ..Default::default() }).await),
        ),
        ("sessions.get", Read, code(sessions.get(GetSessionRequest { id: no_session.clone() }).await)),
        (
            "sessions.revoke",
            Write,
            code(sessions.revoke(RevokeSessionRequest { id: no_session.clone(), wait_all: false }).await),
        ),
        (
            "sessions.revoke_all",
            Write,
            code(sessions.revoke_all(RevokeUserSessionsRequest { user: nobody.clone(), wait_all: false }).await),
        ),
        (
            "sessions.revoke_everything",
            Admin,
            code(sessions.revoke_everything(RevokeEverySessionRequest { confirm: false, wait_all: false }).await),
        ),
        ("roles.list", Read, code(roles.list(ListRolesRequest {}).await)),
        (
            "roles.create",
            Admin,
            code(
                roles
                    .create(PutRoleRequest {
                        name: "rbac-probe".into(),
                        permissions: vec![],
                        description: String::new(),
                        assignable_by: vec![],
                    })
                    .await,
            ),
        ),
        (
            "roles.update",
            Admin,
            code(
                roles
                    .update(PutRoleRequest {
                        name: "no-such-role".into(),
                        permissions: vec![],
                        description: String::new(),
                        assignable_by: vec![],
                    })
                    .await,
            ),
        ),
        ("roles.delete", Admin, code(roles.delete(DeleteRoleRequest { name: "no-such-role".into() }).await)),
        (
            "roles.assign",
            Write,
            code(roles.assign(RoleAssignment { user: nobody.clone(), role: "viewer".into() }).await),
        ),
        ("roles.unassign", Write, code(roles.unassign(RoleAssignment { user: nobody, role: "viewer".into() }).await)),
        ("events.watch", Events, code(events.watch(WatchRequest { from_index: 0 }).await)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_authenticates_and_checks_rbac() {
    let c = TestCluster::start(3).await;
    let viewer = create_key(c.node(1), "viewer-vera", &["viewer"]).await;
    let operator = create_key(c.node(1), "operator-olga", &["operator"]).await;
    let revoked = create_key(c.node(1), "revoked-rex", &["admin"]).await;
    let revoked_id = revoked.split('_').nth(1).unwrap();
    admin_cli(&c.endpoint(1), &c.admin_key, &["key", "revoke", revoked_id]).await.unwrap();
    let e = c.endpoint(2);

    let calls = every_rpc(&e, None).await;
    assert_eq!(calls.len(), 30, "one call per RPC");
    for (rpc, _, code) in &calls {
        assert_eq!(*code, Code::Unauthenticated, "{rpc} without a key");
    }
    for bad in [revoked.as_str(), "gk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not-a-key"] {
        for (rpc, _, code) in every_rpc(&e, Some(bad)).await {
            assert_eq!(code, Code::Unauthenticated, "{rpc} with {bad}");
        }
    }
    for (rpc, needs, code) in every_rpc(&e, Some(&viewer)).await {
        if needs == Needs::Read {
            assert!(![Code::PermissionDenied, Code::Unauthenticated].contains(&code), "{rpc} as viewer: {code:?}");
        } else {
            assert_eq!(code, Code::PermissionDenied, "{rpc} as viewer");
        }
    }
    for (rpc, needs, code) in every_rpc(&e, Some(&operator)).await {
        if needs == Needs::Admin {
            assert_eq!(code, Code::PermissionDenied, "{rpc} as operator");
        } else {
            assert!(![Code::PermissionDenied, Code::Unauthenticated].contains(&code), "{rpc} as operator: {code:?}");
        }
    }
    // Nothing the refused calls asked for happened.
    {
        let state = c.node(1).cluster().view().read();
        assert!(state.user_by_name("rbac-probe").is_some(), "the operator's create went through");
        assert!(state.role("rbac-probe").is_none());
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_get_update_set_password_delete_and_paginate() {
    let c = TestCluster::start(3).await;
    let admin = c.admin_key.clone();
    for i in 0..25 {
        let name = format!("user-{i:02}");
        cli_json(&c, 1 + i % 3, &admin, &["user", "create", &name, "--email", &format!("{name}@example.com")]).await;
    }
    // Pages of 10 asked of different nodes: every user once, in username order.
    let (mut names, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let mut args = vec!["user", "list", "--page-size", "10"];
        if !token.is_empty() {
            args.extend(["--page-token", token.as_str()]);
        }
        let page = cli_json(&c, 1 + pages % 3, &admin, &args).await;
        pages += 1;
        names.extend(page["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap().to_string()));
        token = page["next_page_token"].as_str().unwrap().to_string();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 26, "25 users and the bootstrap admin: {names:?}");
    let all = cli_json(&c, 2, &admin, &["user", "list", "--page-size", "7", "--all"]).await;
    assert_eq!(all["users"].as_array().unwrap().len(), 26);

    // Get by name and by id; update email, roles and status in one call.
    let u = cli_json(&c, 2, &admin, &["user", "get", "user-03"]).await;
    let id = u["id"].as_str().unwrap().to_string();
    assert_eq!(cli_json(&c, 3, &admin, &["user", "get", &id]).await["username"], "user-03");
    let u = cli_json(
        &c,
        3,
        &admin,
        &["user", "update", "user-03", "--email", "new@example.com", "--role", "operator", "--role", "viewer"],
    )
    .await;
    assert_eq!(u["email"], "new@example.com");
    assert_eq!(u["roles"], serde_json::json!(["operator", "viewer"]));
    let filtered = cli_json(&c, 1, &admin, &["user", "list", "--role", "operator"]).await;
    assert_eq!(filtered["users"].as_array().unwrap().len(), 1);
    let u = cli_json(&c, 1, &admin, &["user", "update", &id, "--no-roles", "--status", "disabled"]).await;
    assert_eq!((u["roles"].clone(), u["status"].clone()), (serde_json::json!([]), serde_json::json!("disabled")));
    let disabled = cli_json(&c, 2, &admin, &["user", "list", "--status", "disabled"]).await;
    assert_eq!(disabled["users"][0]["id"], id.as_str());
    cli_json(&c, 2, &admin, &["user", "enable", &id]).await;

    // A new password ends the user's sessions; the new one logs in.
    let pw_file = c.dir.path().join("pw");
    std::fs::write(&pw_file, "the first long password\n").unwrap();
    let pw = pw_file.to_str().unwrap();
    cli_json(&c, 1, &admin, &["user", "set-password", "user-03", "--password-file", pw]).await;
    let session = cookie(&login(c.node(2), "user-03", "the first long password").await);
    assert_eq!(verify_cookie(&c, 3, &session).await, StatusCode::OK);
    std::fs::write(&pw_file, "the second long password\n").unwrap();
    let r = cli_json(&c, 3, &admin, &["user", "set-password", "user-03", "--password-file", pw]).await;
    assert_eq!(r["sessions_revoked"], 1);
    // Without --wait, other nodes follow within the staleness bound.
    for n in 1..=3 {
        wait_until("the session ends everywhere", Duration::from_secs(2), || {
            let (c, session) = (&c, session.clone());
            async move { verify_cookie(c, n, &session).await == StatusCode::UNAUTHORIZED }
        })
        .await;
    }
    assert_eq!(login(c.node(1), "user-03", "the first long password").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login(c.node(1), "user-03", "the second long password").await.status(), StatusCode::OK);

    // Delete takes the user's keys and sessions with it, everywhere.
    let key = cli_json(&c, 1, &admin, &["key", "create", "--user", "user-03", "--name", "ci"]).await;
    let key = key["key"].as_str().unwrap().to_string();
    assert_eq!(verify(&c, 2, &key).await, StatusCode::OK);
    let err = admin_cli(&c.endpoint(1), &admin, &["user", "delete", "user-03"]).await.unwrap_err();
    assert!(err.contains("--yes"), "{err}");
    let d = cli_json(&c, 2, &admin, &["user", "delete", "user-03", "--yes"]).await;
    assert_eq!((d["keys_deleted"].as_u64(), d["sessions_revoked"].as_u64()), (Some(1), Some(1)));
    for n in 1..=3 {
        wait_until("the key ends everywhere", Duration::from_secs(2), || {
            let (c, key) = (&c, key.clone());
            async move { verify(c, n, &key).await == StatusCode::UNAUTHORIZED }
        })
        .await;
    }
    let err = admin_cli(&c.endpoint(3), &admin, &["user", "get", "user-03"]).await.unwrap_err();
    assert!(err.starts_with("not found"), "{err}");

    // Hostile and malformed arguments change nothing.
    let before = c.node(1).cluster().view().read().users().count();
    std::fs::write(&pw_file, "short\n").unwrap();
    let good_pw_file = c.dir.path().join("good-pw");
    std::fs::write(&good_pw_file, "a perfectly long password\n").unwrap();
    let good_pw = good_pw_file.to_str().unwrap();
    let long = "x".repeat(65);
    for (args, want) in [
        (&["user", "update", "user-04"][..], "invalid argument"),
        (&["user", "update", "user-04", "--status", "frozen"], "invalid argument"),
        (&["user", "update", "user-04", "--email", "nope"], "invalid argument"),
        (&["user", "update", "user-04", "--role", "root"], "not found"),
        (&["user", "update", "user-04", "--role", "viewer", "--role", "viewer"], "invalid argument"),
        (&["user", "update", "ghost", "--email", "g@example.com"], "not found"),
        (&["user", "get", &long], "invalid argument"),
        (&["user", "get", ""], "invalid argument"),
        (&["user", "list", "--status", "frozen"], "invalid argument"),
        (&["user", "list", "--role", "Bad Role!"], "invalid argument"),
        (&["user", "list", "--page-size", "5000"], "invalid argument"),
        (&["user", "list", "--page-token", "%%%"], "invalid argument"),
        (&["user", "set-password", "user-04", "--password-file", pw], "invalid argument"),
        (&["user", "set-password", "ghost", "--password-file", pw], "invalid argument"),
        (&["user", "set-password", "ghost", "--password-file", good_pw], "not found"),
        (&["user", "set-password", &long, "--password-file", good_pw], "invalid argument"),
        (&["user", "delete", "ghost", "--yes"], "not found"),
        (&["user", "delete", "", "--yes"], "invalid argument"),
        (&["user", "delete", &long, "--yes"], "invalid argument"),
        (&["user", "disable", "ghost"], "not found"),
        (&["user", "enable", ""], "invalid argument"),
    ] {
        let err = admin_cli(&c.endpoint(2), &admin, args).await.unwrap_err();
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    let err = admin_cli(&c.endpoint(2), &admin, &["user", "set-password", "user-04"]).await.unwrap_err();
    assert!(err.contains("--password-stdin or --password-file"), "{err}");
    // Values the CLI never sends, straight over gRPC.
    let mut users = UserServiceClient::connect(c.endpoint(3)).await.unwrap();
    let with_key = |msg| {
        let mut r = Request::new(msg);
        r.metadata_mut().insert("authorization", format!("Bearer {admin}").parse().unwrap());
        r
    };
    for status in ["frozen", "", "ACTIVE", "disabled\0"] {
        let req = SetUserStatusRequest { user: "user-04".into(), status: status.into(), wait_all: false };
        assert_eq!(code(users.set_status(with_key(req)).await), Code::InvalidArgument, "status {status:?}");
    }
    assert_eq!(c.node(1).cluster().view().read().users().count(), before);
    assert_eq!(c.node(1).cluster().view().read().user_by_name("user-04").unwrap().email, "user-04@example.com");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_are_assigned_and_removed_and_nobody_escalates() {
    let c = TestCluster::start(3).await;
    let admin = c.admin_key.clone();
    let operator = create_key(c.node(1), "op-oscar", &["operator"]).await;
    cli_json(&c, 1, &admin, &["user", "create", "dana", "--email", "dana@example.com", "--role", "viewer"]).await;

    let u = cli_json(&c, 2, &operator, &["role", "assign", "operator", "--user", "dana"]).await;
    assert_eq!(u["roles"], serde_json::json!(["viewer", "operator"]));
    let u = cli_json(&c, 3, &operator, &["role", "unassign", "viewer", "--user", "dana"]).await;
    assert_eq!(u["roles"], serde_json::json!(["operator"]));

    // An operator can make nobody an admin, and cannot act as or on an admin.
    let admin_user = c
        .node(1)
        .cluster()
        .view()
        .read()
        .users()
        .find(|u| u.roles.contains(&"admin".to_string()))
        .unwrap()
        .username
        .clone();
    let admin_key_id = c.admin_key.split('_').nth(1).unwrap().to_string();
    for args in [
        &["role", "assign", "admin", "--user", "dana"][..],
        &["key", "revoke", &admin_key_id],
        &["key", "rotate", &admin_key_id],
        &["session", "revoke-all", "--user", &admin_user],
        &["role", "assign", "admin", "--user", "op-oscar"],
        &["user", "create", "sneaky", "--email", "s@example.com", "--role", "admin"],
        &["user", "update", "dana", "--role", "admin"],
        &["key", "create", "--user", &admin_user, "--name", "mine-now"],
        &["user", "disable", &admin_user],
        &["user", "delete", &admin_user, "--yes"],
        &["role", "unassign", "admin", "--user", &admin_user],
    ] {
        let err = admin_cli(&c.endpoint(2), &operator, args).await.unwrap_err();
        assert!(err.starts_with("permission denied"), "{args:?}: {err}");
    }
    assert!(c.node(2).cluster().view().read().user_by_name("sneaky").is_none());
    assert_eq!(c.node(2).cluster().view().read().api_key(&admin_key_id).unwrap().revoked_at, 0);

    // A key issued without a restriction holds its user's roles as they are
    // now: promoting the user later does not promote a key someone else kept.
    cli_json(&c, 1, &admin, &["user", "create", "pat", "--email", "pat@example.com", "--role", "operator"]).await;
    let kept = cli_json(&c, 2, &operator, &["key", "create", "--user", "pat", "--name", "kept"]).await;
    let kept_key = kept["key"].as_str().unwrap().to_string();
    let kept_id = kept["id"].as_str().unwrap().to_string();
    assert_eq!(cli_json(&c, 1, &admin, &["key", "get", &kept_id]).await["roles"], serde_json::json!(["operator"]));
    cli_json(&c, 1, &admin, &["role", "assign", "admin", "--user", "pat"]).await;
    let err = admin_cli(&c.endpoint(3), &kept_key, &["role", "create", "by-kept"]).await.unwrap_err();
    assert!(err.starts_with("permission denied"), "{err}");
    cli_json(&c, 1, &admin, &["role", "unassign", "admin", "--user", "pat"]).await;

    // A custom role holding roles.write cannot define a role above its holder.
    cli_json(
        &c,
        1,
        &admin,
        &["role", "create", "role-keeper", "--permission", "roles.write", "--permission", "users.read"],
    )
    .await;
    let keeper = create_key(c.node(1), "rolf", &["role-keeper"]).await;
    for args in [
        &["role", "update", "role-keeper", "--permission", "roles.write", "--permission", "cluster.admin"][..],
        &["role", "create", "super", "--permission", "cluster.admin"],
    ] {
        let err = admin_cli(&c.endpoint(2), &keeper, args).await.unwrap_err();
        assert!(err.starts_with("permission denied"), "{args:?}: {err}");
    }
    assert!(c.node(2).cluster().view().read().role("super").is_none());
    cli_json(&c, 2, &keeper, &["role", "create", "readers", "--permission", "users.read"]).await;

    // The last active admin stays: not unassigned, disabled or deleted.
    for args in [
        &["role", "unassign", "admin", "--user", &admin_user][..],
        &["user", "disable", &admin_user],
        &["user", "delete", &admin_user, "--yes"],
    ] {
        let err = admin_cli(&c.endpoint(3), &admin, args).await.unwrap_err();
        assert!(err.starts_with("failed precondition"), "{args:?}: {err}");
    }
    // A restricted key loses a role its user loses.
    let key =
        cli_json(&c, 1, &admin, &["key", "create", "--user", "dana", "--name", "ops", "--role", "operator"]).await;
    let key = key["key"].as_str().unwrap().to_string();
    assert!(admin_cli(&c.endpoint(1), &key, &["user", "create", "by-dana", "--email", "d@example.com"]).await.is_ok());
    cli_json(&c, 1, &admin, &["role", "assign", "viewer", "--user", "dana"]).await;
    cli_json(&c, 1, &admin, &["role", "unassign", "operator", "--user", "dana"]).await;
    let err = admin_cli(&c.endpoint(3), &key, &["user", "list"]).await.unwrap_err();
    assert!(err.starts_with("permission denied"), "{err}");

    for (args, want) in [
        (&["role", "assign", "nosuch", "--user", "dana"][..], "not found"),
        (&["role", "assign", "Bad Role", "--user", "dana"], "invalid argument"),
        (&["role", "assign", "viewer", "--user", "ghost"], "not found"),
        (&["role", "unassign", "operator", "--user", "dana"], "failed precondition"),
        (&["role", "unassign", "viewer", "--user", "ghost"], "not found"),
        (&["role", "unassign", "nosuch", "--user", "dana"], "failed precondition"),
        (&["role", "unassign", "Bad Role", "--user", "dana"], "invalid argument"),
        (&["role", "unassign", "viewer", "--user", ""], "invalid argument"),
    ] {
        let err = admin_cli(&c.endpoint(2), &admin, args).await.unwrap_err();
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_fetched_and_rotated_with_a_grace_period() {
    let c = TestCluster::start_with(3, |cfg| cfg.identity.touch_flush_ms = 100).await;
    let admin = c.admin_key.clone();
    cli_json(&c, 1, &admin, &["user", "create", "erin", "--email", "erin@example.com", "--role", "viewer"]).await;
    let first = cli_json(&c, 1, &admin, &["key", "create", "--user", "erin", "--name", "deploy", "--ttl", "90d"]).await;
    let (first_id, first_key) = (first["id"].as_str().unwrap().to_string(), first["key"].as_str().unwrap().to_string());
    assert_eq!(verify(&c, 2, &first_key).await, StatusCode::OK);
    // Last use reaches the log and shows in `get`.
    wait_until("last use recorded", Duration::from_secs(10), || {
        let (c, id) = (&c, first_id.clone());
        async move { cli_json(c, 3, &c.admin_key, &["key", "get", &id]).await["last_used"].as_u64().unwrap() > 0 }
    })
    .await;

    // Rotation with a grace period: both keys work until it ends.
    let rotated = cli_json(&c, 2, &admin, &["key", "rotate", &first_id, "--grace", "1h"]).await;
    let (second_id, second_key) =
        (rotated["id"].as_str().unwrap().to_string(), rotated["key"].as_str().unwrap().to_string());
    assert_eq!(rotated["old_key"]["revoked_at"], 0);
    let grace_end = rotated["old_key"]["expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!((now + 3_500_000..=now + 3_700_000).contains(&grace_end), "grace ends in about an hour");
    for n in 1..=3 {
        assert_eq!(verify(&c, n, &first_key).await, StatusCode::OK);
        assert_eq!(verify(&c, n, &second_key).await, StatusCode::OK);
    }
    let second = cli_json(&c, 3, &admin, &["key", "get", &second_id]).await;
    assert_eq!(
        (second["name"].clone(), second["username"].clone()),
        (serde_json::json!("deploy"), serde_json::json!("erin"))
    );
    assert!(second["expires_at"].as_u64().unwrap() > now + 89 * 86_400_000, "keeps the 90-day lifetime");

    // Without a grace period the old key ends at once, on every node.
    let third = cli_json(&c, 1, &admin, &["key", "rotate", &second_id]).await;
    assert!(third["old_key"]["revoked_at"].as_u64().unwrap() > 0);
    for n in 1..=3 {
        wait_until("the rotated key ends everywhere", Duration::from_secs(2), || {
            let (c, key) = (&c, second_key.clone());
            async move { verify(c, n, &key).await == StatusCode::UNAUTHORIZED }
        })
        .await;
        assert_eq!(verify(&c, n, third["key"].as_str().unwrap()).await, StatusCode::OK);
    }
    let keys_before = c.node(1).cluster().view().read().api_keys().count();
    for (args, want) in [
        (&["key", "rotate", &second_id][..], "failed precondition"),
        (&["key", "rotate", "0123456789abcdef"], "not found"),
        (&["key", "rotate", "NOT-AN-ID"], "invalid argument"),
        (&["key", "rotate", &first_id, "--grace", "31d"], "invalid argument"),
        (&["key", "get", "0123456789abcdef"], "not found"),
        (&["key", "get", "xyz"], "invalid argument"),
        (&["key", "list", "--page-token", "!!"], "invalid argument"),
        (&["key", "list", "--user", "ghost"], "not found"),
        (&["key", "list", "--user", &"u".repeat(65)], "invalid argument"),
        (&["key", "create", "--user", "erin", "--name", &"n".repeat(65)], "invalid argument"),
        (&["key", "create", "--user", "erin", "--name", ""], "invalid argument"),
        (&["key", "create", "--user", "ghost", "--name", "x"], "not found"),
    ] {
        let err = admin_cli(&c.endpoint(2), &admin, args).await.unwrap_err();
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    assert_eq!(c.node(1).cluster().view().read().api_keys().count(), keys_before);
    // Pages of keys, newest first.
    let page = cli_json(&c, 2, &admin, &["key", "list", "--user", "erin", "--revoked", "--page-size", "2"]).await;
    let ids: Vec<&str> = page["keys"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [third["id"].as_str().unwrap(), second_id.as_str()]);
    assert!(!page["next_page_token"].as_str().unwrap().is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_are_fetched_and_revoked_everywhere_in_an_emergency() {
    let c = TestCluster::start(3).await;
    let admin = c.admin_key.clone();
    let mut cookies = Vec::new();
    for (i, name) in ["fay", "gus", "hal"].iter().enumerate() {
        common::create_user_with_password(c.node(1), name, "correct horse battery", &["viewer"]).await;
        cookies.push(cookie(&login(c.node(1 + i as u64), name, "correct horse battery").await));
    }
    let listed = cli_json(&c, 2, &admin, &["session", "list", "--user", "gus"]).await;
    let id = listed["sessions"][0]["id"].as_str().unwrap().to_string();
    let s = cli_json(&c, 3, &admin, &["session", "get", &id]).await;
    assert_eq!(s["username"], "gus");
    assert!(!s.to_string().contains(cookies[1].split('=').nth(1).unwrap()), "no token in the answer");

    let err = admin_cli(&c.endpoint(1), &admin, &["session", "revoke-everything"]).await.unwrap_err();
    assert!(err.contains("--yes"), "{err}");
    let mut client = SessionServiceClient::connect(c.endpoint(1)).await.unwrap();
    let mut req = Request::new(RevokeEverySessionRequest { confirm: false, wait_all: false });
    req.metadata_mut().insert("authorization", format!("Bearer {admin}").parse().unwrap());
    assert_eq!(client.revoke_everything(req).await.unwrap_err().code(), Code::InvalidArgument);
    for cookie in &cookies {
        assert_eq!(verify_cookie(&c, 3, cookie).await, StatusCode::OK, "nothing was revoked");
    }

    let r = cli_json(&c, 2, &admin, &["session", "revoke-everything", "--yes", "--wait", "all"]).await;
    assert_eq!(r["revoked"], 3);
    assert_eq!(r["applied_on"].as_array().unwrap().len(), 3);
    for cookie in &cookies {
        for n in 1..=3 {
            assert_eq!(verify_cookie(&c, n, cookie).await, StatusCode::UNAUTHORIZED);
        }
    }
    for (args, want) in [
        (&["session", "get", &id][..], "not found"),
        (&["session", "get", "not-hex"], "invalid argument"),
        (&["session", "list", "--user", "gus", "--page-size", "1001"], "invalid argument"),
        (&["session", "list", "--user", ""], "invalid argument"),
        (&["session", "list", "--user", &"u".repeat(65)], "invalid argument"),
        (&["session", "list", "--user", "ghost"], "not found"),
        (&["session", "revoke-all", "--user", "ghost"], "not found"),
        (&["session", "revoke-all", "--user", ""], "invalid argument"),
        (&["session", "revoke", "not-hex"], "invalid argument"),
    ] {
        let err = admin_cli(&c.endpoint(2), &admin, args).await.unwrap_err();
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_streams_committed_commands_without_secret_hashes() {
    let c = TestCluster::start_with(3, |cfg| {
        cfg.raft.snapshot_every = 50;
        cfg.raft.keep_behind_snapshot = 0;
    })
    .await;
    let admin = c.admin_key.clone();
    let mut client = EventServiceClient::connect(c.endpoint(3)).await.unwrap();
    let mut req = Request::new(WatchRequest { from_index: 0 });
    req.metadata_mut().insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let mut stream = client.watch(req).await.unwrap().into_inner();

    // Changes made after the watch started arrive, in log order.
    common::create_user_with_password(c.node(1), "ivan", "a very long password", &["viewer"]).await;
    let key = cli_json(&c, 2, &admin, &["key", "create", "--user", "ivan", "--name", "watched"]).await;
    let key_id = key["id"].as_str().unwrap().to_string();
    let (mut last, mut seen_user, mut seen_key, mut membership, mut count) = (0, false, false, false, 0);
    while !(seen_user && seen_key) {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
        count += 1;
        assert!(ev.index >= last, "in order");
        last = ev.index;
        match ev.kind.unwrap() {
            watch_event::Kind::Membership(_) => membership = true,
            watch_event::Kind::Command(cmd) => match cmd.payload.unwrap() {
                gatehouse_proto::events::command::Payload::CreateUser(u) if u.username == "ivan" => {
                    assert!(u.password_hash.is_empty(), "password hash removed");
                    seen_user = true;
                }
                gatehouse_proto::events::command::Payload::CreateApiKey(k) if k.key_id == key_id => {
                    assert!(k.secret_sha256.is_empty(), "key hash removed");
                    seen_key = true;
                }
                _ => {}
            },
        }
    }
    assert!(membership, "the initial membership is part of the stream");

    // A stream ends once its key is revoked, backlog or not.
    let watcher = create_key(c.node(1), "wally", &["operator"]).await;
    let mut req = Request::new(WatchRequest { from_index: 0 });
    req.metadata_mut().insert("authorization", format!("Bearer {watcher}").parse().unwrap());
    let mut revoked_stream = client.watch(req).await.unwrap().into_inner();
    let watcher_id = watcher.split('_').nth(1).unwrap();
    admin_cli(&c.endpoint(1), &admin, &["key", "revoke", watcher_id, "--wait", "all"]).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match revoked_stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e.code()),
            }
        }
    })
    .await
    .expect("the stream ends within a few seconds of the revocation");
    assert_eq!(end, Some(Code::Unauthenticated));

    // The CLI prints the same events as JSON lines.
    let out = admin_cli(&c.endpoint(1), &admin, &["--json", "watch", "--limit", &count.to_string()]).await.unwrap();
    let lines: Vec<serde_json::Value> = out.lines().map(json).collect();
    assert_eq!(lines.len(), count);
    assert!(lines.windows(2).all(|w| w[0]["index"].as_u64() <= w[1]["index"].as_u64()));
    assert!(out.contains("\"create_api_key\"") && out.contains(&key_id), "{out}");
    assert!(!out.contains(&key["key"].as_str().unwrap()[20..]), "no secret in {out}");

    // After compaction, old indexes are refused, naming the oldest one still there.
    for i in 0..60 {
        common::write_user(c.node(1), &format!("filler-{i}")).await;
    }
    admin_cli(&c.endpoint(1), &admin, &["cluster", "snapshot"]).await.unwrap();
    let mut client = EventServiceClient::connect(c.endpoint(1)).await.unwrap();
    // Purging follows the snapshot asynchronously: wait for the refusal.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let err = loop {
        let mut req = Request::new(WatchRequest { from_index: 1 });
        req.metadata_mut().insert("authorization", format!("Bearer {admin}").parse().unwrap());
        if let Err(e) = client.watch(req).await {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "the log was never compacted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("oldest index"), "{}", err.message());
    // The first stream is still open: shutting down must end it, not wait for it.
    c.shutdown().await;
    let drained =
        tokio::time::timeout(Duration::from_secs(5), async { while let Ok(Some(_)) = stream.message().await {} }).await;
    assert!(drained.is_ok(), "the stream ended with the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_moves_on_request_and_writes_continue() {
    let c = TestCluster::start(3).await;
    let admin = c.admin_key.clone();
    let leader = c.wait_for_leader().await;
    let target = (1..=3).find(|n| *n != leader).unwrap();
    let via = (1..=3).find(|n| *n != leader && *n != target).unwrap();
    let r = cli_json(&c, via, &admin, &["cluster", "transfer-leader", &target.to_string()]).await;
    assert_eq!(r["leader"].as_u64(), Some(target));
    assert_eq!(c.wait_for_leader().await, target);
    // And back again, asked of the leader itself.
    let r = cli_json(&c, target, &admin, &["cluster", "transfer-leader", &leader.to_string()]).await;
    assert_eq!(r["leader"].as_u64(), Some(leader));
    cli_json(&c, target, &admin, &["user", "create", "after-move", "--email", "m@example.com"]).await;
    let status = cli_json(&c, via, &admin, &["cluster", "status"]).await;
    assert_eq!(status["leader"].as_u64(), Some(leader));
    for (args, want) in [
        (&["cluster", "transfer-leader", "42"][..], "not found"),
        (&["cluster", "transfer-leader", "0"], "invalid argument"),
    ] {
        let err = admin_cli(&c.endpoint(1), &admin, args).await.unwrap_err();
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_health_and_reflection_answer() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let c = TestCluster::start(3).await;
    let mut health = HealthClient::new(Channel::from_shared(c.endpoint(2)).unwrap().connect().await.unwrap());
    for service in ["", "gatehouse.admin.v1.UserService"] {
        wait_until("serving", Duration::from_secs(5), || {
            let mut h = health.clone();
            async move {
                let r = h.check(HealthCheckRequest { service: service.into() }).await;
                r.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
            }
        })
        .await;
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection =
        ServerReflectionClient::new(Channel::from_shared(c.endpoint(1)).unwrap().connect().await.unwrap());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["gatehouse.admin.v1.UserService", "gatehouse.admin.v1.EventService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_protobuf_is_invalid_argument_without_decoder_detail() {
    let c = TestCluster::start(1).await;
    let ch = Channel::from_shared(c.endpoint(1)).unwrap().connect().await.unwrap();
    let garbage: [&[u8]; 4] = [&[0xff, 0xff, 0xff], &[0x0a, 0x7f, b'x'], &[0x08], &[0x0a, 0x02, 0xc3, 0x28]];
    for path in ["/gatehouse.admin.v1.UserService/Get", "/gatehouse.admin.v1.KeyService/Create"] {
        for bytes in garbage {
            let mut grpc = tonic::client::Grpc::new(ch.clone());
            grpc.ready().await.unwrap();
            let mut req = Request::new(bytes.to_vec());
            req.metadata_mut().insert("authorization", format!("Bearer {}", c.admin_key).parse().unwrap());
            let path = http::uri::PathAndQuery::from_static(path);
            let err = grpc.unary(req, path, common::RawCodec).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bytes:?}: {err:?}");
            assert_eq!(err.message(), "malformed protobuf message");
        }
    }
    c.shutdown().await;
}

/// Failed admin authentications are limited per client address; a key
/// that verifies still passes from that address.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_admin_authentications_are_limited_per_address() {
    let c = TestCluster::start_with(1, |cfg| {
        cfg.rate_limits = gatehouse_api::rate_limit::LimitsConfig {
            enabled: true,
            policies: vec![],
            admin_auth_failures_per_minute: 5,
            ..Default::default()
        };
    })
    .await;
    let ch = Channel::from_shared(c.endpoint(1)).unwrap().connect().await.unwrap();
    let status = |token: String| {
        let ch = ch.clone();
        async move {
            let mut req = Request::new(ClusterStatusRequest {});
            req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            code(ClusterServiceClient::new(ch).status(req).await)
        }
    };
    let forged = "gk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string();
    for _ in 0..5 {
        assert_eq!(status(forged.clone()).await, Code::Unauthenticated);
    }
    assert_eq!(status(forged.clone()).await, Code::ResourceExhausted);
    assert_eq!(status("not-a-key".into()).await, Code::ResourceExhausted);
    assert_eq!(status(c.admin_key.clone()).await, Code::Ok, "a key that verifies still passes");
    c.shutdown().await;
}

/// The oversized-role attack (issue 16): a few million permissions inside
/// the gRPC limit used to reach the log and stall replication. Refused
/// before proposing: the log does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_role_is_refused_before_the_log() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let before = c.node(leader).cluster().raft().metrics().borrow().last_log_index.unwrap_or(0);
    let ch = Channel::from_shared(c.endpoint(2)).unwrap().connect().await.unwrap();
    let mut roles = RoleServiceClient::new(ch);
    let huge = PutRoleRequest {
        name: "huge".into(),
        permissions: (0..200_000).map(|i| format!("perm.{i}")).collect(),
        description: String::new(),
        assignable_by: vec![],
    };
    for call in [huge.clone(), PutRoleRequest { assignable_by: vec!["viewer".into(); 1000], ..huge.clone() }] {
        let mut req = Request::new(call);
        req.metadata_mut().insert("authorization", format!("Bearer {}", c.admin_key).parse().unwrap());
        let err = roles.create(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().len() < 200, "{}", err.message());
    }
    // A small role written after them; the log up to it holds no other role.
    let mut small = Request::new(PutRoleRequest { name: "small".into(), ..Default::default() });
    small.metadata_mut().insert("authorization", format!("Bearer {}", c.admin_key).parse().unwrap());
    roles.create(small).await.unwrap();
    let upto = c.node(2).cluster().view().applied_index();
    let ch = Channel::from_shared(c.endpoint(2)).unwrap().connect().await.unwrap();
    let mut watch = Request::new(WatchRequest { from_index: before + 1 });
    watch.metadata_mut().insert("authorization", format!("Bearer {}", c.admin_key).parse().unwrap());
    let mut stream = EventServiceClient::new(ch).watch(watch).await.unwrap().into_inner();
    let mut put_roles = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(watch_event::Kind::Command(cmd)) = &event.kind {
            if let Some(gatehouse_proto::events::command::Payload::PutRole(p)) = &cmd.payload {
                put_roles.push(p.name.clone());
            }
        }
        if event.index >= upto {
            break;
        }
    }
    assert_eq!(put_roles, ["small"], "nothing of the refused calls was proposed");
    assert!(c.node(1).cluster().view().read().role("huge").is_none());
    c.shutdown().await;
}
