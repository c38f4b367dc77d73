//! The Gatehouse node: configuration, wiring of storage, Raft, servers and
//! telemetry, and the `gatehouse admin` CLI.
//!
//! [`Node::start`] does all the work so tests start nodes in-process on port
//! 0; `main.rs` only parses flags. A node serves these listeners:
//!
//! ```text
//!   http_addr  ─► HTTP front (axum; HTTPS with [https]): /healthz, /readyz, …
//!   grpc_addr  ─► admin services (API key + RBAC), health, reflection
//!                 + RaftService and ControlService (cluster secret) without peer_addr
//!   peer_addr  ─► RaftService + ControlService (cluster secret), and the admin
//!                 ClusterService for membership calls sent on to the leader (optional)
//!                 + FollowService for stateless fronts (a front's own secret; with fronts_file)
//! ```
//!
//! # Layout
//! - [`config`]: the typed configuration (TOML + `GATEHOUSE_*`).
//! - [`data_dir`]: the data directory, created private and checked.
//! - [`node`]: [`Node`]: start, initialise, shut down.
//! - [`front`]: [`FrontNode`]: a stateless front (`gatehouse front`): the HTTP
//!   front over a copy of the view that follows the voters' log.
//! - [`grpc`]: the client and peer gRPC listeners, their limits and services.
//! - [`bootstrap`]: the first admin user and key.
//! - [`recovery`]: a new admin key when every one is lost (offline request, carried out through the log).
//! - [`restore`]: a backup restored into a new data directory: a new one-voter cluster.
//! - [`forced_recovery`]: a stopped survivor made a one-voter cluster of a new epoch when a quorum is lost for good.
//! - [`telemetry`]: logging setup.
//! - [`reload`]: what the node re-reads without a restart (certificates, the CA
//!   bundle and deny file, the cluster secret file), on change and SIGHUP.
//! - [`cli`]: the command line (`serve`, `tls …`, `admin …`), one file per admin service.

pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod data_dir;
pub mod forced_recovery;
pub mod front;
pub mod grpc;
pub mod node;
pub mod recovery;
pub mod reload;
pub mod restore;
pub mod telemetry;

pub use config::Config;
pub use front::FrontNode;
pub use node::{run, Node};
