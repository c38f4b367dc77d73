//! Backup files, and restoring a data directory from one.
//!
//! Format: the magic `GHBACKUP`, a format byte (1), then length-delimited
//! [`BackupItem`]s: the header (the cluster's lineage, the log position,
//! who took it and when), one item per record of every table (hashes,
//! never a plaintext secret: the tables hold none), and the end: the record
//! count and the SHA-256 of every byte before the end item. A file that is
//! truncated, corrupted anywhere, or not a backup is refused before
//! anything is written.
//!
//! Restoring writes the records as this node's snapshot at the backup's
//! log position, with this node the only voter: a new one-voter cluster
//! (the caller gives it a new lineage) that then grows as usual.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use gatehouse_domain::{codec, Table};
use gatehouse_proto::state::backup_item::Item;
use gatehouse_proto::state::{BackupEnd, BackupHeader, BackupItem, SnapshotRecord};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::convert::{log_id_to_pb, snapshot_meta_to_pb};
use crate::db::{meta, synced, CF_META};
use crate::snapshot::{read_delimited, unique_suffix};
use crate::types::{LogId, Member, Membership, NodeId, SnapshotFile, SnapshotMeta, StoredMembership};
use crate::StorageError;

pub const MAGIC: &[u8; 8] = b"GHBACKUP";

/// Present in a data directory while a restore into it runs.
pub const RESTORING: &str = "restore-in-progress";

/// Refuses a data directory a restore left unfinished.
pub fn check_not_restoring(data_dir: &Path) -> Result<(), StorageError> {
    if data_dir.join(RESTORING).exists() {
        return Err(bad(format!(
            "a restore into {} did not finish: remove the directory and restore again",
            data_dir.display()
        )));
    }
    Ok(())
}
pub const FORMAT: u8 = 1;

fn bad(reason: impl ToString) -> StorageError {
    StorageError::Corrupt { table: "backup", reason: reason.to_string() }
}

/// Writes a backup file: the header at [`BackupWriter::new`], then each
/// record, then the end at [`BackupWriter::finish`].
pub struct BackupWriter<W: Write> {
    out: W,
    hasher: Sha256,
    records: u64,
    buf: Vec<u8>,
}

impl<W: Write> BackupWriter<W> {
    pub fn new(out: W, header: BackupHeader) -> Result<Self, StorageError> {
        let mut w = BackupWriter { out, hasher: Sha256::new(), records: 0, buf: Vec::new() };
        w.bytes(&[&MAGIC[..], &[FORMAT]].concat())?;
        w.item(Item::Header(header))?;
        Ok(w)
    }

    pub fn record(&mut self, record: SnapshotRecord) -> Result<(), StorageError> {
        self.records += 1;
        self.item(Item::Record(record))
    }

    /// Writes the end; returns the writer and how many records went in.
    pub fn finish(mut self) -> Result<(W, u64), StorageError> {
        let sha256 = self.hasher.clone().finalize().to_vec();
        let records = self.records;
        self.item(Item::End(BackupEnd { records, sha256 }))?;
        self.out.flush()?;
        Ok((self.out, records))
    }

    fn item(&mut self, item: Item) -> Result<(), StorageError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        BackupItem { item: Some(item) }.encode_length_delimited(&mut buf).expect("a Vec grows as needed");
        self.bytes(&buf)?;
        self.buf = buf;
        Ok(())
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), StorageError> {
        self.hasher.update(b);
        self.out.write_all(b)?;
        Ok(())
    }
}

/// Everything read passes through the hash.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads a whole backup, checking it as it goes, and hands each record to
/// `visit`. Returns the header once the end item's count and checksum
/// matched and nothing followed it; any error means the file is not a
/// whole, intact backup (and `visit` may have seen part of it).
pub fn read_backup(
    input: impl Read,
    mut visit: impl FnMut(SnapshotRecord) -> Result<(), StorageError>,
) -> Result<BackupHeader, StorageError> {
    let mut r = Hashing { inner: BufReader::new(input), hasher: Sha256::new() };
    let mut head = [0u8; 9];
    r.read_exact(&mut head).map_err(|_| bad("too short to be a backup file"))?;
    if &head[..8] != MAGIC {
        return Err(bad("not a Gatehouse backup file"));
    }
    if head[8] != FORMAT {
        return Err(bad(format!("backup format {} is not one this version reads (it reads {FORMAT})", head[8])));
    }
    let next = |r: &mut Hashing<_>| -> Result<Option<Item>, StorageError> {
        // The framing's own refusals, named as the backup's.
        let framed = read_delimited(r).map_err(|e| match e {
            StorageError::Corrupt { reason, .. } => bad(reason),
            e => e,
        })?;
        match framed {
            None => Ok(None),
            Some(b) => BackupItem::decode(b.as_slice()).map_err(|_| bad("a damaged item")).map(|i| i.item),
        }
    };
    let header = match next(&mut r)? {
        Some(Item::Header(h)) => h,
        _ => return Err(bad("no header")),
    };
    if header.format != u32::from(FORMAT) {
        return Err(bad("the header names another format"));
    }
    let mut records = 0u64;
    loop {
        let before = r.hasher.clone();
        match next(&mut r)? {
            Some(Item::Record(rec)) => {
                Table::from_name(&rec.table).ok_or_else(|| bad("a record of an unknown table"))?;
                records += 1;
                visit(rec)?;
            }
            Some(Item::End(end)) => {
                if end.records != records || end.sha256.as_slice() != before.finalize().as_slice() {
                    return Err(bad("the checksum does not match: the file was changed or damaged"));
                }
                let mut rest = [0u8; 1];
                if r.read(&mut rest)? != 0 {
                    return Err(bad("data after the end"));
                }
                return Ok(header);
            }
            Some(Item::Header(_)) => return Err(bad("an item out of place")),
            None => return Err(bad("truncated: the end is missing")),
        }
    }
}

