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
        if request_id.is_empty() {
            return None;
        }
        self.results.get(request_id).and_then(|r| r.result.as_ref())
    }

    pub(crate) fn record(&mut self, cmd: &Command, result: &CommandResult, out: &mut Vec<Mutation>) {
        // Overlong ids are not remembered (the proposer refuses them first).
        if cmd.request_id.is_empty() || cmd.request_id.len() > MAX_REQUEST_ID_LEN {
            return;
        }
        let rec = RequestRecord {
            request_id: cmd.request_id.clone(),
            proposed_at: cmd.proposed_at,
            result: Some(result.clone()),
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
