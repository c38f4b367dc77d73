//! Benchmark scenarios. Each reports throughput and latency percentiles from
//! an HDR histogram, measured by the client.

use std::time::{Duration, Instant};

use gatehouse_domain::{Command, CommandBatch, Payload};
use gatehouse_proto::events::CreateUser;
use gatehouse_proto::raft::ProposeRequest;
use hdrhistogram::Histogram;

use crate::cluster::ProcCluster;

/// One measured step of a scenario.
#[derive(Debug, Clone)]
pub struct Figures {
    pub concurrency: usize,
    pub ok: u64,
    pub errors: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Figures {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "concurrency": self.concurrency, "ok": self.ok, "errors": self.errors,
            "per_second": self.per_second, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
        })
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// `writes`: `writers` clients each propose one command at a time (one Raft
/// entry per command) to the leader for `duration`; every acknowledged
/// proposal is a commit replicated to a majority and applied.
pub async fn writes(cluster: &ProcCluster, writers: usize, duration: Duration, run: &str) -> anyhow::Result<Figures> {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = cluster.raft_client(leader)?;
        let run = run.to_string();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let cmd = Command {
                    proposed_at: gatehouse_api::cluster::now_ms(),
                    origin_node: 0,
                    request_id: gatehouse_api::credentials::new_id(),
                    traceparent: String::new(),
                    payload: Some(Payload::CreateUser(CreateUser {
                        user_id: gatehouse_api::credentials::new_id(),
                        username: format!("{run}-w{w}-{seq}"),
                        email: format!("w{w}-{seq}@bench.example"),
                        password_hash: String::new(),
                        roles: vec!["viewer".into()],
                    })),
                };
                let t = Instant::now();
                let req = ProposeRequest { batch: Some(CommandBatch { commands: vec![cmd] }) };
                match client.propose(req).await {
                    Ok(r) if r.get_ref().results.first().is_some_and(|r| r.code == 0) => {
                        ok += 1;
                        hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                    }
                    _ => errors += 1,
                }
            }
            (hist, ok, errors)
        }));
    }
    let mut hist = histogram();
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await?;
        hist.add(h).ok();
        ok += o;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Figures {
        concurrency: writers,
        ok,
        errors,
        per_second: ok as f64 / secs,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}
