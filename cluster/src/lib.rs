//! Gatehouse's consensus layer, between storage and the transports: Raft
//! between nodes, proposing from any node, reads that wait for the leader's
//! commit index, freshness, election pacing and leadership transfer.
//!
//! Nothing here knows HTTP, the admin API, audit, rate limits or identity:
//! those live in `gatehouse-api` and reach the state through a [`Replica`]
//! (the cluster operations of the admin API hold the [`Cluster`] itself). Cargo keeps
//! the direction (this crate does not depend on that one).
//!
//! # Layout
//! - [`cluster`]: the [`Cluster`] handle: Raft, the view, peers, the batcher; status.
//! - [`replica`]: the seam the transports read and write through ([`Replica`]),
//!   which a voter ([`Cluster`]) and a stateless front ([`front::Front`]) implement.
//! - [`propose`]: propose from any node (a follower forwards to the leader).
//! - [`forward`]: the one way a call is sent on to the leader (writes, and
//!   the admin calls only a leader may run).
//! - [`read_index`]: the leader's confirmed commit index, and catching up to it.
//! - [`freshness`]: whether this node may answer for the cluster right now;
//!   [`probe`]: the periodic read-index probes that prove it; `reads`: the
//!   read indexes asked of another node and the proofs they give (a
//!   follower's of its leader, a front's of a voter).
//! - Stateless fronts: [`front`] (a front's [`Replica`]: a view copied from
//!   a voter, the committed log followed, writes sent to the voters),
//!   [`follow`] (the voter's side: `FollowService`), [`fronts`] (the fronts a
//!   voter accepts, each with a secret of its own).
//! - [`election`]: when to campaign after the leader falls silent;
//!   [`pacing`]: the pacer's loop and the pre-vote that confirms it.
//! - [`transfer`]: handing leadership to another voter; election pauses.
//! - [`spread`]: which voters applied a write (revocations with `wait_all`).
//! - [`batcher`]: group commit of concurrent proposals into shared entries.
//! - [`peers`]: cached channels to other nodes and the cluster secret they carry;
//!   [`lineage`]: the cluster id and epoch every call between nodes carries and checks;
//!   [`peer_tls`]: mutual TLS between nodes (dialling, and admitting a call);
//!   [`live`]: the open connections between nodes, closed when a peer's
//!   certificate stops passing.
//! - [`raft`]: the Raft network client (openraft's `RaftNetwork`) and the Raft gRPC service.
//! - [`control`]: the control service: what nodes ask each other beyond Raft
//!   (forwarded writes, read index, status, election pauses, pre-vote, digests).
//! - [`metrics`]: the consensus series of `GET /metrics`, and the watcher of Raft's own metrics.
//! - [`version`]: the cluster version gate as the nodes run it: versions
//!   reported, raised by the leader, new kinds refused until then.
//! - [`error`]: what a consensus call can fail with.
//! - [`periodic`]: the one periodic-task type, and the node's one shutdown signal.
//! - [`clock`]: the log clock (`proposed_at` stamps); [`ids`]: random ids.
//! - [`trace`]: W3C trace context in and out of requests, commands and calls between nodes.
//! - [`throttle`]: log lines a stranger can trigger, at most one per interval.

pub mod batcher;
pub mod clock;
pub mod cluster;
pub mod control;
pub mod election;
pub mod error;
pub mod follow;
pub mod forward;
pub mod freshness;
pub mod front;
pub mod fronts;
pub mod ids;
pub mod lineage;
pub mod live;
pub mod metrics;
pub mod pacing;
pub mod peer_tls;
pub mod peers;
pub mod periodic;
pub mod probe;
pub mod propose;
pub mod raft;
pub mod read_index;
pub(crate) mod reads;
pub mod replica;
pub mod spread;
pub mod throttle;
pub mod trace;
pub mod transfer;
pub mod version;

pub use cluster::{Cluster, WeakCluster};
pub use error::ClusterError;
pub use peers::{ClusterSecret, Peers};
pub use propose::Applied;
pub use replica::Replica;
