//! Large entries: every record of every acknowledged large proposal
//! ([`crate::large`]) is in the audit log of the healed cluster, once.
//! (That the nodes agree on everything else is the convergence check's.)

use std::collections::HashMap;

use gatehouse_proto::admin::audit_service_client::AuditServiceClient;
use gatehouse_proto::admin::{AuditFilter, AuditQueryRequest};

use crate::cluster::ProcCluster;
use crate::large::{Written, ACTION};

/// The violations: acknowledged proposals whose records are missing or doubled.
pub async fn check(cluster: &ProcCluster, written: &Written) -> anyhow::Result<Vec<String>> {
    let Some(node) = cluster.nodes.values().next() else { return Ok(Vec::new()) };
    let mut client = AuditServiceClient::connect(format!("http://{}", node.grpc)).await?;
    let mut found: HashMap<String, usize> = HashMap::new();
    let mut page_token = String::new();
    loop {
        let filter = AuditFilter { action: ACTION.into(), ..Default::default() };
        let mut req = tonic::Request::new(AuditQueryRequest { filter: Some(filter), page_size: 1000, page_token });
        req.metadata_mut().insert("authorization", format!("Bearer {}", cluster.admin_key).parse()?);
        let page = client.query(req).await?.into_inner();
        for r in page.records {
            *found.entry(r.event.map(|e| e.resource).unwrap_or_default()).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(written
        .acknowledged
        .iter()
        .filter_map(|(resource, records)| {
            let have = found.get(resource).copied().unwrap_or(0);
            (have != *records)
                .then(|| format!("large proposal {resource}: acknowledged with {records} audit records, found {have}"))
        })
        .collect())
}
