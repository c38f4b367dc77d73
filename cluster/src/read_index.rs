//! Reads that see every write committed before they arrived: the leader's
//! commit index, confirmed with a quorum (openraft's `ensure_linearizable`),
//! and catching this node up to it.

use std::time::Duration;

use openraft::error::RaftError;

use crate::transfer::TRANSFER_DEADLINE;
use crate::{Cluster, ClusterError};

impl Cluster {
    /// Brings this node up to what the leader had committed when the call
    /// arrived (read your writes); false if that cannot be shown within `wait`.
    pub async fn catch_up(&self, wait: Duration) -> bool {
        let inner = &self.inner;
        inner.reads.catch_up(&inner.freshness, &inner.view, wait, || async { self.read_index().await.ok() }).await
    }

    /// The leader's commit index after it confirmed leadership with a quorum.
    /// A node that applied up to it serves linearizable reads. Asked here
    /// if this node leads, of the leader otherwise (whose
    /// [`Cluster::leader_read_index`] answers).
    pub async fn read_index(&self) -> Result<u64, ClusterError> {
        match self.leader_read_index().await {
            Err(NotLeader::Follows(leader)) => {
                let mut client = self.inner.peers.control_client(&leader.addr)?;
                let mut req = tonic::Request::new(gatehouse_proto::control::ReadIndexRequest {});
                req.set_timeout(Duration::from_secs(2));
                let r = client.read_index(req).await.map_err(|s| ClusterError::from_status(&s))?;
                Ok(r.into_inner().index)
            }
            Err(NotLeader::Unavailable) => {
                Err(ClusterError::Unavailable { leader: self.leader().map(|l| l.1.client_addr().to_string()) })
            }
            Ok(index) => Ok(index),
        }
    }

    /// The read index as the leader gives it, for itself or for a follower
    /// that asked (`RaftService.ReadIndex`): the one place it is confirmed.
    /// While a leadership transfer waits out the followers' leader leases
    /// (after the target caught up), nothing is confirmed: the
    /// confirmation's heartbeats would renew those leases, and the target
    /// could not win. So it waits until that window ends (well under a
    /// second: a lease, the campaign, the election; at most
    /// [`TRANSFER_DEADLINE`]); by then this node has usually stepped down and
    /// names the new leader instead. Before that window (while the target
    /// catches up) reads are confirmed as usual, so followers stay fresh.
    pub(crate) async fn leader_read_index(&self) -> Result<u64, NotLeader> {
        let mut held = self.inner.reads_held.subscribe();
        let _ = tokio::time::timeout(TRANSFER_DEADLINE, held.wait_for(|held| !*held)).await;
        match self.inner.raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(f.leader_node.map_or(NotLeader::Unavailable, NotLeader::Follows))
            }
            Err(e) => {
                tracing::debug!(error = %e, "read index unavailable");
                Err(NotLeader::Unavailable)
            }
        }
    }

    /// Whether this leader holds read-index confirmations back for a
    /// leadership transfer right now.
    pub fn holding_reads(&self) -> bool {
        *self.inner.reads_held.borrow()
    }
}

/// Why this node gave no read index of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotLeader {
    /// Another node leads, at this address.
    Follows(gatehouse_storage::Member),
    /// No leader is known, or Raft has stopped.
    Unavailable,
}
