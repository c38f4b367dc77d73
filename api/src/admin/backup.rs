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
/// A client that takes nothing for this long is cut off: the copy holds a
/// RocksDB snapshot (and the node's one backup slot) while it runs.
const STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// How a backup ended, for its audit record.
pub type Outcome = Result<u64, String>;

/// Sends `item` unless the client takes nothing for [`STALL`] or is gone.
fn send_within(
    tx: &tokio::sync::mpsc::Sender<Result<BackupChunk, Status>>,
    mut item: Result<BackupChunk, Status>,
) -> bool {
    let deadline = std::time::Instant::now() + STALL;
    loop {
        match tx.try_send(item) {
            Ok(()) => return true,
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
            Err(tokio::sync::mpsc::error::TrySendError::Full(back)) => {
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                item = back;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

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
    /// `done` hears how it ended: the index copied, or why not.
    pub fn start(
        &self,
        cluster: &Cluster,
        done: impl FnOnce(Outcome) + Send + 'static,
    ) -> Result<BackupStream, ApiError> {
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
            let mut whole = false;
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
                // A client gone, or one that stopped reading, stops the copy.
                let sent = send_within(&tx, Ok(BackupChunk { header, records, last }));
                whole = sent && last;
                sent
            });
            let outcome = match copied {
                Ok(at) if whole => Ok(at.index),
                Ok(_) => Err("the client stopped reading".to_string()),
                Err(e) => {
                    tracing::error!(error = %e, "reading the state for a backup failed");
                    let _ = send_within(&tx, Err(Status::internal("reading the state failed")));
                    Err("reading the state failed".to_string())
                }
            };
            done(outcome);
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
