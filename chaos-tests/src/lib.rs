//! Tools that drive real `gatehouse` processes: a cluster harness and the
//! load generator behind `docs/benchmarks.md`.
//!
//! # Layout
//! - [`cluster`]: start N real nodes on free loopback ports, find the leader, stop them.
//! - [`load`]: benchmark scenarios and their latency histograms.

pub mod cluster;
pub mod load;
