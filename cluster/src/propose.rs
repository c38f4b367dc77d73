//! Proposing from any node. On the leader a proposal joins the batcher's
//! next entry; a follower that knows its leader sends it there at once (one
//! `ControlService.Propose` through [`crate::forward`]), and the answer waits
//! until this node applied the same index (read your writes). With no leader known, the local batcher
//! asks Raft, which names the leader once one is elected.
//!
//! ```text
//!   propose(commands) ──► leader here: batcher ──► raft.client_write ──► results
//!          │ leader elsewhere                            ▲
//!          └──► ControlService.Propose on the leader (cluster secret), then wait
//!               until this node applied the same index (read your writes)
//! ```
//!
//! Every command gets a request id before it is first sent, so retries
//! after a timeout or a leader change are applied once.

use std::time::{Duration, Instant};

use gatehouse_domain::{Command, CommandBatch, CommandResult};
use gatehouse_proto::control::control_service_client::ControlServiceClient;
use gatehouse_proto::control::ProposeRequest;
use openraft::error::{ClientWriteError, RaftError};

use gatehouse_storage::Member;

use crate::forward::Credentials;
use crate::peers::MAX_RAFT_MESSAGE;
use crate::{Cluster, ClusterError};

/// How long a write may wait for a leader before it fails with `unavailable`.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// The first and the longest wait between two attempts at a write.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_millis(200);

/// What a committed proposal returned.
#[derive(Debug, Clone)]
pub struct Applied {
    pub results: Vec<CommandResult>,
    pub log_index: u64,
}

impl Cluster {
    /// Proposes one command and returns its result, or the refusal it stands for.
    pub async fn propose_one(&self, cmd: Command) -> Result<CommandResult, ClusterError> {
        only_result(self.propose(vec![cmd]).await?)
    }

