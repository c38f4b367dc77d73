//! One chaos run: a real cluster behind link proxies, the workload on every
//! node, one nemesis striking in cycles, then healing, convergence and every
//! checker. Everything random comes from the seed, so a failing run can be
//! replayed (timing still varies: a replay repeats the choices, not the
//! interleaving).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;

use crate::checks;
use crate::cluster::ProcCluster;
use crate::history::{Kind, Op, Outcome, Recorder, Value};
use crate::nemesis::{self, Nemesis, Net};
use crate::workload::{self, Target, Workload};

/// How one run goes.
/// The first stateless front's id (101, 102, …: never a voter's).
pub const FIRST_FRONT: u64 = 101;

#[derive(Debug, Clone)]
pub struct Settings {
    pub bin: PathBuf,
    /// The run's files (node data, configs and logs) go here.
    pub dir: PathBuf,
    pub nodes: u64,
    pub nemesis: Nemesis,
    pub seed: u64,
    /// How long the clients run, faults included.
    pub duration: Duration,
    /// How long each fault holds.
    pub fault: Duration,
    /// Quiet time between faults.
    pub quiet: Duration,
    pub clients: usize,
    pub max_staleness: Duration,
    /// One entry near the size limit this often, beside the clients
    /// ([`crate::large`]); `None`: none.
    pub large_every: Option<Duration>,
    /// Mutual TLS on every link between nodes.
    pub tls: bool,
    /// Stateless fronts beside the voters (ids 101, 102, …): clients verify
    /// and sign in on them too, and every checker covers what they answered.
    pub fronts: u64,
}

impl Settings {
    pub fn new(bin: PathBuf, dir: PathBuf, nemesis: Nemesis, seed: u64) -> Settings {
        Settings {
            bin,
            dir,
            nodes: 3,
            nemesis,
            seed,
            duration: Duration::from_secs(15),
            fault: Duration::from_secs(3),
            quiet: Duration::from_millis(1500),
            clients: 6,
            max_staleness: Duration::from_secs(2),
            large_every: Some(Duration::from_secs(1)),
            tls: false,
            fronts: 0,
        }
    }

    /// The command that repeats this run's choices.
    pub fn replay(&self) -> String {
        format!(
            "cargo run -p gatehouse-chaos --bin gatehouse-chaos -- --nemesis {} --seed {} --nodes {} --seconds {}{}{}",
            self.nemesis.name(),
            self.seed,
            self.nodes,
            self.duration.as_secs(),
            if self.tls { " --tls" } else { "" },
            if self.fronts > 0 { format!(" --fronts {}", self.fronts) } else { String::new() }
        )
    }
}

/// What a run measured and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub nodes: u64,
    pub faults: Vec<String>,
    pub ops: usize,
    pub acknowledged: usize,
    pub unknown: usize,
    pub failed: usize,
    /// Acknowledged writes checked for loss, and how many were lost.
    pub writes_checked: usize,
    pub lost: Vec<String>,
    pub violations: Vec<String>,
    /// Partitions whose linearizability search ran out of budget.
    pub inconclusive: Vec<String>,
    pub retried_creates: usize,
    /// Large entries proposed: acknowledged, not.
    pub large: (usize, usize),
    /// Leader kill → first acknowledged write, per kill, in ms.
    pub failover_ms: Vec<u64>,
    /// Verifications on the majority side during faults: answered, asked.
    pub verify_available: (usize, usize),
    pub converged_after: Duration,
    pub replay: String,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.lost.is_empty() && self.violations.is_empty()
    }

    pub fn availability(&self) -> Option<f64> {
        let (ok, asked) = self.verify_available;
        (asked > 0).then(|| ok as f64 / asked as f64)
    }

    /// The failover time at quantile `q` (nearest rank).
    pub fn failover(&self, q: f64) -> Option<u64> {
        let mut v = self.failover_ms.clone();
        v.sort_unstable();
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
        v.get(i).copied()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": self.scenario, "seed": self.seed, "nodes": self.nodes, "faults": self.faults,
            "ops": self.ops, "acknowledged": self.acknowledged, "unknown": self.unknown, "failed": self.failed,
            "writes_checked": self.writes_checked, "lost": self.lost, "violations": self.violations,
            "inconclusive": self.inconclusive, "retried_creates": self.retried_creates,
            "large_entries": {"acknowledged": self.large.0, "not_acknowledged": self.large.1},
            "failover_ms": {"p50": self.failover(0.5), "p99": self.failover(0.99), "all": self.failover_ms},
            "verify_availability": self.availability(),
            "converged_after_ms": self.converged_after.as_millis() as u64, "replay": self.replay,
        })
    }
}

