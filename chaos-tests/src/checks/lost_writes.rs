//! No acknowledged write lost: after healing, every acknowledged user and
//! key creation, and every acknowledged key and session revocation, is in
//! every node's state. (Sessions are checked through their revocations: a
//! session may end for reasons outside its own history, such as its user
//! being disabled.) Each node is asked for its own state (a default
//! read, after convergence), so a node that missed a write is caught.
//!
//! A user's final status is checked too, where the history settles it (see
//! [`final_statuses`]): every node must read the status the user's last,
//! acknowledged, status write set.

use std::collections::{HashMap, HashSet};

use gatehouse_proto::admin::key_service_client::KeyServiceClient;
use gatehouse_proto::admin::session_service_client::SessionServiceClient;
use gatehouse_proto::admin::user_service_client::UserServiceClient;
use gatehouse_proto::admin::{GetKeyRequest, GetSessionRequest, GetUserRequest};
use tonic::Code;

use crate::cluster::ProcCluster;
use crate::history::{Kind, Op, Outcome, Seen, Value};
use crate::workload::user_state;

fn req<T>(cluster: &ProcCluster, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {}", cluster.admin_key).parse().expect("ascii"));
    r
}

/// Up to five tries, while the answer is neither a value nor NOT_FOUND.
async fn retried<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(e) if e.code() == Code::NotFound || tries == 4 => return Err(e),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

/// Username → the status its last status write (`DisableUser`,
/// `EnableUser`) set, for the users whose final status the history settles:
/// that last-invoked write was acknowledged (`Done`), and every other one
/// either was acknowledged before it was invoked or certainly did nothing
/// (failed, or answered other than `Done`). Users with a later write that
/// failed, a write of unknown outcome (it may take effect at any time) or
/// two overlapping acknowledged writes are left out: ambiguous.
pub fn final_statuses(history: &[Op]) -> HashMap<&str, Seen> {
    let mut writes: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history.iter().filter(|o| matches!(o.kind, Kind::DisableUser | Kind::EnableUser)) {
        writes.entry(op.target.as_str()).or_default().push(op);
    }
    writes.into_iter().filter_map(|(user, ops)| settled(&ops).map(|status| (user, status))).collect()
}

/// The status one user's status writes `ops` certainly leave, if any.
fn settled(ops: &[&Op]) -> Option<Seen> {
    let (last_at, last) = ops.iter().enumerate().max_by_key(|(_, o)| o.invoke)?;
    if last.ok() != Some(&Value::Done) {
        return None;
    }
    let before_last = ops.iter().enumerate().filter(|(i, _)| *i != last_at).all(|(_, o)| match &o.outcome {
        Outcome::Ok(Value::Done) => o.complete < last.invoke,
        Outcome::Ok(_) | Outcome::Fail(_) => true,
        Outcome::Unknown(_) => false,
    });
    before_last.then_some(if last.kind == Kind::DisableUser { Seen::Disabled } else { Seen::Active })
}

/// The violation if `got`, a user's `status` as `node` reads it, is not
/// `want`, the status its last status write set (`None`: not settled).
fn status_lost(node: u64, user: &str, got: &str, want: Option<&Seen>) -> Option<String> {
    let got = user_state(got);
    let want = *want?;
    (got != want)
        .then(|| format!("node {node}: user {user} is {got:?}, its last acknowledged status write set {want:?}"))
}

