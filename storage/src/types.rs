//! The openraft type configuration shared by storage, network and API.

use gatehouse_proto::events::{CommandBatch, CommandResult};

use std::path::PathBuf;

pub type NodeId = u64;

/// A snapshot's data: a file on disk. Built snapshots live under
/// `<data>/snapshots/<id>.snap`; incoming ones are written to a `.part` file
/// by the network and installed from there (`crate::snapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

openraft::declare_raft_types!(
    /// Gatehouse's Raft types: one entry carries a batch of commands and
    /// returns one result per command.
    pub TypeConfig:
        D = CommandBatch,
        R = Vec<CommandResult>,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type RaftStorageError = openraft::StorageError<NodeId>;