/// The search budget per linearizability partition.
const SEARCH_BUDGET: u64 = 2_000_000;

/// A fault as it happened: when, and which nodes were the majority side.
struct Window {
    start: u64,
    end: u64,
    majority: std::collections::BTreeSet<u64>,
}

pub async fn run(s: &Settings) -> anyhow::Result<Report> {
    let (mut cluster, mut net) = prepare(s).await?;
    cluster.launch().await?;
    run_on(s, &mut cluster, &mut net).await
}

/// The run's cluster, its nodes configured as a chaos run has them and
/// wired through link proxies, not started yet (a caller may shape the
/// cluster first, e.g. lose and regrow voters, then [`run_on`] it).
pub async fn prepare(s: &Settings) -> anyhow::Result<(ProcCluster, Net)> {
    let config = format!(
        "max_staleness_ms = {}\n[rate_limits]\nenabled = false\n[identity]\npassword_workers = 2\n",
        s.max_staleness.as_millis()
    );
    let cluster = ProcCluster::prepare_with(&s.bin, &s.dir, s.nodes, &config, &[], s.tls)?;
    let net = Net::wire(&cluster, s.seed).await?;
    Ok((cluster, net))
}

/// The run on a cluster [`prepare`] made and that runs now (its voters
/// `1..=s.nodes`): fronts, the workload, the nemesis in cycles, healing,
/// convergence and every checker.
pub async fn run_on(s: &Settings, cluster: &mut ProcCluster, net: &mut Net) -> anyhow::Result<Report> {
    for id in 1..=s.nodes {
        cluster.wait_ready(id, Duration::from_secs(30)).await?;
    }
    tracing::info!(nemesis = s.nemesis.name(), seed = s.seed, nodes = s.nodes, "chaos run starts");

    // Fronts dial the voters through link proxies of their own: partitions
    // put them on a side, slow and flaky links reach them too.
    for k in 0..s.fronts {
        let voters = net.wire_front(cluster, FIRST_FRONT + k, s.seed).await?;
        cluster.add_front(FIRST_FRONT + k, &voters)?;
    }
    for k in 0..s.fronts {
        cluster.wait_front_ready(FIRST_FRONT + k, Duration::from_secs(30)).await?;
    }
    let targets: Vec<Target> = cluster
        .nodes
        .values()
        .map(|n| Target { id: n.id, http: n.http.clone(), grpc: n.grpc.clone(), front: false })
        .chain(cluster.fronts.values().map(|f| Target {
            id: f.id,
            http: f.http.clone(),
            grpc: String::new(),
            front: true,
        }))
        .collect();
    let started = Instant::now();
    let rec = Recorder::new(started);
    let w = Workload {
        clients: s.clients,
        admin_key: cluster.admin_key.clone(),
        password: format!("chaos-password-{}", s.seed),
        op_timeout: Duration::from_secs(3),
        think: Duration::from_millis(5),
    };
    let (stop_tx, stop) = watch::channel(false);
    let large = s.large_every.map(|every| {
        let nodes = cluster.nodes.values().map(|n| (n.id, n.peer.clone(), n.grpc.clone())).collect();
        tokio::spawn(crate::large::run(cluster.peers.clone(), nodes, s.seed, every, stop.clone()))
    });
    let clients = tokio::spawn(workload::run(targets, w, rec.clone(), s.seed, stop));

    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut windows = Vec::new();
    let mut faults = Vec::new();
    let mut kills = Vec::new();
    while started.elapsed() + s.quiet + s.fault < s.duration {
        tokio::time::sleep(s.quiet).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
        let start = rec.now();
        let injected = nemesis::inject(s.nemesis, cluster, net, leader, &mut rng).await?;
        if s.nemesis.kills_leader() {
            kills.push(start);
        }
        tracing::info!(fault = %injected.description, "nemesis");
        tokio::time::sleep(s.fault).await;
        nemesis::heal(cluster, net, &injected)?;
        windows.push(Window { start, end: rec.now(), majority: injected.majority.clone() });
        faults.push(injected.description);
    }
    tokio::time::sleep(s.quiet).await;
    stop_tx.send_replace(true);
    clients.await?;
    let large = match large {
        Some(task) => Some(task.await?),
        None => None,
    };

    // Healed: a leader, every node ready, one state.
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    for id in 1..=s.nodes {
        cluster.wait_ready(id, Duration::from_secs(30)).await?;
    }
    let history = rec.history();
    // Beside the node logs, for reading a failure.
    let lines: Vec<String> = history.iter().map(|o| format!("{o:?}")).collect();
    std::fs::write(s.dir.join("history.txt"), lines.join("\n"))?;
    let mut report = Report {
        scenario: format!(
            "{}{}{}",
            s.nemesis.name(),
            if s.tls { " (mTLS)" } else { "" },
            if s.fronts > 0 { format!(" + {} fronts", s.fronts) } else { String::new() }
        ),
        seed: s.seed,
        nodes: s.nodes,
        faults,
        ops: history.len(),
        replay: s.replay(),
        ..Default::default()
    };
    for op in &history {
        match op.outcome {
            Outcome::Ok(_) => report.acknowledged += 1,
            Outcome::Unknown(_) => report.unknown += 1,
            Outcome::Fail(_) => report.failed += 1,
        }
    }
    match checks::convergence::check(cluster, Duration::from_secs(60)).await {
        Ok(took) => report.converged_after = took,
        Err(v) => report.violations.push(v),
    }
    let (lost, checked) = checks::lost_writes::check(cluster, &history).await?;
    report.lost = lost;
    report.writes_checked = checked;
    report.violations.extend(checks::revocation::check(&history, s.max_staleness.as_nanos() as u64));
    let (violations, inconclusive) = checks::linearizable::check(&history, SEARCH_BUDGET);
    report.violations.extend(violations);
    report.inconclusive = inconclusive;
    let (violations, retried) = checks::exactly_once::check(cluster, &history).await?;
    report.violations.extend(violations);
    report.retried_creates = retried;
    if let Some(large) = &large {
        report.large = (large.acknowledged.len(), large.not_acknowledged);
        report.violations.extend(checks::large_entries::check(cluster, large).await?);
    }
    report.failover_ms = failover(&history, &kills);
    report.verify_available = availability(&history, &windows);
    Ok(report)
}

