//! The admin cluster service and CLI: status, membership growth and
//! shrinkage, snapshots, and refusals (no key, wrong key, viewer key, bad input).

mod common;

use std::time::Duration;

use common::{admin_cli, create_key, endpoint, wait_until, write_user, TestCluster};
use gatehouse::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_json_lists_every_node_with_its_applied_index() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    write_user(c.node(1), "for-status").await;
    c.wait_replicated("for-status").await;
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();

    let out = admin_cli(&endpoint(c.node(follower)), &c.admin_key, &["--json", "cluster", "status"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["leader"], leader);
    assert!(v["term"].as_u64().unwrap() >= 1);
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        assert_eq!(n["voter"], true);
        assert_eq!(n["reachable"], true);
        let state = if n["id"] == leader { "leader" } else { "follower" };
        assert_eq!(n["state"], state, "{n}");
        assert!(n["applied_index"].as_u64().unwrap() > 0);
        assert!(n["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
        // Asked of a follower, the leader's view of replication still shows.
        assert!(n["matched_index"].as_u64().unwrap() > 0, "{n}");
        assert!(n["matched_index"].as_u64() <= n["last_log_index"].as_u64(), "{n}");
    }
    // Idle and healthy: every node holds what the leader holds.
    wait_until("every node caught up", Duration::from_secs(5), || async {
        let out = admin_cli(&endpoint(c.node(follower)), &c.admin_key, &["--json", "cluster", "status"]).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["nodes"].as_array().unwrap().iter().all(|n| n["replication_lag"] == 0)
    })
    .await;
    // A node that is down: the leader's view shows it falling behind.
    let down = *c.nodes.keys().find(|&&id| id != leader && id != follower).unwrap();
    c.stop(down).await;
    for i in 0..3 {
        write_user(c.node(leader), &format!("while-down-{i}")).await;
    }
    let out = admin_cli(&endpoint(c.node(follower)), &c.admin_key, &["--json", "cluster", "status"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = v["nodes"].as_array().unwrap().iter().find(|n| n["id"] == down).unwrap().clone();
    assert_eq!(row["reachable"], false, "{row}");
    assert!(row["replication_lag"].as_u64().unwrap() >= 3, "{row}");
    let table = admin_cli(&endpoint(c.node(leader)), &c.admin_key, &["cluster", "status"]).await.unwrap();
    assert!(table.contains(&format!("leader: {leader}")), "{table}");
    assert!(table.starts_with(&format!("cluster: {} (epoch 1)", v["cluster_id"].as_str().unwrap())), "{table}");
    assert_eq!(table.lines().count(), 7, "{table}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refuses_missing_wrong_and_underprivileged_keys_and_bad_arguments() {
    let c = TestCluster::start(3).await;
    let ep = endpoint(c.node(1));
    let viewer = create_key(c.node(1), "watcher", &["viewer"]).await;

    let err = admin_cli(&ep, "", &["cluster", "status"]).await.unwrap_err();
    assert!(err.contains("API key is required"), "{err}");
    let forged = format!("{}x", &c.admin_key[..c.admin_key.len() - 1]);
    let err = admin_cli(&ep, &forged, &["cluster", "status"]).await.unwrap_err();
    assert!(err.starts_with("unauthenticated"), "{err}");
    let err = admin_cli(&ep, "not-a-key", &["cluster", "status"]).await.unwrap_err();
    assert!(err.starts_with("unauthenticated"), "{err}");

    // A viewer reads status but cannot change the cluster.
    assert!(admin_cli(&ep, &viewer, &["cluster", "status"]).await.is_ok());
    for args in [
        &["cluster", "add-learner", "7", "127.0.0.1:1"][..],
        &["cluster", "promote", "2"],
        &["cluster", "remove", "2"],
        &["cluster", "snapshot"],
    ] {
        let err = admin_cli(&ep, &viewer, args).await.unwrap_err();
        assert!(err.starts_with("permission denied"), "{args:?}: {err}");
    }

    // Bad arguments from an admin.
    for (args, want) in [
        (&["cluster", "add-learner", "0", "127.0.0.1:1"][..], "invalid argument"),
        (&["cluster", "add-learner", "7", "no-port"], "invalid argument"),
        (&["cluster", "add-learner", "7", "http://127.0.0.1:1"], "invalid argument"),
        // Production without TLS never sends the secret off loopback.
        (&["cluster", "add-learner", "7", "10.0.0.7:9090"], "failed precondition"),
        (&["cluster", "add-learner", "7", "node-7.internal:9090"], "failed precondition"),
        (&["cluster", "promote", "42"], "not found"),
        (&["cluster", "promote", "0"], "invalid argument"),
        (&["cluster", "remove", "42"], "not found"),
        (&["cluster", "remove", "0"], "invalid argument"),
    ] {
        let err = admin_cli(&ep, &c.admin_key, args).await.unwrap_err();
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    assert!(admin_cli(&ep, &c.admin_key, &["cluster", "promote", "-3"]).await.is_err());

    // Nothing changed.
    let m = c.node(1).cluster().raft().metrics().borrow().membership_config.membership().clone();
    assert_eq!(m.voter_ids().count(), 3);
    assert_eq!(m.learner_ids().count(), 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_to_four_through_a_follower_via_snapshot_then_shrink_back() {
    let mut c = TestCluster::start_with(3, |cfg| {
        cfg.raft.snapshot_every = 10;
        cfg.raft.keep_behind_snapshot = 0;
    })
    .await;
    let leader = c.wait_for_leader().await;
    for i in 0..30 {
        write_user(c.node(leader), &format!("early-{i}")).await;
    }
    wait_until("the leader purged its log", Duration::from_secs(10), || {
        let purged = c.node(leader).cluster().raft().metrics().borrow().purged.map_or(0, |p| p.index);
        async move { purged > 5 }
    })
    .await;

    let mut cfg = common::config(4, &c.dir);
    cfg.raft.snapshot_every = 10;
    let new = Node::start(cfg.clone()).await.unwrap();
    cfg.grpc_addr = new.grpc_addr();
    let addr = new.advertise_addr().to_string();
    c.configs.insert(4, cfg);
    c.nodes.insert(4, new);

    // Through a follower: the call is forwarded to the leader.
    let follower = *c.nodes.keys().find(|&&id| id != leader && id != 4).unwrap();
    let ep = endpoint(c.node(follower));
    let out = admin_cli(&ep, &c.admin_key, &["--json", "cluster", "add-learner", "4", &addr]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["learners"], serde_json::json!([4]));
    c.wait_replicated("early-29").await;
    assert!(c.node(4).cluster().raft().metrics().borrow().snapshot.is_some(), "caught up by snapshot");

    let out = admin_cli(&ep, &c.admin_key, &["--json", "cluster", "promote", "4"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["voters"], serde_json::json!([1, 2, 3, 4]));
    write_user(c.node(4), "from-four").await;
    c.wait_replicated("from-four").await;

    let out = admin_cli(&ep, &c.admin_key, &["--json", "cluster", "remove", "4"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["voters"], serde_json::json!([1, 2, 3]));
    c.stop(4).await;
    write_user(c.node(leader), "after-removal").await;
    c.wait_replicated("after-removal").await;

    let out = admin_cli(&ep, &c.admin_key, &["--json", "cluster", "snapshot"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["snapshot_index"].as_u64().unwrap() > 0);
    c.shutdown().await;
}

/// A new cluster runs this build's command version once its leader has
/// heard every member say it understands it; status shows what each runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_cluster_rises_to_this_builds_version_and_status_shows_each_nodes() {
    let c = TestCluster::start(3).await;
    let status = || async {
        let out = admin_cli(&endpoint(c.node(2)), &c.admin_key, &["--json", "cluster", "status"]).await.unwrap();
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let version = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("the cluster version rises", Duration::from_secs(20), || async {
        status().await["cluster_version"] == version
    })
    .await;
    let s = status().await;
    assert_eq!(s["understood_version"], version, "{s}");
    for n in s["nodes"].as_array().unwrap() {
        assert_eq!(n["command_version"], version, "{n}");
        assert_eq!(n["store_format"], gatehouse_storage::format::STORE_FORMAT, "{n}");
        assert!(n["started_at_ms"].as_u64().unwrap() > 1_700_000_000_000, "{n}");
    }
    let text = admin_cli(&endpoint(c.node(1)), &c.admin_key, &["cluster", "status"]).await.unwrap();
    assert!(text.contains(&format!("version: {version} (every member understands {version})")), "{text}");
    assert!(text.contains(" VER"), "{text}");
    c.shutdown().await;
}

/// `cluster roll` refuses a missing command and a cluster that is not
/// whole, and stops at the first node its command fails to restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roll_refuses_bad_input_and_stops_where_a_restart_does_not_happen() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let (at, key) = (endpoint(c.node(leader)), c.admin_key.clone());
    let roll = |restart: &'static str| {
        let (at, key) = (at.clone(), key.clone());
        async move { admin_cli(&at, &key, &["cluster", "roll", "--restart", restart, "--timeout", "2"]).await }
    };
    let e = roll(" ").await.unwrap_err();
    assert!(e.contains("--restart needs a command"), "{e}");
    // The first node is a follower (the leader goes last); nothing restarts it.
    let e = roll("exit 3").await.unwrap_err();
    assert!(e.contains("the restart command for node") && e.contains("failed"), "{e}");
    assert!(e.contains("restarted so far: []"), "{e}");
    let e = roll("true").await.unwrap_err();
    assert!(e.contains("still runs as the same process"), "{e}");
    assert!(e.contains("restarted so far: []"), "{e}");
    // The command sees which node it restarts, and never the admin key.
    let e =
        roll(r#"[ -n "$GATEHOUSE_NODE_ID" ] && [ -n "$GATEHOUSE_NODE_ADDR" ] && [ -z "$GATEHOUSE_TOKEN" ] && exit 4"#)
            .await
            .unwrap_err();
    assert!(e.contains("failed (exit status: 4)"), "{e}");
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    c.stop(follower).await;
    let e = roll("true").await.unwrap_err();
    assert!(e.contains(&format!("node {follower} does not answer")) && e.contains("did not start"), "{e}");
    c.shutdown().await;
}
