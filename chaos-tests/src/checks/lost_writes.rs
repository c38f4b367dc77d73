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
        let mut u = UserServiceClient::new(channel.clone());
        let mut k = KeyServiceClient::new(channel.clone());
        let mut s = SessionServiceClient::new(channel);
        for user in &users {
            if let Err(e) = u.get(req(cluster, GetUserRequest { user: user.to_string() })).await {
                violations.push(format!("node {}: acknowledged user {user} missing ({:?})", node.id, e.code()));
            }
        }
        for id in &keys {
            match k.get(req(cluster, GetKeyRequest { id: id.to_string() })).await {
                Ok(key) if revoked.contains(id) && key.get_ref().revoked_at == 0 => {
                    violations.push(format!("node {}: acknowledged revocation of key {id} lost", node.id))
                }
                Ok(_) => {}
                Err(e) => violations.push(format!("node {}: acknowledged key {id} missing ({:?})", node.id, e.code())),
            }
        }
        for id in &ended {
            match s.get(req(cluster, GetSessionRequest { id: id.to_string() })).await {
                Err(e) if e.code() == Code::NotFound => {}
                Ok(_) => violations.push(format!("node {}: acknowledged revocation of session {id} lost", node.id)),
                Err(e) => anyhow::bail!("node {}: reading session {id}: {e}", node.id),
            }
        }
    }
    Ok((violations, checked))
}
