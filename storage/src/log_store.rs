//! The Raft log on RocksDB: entries, vote and purge marker.
//!
//! Durability rules, each said where it happens below:
//! - a vote is synced to disk before `save_vote` returns;
//! - appended entries are written at once (visible to readers) and
//!   acknowledged through openraft's callback only after a WAL sync; the
//!   syncs of concurrent appends are grouped by one flusher thread, so a
//!   burst of appends costs one fsync, not one per entry or per call;
//! - `last_purged` is written in the same synced batch that deletes the
//!   entries, so a crash can never leave a gap between it and the first entry.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc};

use gatehouse_domain::codec;
use gatehouse_proto::raft as pb;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use prost::Message;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::background::{self, Background};
use crate::convert::{entry_from_pb, entry_into_pb, log_id_from_pb, log_id_to_pb, vote_from_pb, vote_to_pb};
use crate::db::{index_from_key, index_key, meta, synced, Storage, CF_LOG, CF_META};
use crate::types::{Entry, LogId, RaftStorageError, TypeConfig, Vote};
use crate::StorageError;

/// The log store. Cheap to clone: clones share the database and the flusher.
#[derive(Debug, Clone)]
pub struct LogStore {
    storage: Storage,
    flusher: Arc<Flusher>,
    /// Where heavy appends and decodes run (see [`background`]).
    background: Arc<Background>,
}

/// The WAL sync thread and its queue. Dropped with the last `LogStore`
/// clone: closes the queue and joins the thread, so no detached thread
/// holds the database while the process exits (RocksDB aborts if it is
/// still being torn down when its static state is destroyed).
#[derive(Debug)]
struct Flusher {
    tx: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl LogStore {
    pub(crate) fn new(storage: Storage, background: Arc<Background>) -> Self {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let db = storage.db.clone();
        let thread = std::thread::Builder::new()
            .name("gatehouse-wal-sync".into())
            .spawn(move || {
                background::lower_priority(background::NICE);
                // Group commit: one WAL sync acknowledges every append queued
                // while the previous sync ran. Ends when the queue closes.
                while let Ok(first) = rx.recv() {
                    let mut pending = vec![first];
                    pending.extend(rx.try_iter());
                    let res = db.flush_wal(true).map_err(|e| e.to_string());
                    for cb in pending {
                        cb.log_io_completed(res.clone().map_err(io::Error::other));
                    }
                }
            })
            .expect("spawning the WAL sync thread");
        LogStore { storage, flusher: Arc::new(Flusher { tx: Some(tx), thread: Some(thread) }), background }
    }

    /// A reader of committed entries for the event stream.
    pub fn reader(&self) -> LogReader {
        LogReader { storage: self.storage.clone() }
    }

    /// The database handle (to sync at shutdown).
    pub fn storage(&self) -> Storage {
        self.storage.clone()
    }

    fn last_purged(&self) -> Result<Option<LogId>, RaftStorageError> {
        let id: Option<pb::LogId> =
            self.storage.get_meta(meta::LAST_PURGED).map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(id.as_ref().map(log_id_from_pb))
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, RaftStorageError> {
        let mut it = self.storage.db.iterator_cf(self.storage.cf(CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                Ok(Some(decode_entry(&value)?.log_id))
            }
        }
    }
}

/// Encodes `entries` and writes them in one batch, not synced (the flusher syncs).
pub(crate) fn write_entries(storage: &Storage, entries: Vec<Entry>) -> Result<(), RaftStorageError> {
    let cf = storage.cf(CF_LOG);
    let mut batch = WriteBatch::default();
    let mut buf = Vec::new();
    for e in entries {
        let index = e.log_id.index;
        encode_entry_into(&mut buf, &entry_into_pb(e));
        batch.put_cf(cf, index_key(index), &buf);
    }
    storage.db.write(batch).map_err(|e| StorageIOError::write_logs(&e).into())
}

/// An entry as the log stores it: the format byte, then the protobuf.
fn encode_entry_into(buf: &mut Vec<u8>, e: &pb::Entry) {
    buf.clear();
    buf.push(codec::FORMAT_V1);
    e.encode(buf).expect("a Vec grows as needed");
}

/// [`encode_entry_into`] a new buffer.
pub(crate) fn encode_stored_entry(e: &pb::Entry) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_entry_into(&mut buf, e);
    buf
}

/// A stored entry, outside openraft's traits.
pub(crate) fn decode_stored_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt { table: "log", reason };
    let pb: pb::Entry = codec::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    entry_from_pb(pb).map_err(|e| corrupt(e.to_string()))
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, RaftStorageError> {
    decode_stored_entry(bytes).map_err(|e| StorageIOError::read_logs(&e).into())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let raw = read_raw(&self.storage, range, usize::MAX, usize::MAX)?;
        self.decode(raw).await
    }

    /// What replication reads for one AppendEntries: at most
    /// [`REPLICATION_READ_BYTES`] of entries (at least one), so a run of
    /// large entries is sent a few at a time instead of read all at once.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, RaftStorageError> {
        let raw = read_raw(&self.storage, start..end, usize::MAX, REPLICATION_READ_BYTES)?;
        self.decode(raw).await
    }
}

/// Bytes of entries replication reads (and sends) at once, after the
/// first entry: about one entry at the limit, so one AppendEntries crosses
/// a slow link within its timeout.
pub const REPLICATION_READ_BYTES: usize = 4 << 20;

