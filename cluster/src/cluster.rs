//! The node's handle on the cluster: Raft, the replicated view, the peers
//! and the batcher. Every transport reaches consensus through it; what it
//! does is split by concern over [`crate::propose`], [`crate::read_index`],
//! [`crate::probe`], [`crate::pacing`], [`crate::transfer`] and
//! [`crate::metrics`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_domain::{Command, Payload};
use gatehouse_storage::types::Raft;
use gatehouse_storage::{NodeId, StateView};

use crate::batcher::Batcher;
use crate::freshness::Freshness;
use crate::metrics::ConsensusMetrics;
use crate::peers::Peers;
use crate::periodic::{Periodic, Shutdown};
use gatehouse_storage::Member;

/// A command made by node (or front) `origin` now: its clock, a fresh
/// request id, the current trace.
pub(crate) fn stamped(origin: NodeId, payload: Payload) -> Command {
    Command {
        proposed_at: crate::clock::now_ms(),
        origin_node: origin,
        request_id: crate::ids::new_id(),
        traceparent: crate::trace::current_traceparent(),
        payload: Some(payload),
        // Set by an admin write with an idempotency key (admin::write).
        request_digest: Vec::new(),
    }
}

/// Shared by every server of a node; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Read indexes asked of the leader and the proofs they give.
    pub(crate) reads: crate::reads::Reads,
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) batcher: Batcher,
    /// True while a leadership transfer keeps this leader from replicating.
    pub(crate) hold: tokio::sync::watch::Sender<bool>,
    /// True while a transfer waits out the followers' leader leases: no
    /// read index is confirmed then (see [`Cluster::leader_read_index`]).
    pub(crate) reads_held: tokio::sync::watch::Sender<bool>,
    /// Generation of the latest election pause (see [`Cluster::pause_elections`]).
    pub(crate) election_pause: std::sync::atomic::AtomicU64,
    /// Whether an election pause is in force (openraft's own flag cannot be read).
    pub(crate) elections_paused: std::sync::atomic::AtomicBool,
    /// When to campaign after the leader falls silent (see [`crate::election`]).
    pub(crate) pacer: std::sync::Mutex<crate::election::Pacer>,
    /// The last moment this node could not campaign (see `Cluster::silent_since`).
    pub(crate) quiet_since: std::sync::Mutex<Instant>,
    pub(crate) view: StateView,
    pub(crate) peers: Peers,
    pub(crate) freshness: Freshness,
    pub(crate) max_staleness: Duration,
    pub(crate) metrics: ConsensusMetrics,
    /// The node's shutdown signal: the loops above stop with it.
    pub(crate) shutdown: Shutdown,
    /// The stateless fronts this voter serves, as it last heard from them.
    pub(crate) fronts_seen: crate::follow::FrontsSeen,
    /// The fronts file this voter serves (set with its follow service).
    pub(crate) fronts_listed: std::sync::OnceLock<crate::fronts::Fronts>,
    /// When this handle was made: the node's process start, as status shows it (Unix ms).
    pub(crate) started_at_ms: u64,
    /// Held by a leader from asking the members' versions until its raise
    /// commits, and by `add_learner` from checking a node's version until
    /// it is a member: no node joins between the two (see [`crate::version`]).
    pub(crate) versions: tokio::sync::Mutex<()>,
}

/// A handle that does not keep the node alive (background tasks hold this).
#[derive(Clone)]
pub struct WeakCluster(std::sync::Weak<Inner>);

impl WeakCluster {
    pub fn upgrade(&self) -> Option<Cluster> {
        self.0.upgrade().map(|inner| Cluster { inner })
    }
}

