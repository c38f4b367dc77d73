//! Snapshots: a file per snapshot, built from a consistent RocksDB view.
//!
//! Format: the magic `GHSNAP`, one format-version byte, then
//! length-delimited `SnapshotRecord`s (table, key, value) of every projection
//! table. Raft metadata (last log id, membership) travels beside the file as
//! `SnapshotMeta`. A file is written to a temporary name, synced, and renamed,
//! so a crash never leaves a half snapshot under a real name.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use gatehouse_domain::{codec, State, Table};
use gatehouse_proto::raft as pb;
use gatehouse_proto::state::SnapshotRecord;
use prost::Message;
use rocksdb::{IteratorMode, WriteBatch};

use crate::convert::{
    log_id_from_pb, opt_log_id_to_pb, snapshot_meta_to_pb, stored_membership_from_pb, stored_membership_to_pb,
};
use crate::db::{meta, synced, Storage, CF_META};
use crate::types::{SnapshotFile, SnapshotMeta, StoredMembership};
use crate::StorageError;

pub(crate) const MAGIC: &[u8; 6] = b"GHSNAP";
pub(crate) const FORMAT_V1: u8 = 1;
/// Largest record accepted when reading a snapshot (a bound for hostile input).
const MAX_RECORD: usize = 16 << 20;

static SEQ: AtomicU64 = AtomicU64::new(0);

pub(crate) fn unique_suffix() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("{ms}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

fn corrupt(reason: impl ToString) -> StorageError {
    StorageError::Corrupt { table: "snapshot", reason: reason.to_string() }
}

/// Builds a snapshot of everything applied so far, from one RocksDB view.
pub(crate) fn build(storage: &Storage) -> Result<(SnapshotMeta, SnapshotFile), StorageError> {
    let db = &storage.db;
    let view = db.snapshot();
    let meta_cf = storage.cf(CF_META);
    let decode_meta = |key: &[u8]| -> Result<Option<Vec<u8>>, StorageError> { Ok(view.get_cf(meta_cf, key)?) };
    let last_log_id = match decode_meta(meta::LAST_APPLIED)? {
        Some(b) => Some(log_id_from_pb(&codec::decode::<pb::LogId>(&b).map_err(corrupt)?)),
        None => None,
    };
    let last_membership = match decode_meta(meta::LAST_MEMBERSHIP)? {
        Some(b) => stored_membership_from_pb(&codec::decode(&b).map_err(corrupt)?).map_err(corrupt)?,
        None => StoredMembership::default(),
    };
    let snapshot_id = match &last_log_id {
        Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, unique_suffix()),
        None => format!("0-0-{}", unique_suffix()),
    };

    let dir = storage.snapshot_dir();
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!("{snapshot_id}.tmp"));
    let mut out = BufWriter::new(File::create(&tmp)?);
    out.write_all(MAGIC)?;
    out.write_all(&[FORMAT_V1])?;
    let mut buf = Vec::new();
    for table in Table::ALL {
        for item in view.iterator_cf(storage.table(table), IteratorMode::Start) {
            let (key, value) = item?;
            let rec = SnapshotRecord { table: table.name().into(), key: key.into_vec(), value: value.into_vec() };
            buf.clear();
            rec.encode_length_delimited(&mut buf).expect("a Vec grows as needed");
            out.write_all(&buf)?;
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let path = dir.join(format!("{snapshot_id}.snap"));
    std::fs::rename(&tmp, &path)?;
    File::open(&dir)?.sync_all()?;

    let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
    db.put_cf_opt(meta_cf, meta::SNAPSHOT, codec::encode(&snapshot_meta_to_pb(&meta)), &synced())?;
    remove_old(&dir, &path);
    Ok((meta, SnapshotFile { path }))
}

/// SHA-256 over every table's (name, key, value), read from one RocksDB
/// snapshot, with the log index that snapshot reflects. Nodes that applied
/// the same log agree on it, whatever their history of restarts and
/// snapshot installs.
impl Storage {
    /// A digest of the whole state and the applied index it reflects (see
    /// [`digest`]). Reads every table: for checks, not hot paths.
    pub fn state_digest(&self) -> Result<(u64, [u8; 32]), StorageError> {
        digest(self)
    }
}

pub(crate) fn digest(storage: &Storage) -> Result<(u64, [u8; 32]), StorageError> {
    use sha2::{Digest, Sha256};
    let view = storage.db.snapshot();
    let applied = match view.get_cf(storage.cf(CF_META), meta::LAST_APPLIED)? {
        Some(b) => log_id_from_pb(&codec::decode::<pb::LogId>(&b).map_err(corrupt)?).index,
        None => 0,
    };
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    for table in Table::ALL {
        for item in view.iterator_cf(storage.table(table), IteratorMode::Start) {
            let (key, value) = item?;
            field(table.name().as_bytes());
            field(&key);
            field(&value);
        }
    }
    Ok((applied, hash.finalize().into()))
}

/// Keeps the two newest built snapshots (a transfer may still read the older).
fn remove_old(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut snaps: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap") && p != keep)
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    snaps.sort();
    let excess = snaps.len().saturating_sub(1);
    for (_, p) in snaps.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(path = %p.display(), error = %e, "could not remove an old snapshot");
        }
    }
}