/// The violations, and how many acknowledged writes were checked.
pub async fn check(cluster: &ProcCluster, history: &[Op]) -> anyhow::Result<(Vec<String>, usize)> {
    let acked = |kind: Kind| history.iter().filter(move |o| o.kind == kind && o.ok().is_some());
    let users: HashSet<&str> = acked(Kind::CreateUser)
        .filter(|o| matches!(o.ok(), Some(Value::Created(_))))
        .map(|o| o.target.as_str())
        .collect();
    let keys: HashSet<&str> = acked(Kind::CreateKey)
        .filter_map(|o| match o.ok() {
            Some(Value::Created(id)) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let revoked: HashSet<&str> =
        acked(Kind::RevokeKey).filter(|o| o.ok() == Some(&Value::Done)).map(|o| o.target.as_str()).collect();
    let ended: HashSet<&str> =
        acked(Kind::RevokeSession).filter(|o| o.ok() == Some(&Value::Done)).map(|o| o.target.as_str()).collect();
    let mut statuses = final_statuses(history);
    statuses.retain(|user, _| users.contains(user));
    let checked = users.len() + keys.len() + revoked.len() + ended.len() + statuses.len();

    let mut violations = Vec::new();
    for node in cluster.nodes.values() {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))?.connect().await?;
        let u = UserServiceClient::new(channel.clone());
        let k = KeyServiceClient::new(channel.clone());
        let s = SessionServiceClient::new(channel);
        // Only NOT_FOUND means missing; any other error is retried, then
        // ends the check as an error (not a violation).
        for user in &users {
            let r = retried(|| {
                let mut u = u.clone();
                async move { u.get(req(cluster, GetUserRequest { user: user.to_string() })).await }
            })
            .await;
            match r {
                Ok(got) => violations.extend(status_lost(node.id, user, &got.status, statuses.get(user))),
                Err(e) if e.code() == Code::NotFound => {
                    violations.push(format!("node {}: acknowledged user {user} missing", node.id))
                }
                Err(e) => anyhow::bail!("node {}: reading user {user}: {e}", node.id),
            }
        }
        for id in &keys {
            let r = retried(|| {
                let mut k = k.clone();
                async move { k.get(req(cluster, GetKeyRequest { id: id.to_string() })).await }
            })
            .await;
            match r {
                Ok(key) if revoked.contains(id) && key.revoked_at == 0 => {
                    violations.push(format!("node {}: acknowledged revocation of key {id} lost", node.id))
                }
                Ok(_) => {}
                Err(e) if e.code() == Code::NotFound => {
                    violations.push(format!("node {}: acknowledged key {id} missing", node.id))
                }
                Err(e) => anyhow::bail!("node {}: reading key {id}: {e}", node.id),
            }
        }
        for id in &ended {
            let r = retried(|| {
                let mut s = s.clone();
                async move { s.get(req(cluster, GetSessionRequest { id: id.to_string() })).await }
            })
            .await;
            match r {
                Err(e) if e.code() == Code::NotFound => {}
                Ok(_) => violations.push(format!("node {}: acknowledged revocation of session {id} lost", node.id)),
                Err(e) => anyhow::bail!("node {}: reading session {id}: {e}", node.id),
            }
        }
    }
    Ok((violations, checked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: Kind, user: &str, invoke: u64, complete: u64, outcome: Outcome) -> Op {
        Op { client: 0, node: 1, kind, target: user.into(), owner: None, invoke, complete, outcome }
    }

    fn done() -> Outcome {
        Outcome::Ok(Value::Done)
    }

    #[test]
    fn the_last_acknowledged_status_write_settles_the_status() {
        let h = vec![
            op(Kind::DisableUser, "a", 0, 10, done()),
            op(Kind::EnableUser, "a", 20, 30, done()),
            op(Kind::EnableUser, "b", 0, 10, done()),
            // Certainly did nothing: ignored.
            op(Kind::EnableUser, "b", 12, 14, Outcome::Fail("refused".into())),
            op(Kind::DisableUser, "b", 20, 30, done()),
        ];
        let s = final_statuses(&h);
        assert_eq!(s.get("a"), Some(&Seen::Active));
        assert_eq!(s.get("b"), Some(&Seen::Disabled));
    }

    #[test]
    fn an_ambiguous_final_status_is_not_checked() {
        let h = vec![
            // Unknown earlier write: it may land after the last one.
            op(Kind::EnableUser, "unknown", 0, 10, Outcome::Unknown("timeout".into())),
            op(Kind::DisableUser, "unknown", 20, 30, done()),
            // The last one failed.
            op(Kind::DisableUser, "failed", 0, 10, done()),
            op(Kind::EnableUser, "failed", 20, 30, Outcome::Fail("refused".into())),
            // Two acknowledged writes overlap.
            op(Kind::DisableUser, "overlap", 0, 25, done()),
            op(Kind::EnableUser, "overlap", 20, 30, done()),
        ];
        assert!(final_statuses(&h).is_empty(), "{:?}", final_statuses(&h));
    }

    #[test]
    fn only_a_definite_mismatch_is_a_violation() {
        assert!(status_lost(1, "a", "disabled", Some(&Seen::Active)).is_some());
        assert!(status_lost(1, "a", "active", Some(&Seen::Active)).is_none());
        assert!(status_lost(1, "a", "disabled", None).is_none());
    }
}
