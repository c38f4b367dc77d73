//! The tamper-evident audit log.
//!
//! Nodes batch the security events they see into `AppendAudit` commands.
//! Apply numbers each event and chains it to the one before:
//!
//! ```text
//!   h_0 = 32 zero bytes
//!   h_n = SHA-256(h_{n-1} || canonical(record_n))
//! ```
//!
//! where `canonical(record_n)` is the protobuf encoding of the
//! [`AuditRecord`] with its `hash` left empty (prost writes fields in tag
//! order, so the encoding is stable). Changing, inserting or removing a
//! stored record breaks the chain at that point; [`Verifier`] finds it.
//!
//! Records live only in storage (they are not kept in memory); the view
//! holds the [`AuditChain`]: the newest record and the anchor that retained
//! records chain from after a prune.

use gatehouse_proto::events::{AppendAudit, AuditEvent, PruneAudit};
use gatehouse_proto::state::{AuditChain, AuditRecord, OriginBatch};
use sha2::{Digest, Sha256};

use crate::mutation::{Mutation, Table};
use crate::result::{ApplyError, Outcome};
use crate::state::State;
use crate::{codec, state::put};

/// Most events in one command.
pub const MAX_EVENTS: usize = 10_000;
/// Largest encoded event.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;
/// The key of the chain record in [`Table::AuditChain`].
pub const CHAIN_KEY: &str = "chain";
/// The hash the first record chains from.
pub const GENESIS: [u8; 32] = [0; 32];

/// The storage key of record `seq`: big-endian, so records sort by sequence.
pub fn record_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// `h_n` from `h_{n-1}` and record n, whose `hash` field must be empty
/// (that encoding is the canonical form).
pub fn chain_hash(prev: &[u8], canonical: &AuditRecord) -> [u8; 32] {
    debug_assert!(canonical.hash.is_empty());
    let mut h = Sha256::new();
    h.update(prev);
    h.update(prost::Message::encode_to_vec(canonical));
    h.finalize().into()
}

/// Fills in the genesis hashes of a chain that never had a record.
pub fn normalized(mut chain: AuditChain) -> AuditChain {
    if chain.head_hash.is_empty() {
        chain.head_hash = GENESIS.to_vec();
    }
    if chain.anchor_hash.is_empty() {
        chain.anchor_hash = GENESIS.to_vec();
    }
    chain
}

/// Record `seq` holding `event`, chained onto `prev`: its hash and its
/// stored value ([`codec::encode`] of the record). The event is encoded
/// once, without a copy: the canonical form (`seq`, `event`) is hashed, and
/// the stored value is the format version, that same encoding, then the
/// `hash` field, which is how prost encodes the whole record (tags in
/// order, the hash last).
fn seal(seq: u64, event: &AuditEvent, prev: &[u8]) -> ([u8; 32], Vec<u8>) {
    use prost::encoding;
    let mut value = Vec::with_capacity(prost::Message::encoded_len(event) + 48);
    value.push(codec::FORMAT_V1);
    encoding::uint64::encode(1, &seq, &mut value);
    encoding::message::encode(2, event, &mut value);
    let hash: [u8; 32] = Sha256::new().chain_update(prev).chain_update(&value[1..]).finalize().into();
    // The `hash` field (tag 3, length-delimited) written straight from the array.
    encoding::encode_key(3, encoding::WireType::LengthDelimited, &mut value);
    encoding::encode_varint(hash.len() as u64, &mut value);
    value.extend_from_slice(&hash);
    (hash, value)
}

/// An `AppendAudit` command chained onto a given head: the records to
/// store and the head after them. Computing it needs nothing but the chain,
/// so apply can do it before it takes the view's write lock (readers keep
/// verifying meanwhile) and then only install it.
#[derive(Debug)]
pub struct Chained {
    /// The chain this was computed from; installed only onto the same one.
    base: AuditChain,
    after: AuditChain,
    records: Vec<Mutation>,
    /// A retry of a batch already appended: nothing to install.
    retry: bool,
}

