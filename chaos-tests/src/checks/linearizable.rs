//! Linearizability of the user, key and session registry, checked with the
//! WGL search in [`crate::linearizability`] against a sequential model.
//!
//! Partitions: one per user, holding the user, its sessions and its API keys
//! (disabling a user ends its sessions, and a key can only be created for an
//! active user, so none of them is independent of the user; a key never
//! changes owner, so no partition depends on another). A key whose owner the
//! history does not name is a partition of its own. Reads are the admin
//! API's `gatehouse-consistency: linearizable` reads; HTTP verifications are
//! allowed to lag by `max_staleness` by design and are checked by
//! [`super::revocation`] (including a disabled user's keys).
//!
//! Operations enter the check as the client saw them: answered, or unknown
//! (may or may not have happened). Writes that certainly failed and reads
//! that failed are left out. A key create whose answer was lost is retried
//! with its idempotency key; when a retry learns the key's id, the earlier
//! attempts become unknown creates of that id.

use std::collections::{BTreeMap, HashMap};

use super::{key_owners, session_owners};
use crate::history::{Kind, Op, Outcome, Seen, Value};
use crate::linearizability::{self, Model, Operation, Verdict};

/// One partition's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Obj {
    /// A key whose owner is not known, checked on its own.
    Key(Seen),
    /// A user, its sessions (id → alive) and its keys (id → state; a key
    /// absent from the map does not exist).
    User(Seen, BTreeMap<String, bool>, BTreeMap<String, Seen>),
}

#[derive(Debug, Clone)]
pub struct Input {
    pub kind: Kind,
    pub partition: String,
    /// The session id for session operations; the key id for key operations
    /// in their owner's partition; empty otherwise.
    pub member: String,
}

/// The registry's sequential specification.
pub struct Registry;

impl Registry {
    /// What `input` does from `state`: the next state and the answer.
    fn apply(state: &Obj, input: &Input) -> Option<(Obj, Value)> {
        use Seen::*;
        Some(match (state, input.kind) {
            (Obj::Key(key), kind) => {
                let (next, answer) = key_op(None, *key, kind)?;
                (Obj::Key(next), answer)
            }
            (Obj::User(user, sessions, keys), Kind::CreateKey | Kind::RevokeKey | Kind::ReadKey) => {
                let key = keys.get(&input.member).copied().unwrap_or(Absent);
                let (next, answer) = key_op(Some(*user), key, input.kind)?;
                let mut keys = keys.clone();
                if next != Absent {
                    keys.insert(input.member.clone(), next);
                }
                (Obj::User(*user, sessions.clone(), keys), answer)
            }
            (Obj::User(Absent, ..), Kind::CreateUser) => {
                (Obj::User(Active, BTreeMap::new(), BTreeMap::new()), Value::Created(String::new()))
            }
            (Obj::User(..), Kind::CreateUser) => (state.clone(), Value::AlreadyExists(String::new())),
            (Obj::User(Absent, ..), Kind::DisableUser | Kind::EnableUser | Kind::Login) => {
                (state.clone(), Value::NotFound)
            }
            // Disabling ends the sessions; the keys stay (refused while the
            // user is disabled, which only verifications show).
            (Obj::User(_, sessions, keys), Kind::DisableUser) => {
                let ended = sessions.keys().map(|s| (s.clone(), false)).collect();
                (Obj::User(Disabled, ended, keys.clone()), Value::Done)
            }
            (Obj::User(_, sessions, keys), Kind::EnableUser) => {
                (Obj::User(Active, sessions.clone(), keys.clone()), Value::Done)
            }
            (Obj::User(s, ..), Kind::ReadUser) => (state.clone(), Value::Read(*s)),
            (Obj::User(Active, sessions, keys), Kind::Login) => {
                let mut sessions = sessions.clone();
                sessions.insert(input.member.clone(), true);
                (Obj::User(Active, sessions, keys.clone()), Value::Created(String::new()))
            }
            // A disabled user's login is refused: never a session.
            (Obj::User(..), Kind::Login) => return None,
            (Obj::User(s, sessions, keys), Kind::RevokeSession) => match sessions.get(&input.member) {
                Some(true) => {
                    let mut sessions = sessions.clone();
                    sessions.insert(input.member.clone(), false);
                    (Obj::User(*s, sessions, keys.clone()), Value::Done)
                }
                _ => (state.clone(), Value::NotFound),
            },
            (Obj::User(_, sessions, _), Kind::ReadSession) => {
                let alive = sessions.get(&input.member).copied().unwrap_or(false);
                (state.clone(), Value::Read(if alive { Active } else { Absent }))
            }
            _ => return None,
        })
    }
}

