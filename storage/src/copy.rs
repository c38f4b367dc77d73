//! A copy of the view read from one RocksDB point-in-time view, in chunks,
//! with the log position it reflects: a front's copy (what a front holds)
//! and a backup's (everything). Apply goes on meanwhile: no lock is held.

use gatehouse_domain::{codec, front, Table};
use gatehouse_proto::raft as pb;
use gatehouse_proto::state::SnapshotRecord;
use rocksdb::IteratorMode;

use crate::db::{meta, Storage, CF_META};
use crate::StorageError;

/// Which copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// The tables a front holds, as [`gatehouse_domain::front::record`]
    /// leaves them (no password hash, no audit).
    Front,
    /// Every table as stored: hashes, the audit records and their chain.
    Whole,
}

/// The log position a copy reflects (zeros before anything was applied).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct At {
    pub index: u64,
    pub term: u64,
    pub leader_id: u64,
}

impl Storage {
    /// Reads `copy` in chunks of about `chunk_bytes`, handing each to
    /// `send` with the position they reflect and whether it is the last;
    /// stops early when `send` returns false (the reader went away).
    /// Blocking: run it off the async workers.
    pub fn copy_view(
        &self,
        copy: Copy,
        chunk_bytes: usize,
        mut send: impl FnMut(At, Vec<SnapshotRecord>, bool) -> bool,
    ) -> Result<At, StorageError> {
        let corrupt =
            |table: &'static str, e: &dyn std::fmt::Display| StorageError::Corrupt { table, reason: e.to_string() };
        let view = self.db.snapshot();
        let at = match view.get_cf(self.cf(CF_META), meta::LAST_APPLIED)? {
            Some(b) => {
                let id = codec::decode::<pb::LogId>(&b).map_err(|e| corrupt(CF_META, &e))?;
                At { index: id.index, term: id.term, leader_id: id.node_id }
            }
            None => At::default(),
        };
        let (mut chunk, mut bytes) = (Vec::new(), 0);
        let tables = Table::ALL.into_iter().filter(|t| copy == Copy::Whole || front::holds(*t));
        for table in tables {
            for item in view.iterator_cf(self.table(table), IteratorMode::Start) {
                let (key, value) = item?;
                let value = match copy {
                    Copy::Whole => value.into_vec(),
                    Copy::Front => match front::record(table, &value).map_err(|e| corrupt(table.name(), &e))? {
                        Some(v) => v,
                        None => continue,
                    },
                };
                bytes += key.len() + value.len() + 16;
                chunk.push(SnapshotRecord { table: table.name().into(), key: key.into_vec(), value });
                if bytes >= chunk_bytes {
                    if !send(at, std::mem::take(&mut chunk), false) {
                        return Ok(at);
                    }
                    bytes = 0;
                }
            }
        }
        send(at, chunk, true);
        Ok(at)
    }
}