/// The last numbered batch applied from `node`, if any.
pub fn last_batch(chain: &AuditChain, node: u64) -> Option<u64> {
    chain.batches.binary_search_by_key(&node, |b| b.node_id).ok().map(|i| chain.batches[i].batch)
}

fn set_last_batch(chain: &mut AuditChain, node: u64, batch: u64) {
    match chain.batches.binary_search_by_key(&node, |b| b.node_id) {
        Ok(i) => chain.batches[i].batch = batch,
        Err(i) => chain.batches.insert(i, OriginBatch { node_id: node, batch }),
    }
}

/// A batch's count and each event's size and action.
pub fn check_batch(c: &AppendAudit) -> Result<(), ApplyError> {
    if c.events.len() > MAX_EVENTS {
        return Err(ApplyError::Invalid("too many audit events in one command".into()));
    }
    if c.events.iter().any(|e| prost::Message::encoded_len(e) > MAX_EVENT_BYTES || e.action.is_empty()) {
        return Err(ApplyError::Invalid("audit event empty or too large".into()));
    }
    Ok(())
}

/// Chains `c`'s events (after an `audit.dropped` note when the node lost
/// some) onto `base`. A numbered batch at or below its origin's last is a
/// retry of one already appended: it chains nothing.
pub(crate) fn chain(base: &AuditChain, origin_node: u64, now: u64, c: &AppendAudit) -> Result<Chained, ApplyError> {
    if c.batch != 0 && last_batch(base, origin_node).is_some_and(|last| c.batch <= last) {
        return Ok(Chained { base: base.clone(), after: base.clone(), records: Vec::new(), retry: true });
    }
    check_batch(c)?;
    let note = (c.dropped > 0).then(|| AuditEvent {
        at: now,
        action: "audit.dropped".into(),
        outcome: "failed".into(),
        node_id: origin_node,
        resource: format!("node:{origin_node}"),
        detail: format!("count={}", c.dropped),
        ..Default::default()
    });
    let mut after = normalized(base.clone());
    let mut records = Vec::with_capacity(c.events.len() + 1);
    // The newest hash, kept on the stack; the head takes it once at the end.
    let mut last: Option<[u8; 32]> = None;
    for event in note.iter().chain(&c.events) {
        after.head_seq += 1;
        let prev = last.as_ref().map_or(after.head_hash.as_slice(), |h| h.as_slice());
        let (hash, value) = seal(after.head_seq, event, prev);
        records.push(Mutation::Put { table: Table::Audit, key: record_key(after.head_seq).to_vec(), value });
        last = Some(hash);
    }
    if let Some(hash) = last {
        after.head_hash = hash.to_vec();
    }
    if c.batch != 0 {
        set_last_batch(&mut after, origin_node, c.batch);
    }
    Ok(Chained { base: base.clone(), after, records, retry: false })
}

/// The head `chained` leaves (to chain the next command of an entry onto).
pub(crate) fn head_after(chained: &Result<Chained, ApplyError>) -> Option<&AuditChain> {
    chained.as_ref().ok().map(|c| &c.after)
}

/// Applies an `AppendAudit`; `prepared` is the same command chained ahead
/// of time, used when it was chained onto the head the state has now
/// (otherwise the command is chained here).
pub(crate) fn append(
    state: &mut State,
    origin_node: u64,
    now: u64,
    c: &AppendAudit,
    prepared: Option<Result<Chained, ApplyError>>,
    out: &mut Vec<Mutation>,
) -> Result<Outcome, ApplyError> {
    let chained = match prepared {
        Some(Ok(p)) if p.base == state.audit => p,
        // Refusals depend on the command alone.
        Some(Err(e)) => return Err(e),
        _ => chain(&state.audit, origin_node, now, c)?,
    };
    if chained.retry {
        // A retried batch: appended the first time, nothing to do now.
        let last_batch = last_batch(&state.audit, origin_node).unwrap_or(0);
        return Ok(Outcome { id: "duplicate".into(), last_batch, ..Default::default() });
    }
    let first = chained.base.head_seq + 1;
    out.extend(chained.records);
    state.audit = chained.after;
    out.push(put(Table::AuditChain, CHAIN_KEY, &state.audit));
    Ok(format!("{first}").into())
}

