//! Restoring a backup (`gatehouse admin cluster backup`) into a new data
//! directory: a new one-voter cluster with a new cluster id, so a restored
//! node can never join the cluster the backup came from by mistake.
//!
//! ```text
//!   gatehouse restore backup.ghb --config node.toml
//!     → the backup checked whole (format, checksum, record count) before
//!       anything is written; refused into a non-empty data directory
//!     → its records as this node's snapshot at the backup's log position,
//!       this node the only voter; a new cluster lineage
//!   gatehouse serve --config node.toml
//!     → elects itself; once it leads, audits `cluster.restored`
//! ```

use std::path::Path;

use anyhow::{bail, Context};
use gatehouse_cluster::lineage::{text, ClusterLineage};
use gatehouse_storage::Member;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The note a restore leaves for the node's first start.
pub const FILE: &str = "restored.json";

/// What a restore did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Restored {
    pub node_id: u64,
    /// The backup's cluster and the new one.
    pub from_lineage: String,
    pub lineage: String,
    pub index: u64,
    pub term: u64,
    pub records: u64,
    /// When the backup was taken, and by which node.
    pub taken_at_ms: u64,
    pub taken_by: u64,
}

/// Restores the backup at `file` into the data directory `config` names.
/// `key`: the key file a sealed backup was sealed with.
pub fn restore(file: &Path, config: &Config, key: Option<&Path>) -> anyhow::Result<Restored> {
    config.validate()?;
    if config.front.is_some() {
        bail!("a front holds no data: restore into a voter's configuration");
    }
    let addr =
        config.advertise_addr.clone().unwrap_or_else(|| config.peer_addr.unwrap_or(config.grpc_addr).to_string());
    let client = config.advertise_client_addr.clone().unwrap_or_else(|| config.grpc_addr.to_string());
    if addr.ends_with(":0") || client.ends_with(":0") {
        bail!(
            "the membership records where this node is reached: give it a fixed grpc_addr (and peer_addr), \
             or advertise_addr and advertise_client_addr"
        );
    }
    let key = match key {
        Some(k) => Some(gatehouse_storage::sealed::BackupKey::from_file(k).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let file = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let backup = gatehouse_storage::sealed::open_backup(file, key.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = &config.data_dir;
    // Made private as a node makes it; removed again if the restore fails.
    let created = !dir.exists();
    if created {
        crate::data_dir::prepare(dir)?;
    }
    let lineage = ClusterLineage { cluster_id: gatehouse_cluster::ids::new_id(), epoch: 1 };
    let restored =
        gatehouse_storage::backup::restore(backup, dir, config.node_id, Member::split(addr, client), &text(&lineage));
    let restored = match restored {
        Ok(r) => r,
        Err(e) => {
            if created {
                let _ = std::fs::remove_dir_all(dir);
            }
            bail!("{e}");
        }
    };
    let h = &restored.header;
    let note = Restored {
        node_id: config.node_id,
        from_lineage: format!("{}.{}", h.cluster_id, h.epoch),
        lineage: text(&lineage),
        index: h.index,
        term: h.term,
        records: restored.records,
        taken_at_ms: h.taken_at_ms,
        taken_by: h.node_id,
    };
    crate::bootstrap::write_private(&dir.join(FILE), &serde_json::to_string_pretty(&note)?)?;
    Ok(note)
}

/// On start: a restore is audited once the node leads, then its note removed.
pub fn audit_on_start(node: &gatehouse_api::Node, data_dir: &Path, stop: gatehouse_cluster::periodic::Shutdown) {
    let file = data_dir.join(FILE);
    let Ok(text) = std::fs::read_to_string(&file) else { return };
    let Ok(r) = serde_json::from_str::<Restored>(&text) else {
        tracing::error!(file = %file.display(), "the restore note is malformed; left for the operator");
        return;
    };
    let detail = format!(
        "from cluster {} at index {} (term {}), taken by node {} at {} ms; {} records; now cluster {}",
        r.from_lineage, r.index, r.term, r.taken_by, r.taken_at_ms, r.records, r.lineage
    );
    crate::forced_recovery::audit_once_leading(node, file, "cluster.restored", detail, stop);
}
