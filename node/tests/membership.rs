//! Membership on real processes, driven by the real `gatehouse admin` CLI
//! (its `--json` output parsed here): grow 3 → 5, transfer leadership,
//! remove a node, replace a dead one. A verifier keeps checking an API key
//! on every serving node the whole time and must never be refused.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_chaos::cluster::ProcCluster;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

struct Cli {
    endpoint: String,
    token: String,
}

impl Cli {
    /// Runs `gatehouse admin --json ARGS`; the parsed output, or the error on stderr.
    fn run(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = Command::new(BIN)
            .args(["admin", "--json", "--endpoint", &self.endpoint])
            .args(args)
            .env("GATEHOUSE_TOKEN", &self.token)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e})")))
    }

    fn ok(&self, args: &[&str]) -> serde_json::Value {
        self.run(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Waits until `cluster status` satisfies `cond`.
    async fn wait_status(&self, what: &str, cond: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = self.run(&["cluster", "status"]) {
                if cond(&s) {
                    return s;
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn voters(status: &serde_json::Value) -> Vec<u64> {
    let mut v: Vec<u64> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["voter"].as_bool().unwrap())
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    v.sort();
    v
}

fn all_caught_up(status: &serde_json::Value) -> bool {
    let nodes = status["nodes"].as_array().unwrap();
    let applied: Vec<u64> = nodes.iter().map(|n| n["applied_index"].as_u64().unwrap()).collect();
    nodes.iter().all(|n| n["reachable"].as_bool().unwrap()) && applied.iter().all(|a| *a == applied[0])
}

/// Verifies `key` on every node in `serving` every 20 ms; counts refusals.
fn spawn_verifier(
    serving: Arc<Mutex<BTreeMap<u64, String>>>,
    key: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        let (mut checks, mut failures) = (0u64, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            let nodes: Vec<(u64, String)> = serving.lock().unwrap().iter().map(|(k, v)| (*k, v.clone())).collect();
            for (id, http) in nodes {
                let r = client.get(format!("http://{http}/auth/verify")).bearer_auth(&key).send().await;
                checks += 1;
                let failure = match r {
                    Ok(r) if r.status() == 200 => continue,
                    Ok(r) => format!("node {id}: {}", r.status()),
                    Err(e) => format!("node {id}: {e}"),
                };
                // A node taken out of service (then stopped) while this round
                // was under way is not a failure of verification.
                if serving.lock().unwrap().contains_key(&id) {
                    failures.push(failure);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (checks, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_transfer_remove_and_replace_while_verification_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ProcCluster::start(BIN.as_ref(), dir.path(), 3).await.unwrap();
    for id in 1..=3 {
        c.wait_ready(id, Duration::from_secs(30)).await.unwrap();
    }
    let cli = Cli { endpoint: format!("http://{}", c.nodes[&2].grpc), token: c.admin_key.clone() };

    // A user and a key to verify, created through the CLI.
    cli.ok(&["user", "create", "svc-probe", "--email", "probe@example.com", "--role", "viewer"]);
    let key = cli.ok(&["key", "create", "--user", "svc-probe", "--name", "probe"])["key"].as_str().unwrap().to_string();
    let serving: Arc<Mutex<BTreeMap<u64, String>>> =
        Arc::new(Mutex::new(c.nodes.iter().map(|(id, n)| (*id, n.http.clone())).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let verifier = spawn_verifier(serving.clone(), key.clone(), stop.clone());

    // Grow 3 → 5.
    for id in [4, 5] {
        let addr = c.add_node(id).unwrap().grpc.clone();
        let m = cli.ok(&["cluster", "add-learner", &id.to_string(), &addr]);
        assert!(m["learners"].as_array().unwrap().contains(&id.into()), "{m}");
        let m = cli.ok(&["cluster", "promote", &id.to_string()]);
        assert!(m["voters"].as_array().unwrap().contains(&id.into()), "{m}");
        c.wait_ready(id, Duration::from_secs(30)).await.unwrap();
        serving.lock().unwrap().insert(id, c.nodes[&id].http.clone());
    }
    let status = cli.wait_status("five caught-up voters", |s| voters(s) == [1, 2, 3, 4, 5] && all_caught_up(s)).await;
    assert!(status["nodes"].as_array().unwrap().iter().all(|n| n["commit_index"].as_u64().unwrap() > 0), "{status}");

    // Transfer leadership to a follower, asked through a node that does not lead.
    let leader = status["leader"].as_u64().unwrap();
    let target = [4, 5, 3].into_iter().find(|n| *n != leader).unwrap();
    let asked_at = [1, 2, 3, 4, 5].into_iter().find(|n| *n != leader && *n != target).unwrap();
    let via = Cli { endpoint: format!("http://{}", c.nodes[&asked_at].grpc), token: c.admin_key.clone() };
    let moved = via.ok(&["cluster", "transfer-leader", &target.to_string()]);
    assert_eq!(moved["leader"].as_u64(), Some(target), "{moved}");
    assert_eq!(c.wait_for_leader(Duration::from_secs(10)).await.unwrap(), target);
    // Writes go on under the new leader.
    cli.ok(&["user", "create", "after-transfer", "--email", "a@example.com"]);

    // Remove a voter (not the leader) and stop its process.
    let removed = if target == 5 { 4 } else { 5 };
    serving.lock().unwrap().remove(&removed);
    let m = cli.ok(&["cluster", "remove", &removed.to_string()]);
    assert!(!m["voters"].as_array().unwrap().contains(&removed.into()), "{m}");
    c.kill(removed);

    // Replace a dead node: kill -9 a follower, remove it, add a new node in its place.
    let dead = [1, 2, 3].into_iter().find(|n| *n != target).unwrap();
    serving.lock().unwrap().remove(&dead);
    c.kill(dead);
    // Ask a node that is still alive.
    let alive = Cli { endpoint: format!("http://{}", c.nodes[&target].grpc), token: c.admin_key.clone() };
    alive.ok(&["cluster", "remove", &dead.to_string()]);
    let addr = c.add_node(6).unwrap().grpc.clone();
    alive.ok(&["cluster", "add-learner", "6", &addr]);
    alive.ok(&["cluster", "promote", "6"]);
    c.wait_ready(6, Duration::from_secs(30)).await.unwrap();
    serving.lock().unwrap().insert(6, c.nodes[&6].http.clone());
    let mut want: Vec<u64> = [1, 2, 3, 4, 5, 6].into_iter().filter(|n| *n != removed && *n != dead).collect();
    want.sort();
    let status = alive.wait_status("the replacement caught up", |s| voters(s) == want && all_caught_up(s)).await;
    assert_eq!(status["nodes"].as_array().unwrap().len(), 4, "{status}");

    // The replacement knows everything, including what was written before it existed.
    let new_node = Cli { endpoint: format!("http://{}", c.nodes[&6].grpc), token: c.admin_key.clone() };
    assert_eq!(new_node.ok(&["user", "get", "after-transfer"])["username"], "after-transfer");

    stop.store(true, Ordering::SeqCst);
    let (checks, failures) = verifier.await.unwrap();
    assert!(checks > 100, "the verifier ran only {checks} checks");
    assert!(failures.is_empty(), "verification refused {} of {checks} times: {failures:?}", failures.len());
}
