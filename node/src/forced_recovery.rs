//! Recovering from a quorum lost for good: a stopped survivor becomes a
//! one-voter cluster with everything it holds (like etcd's
//! `--force-new-cluster`).
//!
//! ```text
//!   gatehouse recover --config node.toml --force-new-cluster   (node stopped)
//!     → refused while a quorum of the other voters answers
//!     → a new epoch of the cluster's lineage (the old majority, if it comes
//!       back, is refused by this cluster and refuses it)
//!     → one membership entry appended: this node the only voter
//!       (gatehouse_storage::force)
//!     → prints what may be lost; writes <data_dir>/forced-recovery.json
//!   gatehouse serve --config node.toml
//!     → elects itself, commits its whole log; once it leads, audits
//!       `cluster.force_recovered` and removes the file
//! ```
//!
//! The other voters are wiped and added again (`admin cluster add-learner`,
//! `promote`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use gatehouse_api::Node;
use gatehouse_cluster::lineage::{text, ClusterLineage, Lineage, LEGACY_ID};
use gatehouse_cluster::periodic::Shutdown;
use gatehouse_cluster::{ClusterSecret, Peers};
use gatehouse_storage::force::ForceError;
use gatehouse_storage::Storage;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The note the recovery leaves for the node's next start.
pub const FILE: &str = "forced-recovery.json";

/// How long each other voter is given to answer the health check.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What a forced recovery did (printed, and audited at the next start).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recovered {
    pub node_id: u64,
    pub lineage_before: String,
    pub lineage_after: String,
    /// The last log index this node held before the recovery.
    pub last_index: u64,
    /// The highest index it knew to be committed.
    pub committed_index: u64,
    /// The members the cluster had.
    pub members_before: Vec<u64>,
    /// When the recovery ran (Unix ms).
    pub at_ms: u64,
}

impl Recovered {
    /// What the operator reads before starting the node.
    pub fn warning(&self) -> String {
        let mut out = format!(
            "node {} is now the only voter of cluster {} (it was {}).\n\n\
             What may be lost: anything the lost majority committed after index {}, the last \
             entry this node holds.\n",
            self.node_id, self.lineage_after, self.lineage_before, self.last_index
        );
        if self.last_index > self.committed_index {
            out += &format!(
                "Entries {}..={} were on this node but not known to it as committed: the recovery \
                 commits them (some may never have been acknowledged to a client).\n",
                self.committed_index + 1,
                self.last_index
            );
        }
        let others: Vec<String> =
            self.members_before.iter().filter(|id| **id != self.node_id).map(u64::to_string).collect();
        if !others.is_empty() {
            out += &format!(
                "\nThe other members ({}) must not start with their old data: they are of the old epoch, \
                 and this cluster refuses them. Wipe their data directories and add them again \
                 (admin cluster add-learner, then promote).\n",
                others.join(", ")
            );
        }
        out
    }
}

/// Why a quorum check or a recovery was refused.
fn in_use(e: &gatehouse_storage::StorageError, dir: &Path) -> anyhow::Error {
    let text = e.to_string();
    // RocksDB's LOCK file, held by the running node (not "block checksum").
    if text.contains("/LOCK") || text.contains("Resource temporarily unavailable") {
        anyhow::anyhow!("{} is in use by a running node: stop it first", dir.display())
    } else {
        anyhow::anyhow!("opening {}: {text}", dir.display())
    }
}

