//! Rewriting a stopped node's store into a one-voter cluster (a forced
//! recovery after a quorum is lost for good; `gatehouse recover`).
//!
//! Nothing is deleted. One membership entry is appended after the node's
//! last log entry, naming this node as the only voter, from a term above
//! any it has seen, with a vote for itself in that term (not committed).
//! openraft takes the membership of the last entry in the log, committed
//! or not, so at the next start the node is the only voter: it elects
//! itself and commits its whole log, the entries it had not seen committed
//! included.

use gatehouse_proto::raft as pb;

use crate::convert::{log_id_from_pb, membership_to_pb, vote_from_pb, vote_to_pb};
use crate::db::{index_key, meta, synced, Storage, CF_LOG, CF_META};
use crate::log_store::decode_stored_entry;
use crate::types::{Entry, LogId, Member, Membership, NodeId, Vote};
use crate::StorageError;

/// What the store held before a forced recovery, and what it holds after.
#[derive(Debug, Clone)]
pub struct Forced {
    /// The last entry before the recovery's (0 when the log was empty).
    pub last_index: u64,
    /// The highest index this node knew to be committed.
    pub committed_index: u64,
    /// The membership the node had: its voters and learners.
    pub members_before: Vec<NodeId>,
    /// The entry that makes this node the only voter.
    pub entry: LogId,
}

impl Forced {
    /// Entries this node held but had not seen committed: the recovery
    /// commits them (they may or may not have been acknowledged).
    pub fn unconfirmed(&self) -> std::ops::RangeInclusive<u64> {
        (self.committed_index + 1)..=self.last_index
    }
}

/// Why a store cannot be forced.
#[derive(Debug, thiserror::Error)]
pub enum ForceError {
    #[error("this data directory never took part in a cluster: there is nothing to recover")]
    NoCluster,
    #[error("node {0} is not a voter of the membership this store holds: recover a voter that survived")]
    NotAVoter(NodeId),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Storage {
    /// The membership the node acts on: that of the last membership entry
    /// in its log, or the applied one when the log holds none.
    pub fn effective_membership(&self) -> Result<Option<Membership>, StorageError> {
        let it = self.db.iterator_cf(self.cf(CF_LOG), rocksdb::IteratorMode::End);
        for item in it {
            let (_, value) = item?;
            let entry: Entry = decode_stored_entry(&value)?;
            if let openraft::EntryPayload::Membership(m) = entry.payload {
                return Ok(Some(m));
            }
        }
        let applied: Option<pb::StoredMembership> = self.get_meta(meta::LAST_MEMBERSHIP)?;
        Ok(applied.and_then(|m| m.membership).map(|m| crate::convert::membership_from_pb(&m)))
    }

    /// Makes node `id` the only voter of its store (see the module).
    pub fn force_single_voter(&self, id: NodeId) -> Result<Forced, ForceError> {
        let membership = self.effective_membership()?.ok_or(ForceError::NoCluster)?;
        if !membership.voter_ids().any(|v| v == id) {
            return Err(ForceError::NotAVoter(id));
        }
        let me: Member = membership.get_node(&id).cloned().unwrap_or_default();
        let last = self.last_log_id()?;
        let vote: Option<Vote> = self.get_meta::<pb::Vote>(meta::VOTE)?.as_ref().map(vote_from_pb);
        let committed: Option<pb::LogId> = self.get_meta(meta::COMMITTED)?;
        let term = vote.map_or(0, |v| v.leader_id.term).max(last.map_or(0, |l| l.leader_id.term)) + 1;
        let index = last.map_or(0, |l| l.index) + 1;
        let entry_id = LogId::new(openraft::CommittedLeaderId::new(term, id), index);
        let alone = Membership::new(
            vec![[id].into_iter().collect()],
            [(id, me)].into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        );
        let entry = pb::Entry {
            log_id: Some(crate::convert::log_id_to_pb(&entry_id)),
            payload: Some(pb::entry::Payload::Membership(membership_to_pb(&alone))),
        };
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(self.cf(CF_LOG), index_key(index), crate::log_store::encode_stored_entry(&entry));
        batch.put_cf(self.cf(CF_META), meta::VOTE, gatehouse_domain::codec::encode(&vote_to_pb(&Vote::new(term, id))));
        self.db.write_opt(batch, &synced()).map_err(StorageError::from)?;
        Ok(Forced {
            last_index: last.map_or(0, |l| l.index),
            committed_index: committed.as_ref().map_or(0, |c| log_id_from_pb(c).index),
            members_before: membership.nodes().map(|(n, _)| *n).collect(),
            entry: entry_id,
        })
    }

    /// The last log id the node has seen: of its last entry, the last
    /// purged one, or the last applied (a snapshot installed and the log
    /// not purged yet when it stopped), whichever is highest.
    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOG), rocksdb::IteratorMode::End);
        let last_entry = match it.next() {
            Some(item) => Some(decode_stored_entry(&item?.1)?.log_id),
            None => None,
        };
        let purged: Option<pb::LogId> = self.get_meta(meta::LAST_PURGED)?;
        let applied: Option<pb::LogId> = self.get_meta(meta::LAST_APPLIED)?;
        Ok([last_entry, purged.as_ref().map(log_id_from_pb), applied.as_ref().map(log_id_from_pb)]
            .into_iter()
            .flatten()
            .max())
    }

    /// The last log index and the highest known committed index (for a
    /// forced recovery's report before it changes anything).
    pub fn log_position(&self) -> Result<(u64, u64), StorageError> {
        let committed: Option<pb::LogId> = self.get_meta(meta::COMMITTED)?;
        Ok((self.last_log_id()?.map_or(0, |l| l.index), committed.map_or(0, |c| c.index)))
    }
}
