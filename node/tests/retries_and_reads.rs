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
use gatehouse_proto::raft::StateDigestRequest;
use tonic::{Code, Request};

fn ep(c: &TestCluster, id: u64) -> String {
    format!("http://{}", c.node(id).advertise_addr())
}

fn req<T>(token: &str, msg: T, meta: &[(&'static str, &str)]) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    for (k, v) in meta {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

async fn keys_named(c: &TestCluster, user: &str, name: &str) -> usize {
    let mut keys = KeyServiceClient::connect(ep(c, 1)).await.unwrap();
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
    let mut users = UserServiceClient::connect(ep(&c, 2)).await.unwrap();
    let create = |name: &str| CreateUserRequest {
        username: name.into(),
        email: format!("{name}@example.com"),
        roles: vec!["viewer".into()],
        password: String::new(),
    };
    users.create(req(&c.admin_key, create("ida"), &[])).await.unwrap();

    // A retried user creation answers with the user its first attempt made
    // (the name is taken by that attempt, not by someone else), on any node.
    let mut users3 = UserServiceClient::connect(ep(&c, 3)).await.unwrap();
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
    let mut on2 = KeyServiceClient::connect(ep(&c, 2)).await.unwrap();
    let mut on3 = KeyServiceClient::connect(ep(&c, 3)).await.unwrap();
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
    let mut users = UserServiceClient::connect(ep(&c, 1)).await.unwrap();
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
    let mut users = UserServiceClient::connect(ep(&c, follower)).await.unwrap();
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
    let peers = gatehouse_api::Peers::new(gatehouse_api::ClusterSecret::new(common::SECRET).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let mut seen = Vec::new();
        for n in c.nodes.values() {
            let mut client = peers.raft_client(n.advertise_addr()).unwrap();
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
    let d = peers.raft_client(c.node(1).advertise_addr()).unwrap().state_digest(StateDigestRequest {}).await.unwrap();
    assert_ne!(d.into_inner().sha256, seen[0].1);
    c.shutdown().await;
}
