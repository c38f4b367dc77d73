//! Prompt elections when a leader falls silent.
//!
//! openraft 0.9 has a follower campaign only after its leader lease (the
//! longest election timeout) *plus* its own random election timeout, checked
//! on a tick of 1.5 heartbeats, and the random timeout is drawn once per
//! process. With the default timings that is 600–950 ms of silence, and two
//! followers whose draws are close, or a first candidate with a shorter log,
//! cost another full timeout. A voter refuses every vote while its own lease
//! runs, so a campaign started just after the lease, by a voter whose peers
//! have heard nothing for as long, loses nothing and gains the random part.
//!
//! The [`Pacer`] decides when this node campaigns, given since when it has
//! heard no leader (its last accepted message from one, or the last moment
//! it could not campaign itself):
//!
//! - `lease + heartbeat / 2` after that, plus one `stagger` per other voter
//!   with a higher id (not counting the silent leader). Voters are ordered
//!   by id because openraft (without its `single-term-leader` feature, which
//!   we do not enable) orders two candidacies of one term by node id: if two
//!   campaign at once, the higher id wins instead of splitting the vote.
//! - When a candidate with a shorter log asks for this node's vote, which
//!   Raft must refuse, this node campaigns at once (within a pacer tick) and
//!   once more a stagger later, since its first attempt may have the same
//!   term as that candidate's and a lower id.
//! - While nobody leads, again every `retry` (the lease), no faster than
//!   openraft's own timer would.
//!
//! Before each campaign the node asks the other voters whether they, too,
//! have heard no leader for a whole lease (`PreVote`, in `Cluster`), and
//! campaigns only if a majority has. A voter that lost only its own link to
//! a live leader (one-way or flaky links, a bridge) therefore leaves the
//! term alone: a higher term would make that leader step down.
//!
//! Nothing here can elect a leader that Raft would not: it only starts
//! campaigns, and votes are still granted by Raft's own rules. It never acts
//! before this node heard a leader at all (a restarted node waits to be
//! contacted), nor while elections are paused for a leadership transfer.
//! openraft's own timer stays on as the fallback; it does not ask first.

use std::time::{Duration, Instant};

use gatehouse_storage::NodeId;

/// When campaigns start, from the Raft timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Silence before the first campaign of the highest-ranked survivor.
    pub base: Duration,
    /// Between survivors of adjacent rank, and the quick second attempt.
    pub stagger: Duration,
    /// Between later attempts while nobody leads.
    pub retry: Duration,
}

impl Timing {
    /// From openraft's heartbeat and longest election timeout (its lease).
    pub fn new(heartbeat: Duration, lease: Duration) -> Timing {
        Timing { base: lease + heartbeat / 2, stagger: heartbeat * 3 / 2, retry: lease }
    }
}

/// How many surviving voters go before `me`: those with a higher id, not
/// counting the leader that fell silent.
pub fn rank(me: NodeId, voters: impl IntoIterator<Item = NodeId>, silent_leader: Option<NodeId>) -> u32 {
    voters.into_iter().filter(|&v| v > me && Some(v) != silent_leader).count() as u32
}

/// This node's campaign plan for the current silence.
#[derive(Debug, Default)]
pub struct Pacer {
    /// The last contact the plan is for; a newer one starts a new plan.
    heard: Option<Instant>,
    next: Option<Instant>,
    /// Attempts to make a stagger apart before falling back to `retry`.
    quick: u8,
}

impl Pacer {
    /// Whether to campaign at `now`, given the last contact with a leader.
    /// Call only while this node is a voter that does not lead and may
    /// campaign; `rank` is read only when a new silence starts.
    pub fn due(&mut self, now: Instant, heard: Option<Instant>, t: Timing, rank: impl FnOnce() -> u32) -> bool {
        let Some(h) = heard else { return false };
        if self.heard != Some(h) {
            *self = Pacer { heard: Some(h), next: Some(h + t.base + t.stagger * rank()), quick: 0 };
        }
        let Some(next) = self.next else { return false };
        if now < next {
            return false;
        }
        let wait = if self.quick > 0 {
            self.quick -= 1;
            t.stagger
        } else {
            t.retry
        };
        self.next = Some(now + wait);
        true
    }

