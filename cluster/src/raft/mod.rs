//! Raft between nodes over gRPC: the client side openraft drives
//! ([`network`]) and the server side that hands requests to openraft
//! ([`service`]). Both carry the cluster secret; the server refuses any RPC
//! without it before openraft sees the request.

pub mod network;
pub mod service;

/// Size of one streamed snapshot chunk.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Largest snapshot a node accepts (a bound on disk use for hostile peers).
pub const MAX_SNAPSHOT_BYTES: u64 = 16 << 30;
