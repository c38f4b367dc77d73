//! Exactly once: a key create retried with its idempotency key (after a
//! lost answer) makes at most one key, and exactly one if any attempt was
//! acknowledged. The workload names each key after its idempotency key, so
//! the final key list shows how many times each was applied. Retries go to
//! another node than the attempt before, so this tests that deduplication
//! holds across nodes; a violation names the nodes the attempts went to.

use std::collections::{HashMap, HashSet};

use gatehouse_proto::admin::key_service_client::KeyServiceClient;
use gatehouse_proto::admin::ListKeysRequest;

use crate::cluster::ProcCluster;
use crate::history::{Kind, Op, Value};

/// The violations, and how many retried creates there were.
pub async fn check(cluster: &ProcCluster, history: &[Op]) -> anyhow::Result<(Vec<String>, usize)> {
    // Idempotency key → the node of each attempt, in invoke order.
    let mut attempts: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut acked: HashSet<&str> = HashSet::new();
    for op in history.iter().filter(|o| o.kind == Kind::CreateKey) {
        attempts.entry(op.target.as_str()).or_default().push(op.node);
        if matches!(op.ok(), Some(Value::Created(_) | Value::AlreadyExists(_))) {
            acked.insert(op.target.as_str());
        }
    }
    let node = cluster.nodes.values().next().expect("a node");
    let mut keys = KeyServiceClient::connect(format!("http://{}", node.grpc)).await?;
    let mut made: HashMap<String, usize> = HashMap::new();
    let mut page_token = String::new();
    loop {
        let mut r = tonic::Request::new(ListKeysRequest {
            user: String::new(),
            include_revoked: true,
            page_size: 500,
            page_token: page_token.clone(),
        });
        r.metadata_mut().insert("authorization", format!("Bearer {}", cluster.admin_key).parse()?);
        let page = keys.list(r).await?.into_inner();
        for k in page.keys {
            *made.entry(k.name).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut violations = Vec::new();
    for (name, nodes) in &attempts {
        let n = made.get(*name).copied().unwrap_or(0);
        if n > 1 {
            let tries = nodes.len();
            violations.push(format!("key {name} was created {n} times from {tries} attempts on nodes {nodes:?}"));
        }
        if n == 0 && acked.contains(name) {
            violations.push(format!("key {name} was acknowledged but does not exist (attempts on nodes {nodes:?})"));
        }
    }
    Ok((violations, attempts.values().filter(|t| t.len() > 1).count()))
}