/// Deletes records `anchor_seq + 1 ..= through_seq`; the proposer checked
/// they are past retention and that `through_hash` is what the chain says.
pub(crate) fn prune(state: &mut State, c: &PruneAudit, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    let chain = &mut state.audit;
    if c.through_seq <= chain.anchor_seq || c.through_seq > chain.head_seq {
        return Err(ApplyError::FailedPrecondition("nothing to prune up to that sequence number".into()));
    }
    if c.through_hash.len() != 32 {
        return Err(ApplyError::Invalid("the anchor hash must be 32 bytes".into()));
    }
    if c.through_seq == chain.head_seq && c.through_hash[..] != chain.head_hash[..] {
        return Err(ApplyError::FailedPrecondition("the anchor hash is not the chain's".into()));
    }
    out.push(Mutation::DeleteRange {
        table: Table::Audit,
        from: record_key(chain.anchor_seq + 1).to_vec(),
        to: record_key(c.through_seq + 1).to_vec(),
    });
    chain.anchor_seq = c.through_seq;
    chain.anchor_hash = c.through_hash.clone();
    let pruned = c.through_seq;
    out.push(put(Table::AuditChain, CHAIN_KEY, &state.audit));
    Ok(pruned.to_string())
}

/// Where a chain check stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    /// The record with this sequence number is missing.
    Missing(u64),
    /// Record `seq` does not hash to what is stored (changed, or its predecessor was).
    Mismatch(u64),
    /// A stored value that is not a record, or a record under the wrong key.
    Malformed(u64),
    /// Records beyond the chain's recorded head, or the head's hash differs.
    Head(u64),
}

impl Broken {
    /// The first sequence number that fails.
    pub fn seq(&self) -> u64 {
        match self {
            Broken::Missing(s) | Broken::Mismatch(s) | Broken::Malformed(s) | Broken::Head(s) => *s,
        }
    }
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Missing(s) => write!(f, "record {s} is missing"),
            Broken::Mismatch(s) => write!(f, "record {s} does not match its chain hash"),
            Broken::Malformed(s) => write!(f, "record {s} cannot be read"),
            Broken::Head(s) => write!(f, "the chain's head does not match record {s}"),
        }
    }
}

/// Recomputes the chain record by record, in sequence order.
#[derive(Debug)]
pub struct Verifier {
    expected_seq: u64,
    hash: Vec<u8>,
    head_seq: u64,
    head_hash: Vec<u8>,
    pub checked: u64,
}

impl Verifier {
    /// Starts from the chain's anchor; checks up to its head.
    pub fn new(chain: &AuditChain) -> Self {
        let chain = normalized(chain.clone());
        Verifier {
            expected_seq: chain.anchor_seq + 1,
            hash: chain.anchor_hash.clone(),
            head_seq: chain.head_seq,
            head_hash: chain.head_hash.clone(),
            checked: 0,
        }
    }

