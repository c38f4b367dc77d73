//! Reading the audit log: records by sequence number, and the chain check.
//!
//! Apply writes records and the chain head (see `gatehouse_domain::audit`);
//! this reader serves queries, exports and `verify` from the node's own
//! RocksDB, each from one consistent point-in-time view.

use gatehouse_domain::audit::{self, Broken, Verifier};
use gatehouse_domain::{codec, Table};
use gatehouse_proto::state::{AuditChain, AuditRecord};
use rocksdb::{Direction, IteratorMode, ReadOptions};

use crate::db::Storage;
use crate::StorageError;

/// What `verify` found.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// The chain record verified against (head and anchor).
    pub chain: AuditChain,
    /// Records whose hash was recomputed and matched.
    pub checked: u64,
    /// The first failure, if any.
    pub broken: Option<Broken>,
}

/// The last verified record's (seq, hash): the anchor a prune up to it keeps.
pub type Verified = Option<(u64, Vec<u8>)>;

/// A reader of the audit column families; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    storage: Storage,
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt { table: Table::Audit.name(), reason: e.to_string() }
}

impl AuditLog {
    pub fn new(storage: Storage) -> Self {
        AuditLog { storage }
    }

    fn chain_at(&self, snap: &rocksdb::Snapshot<'_>) -> Result<AuditChain, StorageError> {
        let cf = self.storage.table(Table::AuditChain);
        let chain = match snap.get_cf(cf, audit::CHAIN_KEY)? {
            Some(bytes) => codec::decode(&bytes).map_err(corrupt)?,
            None => AuditChain::default(),
        };
        Ok(audit::normalized(chain))
    }

    /// The chain's head and anchor as stored.
    pub fn chain(&self) -> Result<AuditChain, StorageError> {
        let snap = self.storage.db.snapshot();
        self.chain_at(&snap)
    }

    /// Visits records from `from_seq` (ascending) or down from it
    /// (descending), until `visit` returns false. A record that cannot be
    /// decoded is an error: `verify` names it.
    pub fn scan(
        &self,
        from_seq: u64,
        descending: bool,
        mut visit: impl FnMut(AuditRecord) -> bool,
    ) -> Result<(), StorageError> {
        let snap = self.storage.db.snapshot();
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snap);
        let key = audit::record_key(from_seq);
        let dir = if descending { Direction::Reverse } else { Direction::Forward };
        let iter =
            self.storage.db.iterator_cf_opt(self.storage.table(Table::Audit), opts, IteratorMode::From(&key, dir));
        for item in iter {
            let (_, value) = item?;
            let record: AuditRecord = codec::decode(&value).map_err(corrupt)?;
            if !visit(record) {
                break;
            }
        }
        Ok(())
    }

    /// Recomputes the chain from its anchor over every stored record.
    pub fn verify(&self) -> Result<VerifyReport, StorageError> {
        self.verify_while(|_| true).map(|(report, _)| report)
    }

    /// Verifies from the anchor for as long as `keep` accepts the next
    /// (verified) record; returns the report and the last accepted (seq,
    /// hash), the anchor a prune up to there would keep.
    pub fn verify_while(
        &self,
        mut keep: impl FnMut(&AuditRecord) -> bool,
    ) -> Result<(VerifyReport, Verified), StorageError> {
        let snap = self.storage.db.snapshot();
        let chain = self.chain_at(&snap)?;
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snap);
        let mut v = Verifier::new(&chain);
        let mut last = None;
        let start = audit::record_key(chain.anchor_seq + 1);
        let iter = self.storage.db.iterator_cf_opt(
            self.storage.table(Table::Audit),
            opts,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut stopped_early = false;
        for item in iter {
            let (key, value) = item?;
            let record = match v.next(&key, &value) {
                Ok(r) => r,
                Err(b) => return Ok((VerifyReport { chain, checked: v.checked, broken: Some(b) }, last)),
            };
            if !keep(&record) {
                stopped_early = true;
                break;
            }
            last = Some((record.seq, record.hash));
        }
        let broken = if stopped_early { None } else { v.finish().err() };
        Ok((VerifyReport { chain, checked: v.checked, broken }, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_domain::State;
    use gatehouse_proto::events::{command::Payload, AppendAudit, AuditEvent, Command};

    fn apply(storage: &Storage, state: &mut State, index: u64, cmd: &Command) {
        let mut out = Vec::new();
        state.apply(index, cmd, &mut out);
        storage.db.write(storage.batch_of(out)).unwrap();
    }

    #[test]
    fn a_record_changed_or_removed_on_disk_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _sm) = crate::open(dir.path()).unwrap();
        let storage = log.storage();
        let mut state = State::default();
        for i in 0..20u64 {
            let events =
                (0..50).map(|j| AuditEvent { at: i * 100 + j, action: "login.failure".into(), ..Default::default() });
            let cmd = Command {
                proposed_at: 1,
                payload: Some(Payload::AppendAudit(AppendAudit { events: events.collect(), dropped: 0, batch: 0 })),
                ..Default::default()
            };
            apply(&storage, &mut state, i + 1, &cmd);
        }
        let audit = AuditLog::new(storage.clone());
        let report = audit.verify().unwrap();
        assert_eq!((report.checked, report.broken.clone()), (1000, None));
        assert_eq!(report.chain.head_seq, 1000);

        let mut seen = Vec::new();
        audit
            .scan(1000, true, |r| {
                seen.push(r.seq);
                seen.len() < 3
            })
            .unwrap();
        assert_eq!(seen, [1000, 999, 998]);

        // Change record 500's action in place.
        let cf = storage.table(Table::Audit);
        let key = audit::record_key(500);
        let mut r: AuditRecord = codec::decode(&storage.db.get_cf(cf, key).unwrap().unwrap()).unwrap();
        r.event.as_mut().unwrap().action = "login.success".into();
        storage.db.put_cf(cf, key, codec::encode(&r)).unwrap();
        assert_eq!(audit.verify().unwrap().broken, Some(Broken::Mismatch(500)));
        // Remove record 200 instead (with 500 restored by dropping its edit).
        r.event.as_mut().unwrap().action = "login.failure".into();
        storage.db.put_cf(cf, key, codec::encode(&r)).unwrap();
        assert_eq!(audit.verify().unwrap().broken, None);
        storage.db.delete_cf(cf, audit::record_key(200)).unwrap();
        assert_eq!(audit.verify().unwrap().broken, Some(Broken::Missing(200)));
    }
}
