//! What a benchmark step measured: throughput, errors and latency
//! percentiles from the client tasks' HDR histograms, merged.

use std::time::Instant;

use hdrhistogram::Histogram;

/// One measured step of a scenario.
#[derive(Debug, Clone)]
pub struct Figures {
    pub concurrency: usize,
    pub ok: u64,
    pub errors: u64,
    /// Of the errors, answers 429 (rate limited).
    pub limited: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU seconds the serving processes used during the step (the cluster's
    /// nodes, or the one process the step loads), where the scenario measured
    /// it (a steadier comparison than throughput on a shared machine).
    pub node_cpu_s: Option<f64>,
    /// The p99 the serving node measured itself (an upper bound, see
    /// [`NodeTimings`]), where the scenario read it.
    pub node_p99_ms: Option<f64>,
}

impl Figures {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "concurrency": self.concurrency, "ok": self.ok, "errors": self.errors, "limited": self.limited,
            "per_second": self.per_second, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "node_cpu_s": self.node_cpu_s, "node_p99_ms_at_most": self.node_p99_ms,
        })
    }
}

/// One client task's latency histogram, successes, failures, and 429s among them.
pub(crate) type TaskFigures = (Histogram<u64>, u64, u64, u64);

/// Merges the client tasks' figures into one step's result.
pub(crate) async fn merge(
    tasks: Vec<tokio::task::JoinHandle<TaskFigures>>,
    started: Instant,
    concurrency: usize,
) -> anyhow::Result<Figures> {
    let mut hist = histogram();
    let (mut ok, mut errors, mut limited) = (0, 0, 0);
    for t in tasks {
        let (h, o, e, l) = t.await?;
        hist.add(h).ok();
        ok += o;
        errors += e;
        limited += l;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Figures {
        concurrency,
        ok,
        errors,
        limited,
        per_second: ok as f64 / secs,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        node_cpu_s: None,
        node_p99_ms: None,
    })
}

/// A latency histogram in microseconds, from 1 µs to a minute.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}
