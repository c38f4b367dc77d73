//! A rolling upgrade from the previous release, with real processes, the
//! real `gatehouse admin cluster roll` and a restart command like an
//! operator's, under a verification and a write load.
//!
//! The previous release is built from its commit ([`PREVIOUS`], by
//! `scripts/previous-build.sh`, once per machine). Three voters and a
//! front start on it; the roll then moves the voters to this build (one
//! of them kept on the old one at first), and the front is restarted last.
//! Throughout: every verification answered 200 by some node (clients move
//! on from a node that is down or not ready, as a load balancer does), and
//! every acknowledged write present on every node at the end. The cluster
//! version stays at 1 while any voter or front runs the old build and rises
//! once none does; then the old build is refused by the new data (store
//! format), by the voters (a front of the old build) and by `add-learner`
//! (a node of the old build), and leaves the data as it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{admin_cli, http, wait_until};
use gatehouse_chaos::cluster::ProcCluster;
use gatehouse_proto::admin::user_service_client::UserServiceClient;
use gatehouse_proto::admin::{CreateUserRequest, GetUserRequest};
use reqwest::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// The release the upgrade starts from: the last commit before the
/// cluster version gate and store format 3.
const PREVIOUS: &str = "96f9978123ea14762e5bd3dc52d526d1494c5e73";
/// The command version this build understands (the previous one: 1).
const NEW: u32 = gatehouse_domain::version::COMMAND_VERSION;

