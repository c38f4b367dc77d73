//! Revocation safety: once a revocation is acknowledged, no node accepts the
//! credential later than `max_staleness` after that. A key revoked, a session
//! revoked, or a session whose user was disabled (disabling ends sessions),
//! must see every verification invoked after `ack + max_staleness` refused.
//! A node that cannot prove it is fresh answers 503, never 200, so a node cut
//! off from the leader cannot break this either.
//!
//! A key also stops while its user is disabled (403), and works again once
//! the user is enabled: a key accepted later than `max_staleness` after its
//! owner's disabling was acknowledged is a violation, unless an enable of that
//! user may have taken effect in between (see `may_reenable`).

use std::collections::HashMap;

use super::{key_owners, session_owners};
use crate::history::{Kind, Op, Outcome, Value};

pub fn check(history: &[Op], max_staleness_ns: u64) -> Vec<String> {
    // Credential → the earliest acknowledged end.
    let mut ended: HashMap<(Kind, String), u64> = HashMap::new();
    let owners = session_owners(history);
    // Session id → when its login was acknowledged.
    let opened: HashMap<&str, u64> = history
        .iter()
        .filter(|o| o.kind == Kind::Login)
        .filter_map(|o| match o.ok() {
            Some(Value::Created(id)) => Some((id.as_str(), o.complete)),
            _ => None,
        })
        .collect();
    let mut end = |kind: Kind, id: &str, at: u64| {
        let e = ended.entry((kind, id.to_string())).or_insert(at);
        *e = (*e).min(at);
    };
    for op in history {
        if op.ok() != Some(&Value::Done) {
            continue;
        }
        match op.kind {
            Kind::RevokeKey => end(Kind::VerifyKey, &op.target, op.complete),
            Kind::RevokeSession => end(Kind::VerifySession, &op.target, op.complete),
            // Disabling ends the sessions that certainly existed before it.
            Kind::DisableUser => {
                for (session, _) in owners.iter().filter(|(_, user)| **user == op.target) {
                    if opened.get(session.as_str()).is_some_and(|&at| at < op.invoke) {
                        end(Kind::VerifySession, session, op.complete);
                    }
                }
            }
            _ => {}
        }
    }
    let mut violations = disabled_owner_violations(history, max_staleness_ns);
    for op in history.iter().filter(|o| matches!(o.kind, Kind::VerifyKey | Kind::VerifySession)) {
        let Some(&revoked) = ended.get(&(op.kind, op.target.clone())) else { continue };
        if op.ok() == Some(&Value::Status(200)) && op.invoke > revoked + max_staleness_ns {
            violations.push(format!(
                "node {} accepted {:?} {} at {:.3} s, {:.3} s after its revocation was acknowledged",
                op.node,
                op.kind,
                op.target,
                op.invoke as f64 / 1e9,
                (op.invoke - revoked) as f64 / 1e9
            ));
        }
    }
    violations
}

/// Whether `enable` may have taken effect after `disable` and before the node
/// that answered `verify` read its state. Only an enable that certainly did
/// nothing (failed, or answered other than `Done`), one invoked after the
/// verification completed, or one acknowledged before the disable was
/// invoked (so ordered before it) is ruled out; an unknown one may take
/// effect at any time after its invocation, so it always counts.
fn may_reenable(enable: &Op, disable: &Op, verify: &Op) -> bool {
    let void = match &enable.outcome {
        Outcome::Ok(v) => *v != Value::Done,
        Outcome::Fail(_) => true,
        Outcome::Unknown(_) => false,
    };
    let before_disable = enable.ok().is_some() && enable.complete < disable.invoke;
    !void && !before_disable && enable.invoke <= verify.complete
}