/// What a restore made.
#[derive(Debug, Clone)]
pub struct Restored {
    pub header: BackupHeader,
    pub records: u64,
}

/// Restores `backup` into `data_dir`, which must not exist or be empty:
/// this node (`id`, reached at `member`) becomes the only voter of a
/// cluster holding the backup's state at its log position. The backup is
/// checked whole before the store is written; on any error `data_dir` is
/// left as it was found.
/// `lineage` (the new cluster's, as [`crate::lineage`] stores it) is
/// written last.
pub fn restore(
    backup: impl Read,
    data_dir: &Path,
    id: NodeId,
    member: Member,
    lineage: &str,
) -> Result<Restored, StorageError> {
    let existed = data_dir.exists();
    if existed && std::fs::read_dir(data_dir)?.next().is_some() {
        return Err(bad(format!("{} is not empty: restore into a new data directory", data_dir.display())));
    }
    // Until the marker is gone the directory is no store: a node refuses
    // to start on it (a crash mid-restore leaves a half store otherwise).
    let marker = data_dir.join(RESTORING);
    let result = std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&marker, b"a restore into this directory did not finish\n"))
        .map_err(StorageError::from)
        .and_then(|()| restore_into(backup, data_dir, id, member))
        .and_then(|restored| crate::lineage::write_lineage(data_dir, lineage).map(|()| restored))
        .and_then(|restored| {
            std::fs::remove_file(&marker)?;
            std::fs::File::open(data_dir)?.sync_all()?;
            Ok(restored)
        });
    if result.is_err() {
        // Back as it was found: absent, or empty.
        if existed {
            for entry in std::fs::read_dir(data_dir)?.flatten() {
                let p = entry.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        } else {
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
    result
}

fn restore_into(backup: impl Read, data_dir: &Path, id: NodeId, member: Member) -> Result<Restored, StorageError> {
    std::fs::create_dir_all(data_dir)?;
    let storage = crate::db::open_db(data_dir)?;
    // The records as a snapshot file, written while the backup is checked.
    let dir = storage.snapshot_dir();
    std::fs::create_dir_all(&dir)?;
    let part: PathBuf = dir.join(format!("restore-{}.part", unique_suffix()));
    let mut out = BufWriter::new(File::create(&part)?);
    out.write_all(crate::snapshot::MAGIC)?;
    out.write_all(&[crate::snapshot::FORMAT_V1])?;
    let mut records = 0u64;
    let mut buf = Vec::new();
    let header = read_backup(backup, |rec| {
        records += 1;
        buf.clear();
        rec.encode_length_delimited(&mut buf).expect("a Vec grows as needed");
        out.write_all(&buf)?;
        Ok(())
    })?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    if header.index == 0 {
        return Err(bad("the backup holds no applied entry"));
    }
    let last = LogId::new(openraft::CommittedLeaderId::new(header.term, header.leader_id), header.index);
    let alone = Membership::new(vec![[id].into_iter().collect()], BTreeMap::from([(id, member)]));
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), alone),
        snapshot_id: format!("{}-{}-restored-{}", header.term, header.index, unique_suffix()),
    };
    crate::snapshot::install(&storage, &meta, &SnapshotFile { path: part.clone() })?;
    let _ = std::fs::remove_file(&part);
    // The log starts after the snapshot: everything before it is purged
    // and committed.
    let id_pb = codec::encode(&log_id_to_pb(&last));
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(storage.cf(CF_META), meta::LAST_PURGED, &id_pb);
    batch.put_cf(storage.cf(CF_META), meta::COMMITTED, &id_pb);
    // A vote in the backup's term: the node's first election is above it,
    // so its entries sort after the snapshot's (openraft requires it).
    let vote = crate::convert::vote_to_pb(&crate::types::Vote::new(header.term, id));
    batch.put_cf(storage.cf(CF_META), meta::VOTE, codec::encode(&vote));
    batch.put_cf(storage.cf(CF_META), meta::SNAPSHOT, codec::encode(&snapshot_meta_to_pb(&meta)));
    storage.db.write_opt(batch, &synced())?;
    Ok(Restored { header, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8) -> SnapshotRecord {
        SnapshotRecord { table: "users".into(), key: vec![n], value: vec![1, n] }
    }

    fn sample() -> Vec<u8> {
        let header =
            BackupHeader { format: 1, cluster_id: "ab".repeat(16), epoch: 1, index: 9, term: 2, ..Default::default() };
        let mut w = BackupWriter::new(Vec::new(), header).unwrap();
        for n in 0..5 {
            w.record(rec(n)).unwrap();
        }
        w.finish().unwrap().0
    }

    #[test]
    fn a_backup_reads_back_whole() {
        let mut seen = Vec::new();
        let header = read_backup(sample().as_slice(), |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!((header.index, header.term, seen.len()), (9, 2, 5));
        assert_eq!(seen[3], rec(3));
    }

    #[test]
    fn every_damaged_byte_and_every_truncation_is_refused() {
        let good = sample();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(read_backup(bad.as_slice(), |_| Ok(())).is_err(), "byte {i} flipped");
        }
        for len in 0..good.len() {
            assert!(read_backup(&good[..len], |_| Ok(())).is_err(), "cut at {len}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(read_backup(longer.as_slice(), |_| Ok(())).is_err(), "a byte after the end");
        let snapshot = [&b"GHSNAP"[..], &[1], &good[9..]].concat();
        assert!(read_backup(snapshot.as_slice(), |_| Ok(())).is_err(), "not a backup");
    }
}
