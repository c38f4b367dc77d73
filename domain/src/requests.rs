//! Idempotency: a command retried with the same request id (after a timeout
//! or a leader change) is applied once, and the retry gets the first result.
//!
//! Records are kept for [`REQUEST_TTL_MS`] of log time (the `proposed_at` of
//! later commands), so pruning is deterministic: every node drops the same
//! records at the same log position.

use std::collections::{HashMap, VecDeque};

use gatehouse_proto::events::{Command, CommandResult};
use gatehouse_proto::state::RequestRecord;

use crate::mutation::{Mutation, Table};
use crate::state::put;

/// How long a request id is remembered: far longer than any client retries.
pub const REQUEST_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// Longest accepted request id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

#[derive(Debug, Default)]
pub(crate) struct Requests {
    results: HashMap<String, RequestRecord>,
    /// Request ids in apply order, oldest first, for pruning.
    order: VecDeque<(u64, String)>,
}

impl Requests {
    pub(crate) fn get(&self, request_id: &str) -> Option<&CommandResult> {
        self.record(request_id).and_then(|r| r.result.as_ref())
    }

    /// The record of `request_id`, if it was seen.
    pub(crate) fn record(&self, request_id: &str) -> Option<&RequestRecord> {
        if request_id.is_empty() {
            return None;
        }
        self.results.get(request_id)
    }

    pub(crate) fn remember(&mut self, cmd: &Command, result: &CommandResult, out: &mut Vec<Mutation>) {
        // Overlong ids are not remembered (the proposer refuses them first).
        if cmd.request_id.is_empty() || cmd.request_id.len() > MAX_REQUEST_ID_LEN {
            return;
        }
        let rec = RequestRecord {
            request_id: cmd.request_id.clone(),
            proposed_at: cmd.proposed_at,
            result: Some(result.clone()),
            // A SHA-256 or nothing: no proposer may make the record grow.
            request_digest: if cmd.request_digest.len() == 32 { cmd.request_digest.clone() } else { Vec::new() },
        };
        out.push(put(Table::Requests, &rec.request_id, &rec));
        self.order.push_back((cmd.proposed_at, rec.request_id.clone()));
        self.results.insert(rec.request_id.clone(), rec);
    }

    /// Forgets request ids older than the TTL, as seen from `now` (log time).
    pub(crate) fn prune(&mut self, now: u64, out: &mut Vec<Mutation>) {
        while let Some((at, _)) = self.order.front() {
            if at.saturating_add(REQUEST_TTL_MS) >= now {
                break;
            }
            let (_, id) = self.order.pop_front().expect("front exists");
            self.results.remove(&id);
            out.push(Mutation::Delete { table: Table::Requests, key: id.into_bytes() });
        }
    }

    pub(crate) fn load(&mut self, rec: RequestRecord) {
        self.results.insert(rec.request_id.clone(), rec);
    }

    pub(crate) fn finish_load(&mut self) {
        let mut recs: Vec<&RequestRecord> = self.results.values().collect();
        recs.sort_by_key(|r| r.result.as_ref().map_or(0, |res| res.log_index));
        self.order = recs.into_iter().map(|r| (r.proposed_at, r.request_id.clone())).collect();
    }
}

#[cfg(test)]
mod tests {
    use crate::state::State;
    use gatehouse_proto::events::{command::Payload, command_result::Code, Command, RevokeApiKey};

    fn revoke(key_id: &str, digest: u8) -> Command {
        Command {
            proposed_at: 1_000,
            request_id: "idem:k:K:0".into(),
            request_digest: vec![digest; 32],
            payload: Some(Payload::RevokeApiKey(RevokeApiKey { key_id: key_id.into() })),
            ..Default::default()
        }
    }

    /// The same id and digest: the first answer. The same id for another
    /// request: refused, and the first record stays as it was.
    #[test]
    fn a_request_id_answers_only_the_request_it_was_made_for() {
        let mut s = State::default();
        let mut out = Vec::new();
        let first = s.apply(1, &revoke("1111111111111111", 1), &mut out);
        assert_eq!(first.code, Code::NotFound as i32);
        assert_eq!(s.apply(2, &revoke("1111111111111111", 1), &mut Vec::new()), first);
        let mut other = Vec::new();
        let r = s.apply(3, &revoke("2222222222222222", 2), &mut other);
        assert_eq!(r.code, Code::FailedPrecondition as i32);
        assert!(r.message.contains("idempotency key reused"), "{r:?}");
        assert!(other.is_empty(), "{other:?}");
        assert_eq!(s.apply(4, &revoke("1111111111111111", 1), &mut Vec::new()), first);
        // Without a digest (older proposers), the id alone decides, as before.
        let mut plain = revoke("2222222222222222", 0);
        plain.request_digest.clear();
        assert_eq!(s.apply(5, &plain, &mut Vec::new()), first);
    }
}
