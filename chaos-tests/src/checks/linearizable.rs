//! Linearizability of the user, key and session registry, checked with the
//! WGL search in [`crate::linearizability`] against a sequential model.
//!
//! Partitions: one per API key, and one per user holding the user and its
//! sessions (disabling a user ends its sessions, so they are not
//! independent of it). Reads are the admin API's `gatehouse-consistency:
//! linearizable` reads; HTTP verifications are allowed to lag by
//! `max_staleness` by design and are checked by [`super::revocation`].
//!
//! Operations enter the check as the client saw them: answered, or unknown
//! (may or may not have happened). Writes that certainly failed and reads
//! that failed are left out. A key create whose answer was lost is retried
//! with its idempotency key; when a retry learns the key's id, the earlier
//! attempts become unknown creates of that id.

use std::collections::{BTreeMap, HashMap};

use super::session_owners;
use crate::history::{Kind, Op, Outcome, Seen, Value};
use crate::linearizability::{self, Model, Operation, Verdict};

/// One partition's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Obj {
    Key(Seen),
    /// A user and its sessions (id → alive).
    User(Seen, BTreeMap<String, bool>),
}

#[derive(Debug, Clone)]
pub struct Input {
    pub kind: Kind,
    pub partition: String,
    /// The session id for session operations.
    pub session: String,
}

/// The registry's sequential specification.
pub struct Registry;

impl Registry {
    /// What `input` does from `state`: the next state and the answer.
    fn apply(state: &Obj, input: &Input) -> Option<(Obj, Value)> {
        use Seen::*;
        Some(match (state, input.kind) {
            (Obj::Key(Absent), Kind::CreateKey) => (Obj::Key(Active), Value::Created(String::new())),
            (Obj::Key(_), Kind::CreateKey) => (state.clone(), Value::AlreadyExists(String::new())),
            (Obj::Key(Absent), Kind::RevokeKey) => (state.clone(), Value::NotFound),
            (Obj::Key(Active), Kind::RevokeKey) => (Obj::Key(Revoked), Value::Done),
            (Obj::Key(_), Kind::RevokeKey) => (state.clone(), Value::Precondition),
            (Obj::Key(s), Kind::ReadKey) => (state.clone(), Value::Read(*s)),
            (Obj::User(Absent, _), Kind::CreateUser) => {
                (Obj::User(Active, BTreeMap::new()), Value::Created(String::new()))
            }
            (Obj::User(..), Kind::CreateUser) => (state.clone(), Value::AlreadyExists(String::new())),
            (Obj::User(Absent, _), Kind::DisableUser | Kind::EnableUser | Kind::Login) => {
                (state.clone(), Value::NotFound)
            }
            (Obj::User(_, sessions), Kind::DisableUser) => {
                (Obj::User(Disabled, sessions.keys().map(|s| (s.clone(), false)).collect()), Value::Done)
            }
            (Obj::User(_, sessions), Kind::EnableUser) => (Obj::User(Active, sessions.clone()), Value::Done),
            (Obj::User(s, _), Kind::ReadUser) => (state.clone(), Value::Read(*s)),
            (Obj::User(Active, sessions), Kind::Login) => {
                let mut sessions = sessions.clone();
                sessions.insert(input.session.clone(), true);
                (Obj::User(Active, sessions), Value::Created(String::new()))
            }
            // A disabled user's login is refused: never a session.
            (Obj::User(..), Kind::Login) => return None,
            (Obj::User(s, sessions), Kind::RevokeSession) => match sessions.get(&input.session) {
                Some(true) => {
                    let mut sessions = sessions.clone();
                    sessions.insert(input.session.clone(), false);
                    (Obj::User(*s, sessions), Value::Done)
                }
                _ => (state.clone(), Value::NotFound),
            },
            (Obj::User(_, sessions), Kind::ReadSession) => {
                let alive = sessions.get(&input.session).copied().unwrap_or(false);
                (state.clone(), Value::Read(if alive { Active } else { Absent }))
            }
            _ => return None,
        })
    }
}

/// Answers compared without the ids and messages they carry.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Created(_), Value::Created(_)) | (Value::AlreadyExists(_), Value::AlreadyExists(_)) => true,
        _ => a == b,
    }
}

impl Model for Registry {
    type State = Obj;
    type Input = Input;
    type Output = Value;

    fn init(&self) -> Obj {
        // Replaced per partition by the first step: a key partition starts
        // as a key, a user partition as a user (see `step`).
        Obj::User(Seen::Absent, BTreeMap::new())
    }

    fn step(&self, state: &Obj, input: &Input, output: Option<&Value>) -> Option<Obj> {
        let state = match (state, input.partition.starts_with("key:")) {
            (Obj::User(Seen::Absent, s), true) if s.is_empty() => Obj::Key(Seen::Absent),
            _ => state.clone(),
        };
        let (next, answer) = Self::apply(&state, input)?;
        match output {
            None => Some(next),
            Some(o) if same(o, &answer) => Some(next),
            Some(_) => None,
        }
    }

    fn partition(&self, input: &Input) -> String {
        input.partition.clone()
    }
}

