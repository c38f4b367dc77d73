//! The replicated core, end to end on in-process nodes: replication,
//! failover, catch-up, snapshots, restarts, and exactly-once retries.

mod common;

use std::time::Duration;

use common::{wait_until, write_user, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_any_node_replicate_to_all_three() {
    let c = TestCluster::start(3).await;
    for (id, node) in &c.nodes {
        write_user(node, &format!("user-from-{id}")).await;
    }
    for id in c.nodes.keys() {
        c.wait_replicated(&format!("user-from-{id}")).await;
    }
    c.shutdown().await;
}

/// A follower that knows its leader sends a write there at once; its own
/// batcher never sees it (before, every write went to the follower's Raft
/// first, only to be told who leads).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_sends_writes_to_the_leader_at_once() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let follower = c.node(*c.nodes.keys().find(|&&n| n != leader).unwrap());
    wait_until("the follower knows the leader", Duration::from_secs(5), || {
        let knows = follower.cluster().leader().is_some_and(|(id, _)| id == leader);
        async move { knows }
    })
    .await;
    let m = follower.cluster().metrics();
    let (entries, forwarded) = (m.batched_entries.get(), m.proposals_forwarded.get());
    let names: Vec<String> = (0..20).map(|i| format!("forwarded-{i}")).collect();
    futures::future::join_all(names.iter().map(|name| write_user(follower, name))).await;
    // The node's own flushes may be forwarded meanwhile too.
    assert!(m.proposals_forwarded.get() - forwarded >= 20);
    assert_eq!(m.batched_entries.get(), entries, "the follower's batcher took none of them");
    let leader_entries = c.node(leader).cluster().metrics().batched_entries.get();
    assert!(leader_entries > 0, "the leader's batcher wrote them");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_any_node_replicate_to_all_five() {
    let c = TestCluster::start(5).await;
    for (id, node) in &c.nodes {
        write_user(node, &format!("five-{id}")).await;
    }
    for id in c.nodes.keys() {
        c.wait_replicated(&format!("five-{id}")).await;
    }
    let applied: Vec<u64> = c.nodes.values().map(|n| n.cluster().view().applied_index()).collect();
    wait_until("equal applied index", Duration::from_secs(5), || {
        let a: Vec<u64> = c.nodes.values().map(|n| n.cluster().view().applied_index()).collect();
        async move { a.windows(2).all(|w| w[0] == w[1]) }
    })
    .await;
    assert!(applied.iter().all(|&a| a > 0));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_stop_elects_a_new_leader_and_the_old_one_rejoins_as_follower() {
    let mut c = TestCluster::start(3).await;
    let old = c.wait_for_leader().await;
    write_user(c.node(old), "before-failover").await;
    // While the leader is heard, no follower would back a pre-vote.
    for (id, n) in &c.nodes {
        assert!(!n.cluster().leader_silent(), "node {id} hears its leader");
    }
    c.stop(old).await;

    let new = c.wait_for_leader().await;
    assert_ne!(new, old);
    // The election pacer started the winning campaign, not openraft's slower timer.
    let paced: u64 = c.nodes.values().map(|n| n.cluster().metrics().raft_paced_campaigns.get()).sum();
    assert!(paced >= 1, "the pacer campaigned");
    let survivor = *c.nodes.keys().find(|&&id| id != new).unwrap();
    write_user(c.node(survivor), "after-failover").await;

    c.restart(old).await;
    c.wait_replicated("after-failover").await;
    c.wait_replicated("before-failover").await;
    let leader = c.wait_for_leader().await;
    assert_ne!(leader, 0);
    let state = c.node(old).cluster().raft().metrics().borrow().state;
    if leader != old {
        assert_eq!(state, openraft::ServerState::Follower);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_down_for_a_while_catches_up_from_a_compacted_log() {
    let mut c = TestCluster::start_with(3, |cfg| {
        cfg.raft.snapshot_every = 10;
        cfg.raft.keep_behind_snapshot = 0;
    })
    .await;
    let leader = c.wait_for_leader().await;
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    c.stop(follower).await;
    for i in 0..40 {
        write_user(c.node(leader), &format!("while-down-{i}")).await;
    }
    wait_until("the leader purged its log", Duration::from_secs(10), || {
        let purged = c.node(leader).cluster().raft().metrics().borrow().purged.map_or(0, |p| p.index);
        async move { purged > 5 }
    })
    .await;
    c.restart(follower).await;
    c.wait_replicated("while-down-39").await;
    let m = c.node(follower).cluster().raft().metrics().borrow().clone();
    assert!(m.snapshot.is_some(), "the follower caught up through a snapshot");
    for i in 0..40 {
        assert!(c.node(follower).cluster().view().read().user_by_name(&format!("while-down-{i}")).is_some());
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_cluster_stop_and_start_keeps_every_acknowledged_write() {
    let mut c = TestCluster::start(3).await;
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    for i in 0..30 {
        let id = ids[i % ids.len()];
        write_user(c.node(id), &format!("durable-{i}")).await;
    }
    for id in &ids {
        c.stop(*id).await;
    }
    for id in &ids {
        c.restart(*id).await;
    }
    c.wait_for_leader().await;
    for i in 0..30 {
        c.wait_replicated(&format!("durable-{i}")).await;
    }
    // The cluster takes writes again after the restart.
    write_user(c.node(ids[0]), "after-restart").await;
    c.wait_replicated("after-restart").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_proposal_is_applied_exactly_once() {
    let c = TestCluster::start(3).await;
    let cmd = common::create_user(c.node(1), "once");
    let first = c.node(1).cluster().propose(vec![cmd.clone()]).await.unwrap();
    // The same command (same request id) retried through other nodes.
    let second = c.node(2).cluster().propose(vec![cmd.clone()]).await.unwrap();
    let third = c.node(3).cluster().propose(vec![cmd]).await.unwrap();
    assert_eq!(first.results, second.results);
    assert_eq!(first.results, third.results);
    assert_eq!(first.results[0].code, 0, "{:?}", first.results[0]);
    c.wait_replicated("once").await;
    for n in c.nodes.values() {
        let users = n.cluster().view().read().users().filter(|u| u.username == "once").count();
        assert_eq!(users, 1);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_entries_and_each_gets_its_own_result() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        // Half through the leader, half forwarded by a follower.
        let node = if i % 2 == 0 { leader } else { follower };
        let cmd = common::create_user(c.node(node), &format!("batch-{i}"));
        let cluster = c.node(node).cluster().clone();
        tasks.push(tokio::spawn(async move { cluster.propose(vec![cmd]).await }));
    }
    let mut indexes = std::collections::BTreeSet::new();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let applied = t.await.unwrap().unwrap();
        assert_eq!(applied.results.len(), 1);
        assert_eq!(applied.results[0].code, 0, "{:?}", applied.results[0]);
        ids.insert(applied.results[0].id.clone());
        indexes.insert(applied.log_index);
    }
    assert_eq!(ids.len(), 200, "every caller got its own result");
    assert!(indexes.len() < 200, "concurrent writes were grouped into {} entries", indexes.len());
    // The writes were applied in whatever order the batcher grouped them, so
    // "batch-199" may sit in an early entry: wait for the last entry instead.
    c.wait_applied_everywhere(*indexes.last().unwrap()).await;
    for n in c.nodes.values() {
        assert_eq!(n.cluster().view().read().users().filter(|u| u.username.starts_with("batch-")).count(), 200);
    }
    c.shutdown().await;
}