/// Per leader kill: time to the first acknowledged write invoked after it.
fn failover(history: &[Op], kills: &[u64]) -> Vec<u64> {
    kills
        .iter()
        .filter_map(|&k| {
            history
                .iter()
                .filter(|o| o.kind.is_write() && o.invoke >= k)
                .filter(|o| matches!(o.ok(), Some(Value::Created(_) | Value::Done)))
                .map(|o| o.complete - k)
                .min()
                .map(|ns| ns / 1_000_000)
        })
        .collect()
}

/// Verifications sent to majority-side nodes while a fault held: how many
/// got an answer other than 503 (`answered`), of how many.
fn availability(history: &[Op], windows: &[Window]) -> (usize, usize) {
    let mut asked = 0;
    let mut answered = 0;
    for op in history.iter().filter(|o| matches!(o.kind, Kind::VerifyKey | Kind::VerifySession)) {
        let during =
            windows.iter().any(|w| op.invoke >= w.start && op.invoke <= w.end && w.majority.contains(&op.node));
        if !during {
            continue;
        }
        asked += 1;
        if matches!(op.ok(), Some(Value::Status(s)) if *s != 503) {
            answered += 1;
        }
    }
    (answered, asked)
}

/// A table of reports, one row per run (Markdown).
pub fn table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| scenario | nodes | seed | ops | acknowledged | unknown | lost | violations | inconclusive | large entries acknowledged | failover p50 / p99 | verify availability (majority, during faults) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let failover = match (r.failover(0.5), r.failover(0.99)) {
            (Some(a), Some(b)) => format!("{a} / {b} ms"),
            _ => "—".into(),
        };
        let avail =
            r.availability().map_or("—".into(), |a| format!("{:.2}% ({} checks)", a * 100.0, r.verify_available.1));
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |\n",
            r.scenario,
            r.nodes,
            r.seed,
            r.ops,
            r.acknowledged,
            r.unknown,
            r.lost.len(),
            r.violations.len(),
            r.inconclusive.len(),
            r.large.0,
            r.large.0 + r.large.1,
            failover,
            avail
        );
    }
    out
}
