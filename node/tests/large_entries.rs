//! Entries as large as the bounds allow replicate on slow links, and a node
//! that missed some catches up by itself (issue 16: a ~4 MB entry once took a
//! follower longer than the 100 ms replication timeout, so the leader resent
//! it forever and every write stopped).
//!
//! Every link between the three nodes runs through a fault proxy
//! (`gatehouse_chaos::proxy`), as in the chaos runs.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{config, wait_until};
use gatehouse::Node;
use gatehouse_chaos::proxy::{Fault, LinkProxy};
use gatehouse_domain::bounds::{take_within, BATCH_BYTES, MAX_ENTRY_BYTES};
use gatehouse_domain::Payload;
use gatehouse_proto::events::{AppendAudit, AuditEvent};

struct Routed {
    _dir: tempfile::TempDir,
    nodes: BTreeMap<u64, Node>,
    /// (from, to) → the proxy `from` dials `to` through.
    links: BTreeMap<(u64, u64), LinkProxy>,
}

impl Routed {
    /// Three nodes whose every link goes through its own proxy.
    async fn start() -> Routed {
        let dir = tempfile::tempdir().unwrap();
        // First start: learn each node's address (nothing is initialised).
        let mut configs = BTreeMap::new();
        for id in 1..=3 {
            let mut c = config(id, &dir);
            let node = Node::start(c.clone()).await.expect("node starts");
            c.grpc_addr = node.grpc_addr();
            node.shutdown().await.unwrap();
            configs.insert(id, c);
        }
        let mut links = BTreeMap::new();
        for from in 1..=3u64 {
            for to in (1..=3u64).filter(|t| *t != from) {
                let target = configs[&to].grpc_addr.to_string();
                links.insert((from, to), LinkProxy::start(target, from * 10 + to).await.unwrap());
            }
        }
        let addrs: BTreeMap<u64, String> = configs.iter().map(|(id, c)| (*id, c.grpc_addr.to_string())).collect();
        let mut nodes = BTreeMap::new();
        for (id, mut c) in configs {
            // Each peer's advertised address is dialled through this node's link to it.
            c.peer_routes = links
                .iter()
                .filter(|((from, _), _)| *from == id)
                .map(|((_, to), p)| (addrs[to].clone(), p.addr().to_string()))
                .collect();
            nodes.insert(id, common::start_on_known_address(c).await);
        }
        let members = nodes.iter().map(|(id, n)| (*id, n.advertise_addr().to_string())).collect();
        assert!(nodes[&1].initialize(members).await.unwrap());
        let routed = Routed { _dir: dir, nodes, links };
        routed.wait_for_leader().await;
        routed
    }

    /// Stops every node, so no store is open when the test process exits
    /// (RocksDB's threads outliving `main` abort the process).
    async fn shutdown(self) {
        for (_, node) in self.nodes {
            node.shutdown().await.unwrap();
        }
    }

    fn set_all(&self, fault: Fault) {
        self.links.values().for_each(|l| l.set(fault));
    }

    async fn wait_for_leader(&self) -> u64 {
        let mut leader = 0;
        wait_until("a leader every node agrees on", Duration::from_secs(20), || {
            let ids: Vec<Option<u64>> =
                self.nodes.values().map(|n| n.cluster().raft().metrics().borrow().current_leader).collect();
            leader = ids[0].unwrap_or(0);
            let agreed = leader != 0 && ids.iter().all(|i| *i == Some(leader));
            async move { agreed }
        })
        .await;
        leader
    }

    async fn wait_applied(&self, ids: &[u64], index: u64, within: Duration) {
        wait_until(&format!("index {index} applied on nodes {ids:?}"), within, || {
            let all = ids.iter().all(|id| self.nodes[id].cluster().view().applied_index() >= index);
            async move { all }
        })
        .await;
    }
}