/// Runs the recovery on the stopped node `config` names. `confirmed` is
/// the `--force-new-cluster` flag: without it nothing is touched.
pub async fn force_new_cluster(config: &Config, confirmed: bool) -> anyhow::Result<Recovered> {
    config.validate()?;
    if config.front.is_some() {
        bail!("a front holds no data to recover: recover a voter");
    }
    let dir = &config.data_dir;
    if !dir.join("db").exists() {
        bail!("{} holds no node data: there is nothing to recover", dir.display());
    }
    let storage = Storage::open_offline(dir).map_err(|e| in_use(&e, dir))?;
    let lineage = Lineage::load(&storage).context("reading the cluster lineage")?;
    let before = lineage.get().context("this data directory never took part in a cluster")?;
    let membership = storage.effective_membership()?.context("this data directory never took part in a cluster")?;
    let voters: Vec<u64> = membership.voter_ids().collect();
    if !voters.contains(&config.node_id) {
        bail!("node {} is not a voter of the membership its data holds: recover a voter that survived", config.node_id);
    }
    let (last_index, committed_index) = storage.log_position()?;
    // A quorum that answers needs no forced recovery. Asked as a tool asks
    // (no lineage on the calls: a wiped node takes none from them), each
    // answer says which lineage the voter is of and how much log it holds.
    let peers = peers(config)?;
    let others: Vec<(u64, String)> = membership
        .nodes()
        .filter(|(id, _)| **id != config.node_id && voters.contains(id))
        .map(|(id, m)| (*id, m.addr.clone()))
        .collect();
    let answers = futures::future::join_all(others.iter().map(|(id, addr)| ask(&peers, *id, addr))).await;
    let mut alive = Vec::new();
    for (id, answer) in others.iter().map(|(id, _)| *id).zip(answers) {
        match answer {
            Answer::Unreachable => {}
            // Wiped and not added anywhere yet: no voter of this cluster.
            Answer::Status(s) if s.cluster_id.is_empty() => {}
            Answer::Status(s) if s.cluster_id != before.cluster_id || s.epoch != before.epoch => bail!(
                "node {id} answers as a node of cluster {}.{} (this node is of {}): this node's cluster lives \
                 on elsewhere; wipe this node and add it there",
                s.cluster_id,
                s.epoch,
                text(&before)
            ),
            Answer::Status(s) if s.last_log_index > last_index => bail!(
                "node {id} answers and holds more of the log (to index {}; this node to {last_index}): \
                 recover that node instead",
                s.last_log_index
            ),
            Answer::Status(_) => alive.push(id),
            Answer::Refused(code) => bail!(
                "node {id} is alive but refuses this node's calls ({code}): check the cluster secret and \
                 certificates in this configuration; a forced recovery is for voters that are gone"
            ),
        }
    }
    if alive.len() + 1 > voters.len() / 2 {
        bail!(
            "voters {alive:?} answer: with this node they are a quorum of {} voters, and the cluster \
             recovers on its own; start this node instead (a forced recovery is for a quorum lost for good)",
            voters.len()
        );
    }
    if !confirmed {
        bail!(
            "node {} holds the log to index {last_index} ({committed_index} known committed). Run this on \
             one survivor only, the one holding the most of the log: it becomes the only voter of a new \
             epoch of its cluster, and what the lost voters committed after its last entry is lost. Run \
             again with --force-new-cluster to do it",
            config.node_id
        );
    }
    // The new epoch first: a crash after it and before the rewrite leaves a
    // node that talks to nobody, and running the recovery again finishes it.
    let at_ms = gatehouse_cluster::clock::now_ms();
    // Time-based, so two survivors recovered apart never share an epoch.
    // Data from before lineages gets an id of its own: legacy clusters
    // all share one, and take calls that carry none.
    let cluster_id =
        if before.cluster_id == LEGACY_ID { gatehouse_cluster::ids::new_id() } else { before.cluster_id.clone() };
    let after = ClusterLineage { cluster_id, epoch: (before.epoch + 1).max(at_ms) };
    lineage.replace(after.clone()).context("storing the new epoch")?;
    let forced = storage.force_single_voter(config.node_id).map_err(|e| match e {
        ForceError::Storage(e) => anyhow::anyhow!("rewriting the membership: {e}"),
        e => anyhow::anyhow!("{e}"),
    })?;
    storage.sync()?;
    let recovered = Recovered {
        node_id: config.node_id,
        lineage_before: text(&before),
        lineage_after: text(&after),
        last_index: forced.last_index,
        committed_index: forced.committed_index,
        members_before: forced.members_before,
        at_ms,
    };
    // Replaced whole (a recovery run twice leaves the last one's note).
    let aside = dir.join(format!(".{FILE}.tmp"));
    let _ = std::fs::remove_file(&aside);
    crate::bootstrap::write_private(&aside, &serde_json::to_string_pretty(&recovered)?)?;
    std::fs::rename(&aside, path(dir))?;
    Ok(recovered)
}

/// Calls to the peers as a tool holding the node's secret (and TLS) makes them.
fn peers(config: &Config) -> anyhow::Result<Peers> {
    let secret = config.read_cluster_secret()?.context("the configuration names no cluster secret")?;
    let mut peers =
        Peers::new(ClusterSecret::new(&secret).map_err(anyhow::Error::msg)?).with_routes(config.peer_routes.clone());
    if let Some(t) = &config.cluster_tls {
        let material = gatehouse_tls::Material::load_node(&t.cert_file, &t.key_file, config.node_id)?;
        let trust = gatehouse_tls::peer::Trust::load(&t.ca_file, &t.deny_serials, t.deny_file.as_deref())?;
        peers = peers.with_tls(gatehouse_cluster::peer_tls::PeerTls::new(trust, &material)?);
    }
    Ok(peers)
}