/// The previous release's binary, built once per machine.
fn previous_build() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/previous-build.sh");
    let out = Command::new(&script).arg(PREVIOUS).output().expect("running scripts/previous-build.sh");
    assert!(out.status.success(), "building the previous release: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Points `link` at `target` (replacing what it pointed at).
fn point(link: &Path, target: &Path) {
    let aside = link.with_extension("new");
    let _ = std::fs::remove_file(&aside);
    std::os::unix::fs::symlink(target, &aside).unwrap();
    std::fs::rename(&aside, link).unwrap();
}

/// Stops node `$GATEHOUSE_NODE_ID`'s process: SIGTERM, then wait for its exit.
const STOP: &str = r#"set -eu
pid=$(cat "$DIR/node-$GATEHOUSE_NODE_ID.pid")
kill -TERM "$pid"
while [ -e "/proc/$pid" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat")" != Z ]; do sleep 0.05; done
"#;

/// Starts the binary installed now (`bin/gatehouse`, or `bin/gatehouse-<id>` for one node).
const START: &str = r#"id=$GATEHOUSE_NODE_ID
bin="$DIR/bin/gatehouse"
if [ -e "$DIR/bin/gatehouse-$id" ]; then bin="$DIR/bin/gatehouse-$id"; fi
setsid "$bin" serve --config "$DIR/node-$id.toml" </dev/null >/dev/null 2>>"$DIR/node-$id.log" &
echo $! > "$DIR/node-$id.pid"
"#;

/// What the operator's restart command does, as `systemctl restart` would.
fn restart_command() -> String {
    format!("{STOP}{START}")
}

/// Kills, when the test ends, every node process the restart command
/// started (they are not the harness's children).
struct Started(PathBuf);

impl Drop for Started {
    fn drop(&mut self) {
        for id in 1..=3 {
            let Ok(pid) = std::fs::read_to_string(self.0.join(format!("node-{id}.pid"))) else { continue };
            let pid = pid.trim();
            // Only a process of this run (never a reused pid).
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*self.0.to_string_lossy()));
            if ours {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
}

/// The verifications and writes that run across the upgrade.
#[derive(Default)]
struct Load {
    verified: AtomicUsize,
    /// Verifications no node answered with 200 (with what was seen).
    failed: Mutex<Vec<String>>,
    acknowledged: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// Verifies `key` on one target after another; a target that is down,
/// not ready (503) or slow is skipped for the next, as a load balancer
/// with health checks would. Failed: no target said 200 within 10 s, or
/// one answered anything but 200 or 503.
async fn verifier(load: Arc<Load>, targets: Vec<String>, key: String, offset: usize) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let mut next = offset;
    while !load.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut seen = Vec::new();
        let ok = loop {
            let target = &targets[next % targets.len()];
            next += 1;
            match client.get(format!("http://{target}/auth/verify")).bearer_auth(&key).send().await {
                Ok(r) if r.status() == StatusCode::OK => break true,
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => seen.push(format!("{target}: 503")),
                Ok(r) => {
                    seen.push(format!("{target}: {}", r.status()));
                    break false;
                }
                Err(e) => seen.push(format!("{target}: {}", if e.is_connect() { "refused" } else { "no answer" })),
            }
            if started.elapsed() > Duration::from_secs(10) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if ok {
            load.verified.fetch_add(1, Ordering::Relaxed);
        } else {
            load.failed.lock().unwrap().push(seen.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Creates users one after another; each is retried (same idempotency
/// key) on the next node until one acknowledges it, for up to 30 s.
async fn writer(load: Arc<Load>, grpc: Vec<String>, admin_key: String) {
    let mut n = 0;
    while !load.stop.load(Ordering::Relaxed) {
        n += 1;
        let name = format!("rolled-{n}");
        let started = Instant::now();
        let mut at = n;
        loop {
            let mut req = tonic::Request::new(CreateUserRequest {
                username: name.clone(),
                email: format!("{name}@example.com"),
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(5));
            req.metadata_mut().insert("authorization", format!("Bearer {admin_key}").parse().unwrap());
            req.metadata_mut().insert("idempotency-key", name.parse().unwrap());
            let endpoint = format!("http://{}", grpc[at % grpc.len()]);
            at += 1;
            let answer = match tonic::transport::Endpoint::from_shared(endpoint).unwrap().connect().await {
                Ok(channel) => UserServiceClient::new(channel).create(req).await.map(|_| ()),
                Err(_) => Err(tonic::Status::unavailable("down")),
            };
            match answer {
                Ok(()) => {
                    load.acknowledged.lock().unwrap().push(name.clone());
                    break;
                }
                Err(s) => {
                    assert!(
                        matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::DeadlineExceeded
                                | tonic::Code::Unknown
                                | tonic::Code::Cancelled
                        ),
                        "{name}: refused outright: {s:?}"
                    );
                    assert!(started.elapsed() < Duration::from_secs(30), "{name}: no node took it within 30 s: {s:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(c: &ProcCluster, id: u64) -> Option<serde_json::Value> {
    let endpoint = format!("http://{}", c.nodes[&id].grpc);
    let out = admin_cli(&endpoint, &c.admin_key, &["--json", "cluster", "status"]).await.ok()?;
    serde_json::from_str(&out).ok()
}

/// Runs `cmd`, killed if it has not finished within `limit`.
async fn run_within(mut cmd: tokio::process::Command, limit: Duration) -> std::process::Output {
    let out = cmd.kill_on_drop(true).output();
    tokio::time::timeout(limit, out).await.expect("finished in time").unwrap()
}

/// `gatehouse admin cluster roll` with the restart command, through node `via`.
async fn roll(c: &ProcCluster, via: u64) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["admin", "--endpoint", &format!("http://{}", c.nodes[&via].grpc), "cluster", "roll"])
        .args(["--restart", &restart_command(), "--timeout", "60"])
        .env("GATEHOUSE_TOKEN", &c.admin_key)
        .env("DIR", &c.dir);
    run_within(cmd, Duration::from_secs(300)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_upgrade_from_the_previous_release_fails_no_verification_and_loses_no_write() {
    let previous = previous_build();
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let installed = bin_dir.join("gatehouse");
    point(&installed, &previous);
    let _started = Started(dir.path().to_path_buf());

    let mut c = ProcCluster::start(&installed, dir.path(), 3).await.unwrap();
    for id in 1..=3 {
        c.wait_ready(id, Duration::from_secs(30)).await.unwrap();
        std::fs::write(dir.path().join(format!("node-{id}.pid")), c.pid(id).unwrap().to_string()).unwrap();
    }
    let voters: Vec<(u64, String)> = c.nodes.values().map(|n| (n.id, n.peer.clone())).collect();
    c.add_front(101, &voters).unwrap();
    c.wait_front_ready(101, Duration::from_secs(30)).await.unwrap();
    let token = c.admin_key.clone();
    let v1 = format!("http://{}", c.nodes[&1].grpc);
    admin_cli(&v1, &token, &["user", "create", "owner", "--email", "owner@example.com"]).await.unwrap();
    let out = admin_cli(&v1, &token, &["--json", "key", "create", "--user", "owner", "--name", "k"]).await.unwrap();
    let key = serde_json::from_str::<serde_json::Value>(&out).unwrap()["key"].as_str().unwrap().to_string();
    let s = status(&c, 1).await.unwrap();
    assert!(
        s["nodes"].as_array().unwrap().iter().all(|n| n["command_version"] == 1 && n["store_format"].is_null()),
        "the old build reports no version (read as 1) and no store format: {s}"
    );

    let load = Arc::new(Load::default());
    let mut targets: Vec<String> = c.nodes.values().map(|n| n.http.clone()).collect();
    targets.push(c.fronts[&101].http.clone());
    let grpc: Vec<String> = c.nodes.values().map(|n| n.grpc.clone()).collect();
    let mut tasks = Vec::new();
    for k in 0..4 {
        tasks.push(tokio::spawn(verifier(load.clone(), targets.clone(), key.clone(), k)));
    }
    tasks.push(tokio::spawn(writer(load.clone(), grpc.clone(), token.clone())));

    // First roll: voters 1 and 2 move to this build, voter 3 stays on the old one.
    point(&installed, Path::new(BIN));
    point(&bin_dir.join("gatehouse-3"), &previous);
    let out = roll(&c, 1).await;
    assert!(out.status.success(), "roll: {}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("{said}");
    for id in 1..=3 {
        assert!(said.contains(&format!("node {id}: restarted, caught up")), "{said}");
    }
    // Mixed: the new voters say what they understand; the cluster stays at 1.
    wait_until("the mixed cluster shows its versions", Duration::from_secs(30), || async {
        let Some(s) = status(&c, 1).await else { return false };
        let versions: Vec<_> =
            s["nodes"].as_array().unwrap().iter().map(|n| (n["id"].clone(), n["command_version"].clone())).collect();
        s["cluster_version"] == 1
            && s["understood_version"] == 1
            && versions.contains(&(1.into(), NEW.into()))
            && versions.contains(&(3.into(), 1.into()))
    })
    .await;

    // Second roll: every voter on this build. The old front still holds the version.
    std::fs::remove_file(bin_dir.join("gatehouse-3")).unwrap();
    let out = roll(&c, 2).await;
    assert!(out.status.success(), "roll: {}", String::from_utf8_lossy(&out.stderr));
    wait_until("every voter reports this build's version", Duration::from_secs(30), || async {
        status(&c, 1).await.is_some_and(|s| s["nodes"].as_array().unwrap().iter().all(|n| n["command_version"] == NEW))
    })
    .await;
    wait_until("the old front holds the version at 1", Duration::from_secs(30), || async {
        status(&c, 1).await.is_some_and(|s| {
            s["cluster_version"] == 1 && s["understood_version"] == 1 && s["fronts"][0]["command_version"] == 1
        })
    })
    .await;

    // The front moves to this build; then the leader raises the version.
    c.kill_front(101);
    c.spawn_front(101).unwrap();
    c.wait_front_ready(101, Duration::from_secs(30)).await.unwrap();
    wait_until("the cluster version rises to this build's", Duration::from_secs(30), || async {
        status(&c, 2).await.is_some_and(|s| s["cluster_version"] == NEW)
    })
    .await;

    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = load.failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "{} failed verifications, e.g. {:?}", failed.len(), &failed[..failed.len().min(3)]);
    let verified = load.verified.load(Ordering::Relaxed);
    let acknowledged = load.acknowledged.lock().unwrap().clone();
    assert!(verified > 100 && acknowledged.len() > 20, "{verified} verifications, {} writes", acknowledged.len());
    eprintln!("across the upgrade: {verified} verifications, none failed; {} writes acknowledged", acknowledged.len());
    for target in &grpc {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{target}")).unwrap().connect().await.unwrap();
        let mut users = UserServiceClient::new(channel);
        for name in &acknowledged {
            let mut req = tonic::Request::new(GetUserRequest { user: name.clone() });
            req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            req.metadata_mut().insert("gatehouse-consistency", "linearizable".parse().unwrap());
            users.get(req).await.unwrap_or_else(|s| panic!("{target} lost {name}: {s:?}"));
        }
    }

    // A front of the old build is refused now, saying what to do.
    point(&installed, &previous);
    c.add_front(102, &voters).unwrap();
    let front_log = dir.path().join("front-102.log");
    wait_until("the old front is refused", Duration::from_secs(30), || async {
        std::fs::read_to_string(&front_log).is_ok_and(|l| l.contains("run a newer Gatehouse"))
    })
    .await;
    c.kill_front(102);

    // A node of the old build cannot join as a learner either.
    let addr = c.add_node(4).unwrap().peer.clone();
    let e = admin_cli(&v1, &token, &["cluster", "add-learner", "4", &addr]).await.unwrap_err();
    assert!(e.contains("understands command version 1") && e.contains("upgrade it first"), "{e}");
    c.kill(4);

    // The old build refuses the new data and leaves it as it was.
    let stopped = Command::new("sh").args(["-c", STOP]).env("DIR", dir.path()).env("GATEHOUSE_NODE_ID", "3").status();
    assert!(stopped.unwrap().success());
    let mut old = tokio::process::Command::new(&previous);
    old.args(["serve", "--config"]).arg(&c.nodes[&3].config);
    let old = run_within(old, Duration::from_secs(30)).await;
    assert!(!old.status.success());
    let said = String::from_utf8_lossy(&old.stderr);
    assert!(
        said.contains("newer Gatehouse")
            && said.contains(&format!("store format {}", gatehouse_storage::format::STORE_FORMAT)),
        "{said}"
    );
    point(&installed, Path::new(BIN));
    c.spawn(3).unwrap();
    c.wait_ready(3, Duration::from_secs(30)).await.unwrap();
    let verify = http().get(format!("http://{}/auth/verify", c.nodes[&3].http)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(verify.status(), StatusCode::OK);
}
