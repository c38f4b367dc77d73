//! Gatehouse's storage: the Raft log and the state machine on RocksDB.
//!
//! This is the only crate that names a RocksDB type. One database per node
//! holds every column family:
//!
//! ```text
//!   log       index (u64 BE) → Entry        appended by the leader's log, synced in groups
//!   meta      vote, last_purged, last_applied, last_membership, snapshot
//!   users, api_keys, sessions, roles,       projections written by apply and
//!   requests, rate_limits, audit_chain      loaded into the in-memory view
//!   audit     seq (u64 BE) → AuditRecord    written by apply, read only by [`audit`]
//! ```
//!
//! Apply writes a batch of entries' projection mutations together with
//! `last_applied` in one `WriteBatch`, so after a crash the node resumes from
//! `last_applied` and re-applies only what followed it from the durable log.
//!
//! # Layout
//! - [`types`]: the openraft type configuration (and the snapshot file type it names).
//! - [`convert`]: openraft ↔ protobuf conversions (wire and disk share them).
//! - [`open`]: opening a node's store (the database, the log store, the state machine).
//! - [`db`]: the database, its column families and keys.
//! - [`force`]: a stopped node's store made a one-voter cluster (forced recovery).
//! - [`format`]: the store's format, checked before the database opens.
//! - [`lineage`]: which cluster, and which life of it, the data belongs to
//!   (a file beside the database).
//! - [`log_store`]: `RaftLogStorage` with group-committed fsync.
//! - [`state_machine`]: the `RaftStateMachine`.
//! - [`view`]: the shared in-memory view (a voter's, beside RocksDB; a front's, alone).
//! - [`copy`]: the view read from one RocksDB point-in-time view, in chunks: a
//!   front's copy ([`front`]) and a backup's ([`backup`]).
//! - [`front`]: the view as a front copies it.
//! - [`backup`]: the backup file format, and restoring a data directory from one;
//!   [`sealed`]: a backup sealed under a key file (ChaCha20-Poly1305 in chunks).
//! - [`snapshot`]: the snapshot file format, build and install.
//! - [`background`]: the low-priority threads that do the log's and apply's
//!   encoding and RocksDB work, off the async workers that answer requests.
//! - [`audit`]: reading and verifying the hash-chained audit records.

// openraft's storage traits dictate `openraft::StorageError` (224 bytes) as the
// error type; our helpers return the same type rather than converting twice.
#![allow(clippy::result_large_err)]

pub mod audit;
pub mod background;
pub mod backup;
pub mod convert;
pub mod copy;
pub mod db;
pub mod force;
pub mod format;
pub mod front;
pub mod lineage;
pub mod log_store;
pub mod open;
pub mod sealed;
pub mod snapshot;
pub mod state_machine;
pub mod types;
pub mod view;

pub use audit::{AuditLog, VerifyReport};
pub use db::Storage;
pub use log_store::{LogReader, LogStore};
pub use open::open;
pub use state_machine::StateMachine;
pub use types::SnapshotFile;
pub use types::{Member, NodeId, TypeConfig};
pub use view::StateView;

/// Errors opening or reading the store outside the openraft traits.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt record in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error(
        "this data was written by a newer Gatehouse (store format {found}; this version reads up to {known}): \
         run that version, or restore a backup into a new data directory; the data was left untouched"
    )]
    NewerFormat { found: u32, known: u32 },
    /// The replicated state is at a cluster version this build does not understand.
    #[error("{0}; the data was left untouched")]
    NewerCommands(#[from] gatehouse_domain::version::Unsupported),
}
