//! `AddLearner` (issue 16): it refuses ids and addresses the cluster cannot
//! use before the membership changes, returns once the learner caught up,
//! and a learner that stops answering with our gRPC is retried with
//! back-off, not in a loop.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{config, wait_until, TestCluster};
use gatehouse::Node;
use gatehouse_proto::admin::cluster_service_client::ClusterServiceClient;
use gatehouse_proto::admin::{AddLearnerRequest, MembershipResponse};
use tonic::{Code, Request, Status};

async fn add_learner(c: &TestCluster, via: u64, node_id: u64, addr: &str) -> Result<MembershipResponse, Status> {
    let ep = c.endpoint(via);
    let mut client = ClusterServiceClient::connect(ep).await.unwrap();
    let mut req = Request::new(AddLearnerRequest { node_id, addr: addr.into(), client_addr: String::new() });
    req.metadata_mut().insert("authorization", format!("Bearer {}", c.admin_key).parse().unwrap());
    client.add_learner(req).await.map(|r| r.into_inner())
}

/// A node started on its own (not initialised), ready to be added.
async fn spare(c: &TestCluster, id: u64, tweak: impl Fn(&mut gatehouse::config::Config)) -> Node {
    let mut cfg = config(id, &c.dir);
    tweak(&mut cfg);
    Node::start(cfg).await.expect("spare node starts")
}

fn learners(c: &TestCluster) -> Vec<u64> {
    let m = c.node(1).cluster().raft().metrics().borrow().membership_config.membership().clone();
    m.learner_ids().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_and_addresses_the_cluster_cannot_use_are_refused_before_the_membership_changes() {
    let c = TestCluster::start(3).await;
    let four = spare(&c, 4, |_| {}).await;
    let alien = spare(&c, 5, |cfg| cfg.cluster_secret = Some("another-clusters-secret-0123456789abcdef".into())).await;
    let http = c.node(1).http_addr().to_string();
    let cases = [
        (5, four.advertise_addr().to_string(), Code::InvalidArgument, "is node 4, not node 5"),
        (4, http, Code::FailedPrecondition, "did not answer as a Gatehouse node"),
        (4, "127.0.0.1:1".to_string(), Code::FailedPrecondition, "unreachable"),
        (5, alien.advertise_addr().to_string(), Code::FailedPrecondition, "refused this cluster's secret"),
        (4, c.node(2).advertise_addr().to_string(), Code::FailedPrecondition, "address of node 2"),
        (2, c.node(2).advertise_addr().to_string(), Code::FailedPrecondition, "already a voter"),
    ];
    for (id, addr, code, says) in cases {
        for via in [1, 3] {
            let err = add_learner(&c, via, id, &addr).await.unwrap_err();
            assert_eq!(err.code(), code, "{id} at {addr} via {via}: {err:?}");
            assert!(err.message().contains(says), "{id} at {addr}: {}", err.message());
            assert!(!err.message().contains("h2") && !err.message().contains("tcp"), "{}", err.message());
        }
    }
    assert!(learners(&c).is_empty(), "nothing was added");
    // The right id at its own address is added, and adding it again is a no-op.
    let added = add_learner(&c, 2, 4, four.advertise_addr()).await.unwrap();
    assert_eq!(added.learners, vec![4]);
    assert_eq!(add_learner(&c, 3, 4, four.advertise_addr()).await.unwrap().learners, vec![4]);
    four.shutdown().await.unwrap();
    alien.shutdown().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_learner_returns_once_the_learner_holds_the_log() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let cluster = c.node(leader).cluster();
    // 20 MB of log for the learner to take in.
    common::append_large_audit(c.node(leader), 24, "test.event").await;
    let four = spare(&c, 4, |_| {}).await;
    let added = add_learner(&c, leader, 4, four.advertise_addr()).await.unwrap();
    // On return the leader knows the learner holds the log through the
    // entry that added it (openraft's own wait gave up after 500 ms).
    let matched = cluster.raft().metrics().borrow().replication.as_ref().and_then(|r| r[&4]).map_or(0, |l| l.index);
    assert!(matched >= added.log_index, "on return the learner holds index {matched} of {}", added.log_index);
    wait_until("the learner's own log shows it", Duration::from_secs(5), || {
        let held = four.cluster().raft().metrics().borrow().last_log_index.unwrap_or(0);
        async move { held >= added.log_index }
    })
    .await;
    four.shutdown().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_that_answers_with_something_else_is_retried_with_back_off() {
    let c = TestCluster::start(3).await;
    let four = spare(&c, 4, |_| {}).await;
    let addr = four.advertise_addr().to_string();
    add_learner(&c, 1, 4, &addr).await.unwrap();
    four.shutdown().await.unwrap();
    // Another program takes the learner's port: an HTTP/2 service, not our
    // gRPC (every request: 404). Each request it gets is counted.
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("the learner's port is free again");
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else { return };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let not_found = http::Response::builder().status(404).body(()).unwrap();
                    let _ = respond.send_response(not_found, true);
                }
            });
        }
    });
    wait_until("the leader tried the learner", Duration::from_secs(10), || {
        let n = requests.load(Ordering::Relaxed);
        async move { n > 0 }
    })
    .await;
    // Watched for a while: a few tries a second, not a loop.
    let start = requests.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tries = requests.load(Ordering::Relaxed) - start;
    assert!(tries <= 30, "{tries} requests in 3 s");
    // The cluster serves on meanwhile.
    common::write_user(c.node(2), "still-writing").await;
    c.shutdown().await;
}