impl LogStore {
    /// Decodes stored entries, off the async workers when they are heavy.
    async fn decode(&self, raw: Vec<Box<[u8]>>) -> Result<Vec<Entry>, RaftStorageError> {
        let heavy = raw.iter().map(|v| v.len()).sum::<usize>() >= background::HEAVY_BYTES;
        self.background.run_if(heavy, move || raw.iter().map(|v| decode_entry(v)).collect()).await
    }
}

/// Entries in `range`, at most `max` of them and (after the first) at most
/// `max_bytes` stored bytes, in index order.
fn read_entries(
    storage: &Storage,
    range: impl RangeBounds<u64>,
    max: usize,
    max_bytes: usize,
) -> Result<Vec<Entry>, RaftStorageError> {
    read_raw(storage, range, max, max_bytes)?.iter().map(|v| decode_entry(v)).collect()
}

/// The stored bytes of the entries in `range`, at most `max` of them and
/// (after the first) `max_bytes` in all, in index order.
pub(crate) fn read_raw(
    storage: &Storage,
    range: impl RangeBounds<u64>,
    max: usize,
    max_bytes: usize,
) -> Result<Vec<Box<[u8]>>, RaftStorageError> {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i + 1,
        Bound::Unbounded => 0,
    };
    let key = index_key(start);
    let it = storage.db.iterator_cf(storage.cf(CF_LOG), IteratorMode::From(&key, Direction::Forward));
    let mut out = Vec::new();
    let mut bytes = 0;
    for item in it {
        let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
        let index = index_from_key(&k).ok_or_else(|| StorageIOError::read_logs(&io::Error::other("bad log key")))?;
        if !range.contains(&index) || out.len() >= max || (!out.is_empty() && bytes + v.len() > max_bytes) {
            break;
        }
        bytes += v.len();
        out.push(v);
    }
    Ok(out)
}

/// A read-only view of the log for followers of the event stream (the
/// admin `Watch`). It shares the database, not the log store's writer.
#[derive(Debug, Clone)]
pub struct LogReader {
    storage: Storage,
}

impl LogReader {
    /// Up to `max` entries from `start` through `end` (inclusive), in
    /// order, and after the first at most `max_bytes` stored bytes of them.
    /// The first may be later than `start` if the log was purged past it.
    pub fn entries(&self, start: u64, end: u64, max: usize, max_bytes: usize) -> Result<Vec<Entry>, RaftStorageError> {
        read_entries(&self.storage, start..=end, max, max_bytes)
    }

    /// The first index still in the log (entries before it were compacted
    /// into a snapshot).
    pub fn first_index(&self) -> Result<u64, RaftStorageError> {
        let purged: Option<pb::LogId> =
            self.storage.get_meta(meta::LAST_PURGED).map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(purged.map_or(0, |p| p.index + 1))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        let bytes = codec::encode(&vote_to_pb(vote));
        // Durability: a vote must be on disk before it is acted on, or a
        // restarted node could vote twice in one term.
        self.storage
            .db
            .put_cf_opt(self.storage.cf(CF_META), meta::VOTE, bytes, &synced())
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        let v: Option<pb::Vote> = self.storage.get_meta(meta::VOTE).map_err(|e| StorageIOError::read_vote(&e))?;
        Ok(v.as_ref().map(vote_from_pb))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        // Not synced: it is an optimisation (apply sooner after restart); the
        // leader re-establishes the commit index anyway.
        let cf = self.storage.cf(CF_META);
        let res = match committed {
            Some(id) => self.storage.db.put_cf(cf, meta::COMMITTED, codec::encode(&log_id_to_pb(&id))),
            None => self.storage.db.delete_cf(cf, meta::COMMITTED),
        };
        res.map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        let id: Option<pb::LogId> = self.storage.get_meta(meta::COMMITTED).map_err(|e| StorageIOError::read(&e))?;
        Ok(id.as_ref().map(log_id_from_pb))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let storage = self.storage.clone();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let heavy = background::weight(&entries) >= background::HEAVY_WEIGHT;
        // Written now so readers (replication) see the entries at once...
        self.background.run_if(heavy, move || write_entries(&storage, entries)).await?;
        // ...but acknowledged only after the WAL sync. Durability: openraft
        // counts this node towards a quorum only when the callback fires.
        self.flusher
            .tx
            .as_ref()
            .expect("the queue closes only when the last store is dropped")
            .send(callback)
            .map_err(|_| StorageIOError::write_logs(&io::Error::other("WAL sync thread stopped")).into())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let cf = self.storage.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(cf, index_key(u64::MAX));
        // Synced so a conflicting suffix cannot reappear after a crash behind
        // entries appended later.
        self.storage.db.write_opt(batch, &synced()).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        // Durability: purge only runs behind a snapshot, but the state
        // machine's own writes are not synced one by one. Sync the WAL first,
        // so no applied state that the purged entries could rebuild is lost.
        self.storage.db.flush_wal(true).map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = WriteBatch::default();
        // The purge marker and the deletion go in one synced batch: no gap.
        batch.put_cf(self.storage.cf(CF_META), meta::LAST_PURGED, codec::encode(&log_id_to_pb(&log_id)));
        batch.delete_range_cf(self.storage.cf(CF_LOG), index_key(0), index_key(log_id.index + 1));
        self.storage.db.write_opt(batch, &synced()).map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
