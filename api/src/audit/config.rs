//! `[audit]`: the node's buffer, flush and aggregation periods, retention.

use serde::{Deserialize, Serialize};

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events a node keeps while the log cannot take them.
    pub buffer_events: usize,
    /// How often a node proposes what it buffered.
    pub flush_ms: u64,
    /// How long refusals and denials are counted before their aggregated
    /// records are proposed: a flood writes one record per bucket per
    /// period, however many requests it sends.
    pub aggregate_ms: u64,
    /// Records older than this are pruned by the leader.
    pub retention_days: u64,
    /// How often the leader looks for records past retention.
    pub prune_check_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            buffer_events: 100_000,
            flush_ms: 100,
            aggregate_ms: 10_000,
            retention_days: 90,
            prune_check_secs: 3600,
        }
    }
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=10_000_000).contains(&self.buffer_events) {
            return Err("audit.buffer_events must be 100..=10000000".into());
        }
        if !(10..=60_000).contains(&self.flush_ms) {
            return Err("audit.flush_ms must be 10..=60000".into());
        }
        if !(self.flush_ms..=300_000).contains(&self.aggregate_ms) {
            return Err("audit.aggregate_ms must be flush_ms..=300000".into());
        }
        if !(1..=36_500).contains(&self.retention_days) {
            return Err("audit.retention_days must be 1..=36500".into());
        }
        if self.prune_check_secs == 0 {
            return Err("audit.prune_check_secs must be at least 1".into());
        }
        Ok(())
    }
}
