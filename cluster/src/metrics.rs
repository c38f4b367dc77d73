//! The consensus series of `GET /metrics`: proposals, Raft's term, leader
//! and indexes, snapshots, freshness. Counters are recorded where things
//! happen; gauges are read from openraft's metrics when scraped
//! ([`Cluster::refresh_metrics`]). The node's registry takes them in with
//! [`ConsensusMetrics::register`]. Label values come from fixed sets
//! (outcomes, node ids) so series stay bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::Cluster;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// Latency buckets from 100 µs to ~13 s.
pub fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Turns a running total kept elsewhere (storage's snapshot counters) into
/// counter increments: each scrape adds what grew since the last one.
#[derive(Debug, Default)]
pub(crate) struct Seen(AtomicU64);

impl Seen {
    /// Stores `now`; returns by how much it grew since the last call.
    pub(crate) fn advance(&self, now: u64) -> u64 {
        let before = self.0.swap(now, Ordering::Relaxed);
        now.saturating_sub(before)
    }
}

/// Every consensus series of one node.
pub struct ConsensusMetrics {
    pub proposals: Family<OutcomeLabels, Counter>,
    pub proposal_duration: Histogram,
    /// Proposals this node sent on to the leader.
    pub proposals_forwarded: Counter,
    /// Entries this node's batcher handed to Raft (refused ones included:
    /// only a leader's are written).
    pub batched_entries: Counter,
    pub raft_term: Gauge,
    pub raft_leader: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_snapshot_index: Gauge,
    pub raft_replication_lag: Family<PeerLabels, Gauge>,
    pub raft_leader_changes: Counter,
    pub raft_elections: Counter,
    pub raft_paced_campaigns: Counter,
    pub snapshots_built: Counter,
    pub snapshots_installed: Counter,
    pub snapshot_build_seconds: Counter<f64, AtomicU64>,
    pub fresh: Gauge,
    /// Stateless fronts following the log on this voter now.
    pub fronts_following: Gauge,
    pub staleness_seconds: Gauge<f64, AtomicU64>,
    /// Running totals already turned into counter increments.
    seen_built: Seen,
    seen_build_micros: Seen,
    seen_installed: Seen,
}

impl Default for ConsensusMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsensusMetrics {
    pub fn new() -> ConsensusMetrics {
        ConsensusMetrics {
            proposals: Family::default(),
            proposal_duration: latency(),
            proposals_forwarded: Counter::default(),
            batched_entries: Counter::default(),
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_snapshot_index: Gauge::default(),
            raft_replication_lag: Family::default(),
            raft_leader_changes: Counter::default(),
            raft_elections: Counter::default(),
            raft_paced_campaigns: Counter::default(),
            snapshots_built: Counter::default(),
            snapshots_installed: Counter::default(),
            snapshot_build_seconds: Counter::default(),
            fresh: Gauge::default(),
            fronts_following: Gauge::default(),
            staleness_seconds: Gauge::default(),
            seen_built: Seen::default(),
            seen_build_micros: Seen::default(),
            seen_installed: Seen::default(),
        }
    }

    /// Adds every series to `r` (the node's registry; the series are shared,
    /// not copied).
    pub fn register(&self, r: &mut Registry) {
        r.register("proposals", "writes proposed through this node by outcome", self.proposals.clone());
        r.register("proposal_duration_seconds", "propose to applied here", self.proposal_duration.clone());
        r.register(
            "proposals_forwarded",
            "proposals this node sent on to the leader",
            self.proposals_forwarded.clone(),
        );
        r.register(
            "batched_entries",
            "entries this node's batcher handed to Raft (only a leader's are written)",
            self.batched_entries.clone(),
        );
        r.register("raft_term", "current Raft term", self.raft_term.clone());
        r.register("raft_leader", "id of the leader this node knows (0 = none)", self.raft_leader.clone());
        r.register("raft_is_leader", "1 if this node leads", self.raft_is_leader.clone());
        r.register("raft_commit_index", "highest index known committed", self.raft_commit_index.clone());
        r.register("raft_applied_index", "highest index applied here", self.raft_applied_index.clone());
        r.register("raft_last_log_index", "last index in this node's log", self.raft_last_log_index.clone());
        r.register("raft_snapshot_index", "index of the latest snapshot", self.raft_snapshot_index.clone());
        r.register(
            "raft_replication_lag_entries",
            "entries a follower is behind the leader (leader only)",
            self.raft_replication_lag.clone(),
        );
        r.register("raft_leader_changes", "times this node saw the leader change", self.raft_leader_changes.clone());
        r.register("raft_elections", "terms this node saw begin", self.raft_elections.clone());
        r.register(
            "raft_paced_campaigns",
            "campaigns this node started because its leader fell silent past its lease",
            self.raft_paced_campaigns.clone(),
        );
        r.register("snapshots_built", "snapshots this node built", self.snapshots_built.clone());
        r.register(
            "snapshots_installed",
            "snapshots this node installed from a leader",
            self.snapshots_installed.clone(),
        );
        r.register("snapshot_build_seconds", "time spent building snapshots", self.snapshot_build_seconds.clone());
        r.register("fresh", "1 while this node may answer (within max_staleness)", self.fresh.clone());
        r.register(
            "fronts_following",
            "Stateless fronts following the log on this voter",
            self.fronts_following.clone(),
        );
        r.register(
            "staleness_seconds",
            "time since this node last proved it was up to date",
            self.staleness_seconds.clone(),
        );
    }
}

impl Cluster {
    /// Follows openraft's metrics: counts leader changes and new terms (a
    /// scrape would miss a change that came and went between two scrapes),
    /// and keeps the leader's latest quorum acknowledgement as a freshness
    /// proof that outlives a step-down.
    pub(crate) fn watching_raft(self) -> Self {
        let weak = Arc::downgrade(&self.inner);
        let mut rx = self.inner.raft.metrics();
        tokio::spawn(async move {
            let (mut leader, mut term) = {
                let m = rx.borrow_and_update();
                (m.current_leader, m.current_term)
            };
            // Peers dialled over TLS are checked against the id their
            // address belongs to: learned from the membership loaded at
            // start, then from every change.
            let mut membership_at = {
                let m = rx.borrow();
                if let Some(inner) = weak.upgrade() {
                    inner.peers.learn(m.membership_config.membership());
                }
                *m.membership_config.log_id()
            };
            while rx.changed().await.is_ok() {
                let Some(inner) = weak.upgrade() else { return };
                let m = rx.borrow_and_update();
                let at = *m.membership_config.log_id();
                if membership_at != at {
                    inner.peers.learn(m.membership_config.membership());
                    membership_at = at;
                }
                if m.state == openraft::ServerState::Leader {
                    if let Some(acked) =
                        m.millis_since_quorum_ack.and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)))
                    {
                        inner.freshness.record_led(acked);
                    }
                }
                if m.current_leader != leader && m.current_leader.is_some() {
                    inner.metrics.raft_leader_changes.inc();
                    // A new leader: prove freshness through it at once rather
                    // than at the next periodic probe.
                    if m.current_leader != Some(inner.id) {
                        Cluster { inner: inner.clone() }.kick_probe();
                    }
                }
                if m.current_term > term {
                    inner.metrics.raft_elections.inc_by(m.current_term - term);
                }
                (leader, term) = (m.current_leader, m.current_term);
            }
        });
        self
    }

    /// Refreshes the gauges read from Raft, storage and freshness (before
    /// the node's registry is encoded for a scrape).
    pub fn refresh_metrics(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let i = &self.inner;
        let m = &i.metrics;
        let raft = i.raft.metrics().borrow().clone();
        m.raft_term.set(raft.current_term as i64);
        m.raft_leader.set(raft.current_leader.unwrap_or(0) as i64);
        m.raft_is_leader.set(i64::from(raft.current_leader == Some(i.id)));
        m.raft_applied_index.set(raft.last_applied.map_or(0, |l| l.index) as i64);
        m.raft_last_log_index.set(raft.last_log_index.unwrap_or(0) as i64);
        m.raft_snapshot_index.set(raft.snapshot.map_or(0, |l| l.index) as i64);
        m.raft_commit_index.set(self.commit_index() as i64);
        m.fronts_following.set(i.fronts_seen.following() as i64);
        m.raft_replication_lag.clear();
        if raft.current_leader == Some(i.id) {
            let last = raft.last_log_index.unwrap_or(0);
            for (peer, matched) in raft.replication.iter().flatten() {
                if *peer != i.id {
                    let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                    m.raft_replication_lag.get_or_create(&PeerLabels { peer: *peer }).set(lag as i64);
                }
            }
        }
        let stats = i.view.snapshot_stats();
        m.snapshots_built.inc_by(m.seen_built.advance(stats.built.load(Relaxed)));
        m.snapshots_installed.inc_by(m.seen_installed.advance(stats.installed.load(Relaxed)));
        let micros = m.seen_build_micros.advance(stats.build_micros.load(Relaxed));
        m.snapshot_build_seconds.inc_by(micros as f64 / 1e6);
        m.fresh.set(i64::from(self.is_fresh()));
        let age = i.freshness.proof_age(&i.raft, i.view.applied_index());
        m.staleness_seconds.set(age.map_or(f64::INFINITY, |a| a.as_secs_f64()));
    }
}
