//! The seam between the replicated state and whoever answers requests from
//! it: what verification, identity, rate limits and sign-in need, and
//! nothing more. A voter ([`Cluster`]) implements it today; a stateless front
//! that follows the committed log without voting in it will implement it
//! next, and the transports will not change.
//!
//! ```text
//!   http/, identity, rate_limit/, audit/ ──► api Node ──► dyn Replica
//!                                                          ├── Cluster (a voter or learner: Raft, RocksDB)
//!                                                          └── a front (follows the log; issue of its own)
//! ```
//!
//! Membership changes, leadership transfer and the Raft RPCs are not here:
//! they are a voter's, and the admin services that run them hold the
//! [`Cluster`] itself.

use std::time::Duration;

use gatehouse_domain::{Command, CommandResult, Payload};
use gatehouse_storage::{Member, NodeId, StateView};
use prometheus_client::registry::Registry;

use crate::{Applied, Cluster, ClusterError};

#[tonic::async_trait]
pub trait Replica: Send + Sync + 'static {
    /// This node's id (stamped on the commands it makes).
    fn id(&self) -> NodeId;

    /// The replicated state as applied here.
    fn view(&self) -> &StateView;

    /// Whether this node may answer for the cluster now: it has shown,
    /// within `max_staleness`, that it applied everything committed.
    fn is_fresh(&self) -> bool;

    /// [`Replica::is_fresh`], or whether a proof arrives shortly.
    async fn ensure_fresh(&self) -> bool;

    /// Brings this node up to what the leader had committed when the call
    /// arrived; false if that cannot be shown within `wait`.
    async fn catch_up(&self, wait: Duration) -> bool;

    /// The current leader's id and addresses, if known.
    fn leader(&self) -> Option<(NodeId, Member)>;

    /// How many nodes answer requests from this state: global rate limits
    /// give each an equal share.
    fn members(&self) -> usize;

    /// A command stamped by this node, with a fresh request id.
    fn command(&self, payload: Payload) -> Command;

    /// Proposes commands as one log entry; returns once it is applied
    /// cluster-wide and here.
    async fn propose(&self, commands: Vec<Command>) -> Result<Applied, ClusterError>;

    /// Proposes one command and returns its result, or the refusal it stands for.
    async fn propose_one(&self, cmd: Command) -> Result<CommandResult, ClusterError> {
        crate::propose::only_result(self.propose(vec![cmd]).await?)
    }

    /// Adds this replica's own series to the node's `/metrics`.
    fn register_metrics(&self, registry: &mut Registry);

    /// Reads the gauges that are sampled rather than counted, before a scrape.
    fn refresh_metrics(&self);
}

#[tonic::async_trait]
impl Replica for Cluster {
    fn id(&self) -> NodeId {
        Cluster::id(self)
    }

    fn view(&self) -> &StateView {
        Cluster::view(self)
    }

    fn is_fresh(&self) -> bool {
        Cluster::is_fresh(self)
    }

    async fn ensure_fresh(&self) -> bool {
        Cluster::ensure_fresh(self).await
    }

    async fn catch_up(&self, wait: Duration) -> bool {
        Cluster::catch_up(self, wait).await
    }

    fn leader(&self) -> Option<(NodeId, Member)> {
        Cluster::leader(self)
    }

    /// Every member, voter or learner, and every front this voter lists:
    /// each one answers requests.
    fn members(&self) -> usize {
        let members = self.raft().metrics().borrow().membership_config.membership().nodes().count();
        members + self.inner.fronts_listed.get().map_or(0, |f| f.len())
    }

    fn command(&self, payload: Payload) -> Command {
        Cluster::command(self, payload)
    }

    async fn propose(&self, commands: Vec<Command>) -> Result<Applied, ClusterError> {
        Cluster::propose(self, commands).await
    }

    fn register_metrics(&self, registry: &mut Registry) {
        self.metrics().register(registry);
    }

    fn refresh_metrics(&self) {
        Cluster::refresh_metrics(self);
    }
}
