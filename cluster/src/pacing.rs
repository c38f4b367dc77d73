//! The election pacer's loop: a follower that has heard no leader for its
//! lease campaigns soon, as [`crate::election`] plans, once a majority
//! confirms the silence (pre-vote); openraft's own, slower election timer
//! stays as the fallback.

use std::time::{Duration, Instant};

use gatehouse_storage::NodeId;

use crate::Cluster;

/// How often the election pacer looks at the leader's silence.
const PACER_TICK: Duration = Duration::from_millis(20);

impl Cluster {
    /// Campaigns soon after the leader falls silent, as the [`crate::election`]
    /// pacer plans and a majority confirms; openraft's own, slower election
    /// timer stays as the fallback.
    pub(crate) fn pacing_elections(self) -> Self {
        let timing = self.election_timing();
        self.every("election.pacer", PACER_TICK, move |cluster| async move { cluster.pace(timing).await });
        self
    }

    /// One look at the leader's silence; campaigns if the pacer says so and
    /// a majority agrees. False once Raft has stopped.
    async fn pace(&self, timing: crate::election::Timing) -> bool {
        let Some((me, voters, leader)) = self.may_campaign() else {
            *self.inner.quiet_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            return true;
        };
        let heard = self.silent_since();
        let rank = || crate::election::rank(me, voters.iter().copied(), leader);
        let due = self.inner.pacer.lock().unwrap_or_else(|p| p.into_inner()).due(Instant::now(), heard, timing, rank);
        if !due || !self.majority_hears_no_leader(&voters, timing.stagger).await || self.may_campaign().is_none() {
            return true;
        }
        let silent_ms = heard.map(|h| h.elapsed().as_millis() as u64);
        tracing::info!(silent_ms, silent_leader = ?leader, "leader silent past its lease; campaigning");
        self.inner.metrics.raft_paced_campaigns.inc();
        self.inner.raft.trigger().elect().await.is_ok()
    }

    fn election_timing(&self) -> crate::election::Timing {
        let config = self.inner.raft.config();
        crate::election::Timing::new(
            Duration::from_millis(config.heartbeat_interval),
            Duration::from_millis(config.election_timeout_max),
        )
    }

    /// This node's id, the voters and the leader it last followed, when it
    /// is a voter that does not lead and whose elections are not paused.
    fn may_campaign(&self) -> Option<(NodeId, Vec<NodeId>, Option<NodeId>)> {
        use std::sync::atomic::Ordering;
        if self.inner.elections_paused.load(Ordering::Acquire) {
            return None;
        }
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let follows = matches!(m.state, openraft::ServerState::Follower | openraft::ServerState::Candidate);
        (follows && voters.contains(&self.inner.id)).then(|| (self.inner.id, voters, m.current_leader))
    }

    /// Since when this node has heard no leader: the later of its last
    /// contact and the last moment it could not campaign (it led, was a
    /// learner, or was paused), for a leader that steps down or a pause that
    /// ends has heard nobody for a while, and that is no silence of a
    /// leader. `None` before any contact in this process.
    fn silent_since(&self) -> Option<Instant> {
        let quiet = *self.inner.quiet_since.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.freshness.heard_at().map(|h| h.max(quiet))
    }

    /// Whether this node, as a voter that may campaign, has gone a whole
    /// leader lease without hearing a leader: what a peer's
    /// [`Cluster::majority_hears_no_leader`] asks. A node that never heard
    /// one counts from its start.
    pub fn leader_silent(&self) -> bool {
        let lease = Duration::from_millis(self.inner.raft.config().election_timeout_max);
        let since =
            self.silent_since().unwrap_or_else(|| *self.inner.quiet_since.lock().unwrap_or_else(|p| p.into_inner()));
        self.may_campaign().is_some() && since.elapsed() >= lease
    }

    /// Pre-vote: asks the other voters, within `wait`, whether they too have
    /// lost their leader. Only then may this node campaign; a voter that
    /// merely lost its own link to a live leader finds no majority and
    /// leaves the term, and so the leader, alone.
    async fn majority_hears_no_leader(&self, voters: &[NodeId], wait: Duration) -> bool {
        use gatehouse_proto::control::PreVoteRequest;
        let addrs: Vec<String> = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            voters
                .iter()
                .filter(|&&v| v != self.inner.id)
                .filter_map(|v| membership.get_node(v).map(|n| n.addr.clone()))
                .collect()
        };
        use futures::StreamExt;
        let mut answers: futures::stream::FuturesUnordered<_> = addrs
            .iter()
            .map(|addr| async move {
                let Ok(mut client) = self.inner.peers.control_client(addr) else { return false };
                let mut req = tonic::Request::new(PreVoteRequest {});
                req.set_timeout(wait);
                let answer = tokio::time::timeout(wait, client.pre_vote(req)).await;
                answer.is_ok_and(|r| r.is_ok_and(|r| r.into_inner().leader_silent))
            })
            .collect();
        // This node counts; stop as soon as a majority agrees, without
        // waiting for a dead peer's timeout.
        let mut silent = 1;
        while silent * 2 <= voters.len() {
            match answers.next().await {
                Some(true) => silent += 1,
                Some(false) => {}
                None => {
                    tracing::debug!(silent, voters = voters.len(), "leader silent here only; not campaigning");
                    return false;
                }
            }
        }
        true
    }

    /// This node refused its vote to the candidate `(term, id)` for having a
    /// shorter log. If the leader has been silent for its whole lease, this
    /// node is the better candidate: it campaigns at once (see
    /// [`crate::election::Pacer::outranked`]), unless it already campaigns
    /// with a vote that beats the candidate's.
    pub fn outranked_candidate(&self, term: u64, id: NodeId) {
        if !self.leader_silent() {
            return;
        }
        let (state, my_term) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        if state == openraft::ServerState::Candidate && (my_term, self.inner.id) > (term, id) {
            return;
        }
        let heard = self.silent_since();
        self.inner.pacer.lock().unwrap_or_else(|p| p.into_inner()).outranked(Instant::now(), heard);
    }
}