/// A key operation on a key in state `key` whose user is in state `user`
/// (`None`: unknown, the key is checked on its own): the key's next state
/// and the answer. Creating needs the user to exist and be active (the
/// state machine checks both when it applies the create); a create whose
/// idempotency key already made the key answers with that key whatever the
/// user's state. Revoking and reading do not look at the user.
fn key_op(user: Option<Seen>, key: Seen, kind: Kind) -> Option<(Seen, Value)> {
    use Seen::*;
    Some(match (key, kind) {
        (Absent, Kind::CreateKey) => match user {
            None | Some(Active) => (Active, Value::Created(String::new())),
            Some(Absent) => (Absent, Value::NotFound),
            Some(_) => (Absent, Value::Precondition),
        },
        (_, Kind::CreateKey) => (key, Value::AlreadyExists(String::new())),
        (Absent, Kind::RevokeKey) => (key, Value::NotFound),
        (Active, Kind::RevokeKey) => (Revoked, Value::Done),
        (_, Kind::RevokeKey) => (key, Value::Precondition),
        (_, Kind::ReadKey) => (key, Value::Read(key)),
        _ => return None,
    })
}

/// A key's partition and the id its operations carry there: its owner's
/// partition when the history names the owner, else its own.
fn key_partition(owners: &HashMap<String, String>, id: &str) -> (String, String) {
    match owners.get(id) {
        Some(user) => (format!("user:{user}"), id.to_string()),
        None => (format!("key:{id}"), String::new()),
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
        Obj::User(Seen::Absent, BTreeMap::new(), BTreeMap::new())
    }

    fn step(&self, state: &Obj, input: &Input, output: Option<&Value>) -> Option<Obj> {
        let state = match (state, input.partition.starts_with("key:")) {
            (Obj::User(Seen::Absent, s, k), true) if s.is_empty() && k.is_empty() => Obj::Key(Seen::Absent),
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
    let key_users = key_owners(history);
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
        let (partition, member) = match op.kind {
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
                Some(id) => key_partition(&key_users, id),
                None => continue,
            },
            Kind::RevokeKey | Kind::ReadKey => key_partition(&key_users, &op.target),
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
            input: Input { kind: op.kind, partition, member },
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
        Op { client: 0, node: 1, kind, target: target.into(), owner: None, invoke: t.0, complete: t.1, outcome }
    }

    /// A key create for `owner`.
    fn create_key(name: &str, owner: &str, t: (u64, u64), outcome: Outcome) -> Op {
        Op { owner: Some(owner.into()), ..op(Kind::CreateKey, name, t, outcome) }
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

    #[test]
    fn a_users_keys_are_checked_in_its_partition() {
        let h = vec![
            op(Kind::CreateUser, "u", (0, 10), ok(Value::Created("id".into()))),
            create_key("c0-k1", "u", (20, 30), ok(Value::Created("k1".into()))),
            op(Kind::DisableUser, "u", (40, 50), ok(Value::Done)),
            // Disabling leaves the key as it was; it can still be revoked.
            op(Kind::ReadKey, "k1", (60, 70), ok(Value::Read(Seen::Active))),
            op(Kind::RevokeKey, "k1", (80, 90), ok(Value::Done)),
            op(Kind::ReadKey, "k1", (100, 110), ok(Value::Read(Seen::Revoked))),
        ];
        assert!(operations(&h).iter().all(|o| o.input.partition == "user:u"));
        let (v, i) = check(&h, 100_000);
        assert!(v.is_empty() && i.is_empty(), "{v:?} {i:?}");
    }

    #[test]
    fn a_key_created_for_a_disabled_user_is_a_violation() {
        let mut h = vec![
            op(Kind::CreateUser, "u", (0, 10), ok(Value::Created("id".into()))),
            op(Kind::DisableUser, "u", (20, 30), ok(Value::Done)),
            create_key("c0-k1", "u", (60, 70), ok(Value::Created("k1".into()))),
        ];
        let (v, _) = check(&h, 100_000);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("user:u"), "{v:?}");
        // An enable whose answer was lost may have taken effect first.
        h.push(op(Kind::EnableUser, "u", (40, 50), Outcome::Unknown("timeout".into())));
        let (v, i) = check(&h, 100_000);
        assert!(v.is_empty() && i.is_empty(), "{v:?} {i:?}");
        // One that certainly failed did not.
        h.last_mut().expect("the enable").outcome = Outcome::Fail("refused".into());
        assert_eq!(check(&h, 100_000).0.len(), 1);
    }
}
