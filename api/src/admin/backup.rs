//! `ClusterService/Backup`: a consistent copy of the whole state (every
//! table, hashes only, the audit records and their chain), read from one
//! RocksDB point-in-time view of this node and streamed in chunks; the
//! first carries the header (the cluster's lineage, the log position, the
//! node, the time). One backup at a time per node; the copy holds no lock.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use gatehouse_cluster::Cluster;
use gatehouse_proto::admin::BackupChunk;
use gatehouse_proto::state::BackupHeader;
use gatehouse_storage::copy::Copy;
use gatehouse_storage::Storage;
use tokio::sync::Semaphore;
use tonic::Status;

use crate::ApiError;

pub type BackupStream = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send>>;

/// About this much of records per chunk.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks read ahead of the client.
const AHEAD: usize = 4;

/// A node's store, and its one backup slot.
#[derive(Clone)]
pub struct Backups {
    storage: Storage,
    slot: Arc<Semaphore>,
}

impl Backups {
    pub fn new(storage: Storage) -> Backups {
        Backups { storage, slot: Arc::new(Semaphore::new(1)) }
    }

    /// Starts streaming a backup; refused while another one runs here.
    pub fn start(&self, cluster: &Cluster) -> Result<BackupStream, ApiError> {
        let permit = self.slot.clone().try_acquire_owned().map_err(|_| {
            ApiError::FailedPrecondition(
                "a backup of this node is already running: wait for it, or ask another node".into(),
            )
        })?;
        let lineage = cluster.peers().lineage().and_then(|l| l.get());
        let (node_id, storage) = (cluster.id(), self.storage.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(AHEAD);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut first = true;
            let copied = storage.copy_view(Copy::Whole, CHUNK_BYTES, |at, records, last| {
                let header = first.then(|| BackupHeader {
                    format: u32::from(gatehouse_storage::backup::FORMAT),
                    cluster_id: lineage.as_ref().map(|l| l.cluster_id.clone()).unwrap_or_default(),
                    epoch: lineage.as_ref().map_or(0, |l| l.epoch),
                    index: at.index,
                    term: at.term,
                    leader_id: at.leader_id,
                    node_id,
                    taken_at_ms: gatehouse_cluster::clock::now_ms(),
                });
                first = false;
                // A client gone stops the copy.
                tx.blocking_send(Ok(BackupChunk { header, records, last })).is_ok()
            });
            if let Err(e) = copied {
                tracing::error!(error = %e, "reading the state for a backup failed");
                let _ = tx.blocking_send(Err(Status::internal("reading the state failed")));
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