/// The history as the checker's operations.
pub fn operations(history: &[Op]) -> Vec<Operation<Input, Value>> {
    let owners = session_owners(history);
    // Idempotency key → the key id any attempt learned.
    let mut key_ids: HashMap<&str, String> = HashMap::new();
    for op in history.iter().filter(|o| o.kind == Kind::CreateKey) {
        if let Some(Value::Created(id) | Value::AlreadyExists(id)) = op.ok() {
            if !id.is_empty() {
                key_ids.insert(op.target.as_str(), id.clone());
            }
        }
    }
    let mut out = Vec::new();
    for op in history {
        let (partition, session) = match op.kind {
            Kind::CreateUser | Kind::DisableUser | Kind::EnableUser | Kind::ReadUser => {
                (format!("user:{}", op.target), String::new())
            }
            Kind::Login => match op.ok() {
                Some(Value::Created(id)) => (format!("user:{}", op.target), id.clone()),
                // A login without an answer has no id anything refers to.
                _ => continue,
            },
            Kind::RevokeSession | Kind::ReadSession => match owners.get(&op.target) {
                Some(user) => (format!("user:{user}"), op.target.clone()),
                None => continue,
            },
            Kind::CreateKey => match key_ids.get(op.target.as_str()) {
                Some(id) => (format!("key:{id}"), String::new()),
                None => continue,
            },
            Kind::RevokeKey | Kind::ReadKey => (format!("key:{}", op.target), String::new()),
            Kind::VerifyKey | Kind::VerifySession => continue,
        };
        let complete = match &op.outcome {
            Outcome::Ok(v) => Some((op.complete, v.clone())),
            Outcome::Unknown(_) if op.kind.is_write() => None,
            // Certainly failed, or a read without an answer: no effect.
            _ => continue,
        };
        // A key create refused for its user's state made no key.
        if op.kind == Kind::CreateKey && matches!(complete, Some((_, Value::NotFound | Value::Precondition))) {
            continue;
        }
        out.push(Operation {
            client: op.client,
            input: Input { kind: op.kind, partition, session },
            invoke: op.invoke,
            complete,
        });
    }
    out
}

/// Empty if linearizable; the explanation otherwise. A search that ran out
/// of budget is reported apart (`inconclusive`), not as a violation.
pub fn check(history: &[Op], budget: u64) -> (Vec<String>, Vec<String>) {
    let ops = operations(history);
    let mut violations = Vec::new();
    let mut inconclusive = Vec::new();
    for (partition, verdict) in linearizability::check_partitions(&Registry, &ops, budget) {
        match verdict {
            Verdict::Ok => {}
            Verdict::Timeout { .. } => inconclusive.push(partition),
            v @ Verdict::Illegal { .. } => violations.push(v.to_string()),
        }
    }
    (violations, inconclusive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: Kind, target: &str, t: (u64, u64), outcome: Outcome) -> Op {
        Op { client: 0, node: 1, kind, target: target.into(), invoke: t.0, complete: t.1, outcome }
    }

    fn ok(v: Value) -> Outcome {
        Outcome::Ok(v)
    }

    #[test]
    fn a_consistent_history_passes() {
        let h = vec![
            op(Kind::CreateUser, "u", (0, 10), ok(Value::Created("id".into()))),
            op(Kind::Login, "u", (20, 30), ok(Value::Created("s1".into()))),
            op(Kind::ReadSession, "s1", (40, 50), ok(Value::Read(Seen::Active))),
            op(Kind::CreateKey, "c0-k1", (0, 10), Outcome::Unknown("timeout".into())),
            op(Kind::CreateKey, "c0-k1", (11, 20), ok(Value::AlreadyExists("k1".into()))),
            op(Kind::ReadKey, "k1", (30, 40), ok(Value::Read(Seen::Active))),
            op(Kind::RevokeKey, "k1", (50, 60), ok(Value::Done)),
            op(Kind::RevokeKey, "k1", (70, 80), ok(Value::Precondition)),
            op(Kind::DisableUser, "u", (60, 70), ok(Value::Done)),
            op(Kind::ReadSession, "s1", (80, 90), ok(Value::Read(Seen::Absent))),
        ];
        let (v, i) = check(&h, 100_000);
        assert!(v.is_empty() && i.is_empty(), "{v:?} {i:?}");
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_revoke_is_a_violation() {
        let h = vec![
            op(Kind::CreateKey, "c0-k1", (0, 10), ok(Value::Created("k1".into()))),
            op(Kind::RevokeKey, "k1", (20, 30), ok(Value::Done)),
            op(Kind::ReadKey, "k1", (40, 50), ok(Value::Read(Seen::Active))),
        ];
        let (v, _) = check(&h, 100_000);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("key:k1"));
    }

    #[test]
    fn a_session_that_survives_its_users_disabling_is_a_violation() {
        let h = vec![
            op(Kind::CreateUser, "u", (0, 10), ok(Value::Created("id".into()))),
            op(Kind::Login, "u", (20, 30), ok(Value::Created("s1".into()))),
            op(Kind::DisableUser, "u", (40, 50), ok(Value::Done)),
            op(Kind::ReadSession, "s1", (60, 70), ok(Value::Read(Seen::Active))),
        ];
        assert_eq!(check(&h, 100_000).0.len(), 1);
    }
}
