//! Group commit for proposals: commands proposed concurrently on a node are
//! packed into one Raft entry (`CommandBatch`) instead of one entry each.
//!
//! ```text
//!   propose ─┐
//!   propose ─┼─► queue ─► batcher: take all queued (≤ MAX_BATCH commands, ≤ MAX_ENTRY_BYTES)
//!   propose ─┘              └─► raft.client_write(batch)  (≤ IN_FLIGHT at once)
//!                                  └─► results split back per caller
//! ```
//!
//! No timer: a batch is whatever queued while earlier batches were being
//! written, so a lone writer pays no extra latency and many writers share
//! entries, fsyncs and replication round trips. Each command keeps its own
//! request id and result, so idempotency is unchanged. Every command of a
//! batch is stamped with the leader's clock (`proposed_at`, the log time
//! apply works with), whatever the proposing node's clock says.

use std::sync::Arc;

use gatehouse_domain::bounds::MAX_ENTRY_BYTES;
use gatehouse_domain::{Command, CommandBatch, CommandResult};
use gatehouse_storage::types::{NodeId, Raft};
use gatehouse_storage::Member;
use openraft::error::{ClientWriteError, RaftError};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most commands in one entry.
pub const MAX_BATCH: usize = 1024;
/// Batches being written at once. Measured on 2 cores with 3 nodes
/// (docs/benchmarks.md): 1 in flight beats 2 and 8 at every writer count,
/// because a new batch then takes everything that queued during the
/// previous write (bigger entries, less per-entry work in Raft).
pub const IN_FLIGHT: usize = 1;

pub type WriteError = RaftError<NodeId, ClientWriteError<NodeId, Member>>;

/// Results of one caller's commands and the log index of their entry.
pub type Written = Result<(Vec<CommandResult>, u64), WriteError>;

struct Job {
    commands: Vec<Command>,
    reply: oneshot::Sender<Written>,
}

impl Job {
    /// Encoded bytes of the commands (a proposal's own total is bounded by
    /// `cluster::bounded`, so one job always fits an entry).
    fn size(&self) -> usize {
        gatehouse_domain::bounds::entry_bytes(&self.commands)
    }
}

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the batching task for `raft`; it ends when every handle is dropped.
    ///
    /// While `hold` is true no batch is proposed (a leadership transfer is
    /// underway); queued writes wait and then go to whoever leads.
    /// `entries` counts what it hands to Raft.
    pub fn start(raft: Raft, hold: tokio::sync::watch::Receiver<bool>, entries: Counter) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, hold, entries));
        Batcher { tx }
    }

    /// Writes `commands` (as part of some entry) and returns their results.
    pub async fn write(&self, commands: Vec<Command>) -> Written {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job { commands, reply }).is_err() {
            return Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        }
        rx.await.unwrap_or(Err(RaftError::Fatal(openraft::error::Fatal::Stopped)))
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Job>,
    mut hold: tokio::sync::watch::Receiver<bool>,
    entries: Counter,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // A job that did not fit the previous entry opens the next one.
    let mut next: Option<Job> = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        if hold.wait_for(|held| !*held).await.is_err() {
            return;
        }
        // Whatever queued while we waited for a slot rides along, up to
        // MAX_BATCH commands and MAX_ENTRY_BYTES.
        let mut size = first.size();
        let mut count = first.commands.len();
        let mut jobs = vec![first];
        while count < MAX_BATCH {
            let Ok(job) = rx.try_recv() else { break };
            let job_size = job.size();
            if size + job_size > MAX_ENTRY_BYTES {
                next = Some(job);
                break;
            }
            size += job_size;
            count += job.commands.len();
            jobs.push(job);
        }
        let (raft, entries) = (raft.clone(), entries.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut commands = Vec::with_capacity(count);
            let mut callers = Vec::with_capacity(jobs.len());
            for job in jobs {
                callers.push((job.commands.len(), job.reply));
                commands.extend(job.commands);
            }
            // Log time is the leader's clock, not each proposer's: apply
            // expires sessions, idempotency records and rate buckets by it,
            // so one node whose clock ran an hour fast would otherwise end
            // every session with less than an hour left, cluster-wide. (Only
            // a leader's write succeeds; a batch refused here is re-stamped by
            // the leader it is forwarded to.)
            let stamp = crate::clock::now_ms();
            for c in &mut commands {
                c.proposed_at = stamp;
            }
            entries.inc();
            match raft.client_write(CommandBatch { commands }).await {
                Ok(resp) => {
                    let index = resp.log_id.index;
                    let mut results = resp.data.into_iter();
                    for (n, reply) in callers {
                        let mine: Vec<CommandResult> = results.by_ref().take(n).collect();
                        let _ = reply.send(Ok((mine, index)));
                    }
                }
                Err(e) => {
                    for (_, reply) in callers {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
