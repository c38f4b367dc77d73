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

/// A member as the membership records it: where peers reach it and where
/// clients do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Where peers reach it: Raft and control RPCs (`host:port`).
    pub addr: String,
    /// Where clients reach its admin API; empty when it is `addr`.
    pub client_addr: String,
}

impl Member {
    /// A member serving peers and clients on one address.
    pub fn new(addr: impl Into<String>) -> Member {
        Member { addr: addr.into(), client_addr: String::new() }
    }

    /// A member with a listener of its own for peers.
    pub fn split(addr: impl Into<String>, client_addr: impl Into<String>) -> Member {
        let (addr, client_addr) = (addr.into(), client_addr.into());
        let client_addr = if client_addr == addr { String::new() } else { client_addr };
        Member { addr, client_addr }
    }

    /// Where clients reach its admin API.
    pub fn client_addr(&self) -> &str {
        if self.client_addr.is_empty() {
            &self.addr
        } else {
            &self.client_addr
        }
    }
}

impl From<String> for Member {
    fn from(addr: String) -> Member {
        Member::new(addr)
    }
}

impl From<&str> for Member {
    fn from(addr: &str) -> Member {
        Member::new(addr)
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.client_addr.is_empty() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} (clients: {})", self.addr, self.client_addr)
        }
    }
}

openraft::declare_raft_types!(
    /// Gatehouse's Raft types: one entry carries a batch of commands and
    /// returns one result per command.
    pub TypeConfig:
        D = CommandBatch,
        R = Vec<CommandResult>,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, Member>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type RaftStorageError = openraft::StorageError<NodeId>;