/// A fresh file for an incoming snapshot.
pub(crate) fn incoming(storage: &Storage) -> Result<SnapshotFile, StorageError> {
    let dir = storage.snapshot_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("incoming-{}.part", unique_suffix()));
    File::create(&path)?;
    Ok(SnapshotFile { path })
}

/// Removes incoming files a crash left behind.
pub(crate) fn clean_incoming(storage: &Storage) {
    let Ok(entries) = std::fs::read_dir(storage.snapshot_dir()) else { return };
    for p in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        if p.extension().is_some_and(|x| x == "part" || x == "tmp") {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Replaces every projection with the snapshot's content, in one synced
/// batch, and returns the view rebuilt from it. On error nothing changed.
pub(crate) fn install(storage: &Storage, meta: &SnapshotMeta, file: &SnapshotFile) -> Result<State, StorageError> {
    // The id names a file: refuse anything that could point elsewhere.
    let id = &meta.snapshot_id;
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(corrupt("invalid snapshot id"));
    }
    let db = &storage.db;
    let mut batch = WriteBatch::default();
    for table in Table::ALL {
        let cf = storage.table(table);
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (key, _) = item?;
            batch.delete_cf(cf, key);
        }
    }
    let mut state = State::default();
    let mut reader = BufReader::new(File::open(&file.path)?);
    let mut head = [0u8; 7];
    reader.read_exact(&mut head).map_err(|_| corrupt("too short"))?;
    if &head[..6] != MAGIC {
        return Err(corrupt("not a snapshot file"));
    }
    if head[6] != FORMAT_V1 {
        return Err(corrupt(format!("unknown snapshot format {}", head[6])));
    }
    while let Some(rec) = read_record(&mut reader)? {
        let table = Table::from_name(&rec.table).ok_or_else(|| corrupt(format!("unknown table {:?}", rec.table)))?;
        state.load(table, &rec.value).map_err(corrupt)?;
        batch.put_cf(storage.table(table), &rec.key, &rec.value);
    }
    state.finish_load();
    // A state a newer build raised past this one is not installed: this
    // node would apply what follows without understanding it.
    let (cluster, known) = (state.cluster_version(), gatehouse_domain::version::COMMAND_VERSION);
    if cluster > known {
        return Err(gatehouse_domain::version::Unsupported { cluster, known }.into());
    }

    let meta_cf = storage.cf(CF_META);
    match opt_log_id_to_pb(&meta.last_log_id) {
        Some(id) => batch.put_cf(meta_cf, meta::LAST_APPLIED, codec::encode(&id)),
        None => batch.delete_cf(meta_cf, meta::LAST_APPLIED),
    }
    batch.put_cf(meta_cf, meta::LAST_MEMBERSHIP, codec::encode(&stored_membership_to_pb(&meta.last_membership)));
    batch.put_cf(meta_cf, meta::SNAPSHOT, codec::encode(&snapshot_meta_to_pb(meta)));

    // Keep the installed file as this node's current snapshot, so it can
    // serve it to others and openraft finds it after a restart.
    let dir = storage.snapshot_dir();
    std::fs::create_dir_all(&dir)?;
    let target = dir.join(format!("{}.snap", meta.snapshot_id));
    if file.path != target {
        std::fs::copy(&file.path, &target)?;
        File::open(&target)?.sync_all()?;
    }
    db.write_opt(batch, &synced())?;
    remove_old(&dir, &target);
    Ok(state)
}

fn read_record(r: &mut impl Read) -> Result<Option<SnapshotRecord>, StorageError> {
    match read_delimited(r)? {
        Some(buf) => SnapshotRecord::decode(buf.as_slice()).map(Some).map_err(corrupt),
        None => Ok(None),
    }
}

/// One length-delimited message's bytes (a varint length, then that many
/// bytes, at most [`MAX_RECORD`]); `None` at a clean end of input.
pub(crate) fn read_delimited(r: &mut impl Read) -> Result<Option<Vec<u8>>, StorageError> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        match r.read(&mut b)? {
            0 if i == 0 => return Ok(None),
            0 => return Err(corrupt("truncated record length")),
            _ => {}
        }
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            let len = usize::try_from(len).map_err(|_| corrupt("record too large"))?;
            if len > MAX_RECORD {
                return Err(corrupt("record too large"));
            }
            let mut buf = vec![0u8; len];
            r.read_exact(&mut buf).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => corrupt("truncated record"),
                _ => e.into(),
            })?;
            return Ok(Some(buf));
        }
    }
    Err(corrupt("bad record length"))
}

/// The current snapshot's metadata and file, if one was built or installed.
pub(crate) fn current(storage: &Storage) -> Result<Option<(SnapshotMeta, SnapshotFile)>, StorageError> {
    let Some(pb_meta) = storage.get_meta::<pb::SnapshotMeta>(meta::SNAPSHOT)? else { return Ok(None) };
    let meta = crate::convert::snapshot_meta_from_pb(&pb_meta).map_err(corrupt)?;
    let path = storage.snapshot_dir().join(format!("{}.snap", meta.snapshot_id));
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some((meta, SnapshotFile { path })))
}
