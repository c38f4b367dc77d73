//! The node's handle on the cluster: every transport goes through it.
//!
//! ```text
//!   propose(commands) ──► local raft.client_write ──► applied on leader ──► results
//!          │ not leader                 ▲
//!          └──► RaftService.Propose on the leader (cluster secret), then wait
//!               until this node applied the same index (read your writes)
//! ```
//!
//! Every command gets a request id before it is first sent, so retries
//! after a timeout or a leader change are applied once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_domain::{Command, CommandBatch, CommandResult, Payload};
use gatehouse_proto::raft::ProposeRequest;
use gatehouse_storage::types::Raft;
use gatehouse_storage::{NodeId, StateView};
use openraft::error::{ClientWriteError, RaftError};

use crate::batcher::Batcher;
use crate::freshness::Freshness;
use crate::identity::LastUse;
use crate::peers::Peers;
use crate::ApiError;

/// How long a write may wait for a leader before it fails with `unavailable`.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// How often the election pacer looks at the leader's silence.
const PACER_TICK: Duration = Duration::from_millis(20);

/// What a committed proposal returned.
#[derive(Debug, Clone)]
pub struct Applied {
    pub results: Vec<CommandResult>,
    pub log_index: u64,
}

/// Shared by every server of a node; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    /// One read-index request at a time; `last_read` (when it was asked, the
    /// index) serves every caller that arrived before it was asked.
    read_gate: tokio::sync::Mutex<()>,
    /// Bumped whenever a probe records a proof of freshness.
    proofs: tokio::sync::watch::Sender<u64>,
    /// Whether a probe started by [`Cluster::kick_probe`] is running.
    kicked: std::sync::atomic::AtomicBool,
    last_read: std::sync::Mutex<Option<(Instant, u64)>>,
    id: NodeId,
    raft: Raft,
    batcher: Batcher,
    /// True while a leadership transfer keeps this leader from replicating.
    hold: tokio::sync::watch::Sender<bool>,
    /// Generation of the latest election pause (see [`Cluster::pause_elections`]).
    election_pause: std::sync::atomic::AtomicU64,
    /// Whether an election pause is in force (openraft's own flag cannot be read).
    elections_paused: std::sync::atomic::AtomicBool,
    /// When to campaign after the leader falls silent (see [`crate::election`]).
    pacer: std::sync::Mutex<crate::election::Pacer>,
    /// The last moment this node could not campaign (see [`Cluster::silent_since`]).
    quiet_since: std::sync::Mutex<Instant>,
    view: StateView,
    peers: Peers,
    freshness: Freshness,
    /// Uses of keys and sessions seen here, flushed to the log periodically.
    last_use: LastUse,
    max_staleness: Duration,
    metrics: crate::metrics::Metrics,
    /// Running totals already turned into counter increments.
    seen_built: crate::metrics::Seen,
    seen_build_micros: crate::metrics::Seen,
    seen_installed: crate::metrics::Seen,
    /// Security events waiting to be proposed as audit batches.
    recorder: crate::audit::Recorder,
}

/// A handle that does not keep the node alive (background tasks hold this).
#[derive(Clone)]
pub struct WeakCluster(std::sync::Weak<Inner>);

impl WeakCluster {
    pub fn upgrade(&self) -> Option<Cluster> {
        self.0.upgrade().map(|inner| Cluster { inner })
    }
}

