//! Stateless fronts beside a test cluster: each front's secret, the
//! voters' fronts file, and fronts started through the library entry point.

use std::time::Duration;

use gatehouse::config::{Config, FrontSection, Mode};
use gatehouse::FrontNode;

use super::{secret, TestCluster};

/// Front `id`'s secret in the test cluster under `dir`.
pub fn front_secret(dir: &tempfile::TempDir, id: u64) -> String {
    format!("front-{id}-{}", secret(dir))
}

/// Writes the voters' fronts file admitting `ids` and returns its path.
pub fn fronts_file(dir: &tempfile::TempDir, ids: &[u64]) -> std::path::PathBuf {
    let path = dir.path().join("fronts.txt");
    let lines: String =
        ids.iter().map(|id| gatehouse_cluster::fronts::line_for(*id, &front_secret(dir, *id)) + "\n").collect();
    std::fs::write(&path, lines).unwrap();
    path
}

/// `n` voters serving fronts `front_ids` (peers on a listener of their own).
pub async fn cluster_for_fronts(n: u64, front_ids: &[u64], tweak: impl Fn(&mut Config)) -> TestCluster {
    // The fronts file lives in the cluster's own directory: written once
    // the directory exists (the tweak runs per node, before the start).
    let ids = front_ids.to_vec();
    let cluster = TestCluster::start_with_dir(n, |dir, c| {
        c.peer_addr = Some("127.0.0.1:0".parse().unwrap());
        c.fronts_file = Some(fronts_file(dir, &ids));
        tweak(c);
    })
    .await;
    cluster
}

/// A front's config following `cluster`'s voters.
pub fn front_config(cluster: &TestCluster, id: u64) -> Config {
    let voters = cluster.nodes.iter().map(|(id, n)| format!("{id}@{}", n.advertise_addr())).collect();
    Config {
        node_id: id,
        mode: Mode::Production,
        http_addr: "127.0.0.1:0".parse().unwrap(),
        rate_limits: gatehouse_api::rate_limit::LimitsConfig { enabled: false, ..Default::default() },
        audit: gatehouse_api::audit::AuditConfig { aggregate_ms: 100, ..Default::default() },
        front: Some(FrontSection {
            voters,
            secret: Some(front_secret(&cluster.dir, id).into()),
            secret_file: None,
            cert_file: None,
            key_file: None,
            ca_file: None,
            deny_serials: Vec::new(),
            deny_file: None,
        }),
        ..Config::default()
    }
}

/// Starts front `id` and waits until it serves.
pub async fn start_front(cluster: &TestCluster, id: u64) -> FrontNode {
    let front = FrontNode::start(front_config(cluster, id)).await.expect("front starts");
    assert!(front.wait_ready(Duration::from_secs(10)).await, "front {id} copied the view and proved it current");
    front
}

/// The front's HTTP base URL.
pub fn front_base(front: &FrontNode) -> String {
    format!("http://{}", front.http_addr())
}
