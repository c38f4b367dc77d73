//! What the chaos checkers lean on, tested on its own: admin writes retried
//! with an `idempotency-key` are applied once, `gatehouse-consistency:
//! linearizable` reads fail rather than answer from a state that cannot be
//! proven current, and nodes that applied the same log report the same
//! state digest.

mod common;

use std::time::Duration;

use common::{create_key, wait_until, TestCluster};
use gatehouse_proto::admin::key_service_client::KeyServiceClient;
use gatehouse_proto::admin::user_service_client::UserServiceClient;
use gatehouse_proto::admin::{CreateKeyRequest, CreateUserRequest, GetUserRequest, ListKeysRequest, RevokeKeyRequest};
use gatehouse_proto::control::StateDigestRequest;
use tonic::{Code, Request};

fn req<T>(token: &str, msg: T, meta: &[(&'static str, &str)]) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    for (k, v) in meta {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

async fn keys_named(c: &TestCluster, user: &str, name: &str) -> usize {
    let mut keys = KeyServiceClient::connect(c.endpoint(1)).await.unwrap();
    let list = keys
        .list(req(&c.admin_key, ListKeysRequest { user: user.into(), ..Default::default() }, &[]))
        .await
        .unwrap()
        .into_inner();
    list.keys.iter().filter(|k| k.name == name).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_write_with_an_idempotency_key_is_applied_once() {
    let c = TestCluster::start(3).await;
    let mut users = UserServiceClient::connect(c.endpoint(2)).await.unwrap();
    let create = |name: &str| CreateUserRequest {
        username: name.into(),
        email: format!("{name}@example.com"),
        roles: vec!["viewer".into()],
        password: String::new(),
    };
    users.create(req(&c.admin_key, create("ida"), &[])).await.unwrap();

    // A retried user creation answers with the user its first attempt made
    // (the name is taken by that attempt, not by someone else), on any node.
    let mut users3 = UserServiceClient::connect(c.endpoint(3)).await.unwrap();
    let made = users.create(req(&c.admin_key, create("ivo"), &[("idempotency-key", "mk-ivo")])).await.unwrap();
    let made = made.into_inner();
    let again = users3.create(req(&c.admin_key, create("ivo"), &[("idempotency-key", "mk-ivo")])).await.unwrap();
    assert_eq!(again.into_inner(), made, "the retry gets the first attempt's user");
    // A fresh call for the name, with another key or none, is refused.
    for meta in [&[("idempotency-key", "mk-ivo-2")][..], &[]] {
        let taken = users3.create(req(&c.admin_key, create("ivo"), meta)).await.unwrap_err();
        assert_eq!(taken.code(), Code::AlreadyExists, "{meta:?}: {taken:?}");
    }
    // A first attempt that failed fails the same way when retried.
    let dup = users.create(req(&c.admin_key, create("ida"), &[("idempotency-key", "mk-ida")])).await.unwrap_err();
    let dup_again =
        users3.create(req(&c.admin_key, create("ida"), &[("idempotency-key", "mk-ida")])).await.unwrap_err();
    assert_eq!((dup.code(), dup_again.code()), (Code::AlreadyExists, Code::AlreadyExists));
    // A hostile key is refused before the name check, and creates nobody.
    let bad = users3.create(req(&c.admin_key, create("ivy"), &[("idempotency-key", "semi;colon")])).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let ivy = users3.get(req(&c.admin_key, GetUserRequest { user: "ivy".into() }, &[])).await.unwrap_err();
    assert_eq!(ivy.code(), Code::NotFound);

    // The same call sent twice, to two nodes: one key, and the retry says so.
    let call = || CreateKeyRequest { user: "ida".into(), name: "deploy".into(), ..Default::default() };
    let mut on2 = KeyServiceClient::connect(c.endpoint(2)).await.unwrap();
    let mut on3 = KeyServiceClient::connect(c.endpoint(3)).await.unwrap();
    let first = on2.create(req(&c.admin_key, call(), &[("idempotency-key", "deploy-1")])).await.unwrap().into_inner();
    let id = first.key.unwrap().id;
    assert!(first.secret.starts_with("gk_"));
    let retry = on3.create(req(&c.admin_key, call(), &[("idempotency-key", "deploy-1")])).await.unwrap_err();
    assert_eq!(retry.code(), Code::AlreadyExists, "{retry:?}");
    assert!(retry.message().contains(&id), "the retry names the key its first attempt made: {}", retry.message());
    assert_eq!(keys_named(&c, "ida", "deploy").await, 1);

    // Without a key, two calls are two keys.
    on2.create(req(&c.admin_key, call(), &[])).await.unwrap();
    assert_eq!(keys_named(&c, "ida", "deploy").await, 2);

    // Keys are scoped to the caller: another admin's "deploy-1" is its own.
    let other = create_key(c.node(1), "other-admin", &["admin"]).await;
    on2.create(req(&other, call(), &[("idempotency-key", "deploy-1")])).await.unwrap();
    assert_eq!(keys_named(&c, "ida", "deploy").await, 3);

    // A retried revoke answers like the first.
    let revoke = || RevokeKeyRequest { id: id.clone(), wait_all: false };
    let a = on2.revoke(req(&c.admin_key, revoke(), &[("idempotency-key", "rv-1")])).await.unwrap().into_inner();
    let b = on3.revoke(req(&c.admin_key, revoke(), &[("idempotency-key", "rv-1")])).await.unwrap().into_inner();
    assert_eq!(a.log_index, b.log_index, "the retry gets the first apply's result");
    // Without the key, revoking twice is refused.
    let again = on3.revoke(req(&c.admin_key, revoke(), &[])).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // Hostile keys: refused before anything is written.
    let before = keys_named(&c, "ida", "deploy").await;
    for bad in ["", "has space", "x".repeat(65).as_str(), "semi;colon", "ünï"] {
        let mut r = Request::new(call());
        r.metadata_mut().insert("authorization", format!("Bearer {}", c.admin_key).parse().unwrap());
        match tonic::metadata::MetadataValue::try_from(bad) {
            Ok(v) => {
                r.metadata_mut().insert("idempotency-key", v);
            }
            Err(_) => continue,
        }
        let e = on2.create(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    assert_eq!(keys_named(&c, "ida", "deploy").await, before, "refused calls wrote nothing");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_linearizable_read_fails_where_a_default_read_answers_from_local_state() {
    // A long staleness bound keeps the lone node answering default reads.
    let mut c = TestCluster::start_with(3, |cfg| cfg.max_staleness_ms = 60_000).await;
    let mut users = UserServiceClient::connect(c.endpoint(1)).await.unwrap();
    let get = || GetUserRequest { user: "ghost".into() };
    let lin = [("gatehouse-consistency", "linearizable")];
    assert_eq!(users.get(req(&c.admin_key, get(), &lin)).await.unwrap_err().code(), Code::NotFound);
    // A level it does not know is refused, not read as the weaker default.
    for bad in ["Linearizable", "strict", ""] {
        let e = users.get(req(&c.admin_key, get(), &[("gatehouse-consistency", bad)])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
    }

    c.stop(2).await;
    c.stop(3).await;
    // Node 1 alone cannot reach a quorum, so it cannot prove what is committed.
    wait_until("node 1 loses its quorum", Duration::from_secs(20), || {
        let mut users = users.clone();
        let key = c.admin_key.clone();
        async move { matches!(users.get(req(&key, get(), &lin)).await, Err(e) if e.code() == Code::Unavailable) }
    })
    .await;
    let default = users.get(req(&c.admin_key, get(), &[])).await.unwrap_err();
    assert_eq!(default.code(), Code::NotFound, "a default read answers from local state: {default:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_cannot_answer_names_the_leader() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let leader_addr = c.node(leader).advertise_addr().to_string();
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    // The followers keep the leader they know: no election replaces it.
    for n in c.nodes.keys().filter(|&&id| id != leader) {
        c.node(*n).cluster().pause_elections(Duration::from_secs(60));
    }
    c.stop(leader).await;
    let mut users = UserServiceClient::connect(c.endpoint(follower)).await.unwrap();
    let get = || GetUserRequest { user: "ghost".into() };
    // Past max_staleness the follower cannot prove it is current: UNAVAILABLE,
    // and the metadata says where the leader was last seen.
    wait_until("the follower turns stale", Duration::from_secs(10), || {
        let mut users = users.clone();
        let key = c.admin_key.clone();
        async move { matches!(users.get(req(&key, get(), &[])).await, Err(e) if e.code() == Code::Unavailable) }
    })
    .await;
    let e = users.get(req(&c.admin_key, get(), &[])).await.unwrap_err();
    assert_eq!(e.metadata().get("x-gatehouse-leader").and_then(|v| v.to_str().ok()), Some(leader_addr.as_str()));
    let create =
        CreateUserRequest { username: "nobody-home".into(), email: "n@example.com".into(), ..Default::default() };
    let e = users.create(req(&c.admin_key, create, &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(e.metadata().get("x-gatehouse-leader").and_then(|v| v.to_str().ok()), Some(leader_addr.as_str()));
    assert!(!e.message().contains("127.0.0.1"), "no internal detail in the message: {e:?}");
    for n in c.nodes.keys() {
        c.node(*n).cluster().pause_elections(Duration::ZERO);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_that_applied_the_same_log_report_the_same_digest() {
    let c = TestCluster::start(3).await;
    for i in 0..20 {
        common::write_user(c.node(1 + i % 3), &format!("digest-{i}")).await;
    }
    let peers = gatehouse_cluster::Peers::new(gatehouse_cluster::ClusterSecret::new(&c.secret()).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let mut seen = Vec::new();
        for n in c.nodes.values() {
            let mut client = peers.control_client(n.advertise_addr()).unwrap();
            let d = client.state_digest(StateDigestRequest {}).await.unwrap().into_inner();
            seen.push((d.applied_index, d.sha256));
        }
        if seen.windows(2).all(|w| w[0] == w[1]) {
            break seen;
        }
        assert!(std::time::Instant::now() < deadline, "nodes never agreed: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen[0].1.len(), 32);
    // A further write changes it.
    common::write_user(c.node(1), "digest-more").await;
    let d =
        peers.control_client(c.node(1).advertise_addr()).unwrap().state_digest(StateDigestRequest {}).await.unwrap();
    assert_ne!(d.into_inner().sha256, seen[0].1);
    c.shutdown().await;
}

/// An `idempotency-key` means one request: reused for another request (other
/// parameters, or another RPC) it is refused with FAILED_PRECONDITION and
/// does nothing, for every RPC that takes it; the same request again still
/// gets its first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reused_idempotency_key_is_refused_for_another_request() {
    use gatehouse_proto::admin::role_service_client::RoleServiceClient;
    use gatehouse_proto::admin::session_service_client::SessionServiceClient;
    use gatehouse_proto::admin::*;
    const PASSWORD: &str = "correct horse battery staple";
    let c = TestCluster::start(1).await;
    let ch = tonic::transport::Channel::from_shared(c.endpoint(1)).unwrap().connect().await.unwrap();
    let (mut users, mut keys) = (UserServiceClient::new(ch.clone()), KeyServiceClient::new(ch.clone()));
    let (mut sessions, mut roles) = (SessionServiceClient::new(ch.clone()), RoleServiceClient::new(ch));
    let admin = c.admin_key.clone();
    for name in ["uma1", "uma2", "dan1", "dan2", "pam1", "pam2"] {
        common::create_user_with_password(c.node(1), name, PASSWORD, &["viewer"]).await;
    }
    let key_id = |k: &str| gatehouse_domain::keys::parse_key(k).unwrap().0.to_string();
    let mut key_ids = Vec::new();
    for i in 0..4 {
        key_ids.push(key_id(&create_key(c.node(1), &format!("key{i}"), &["viewer"]).await));
    }
    let mut session_ids = Vec::new();
    for name in ["uma1", "uma2"] {
        let r: serde_json::Value = common::http()
            .post(format!("{}/api/v1/login", common::base(c.node(1))))
            .header("x-requested-with", "t")
            .json(&serde_json::json!({ "username": name, "password": PASSWORD }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        session_ids.push(r["session_id"].as_str().unwrap().to_string());
    }
    roles.create(req(&admin, PutRoleRequest { name: "r-old".into(), ..Default::default() }, &[])).await.unwrap();
    roles.create(req(&admin, PutRoleRequest { name: "r-old2".into(), ..Default::default() }, &[])).await.unwrap();

    // A first call under `$key`, optionally the same call again (it gets the
    // first answer), then another request under the same key (refused).
    macro_rules! case {
        ($what:expr, $first:expr, $again:expr, $other:expr) => {{
            let first = $first.await.map(|_| ());
            assert!(first.is_ok(), "{}: {:?}", $what, first.err());
            if let Some(again) = $again {
                let again: Result<(), tonic::Status> = again.await.map(|_| ());
                assert!(again.is_ok(), "{} repeated: {:?}", $what, again.err());
            }
            let status = $other.await.map(|_| ()).err();
            let status = status.unwrap_or_else(|| panic!("{}: another request under the same key was served", $what));
            assert_eq!(status.code(), Code::FailedPrecondition, "{}: {status:?}", $what);
            assert!(status.message().contains("idempotency key reused"), "{}: {status:?}", $what);
        }};
    }
    let create_user = |name: &'static str| CreateUserRequest {
        username: name.into(),
        email: format!("{name}@example.com"),
        roles: vec!["viewer".into()],
        password: String::new(),
    };
    case!(
        "users.create",
        users.create(req(&admin, create_user("new-1"), &[("idempotency-key", "uc")])),
        Some(users.create(req(&admin, create_user("new-1"), &[("idempotency-key", "uc")]))),
        users.create(req(&admin, create_user("new-2"), &[("idempotency-key", "uc")]))
    );
    let update = |email: &str| UpdateUserRequest { user: "uma1".into(), email: email.into(), ..Default::default() };
    case!(
        "users.update",
        users.update(req(&admin, update("a@example.com"), &[("idempotency-key", "uu")])),
        Some(users.update(req(&admin, update("a@example.com"), &[("idempotency-key", "uu")]))),
        users.update(req(&admin, update("b@example.com"), &[("idempotency-key", "uu")]))
    );
    let status = |user: &str| SetUserStatusRequest { user: user.into(), status: "disabled".into(), wait_all: false };
    case!(
        "users.set_status",
        users.set_status(req(&admin, status("dan1"), &[("idempotency-key", "us")])),
        Some(users.set_status(req(&admin, status("dan1"), &[("idempotency-key", "us")]))),
        users.set_status(req(&admin, status("dan2"), &[("idempotency-key", "us")]))
    );
    let pw = |user: &str| SetPasswordRequest { user: user.into(), password: "another long password".into() };
    case!(
        "users.set_password",
        users.set_password(req(&admin, pw("pam1"), &[("idempotency-key", "up")])),
        Some(users.set_password(req(&admin, pw("pam1"), &[("idempotency-key", "up")]))),
        users.set_password(req(&admin, pw("pam2"), &[("idempotency-key", "up")]))
    );
    let key_create = |name: &str| CreateKeyRequest { user: "uma1".into(), name: name.into(), ..Default::default() };
    case!(
        "keys.create",
        keys.create(req(&admin, key_create("a"), &[("idempotency-key", "kc")])),
        None::<std::future::Ready<Result<(), tonic::Status>>>,
        keys.create(req(&admin, key_create("b"), &[("idempotency-key", "kc")]))
    );
    let revoke = |id: &str| RevokeKeyRequest { id: id.into(), wait_all: false };
    case!(
        "keys.revoke",
        keys.revoke(req(&admin, revoke(&key_ids[0]), &[("idempotency-key", "kr")])),
        Some(keys.revoke(req(&admin, revoke(&key_ids[0]), &[("idempotency-key", "kr")]))),
        keys.revoke(req(&admin, revoke(&key_ids[1]), &[("idempotency-key", "kr")]))
    );
    let rotate = |id: &str| RotateKeyRequest { id: id.into(), grace_seconds: 0 };
    case!(
        "keys.rotate",
        keys.rotate(req(&admin, rotate(&key_ids[2]), &[("idempotency-key", "ko")])),
        None::<std::future::Ready<Result<(), tonic::Status>>>,
        keys.rotate(req(&admin, rotate(&key_ids[3]), &[("idempotency-key", "ko")]))
    );
    let session = |id: &str| RevokeSessionRequest { id: id.into(), wait_all: false };
    case!(
        "sessions.revoke",
        sessions.revoke(req(&admin, session(&session_ids[0]), &[("idempotency-key", "sr")])),
        Some(sessions.revoke(req(&admin, session(&session_ids[0]), &[("idempotency-key", "sr")]))),
        sessions.revoke(req(&admin, session(&session_ids[1]), &[("idempotency-key", "sr")]))
    );
    assert!(c.node(1).cluster().view().read().session(&session_ids[1]).is_some(), "uma2's session still open");
    let all = |user: &str| RevokeUserSessionsRequest { user: user.into(), wait_all: false };
    case!(
        "sessions.revoke_all",
        sessions.revoke_all(req(&admin, all("uma1"), &[("idempotency-key", "sa")])),
        Some(sessions.revoke_all(req(&admin, all("uma1"), &[("idempotency-key", "sa")]))),
        sessions.revoke_all(req(&admin, all("uma2"), &[("idempotency-key", "sa")]))
    );
    let every = |wait_all| RevokeEverySessionRequest { confirm: true, wait_all };
    case!(
        "sessions.revoke_everything",
        sessions.revoke_everything(req(&admin, every(false), &[("idempotency-key", "se")])),
        Some(sessions.revoke_everything(req(&admin, every(false), &[("idempotency-key", "se")]))),
        sessions.revoke_everything(req(&admin, every(true), &[("idempotency-key", "se")]))
    );
    let role = |name: &str, perms: &[&str]| PutRoleRequest {
        name: name.into(),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    case!(
        "roles.create",
        roles.create(req(&admin, role("r-a", &[]), &[("idempotency-key", "rc")])),
        Some(roles.create(req(&admin, role("r-a", &[]), &[("idempotency-key", "rc")]))),
        roles.create(req(&admin, role("r-b", &[]), &[("idempotency-key", "rc")]))
    );
    case!(
        "roles.update",
        roles.update(req(&admin, role("r-old", &["users.read"]), &[("idempotency-key", "ru")])),
        Some(roles.update(req(&admin, role("r-old", &["users.read"]), &[("idempotency-key", "ru")]))),
        roles.update(req(&admin, role("r-old", &["keys.read"]), &[("idempotency-key", "ru")]))
    );
    let assignment = |user: &str| RoleAssignment { user: user.into(), role: "r-old2".into() };
    case!(
        "roles.assign",
        roles.assign(req(&admin, assignment("uma1"), &[("idempotency-key", "ra")])),
        Some(roles.assign(req(&admin, assignment("uma1"), &[("idempotency-key", "ra")]))),
        roles.assign(req(&admin, assignment("uma2"), &[("idempotency-key", "ra")]))
    );
    case!(
        "roles.unassign",
        roles.unassign(req(&admin, assignment("uma1"), &[("idempotency-key", "rn")])),
        Some(roles.unassign(req(&admin, assignment("uma1"), &[("idempotency-key", "rn")]))),
        roles.unassign(req(
            &admin,
            RoleAssignment { user: "uma1".into(), role: "viewer".into() },
            &[("idempotency-key", "rn")]
        ))
    );
    case!(
        "roles.delete",
        roles.delete(req(&admin, DeleteRoleRequest { name: "r-a".into() }, &[("idempotency-key", "rd")])),
        Some(roles.delete(req(&admin, DeleteRoleRequest { name: "r-a".into() }, &[("idempotency-key", "rd")]))),
        roles.delete(req(&admin, DeleteRoleRequest { name: "r-old".into() }, &[("idempotency-key", "rd")]))
    );
    case!(
        "users.delete",
        users.delete(req(&admin, DeleteUserRequest { user: "dan1".into() }, &[("idempotency-key", "ud")])),
        // (A retried delete answers NOT_FOUND: its pre-check runs first.)
        None::<std::future::Ready<Result<(), tonic::Status>>>,
        users.delete(req(&admin, DeleteUserRequest { user: "dan2".into() }, &[("idempotency-key", "ud")]))
    );
    // The same key on another RPC is another request too.
    let status = keys.revoke(req(&admin, revoke(&key_ids[1]), &[("idempotency-key", "uc")])).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // Nothing the refused calls asked for happened.
    {
        let state = c.node(1).cluster().view().read();
        assert!(state.user_by_name("new-2").is_none());
        assert_eq!(state.user_by_name("uma1").unwrap().email, "a@example.com");
        let active = gatehouse_proto::events::UserStatus::Active as i32;
        assert_eq!(state.user_by_name("dan2").unwrap().status, active, "dan2 still active");
        assert!(state.api_key(&key_ids[1]).is_some_and(|k| k.revoked_at == 0), "k1 still valid");
        assert!(state.api_key(&key_ids[3]).is_some_and(|k| k.revoked_at == 0), "k3 not rotated");
        assert!(state.role("r-b").is_none());
        assert_eq!(state.role("r-old").unwrap().permissions, ["users.read"]);
        assert!(!state.user_by_name("uma2").unwrap().roles.contains(&"r-old2".to_string()));
        assert!(state.user_by_name("uma1").unwrap().roles.contains(&"viewer".to_string()));
        assert!(state.user_by_name("dan2").is_some());
        assert!(state.role("r-old").is_some());
    }
    c.shutdown().await;
}

/// The read index a follower asks the leader for (its freshness probes and
/// catch-ups, `RaftService.ReadIndex`) is the leader's own: while a
/// leadership transfer waits out the followers' leader leases it waits,
/// like the leader's own reads, until that window ends. Confirming
/// leadership meanwhile would renew those leases, and the target could not
/// win. By then the old leader has stepped down and names the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_index_asked_during_a_transfer_waits_for_the_new_leader() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let target = *c.nodes.keys().find(|&&n| n != leader).unwrap();
    let old = c.node(leader).cluster().clone();
    let transfer = tokio::spawn({
        let old = old.clone();
        async move { old.transfer_leadership(target).await }
    });
    wait_until("the leader holds reads for the transfer", Duration::from_secs(5), || {
        let held = old.holding_reads();
        async move { held }
    })
    .await;
    let peers = gatehouse_cluster::Peers::new(gatehouse_cluster::ClusterSecret::new(&c.secret()).unwrap());
    let mut client = peers.control_client(c.node(leader).advertise_addr()).unwrap();
    let answer = client.read_index(gatehouse_proto::control::ReadIndexRequest {}).await;
    assert!(!old.holding_reads(), "answered while the transfer held reads: {answer:?}");
    let refused = answer.expect_err("the old leader no longer leads");
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(
        gatehouse_cluster::error::leader_named(&refused).as_deref(),
        Some(c.node(target).advertise_addr()),
        "names the new leader"
    );
    assert_eq!(transfer.await.unwrap().unwrap().0, target);
    // Probes through the new leader prove freshness again everywhere.
    for n in c.nodes.keys() {
        let node = c.node(*n).cluster().clone();
        wait_until("every node fresh again", Duration::from_secs(5), || {
            let node = node.clone();
            async move { node.ensure_fresh().await }
        })
        .await;
    }
    c.shutdown().await;
}
