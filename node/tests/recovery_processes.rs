//! Recovery from a quorum lost for good, with real `gatehouse` processes
//! and the real CLI: two of three voters killed for good, `gatehouse
//! recover` on the third (refused without `--force-new-cluster`), the
//! survivor serving what it held, the two lost ones wiped and added again,
//! and then a chaos run on the re-grown cluster (leader kills under the
//! chaos workload, every checker of the chaos set: no lost or duplicated
//! write, linearizable reads, revocations within the staleness bound,
//! convergence).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{admin_cli, http, wait_until};
use gatehouse_chaos::cluster::ProcCluster;
use gatehouse_chaos::nemesis::Nemesis;
use gatehouse_chaos::run;
use reqwest::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn endpoint(c: &ProcCluster, id: u64) -> String {
    format!("http://{}", c.nodes[&id].grpc)
}

async fn status(c: &ProcCluster, id: u64) -> Option<serde_json::Value> {
    let out = admin_cli(&endpoint(c, id), &c.admin_key, &["--json", "cluster", "status"]).await.ok()?;
    serde_json::from_str(&out).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_recovered_from_one_survivor_grows_back_and_survives_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    // Configured and wired (link proxies) as a chaos run's cluster, for the
    // run on it at the end.
    let mut settings = run::Settings::new(BIN.into(), dir.path().to_path_buf(), Nemesis::KillLeader, 20_001);
    settings.duration = Duration::from_secs(12);
    let (mut c, mut net) = run::prepare(&settings).await.unwrap();
    c.launch().await.unwrap();
    for id in 1..=3 {
        c.wait_ready(id, Duration::from_secs(30)).await.unwrap();
    }
    let token = c.admin_key.clone();
    let mut written = Vec::new();
    for i in 0..5 {
        let name = format!("before-{i}");
        admin_cli(&endpoint(&c, 1), &token, &["user", "create", &name, "--email", &format!("{name}@example.com")])
            .await
            .unwrap();
        written.push(name);
    }
    let out = admin_cli(&endpoint(&c, 1), &token, &["--json", "key", "create", "--user", "before-0", "--name", "k"])
        .await
        .unwrap();
    let key = serde_json::from_str::<serde_json::Value>(&out).unwrap()["key"].as_str().unwrap().to_string();

    // Two voters lost for good; the survivor stopped.
    c.kill(2);
    c.kill(3);
    c.terminate(1, Duration::from_secs(20)).await.unwrap();
    let config = c.nodes[&1].config.clone();
    let recover = |force: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["recover", "--config"]).arg(&config);
        if force {
            cmd.arg("--force-new-cluster");
        }
        cmd.output().unwrap()
    };
    let dry = recover(false);
    assert!(!dry.status.success());
    let said = String::from_utf8_lossy(&dry.stderr);
    assert!(said.contains("--force-new-cluster") && said.contains("holds the log to index"), "{said}");
    let done = recover(true);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(said.contains("may be lost") && said.contains("only voter"), "{said}");

    // The survivor serves everything it held.
    c.spawn(1).unwrap();
    c.wait_ready(1, Duration::from_secs(30)).await.unwrap();
    let verify = |http_addr: String, key: String| async move {
        http().get(format!("http://{http_addr}/auth/verify")).bearer_auth(key).send().await.map(|r| r.status())
    };
    assert_eq!(verify(c.nodes[&1].http.clone(), key.clone()).await.unwrap(), StatusCode::OK);
    let epoch = status(&c, 1).await.unwrap()["epoch"].as_u64().unwrap();
    assert!(epoch > 1);

    // The lost two come back wiped and are added again.
    for id in [2, 3] {
        std::fs::remove_dir_all(dir.path().join(format!("node-{id}"))).unwrap();
        c.spawn(id).unwrap();
        let addr = c.nodes[&id].peer.clone();
        let added = async {
            loop {
                match admin_cli(&endpoint(&c, 1), &token, &["cluster", "add-learner", &id.to_string(), &addr]).await {
                    Ok(_) => break,
                    // The new process may still be starting (its link proxy
                    // takes the connection and closes it meanwhile).
                    Err(e) if e.contains("unreachable") || e.contains("did not answer as a Gatehouse node") => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Err(e) => panic!("add-learner {id}: {e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), added).await.expect("added");
        admin_cli(&endpoint(&c, 1), &token, &["cluster", "promote", &id.to_string()]).await.unwrap();
        c.wait_ready(id, Duration::from_secs(30)).await.unwrap();
    }
    wait_until("three voters of the new epoch, caught up", Duration::from_secs(30), || async {
        let Some(s) = status(&c, 2).await else { return false };
        let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
        nodes.len() == 3 && nodes.iter().all(|n| n["voter"] == true && n["epoch"] == epoch && n["replication_lag"] == 0)
    })
    .await;

    // A chaos run on the re-grown cluster: leader kills under the chaos
    // workload, and every checker of the chaos set.
    let report = run::run_on(&settings, &mut c, &mut net).await.unwrap();
    assert!(report.passed(), "lost {:?}, violations {:?}; replay: {}", report.lost, report.violations, report.replay);
    assert!(!report.faults.is_empty() && report.writes_checked > 0, "{report:?}");
    for id in 1..=3 {
        let out = admin_cli(&endpoint(&c, id), &token, &["--json", "user", "list"]).await.unwrap();
        for name in &written {
            assert!(out.contains(&format!("\"{name}\"")), "node {id} lost {name}: {out}");
        }
        assert_eq!(verify(c.nodes[&id].http.clone(), key.clone()).await.unwrap(), StatusCode::OK, "node {id}");
    }
}
