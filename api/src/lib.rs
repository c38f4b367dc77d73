//! Gatehouse's transports: the HTTP front, the gRPC admin services and the
//! Raft RPCs between nodes. Each turns a request into a domain decision or a
//! proposal and the result into a response; errors map to HTTP and gRPC
//! statuses in one table ([`error`]).
//!
//! # Layout
//! - [`batcher`]: group commit of concurrent proposals into shared entries.
//! - [`cluster`]: the node's handle on Raft: propose (forwarding to the leader), freshness, status.
//! - [`freshness`]: whether this node may answer for the cluster right now.
//! - [`election`]: when to campaign after the leader falls silent (the election pacer, with pre-vote).
//! - [`peers`]: cached channels to other nodes and the cluster secret they carry.
//! - [`raft`]: the Raft network client (openraft's `RaftNetwork`) and the Raft gRPC service.
//! - [`admin`]: the admin gRPC API: authentication, RBAC and the cluster service.
//! - [`http`]: the HTTP front: health, forward-auth verify (and the strict reader of the forwarded request), login, sessions.
//! - [`limits`]: cluster-wide rate limits (strict and global) and the client IP behind trusted proxies.
//! - [`audit`]: buffering security events into hash-chained audit batches; retention.
//! - [`identity`]: resolving an API key or session token to a caller, with read-your-writes.
//! - [`passwords`]: argon2id hashing on a bounded pool.
//! - [`credentials`]: random ids and API keys, made on the proposing node.
//! - [`metrics`]: the Prometheus series of `GET /metrics`, and the gRPC layer that records calls.
//! - [`throttle`]: log lines a stranger can trigger, at most one per interval.
//! - [`trace`]: W3C trace context in and out of requests, commands and calls between nodes.
//! - [`error`]: one error type, one status table.

pub mod admin;
pub mod audit;
pub mod batcher;
pub mod cluster;
pub mod credentials;
pub mod election;
pub mod error;
pub mod freshness;
pub mod http;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod passwords;
pub mod peers;
pub mod raft;
pub mod throttle;
pub mod trace;

pub use cluster::Cluster;
pub use error::ApiError;
pub use peers::{ClusterSecret, Peers};
