//! Proving freshness: a follower or learner asks the leader for a read index
//! every `max_staleness / PROBES_PER_BOUND`; each answer applied here is a
//! proof timed from the ask (see [`crate::freshness`]).

use std::time::Duration;

use crate::Cluster;

impl Cluster {
    /// On a follower or learner, asks the leader for a read index every
    /// `max_staleness / PROBES_PER_BOUND`: each applied answer is a proof of
    /// freshness timed from the ask (see [`crate::freshness::Freshness`]). Quiet on a leader.
    pub(crate) fn proving_freshness(self) -> Self {
        self.every("freshness.probe", self.probe_every(), |cluster| async move {
            let state = cluster.inner.raft.metrics().borrow().state;
            if matches!(state, openraft::ServerState::Follower | openraft::ServerState::Learner) {
                // Each probe on its own: one stuck on a leader that died
                // must not hold back the next, which may reach its successor.
                tokio::spawn(async move { cluster.probe().await });
            }
            true
        });
        self
    }

    fn probe_every(&self) -> Duration {
        (self.inner.max_staleness / crate::freshness::PROBES_PER_BOUND).max(Duration::from_millis(10))
    }

    /// Asks for a read index and, once it is applied here, records the proof
    /// and tells [`Cluster::ensure_fresh`] waiters.
    async fn probe(&self) {
        let inner = &self.inner;
        let ask = async { self.read_index().await.ok() };
        inner.reads.probe(&inner.freshness, &inner.view, inner.max_staleness, ask).await;
    }

    /// Starts a probe now unless one started this way is still running.
    pub(crate) fn kick_probe(&self) {
        if !self.inner.reads.take_kick() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.probe().await;
            me.inner.reads.kick_done();
        });
    }

    /// [`Cluster::is_fresh`], or, when the last proof has aged out, whether a
    /// new one arrives within `max_staleness / PROBES_PER_BOUND`. Waiters
    /// share one probe, so a node cut off from its leader answers every
    /// caller after that short wait instead of queueing them.
    pub async fn ensure_fresh(&self) -> bool {
        self.inner.reads.ensure_fresh(|| self.is_fresh(), self.probe_every(), || self.kick_probe()).await
    }

    /// Whether this node may answer for the cluster now (see [`crate::freshness::Freshness`]).
    pub fn is_fresh(&self) -> bool {
        self.inner.freshness.is_fresh(&self.inner.raft, self.inner.view.applied_index(), self.inner.max_staleness)
    }
}
