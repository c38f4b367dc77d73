//! The record of a chaos run: every client operation with its client-side
//! invoke and completion times and what came back.
//!
//! An operation ends in one of three ways:
//! - `Ok`: the cluster answered; the value says what (including refusals
//!   such as `NotFound`, which are answers about the state too).
//! - `Fail`: it certainly did not happen (a read that failed, a write refused
//!   before it was proposed).
//! - `Unknown`: a write whose answer was lost (timeout, connection reset,
//!   `UNAVAILABLE` after it may have been forwarded): it may or may not have
//!   taken effect, and the checkers must allow both.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    CreateUser,
    DisableUser,
    EnableUser,
    ReadUser,
    CreateKey,
    RevokeKey,
    ReadKey,
    /// A password login: creates a session.
    Login,
    RevokeSession,
    ReadSession,
    VerifyKey,
    VerifySession,
}

impl Kind {
    pub fn is_write(self) -> bool {
        !matches!(self, Kind::ReadUser | Kind::ReadKey | Kind::ReadSession | Kind::VerifyKey | Kind::VerifySession)
    }
}

/// The state of an object as a read saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Seen {
    Absent,
    Active,
    Disabled,
    Revoked,
}

/// What an answered operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Created; the id the server gave it.
    Created(String),
    /// The create was refused: it exists (for a retried key create: the id
    /// its first attempt made).
    AlreadyExists(String),
    Done,
    NotFound,
    /// Refused because of the state (e.g. revoking a revoked key).
    Precondition,
    Read(Seen),
    /// An HTTP verification's status code.
    Status(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(Value),
    Fail(String),
    Unknown(String),
}

/// One operation.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub node: u64,
    pub kind: Kind,
    /// The object: a username, a key id, a session id; for a key create, the
    /// idempotency key (also the key's name), which its retries share.
    pub target: String,
    /// For a key create: the username the key is for (a key answers for its
    /// user, so disabling the user stops it). `None` for every other kind;
    /// see [`crate::checks::key_owners`] for a key id's owner.
    pub owner: Option<String>,
    /// Nanoseconds since the run started.
    pub invoke: u64,
    pub complete: u64,
    pub outcome: Outcome,
}

impl Op {
    pub fn ok(&self) -> Option<&Value> {
        match &self.outcome {
            Outcome::Ok(v) => Some(v),
            _ => None,
        }
    }
}

/// Shared by the clients of one run.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder { start, ops: Arc::default() }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.since(Instant::now())
    }

    pub fn since(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_nanos() as u64
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// Every operation, in invoke order.
    pub fn history(&self) -> Vec<Op> {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ops.sort_by_key(|o| (o.invoke, o.client));
        ops
    }
}
