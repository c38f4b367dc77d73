//! One node as its transports see it: the replicated state behind a
//! [`Replica`], and what this node keeps beside it (the audit recorder,
//! last-use times, the metrics registry). Cheap to clone; every HTTP handler
//! and admin service holds one.
//!
//! Verification, identity, rate limits and sign-in reach the replicated
//! state only through the methods here (the view, freshness, catching up
//! to the leader's commit index, proposing), which go to the replica: a
//! voter's `Cluster` today, a stateless front that follows the log next.
//! The cluster operations (membership, leadership, revocation waits on
//! every voter) are a voter's: the admin services that run them hold the
//! `Cluster` itself, not this.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_cluster::{Applied, Replica};
use gatehouse_domain::{Command, CommandResult, Payload};
use gatehouse_proto::events::AuditEvent;
use gatehouse_storage::{Member, NodeId, StateView};

use crate::audit::Recorder;
use crate::identity::LastUse;
use crate::metrics::Metrics;
use crate::ApiError;

#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    replica: Arc<dyn Replica>,
    /// Security events waiting to be proposed as audit batches.
    recorder: Recorder,
    /// Uses of keys and sessions seen here, flushed to the log periodically.
    last_use: LastUse,
    metrics: Metrics,
}

/// A handle that does not keep the node alive (background tasks hold this).
#[derive(Clone)]
pub struct WeakNode(std::sync::Weak<Inner>);

impl WeakNode {
    pub fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

impl Node {
    pub fn new(replica: Arc<dyn Replica>) -> Node {
        let metrics = Metrics::new(|r| replica.register_metrics(r));
        let recorder = Recorder::new(replica.id());
        Node { inner: Arc::new(Inner { replica, recorder, last_use: LastUse::default(), metrics }) }
    }

    pub fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    pub fn id(&self) -> NodeId {
        self.inner.replica.id()
    }

    /// The replicated state as applied here.
    pub fn view(&self) -> &StateView {
        self.inner.replica.view()
    }

    /// Whether this node may answer for the cluster now.
    pub fn is_fresh(&self) -> bool {
        self.inner.replica.is_fresh()
    }

    /// [`Node::is_fresh`], or whether a proof arrives shortly.
    pub async fn ensure_fresh(&self) -> bool {
        self.inner.replica.ensure_fresh().await
    }

    /// Brings this node up to what the leader had committed when the call
    /// arrived; false if that cannot be shown within `wait`.
    pub async fn catch_up(&self, wait: Duration) -> bool {
        self.inner.replica.catch_up(wait).await
    }

    /// The current leader's id and addresses, if known.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        self.inner.replica.leader()
    }

    /// A command stamped by this node, with a fresh request id.
    pub fn command(&self, payload: Payload) -> Command {
        self.inner.replica.command(payload)
    }

    /// How many nodes answer requests from this state (the shares of a
    /// global rate limit).
    pub fn members(&self) -> usize {
        self.inner.replica.members()
    }

    /// Proposes commands as one log entry, from any node.
    pub async fn propose(&self, commands: Vec<Command>) -> Result<Applied, ApiError> {
        Ok(self.inner.replica.propose(commands).await?)
    }

    /// Proposes one command; its refusal is the error.
    pub async fn propose_one(&self, cmd: Command) -> Result<CommandResult, ApiError> {
        Ok(self.inner.replica.propose_one(cmd).await?)
    }

    /// Waits (a few seconds at most) until this node applied `index`:
    /// a write made elsewhere is seen by the next request here.
    pub async fn wait_applied(&self, index: u64) -> bool {
        self.view().wait_applied(index, gatehouse_cluster::propose::WRITE_DEADLINE).await
    }

    pub fn recorder(&self) -> &Recorder {
        &self.inner.recorder
    }

    pub fn last_use(&self) -> &LastUse {
        &self.inner.last_use
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Every series of this node in the Prometheus text format, the
    /// consensus gauges read fresh.
    pub fn scrape_metrics(&self) -> String {
        self.inner.replica.refresh_metrics();
        self.inner.metrics.encode()
    }
}

/// Audit events, buffered by the recorder (see [`crate::audit`]).
impl Node {
    /// Records an audit event.
    pub fn audit(&self, e: AuditEvent) {
        self.recorder().record(self.metrics(), e);
    }

    /// Counts a frequent audit event (aggregated per flush).
    pub fn audit_count(&self, action: &'static str, resource: String, client_ip: String) {
        self.recorder().count(self.metrics(), action, resource, client_ip, String::new());
    }

    /// [`Node::audit_count`] of something `actor_user_id` was refused.
    pub fn audit_count_by(&self, action: &'static str, resource: String, client_ip: String, actor_user_id: String) {
        self.recorder().count(self.metrics(), action, resource, client_ip, actor_user_id);
    }

    /// A request refused by rate-limit `policy` (aggregated).
    pub fn audit_rate_limited(&self, policy: &str, client_ip: IpAddr) {
        self.audit_count("ratelimit.hit", format!("policy:{policy}"), client_ip.to_string());
    }
}