    /// A candidate with a shorter log asked for a vote after the leader fell
    /// silent: go now, and once more a stagger later.
    pub fn outranked(&mut self, now: Instant, heard: Option<Instant>) {
        if heard.is_none() {
            return;
        }
        let next = if self.heard == heard { self.next.map_or(now, |n| n.min(now)) } else { now };
        *self = Pacer { heard, next: Some(next), quick: 1 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        base: Duration::from_millis(450),
        stagger: Duration::from_millis(150),
        retry: Duration::from_millis(400),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timing_follows_heartbeat_and_lease() {
        assert_eq!(Timing::new(ms(100), ms(400)), T);
    }

    #[test]
    fn higher_ids_go_first_and_the_silent_leader_is_not_counted() {
        assert_eq!(rank(3, [1, 2, 3], Some(1)), 0);
        assert_eq!(rank(2, [1, 2, 3], Some(1)), 1);
        assert_eq!(rank(1, [1, 2, 3], Some(3)), 1);
        assert_eq!(rank(1, [1, 2, 3, 4, 5], Some(5)), 3);
        assert_eq!(rank(1, [1, 2, 3], None), 2);
    }

    #[test]
    fn nothing_before_any_leader_was_heard() {
        let mut p = Pacer::default();
        assert!(!p.due(Instant::now() + ms(10_000), None, T, || 0));
        p.outranked(Instant::now(), None);
        assert!(!p.due(Instant::now() + ms(10_000), None, T, || 0));
    }

    #[test]
    fn campaigns_after_the_lease_by_rank_then_every_retry() {
        let heard = Instant::now();
        let mut p = Pacer::default();
        assert!(!p.due(heard + ms(449), Some(heard), T, || 0));
        let mut q = Pacer::default();
        assert!(!q.due(heard + ms(599), Some(heard), T, || 1));
        assert!(p.due(heard + ms(450), Some(heard), T, || unreachable!("rank is read once")));
        assert!(!p.due(heard + ms(849), Some(heard), T, || 0));
        assert!(p.due(heard + ms(850), Some(heard), T, || 0));
        assert!(q.due(heard + ms(600), Some(heard), T, || 1));
    }

    #[test]
    fn a_new_contact_starts_a_new_plan() {
        let heard = Instant::now();
        let mut p = Pacer::default();
        assert!(p.due(heard + ms(450), Some(heard), T, || 0));
        let later = heard + ms(500);
        assert!(!p.due(later + ms(449), Some(later), T, || 0));
        assert!(p.due(later + ms(450), Some(later), T, || 0));
    }

    #[test]
    fn outranked_goes_at_once_then_once_more_a_stagger_later() {
        let heard = Instant::now();
        let mut p = Pacer::default();
        assert!(!p.due(heard + ms(300), Some(heard), T, || 1));
        p.outranked(heard + ms(460), Some(heard));
        assert!(p.due(heard + ms(460), Some(heard), T, || 1));
        assert!(!p.due(heard + ms(609), Some(heard), T, || 1));
        assert!(p.due(heard + ms(610), Some(heard), T, || 1));
        // Then back to the slow retry.
        assert!(!p.due(heard + ms(1009), Some(heard), T, || 1));
        assert!(p.due(heard + ms(1010), Some(heard), T, || 1));
        // Asked before this node planned anything for the silence.
        let mut fresh = Pacer::default();
        fresh.outranked(heard + ms(460), Some(heard));
        assert!(fresh.due(heard + ms(460), Some(heard), T, || unreachable!("already planned")));
    }
}
