//! Peers on a listener of their own (`peer_addr`): Raft and control RPCs
//! only there, the admin API only on the client listener, and both addresses
//! in the membership, so clients are told where they can reach the leader.

mod common;

use common::{admin_cli, write_user, TestCluster};
use gatehouse_cluster::{ClusterSecret, Peers};
use gatehouse_proto::admin::user_service_client::UserServiceClient;
use gatehouse_proto::admin::ListUsersRequest;
use gatehouse_proto::control::LocalStatusRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_have_a_port_of_their_own_and_clients_are_told_the_client_address() {
    let c = TestCluster::start_with(3, |cfg| cfg.peer_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let leader = c.wait_for_leader().await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    for n in c.nodes.values() {
        let peer = n.peer_addr().expect("a peer listener");
        assert_ne!(peer, n.grpc_addr());
        assert_eq!(n.advertise_addr(), peer.to_string());
        assert_eq!(n.advertise_client_addr(), n.grpc_addr().to_string());
    }

    // Writes from a follower reach the leader over the peer listeners, and
    // a membership change through a follower is sent on there too.
    write_user(c.node(follower), "split-write").await;
    c.wait_replicated("split-write").await;
    admin_cli(&c.endpoint(follower), &c.admin_key, &["user", "create", "split-cli", "--email", "s@example.com"])
        .await
        .unwrap();
    let moved = admin_cli(
        &c.endpoint(follower),
        &c.admin_key,
        &["--json", "cluster", "transfer-leader", &follower.to_string()],
    )
    .await
    .unwrap();
    assert!(moved.contains(&format!("\"leader\":{follower}")), "{moved}");

    // The membership and status carry both addresses; the leader is named
    // by the address clients can use.
    let status: serde_json::Value = serde_json::from_str(
        &admin_cli(&c.endpoint(leader), &c.admin_key, &["--json", "cluster", "status"]).await.unwrap(),
    )
    .unwrap();
    for n in status["nodes"].as_array().unwrap() {
        let node = c.node(n["id"].as_u64().unwrap());
        assert_eq!(n["addr"], node.advertise_addr());
        assert_eq!(n["client_addr"], node.advertise_client_addr());
        assert_eq!(n["reachable"], true);
    }
    let leader_now = c.wait_for_leader().await;
    assert_eq!(leader_now, follower);
    assert_eq!(c.node(leader).api().leader().unwrap().1.client_addr(), c.node(follower).advertise_client_addr());

    // Each listener serves its own: the control service is not on the
    // client port, the admin API is not on the peer port.
    let peers = Peers::new(ClusterSecret::new(&c.secret()).unwrap());
    let on_peer =
        peers.control_client(c.node(leader).advertise_addr()).unwrap().local_status(LocalStatusRequest {}).await;
    assert_eq!(on_peer.unwrap().into_inner().node_id, leader);
    let client_addr = c.node(leader).advertise_client_addr().to_string();
    let on_client = peers.control_client(&client_addr).unwrap().local_status(LocalStatusRequest {}).await;
    assert_eq!(on_client.unwrap_err().code(), tonic::Code::Unimplemented);
    let ch = peers.channel(c.node(leader).advertise_addr()).unwrap();
    let mut users = UserServiceClient::new(ch);
    let mut req = tonic::Request::new(ListUsersRequest::default());
    req.metadata_mut().insert("authorization", format!("Bearer {}", c.admin_key).parse().unwrap());
    assert_eq!(users.list(req).await.unwrap_err().code(), tonic::Code::Unimplemented);
    c.shutdown().await;
}
