//! Bounded staleness: may this node answer for the cluster right now?
//!
//! A proof of freshness is a moment `t` on this node's own clock such that
//! everything acknowledged anywhere before `t` is applied here. Only two
//! things give one, both timed from when this node (or, for a leader, its
//! heartbeat) *asked*, never from when an answer arrived, so a slow or
//! delayed link cannot stretch the bound:
//!
//! - A read index: this node asks the leader at `t`; the leader confirms its
//!   leadership with a quorum and answers with its commit index, which holds
//!   every write acknowledged before `t`. Once that index is applied here,
//!   `t` is a proof. Followers and learners ask on their own every
//!   `max_staleness / 8` ([`PROBES_PER_BOUND`]), and every catch-up
//!   (read-your-writes) counts too.
//! - A leader's quorum acknowledgement: openraft times it from when the
//!   acknowledged heartbeat was sent (`millis_since_quorum_ack`). Kept as a
//!   proof after a step-down, so a leader that hands over keeps serving until
//!   its proof ages out.
//!
//! A node answers while its latest proof is within `max_staleness`. During
//! an election the last proof still counts: everything revoked since is
//! younger than the bound, whoever wins. Past the bound a node refuses
//! credentials (503): a revoked credential can never be used for longer than
//! `max_staleness` after its revocation was acknowledged, anywhere, even on
//! the minority side of a partition, behind a slow link, or on a node whose
//! apply fell behind.
//!
//! AppendEntries still report the leader's commit index
//! ([`Freshness::reported_commit`], for status), but prove nothing: a
//! message sent before a revocation was acknowledged can arrive after it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::ServerState;

use gatehouse_storage::types::Raft;

/// Followers ask for a read index this many times per `max_staleness`, so a
/// proof is never older than an eighth of the bound plus a round trip while
/// the leader is reachable, and an election has the rest of the bound.
pub const PROBES_PER_BOUND: u32 = 8;

#[derive(Debug, Default)]
pub struct Freshness {
    inner: Mutex<Contacts>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Contacts {
    /// The commit index the leader last reported in an AppendEntries.
    reported_commit: u64,
    /// When this node last accepted a message from a leader (see [`crate::election`]).
    heard_at: Option<Instant>,
    /// The latest read index obtained: when it was asked, and the index.
    read: Option<(Instant, u64)>,
    /// The latest ask whose read index is known to be applied here.
    fresh_at: Option<Instant>,
    /// The latest quorum acknowledgement seen while this node led.
    led_at: Option<Instant>,
}

impl Freshness {
    /// Records the commit index an accepted AppendEntries reported, and when.
    /// Not a proof of anything (see the module docs).
    pub fn record_contact(&self, leader_commit: u64) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.reported_commit = leader_commit;
        c.heard_at = Some(Instant::now());
    }

    /// Records that this node accepted a message from its leader (an
    /// AppendEntries that conflicted, a snapshot) without a commit index.
    pub fn record_heard(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).heard_at = Some(Instant::now());
    }

    /// When this node last accepted a message from a leader (`None`: never,
    /// in this process).
    pub fn heard_at(&self) -> Option<Instant> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).heard_at
    }

    /// Records a read index: `index` held everything committed when this node
    /// asked for it at `asked`. Counts as a proof once `index` is applied.
    pub fn record_read(&self, asked: Instant, index: u64, applied: u64) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.settle(applied);
        if c.read.is_none_or(|(t, _)| t < asked) {
            c.read = Some((asked, index));
        }
        c.settle(applied);
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
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).reported_commit
    }

    /// When this node was last provably up to date: a read index it applied,
    /// or as a leader a quorum acknowledgement.
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

    /// Whether a read index applied here proves this node fresh within
    /// `bound` (a node that never leads: a stateless front).
    pub fn proven_within(&self, applied: u64, bound: Duration) -> bool {
        self.last_proof(applied).is_some_and(|t| t.elapsed() <= bound)
    }

    /// How long ago a read index applied here last proved this node fresh.
    pub fn read_proof_age(&self, applied: u64) -> Option<Duration> {
        self.last_proof(applied).map(|t| t.elapsed())
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
            ServerState::Follower | ServerState::Learner | ServerState::Candidate => proven(),
            ServerState::Shutdown => false,
        }
    }
}

impl Contacts {
    /// Once the latest read index is applied, the moment it was asked counts.
    fn settle(&mut self, applied: u64) {
        if let Some((t, index)) = self.read {
            if applied >= index && self.fresh_at.is_none_or(|f| f < t) {
                self.fresh_at = Some(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_counts_from_when_it_was_asked_once_its_index_is_applied() {
        let f = Freshness::default();
        assert!(f.last_proof(0).is_none());
        let asked = Instant::now();
        f.record_read(asked, 10, 5);
        assert!(f.last_proof(9).is_none(), "index 10 not applied yet");
        assert_eq!(f.last_proof(10), Some(asked), "timed from the ask, not the answer");
        // A later read with a higher index keeps the earlier proof until applied.
        let later = asked + Duration::from_millis(5);
        f.record_read(later, 20, 10);
        assert_eq!(f.last_proof(15), Some(asked));
        assert_eq!(f.last_proof(20), Some(later));
        // An answer that arrives out of order never moves the proof back.
        f.record_read(asked, 30, 40);
        assert_eq!(f.last_proof(40), Some(later));
    }

    #[test]
    fn heartbeats_report_the_commit_index_but_prove_nothing() {
        let f = Freshness::default();
        assert!(f.heard_at().is_none());
        let before = Instant::now();
        f.record_contact(7);
        assert_eq!(f.reported_commit(), 7);
        assert!(f.heard_at().is_some_and(|t| t >= before));
        assert!(f.last_proof(100).is_none(), "a message sent before an acknowledgement may arrive after it");
    }
}