/// Unix milliseconds now: the `proposed_at` stamp and the verification clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    pub fn new(id: NodeId, raft: Raft, view: StateView, peers: Peers, max_staleness: Duration) -> Self {
        let (hold, _) = tokio::sync::watch::channel(false);
        Cluster {
            inner: Arc::new(Inner {
                read_gate: tokio::sync::Mutex::new(()),
                proofs: tokio::sync::watch::channel(0).0,
                kicked: std::sync::atomic::AtomicBool::new(false),
                last_read: std::sync::Mutex::new(None),
                id,
                batcher: Batcher::start(raft.clone(), hold.subscribe()),
                hold,
                election_pause: std::sync::atomic::AtomicU64::new(0),
                elections_paused: std::sync::atomic::AtomicBool::new(false),
                pacer: Default::default(),
                quiet_since: std::sync::Mutex::new(Instant::now()),
                raft,
                view,
                peers,
                freshness: Freshness::default(),
                last_use: LastUse::default(),
                max_staleness,
                metrics: crate::metrics::Metrics::new(),
                seen_built: Default::default(),
                seen_build_micros: Default::default(),
                seen_installed: Default::default(),
                recorder: crate::audit::Recorder::new(id),
            }),
        }
        .watching_raft()
        .proving_freshness()
        .pacing_elections()
    }

    /// Campaigns soon after the leader falls silent, as the [`crate::election`]
    /// pacer plans and a majority confirms; openraft's own, slower election
    /// timer stays as the fallback.
    fn pacing_elections(self) -> Self {
        let timing = self.election_timing();
        self.every(PACER_TICK, move |cluster| async move { cluster.pace(timing).await });
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

    /// Runs `step` every `period` while the cluster lives (a late tick is
    /// not made up with a burst); a step that returns false ends it.
    fn every<F, Fut>(&self, period: Duration, mut step: F)
    where
        F: FnMut(Cluster) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let weak = self.downgrade();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(cluster) = weak.upgrade() else { return };
                if !step(cluster).await {
                    return;
                }
            }
        });
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
        use gatehouse_proto::raft::PreVoteRequest;
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
                let Ok(mut client) = self.inner.peers.raft_client(addr) else { return false };
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

    /// On a follower or learner, asks the leader for a read index every
    /// `max_staleness / PROBES_PER_BOUND`: each applied answer is a proof of
    /// freshness timed from the ask (see [`Freshness`]). Quiet on a leader.
    fn proving_freshness(self) -> Self {
        self.every(self.probe_every(), |cluster| async move {
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
        let asked = Instant::now();
        let bound = self.inner.max_staleness;
        // A probe that cannot finish within the bound proves nothing.
        let Ok(Ok(index)) = tokio::time::timeout(bound, self.read_index()).await else { return };
        self.inner.view.wait_applied(index, bound.saturating_sub(asked.elapsed())).await;
        self.proved(asked, index);
    }

    /// Records a read index asked for at `asked` as a freshness proof and
    /// wakes [`Cluster::ensure_fresh`] waiters.
    fn proved(&self, asked: Instant, index: u64) {
        self.inner.freshness.record_read(asked, index, self.inner.view.applied_index());
        self.inner.proofs.send_modify(|n| *n += 1);
    }

    /// Starts a probe now unless one started this way is still running.
    fn kick_probe(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.kicked.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.probe().await;
            me.inner.kicked.store(false, Ordering::Release);
        });
    }

    /// [`Cluster::is_fresh`], or, when the last proof has aged out, whether a
    /// new one arrives within `max_staleness / PROBES_PER_BOUND`. Waiters
    /// share one probe, so a node cut off from its leader answers every
    /// caller after that short wait instead of queueing them.
    pub async fn ensure_fresh(&self) -> bool {
        if self.is_fresh() {
            return true;
        }
        let mut proofs = self.inner.proofs.subscribe();
        self.kick_probe();
        let fresh = async {
            while proofs.changed().await.is_ok() {
                if self.is_fresh() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(self.probe_every(), fresh).await;
        self.is_fresh()
    }

    /// Follows openraft's metrics: counts leader changes and new terms (a
    /// scrape would miss a change that came and went between two scrapes),
    /// and keeps the leader's latest quorum acknowledgement as a freshness
    /// proof that outlives a step-down.
    fn watching_raft(self) -> Self {
        let weak = Arc::downgrade(&self.inner);
        let mut rx = self.inner.raft.metrics();
        tokio::spawn(async move {
            let (mut leader, mut term) = {
                let m = rx.borrow_and_update();
                (m.current_leader, m.current_term)
            };
            while rx.changed().await.is_ok() {
                let Some(inner) = weak.upgrade() else { return };
                let m = rx.borrow_and_update();
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

    pub fn downgrade(&self) -> WeakCluster {
        WeakCluster(Arc::downgrade(&self.inner))
    }

    pub(crate) fn recorder(&self) -> &crate::audit::Recorder {
        &self.inner.recorder
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// Refreshes the gauges read from Raft, storage and freshness, and
    /// returns every series in the Prometheus text format.
    pub fn scrape_metrics(&self) -> String {
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
        m.raft_replication_lag.clear();
        if raft.current_leader == Some(i.id) {
            let last = raft.last_log_index.unwrap_or(0);
            for (peer, matched) in raft.replication.iter().flatten() {
                if *peer != i.id {
                    let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                    m.raft_replication_lag.get_or_create(&crate::metrics::PeerLabels { peer: *peer }).set(lag as i64);
                }
            }
        }
        let stats = i.view.snapshot_stats();
        m.snapshots_built.inc_by(i.seen_built.advance(stats.built.load(Relaxed)));
        m.snapshots_installed.inc_by(i.seen_installed.advance(stats.installed.load(Relaxed)));
        let micros = i.seen_build_micros.advance(stats.build_micros.load(Relaxed));
        m.snapshot_build_seconds.inc_by(micros as f64 / 1e6);
        m.fresh.set(i64::from(self.is_fresh()));
        let age = i.freshness.proof_age(&i.raft, i.view.applied_index());
        m.staleness_seconds.set(age.map_or(f64::INFINITY, |a| a.as_secs_f64()));
        m.encode()
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

    pub fn last_use(&self) -> &LastUse {
        &self.inner.last_use
    }

    /// Whether this node may answer for the cluster now (see [`Freshness`]).
    pub fn is_fresh(&self) -> bool {
        self.inner.freshness.is_fresh(&self.inner.raft, self.inner.view.applied_index(), self.inner.max_staleness)
    }

    /// The current leader's id and address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.inner.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    /// A command stamped by this node, with a fresh request id.
    pub fn command(&self, payload: Payload) -> Command {
        Command {
            proposed_at: now_ms(),
            origin_node: self.inner.id,
            request_id: crate::credentials::new_id(),
            traceparent: crate::trace::current_traceparent(),
            payload: Some(payload),
            // Set by an admin write with an idempotency key (admin::write).
            request_digest: Vec::new(),
        }
    }

    /// Proposes one command and returns its result, or the error it stands for.
    pub async fn propose_one(&self, cmd: Command) -> Result<CommandResult, ApiError> {
        let applied = self.propose(vec![cmd]).await?;
        let result = applied.results.into_iter().next().ok_or(ApiError::Internal)?;
        ApiError::check(&result)?;
        Ok(result)
    }

    /// Proposes commands as one log entry, from any node. Returns once the
    /// entry is applied on the leader and on this node.
    #[tracing::instrument(level = "info", name = "propose", skip_all, fields(commands = commands.len(), node_id = self.inner.id))]
    pub async fn propose(&self, commands: Vec<Command>) -> Result<Applied, ApiError> {
        let started = Instant::now();
        let result = self.propose_inner(commands).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ApiError::Unavailable { .. }) => "unavailable",
            Err(_) => "error",
        };
        self.inner.metrics.proposals.get_or_create(&crate::metrics::OutcomeLabels { outcome }).inc();
        self.inner.metrics.proposal_duration.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn propose_inner(&self, commands: Vec<Command>) -> Result<Applied, ApiError> {
        bounded(&commands)?;
        let batch = CommandBatch { commands };
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut leader_hint: Option<String> = None;
        loop {
            // A leader cut off from its quorum never commits: the deadline
            // bounds the local write too (the outcome is then unknown; a
            // retry with the same request ids is applied once).
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Ok(written) = tokio::time::timeout(remaining, self.inner.batcher.write(batch.commands.clone())).await
            else {
                tracing::warn!("write not committed within the deadline");
                return Err(ApiError::Unavailable { leader: leader_hint });
            };
            match written {
                Ok((results, log_index)) => return Ok(Applied { results, log_index }),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let Some(node) = f.leader_node {
                        leader_hint = Some(node.addr.clone());
                        match self.forward(&node.addr, &batch, deadline).await {
                            Ok(applied) => return Ok(applied),
                            Err(e) => tracing::debug!(leader = %node.addr, error = %e, "forwarding failed; retrying"),
                        }
                    }
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    tracing::error!(error = %e, "membership error on a normal write");
                    return Err(ApiError::Internal);
                }
                Err(RaftError::Fatal(e)) => {
                    tracing::error!(error = %e, "raft stopped");
                    return Err(ApiError::Unavailable { leader: leader_hint });
                }
            }
            if Instant::now() >= deadline {
                return Err(ApiError::Unavailable { leader: leader_hint });
            }
            // No leader yet (an election is running): wait for the next change.
            let mut metrics = self.inner.raft.metrics();
            let _ = tokio::time::timeout(Duration::from_millis(100), metrics.changed()).await;
        }
    }

    async fn forward(&self, leader: &str, batch: &CommandBatch, deadline: Instant) -> Result<Applied, ApiError> {
        let mut client = self.inner.peers.raft_client(leader)?;
        let mut req = tonic::Request::new(ProposeRequest { batch: Some(batch.clone()) });
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let resp = client.propose(req).await.map_err(|s| ApiError::from_status(&s))?.into_inner();
        // Read your writes: answer only once this node shows the write too.
        let wait = deadline.saturating_duration_since(Instant::now());
        if !self.inner.view.wait_applied(resp.log_index, wait).await {
            tracing::warn!(index = resp.log_index, "write committed but not yet applied here");
        }
        Ok(Applied { results: resp.results, log_index: resp.log_index })
    }

    /// Writes commands on this node's Raft, grouped with concurrent writes
    /// (check them with [`bounded`] first)
    /// into shared entries. Fails with `ForwardToLeader` on a follower.
    pub async fn write_local(&self, commands: Vec<Command>) -> crate::batcher::Written {
        self.inner.batcher.write(commands).await
    }

    /// Brings this node up to what the leader had committed when the call
    /// arrived (read your writes); false if that cannot be shown within `wait`.
    pub async fn catch_up(&self, wait: Duration) -> bool {
        let arrived = Instant::now();
        let index = {
            let _one_at_a_time = self.inner.read_gate.lock().await;
            let reuse = *self.inner.last_read.lock().unwrap_or_else(|p| p.into_inner());
            match reuse {
                Some((asked, index)) if asked >= arrived => index,
                _ => {
                    let asked = Instant::now();
                    match tokio::time::timeout(wait, self.read_index()).await {
                        Ok(Ok(index)) => {
                            *self.inner.last_read.lock().unwrap_or_else(|p| p.into_inner()) = Some((asked, index));
                            self.proved(asked, index);
                            index
                        }
                        _ => return false,
                    }
                }
            }
        };
        self.inner.view.wait_applied(index, wait.saturating_sub(arrived.elapsed())).await
    }

    /// The leader's commit index after it confirmed leadership with a quorum.
    /// A node that applied up to it serves linearizable reads.
    pub async fn read_index(&self) -> Result<u64, ApiError> {
        // A leader handing over leadership confirms nothing meanwhile: its
        // confirmation heartbeats would renew the followers' leader lease.
        let mut hold = self.inner.hold.subscribe();
        let _ = tokio::time::timeout(TRANSFER_DEADLINE, hold.wait_for(|held| !*held)).await;
        match self.inner.raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                let addr = f.leader_node.map(|n| n.addr).ok_or(ApiError::Unavailable { leader: None })?;
                let mut client = self.inner.peers.raft_client(&addr)?;
                let mut req = tonic::Request::new(gatehouse_proto::raft::ReadIndexRequest {});
                req.set_timeout(Duration::from_secs(2));
                let r = client.read_index(req).await.map_err(|s| ApiError::from_status(&s))?;
                Ok(r.into_inner().index)
            }
            Err(e) => {
                tracing::debug!(error = %e, "read index unavailable");
                Err(ApiError::Unavailable { leader: self.leader().map(|l| l.1) })
            }
        }
    }
}

/// Longest a leadership transfer holds writes back.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(4);

/// Undoes a transfer's pause of this leader on every exit path.
struct Resume<'a>(&'a Cluster);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.inner.raft.runtime_config().heartbeat(true);
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
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(NodeId, u64), ApiError> {
        use gatehouse_proto::raft::CampaignRequest;
        let metrics = self.inner.raft.metrics().borrow().clone();
        if metrics.current_leader == Some(target) {
            return Ok((target, metrics.current_term));
        }
        let membership = metrics.membership_config.membership().clone();
        if !membership.voter_ids().any(|v| v == target) {
            return Err(ApiError::FailedPrecondition(format!("node {target} is not a voter")));
        }
        let target_addr = membership.get_node(&target).map(|n| n.addr.clone()).ok_or(ApiError::Internal)?;
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
            let holds_all = |m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>| {
                m.replication.as_ref().and_then(|r| r.get(&target).copied().flatten()).map(|l| l.index)
                    >= m.last_log_index
            };
            let caught_up =
                tokio::time::timeout_at(deadline.into(), rx.wait_for(holds_all)).await.is_ok_and(|r| r.is_ok());
            if !caught_up {
                return Err(ApiError::FailedPrecondition(format!("node {target} has not caught up with the leader")));
            }
            // The followers' leases run from their last contact with us.
            tokio::time::sleep(lease + Duration::from_millis(50)).await;
            let mut client = self.inner.peers.raft_client(&target_addr)?;
            let mut req = tonic::Request::new(CampaignRequest {});
            req.set_timeout(Duration::from_millis(500));
            client.campaign(req).await.map_err(|s| ApiError::from_status(&s))?;
            let led = tokio::time::timeout_at(deadline.into(), rx.wait_for(|m| m.current_leader == Some(target))).await;
            match led {
                Ok(Ok(m)) => Ok(m.current_term),
                _ => Err(ApiError::Unavailable { leader: self.leader().map(|l| l.1) }),
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
        use gatehouse_proto::raft::PauseElectionsRequest;
        let duration_ms = duration.as_millis() as u64;
        futures::future::join_all(addrs.iter().map(|addr| async move {
            let Ok(mut client) = self.inner.peers.raft_client(addr) else { return };
            let mut req = tonic::Request::new(PauseElectionsRequest { duration_ms });
            req.set_timeout(Duration::from_millis(500));
            if let Err(e) = client.pause_elections(req).await {
                tracing::warn!(peer = %addr, error = %e, duration_ms, "could not pause or resume elections on a peer");
            }
        }))
        .await;
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

/// Whether one proposal's commands are within their bounds
/// (`gatehouse_domain::bounds`): each command, and all of them together
/// within one entry. Checked before anything is queued, so nothing over
/// a limit reaches the log.
pub fn bounded(commands: &[Command]) -> Result<(), ApiError> {
    for c in commands {
        gatehouse_domain::bounds::check(c)?;
    }
    let total = gatehouse_domain::bounds::entry_bytes(commands);
    if total > gatehouse_domain::bounds::MAX_ENTRY_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "{total} bytes of commands in one proposal is over the entry limit of {}",
            gatehouse_domain::bounds::MAX_ENTRY_BYTES
        )));
    }
    Ok(())
}