/// What a voter said when asked for its status.
enum Answer {
    Status(gatehouse_proto::control::LocalStatusResponse),
    /// No answer (down, cut off, timed out).
    Unreachable,
    /// It answered with a refusal: alive.
    Refused(tonic::Code),
}

async fn ask(peers: &Peers, id: u64, addr: &str) -> Answer {
    peers.expect(addr, id);
    let Ok(mut client) = peers.control_client_once(addr) else { return Answer::Unreachable };
    let mut req = tonic::Request::new(gatehouse_proto::control::LocalStatusRequest {});
    req.set_timeout(ASK_TIMEOUT);
    match tokio::time::timeout(ASK_TIMEOUT, client.local_status(req)).await {
        Ok(Ok(s)) => Answer::Status(s.into_inner()),
        Ok(Err(s)) if no_answer(&s) => Answer::Unreachable,
        Ok(Err(s)) => Answer::Refused(s.code()),
        Err(_) => Answer::Unreachable,
    }
}

/// Whether a failed call got no answer from a Gatehouse node: down, cut
/// off, timed out, or a connection taken and closed with no gRPC response
/// (a TCP proxy in front of a dead node accepts, then closes; so does any
/// server that is not Gatehouse). A node's own refusal always comes with
/// its response headers. (`add-learner` tells the last case apart, for
/// the operator: "it did not answer as a Gatehouse node".)
fn no_answer(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
        Code::Unknown => status.metadata().is_empty(),
        _ => false,
    }
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// On start: a recovery that ran while the node was stopped is audited
/// once the node leads its new cluster, then its note removed.
pub fn audit_on_start(node: &Node, data_dir: &Path, stop: Shutdown) {
    let file = path(data_dir);
    let Ok(text) = std::fs::read_to_string(&file) else { return };
    let Ok(recovered) = serde_json::from_str::<Recovered>(&text) else {
        tracing::error!(file = %file.display(), "the forced-recovery note is malformed; left for the operator");
        return;
    };
    tracing::warn!(
        lineage_before = %recovered.lineage_before,
        lineage_after = %recovered.lineage_after,
        last_index = recovered.last_index,
        committed_index = recovered.committed_index,
        "starting after a forced recovery: this node is the only voter"
    );
    let detail = format!(
        "lineage {} -> {}; last_index={} committed_index={} members_before={:?}",
        recovered.lineage_before,
        recovered.lineage_after,
        recovered.last_index,
        recovered.committed_index,
        recovered.members_before
    );
    audit_once_leading(node, file, "cluster.force_recovered", detail, stop);
}

/// Records `action` in the audit log once `node` leads and is fresh (an
/// offline operation's note, found at start), then removes `note`.
pub(crate) fn audit_once_leading(node: &Node, note: PathBuf, action: &'static str, detail: String, mut stop: Shutdown) {
    let node = node.clone();
    tokio::spawn(async move {
        while node.leader().is_none_or(|(id, _)| id != node.id()) || !node.is_fresh() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.wait() => return,
            }
        }
        let actor = gatehouse_api::audit::Actor::default();
        let mut event = gatehouse_api::audit::event(action, "ok", &actor, format!("node:{}", node.id()));
        event.node_id = node.id();
        event.detail = detail;
        node.audit(event);
        if let Err(e) = std::fs::remove_file(&note) {
            tracing::error!(error = %e, file = %note.display(), "removing an offline operation's note failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_is_no_answer_a_refusal_is_one() {
        assert!(no_answer(&tonic::Status::unavailable("tcp connect error")));
        assert!(no_answer(&tonic::Status::cancelled("connection closed")));
        assert!(no_answer(&tonic::Status::unknown("transport error")), "a proxy before a dead node");
        let mut refused = tonic::Status::unknown("said by a node");
        refused.metadata_mut().insert("content-type", "application/grpc".parse().unwrap());
        assert!(!no_answer(&refused));
        assert!(!no_answer(&tonic::Status::unauthenticated("wrong secret")));
    }
}