    /// Proposes commands as one log entry, from any node. Returns once the
    /// entry is applied on the leader and on this node.
    #[tracing::instrument(level = "info", name = "propose", skip_all, fields(commands = commands.len(), node_id = self.inner.id))]
    pub async fn propose(&self, commands: Vec<Command>) -> Result<Applied, ClusterError> {
        let started = Instant::now();
        let result = self.propose_inner(commands).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ClusterError::Unavailable { .. }) => "unavailable",
            Err(_) => "error",
        };
        self.inner.metrics.proposals.get_or_create(&crate::metrics::OutcomeLabels { outcome }).inc();
        self.inner.metrics.proposal_duration.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn propose_inner(&self, commands: Vec<Command>) -> Result<Applied, ClusterError> {
        bounded(&commands)?;
        crate::version::gated(&self.inner.view.read(), &commands)?;
        let batch = CommandBatch { commands };
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut leader_hint: Option<String> = None;
        let mut changes = self.inner.raft.metrics();
        let mut backoff = FIRST_RETRY;
        loop {
            // A node whose Raft stopped keeps the leader it last knew in its
            // metrics; it has nothing to forward for (its view is dead).
            if changes.borrow_and_update().running_state.is_err() {
                tracing::error!("raft stopped");
                return Err(ClusterError::Unavailable { leader: leader_hint });
            }
            // A follower that knows its leader sends the write there at
            // once: its own batcher would only learn the same from Raft.
            let leader = match self.leader() {
                Some((id, member)) if id != self.inner.id => Some(member),
                _ => {
                    // A leader cut off from its quorum never commits: the
                    // deadline bounds the local write too (the outcome is then
                    // unknown; a retry with the same request ids is applied once).
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let write = self.inner.batcher.write(batch.commands.clone());
                    let Ok(written) = tokio::time::timeout(remaining, write).await else {
                        tracing::warn!("write not committed within the deadline");
                        return Err(ClusterError::Unavailable { leader: leader_hint });
                    };
                    match written {
                        Ok((results, log_index)) => return Ok(Applied { results, log_index }),
                        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f.leader_node,
                        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                            tracing::error!(error = %e, "membership error on a normal write");
                            return Err(ClusterError::Internal);
                        }
                        Err(RaftError::Fatal(e)) => {
                            tracing::error!(error = %e, "raft stopped");
                            return Err(ClusterError::Unavailable { leader: leader_hint });
                        }
                    }
                }
            };
            if let Some(member) = leader {
                // Clients are told where they can reach the leader themselves.
                leader_hint = Some(member.client_addr().to_string());
                match self.forward(&member, &batch, deadline).await {
                    Ok(applied) => return Ok(applied),
                    Err(e) => tracing::debug!(leader = %member, error = %e, "forwarding failed; retrying"),
                }
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Unavailable { leader: leader_hint });
            }
            // No leader yet (an election is running), or it did not answer:
            // try again at the next change of leader or after a backoff
            // (50, 100, then 200 ms), never in a tight loop.
            let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
            let known = changes.borrow_and_update().current_leader;
            let _ = tokio::time::timeout(wait, changes.wait_for(|m| m.current_leader != known)).await;
            backoff = (backoff * 2).min(LAST_RETRY);
        }
    }

    async fn forward(&self, leader: &Member, batch: &CommandBatch, deadline: Instant) -> Result<Applied, ClusterError> {
        self.inner.metrics.proposals_forwarded.inc();
        let message = ProposeRequest { batch: Some(batch.clone()) };
        let timeout = deadline.saturating_duration_since(Instant::now());
        let resp = self
            .to_leader(leader, message, Credentials::Cluster, timeout, async |ch, req| {
                ControlServiceClient::new(ch)
                    .max_decoding_message_size(MAX_RAFT_MESSAGE)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE)
                    .propose(req)
                    .await
            })
            .await
            .map_err(|s| ClusterError::from_status(&s))?;
        // Read your writes: answer only once this node shows the write too.
        let wait = deadline.saturating_duration_since(Instant::now());
        if !self.inner.view.wait_applied(resp.log_index, wait).await {
            tracing::warn!(index = resp.log_index, "write committed but not yet applied here");
        }
        Ok(Applied { results: resp.results, log_index: resp.log_index })
    }

    /// Writes commands on this node's Raft, grouped with concurrent writes
    /// (check them with [`bounded`] first)
    /// into shared entries. Fails with `ForwardToLeader` on a follower.
    pub(crate) async fn write_local(&self, commands: Vec<Command>) -> crate::batcher::Written {
        self.inner.batcher.write(commands).await
    }
}

/// The result of a one-command proposal, or the refusal it stands for.
pub(crate) fn only_result(applied: Applied) -> Result<CommandResult, ClusterError> {
    let result = applied.results.into_iter().next().ok_or(ClusterError::Internal)?;
    match gatehouse_domain::result::refusal(&result) {
        Ok(None) => Ok(result),
        Ok(Some(refused)) => Err(ClusterError::Refused(refused)),
        Err(code) => {
            tracing::error!(code, "a result code this version does not know");
            Err(ClusterError::Internal)
        }
    }
}

/// Whether one proposal's commands are within their bounds
/// (`gatehouse_domain::bounds`): each command, and all of them together
/// within one entry. Checked before anything is queued, so nothing over
/// a limit reaches the log.
pub fn bounded(commands: &[Command]) -> Result<(), ClusterError> {
    for c in commands {
        gatehouse_domain::bounds::check(c)?;
    }
    let total = gatehouse_domain::bounds::entry_bytes(commands);
    if total > gatehouse_domain::bounds::MAX_ENTRY_BYTES {
        return Err(ClusterError::Refused(gatehouse_domain::ApplyError::Invalid(format!(
            "{total} bytes of commands in one proposal is over the entry limit of {}",
            gatehouse_domain::bounds::MAX_ENTRY_BYTES
        ))));
    }
    Ok(())
}
