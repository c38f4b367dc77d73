//! Conversions between openraft's types and our protobuf messages.
//!
//! The same messages are used on the wire (Raft RPCs) and on disk (log
//! entries, vote, membership), so a later openraft version cannot change the
//! on-disk format behind our back. Decoding refuses incomplete messages
//! instead of inventing defaults.

use std::collections::{BTreeMap, BTreeSet};

use gatehouse_proto::raft as pb;
use openraft::{CommittedLeaderId, EntryPayload};

use crate::types::{Entry, LogId, Member, Membership, NodeId, SnapshotMeta, StoredMembership, Vote};

/// A protobuf message that lacks a field openraft needs.
#[derive(Debug, thiserror::Error)]
#[error("malformed message: missing {0}")]
pub struct MissingField(pub &'static str);

pub fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId { term: id.leader_id.term, node_id: id.leader_id.node_id, index: id.index }
}

pub fn log_id_from_pb(id: &pb::LogId) -> LogId {
    LogId::new(CommittedLeaderId::new(id.term, id.node_id), id.index)
}

pub fn opt_log_id_to_pb(id: &Option<LogId>) -> Option<pb::LogId> {
    id.as_ref().map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(id: &Option<pb::LogId>) -> Option<LogId> {
    id.as_ref().map(log_id_from_pb)
}

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, node_id: v.leader_id.node_id, committed: v.committed }
}

pub fn vote_from_pb(v: &pb::Vote) -> Vote {
    if v.committed {
        Vote::new_committed(v.term, v.node_id)
    } else {
        Vote::new(v.term, v.node_id)
    }
}

pub fn req_vote_from_pb(v: &Option<pb::Vote>) -> Result<Vote, MissingField> {
    v.as_ref().map(vote_from_pb).ok_or(MissingField("vote"))
}

pub fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m.get_joint_config().iter().map(|c| pb::NodeIdSet { ids: c.iter().copied().collect() }).collect(),
        nodes: m
            .nodes()
            .map(|(id, n)| (*id, pb::Node { addr: n.addr.clone(), client_addr: n.client_addr.clone() }))
            .collect(),
    }
}

pub fn membership_from_pb(m: &pb::Membership) -> Membership {
    let configs: Vec<BTreeSet<NodeId>> = m.configs.iter().map(|c| c.ids.iter().copied().collect()).collect();
    let nodes: BTreeMap<NodeId, Member> =
        m.nodes.iter().map(|(id, n)| (*id, Member::split(n.addr.clone(), n.client_addr.clone()))).collect();
    Membership::new(configs, nodes)
}

pub fn stored_membership_to_pb(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership { log_id: opt_log_id_to_pb(m.log_id()), membership: Some(membership_to_pb(m.membership())) }
}

pub fn stored_membership_from_pb(m: &pb::StoredMembership) -> Result<StoredMembership, MissingField> {
    let membership = m.membership.as_ref().ok_or(MissingField("membership"))?;
    Ok(StoredMembership::new(opt_log_id_from_pb(&m.log_id), membership_from_pb(membership)))
}

/// An entry as stored and sent. Takes the entry by value: the command batch
/// is moved, not copied (the write path owns its entries; batches are large).
pub fn entry_into_pb(e: Entry) -> pb::Entry {
    let log_id = Some(log_id_to_pb(&e.log_id));
    let payload = match e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(batch) => pb::entry::Payload::Normal(batch),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(&m)),
    };
    pb::Entry { log_id, payload: Some(payload) }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, MissingField> {
    let log_id = log_id_from_pb(e.log_id.as_ref().ok_or(MissingField("entry log id"))?);
    let payload = match e.payload.ok_or(MissingField("entry payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Normal(batch) => EntryPayload::Normal(batch),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)),
    };
    Ok(Entry { log_id, payload })
}

pub fn snapshot_meta_to_pb(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(&m.last_log_id),
        last_membership: Some(stored_membership_to_pb(&m.last_membership)),
        snapshot_id: m.snapshot_id.clone(),
    }
}

pub fn snapshot_meta_from_pb(m: &pb::SnapshotMeta) -> Result<SnapshotMeta, MissingField> {
    let mem = m.last_membership.as_ref().ok_or(MissingField("snapshot membership"))?;
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(&m.last_log_id),
        last_membership: stored_membership_from_pb(mem)?,
        snapshot_id: m.snapshot_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_proto::events::CommandBatch;

    #[test]
    fn entries_round_trip() {
        let mem = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([(1, Member::new("a:1")), (2, Member::split("b:2", "b:3")), (3, Member::new("c:3"))]),
        );
        let id = LogId::new(CommittedLeaderId::new(4, 2), 17);
        for payload in
            [EntryPayload::Blank, EntryPayload::Normal(CommandBatch::default()), EntryPayload::Membership(mem)]
        {
            let e = Entry { log_id: id, payload };
            let back = entry_from_pb(entry_into_pb(e.clone())).unwrap();
            assert_eq!(back.log_id, e.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", e.payload));
        }
        assert!(entry_from_pb(pb::Entry::default()).is_err());
    }

    #[test]
    fn votes_round_trip() {
        for v in [Vote::new(3, 1), Vote::new_committed(9, 2)] {
            assert_eq!(vote_from_pb(&vote_to_pb(&v)), v);
        }
    }
}
