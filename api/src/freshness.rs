//! Bounded staleness: may this node answer for the cluster right now?
//!
//! - A leader is fresh while a quorum acknowledged it within `max_staleness`
//!   (openraft reports `millis_since_quorum_ack`), or, right after its
//!   election and before the first acknowledgement, while its last proof as
//!   a follower is within `max_staleness`.
//! - During an election (a candidate, or a follower that granted a vote and
//!   has not heard from the winner yet) the last proof still counts: the
//!   bound is a time bound, whoever wins. A leader's quorum acknowledgements
//!   are proofs too, so a leader that steps down keeps serving until the
//!   new leader's first contact.
//! - A follower is fresh while it heard from the current leader within
//!   `max_staleness` AND had applied the commit index that leader reported
//!   then. Contacts are recorded by the Raft service on every accepted
//!   AppendEntries (heartbeats included).
//!
//! Past the bound a node refuses credentials (503): a revoked credential can
//! never be used for longer than `max_staleness` anywhere, even on the
//! minority side of a partition or on a node whose apply fell behind.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::ServerState;

use gatehouse_storage::types::Raft;

#[derive(Debug, Default)]
pub struct Freshness {
    inner: Mutex<Contacts>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Contacts {
    /// The latest accepted contact from a leader and the commit index it reported.
    last: Option<(Instant, u64)>,
    /// The latest contact whose reported commit index is known to be applied.
    fresh_at: Option<Instant>,
    /// The latest quorum acknowledgement seen while this node led.
    led_at: Option<Instant>,
}

impl Freshness {
    /// Records an accepted AppendEntries from the leader.
    pub fn record_contact(&self, leader_commit: u64, applied: u64) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.settle(applied);
        let now = Instant::now();
        c.last = Some((now, leader_commit));
        if applied >= leader_commit {
            c.fresh_at = Some(now);
        }
    }

    /// Records a quorum acknowledgement this node received as leader, so the
    /// proof outlives a step-down (a leadership transfer). Fed from Raft's
    /// metrics, off the verification path.
    pub fn record_led(&self, acked_at: Instant) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.led_at = c.led_at.max(Some(acked_at));
    }

    /// The commit index the leader last reported (0 before any contact).
    pub fn reported_commit(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).last.map_or(0, |(_, c)| c)
    }

    /// When this node was last provably up to date: as a follower that had
    /// applied what its leader reported, or as a leader a quorum acknowledged.
    fn last_proof(&self, applied: u64) -> Option<Instant> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.settle(applied);
        c.fresh_at.max(c.led_at)
    }

    /// How long ago this node last proved it was up to date (`None`: never).
    /// For a leader, its latest quorum acknowledgement counts.
    pub fn proof_age(&self, raft: &Raft, applied: u64) -> Option<Duration> {
        let quorum = raft.metrics().borrow().millis_since_quorum_ack.map(Duration::from_millis);
        let proof = self.last_proof(applied).map(|t| t.elapsed());
        match (quorum, proof) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the node may answer now.
    pub fn is_fresh(&self, raft: &Raft, applied: u64, max_staleness: Duration) -> bool {
        // Borrowed, not cloned: this runs on every verification.
        let rx = raft.metrics();
        let m = rx.borrow();
        let proven = || self.last_proof(applied).is_some_and(|t| t.elapsed() <= max_staleness);
        match m.state {
            // A leader elected a moment ago has no quorum acknowledgement
            // yet; until it has, its last proof as a follower still counts.
            ServerState::Leader => {
                m.millis_since_quorum_ack.is_some_and(|ms| Duration::from_millis(ms) <= max_staleness) || proven()
            }
            // During an election (a vote granted, no new leader heard from
            // yet) the last proof counts too: everything revoked since is
            // younger than the bound, whoever wins.
            ServerState::Follower | ServerState::Learner | ServerState::Candidate => proven(),
            ServerState::Shutdown => false,
        }
    }
}

impl Contacts {
    /// Once the last contact's commit index is applied, that contact counts.
    fn settle(&mut self, applied: u64) {
        if let Some((t, commit)) = self.last {
            if applied >= commit && self.fresh_at.is_none_or(|f| f < t) {
                self.fresh_at = Some(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_counts_only_once_its_commit_index_is_applied() {
        let f = Freshness::default();
        assert!(f.last_proof(0).is_none());
        f.record_contact(10, 5);
        assert!(f.last_proof(9).is_none(), "commit 10 not applied yet");
        assert!(f.last_proof(10).is_some());
        let first = f.last_proof(10).unwrap();
        // A later contact with a higher commit keeps the earlier proof until applied.
        f.record_contact(20, 10);
        assert_eq!(f.last_proof(15), Some(first));
        assert!(f.last_proof(20).unwrap() >= first);
    }
}
