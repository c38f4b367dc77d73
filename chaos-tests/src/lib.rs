//! Tools that drive real `gatehouse` processes: a cluster harness, chaos
//! runs and the load generator behind `docs/benchmarks.md`.
//!
//! # Layout
//! - [`cluster`]: start N real nodes on free loopback ports, find the leader, stop them.
//! - [`load`]: benchmark scenarios, measured as [`figures`] (throughput and
//!   latency histograms);
//!   [`load_tls`]: HTTPS clients, TLS handshakes per second, and the bare
//!   hyper + rustls server they are set beside; [`load_fronts`]: how soon
//!   a revocation reaches every voter and front, ext_authz checks per second;
//!   [`load_mfa`]: people enrolled with an authenticator app, and their codes;
//!   [`load_proxy`]: nginx (for the `proxy` scenario and for the tests that
//!   put it in front of Gatehouse) and the bare hyper proxies set beside
//!   Gatehouse's `[proxy]`.
//! - Chaos (docs/chaos.md): [`proxy`] (a fault-injecting TCP proxy per
//!   directed link), [`nemesis`] (the faults), [`workload`] and [`history`]
//!   (clients and what they saw), [`large`] (large valid entries beside
//!   them), [`checks`] (one module per invariant, with
//!   the [`linearizability`] search), and [`run`] (one seeded run, its
//!   figures and report table).

pub mod checks;
pub mod cluster;
pub mod figures;
pub mod history;
pub mod large;
pub mod linearizability;
pub mod load;
pub mod load_fronts;
pub mod load_mfa;
pub mod load_proxy;
pub mod load_tls;
pub mod nemesis;
pub mod proxy;
pub mod run;
pub mod workload;
