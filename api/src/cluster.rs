//! The node's handle on the cluster: every transport goes through it.
//!
//! ```text
//!   propose(commands) ──► local raft.client_write ──► applied on leader ──► results
//!          │ not leader                 ▲
//!          └──► RaftService.Propose on the leader (cluster secret), then wait
//!               until this node applied the same index (read your writes)
//! ```
//!
//! Every command gets a request id before it is first sent, so retries
//! after a timeout or a leader change are applied once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_domain::{Command, CommandBatch, CommandResult, Payload};
use gatehouse_proto::raft::ProposeRequest;
use gatehouse_storage::types::Raft;
use gatehouse_storage::{NodeId, StateView};
use openraft::error::{ClientWriteError, RaftError};

use crate::batcher::Batcher;
use crate::freshness::Freshness;
use crate::identity::LastUse;
use crate::peers::Peers;
use crate::ApiError;

/// How long a write may wait for a leader before it fails with `unavailable`.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// What a committed proposal returned.
#[derive(Debug, Clone)]
pub struct Applied {
    pub results: Vec<CommandResult>,
    pub log_index: u64,
}

/// Shared by every server of a node; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    /// One read-index request at a time; `last_read` (when it was asked, the
    /// index) serves every caller that arrived before it was asked.
    read_gate: tokio::sync::Mutex<()>,
    last_read: std::sync::Mutex<Option<(Instant, u64)>>,
    id: NodeId,
    raft: Raft,
    batcher: Batcher,
    view: StateView,
    peers: Peers,
    freshness: Freshness,
    /// Uses of keys and sessions seen here, flushed to the log periodically.
    last_use: LastUse,
    max_staleness: Duration,
}

