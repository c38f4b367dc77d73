//! Opening the database: one RocksDB per node, one column family per concern.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gatehouse_domain::{codec, Mutation, Table};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::StorageError;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_META: &str = "meta";

/// Keys of the `meta` column family.
pub(crate) mod meta {
    pub const VOTE: &[u8] = b"vote";
    pub const LAST_PURGED: &[u8] = b"last_purged";
    pub const COMMITTED: &[u8] = b"committed";
    pub const LAST_APPLIED: &[u8] = b"last_applied";
    pub const LAST_MEMBERSHIP: &[u8] = b"last_membership";
    pub const SNAPSHOT: &[u8] = b"snapshot";
}

/// The opened database, shared by the log store and the state machine.
#[derive(Clone)]
pub struct Storage {
    pub(crate) db: Arc<DB>,
    pub(crate) dir: PathBuf,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("dir", &self.dir).finish()
    }
}

/// Opens (or creates) the database under `dir` with every column family
/// (see [`crate::open`] for the log store and state machine on it).
pub(crate) fn open_db(dir: &Path) -> Result<Storage, StorageError> {
    std::fs::create_dir_all(dir)?;
    crate::format::check_and_mark(dir)?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Two background jobs fit a small machine; RocksDB picks flush vs. compaction.
    opts.set_max_background_jobs(2);
    // Memtables of all column families share one 64 MiB budget (RocksDB's
    // default is 64 MiB per family, twice over): the projections already
    // live in memory as the view, so RocksDB's copy should stay small.
    opts.set_db_write_buffer_size(64 << 20);
    // Vector memtables (below) need writes to a memtable to be serialised;
    // ours are anyway (one log appender, one apply loop).
    opts.set_allow_concurrent_memtable_write(false);
    let mut cf_opts = Options::default();
    cf_opts.set_write_buffer_size(16 << 20);
    // Flushes and the first compactions write data that is soon rewritten
    // (and log entries that are soon purged): compressing them cost ~4% of
    // the machine's CPU under the writes benchmark (perf). Deeper levels,
    // which hold the bulk of an old cluster's data, keep LZ4.
    use rocksdb::DBCompressionType::{Lz4, None as Plain};
    cf_opts.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
    // Projections are written on every apply but only ever read by full
    // scans (start-up, snapshots): a vector memtable appends in O(1) and
    // sorts once at flush, where a skiplist spent 12% of all CPU inserting
    // random ids (measured under the writes benchmark). The log (range
    // reads) and meta (point reads) keep the default skiplist.
    let mut projection_opts = cf_opts.clone();
    projection_opts.set_memtable_factory(rocksdb::MemtableFactory::Vector);
    let cfs = [CF_LOG, CF_META]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, cf_opts.clone()))
        .chain(Table::ALL.iter().map(|t| ColumnFamilyDescriptor::new(t.name(), projection_opts.clone())));
    let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs)?;
    Ok(Storage { db: Arc::new(db), dir: dir.to_path_buf() })
}

impl Storage {
    /// Opens the database alone, without loading the view (the offline
    /// tools). Refused while a running node holds it.
    pub fn open_offline(dir: &Path) -> Result<Storage, StorageError> {
        crate::backup::check_not_restoring(dir)?;
        open_db(dir)
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column families are created at open")
    }

    pub(crate) fn table(&self, table: Table) -> &ColumnFamily {
        self.cf(table.name())
    }

    pub(crate) fn get_meta<M: prost::Message + Default>(&self, key: &[u8]) -> Result<Option<M>, StorageError> {
        match self.db.get_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes)
                .map(Some)
                .map_err(|e| StorageError::Corrupt { table: CF_META, reason: e.to_string() }),
        }
    }

    /// A write batch with apply's `mutations`, in order.
    pub(crate) fn batch_of(&self, mutations: Vec<Mutation>) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for m in mutations {
            match m {
                Mutation::Put { table, key, value } => batch.put_cf(self.table(table), key, value),
                Mutation::Delete { table, key } => batch.delete_cf(self.table(table), key),
                Mutation::DeleteRange { table, from, to } => batch.delete_range_cf(self.table(table), from, to),
            }
        }
        batch
    }

    /// Where snapshot files live.
    pub(crate) fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
}

/// Write options that make a write durable before it returns.
pub(crate) fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

/// Log keys sort by index: big-endian u64.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn index_from_key(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

impl Storage {
    /// Makes everything written so far durable (shutdown).
    pub fn sync(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}