    /// The next stored record (its key and value); the record, once it verified.
    pub fn next(&mut self, key: &[u8], value: &[u8]) -> Result<AuditRecord, Broken> {
        let seq = <[u8; 8]>::try_from(key).map(u64::from_be_bytes).map_err(|_| Broken::Malformed(self.expected_seq))?;
        if seq > self.head_seq {
            return Err(Broken::Head(seq));
        }
        if seq != self.expected_seq {
            return Err(if seq > self.expected_seq {
                Broken::Missing(self.expected_seq)
            } else {
                Broken::Malformed(seq)
            });
        }
        let mut record: AuditRecord = codec::decode(value).map_err(|_| Broken::Malformed(seq))?;
        if record.seq != seq || record.event.is_none() {
            return Err(Broken::Malformed(seq));
        }
        let stored = std::mem::take(&mut record.hash);
        let want = chain_hash(&self.hash, &record);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&want[..], &stored[..])) {
            return Err(Broken::Mismatch(seq));
        }
        self.hash.clone_from(&stored);
        record.hash = stored;
        self.expected_seq += 1;
        self.checked += 1;
        Ok(record)
    }

    /// After the last stored record: the chain must end at its head.
    pub fn finish(&self) -> Result<(), Broken> {
        if self.expected_seq <= self.head_seq {
            return Err(Broken::Missing(self.expected_seq));
        }
        if self.hash != self.head_hash {
            return Err(Broken::Head(self.head_seq));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Prepared;
    use gatehouse_proto::events::{command::Payload, Command};

    fn event(action: &str) -> AuditEvent {
        AuditEvent { at: 5, action: action.into(), outcome: "ok".into(), ..Default::default() }
    }

    fn append_cmd(events: Vec<AuditEvent>, dropped: u64) -> Command {
        Command {
            proposed_at: 10,
            origin_node: 2,
            payload: Some(Payload::AppendAudit(AppendAudit { events, dropped, batch: 0 })),
            ..Default::default()
        }
    }

    /// The records apply wrote, as (key, value) in key order.
    fn records(out: &[Mutation]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut r: Vec<_> = out
            .iter()
            .filter_map(|m| match m {
                Mutation::Put { table: Table::Audit, key, value } => Some((key.clone(), value.clone())),
                _ => None,
            })
            .collect();
        r.sort();
        r
    }

    fn verify(chain: &AuditChain, recs: &[(Vec<u8>, Vec<u8>)]) -> Result<u64, Broken> {
        let mut v = Verifier::new(chain);
        for (k, val) in recs {
            v.next(k, val)?;
        }
        v.finish()?;
        Ok(v.checked)
    }

    #[test]
    fn appends_chain_and_any_change_is_found() {
        let mut s = State::default();
        let mut out = Vec::new();
        let r = s.apply(1, &append_cmd(vec![event("login.success"), event("logout")], 3), &mut out);
        assert_eq!(r.id, "1");
        s.apply(2, &append_cmd(vec![event("key.create")], 0), &mut out);
        assert_eq!(s.audit_chain().head_seq, 4);
        let recs = records(&out);
        assert_eq!(verify(&s.audit_chain(), &recs), Ok(4));
        let first: AuditRecord = codec::decode(&recs[0].1).unwrap();
        assert_eq!(first.event.unwrap().action, "audit.dropped");

        // Change one field of record 2.
        let mut changed = recs.clone();
        let mut r2: AuditRecord = codec::decode(&changed[1].1).unwrap();
        r2.event.as_mut().unwrap().outcome = "denied".into();
        changed[1].1 = codec::encode(&r2);
        assert_eq!(verify(&s.audit_chain(), &changed), Err(Broken::Mismatch(2)));
        // Remove record 3, or the last one.
        let mut gap = recs.clone();
        gap.remove(2);
        assert_eq!(verify(&s.audit_chain(), &gap), Err(Broken::Missing(3)));
        assert_eq!(verify(&s.audit_chain(), &recs[..3]), Err(Broken::Missing(4)));
        // Garbage under a record's key.
        let mut junk = recs.clone();
        junk[0].1 = vec![1, 2, 3];
        assert_eq!(verify(&s.audit_chain(), &junk), Err(Broken::Malformed(1)));
    }

    /// A numbered batch is appended once however often it is retried, and
    /// keeps no idempotency record (which would grow by one per flush).
    #[test]
    fn a_retried_batch_appends_once_and_keeps_no_request_record() {
        let numbered = |origin: u64, batch: u64, request_id: &str| Command {
            proposed_at: 10,
            origin_node: origin,
            request_id: request_id.into(),
            payload: Some(Payload::AppendAudit(AppendAudit {
                events: vec![event("login.failure")],
                dropped: 1,
                batch,
            })),
            ..Default::default()
        };
        let mut s = State::default();
        let mut out = Vec::new();
        assert_eq!(s.apply(1, &numbered(2, 7, "r1"), &mut out).code, 0);
        assert_eq!(s.audit_chain().head_seq, 2);
        assert!(!out.iter().any(|m| matches!(m, Mutation::Put { table: Table::Requests, .. })), "{out:?}");
        // The same batch again (a retry with the same id or another), or an older one: nothing.
        for (index, cmd) in [(2, numbered(2, 7, "r1")), (3, numbered(2, 7, "r2")), (4, numbered(2, 6, "r3"))] {
            let mut again = Vec::new();
            let r = s.apply(index, &cmd, &mut again);
            assert_eq!((r.code, r.id.as_str(), r.last_batch), (0, "duplicate", 7));
            assert!(again.is_empty(), "{again:?}");
        }
        assert_eq!(s.audit_chain().head_seq, 2);
        // The next batch, and another node's batch 1, are appended.
        s.apply(5, &numbered(2, 8, "r4"), &mut out);
        s.apply(6, &numbered(1, 1, "r5"), &mut out);
        assert_eq!(s.audit_chain().head_seq, 6);
        assert_eq!((last_batch(&s.audit_chain(), 2), last_batch(&s.audit_chain(), 1)), (Some(8), Some(1)));
        assert_eq!(s.audit_chain().batches.iter().map(|b| b.node_id).collect::<Vec<_>>(), [1, 2], "sorted");
        assert_eq!(verify(&s.audit_chain(), &records(&out)), Ok(6));
        // Prepared ahead under a read lock, the same holds.
        let mut p = State::default();
        let cmds = [numbered(2, 7, "a"), numbered(2, 7, "b"), numbered(2, 8, "c")];
        let prepared = p.prepare(&cmds);
        let mut pout = Vec::new();
        for (i, (cmd, prep)) in cmds.iter().zip(prepared).enumerate() {
            p.apply_prepared(i as u64 + 1, cmd, prep, &mut pout);
        }
        assert_eq!(p.audit_chain().head_seq, 4);
        assert_eq!(verify(&p.audit_chain(), &records(&pout)), Ok(4));
    }

    #[test]
    fn prune_keeps_the_rest_verifiable() {
        let mut s = State::default();
        let mut out = Vec::new();
        s.apply(1, &append_cmd((0..5).map(|_| event("login.failure")).collect(), 0), &mut out);
        let recs = records(&out);
        let third: AuditRecord = codec::decode(&recs[2].1).unwrap();
        let prune = |seq: u64, hash: Vec<u8>| Command {
            proposed_at: 20,
            payload: Some(Payload::PruneAudit(PruneAudit { through_seq: seq, through_hash: hash })),
            ..Default::default()
        };
        let mut pout = Vec::new();
        assert_eq!(s.apply(2, &prune(9, third.hash.clone()), &mut pout).code, 4, "beyond the head");
        assert_eq!(s.apply(3, &prune(5, vec![0; 32]), &mut pout).code, 4, "wrong head hash");
        assert!(pout.is_empty());
        assert_eq!(s.apply(4, &prune(3, third.hash), &mut pout).code, 0);
        assert!(matches!(&pout[0], Mutation::DeleteRange { from, to, .. }
            if from[..] == record_key(1) && to[..] == record_key(4)));
        assert_eq!(verify(&s.audit_chain(), &recs[3..]), Ok(2));
        assert_eq!(s.apply(5, &prune(3, vec![0; 32]), &mut pout).code, 4, "already pruned");
    }

    #[test]
    fn a_sealed_record_is_prost_encoding_of_the_record_and_its_chain_hash() {
        let e = AuditEvent { detail: "é".repeat(300), node_id: 7, ..event("key.create") };
        let (hash, value) = seal(u64::MAX, &e, &GENESIS);
        let canonical = AuditRecord { seq: u64::MAX, event: Some(e), hash: Vec::new() };
        assert_eq!(hash, chain_hash(&GENESIS, &canonical));
        assert_eq!(value, codec::encode(&AuditRecord { hash: hash.to_vec(), ..canonical }));
    }

    /// Applying an entry with work prepared ahead (under a read lock) gives
    /// exactly what applying it alone gives, also where the preparation went
    /// stale: a prune between two appends, a retried batch.
    #[test]
    fn prepared_apply_equals_plain_apply() {
        // Request ids stay distinct; the batch number ties a retry to its first.
        let with_id = |id: &str, mut c: Command| {
            let batch = match id {
                "a" | "a2" => 1,
                other => u64::from(other.as_bytes()[0] - b'a' + 1),
            };
            if let Some(Payload::AppendAudit(a)) = &mut c.payload {
                a.batch = batch;
            }
            c.request_id = id.into();
            c
        };
        let mut seed = State::default();
        let mut seed_out = Vec::new();
        seed.apply(1, &with_id("a", append_cmd(vec![event("login.success"), event("logout")], 0)), &mut seed_out);
        let head: AuditRecord = codec::decode(&records(&seed_out)[1].1).unwrap();
        let entry = vec![
            with_id("b", append_cmd(vec![event("key.create")], 2)),
            with_id("c", append_cmd(vec![event("key.revoke"), event("logout")], 0)),
            Command {
                request_id: "d".into(),
                proposed_at: 10,
                payload: Some(Payload::PruneAudit(PruneAudit { through_seq: 2, through_hash: head.hash })),
                ..Default::default()
            },
            with_id("e", append_cmd(vec![event("session.revoke")], 0)),
            with_id("a2", append_cmd(vec![event("retried")], 0)),
            with_id("f", append_cmd(vec![event("")], 0)),
        ];
        let run = |prepare: bool| {
            let mut s = State::default();
            let mut out = Vec::new();
            s.apply(1, &with_id("a", append_cmd(vec![event("login.success"), event("logout")], 0)), &mut out);
            let prepared =
                if prepare { s.prepare(&entry) } else { entry.iter().map(|_| Prepared::default()).collect() };
            if prepare {
                // The appends were chained ahead ("f" as its refusal, "a2"
                // as a retry of batch 1), each onto the one before; "e" onto
                // a head the prune will have moved, so apply has to chain it
                // again.
                let ahead: Vec<_> = prepared
                    .iter()
                    .map(|p| match &p.audit {
                        Some(Ok(c)) => Some(c.base.head_seq),
                        Some(Err(_)) => Some(u64::MAX),
                        None => None,
                    })
                    .collect();
                assert_eq!(ahead, [Some(2), Some(4), None, Some(6), Some(7), Some(u64::MAX)]);
                assert_ne!(prepared[3].audit.as_ref().unwrap().as_ref().unwrap().base.anchor_seq, 2);
            }
            let results: Vec<_> =
                entry.iter().zip(prepared).map(|(c, p)| s.apply_prepared(2, c, p, &mut out)).collect();
            (results, out, s.audit_chain())
        };
        let (plain, prepared) = (run(false), run(true));
        assert_eq!(plain.0.iter().map(|r| r.code).collect::<Vec<_>>(), [0, 0, 0, 0, 0, 1]);
        assert_eq!(plain.0[4].id, "duplicate");
        assert_eq!(plain.0, prepared.0);
        assert_eq!(plain.1, prepared.1);
        assert_eq!(plain.2, prepared.2);
        assert_eq!(prepared.2.head_seq, 7);
        assert_eq!(verify(&prepared.2, &records(&prepared.1)[2..]), Ok(5));
    }

    #[test]
    fn an_entry_without_audit_commands_prepares_nothing() {
        let s = State::default();
        let cmd = Command { payload: Some(Payload::RevokeAllSessions(Default::default())), ..Default::default() };
        assert!(s.prepare(&[cmd.clone(), cmd]).is_empty());
    }

    #[test]
    fn oversized_batches_and_events_are_refused_whole() {
        let mut s = State::default();
        let mut out = Vec::new();
        let big = AuditEvent { detail: "x".repeat(MAX_EVENT_BYTES), ..event("a") };
        assert_eq!(s.apply(1, &append_cmd(vec![event("a"), big], 0), &mut out).code, 1);
        assert_eq!(s.apply(2, &append_cmd(vec![event("")], 0), &mut out).code, 1);
        let many = (0..=MAX_EVENTS).map(|_| event("a")).collect();
        assert_eq!(s.apply(3, &append_cmd(many, 0), &mut out).code, 1);
        assert!(out.is_empty());
        assert_eq!(s.audit_chain().head_seq, 0);
    }
}