/// Keys accepted (200) although their owner's disabling was acknowledged
/// more than `max_staleness_ns` before the verification was invoked, with no
/// enable that may have undone it. Only acknowledged disables count, as only
/// acknowledged revocations do above.
fn disabled_owner_violations(history: &[Op], max_staleness_ns: u64) -> Vec<String> {
    let owners = key_owners(history);
    let mut disables: HashMap<&str, Vec<&Op>> = HashMap::new();
    let mut enables: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history {
        match op.kind {
            Kind::DisableUser if op.ok() == Some(&Value::Done) => {
                disables.entry(op.target.as_str()).or_default().push(op)
            }
            Kind::EnableUser => enables.entry(op.target.as_str()).or_default().push(op),
            _ => {}
        }
    }
    let mut violations = Vec::new();
    for verify in history.iter().filter(|o| o.kind == Kind::VerifyKey && o.ok() == Some(&Value::Status(200))) {
        let Some(user) = owners.get(&verify.target) else { continue };
        let enabled = enables.get(user.as_str());
        let disabled = disables.get(user.as_str()).into_iter().flatten().find(|d| {
            verify.invoke > d.complete + max_staleness_ns
                && !enabled.into_iter().flatten().any(|e| may_reenable(e, d, verify))
        });
        if let Some(d) = disabled {
            violations.push(format!(
                "node {} accepted key {} at {:.3} s, {:.3} s after disabling its user {user} was acknowledged",
                verify.node,
                verify.target,
                verify.invoke as f64 / 1e9,
                (verify.invoke - d.complete) as f64 / 1e9
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;

    fn op(kind: Kind, target: &str, invoke: u64, complete: u64, v: Value) -> Op {
        Op { client: 0, node: 1, kind, target: target.into(), owner: None, invoke, complete, outcome: Outcome::Ok(v) }
    }

    /// `op` with another outcome.
    fn ended(o: Op, outcome: Outcome) -> Op {
        Op { outcome, ..o }
    }

    /// Key `k1` for alice, disabled at [100, 110], and a 200 for it long after.
    fn disabled_owner(more: Vec<Op>) -> Vec<Op> {
        let create = op(Kind::CreateKey, "c0-k1", 0, 10, Value::Created("k1".into()));
        let mut h = vec![
            Op { owner: Some("alice".into()), ..create },
            op(Kind::DisableUser, "alice", 100, 110, Value::Done),
            op(Kind::VerifyKey, "k1", 1_000, 1_010, Value::Status(200)), // within the bound: allowed
            op(Kind::VerifyKey, "k1", 1_200, 1_210, Value::Status(403)),
            op(Kind::VerifyKey, "k1", 2_000, 2_010, Value::Status(200)),
        ];
        h.extend(more);
        h
    }

    #[test]
    fn a_key_accepted_past_the_staleness_bound_after_its_revocation_is_a_violation() {
        let h = vec![
            op(Kind::RevokeKey, "k1", 0, 100, Value::Done),
            op(Kind::VerifyKey, "k1", 150, 160, Value::Status(200)), // within the bound: allowed
            op(Kind::VerifyKey, "k1", 1_200, 1_300, Value::Status(401)),
            op(Kind::VerifyKey, "k1", 1_300, 1_400, Value::Status(503)),
        ];
        assert!(check(&h, 1_000).is_empty());
        let mut bad = h.clone();
        bad.push(op(Kind::VerifyKey, "k1", 1_101, 1_200, Value::Status(200)));
        assert_eq!(check(&bad, 1_000).len(), 1);
    }

    #[test]
    fn disabling_a_user_ends_the_sessions_opened_before_it() {
        let h = vec![
            op(Kind::Login, "alice", 0, 10, Value::Created("s1".into())),
            op(Kind::DisableUser, "alice", 20, 30, Value::Done),
            op(Kind::EnableUser, "alice", 40, 50, Value::Done),
            op(Kind::Login, "alice", 60, 70, Value::Created("s2".into())),
            op(Kind::VerifySession, "s1", 2_000, 2_010, Value::Status(200)),
            op(Kind::VerifySession, "s2", 2_000, 2_010, Value::Status(200)),
        ];
        let v = check(&h, 1_000);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("s1"));
    }

    #[test]
    fn a_key_accepted_past_the_staleness_bound_after_its_owner_was_disabled_is_a_violation() {
        let v = check(&disabled_owner(vec![]), 1_000);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("k1") && v[0].contains("alice"), "{v:?}");
        // Enables that certainly did not undo the disabling change nothing:
        // failed, refused, acknowledged before it, or invoked after the 200.
        let void = disabled_owner(vec![
            ended(op(Kind::EnableUser, "alice", 200, 210, Value::Done), Outcome::Fail("refused".into())),
            op(Kind::EnableUser, "alice", 300, 310, Value::NotFound),
            op(Kind::EnableUser, "alice", 20, 30, Value::Done),
            op(Kind::EnableUser, "alice", 2_020, 2_030, Value::Done),
        ]);
        assert_eq!(check(&void, 1_000).len(), 1);
    }

    #[test]
    fn an_enable_that_may_have_taken_effect_excuses_the_key() {
        // Acknowledged after the disabling.
        let acked = disabled_owner(vec![op(Kind::EnableUser, "alice", 200, 210, Value::Done)]);
        assert!(check(&acked, 1_000).is_empty());
        // Unknown: it may take effect any time after its invocation, even one
        // invoked before the disabling.
        let unknown = ended(op(Kind::EnableUser, "alice", 50, 60, Value::Done), Outcome::Unknown("timeout".into()));
        assert!(check(&disabled_owner(vec![unknown]), 1_000).is_empty());
        // In flight when the key was verified.
        let in_flight = op(Kind::EnableUser, "alice", 2_005, 2_500, Value::Done);
        assert!(check(&disabled_owner(vec![in_flight]), 1_000).is_empty());
    }

    #[test]
    fn an_unacknowledged_disable_or_an_unknown_owner_is_not_checked() {
        let mut h = disabled_owner(vec![]);
        h[1].outcome = Outcome::Unknown("timeout".into());
        assert!(check(&h, 1_000).is_empty());
        let mut h = disabled_owner(vec![]);
        h[0].owner = None;
        assert!(check(&h, 1_000).is_empty());
    }
}
