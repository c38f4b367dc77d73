//! Mutual TLS between nodes: a cluster whose peer listeners require each
//! node's certificate replicates, fails over and rejoins; strangers, stolen
//! and denied certificates, a node claiming another's id, a removed member
//! and plaintext are refused.

mod common;

use std::path::Path;
use std::time::Duration;

use common::pki::Pki;
use common::{admin_cli, wait_until, write_user, TestCluster};
use gatehouse::config::ClusterTlsConfig;
use gatehouse_cluster::peer_tls::PeerTls;
use gatehouse_cluster::{ClusterSecret, Peers};
use gatehouse_proto::control::LocalStatusRequest;
use gatehouse_proto::raft as pb;
use gatehouse_tls::issue::{new_ca, node_certificate};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_with_mutual_tls_replicates_fails_over_and_refuses_everyone_else() {
    let pki = Pki::new();
    // A second certificate for node 2, stolen and denied: valid, but refused.
    let stolen = node_certificate(&pki.ca, 2, &[], &[], 30).unwrap();
    Pki::write(pki.dir.path(), "stolen-2", &stolen);
    let denied = vec![gatehouse_tls::identity::parse(&stolen.cert_der).unwrap().serial];
    let mut c = TestCluster::start_with(3, |cfg| {
        cfg.peer_addr = Some("127.0.0.1:0".parse().unwrap());
        cfg.cluster_tls = Some(pki.config(cfg.node_id, &denied));
    })
    .await;
    let leader = c.wait_for_leader().await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    write_user(c.node(follower), "over-mtls").await;
    c.wait_replicated("over-mtls").await;

    // Each node's certificate expiry shows in `cluster status`.
    let status_json: serde_json::Value = serde_json::from_str(
        &admin_cli(&c.endpoint(follower), &c.admin_key, &["--json", "cluster", "status"]).await.unwrap(),
    )
    .unwrap();
    for n in status_json["nodes"].as_array().unwrap() {
        let id = n["id"].as_u64().unwrap();
        let cert = gatehouse_tls::pem::certificates(&pki.path(&format!("node-{id}.pem"))).unwrap();
        let not_after = gatehouse_tls::identity::parse(&cert[0]).unwrap().not_after;
        assert_eq!(n["peer_cert_not_after"].as_i64(), Some(not_after), "node {id}");
    }

    let addr = c.node(leader).advertise_addr().to_string();
    let status = |peers: Peers| {
        let addr = addr.clone();
        async move { peers.control_client(&addr).unwrap().local_status(LocalStatusRequest {}).await }
    };
    let secret = c.secret();
    let peers = |name: &str, ca: &Path| pki.peers(&secret, name, ca, &addr, leader);
    // A member's certificate: admitted.
    assert_eq!(status(peers("node-2", &pki.path("ca.pem"))).await.unwrap().into_inner().node_id, leader);
    // Only the leader may pause others' elections or ask one to campaign.
    let follower_cert = format!("node-{follower}");
    let mut control = peers(&follower_cert, &pki.path("ca.pem")).control_client(&addr).unwrap();
    let pause = gatehouse_proto::control::PauseElectionsRequest { duration_ms: 60_000 };
    assert_eq!(control.pause_elections(pause).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    let campaign = gatehouse_proto::control::CampaignRequest {};
    assert_eq!(control.campaign(campaign).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    // A node dials only addresses it knows a node at.
    let blind = {
        let trust = gatehouse_tls::peer::Trust::load(&pki.path("ca.pem"), &[], None).unwrap();
        let material = gatehouse_tls::Material::load(&pki.path("node-2.pem"), &pki.path("node-2.key")).unwrap();
        Peers::new(ClusterSecret::new(&secret).unwrap()).with_tls(PeerTls::new(trust, &material).unwrap())
    };
    assert!(status(blind).await.is_err());
    // Plaintext to the peer port, even with the secret: no.
    assert!(status(Peers::new(ClusterSecret::new(&secret).unwrap())).await.is_err());
    // A certificate from another CA: refused in the handshake.
    let other = tempfile::tempdir().unwrap();
    let other_ca = new_ca("another CA", 30).unwrap();
    std::fs::write(other.path().join("ca.pem"), &other_ca.cert_pem).unwrap();
    Pki::write(pki.dir.path(), "stranger-2", &node_certificate(&other_ca, 2, &[], &[], 30).unwrap());
    let both = other.path().join("both.pem");
    std::fs::write(&both, format!("{}{}", pki.ca.cert_pem, other_ca.cert_pem)).unwrap();
    assert!(status(peers("stranger-2", &both)).await.is_err());
    // The stolen, denied certificate of node 2: refused.
    assert!(status(peers("stolen-2", &pki.path("ca.pem"))).await.is_err());

    // Node 2's certificate may not speak for node 3.
    let term = c.node(leader).cluster().raft().metrics().borrow().current_term;
    let impostor = if leader == 2 { "node-1" } else { "node-2" };
    // With the cluster's lineage, as a node of it would call.
    let lineage = c.node(leader).cluster().peers().lineage().unwrap().clone();
    let mut raft = peers(impostor, &pki.path("ca.pem")).with_lineage(lineage).raft_client(&addr).unwrap();
    let claimed = if leader == 3 { 1 } else { 3 };
    let vote = pb::VoteRequest {
        vote: Some(pb::Vote { term: term + 5, node_id: claimed, committed: false }),
        last_log_id: None,
    };
    assert_eq!(raft.vote(vote).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    let append = pb::AppendEntriesRequest {
        vote: Some(pb::Vote { term: term + 5, node_id: claimed, committed: true }),
        ..Default::default()
    };
    assert_eq!(raft.append_entries(append).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    assert_eq!(c.node(leader).cluster().raft().metrics().borrow().current_term, term, "nothing moved");

    // The leader dies: the others elect one over mutual TLS; it comes back and catches up.
    c.stop(leader).await;
    let next = {
        let mut next = 0;
        wait_until("a new leader", Duration::from_secs(10), || {
            let l = c.nodes.values().next().unwrap().cluster().raft().metrics().borrow().current_leader;
            next = l.unwrap_or(0);
            async move { l.is_some_and(|l| l != leader) }
        })
        .await;
        next
    };
    write_user(c.node(next), "after-failover").await;
    c.restart(leader).await;
    c.wait_replicated("after-failover").await;

    // A member removed is refused at once, its certificate still valid.
    let leader = c.wait_for_leader().await;
    let gone = (1..=3).find(|n| *n != leader).unwrap();
    admin_cli(&c.endpoint(leader), &c.admin_key, &["cluster", "remove", &gone.to_string()]).await.unwrap();
    let addr = c.node(leader).advertise_addr().to_string();
    let refused = pki
        .peers(&c.secret(), &format!("node-{gone}"), &pki.path("ca.pem"), &addr, leader)
        .control_client(&addr)
        .unwrap()
        .local_status(LocalStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_certificate_is_another_nodes_does_not_start() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(1, &dir);
    cfg.peer_addr = Some("127.0.0.1:0".parse().unwrap());
    cfg.cluster_tls = Some(ClusterTlsConfig {
        cert_file: pki.path("node-2.pem"),
        key_file: pki.path("node-2.key"),
        ..pki.config(1, &[])
    });
    let e = format!("{:#}", gatehouse::Node::start(cfg).await.err().unwrap());
    assert!(e.contains("binds node(s) [2], this is node 1"), "{e}");
}

/// A TCP connection to `addr` from `source` (another loopback address: the
/// peer listener counts handshakes per source address).
async fn connect_from(source: &str, addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_tls_input_on_the_peer_port_leaves_the_cluster_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let mut c = TestCluster::start_with(3, |cfg| {
        cfg.peer_addr = Some("127.0.0.1:0".parse().unwrap());
        cfg.cluster_tls = Some(pki.config(cfg.node_id, &[]));
    })
    .await;
    let leader = c.wait_for_leader().await;
    let target: std::net::SocketAddr = c.node(leader).advertise_addr().parse().unwrap();
    let closed = |mut s: tokio::net::TcpStream| async move {
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut Vec::new())).await.is_ok()
    };

    // Garbage where a ClientHello belongs: closed.
    let mut garbage = connect_from("127.0.0.2", target).await;
    garbage.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0xff, 0xff]).await.unwrap();
    garbage.write_all(&[0xab; 4096]).await.unwrap();
    assert!(closed(garbage).await, "garbage holds a connection");
    // Plaintext HTTP/2 (a peer without TLS): closed.
    let mut plain = connect_from("127.0.0.2", target).await;
    plain.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    assert!(closed(plain).await, "plaintext holds a connection");

    // A flood of handshakes that never finish, from one address: at most 8
    // at once take a handshake slot (each cut after 3 s), the rest are
    // turned away; nodes dialling from another address are not held up.
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut s = connect_from("127.0.0.2", target).await;
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
        stalled.push(s);
    }
    // Meanwhile the cluster replicates, and a node that restarts (new
    // handshakes from another address's point of view: its own) rejoins.
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    write_user(c.node(follower), "during-the-flood").await;
    c.wait_replicated("during-the-flood").await;
    c.stop(follower).await;
    c.restart(follower).await;
    write_user(c.node(follower), "after-the-restart").await;
    c.wait_replicated("after-the-restart").await;
    // Every stalled handshake ends: none holds its connection for good.
    let ends = futures::future::join_all(stalled.into_iter().map(closed)).await;
    assert!(ends.iter().all(|e| *e), "a stalled handshake holds its connection");

    // A client certificate chain far past any real one (hundreds of KiB):
    // refused in the handshake, and the node serves on.
    let chain_file = pki.path("node-2.pem");
    let one = gatehouse_tls::pem::certificates(&chain_file).unwrap().remove(0);
    let huge: Vec<_> = std::iter::repeat_n(one, 400).collect();
    let key = gatehouse_tls::pem::private_key(&pki.path("node-2.key")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(gatehouse_tls::provider())
        .with_protocol_versions(gatehouse_tls::VERSIONS)
        .unwrap()
        .with_root_certificates(gatehouse_tls::pem::roots(&pki.path("ca.pem")).unwrap())
        .with_client_auth_cert(huge, key)
        .unwrap();
    let tcp = connect_from("127.0.0.3", target).await;
    let name = gatehouse_tls::peer::server_name(leader);
    let shook = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await;
    match shook {
        Err(_) => {}
        // TLS 1.3: the client's certificate goes after the server's
        // Finished; the refusal arrives on the first read.
        Ok(mut s) => {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("answered");
            assert!(!matches!(read, Ok(n) if n > 0), "a huge certificate chain was taken");
        }
    }
    write_user(c.node(leader), "after-the-huge-chain").await;
    c.wait_replicated("after-the-huge-chain").await;
    c.shutdown().await;
}

/// A learner added over mutual TLS takes the log, is admitted as a member,
/// and yet may not ask for votes: only voters campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_over_mutual_tls_replicates_but_may_not_ask_for_votes() {
    use gatehouse_proto::admin::cluster_service_client::ClusterServiceClient;
    use gatehouse_proto::admin::AddLearnerRequest;
    let pki = Pki::new();
    Pki::write(pki.dir.path(), "node-4", &node_certificate(&pki.ca, 4, &[], &[], 30).unwrap());
    let tls = |cfg: &mut gatehouse::config::Config| {
        cfg.peer_addr = Some("127.0.0.1:0".parse().unwrap());
        cfg.cluster_tls = Some(pki.config(cfg.node_id, &[]));
    };
    let c = TestCluster::start_with(3, tls).await;
    let mut cfg = common::config(4, &c.dir);
    tls(&mut cfg);
    let four = gatehouse::Node::start(cfg).await.unwrap();
    write_user(c.node(1), "before-the-learner").await;
    let mut admin = ClusterServiceClient::connect(c.endpoint(1)).await.unwrap();
    let mut req = tonic::Request::new(AddLearnerRequest {
        node_id: 4,
        addr: four.advertise_addr().into(),
        client_addr: four.advertise_client_addr().into(),
    });
    req.metadata_mut().insert("authorization", format!("Bearer {}", c.admin_key).parse().unwrap());
    admin.add_learner(req).await.unwrap();
    // It holds the log once added; applying it follows.
    wait_until("the learner applies the log", Duration::from_secs(10), || {
        let applied = four.cluster().view().read().user_by_name("before-the-learner").is_some();
        async move { applied }
    })
    .await;

    let leader = c.wait_for_leader().await;
    let addr = c.node(leader).advertise_addr().to_string();
    let as_four = pki.peers(&c.secret(), "node-4", &pki.path("ca.pem"), &addr, leader);
    // A member: admitted.
    let status = as_four.control_client(&addr).unwrap().local_status(LocalStatusRequest {}).await.unwrap();
    assert_eq!(status.into_inner().node_id, leader);
    // But no campaign.
    let term = c.node(leader).cluster().raft().metrics().borrow().current_term;
    let vote =
        pb::VoteRequest { vote: Some(pb::Vote { term: term + 1, node_id: 4, committed: false }), last_log_id: None };
    let lineage = c.node(leader).cluster().peers().lineage().unwrap().clone();
    let refused = as_four.with_lineage(lineage).raft_client(&addr).unwrap().vote(vote).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("only a voter"), "{refused:?}");
    assert_eq!(c.node(leader).cluster().raft().metrics().borrow().current_term, term, "nothing moved");
    four.shutdown().await.unwrap();
    c.shutdown().await;
}

/// The reverse of plaintext to a TLS port: a node speaking mutual TLS to a
/// peer port without TLS gets no answer, and the plaintext node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_to_a_plaintext_peer_port_gets_nothing() {
    let pki = Pki::new();
    let c = TestCluster::start_with(1, |cfg| cfg.peer_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = c.node(1).advertise_addr().to_string();
    let as_two = pki.peers(&c.secret(), "node-2", &pki.path("ca.pem"), &addr, 1);
    let e = as_two.control_client(&addr).unwrap().local_status(LocalStatusRequest {}).await.unwrap_err();
    let transport = std::error::Error::source(&e).is_some_and(|e| e.is::<tonic::transport::Error>());
    assert!(transport, "{e:?}");
    let plain = Peers::new(ClusterSecret::new(&c.secret()).unwrap());
    let ok = plain.control_client(&addr).unwrap().local_status(LocalStatusRequest {}).await.unwrap();
    assert_eq!(ok.into_inner().node_id, 1);
    c.shutdown().await;
}
