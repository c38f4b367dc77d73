//! Forced recovery from a quorum lost for good (`gatehouse recover
//! --force-new-cluster`): the survivor serves everything it held as a
//! one-voter cluster of a new epoch, the old majority coming back can never
//! overwrite it, and the cluster grows again from it. And the refusals:
//! without the flag, while a quorum answers, on a running node, on no data;
//! and data of a newer store format, refused and left untouched.

mod common;

use std::time::Duration;

use common::{admin_cli, base, create_key, http, wait_until, write_user, TestCluster};
use gatehouse::forced_recovery::force_new_cluster;
use gatehouse::Node;
use reqwest::StatusCode;

fn lineage(node: &Node) -> String {
    gatehouse_cluster::lineage::text(&node.cluster().peers().lineage().unwrap().get().unwrap())
}

async fn verify(node: &Node, key: &str) -> StatusCode {
    http().get(format!("{}/auth/verify", base(node))).bearer_auth(key).send().await.unwrap().status()
}

fn audited(node: &Node, action: &str) -> Option<String> {
    let mut found = None;
    node.audit_log()
        .scan(u64::MAX, true, |r| {
            let e = r.event.unwrap_or_default();
            if e.action == action {
                found = Some(e.detail);
                return false;
            }
            true
        })
        .unwrap();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_survivor_of_a_lost_quorum_serves_what_it_held_and_the_old_majority_cannot_overwrite_it() {
    let mut c = TestCluster::start(3).await;
    let key = create_key(c.node(1), "kept", &["viewer"]).await;
    write_user(c.node(2), "before").await;
    c.wait_replicated("before").await;
    let before = lineage(c.node(1));

    // Two voters lost for good (stopped here, their data kept to bring back).
    for id in [2, 3, 1] {
        c.stop(id).await;
    }
    let survivor = c.configs[&1].clone();
    let refused = force_new_cluster(&survivor, false).await.unwrap_err().to_string();
    assert!(refused.contains("--force-new-cluster"), "{refused}");
    let recovered = force_new_cluster(&survivor, true).await.unwrap();
    assert_eq!(recovered.lineage_before, before);
    let (id_before, _) = before.split_once('.').unwrap();
    let (id_after, epoch_after) = recovered.lineage_after.split_once('.').unwrap();
    assert_eq!(id_after, id_before, "the same cluster, a new epoch");
    assert!(epoch_after.parse::<u64>().unwrap() > 1);
    assert_eq!(recovered.members_before, vec![1, 2, 3]);
    let warning = recovered.warning();
    assert!(warning.contains("may be lost") && warning.contains("Wipe their data"), "{warning}");

    // Started, it leads alone and serves what it held.
    c.restart(1).await;
    wait_until("the survivor leads and is fresh", Duration::from_secs(10), || async {
        c.node(1).cluster().raft().metrics().borrow().current_leader == Some(1) && c.node(1).cluster().is_fresh()
    })
    .await;
    assert_eq!(verify(c.node(1), &key).await, StatusCode::OK);
    assert!(c.node(1).cluster().view().read().user_by_name("before").is_some());
    assert_eq!(lineage(c.node(1)), recovered.lineage_after);
    wait_until("the recovery in the audit log", Duration::from_secs(10), || async {
        audited(c.node(1), "cluster.force_recovered").is_some()
    })
    .await;
    let detail = audited(c.node(1), "cluster.force_recovered").unwrap();
    assert!(detail.contains(&recovered.lineage_after), "{detail}");
    assert!(!survivor.data_dir.join(gatehouse::forced_recovery::FILE).exists(), "the note is removed once audited");
    write_user(c.node(1), "after-recovery").await;

    // The old majority comes back with its old data: a quorum of the old
    // membership, of the old epoch. Neither side takes the other's calls.
    let term = c.node(1).cluster().raft().metrics().borrow().current_term;
    c.restart(2).await;
    c.restart(3).await;
    wait_until("the old majority elects among itself", Duration::from_secs(15), || async {
        let leader = c.node(2).cluster().raft().metrics().borrow().current_leader;
        matches!(leader, Some(2 | 3))
    })
    .await;
    write_user(c.node(1), "still-alone").await;
    let m = c.node(1).cluster().raft().metrics().borrow().clone();
    assert_eq!(m.current_leader, Some(1));
    assert_eq!(m.current_term, term, "no vote of the old epoch reached the survivor");
    assert_eq!(m.membership_config.membership().voter_ids().collect::<Vec<_>>(), vec![1]);
    for id in [2, 3] {
        let view = c.node(id).cluster().view();
        assert!(view.read().user_by_name("after-recovery").is_none(), "node {id} took nothing of the new epoch");
        assert_eq!(lineage(c.node(id)), before);
    }

    // Stopped, wiped and added again, they join the new epoch. (Every old
    // node stops first: a fresh node takes the lineage of the first node
    // that calls it, and an old one still campaigning would be first.)
    for id in [2, 3] {
        c.stop(id).await;
        std::fs::remove_dir_all(&c.configs[&id].data_dir).unwrap();
    }
    for id in [2, 3] {
        c.restart(id).await;
        let addr = c.node(id).advertise_addr().to_string();
        admin_cli(&c.endpoint(1), &c.admin_key, &["cluster", "add-learner", &id.to_string(), &addr]).await.unwrap();
        admin_cli(&c.endpoint(1), &c.admin_key, &["cluster", "promote", &id.to_string()]).await.unwrap();
    }
    c.wait_replicated("still-alone").await;
    for id in [2, 3] {
        assert_eq!(lineage(c.node(id)), recovered.lineage_after);
        assert_eq!(verify(c.node(id), &key).await, StatusCode::OK);
    }
    let out = admin_cli(&c.endpoint(2), &c.admin_key, &["--json", "cluster", "status"]).await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let voters: Vec<_> = status["nodes"].as_array().unwrap().iter().filter(|n| n["voter"] == true).collect();
    assert_eq!(voters.len(), 3, "{status}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recovery_is_refused_while_a_quorum_answers_on_a_running_node_and_on_no_data() {
    let mut c = TestCluster::start(3).await;
    write_user(c.node(1), "before").await;
    c.wait_replicated("before").await;
    let config = c.configs[&1].clone();

    // Running: its data directory is in use.
    let e = force_new_cluster(&config, true).await.unwrap_err().to_string();
    assert!(e.contains("in use by a running node"), "{e}");

    // Stopped, while the other two answer: they are a quorum.
    c.stop(1).await;
    let e = force_new_cluster(&config, true).await.unwrap_err().to_string();
    assert!(e.contains("recovers on its own"), "{e}");
    // Nothing changed: it rejoins as it was.
    c.restart(1).await;
    write_user(c.node(2), "after").await;
    c.wait_replicated("after").await;
    assert_eq!(lineage(c.node(1)), lineage(c.node(2)));

    // No data at all, and a data directory of no cluster.
    let empty = tempfile::tempdir().unwrap();
    let mut none = config.clone();
    none.data_dir = empty.path().join("nothing");
    let e = force_new_cluster(&none, true).await.unwrap_err().to_string();
    assert!(e.contains("nothing to recover"), "{e}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_from_before_lineages_takes_the_legacy_lineage_on_every_node() {
    let mut c = TestCluster::start(3).await;
    write_user(c.node(1), "old").await;
    c.wait_replicated("old").await;
    for id in [1, 2, 3] {
        c.stop(id).await;
        // As a version before lineages left it.
        std::fs::remove_file(gatehouse_storage::lineage::lineage_path(&c.configs[&id].data_dir)).unwrap();
    }
    for id in [1, 2, 3] {
        c.restart(id).await;
    }
    c.wait_for_leader().await;
    write_user(c.node(3), "new").await;
    c.wait_replicated("new").await;
    for id in [1, 2, 3] {
        assert_eq!(lineage(c.node(id)), format!("{}.0", gatehouse_cluster::lineage::LEGACY_ID));
    }
    // Recovered, legacy data gets a cluster id of its own (legacy
    // clusters share one, and take calls without a lineage).
    for id in [2, 3, 1] {
        c.stop(id).await;
    }
    let recovered = force_new_cluster(&c.configs[&1], true).await.unwrap();
    assert!(!recovered.lineage_after.starts_with(gatehouse_cluster::lineage::LEGACY_ID), "{recovered:?}");
    c.restart(1).await;
    assert_eq!(lineage(c.node(1)), recovered.lineage_after);
    c.shutdown().await;
}

/// Every file under `dir` with its content.
fn contents(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(contents(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_refuses_data_of_a_newer_format_and_leaves_it_untouched() {
    let mut c = TestCluster::start(1).await;
    write_user(c.node(1), "kept").await;
    c.stop(1).await;
    let config = c.configs[&1].clone();
    let marker = config.data_dir.join(gatehouse_storage::format::FORMAT_FILE);
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), gatehouse_storage::format::STORE_FORMAT.to_string());
    // As a newer build would leave it.
    std::fs::write(&marker, "99\n").unwrap();
    let before = contents(&config.data_dir);
    let e = format!("{:#}", Node::start(config.clone()).await.err().expect("refused"));
    assert!(e.contains("newer Gatehouse") && e.contains("store format 99"), "{e}");
    assert!(contents(&config.data_dir) == before, "the data was left untouched");
    // The same refusal from the offline tools.
    assert!(force_new_cluster(&config, true).await.unwrap_err().to_string().contains("newer Gatehouse"));
    assert!(contents(&config.data_dir) == before);
    // Marked this build's again, it starts and holds what it held.
    std::fs::write(&marker, format!("{}\n", gatehouse_storage::format::STORE_FORMAT)).unwrap();
    c.restart(1).await;
    assert!(c.node(1).cluster().view().read().user_by_name("kept").is_some());
    c.shutdown().await;
}