/// Unix milliseconds now: the `proposed_at` stamp and the verification clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    pub fn new(id: NodeId, raft: Raft, view: StateView, peers: Peers, max_staleness: Duration) -> Self {
        Cluster {
            inner: Arc::new(Inner {
                read_gate: tokio::sync::Mutex::new(()),
                last_read: std::sync::Mutex::new(None),
                id,
                batcher: Batcher::start(raft.clone()),
                raft,
                view,
                peers,
                freshness: Freshness::default(),
                last_use: LastUse::default(),
                max_staleness,
            }),
        }
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn view(&self) -> &StateView {
        &self.inner.view
    }

    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    pub fn freshness(&self) -> &Freshness {
        &self.inner.freshness
    }

    pub fn last_use(&self) -> &LastUse {
        &self.inner.last_use
    }

    /// Whether this node may answer for the cluster now (see [`Freshness`]).
    pub fn is_fresh(&self) -> bool {
        self.inner.freshness.is_fresh(&self.inner.raft, self.inner.view.applied_index(), self.inner.max_staleness)
    }

    /// The current leader's id and address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.inner.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    /// A command stamped by this node, with a fresh request id.
    pub fn command(&self, payload: Payload) -> Command {
        Command {
            proposed_at: now_ms(),
            origin_node: self.inner.id,
            request_id: crate::credentials::new_id(),
            traceparent: String::new(),
            payload: Some(payload),
        }
    }

    /// Proposes one command and returns its result, or the error it stands for.
    pub async fn propose_one(&self, cmd: Command) -> Result<CommandResult, ApiError> {
        let applied = self.propose(vec![cmd]).await?;
        let result = applied.results.into_iter().next().ok_or(ApiError::Internal)?;
        ApiError::check(&result)?;
        Ok(result)
    }

    /// Proposes commands as one log entry, from any node. Returns once the
    /// entry is applied on the leader and on this node.
    #[tracing::instrument(level = "debug", skip_all, fields(commands = commands.len()))]
    pub async fn propose(&self, commands: Vec<Command>) -> Result<Applied, ApiError> {
        let batch = CommandBatch { commands };
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut leader_hint: Option<String> = None;
        loop {
            match self.inner.batcher.write(batch.commands.clone()).await {
                Ok((results, log_index)) => return Ok(Applied { results, log_index }),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let Some(node) = f.leader_node {
                        leader_hint = Some(node.addr.clone());
                        match self.forward(&node.addr, &batch, deadline).await {
                            Ok(applied) => return Ok(applied),
                            Err(e) => tracing::debug!(leader = %node.addr, error = %e, "forwarding failed; retrying"),
                        }
                    }
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    tracing::error!(error = %e, "membership error on a normal write");
                    return Err(ApiError::Internal);
                }
                Err(RaftError::Fatal(e)) => {
                    tracing::error!(error = %e, "raft stopped");
                    return Err(ApiError::Unavailable { leader: leader_hint });
                }
            }
            if Instant::now() >= deadline {
                return Err(ApiError::Unavailable { leader: leader_hint });
            }
            // No leader yet (an election is running): wait for the next change.
            let mut metrics = self.inner.raft.metrics();
            let _ = tokio::time::timeout(Duration::from_millis(100), metrics.changed()).await;
        }
    }

    async fn forward(&self, leader: &str, batch: &CommandBatch, deadline: Instant) -> Result<Applied, ApiError> {
        let mut client = self.inner.peers.raft_client(leader)?;
        let mut req = tonic::Request::new(ProposeRequest { batch: Some(batch.clone()) });
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let resp = client.propose(req).await.map_err(|s| ApiError::from_status(&s))?.into_inner();
        // Read your writes: answer only once this node shows the write too.
        let wait = deadline.saturating_duration_since(Instant::now());
        if !self.inner.view.wait_applied(resp.log_index, wait).await {
            tracing::warn!(index = resp.log_index, "write committed but not yet applied here");
        }
        Ok(Applied { results: resp.results, log_index: resp.log_index })
    }

    /// Writes commands on this node's Raft, grouped with concurrent writes
    /// into shared entries. Fails with `ForwardToLeader` on a follower.
    pub async fn write_local(&self, commands: Vec<Command>) -> crate::batcher::Written {
        self.inner.batcher.write(commands).await
    }

    /// Brings this node up to what the leader had committed when the call
    /// arrived (read your writes); false if that cannot be shown within `wait`.
    pub async fn catch_up(&self, wait: Duration) -> bool {
        let arrived = Instant::now();
        let index = {
            let _one_at_a_time = self.inner.read_gate.lock().await;
            let reuse = *self.inner.last_read.lock().unwrap_or_else(|p| p.into_inner());
            match reuse {
                Some((asked, index)) if asked >= arrived => index,
                _ => {
                    let asked = Instant::now();
                    match tokio::time::timeout(wait, self.read_index()).await {
                        Ok(Ok(index)) => {
                            *self.inner.last_read.lock().unwrap_or_else(|p| p.into_inner()) = Some((asked, index));
                            index
                        }
                        _ => return false,
                    }
                }
            }
        };
        self.inner.view.wait_applied(index, wait.saturating_sub(arrived.elapsed())).await
    }

    /// The leader's commit index after it confirmed leadership with a quorum.
    /// A node that applied up to it serves linearizable reads.
    pub async fn read_index(&self) -> Result<u64, ApiError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                let addr = f.leader_node.map(|n| n.addr).ok_or(ApiError::Unavailable { leader: None })?;
                let mut client = self.inner.peers.raft_client(&addr)?;
                let mut req = tonic::Request::new(gatehouse_proto::raft::ReadIndexRequest {});
                req.set_timeout(Duration::from_secs(2));
                let r = client.read_index(req).await.map_err(|s| ApiError::from_status(&s))?;
                Ok(r.into_inner().index)
            }
            Err(e) => {
                tracing::debug!(error = %e, "read index unavailable");
                Err(ApiError::Unavailable { leader: self.leader().map(|l| l.1) })
            }
        }
    }
}
