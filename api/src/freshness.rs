//! Bounded staleness: may this node answer for the cluster right now?
//!
//! - A leader is fresh while a quorum acknowledged it within `max_staleness`
//!   (openraft reports `millis_since_quorum_ack`).
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

    /// When this follower was last provably up to date.
    fn follower_fresh_at(&self, applied: u64) -> Option<Instant> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.settle(applied);
        c.fresh_at
    }

    /// Whether the node may answer now.
    pub fn is_fresh(&self, raft: &Raft, applied: u64, max_staleness: Duration) -> bool {
        // Borrowed, not cloned: this runs on every verification.
        let rx = raft.metrics();
        let m = rx.borrow();
        match m.state {
            ServerState::Leader => {
                m.millis_since_quorum_ack.is_some_and(|ms| Duration::from_millis(ms) <= max_staleness)
            }
            ServerState::Follower | ServerState::Learner => {
                m.current_leader.is_some()
                    && self.follower_fresh_at(applied).is_some_and(|t| t.elapsed() <= max_staleness)
            }
            ServerState::Candidate | ServerState::Shutdown => false,
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
        assert!(f.follower_fresh_at(0).is_none());
        f.record_contact(10, 5);
        assert!(f.follower_fresh_at(9).is_none(), "commit 10 not applied yet");
        assert!(f.follower_fresh_at(10).is_some());
        let first = f.follower_fresh_at(10).unwrap();
        // A later contact with a higher commit keeps the earlier proof until applied.
        f.record_contact(20, 10);
        assert_eq!(f.follower_fresh_at(15), Some(first));
        assert!(f.follower_fresh_at(20).unwrap() >= first);
    }
}
