//! Large valid entries beside the workload (issue 16): a writer that
//! proposes, through the Raft `Propose` RPC as any member does, batches of
//! audit records as large as a node makes them, several to an entry, so
//! every fault also meets entries near the size limit
//! (`gatehouse_domain::bounds::MAX_ENTRY_BYTES`). What it proposed and was
//! acknowledged is checked afterwards ([`crate::checks::large_entries`]):
//! every record is in the audit log, and the cluster still converges.

use std::time::Duration;

use gatehouse_domain::bounds::{take_within, BATCH_BYTES};
use gatehouse_domain::{Command, Payload};
use gatehouse_proto::control::ProposeRequest;
use gatehouse_proto::events::{AppendAudit, AuditEvent, CommandBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use gatehouse_cluster::Peers;

/// The audit action of every record the writer makes.
pub const ACTION: &str = "chaos.large";
/// Commands per proposal: together just under an entry's limit.
const COMMANDS: usize = 4;

/// What the writer proposed.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Proposals acknowledged: their resource and how many records each made.
    pub acknowledged: Vec<(String, usize)>,
    /// Proposals refused or whose answer was lost.
    pub not_acknowledged: usize,
}

/// One proposal: `COMMANDS` batch-size audit commands, every record naming
/// `resource`.
fn proposal(resource: &str, seq: u64) -> (CommandBatch, usize) {
    // Stamped now: a record from long ago would be pruned by retention.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let event = AuditEvent {
        at: now,
        action: ACTION.into(),
        outcome: "ok".into(),
        resource: resource.into(),
        detail: "x".repeat(16_000),
        ..Default::default()
    };
    let mut records = 0;
    let commands: Vec<Command> = (0..COMMANDS)
        .map(|i| {
            let mut events = vec![event.clone(); 100];
            let events = take_within(&mut events, BATCH_BYTES, usize::MAX);
            records += events.len();
            Command {
                proposed_at: now,
                request_id: format!("{resource}-{seq}-{i}"),
                payload: Some(Payload::AppendAudit(AppendAudit { events, dropped: 0, batch: 0 })),
                ..Default::default()
            }
        })
        .collect();
    (CommandBatch { commands }, records)
}

/// Proposes one large entry every `every` through a random node of
/// `nodes` (id, peer address, client address; the leader, when a follower
/// names it by its client address) until `stop` turns true.
pub async fn run(
    peers: Peers,
    nodes: Vec<(u64, String, String)>,
    seed: u64,
    every: Duration,
    stop: watch::Receiver<bool>,
) -> Written {
    let ids: Vec<u64> = nodes.iter().map(|(id, _, _)| *id).collect();
    let addr = |id: u64| nodes.iter().find(|(i, _, _)| *i == id).map(|(_, a, _)| a.clone()).unwrap_or_default();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1a46e);
    let mut written = Written::default();
    let mut seq = 0;
    while !*stop.borrow() {
        seq += 1;
        let resource = format!("large:{seed}:{seq}");
        let (batch, records) = proposal(&resource, seq);
        let mut node = ids[rng.gen_range(0..ids.len())];
        let mut acknowledged = false;
        // A follower refuses with the leader's address; one more try there.
        for _ in 0..2 {
            let Ok(mut client) = peers.control_client(&addr(node)) else { break };
            let mut req = tonic::Request::new(ProposeRequest { batch: Some(batch.clone()) });
            req.set_timeout(Duration::from_secs(10));
            match client.propose(req).await {
                Ok(r) => {
                    let results = r.into_inner().results;
                    acknowledged = results.len() == COMMANDS && results.iter().all(|r| r.code == 0);
                    break;
                }
                Err(s) => {
                    let leader = s.metadata().get(gatehouse_cluster::error::LEADER_METADATA);
                    let named = leader
                        .and_then(|l| l.to_str().ok())
                        .and_then(|leader| nodes.iter().find(|(_, peer, client)| peer == leader || client == leader))
                        .map(|(id, _, _)| *id);
                    match named {
                        Some(id) if id != node => node = id,
                        _ => break,
                    }
                }
            }
        }
        if acknowledged {
            written.acknowledged.push((resource, records));
        } else {
            written.not_acknowledged += 1;
        }
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proposal_is_within_every_bound_and_near_the_entry_limit() {
        let (batch, records) = proposal("large:1:1", 1);
        assert!(gatehouse_cluster::propose::bounded(&batch.commands).is_ok());
        // One more command of the same size would not fit an entry.
        let mut more = batch.commands.clone();
        more.push(batch.commands[0].clone());
        assert!(gatehouse_cluster::propose::bounded(&more).is_err());
        assert!(records >= COMMANDS * 60, "{records} records");
    }
}