/// Audit batches as large as a node makes them (`BATCH_BYTES`), `n` of them:
/// valid commands a node proposes for itself.
fn large_batches(node: &Node, n: usize) -> Vec<gatehouse_domain::Command> {
    (0..n)
        .map(|i| {
            let event = AuditEvent {
                at: 1,
                action: "test.large".into(),
                outcome: "ok".into(),
                resource: format!("batch:{i}"),
                detail: "x".repeat(16_000),
                ..Default::default()
            };
            let mut events = vec![event; 100];
            let events = take_within(&mut events, BATCH_BYTES, usize::MAX);
            node.cluster().command(Payload::AppendAudit(AppendAudit { events, dropped: 0, batch: 0 }))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_maximum_size_entry_replicates_over_slow_links() {
    let c = Routed::start().await;
    let leader = c.wait_for_leader().await;
    // The slow-links nemesis at its slowest: 40 ms each way on every link.
    c.set_all(Fault::Delay(Duration::from_millis(40)));
    let commands = large_batches(&c.nodes[&leader], 4);
    let bytes = gatehouse_domain::bounds::entry_bytes(&commands);
    assert!(bytes > MAX_ENTRY_BYTES * 9 / 10 && bytes <= MAX_ENTRY_BYTES, "{bytes} bytes: one maximum-size entry");

    let applied = c.nodes[&leader].cluster().propose(commands).await.expect("the large entry is committed");
    assert!(applied.results.iter().all(|r| r.code == 0), "{:?}", applied.results);
    c.wait_applied(&[1, 2, 3], applied.log_index, Duration::from_secs(60)).await;

    // Writes go on, through a follower too (forwarded over a slow link).
    let follower = if leader == 1 { 2 } else { 1 };
    common::write_user(&c.nodes[&follower], "after-large").await;
    let chain = c.nodes[&leader].cluster().view().read().audit_chain();
    for n in c.nodes.values() {
        assert_eq!(n.cluster().view().read().audit_chain(), chain, "every node has the same audit chain");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_missed_large_entries_catches_up_by_itself() {
    let c = Routed::start().await;
    let leader = c.wait_for_leader().await;
    let behind = (1..=3).find(|id| *id != leader).unwrap();
    // `behind` hears nothing while two maximum-size entries are committed.
    for from in (1..=3).filter(|id| *id != behind) {
        c.links[&(from, behind)].set(Fault::Cut);
    }
    let mut last = 0;
    for _ in 0..2 {
        let applied = c.nodes[&leader].cluster().propose(large_batches(&c.nodes[&leader], 4)).await.unwrap();
        last = applied.log_index;
    }
    let others: Vec<u64> = (1..=3).filter(|id| *id != behind).collect();
    c.wait_applied(&others, last, Duration::from_secs(30)).await;
    assert!(c.nodes[&behind].cluster().view().applied_index() < last);

    // Healed onto slow links: the backlog (8 MB) crosses them, nobody steps in.
    c.set_all(Fault::Delay(Duration::from_millis(40)));
    c.wait_applied(&[1, 2, 3], last, Duration::from_secs(90)).await;
    common::write_user(&c.nodes[&behind], "caught-up").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_large_writes_are_split_into_entries_within_the_limit() {
    let c = Routed::start().await;
    let leader = c.wait_for_leader().await;
    let node = &c.nodes[&leader];
    // Twelve writers of one batch-size command each: together three times
    // an entry's limit, so the batcher must split them.
    let writes = large_batches(node, 12).into_iter().map(|cmd| {
        let bytes = gatehouse_domain::bounds::framed_len(&cmd);
        let cluster = node.cluster().clone();
        tokio::spawn(async move { (bytes, cluster.propose(vec![cmd]).await.expect("written").log_index) })
    });
    let mut per_entry: BTreeMap<u64, usize> = BTreeMap::new();
    for w in writes {
        let (bytes, index) = w.await.unwrap();
        *per_entry.entry(index).or_default() += bytes;
    }
    assert!(per_entry.len() >= 3, "{per_entry:?}");
    assert!(per_entry.values().all(|b| *b <= MAX_ENTRY_BYTES), "{per_entry:?}");
    let last = *per_entry.keys().last().unwrap();
    c.wait_applied(&[1, 2, 3], last, Duration::from_secs(30)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proposal_over_the_entry_limit_is_refused_before_the_log() {
    let c = Routed::start().await;
    let leader = c.wait_for_leader().await;
    let node = &c.nodes[&leader];
    let before = node.cluster().view().read().audit_chain();
    let err = node.cluster().propose(large_batches(node, 5)).await.unwrap_err();
    assert!(
        matches!(err, gatehouse_cluster::ClusterError::Refused(gatehouse_domain::ApplyError::Invalid(_))),
        "{err:?}"
    );
    let mut over = large_batches(node, 1);
    if let Some(Payload::AppendAudit(a)) = &mut over[0].payload {
        a.events.extend(a.events.clone());
    }
    let err = node.cluster().propose(over).await.unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert_eq!(node.cluster().view().read().audit_chain(), before, "no batch reached the log");
    c.shutdown().await;
}
