//! A stateless front: the replicated state without Raft membership, storage
//! or a vote. It copies the view from a voter, follows the committed log
//! from there, applies it with the same domain apply to a view it keeps in
//! memory, and sends its own writes to the voters. It implements
//! [`Replica`], so the HTTP front serves from it as from a voter.
//!
//! ```text
//!   voter ── FollowService.Snapshot ──► copy of the view (no password hash, no audit)
//!         ── FollowService.Follow ────► committed commands ──► StateView::apply_followed
//!         ◄─ FollowService.ReadIndex ── every max_staleness/8: the freshness proof
//!         ◄─ FollowService.Propose ──── last use, rate-limit counts, audit batches
//! ```
//!
//! Freshness is proven as a follower proves it ([`crate::freshness`]): a
//! read index asked of a voter at `t` (the voter asks the leader, which
//! confirms it with a quorum), once applied here, proves the front fresh as
//! of `t`. Past `max_staleness` without a proof, the front refuses to
//! answer (503). When its voter fails it (the stream ends, a probe fails
//! twice), it resumes from its applied index on the next voter; when that
//! index was compacted, it copies the view again. A copy never moves the
//! view back: one older than what the front applied is refused.
//!
//! - [`voters`]: the channels to the voters and the one followed now.
//! - [`follower`]: the copy, the follow loop and the probes.

pub mod follower;
pub mod voters;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_domain::{Command, CommandBatch, Payload, State};
use gatehouse_proto::control::ProposeRequest;
use gatehouse_storage::{Member, NodeId, StateView};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::freshness::{Freshness, PROBES_PER_BOUND};
use crate::periodic::Shutdown;
use crate::propose::WRITE_DEADLINE;
use crate::reads::Reads;
use crate::{Applied, ClusterError, Replica};
pub use voters::{FrontAuth, Voters};

/// What a front needs to follow the cluster.
#[derive(Debug, Clone)]
pub struct FrontSettings {
    /// The front's id: stamped on its commands, and how voters know it.
    /// Never a member's.
    pub id: NodeId,
    /// The voters' peer addresses, and the front's credentials for them.
    pub voters: Voters,
    pub max_staleness: Duration,
}

/// A front's handle; cheap to clone.
#[derive(Clone)]
pub struct Front {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) view: StateView,
    pub(crate) voters: Voters,
    pub(crate) freshness: Freshness,
    pub(crate) reads: Reads,
    pub(crate) max_staleness: Duration,
    /// Bumped to ask the follow loop to move on to the next voter (a
    /// generation, not a stored permit: a request made while no stream was
    /// open does not end the next one).
    pub(crate) move_on: tokio::sync::watch::Sender<u64>,
    pub(crate) metrics: FrontMetrics,
    /// The highest index a voter named as committed (read indexes, streams).
    pub(crate) known_commit: AtomicU64,
    /// The nodes that admit requests as the voter last asked counts them
    /// (0 until one answered).
    pub(crate) shares: AtomicU64,
}

/// A front's own series of `GET /metrics`.
#[derive(Debug, Default)]
pub struct FrontMetrics {
    pub applied_index: Gauge,
    pub lag_entries: Gauge,
    pub fresh: Gauge,
    pub staleness_seconds: Gauge<f64, AtomicU64>,
    pub copies: Counter,
    pub reconnects: Counter,
    pub proposals: Counter,
}

impl Front {
    /// A front with an empty view: it answers nothing (it is not fresh)
    /// until [`follower::run`] copied the view and proved it current.
    pub fn new(settings: FrontSettings) -> Front {
        Front {
            inner: Arc::new(Inner {
                id: settings.id,
                view: StateView::detached(State::default(), 0),
                voters: settings.voters,
                freshness: Freshness::default(),
                reads: Reads::default(),
                max_staleness: settings.max_staleness,
                move_on: tokio::sync::watch::channel(0).0,
                metrics: FrontMetrics::default(),
                known_commit: AtomicU64::new(0),
                shares: AtomicU64::new(0),
            }),
        }
    }

    /// Starts following: the copy, the stream and the probes run until `stop`.
    pub fn start(&self, stop: Shutdown) -> Vec<tokio::task::JoinHandle<()>> {
        vec![tokio::spawn(follower::run(self.clone(), stop.clone())), tokio::spawn(follower::probe(self.clone(), stop))]
    }

    pub fn voters(&self) -> &Voters {
        &self.inner.voters
    }

    fn probe_every(&self) -> Duration {
        (self.inner.max_staleness / PROBES_PER_BOUND).max(Duration::from_millis(10))
    }

    /// A read index from the voter followed now (the leader's commit
    /// index, confirmed after this call arrived).
    pub(crate) async fn read_index(&self) -> Result<u64, ClusterError> {
        let (i, _) = self.inner.voters.current();
        let applied_index = self.inner.view.applied_index();
        let mut req = tonic::Request::new(gatehouse_proto::front::FrontReadIndexRequest { applied_index });
        req.set_timeout(Duration::from_secs(2));
        let index = self.inner.voters.client(i).read_index(req).await.map_err(|s| ClusterError::from_status(&s))?;
        let answer = index.into_inner();
        if !answer.lineage.is_empty() && !self.inner.voters.auth().pin(&answer.lineage) {
            // The voter answered with the lineage it was sent... or another:
            // never take its index as a proof.
            return Err(ClusterError::FailedPrecondition(format!(
                "voter {i} is of another cluster or epoch ({}): not followed",
                answer.lineage
            )));
        }
        let index = answer.index;
        self.inner.known_commit.fetch_max(index, Ordering::Relaxed);
        self.inner.shares.store(u64::from(answer.shares), Ordering::Relaxed);
        Ok(index)
    }

