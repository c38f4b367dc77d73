//! Proposing what the recorder buffered: every `flush_ms`, as `AppendAudit`
//! batches numbered per node; a batch that did not commit is kept and sent
//! again as it is.

use std::time::Duration;

use gatehouse_cluster::periodic::{Periodic, Shutdown};
use gatehouse_domain::Payload;
use gatehouse_proto::events::AppendAudit;
use gatehouse_storage::AuditLog;
use tokio::task::JoinHandle;

use super::AuditConfig;
use crate::{ApiError, Node};

/// Starts the flush task (every `flush_ms`, at once when the buffer fills,
/// and a last flush of everything on shutdown) and the leader's retention
/// task. Neither keeps the node alive.
pub fn start(node: &Node, log: AuditLog, config: AuditConfig, shutdown: &Shutdown) -> [JoinHandle<()>; 2] {
    let flushes = start_flushes(node, &config, shutdown);
    [flushes, super::retention::start(node.downgrade(), log, config, shutdown.clone())]
}

/// Starts the flush task alone: a stateless front's, which holds no audit
/// records and so enforces no retention.
pub fn start_flushes(node: &Node, config: &AuditConfig, shutdown: &Shutdown) -> JoinHandle<()> {
    node.recorder().configure(config);
    let (weak, last) = (node.downgrade(), node.downgrade());
    Periodic::every("audit.flush", Duration::from_millis(config.flush_ms), shutdown.clone())
        .woken_by(node.recorder().wake())
        .run_then(
            move || {
                let node = weak.upgrade();
                async move {
                    let Some(node) = node else { return false };
                    flush(&node).await;
                    true
                }
            },
            FINAL_FLUSH,
            move || async move {
                // Events seen up to now go into the log if it takes them.
                if let Some(node) = last.upgrade() {
                    flush_all(&node).await;
                }
            },
        )
}

/// How long the last flush on shutdown may take (peers may already be gone).
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Proposes buffered events until the buffer is empty or a write fails.
pub async fn flush(node: &Node) {
    flush_with(node, false).await;
}

/// [`flush`], counted events included whatever their period (at shutdown).
pub async fn flush_all(node: &Node) {
    flush_with(node, true).await;
}

async fn flush_with(node: &Node, all: bool) {
    let metrics = node.metrics();
    // Above what this node's view says the log took from it and above
    // `floor` (what the log answered a duplicate with: a front holds no
    // audit chain, and a voter's view may lag).
    let number = |mut append: AppendAudit, floor: u64| {
        let chain = node.view().read().audit_chain();
        let applied = gatehouse_domain::audit::last_batch(&chain, node.id()).unwrap_or(0);
        append.batch = node.recorder().next_batch(applied.max(floor));
        node.command(Payload::AppendAudit(append))
    };
    while let Some(next) = node.recorder().take(metrics, all) {
        // A batch made now (not a retry) that the log calls a duplicate was
        // numbered too low (a clock stepped back while the view lagged): it
        // is renumbered from what the log holds and sent again, not lost.
        let fresh = next.is_err();
        let mut cmd = next.unwrap_or_else(|append| number(append, 0));
        let n = match &cmd.payload {
            Some(Payload::AppendAudit(a)) => a.events.len() as u64,
            _ => 0,
        };
        let mut result = node.propose(vec![cmd.clone()]).await;
        let duplicate = match &result {
            Ok(a) => a.results.first().filter(|r| r.id == "duplicate").map(|r| r.last_batch),
            Err(_) => None,
        };
        if let (true, Some(floor)) = (fresh, duplicate) {
            metrics.audit_renumbered.inc();
            if let Some(Payload::AppendAudit(a)) = cmd.payload.take() {
                cmd = number(a, floor);
                result = node.propose(vec![cmd.clone()]).await;
            }
        }
        match result {
            Ok(applied) if applied.results.first().is_some_and(|r| r.code == 0) => {
                metrics.audit_sent.inc_by(n);
            }
            // Refused by apply (events built here always fit): not retried.
            Ok(applied) => tracing::error!(result = ?applied.results.first(), "audit batch refused"),
            // Over a bound (events are clipped to fit, so this is a bug):
            // retrying the same batch would hold every later one back.
            Err(ApiError::InvalidArgument(e)) => {
                tracing::error!(error = %e, events = n, "audit batch over its bounds; dropped");
                metrics.audit_dropped.inc_by(n);
                node.recorder().dropped(n);
            }
            Err(e) => {
                tracing::warn!(error = %e, events = n, "audit batch not committed; keeping it");
                node.recorder().retry_later(cmd);
                return;
            }
        }
    }
}
