//! Handing leadership to another voter, and the election pauses that make
//! it possible.

use std::time::{Duration, Instant};

use gatehouse_storage::NodeId;

use crate::{Cluster, ClusterError};

/// Longest a leadership transfer holds writes back.
pub(crate) const TRANSFER_DEADLINE: Duration = Duration::from_secs(4);

/// Undoes a transfer's pause of this leader on every exit path.
struct Resume<'a>(&'a Cluster);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.inner.raft.runtime_config().heartbeat(true);
        self.0.inner.reads_held.send_replace(false);
        self.0.inner.hold.send_replace(false);
    }
}

impl Cluster {
    /// Stops this node from starting elections for `duration` (0 resumes at
    /// once). A later call replaces an earlier one; the pause always ends by
    /// itself, so a transfer that dies half-way cannot leave a cluster
    /// unable to elect.
    pub fn pause_elections(&self, duration: Duration) {
        use std::sync::atomic::Ordering;
        let generation = self.inner.election_pause.fetch_add(1, Ordering::SeqCst) + 1;
        if duration.is_zero() {
            self.inner.raft.runtime_config().elect(true);
            self.inner.elections_paused.store(false, Ordering::Release);
            return;
        }
        self.inner.elections_paused.store(true, Ordering::Release);
        self.inner.raft.runtime_config().elect(false);
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            if me.inner.election_pause.load(Ordering::SeqCst) == generation {
                me.inner.raft.runtime_config().elect(true);
                me.inner.elections_paused.store(false, Ordering::Release);
            }
        });
    }

    /// Hands leadership to `target` (this node must lead).
    ///
    /// openraft 0.9 has no transfer of its own, and a follower refuses votes
    /// while its leader lease (the longest election timeout) runs. So: keep
    /// every other voter from campaigning, stop writes and heartbeats here,
    /// wait until `target` holds every entry, let the leases lapse, and ask
    /// `target` to campaign. It wins, having the longest log and the only
    /// candidacy. Writes queued meanwhile go on to the new leader.
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(NodeId, u64), ClusterError> {
        use gatehouse_proto::control::CampaignRequest;
        let metrics = self.inner.raft.metrics().borrow().clone();
        if metrics.current_leader == Some(target) {
            return Ok((target, metrics.current_term));
        }
        let membership = metrics.membership_config.membership().clone();
        if !membership.voter_ids().any(|v| v == target) {
            return Err(ClusterError::FailedPrecondition(format!("node {target} is not a voter")));
        }
        let target_addr = membership.get_node(&target).map(|n| n.addr.clone()).ok_or(ClusterError::Internal)?;
        let lease = Duration::from_millis(self.inner.raft.config().election_timeout_max);
        let deadline = Instant::now() + TRANSFER_DEADLINE;

        // Nobody but the target may campaign until it leads (or the pause
        // ends). Paused before the heartbeats stop, so that no voter's
        // silence starts while it may still campaign.
        let pause = lease * 3 + TRANSFER_DEADLINE;
        self.pause_elections(pause);
        let others: Vec<String> = membership
            .nodes()
            .filter(|(id, _)| **id != target && **id != self.inner.id)
            .map(|(_, n)| n.addr.clone())
            .collect();
        self.pause_peer_elections(&others, pause).await;

        self.inner.hold.send_replace(true);
        self.inner.raft.runtime_config().heartbeat(false);
        let _resume = Resume(self);
        let mut rx = self.inner.raft.metrics();
        let led = async {
            // Wait for the target to hold everything this leader has.
            let holds_all = |m: &openraft::RaftMetrics<NodeId, gatehouse_storage::Member>| {
                m.replication.as_ref().and_then(|r| r.get(&target).copied().flatten()).map(|l| l.index)
                    >= m.last_log_index
            };
            let caught_up =
                tokio::time::timeout_at(deadline.into(), rx.wait_for(holds_all)).await.is_ok_and(|r| r.is_ok());
            if !caught_up {
                return Err(ClusterError::FailedPrecondition(format!(
                    "node {target} has not caught up with the leader"
                )));
            }
            // The followers' leases run from their last contact with us, and
            // a read-index confirmation would be one.
            self.inner.reads_held.send_replace(true);
            tokio::time::sleep(lease + Duration::from_millis(50)).await;
            let mut client = self.inner.peers.control_client(&target_addr)?;
            let mut req = tonic::Request::new(CampaignRequest {});
            req.set_timeout(Duration::from_millis(500));
            client.campaign(req).await.map_err(|s| ClusterError::from_status(&s))?;
            let led = tokio::time::timeout_at(deadline.into(), rx.wait_for(|m| m.current_leader == Some(target))).await;
            match led {
                Ok(Ok(m)) => Ok(m.current_term),
                _ => Err(ClusterError::Unavailable { leader: self.leader().map(|l| l.1.client_addr().to_string()) }),
            }
        }
        .await;

        // Everyone may campaign again, whatever happened.
        self.pause_elections(Duration::ZERO);
        self.pause_peer_elections(&others, Duration::ZERO).await;
        let term = led?;
        tracing::info!(to = target, term, "leadership transferred");
        Ok((target, term))
    }

    /// Asks the peers at `addrs` to pause elections for `duration` (zero
    /// resumes them); best effort, as their pauses end by themselves.
    async fn pause_peer_elections(&self, addrs: &[String], duration: Duration) {
        use gatehouse_proto::control::PauseElectionsRequest;
        let duration_ms = duration.as_millis() as u64;
        futures::future::join_all(addrs.iter().map(|addr| async move {
            let Ok(mut client) = self.inner.peers.control_client(addr) else { return };
            let mut req = tonic::Request::new(PauseElectionsRequest { duration_ms });
            req.set_timeout(Duration::from_millis(500));
            if let Err(e) = client.pause_elections(req).await {
                tracing::warn!(peer = %addr, error = %e, duration_ms, "could not pause or resume elections on a peer");
            }
        }))
        .await;
    }
}
