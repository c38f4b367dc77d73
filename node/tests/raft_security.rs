//! The Raft and control services are closed to anyone without the cluster secret and
//! to nodes of another cluster or an earlier epoch (its lineage), and
//! malformed or truncated RPCs are refused without harm.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{wait_until, write_user, RawCodec, TestCluster};
use gatehouse::Node;
use gatehouse_cluster::lineage::LINEAGE_METADATA;
use gatehouse_cluster::peers::SECRET_METADATA;
use gatehouse_cluster::{ClusterSecret, Peers};
use gatehouse_proto::control as cpb;
use gatehouse_proto::raft as pb;
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rpcs_without_the_right_secret_are_refused() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let term = c.node(leader).cluster().raft().metrics().borrow().current_term;
    let addr = c.node(leader).advertise_addr().to_string();

    let wrong = Peers::new(ClusterSecret::new(&"w".repeat(40)).unwrap());
    let mut client = wrong.raft_client(&addr).unwrap();
    let vote =
        pb::VoteRequest { vote: Some(pb::Vote { term: term + 10, node_id: 99, committed: false }), last_log_id: None };
    assert_eq!(client.vote(vote).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let append = pb::AppendEntriesRequest {
        vote: Some(pb::Vote { term: term + 10, node_id: 99, committed: true }),
        ..Default::default()
    };
    assert_eq!(client.append_entries(append).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let chunks = tokio_stream::iter(vec![pb::SnapshotChunk::default()]);
    assert_eq!(client.install_snapshot(chunks).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    // The control service asks the same secret.
    let mut control = wrong.control_client(&addr).unwrap();
    let propose = cpb::ProposeRequest { batch: Some(Default::default()) };
    assert_eq!(control.propose(propose).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(
        control.local_status(cpb::LocalStatusRequest {}).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(control.read_index(cpb::ReadIndexRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(
        control.state_digest(cpb::StateDigestRequest {}).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    // Leadership-transfer steps: a stray process must not freeze elections or start one.
    let pause = cpb::PauseElectionsRequest { duration_ms: 60_000 };
    assert_eq!(control.pause_elections(pause).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(control.campaign(cpb::CampaignRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(control.pre_vote(cpb::PreVoteRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    // No secret at all.
    let ch = c.node(leader).cluster().peers().channel(&addr).unwrap();
    let mut bare = pb::raft_service_client::RaftServiceClient::new(ch.clone());
    assert_eq!(bare.vote(vote).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut bare = cpb::control_service_client::ControlServiceClient::new(ch);
    assert_eq!(bare.local_status(cpb::LocalStatusRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    // Nothing changed: same leader, same term.
    assert_eq!(c.wait_for_leader().await, leader);
    assert_eq!(c.node(leader).cluster().raft().metrics().borrow().current_term, term);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stray_node_with_the_wrong_secret_cannot_vote_or_join() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let term = c.node(leader).cluster().raft().metrics().borrow().current_term;

    let (_dir, stray) = campaigning_stray(&c, &"x".repeat(40)).await;
    untouched_by(&c, leader, term, &stray).await;
    assert!(stray.cluster().raft().metrics().borrow().current_leader != Some(9));
    stray.shutdown().await.unwrap();
    c.shutdown().await;
}

/// Node 9, initialised as a cluster of its own with `secret`, claiming the
/// real nodes as its peers; returned once it campaigned twice.
async fn campaigning_stray(c: &TestCluster, secret: &str) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(9, &dir);
    cfg.cluster_secret = Some(secret.into());
    let stray = Node::start(cfg).await.unwrap();
    let mut members: BTreeMap<u64, String> =
        c.nodes.iter().map(|(id, n)| (*id, n.advertise_addr().to_string())).collect();
    members.insert(9, stray.advertise_addr().to_string());
    stray.initialize(members).await.unwrap();
    wait_until("the stray node campaigned twice", Duration::from_secs(10), || {
        let t = stray.cluster().raft().metrics().borrow().current_term;
        async move { t >= 2 }
    })
    .await;
    (dir, stray)
}

/// The cluster kept its leader and term through the stray's campaign, and
/// writes on as before, none of them reaching the stray.
async fn untouched_by(c: &TestCluster, leader: u64, term: u64, stray: &Node) {
    assert_eq!(c.wait_for_leader().await, leader);
    assert_eq!(c.node(leader).cluster().raft().metrics().borrow().current_term, term, "no vote request got through");
    write_user(c.node(leader), "still-fine").await;
    c.wait_replicated("still-fine").await;
    assert!(stray.cluster().view().read().user_by_name("still-fine").is_none());
}

/// `node`'s cluster lineage, as calls between nodes carry it.
fn lineage_of(node: &Node) -> String {
    gatehouse_cluster::lineage::text(&node.cluster().peers().lineage().unwrap().get().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_of_another_cluster_with_the_same_secret_cannot_vote_or_join() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let term = c.node(leader).cluster().raft().metrics().borrow().current_term;
    let lineage = lineage_of(c.node(leader));
    for n in c.nodes.values() {
        assert_eq!(lineage_of(n), lineage, "one lineage on every node");
    }
    assert!(lineage.ends_with(".1"), "{lineage}: epoch 1 from the start");

    // Initialised on its own (a cluster of its own, the same secret),
    // claiming the real nodes as its peers: it campaigns and is refused.
    let (_dir, stray) = campaigning_stray(&c, &c.secret()).await;
    assert_ne!(lineage_of(&stray), lineage);
    untouched_by(&c, leader, term, &stray).await;
    // Nor do the real nodes' calls reach it: it stays alone.
    assert!(stray.cluster().raft().metrics().borrow().current_leader != Some(leader));
    let out = common::admin_cli(&c.endpoint(1), &c.admin_key, &["--json", "cluster", "status"]).await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(format!("{}.{}", status["cluster_id"].as_str().unwrap(), status["epoch"]), lineage);
    assert!(status["nodes"].as_array().unwrap().iter().all(|n| n["epoch"] == 1));
    stray.shutdown().await.unwrap();
    c.shutdown().await;
}

async fn raw_call(node: &Node, secret: &str, method: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let ch = node.cluster().peers().channel(node.advertise_addr()).unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert(SECRET_METADATA, secret.parse().unwrap());
    // As a node of the cluster calls: with its lineage.
    req.metadata_mut().insert(LINEAGE_METADATA, lineage_of(node).parse().unwrap());
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(req, path, RawCodec).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_and_truncated_rpcs_are_refused_and_the_log_is_untouched() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    write_user(c.node(leader), "before-garbage").await;
    c.wait_replicated("before-garbage").await;
    let target = c.node(follower);
    let last_log = target.cluster().raft().metrics().borrow().last_log_index;
    let term = target.cluster().raft().metrics().borrow().current_term;

    // Well-formed protobuf, missing fields openraft needs.
    let as_node = Peers::new(ClusterSecret::new(&c.secret()).unwrap())
        .with_lineage(target.cluster().peers().lineage().unwrap().clone());
    // Without the lineage, no Raft call is looked at.
    let mut tool = Peers::new(ClusterSecret::new(&c.secret()).unwrap()).raft_client(target.advertise_addr()).unwrap();
    let no_lineage = tool.vote(pb::VoteRequest::default()).await.unwrap_err();
    assert_eq!(no_lineage.code(), tonic::Code::FailedPrecondition);
    let mut client = as_node.raft_client(target.advertise_addr()).unwrap();
    let no_vote = pb::AppendEntriesRequest { entries: vec![pb::Entry::default()], ..Default::default() };
    assert_eq!(client.append_entries(no_vote).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let entry_without_id = pb::AppendEntriesRequest {
        vote: Some(pb::Vote { term, node_id: leader, committed: true }),
        entries: vec![pb::Entry { log_id: None, payload: Some(pb::entry::Payload::Blank(pb::Blank {})) }],
        ..Default::default()
    };
    assert_eq!(client.append_entries(entry_without_id).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert_eq!(client.vote(pb::VoteRequest::default()).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let no_meta = tokio_stream::iter(vec![pb::SnapshotChunk {
        vote: Some(pb::Vote { term, node_id: leader, committed: true }),
        meta: None,
        data: vec![1, 2, 3],
    }]);
    assert_eq!(client.install_snapshot(no_meta).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let mut control =
        Peers::new(ClusterSecret::new(&c.secret()).unwrap()).control_client(target.advertise_addr()).unwrap();
    let endless = cpb::PauseElectionsRequest { duration_ms: u64::MAX };
    assert_eq!(control.pause_elections(endless).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    // A raise of the cluster version is the leader's alone: never taken
    // as a forwarded write, even from a holder of the secret (one no build
    // understands would halt every node at that index).
    let leader_control = Peers::new(ClusterSecret::new(&c.secret()).unwrap())
        .with_lineage(target.cluster().peers().lineage().unwrap().clone())
        .control_client(c.node(leader).advertise_addr())
        .unwrap();
    let raise = target.cluster().command(gatehouse_domain::Payload::SetClusterVersion(
        gatehouse_proto::events::SetClusterVersion { version: u32::MAX },
    ));
    let forwarded = cpb::ProposeRequest { batch: Some(gatehouse_domain::CommandBatch { commands: vec![raise] }) };
    let mut leader_control = leader_control;
    assert_eq!(leader_control.propose(forwarded).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    assert!(c.node(leader).cluster().cluster_version() <= gatehouse_domain::version::COMMAND_VERSION);

    // Truncated and random bytes.
    let valid = pb::AppendEntriesRequest {
        vote: Some(pb::Vote { term, node_id: leader, committed: true }),
        entries: vec![pb::Entry {
            log_id: Some(pb::LogId { term, node_id: leader, index: 10_000 }),
            payload: Some(pb::entry::Payload::Blank(pb::Blank {})),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let truncated = valid[..valid.len() - 3].to_vec();
    assert!(raw_call(target, &c.secret(), "/gatehouse.raft.v1.RaftService/AppendEntries", truncated).await.is_err());
    assert!(raw_call(target, &c.secret(), "/gatehouse.raft.v1.RaftService/Vote", vec![0xff; 64]).await.is_err());
    assert!(raw_call(
        target,
        &c.secret(),
        "/gatehouse.control.v1.ControlService/Propose",
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]
    )
    .await
    .is_err());

    // The node is alive, its log unchanged by the garbage, and the cluster works.
    assert_eq!(target.cluster().raft().metrics().borrow().last_log_index, last_log);
    write_user(c.node(follower), "after-garbage").await;
    c.wait_replicated("after-garbage").await;
    c.shutdown().await;
}
