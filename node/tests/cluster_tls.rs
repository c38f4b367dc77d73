//! Mutual TLS between nodes: a cluster whose peer listeners require each
//! node's certificate replicates, fails over and rejoins; strangers, stolen
//! and denied certificates, a node claiming another's id, a removed member
//! and plaintext are refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{admin_cli, wait_until, write_user, TestCluster};
use gatehouse::config::ClusterTlsConfig;
use gatehouse_cluster::peer_tls::PeerTls;
use gatehouse_cluster::{ClusterSecret, Peers};
use gatehouse_proto::control::LocalStatusRequest;
use gatehouse_proto::raft as pb;
use gatehouse_tls::issue::{new_ca, node_certificate, Issued};

struct Pki {
    dir: tempfile::TempDir,
    ca: Issued,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("cluster CA", 30).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        for id in 1..=3 {
            Self::write(dir.path(), &format!("node-{id}"), &node_certificate(&ca, id, &[], &[], 30).unwrap());
        }
        Pki { dir, ca }
    }

    fn write(dir: &Path, name: &str, issued: &Issued) {
        std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), issued.key_pem.expose()).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, id: u64, deny: &[String]) -> ClusterTlsConfig {
        ClusterTlsConfig {
            ca_file: self.path("ca.pem"),
            cert_file: self.path(&format!("node-{id}.pem")),
            key_file: self.path(&format!("node-{id}.key")),
            deny_serials: deny.to_vec(),
        }
    }

    /// Peers that dial node `id` at `addr` with the certificate `name` and trust `ca_file`.
    fn peers(&self, secret: &str, name: &str, ca_file: &Path, addr: &str, id: u64) -> Peers {
        let trust = gatehouse_tls::peer::Trust::load(ca_file, &[]).unwrap();
        let material =
            gatehouse_tls::Material::load(&self.path(&format!("{name}.pem")), &self.path(&format!("{name}.key")))
                .unwrap();
        let peers = Peers::new(ClusterSecret::new(secret).unwrap()).with_tls(PeerTls::new(trust, &material).unwrap());
        peers.expect(addr, id);
        peers
    }
}

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
        let trust = gatehouse_tls::peer::Trust::load(&pki.path("ca.pem"), &[]).unwrap();
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
    let mut raft = peers(impostor, &pki.path("ca.pem")).raft_client(&addr).unwrap();
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