    /// Starts a probe now unless one started this way is still running.
    fn kick_probe(&self) {
        if !self.inner.reads.take_kick() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            follower::probe_once(&me).await;
            me.inner.reads.kick_done();
        });
    }

    /// How many copies of the view this front took (one at start, one more
    /// each time its place in the log had been compacted).
    pub fn copies(&self) -> u64 {
        self.inner.metrics.copies.get()
    }

    /// How long ago the front last proved it was current (`None`: never).
    pub fn proof_age(&self) -> Option<Duration> {
        self.inner.freshness.read_proof_age(self.inner.view.applied_index())
    }

    /// Sends `commands` to a voter (the one followed, then the others)
    /// until one takes them or [`WRITE_DEADLINE`] passes.
    async fn send(&self, commands: Vec<Command>) -> Result<Applied, ClusterError> {
        crate::propose::bounded(&commands)?;
        self.inner.metrics.proposals.inc();
        let deadline = Instant::now() + WRITE_DEADLINE;
        let (first, _) = self.inner.voters.current();
        let mut attempt = 0usize;
        loop {
            let i = (first + attempt) % self.inner.voters.len();
            let mut req =
                tonic::Request::new(ProposeRequest { batch: Some(CommandBatch { commands: commands.clone() }) });
            req.set_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
            match self.inner.voters.client(i).propose(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok(Applied { results: r.results, log_index: r.log_index });
                }
                Err(s) => {
                    let e = ClusterError::from_status(&s);
                    if !matches!(e, ClusterError::Unavailable { .. }) || Instant::now() >= deadline {
                        return Err(e);
                    }
                }
            }
            attempt += 1;
            let pause = Duration::from_millis(50 * (attempt as u64).min(4));
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }
}

#[tonic::async_trait]
impl Replica for Front {
    fn id(&self) -> NodeId {
        self.inner.id
    }

    fn view(&self) -> &StateView {
        &self.inner.view
    }

    fn is_fresh(&self) -> bool {
        self.inner.freshness.proven_within(self.inner.view.applied_index(), self.inner.max_staleness)
    }

    async fn ensure_fresh(&self) -> bool {
        self.inner.reads.ensure_fresh(|| self.is_fresh(), self.probe_every(), || self.kick_probe()).await
    }

    async fn catch_up(&self, wait: Duration) -> bool {
        let inner = &self.inner;
        inner.reads.catch_up(&inner.freshness, &inner.view, wait, || async { self.read_index().await.ok() }).await
    }

    /// A front knows no leader: its writes go to a voter, which forwards them.
    fn leader(&self) -> Option<(NodeId, Member)> {
        None
    }

    /// The shares of a global rate limit: the nodes that admit requests as
    /// the voter last asked counts them (its members and the fronts it
    /// lists); before any answered, the voters and this front.
    fn members(&self) -> usize {
        match self.inner.shares.load(Ordering::Relaxed) {
            0 => self.inner.voters.len() + 1,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }

    fn command(&self, payload: Payload) -> Command {
        crate::cluster::stamped(self.inner.id, payload)
    }

    /// Returns once a voter applied the commands and this front did too
    /// (read your writes), or with the voter's answer if the stream lags.
    async fn propose(&self, commands: Vec<Command>) -> Result<Applied, ClusterError> {
        let applied = self.send(commands).await?;
        self.inner.known_commit.fetch_max(applied.log_index, Ordering::Relaxed);
        if !self.inner.view.wait_applied(applied.log_index, WRITE_DEADLINE).await {
            tracing::warn!(index = applied.log_index, "a write applied on the voters has not reached this front yet");
        }
        Ok(applied)
    }

    fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.inner.metrics;
        let r = registry;
        r.register("front_applied_index", "Log index this front's view reflects", m.applied_index.clone());
        r.register(
            "front_lag_entries",
            "Entries a voter named as committed that this front has not applied",
            m.lag_entries.clone(),
        );
        r.register("front_fresh", "1 while this front has proven it is current", m.fresh.clone());
        r.register(
            "front_staleness_seconds",
            "Age of this front's latest freshness proof",
            m.staleness_seconds.clone(),
        );
        r.register("front_view_copies", "Copies of the view this front took from a voter", m.copies.clone());
        r.register(
            "front_reconnects",
            "Times this front moved on to another voter or resumed its stream",
            m.reconnects.clone(),
        );
        r.register("front_proposals", "Writes this front sent to the voters", m.proposals.clone());
    }

    fn refresh_metrics(&self) {
        let (m, applied) = (&self.inner.metrics, self.inner.view.applied_index());
        m.applied_index.set(applied as i64);
        let known = self.inner.known_commit.load(Ordering::Relaxed);
        m.lag_entries.set(known.saturating_sub(applied) as i64);
        m.fresh.set(i64::from(self.is_fresh()));
        m.staleness_seconds.set(self.proof_age().map_or(f64::INFINITY, |a| a.as_secs_f64()));
    }
}
