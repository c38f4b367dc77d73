//! Gatehouse's wire and log schemas, generated from `proto/gatehouse/*.proto`.
//!
//! # Layout
//! - [`events`]: the command envelope and payloads that one Raft entry carries.
//! - [`state`]: the records of the state machine's projections (RocksDB and snapshots).
//! - [`raft`]: Raft's RPCs between nodes (vote, append, streamed snapshots) and the log's entries.
//! - [`control`]: what nodes ask of each other beyond Raft (forwarded writes,
//!   read index, status, election pacing, state digests).
//! - [`front`]: what a stateless front asks of a voter (a snapshot of the
//!   view, the committed stream, read indexes, its own writes).
//! - [`admin`]: the admin API operators and the CLI speak.
//! - [`codec`]: the gRPC codec of every generated client and server.
//!
//! Conversions to domain and openraft types live next to those types, not here.

/// Generated modules, nested by protobuf package (their cross-references need it).
#[allow(clippy::all)]
mod generated {
    pub mod gatehouse {
        pub mod events {
            pub mod v1 {
                tonic::include_proto!("gatehouse.events.v1");
            }
        }
        pub mod state {
            pub mod v1 {
                tonic::include_proto!("gatehouse.state.v1");
            }
        }
        pub mod raft {
            pub mod v1 {
                tonic::include_proto!("gatehouse.raft.v1");
            }
        }
        pub mod control {
            pub mod v1 {
                tonic::include_proto!("gatehouse.control.v1");
            }
        }
        pub mod front {
            pub mod v1 {
                tonic::include_proto!("gatehouse.front.v1");
            }
        }
        pub mod admin {
            pub mod v1 {
                tonic::include_proto!("gatehouse.admin.v1");
            }
        }
    }
}

pub mod codec;
mod secret_debug;

/// Every schema above as an encoded `FileDescriptorSet`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gatehouse_descriptor");

/// The admin API.
pub use generated::gatehouse::admin::v1 as admin;
/// Node-to-node calls beyond Raft.
pub use generated::gatehouse::control::v1 as control;
/// The replicated command log.
pub use generated::gatehouse::events::v1 as events;
/// What a stateless front asks of a voter.
pub use generated::gatehouse::front::v1 as front;
/// Raft RPCs and the on-disk form of log entries.
pub use generated::gatehouse::raft::v1 as raft;
/// Projection and snapshot records.
pub use generated::gatehouse::state::v1 as state;