impl Cluster {
    /// The handle, and its loops (election pacing, freshness probes, the
    /// watcher of Raft's metrics), which stop with `shutdown`.
    pub fn new(
        id: NodeId,
        raft: Raft,
        view: StateView,
        peers: Peers,
        max_staleness: Duration,
        shutdown: Shutdown,
    ) -> Self {
        let (hold, _) = tokio::sync::watch::channel(false);
        let metrics = ConsensusMetrics::new();
        Cluster {
            inner: Arc::new(Inner {
                reads: Default::default(),
                id,
                batcher: Batcher::start(raft.clone(), hold.subscribe(), metrics.batched_entries.clone()),
                hold,
                reads_held: tokio::sync::watch::channel(false).0,
                election_pause: std::sync::atomic::AtomicU64::new(0),
                elections_paused: std::sync::atomic::AtomicBool::new(false),
                pacer: Default::default(),
                quiet_since: std::sync::Mutex::new(Instant::now()),
                raft,
                view,
                peers,
                freshness: Freshness::default(),
                max_staleness,
                metrics,
                shutdown,
                fronts_seen: Default::default(),
                fronts_listed: Default::default(),
                started_at_ms: crate::clock::now_ms(),
                versions: tokio::sync::Mutex::new(()),
            }),
        }
        .watching_raft()
        .proving_freshness()
        .pacing_elections()
        .raising_version()
    }

    /// Runs `step` every `period` while the cluster lives and the node
    /// runs (a [`Periodic`]); a step that returns false ends it.
    pub(crate) fn every<F, Fut>(&self, name: &'static str, period: Duration, mut step: F)
    where
        F: FnMut(Cluster) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        let weak = self.downgrade();
        Periodic::every(name, period, self.inner.shutdown.clone()).starting_now().run(move || {
            let step = weak.upgrade().map(&mut step);
            async move {
                match step {
                    Some(step) => step.await,
                    None => false,
                }
            }
        });
    }

    pub fn downgrade(&self) -> WeakCluster {
        WeakCluster(Arc::downgrade(&self.inner))
    }

    /// The consensus series (registered into the node's `/metrics`).
    pub fn metrics(&self) -> &ConsensusMetrics {
        &self.inner.metrics
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

    /// The current leader's id and addresses, if known.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let member = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, member))
    }

    /// The stateless fronts this voter serves, as it last heard from them.
    pub fn fronts_seen(&self) -> &crate::follow::FrontsSeen {
        &self.inner.fronts_seen
    }

    /// Holds off the leader's raise of the cluster version while a node's
    /// version is checked and it joins (`add_learner`).
    pub async fn hold_versions(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.versions.lock().await
    }

    /// Resolves if Raft stops on its own (a fatal storage error, a log
    /// this build cannot apply), with why.
    pub async fn raft_failed(&self) -> String {
        let mut metrics = self.inner.raft.metrics();
        let why = match metrics.wait_for(|m| m.running_state.is_err()).await {
            Ok(m) => m.running_state.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
            Err(_) => "Raft is gone".into(),
        };
        why
    }

    /// The fronts this voter's fronts file lists (none before its follow service runs).
    pub fn fronts_listed(&self) -> Vec<NodeId> {
        self.inner.fronts_listed.get().map_or_else(Vec::new, |f| f.ids())
    }

    /// Whether `id` is a member (voter or learner) of the current membership.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.inner.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some()
    }

    /// A command stamped by this node, with a fresh request id.
    pub fn command(&self, payload: Payload) -> Command {
        stamped(self.inner.id, payload)
    }

    /// The highest log index this node knows to be committed: on the leader,
    /// the highest index a quorum of voters holds; on a follower, what the
    /// leader last reported (or what it applied, if more).
    pub fn commit_index(&self) -> u64 {
        let m = self.inner.raft.metrics().borrow().clone();
        let applied = self.inner.view.applied_index();
        if m.current_leader != Some(self.inner.id) {
            return self.inner.freshness.reported_commit().max(applied);
        }
        let replication = m.replication.unwrap_or_default();
        let mut held: Vec<u64> = m
            .membership_config
            .membership()
            .voter_ids()
            .map(|id| {
                if id == self.inner.id {
                    m.last_log_index.unwrap_or(0)
                } else {
                    replication.get(&id).copied().flatten().map_or(0, |l| l.index)
                }
            })
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        // With n voters, the (n/2+1)-th highest is on a majority.
        held.get(held.len() / 2).copied().unwrap_or(0).max(applied)
    }
}
