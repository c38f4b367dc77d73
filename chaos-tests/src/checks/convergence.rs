//! Convergence: once the faults heal and the clients stop, every node
//! reaches the same applied index with the same state digest (a SHA-256 over
//! every table, `RaftService/StateDigest`).

use std::time::{Duration, Instant};

use gatehouse_proto::control::StateDigestRequest;

use crate::cluster::ProcCluster;

/// Waits up to `timeout` for agreement; the violation if it never comes.
/// Returns how long agreement took.
pub async fn check(cluster: &ProcCluster, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let mut seen = Vec::new();
        for id in cluster.nodes.keys() {
            let digest = match cluster.control_client(*id) {
                Ok(mut c) => c.state_digest(StateDigestRequest {}).await.map(|r| r.into_inner()),
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            match digest {
                Ok(d) => seen.push((*id, d.applied_index, hex::encode(&d.sha256[..8]))),
                Err(e) => seen.push((*id, 0, format!("unreachable: {}", e.message()))),
            }
        }
        let agreed = seen.windows(2).all(|w| (w[0].1, &w[0].2) == (w[1].1, &w[1].2)) && seen[0].1 > 0;
        if agreed {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(format!("nodes did not converge within {timeout:?}: (node, applied, digest) {seen:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
