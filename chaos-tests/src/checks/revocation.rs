//! Revocation safety: once a revocation is acknowledged, no node accepts the
//! credential later than `max_staleness` after that. A key revoked, a session
//! revoked, or a session whose user was disabled (disabling ends sessions),
//! must see every verification invoked after `ack + max_staleness` refused.
//! A node that cannot prove it is fresh answers 503, never 200, so a node cut
//! off from the leader cannot break this either.

use std::collections::HashMap;

use super::session_owners;
use crate::history::{Kind, Op, Value};

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
    let mut violations = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;

    fn op(kind: Kind, target: &str, invoke: u64, complete: u64, v: Value) -> Op {
        Op { client: 0, node: 1, kind, target: target.into(), invoke, complete, outcome: Outcome::Ok(v) }
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
}
