//! Retention: the leader prunes records older than `retention_days`, after
//! verifying the chain up to them.

use std::time::Duration;

use gatehouse_cluster::clock::now_ms;
use gatehouse_cluster::periodic::{Periodic, Shutdown};
use gatehouse_domain::Payload;
use gatehouse_proto::events::PruneAudit;
use gatehouse_storage::AuditLog;
use tokio::task::JoinHandle;

use super::AuditConfig;
use crate::node::WeakNode;
use crate::Node;

/// On the leader, every `prune_check_secs` from start: prune what is past
/// retention, after verifying it.
pub(super) fn start(weak: WeakNode, log: AuditLog, config: AuditConfig, shutdown: Shutdown) -> JoinHandle<()> {
    Periodic::every("audit.retention", Duration::from_secs(config.prune_check_secs), shutdown).starting_now().run(
        move || {
            let (node, log) = (weak.upgrade(), log.clone());
            async move {
                let Some(node) = node else { return false };
                if let Err(e) = prune(&node, &log, config.retention_days).await {
                    tracing::warn!(error = %e, "audit retention check failed");
                }
                true
            }
        },
    )
}

/// Proposes a prune through the last record older than `retention_days`,
/// if this node leads and the chain up to there verifies.
pub async fn prune(node: &Node, log: &AuditLog, retention_days: u64) -> Result<Option<u64>, crate::ApiError> {
    if node.leader().map(|(id, _)| id) != Some(node.id()) {
        return Ok(None);
    }
    let cutoff = now_ms().saturating_sub(retention_days * 86_400_000);
    let log = log.clone();
    let old = move |r: &gatehouse_proto::state::AuditRecord| r.event.as_ref().is_some_and(|e| e.at < cutoff);
    let (report, last) = tokio::task::spawn_blocking(move || log.verify_while(old))
        .await
        .map_err(|_| crate::ApiError::Internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "reading the audit log failed");
            crate::ApiError::Internal
        })?;
    if let Some(broken) = report.broken {
        tracing::error!(seq = broken.seq(), problem = %broken, "audit chain broken; not pruning");
        return Ok(None);
    }
    let Some((through_seq, through_hash)) = last else { return Ok(None) };
    node.propose_one(node.command(Payload::PruneAudit(PruneAudit { through_seq, through_hash }))).await?;
    tracing::info!(through_seq, "audit records past retention pruned");
    Ok(Some(through_seq))
}
