//! No acknowledged write lost: after healing, every acknowledged user and
//! key creation, and every acknowledged key and session revocation, is in
//! every node's state. (Sessions are checked through their revocations: a
//! session may end for reasons outside its own history, such as its user
//! being disabled.) Each node is asked for its own state (a default
//! read, after convergence), so a node that missed a write is caught.

use std::collections::HashSet;

use gatehouse_proto::admin::key_service_client::KeyServiceClient;
use gatehouse_proto::admin::session_service_client::SessionServiceClient;
use gatehouse_proto::admin::user_service_client::UserServiceClient;
use gatehouse_proto::admin::{GetKeyRequest, GetSessionRequest, GetUserRequest};
use tonic::Code;

use crate::cluster::ProcCluster;
use crate::history::{Kind, Op, Value};

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
    let checked = users.len() + keys.len() + revoked.len() + ended.len();

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
                Ok(_) => {}
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
