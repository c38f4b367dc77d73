//! `gatehouse admin cluster …`: status, membership, leadership, snapshots, backups.

use clap::Subcommand;
use gatehouse_proto::admin::cluster_service_client::ClusterServiceClient;
use gatehouse_proto::admin::*;
use serde_json::json;
use std::io::Write;

use super::client::*;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term and every member's state, commit and applied index, and lag.
    Status,
    /// Add a node as a non-voting learner; returns once it caught up.
    AddLearner {
        /// The new node's id.
        id: u64,
        /// Where peers reach the new node: its `advertise_addr` (host:port).
        addr: String,
        /// Where clients reach its admin API (its `advertise_client_addr`),
        /// when it has a peer listener of its own.
        #[arg(long, value_name = "HOST:PORT")]
        client_addr: Option<String>,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a node from the cluster.
    Remove { id: u64 },
    /// Hand leadership to a voter; returns once it leads.
    TransferLeader { id: u64 },
    /// Build a snapshot now (and compact the log behind it).
    Snapshot,
    /// Write a backup of the whole state, as the answering node applied
    /// it, to a new file (mode 0600; docs/operations.md).
    Backup {
        /// The file to write; it must not exist.
        #[arg(short, long, value_name = "FILE")]
        out: std::path::PathBuf,
        /// Seal the whole file under this key (64 hex digits;
        /// `gatehouse backup-key` makes one). Restore then needs it.
        #[arg(long, value_name = "FILE")]
        encrypt_key_file: Option<std::path::PathBuf>,
    },
    /// Restart every member, one at a time, for a rolling restart or
    /// upgrade: learners, then followers, the leader last (after it hands
    /// off leadership). Each restart must bring the node back as a new
    /// process, ready, with every member caught up, before the next
    /// (docs/operations.md).
    Roll {
        /// Restarts one node: run with `sh -c`, with GATEHOUSE_NODE_ID,
        /// GATEHOUSE_NODE_ADDR and GATEHOUSE_NODE_CLIENT_ADDR set (e.g.
        /// 'ssh "node-$GATEHOUSE_NODE_ID" sudo systemctl restart gatehouse').
        #[arg(long, value_name = "COMMAND")]
        restart: String,
        /// How long each node has to come back and catch up.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        timeout: u64,
    },
}

pub(super) async fn cluster(
    mut client: ClusterServiceClient<Authed>,
    cmd: ClusterCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match &cmd {
        // Run by `admin` itself: it dials every member, not one.
        ClusterCommand::Roll { .. } => anyhow::bail!("cluster roll dials every member: run it through `admin`"),
        ClusterCommand::Status => {
            let s = client.status(ClusterStatusRequest {}).await.map_err(rpc_error)?.into_inner();
            print_status(&s, json, out)
        }
        ClusterCommand::AddLearner { id, addr, client_addr } => {
            let req = AddLearnerRequest {
                node_id: *id,
                addr: addr.clone(),
                client_addr: client_addr.clone().unwrap_or_default(),
            };
            let r = client.add_learner(req).await.map_err(rpc_error)?;
            print_membership(&r.into_inner(), json, out)
        }
        ClusterCommand::Promote { id } => {
            let r = client.promote(PromoteRequest { node_id: *id }).await.map_err(rpc_error)?;
            print_membership(&r.into_inner(), json, out)
        }
        ClusterCommand::Remove { id } => {
            let r = client.remove_node(RemoveNodeRequest { node_id: *id }).await.map_err(rpc_error)?;
            print_membership(&r.into_inner(), json, out)
        }
        ClusterCommand::TransferLeader { id } => {
            let r = client
                .transfer_leadership(TransferLeadershipRequest { node_id: *id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                writeln!(out, "{}", json!({ "leader": r.leader_id, "term": r.term }))?;
            } else {
                writeln!(out, "node {} leads (term {})", r.leader_id, r.term)?;
            }
            Ok(())
        }
        ClusterCommand::Backup { out: path, encrypt_key_file } => {
            let key = match encrypt_key_file {
                Some(f) => Some(gatehouse_storage::sealed::BackupKey::from_file(f)?),
                None => None,
            };
            let (header, records) = backup(client, path, key.as_ref()).await?;
            if json {
                let v = json!({ "file": path.display().to_string(), "records": records, "index": header.index,
                    "term": header.term, "cluster_id": header.cluster_id, "epoch": header.epoch, "node_id": header.node_id });
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "wrote {}: {records} records at index {} (term {}) of cluster {} epoch {}, from node {}",
                    path.display(),
                    header.index,
                    header.term,
                    header.cluster_id,
                    header.epoch,
                    header.node_id
                )?;
            }
            Ok(())
        }
        ClusterCommand::Snapshot => {
            let r = client.trigger_snapshot(TriggerSnapshotRequest {}).await.map_err(rpc_error)?.into_inner();
            if json {
                writeln!(out, "{}", json!({ "snapshot_index": r.snapshot_index }))?;
            } else {
                writeln!(out, "snapshot built at index {}", r.snapshot_index)?;
            }
            Ok(())
        }
    }
}

pub(super) fn print_status(s: &ClusterStatusResponse, as_json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if as_json {
        let nodes: Vec<_> = s
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.id, "addr": n.addr, "client_addr": n.client_addr, "voter": n.voter, "reachable": n.reachable, "state": gatehouse_cluster::control::node_state_name(n.state),
                    "term": n.term, "commit_index": n.commit_index, "applied_index": n.applied_index,
                    "last_log_index": n.last_log_index, "matched_index": n.matched_index,
                    "replication_lag": n.replication_lag,
                    "peer_cert_not_after": (n.peer_cert_not_after != 0).then_some(n.peer_cert_not_after),
                    "cluster_id": (!n.cluster_id.is_empty()).then_some(&n.cluster_id), "epoch": n.epoch,
                    "command_version": n.reachable.then(|| gatehouse_cluster::version::reported(n.command_version)),
                    "store_format": (n.store_format != 0).then_some(n.store_format),
                    "started_at_ms": (n.started_at_ms != 0).then_some(n.started_at_ms), "ready": n.ready,
                })
            })
            .collect();
        let fronts: Vec<_> = s
            .fronts
            .iter()
            .map(|f| {
                json!({
                    "id": f.id, "addr": f.addr, "applied_index": f.applied_index, "lag": f.lag,
                    "last_proof_ms_ago": (f.last_proof_ms_ago != u64::MAX).then_some(f.last_proof_ms_ago),
                    "via_node": f.via_node, "following": f.following, "command_version": f.command_version,
                })
            })
            .collect();
        let leader = if s.leader_id == 0 { serde_json::Value::Null } else { json!(s.leader_id) };
        let all = json!({ "leader": leader, "term": s.term, "answered_by": s.node_id, "nodes": nodes, "fronts": fronts,
            "cluster_id": s.cluster_id, "epoch": s.epoch, "cluster_version": s.cluster_version,
            "understood_version": (s.understood_version != 0).then_some(s.understood_version) });
        writeln!(out, "{all}")?;
        return Ok(());
    }
    let leader = if s.leader_id == 0 { "none".to_string() } else { format!("{} ({})", s.leader_id, s.leader_addr) };
    writeln!(out, "cluster: {} (epoch {})", if s.cluster_id.is_empty() { "none" } else { &s.cluster_id }, s.epoch)?;
    let understood = match s.understood_version {
        0 => "not every member answered".to_string(),
        v if v > s.cluster_version => format!("every member understands {v}: raised shortly"),
        v => format!("every member understands {v}"),
    };
    writeln!(out, "version: {} ({understood})", s.cluster_version)?;
    writeln!(out, "leader: {leader}   term: {}", s.term)?;
    writeln!(
        out,
        "{:<6} {:<22} {:<8} {:<10} {:>6} {:>10} {:>10} {:>10} {:>6} {:>4}",
        "ID", "ADDR", "ROLE", "STATE", "TERM", "COMMIT", "APPLIED", "LAST_LOG", "LAG", "VER"
    )?;
    for n in &s.nodes {
        let role = if n.voter { "voter" } else { "learner" };
        let state = if n.reachable { gatehouse_cluster::control::node_state_name(n.state) } else { "unreachable" };
        let version =
            if n.reachable { gatehouse_cluster::version::reported(n.command_version).to_string() } else { "-".into() };
        writeln!(
            out,
            "{:<6} {:<22} {:<8} {:<10} {:>6} {:>10} {:>10} {:>10} {:>6} {:>4}",
            n.id,
            n.addr,
            role,
            state,
            n.term,
            n.commit_index,
            n.applied_index,
            n.last_log_index,
            n.replication_lag,
            version
        )?;
    }
    if !s.fronts.is_empty() {
        writeln!(out, "\nfronts:")?;
        writeln!(
            out,
            "{:<6} {:<22} {:>10} {:>6} {:>12} {:>5} {:<9} {:>4}",
            "ID", "ADDR", "APPLIED", "LAG", "LAST_PROOF", "VIA", "FOLLOWING", "VER"
        )?;
        for f in &s.fronts {
            let proof = if f.last_proof_ms_ago == u64::MAX {
                "never".to_string()
            } else {
                format!("{}ms", f.last_proof_ms_ago)
            };
            let following = if f.following { "yes" } else { "no" };
            writeln!(
                out,
                "{:<6} {:<22} {:>10} {:>6} {:>12} {:>5} {:<9} {:>4}",
                f.id, f.addr, f.applied_index, f.lag, proof, f.via_node, following, f.command_version
            )?;
        }
    }
    Ok(())
}

pub(super) fn print_membership(r: &MembershipResponse, as_json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if as_json {
        writeln!(out, "{}", json!({ "log_index": r.log_index, "voters": r.voters, "learners": r.learners }))?;
    } else {
        writeln!(
            out,
            "membership committed at index {}: voters {:?}, learners {:?}",
            r.log_index, r.voters, r.learners
        )?;
    }
    Ok(())
}

/// Streams a backup into a new file at `path`: written beside it and
/// renamed once whole, so `path` only ever holds a complete backup.
/// Where a backup goes: the file, sealed or not.
enum Sink {
    Plain(std::io::BufWriter<std::fs::File>),
    Sealed(Box<gatehouse_storage::sealed::Sealing<std::io::BufWriter<std::fs::File>>>),
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(b),
            Sink::Sealed(w) => w.write(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Sealed(w) => w.flush(),
        }
    }
}

impl Sink {
    /// Everything written out and synced.
    fn finish(self) -> anyhow::Result<()> {
        let buffered = match self {
            Sink::Plain(w) => w,
            Sink::Sealed(s) => s.finish()?,
        };
        buffered.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    }
}

async fn backup(
    client: ClusterServiceClient<Authed>,
    path: &std::path::Path,
    key: Option<&gatehouse_storage::sealed::BackupKey>,
) -> anyhow::Result<(gatehouse_proto::state::BackupHeader, u64)> {
    use anyhow::Context;
    use gatehouse_storage::backup::BackupWriter;
    anyhow::ensure!(!path.exists(), "{} exists: a backup never overwrites a file", path.display());
    let name = path.file_name().context("the backup needs a file name")?.to_string_lossy().to_string();
    let partial = path.with_file_name(format!(".{name}.partial"));
    // Ours alone (created new): removed on failure, and only then.
    let file = {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(&partial)
            .with_context(|| format!("creating {} (another backup to that file running?)", partial.display()))?
    };
    let written = async {
        let mut client = client.max_decoding_message_size(gatehouse_cluster::peers::MAX_RAFT_MESSAGE);
        let mut stream = client.backup(BackupRequest {}).await.map_err(rpc_error)?.into_inner();
        let mut writer = None;
        let mut header = None;
        let mut whole = false;
        while let Some(chunk) = stream.message().await.map_err(rpc_error)? {
            if let Some(h) = chunk.header {
                anyhow::ensure!(writer.is_none(), "the node sent a second header");
                let out = std::io::BufWriter::new(file.try_clone()?);
                let sink = match key {
                    Some(k) => Sink::Sealed(Box::new(gatehouse_storage::sealed::Sealing::new(out, k)?)),
                    None => Sink::Plain(out),
                };
                writer = Some(BackupWriter::new(sink, h.clone())?);
                header = Some(h);
            }
            let w = writer.as_mut().context("the node sent records before a header")?;
            for r in chunk.records {
                w.record(r)?;
            }
            if chunk.last {
                whole = true;
                break;
            }
        }
        anyhow::ensure!(whole, "the node ended the backup before it was whole");
        let (sink, records) = writer.context("the node sent no header")?.finish()?;
        sink.finish()?;
        // A link never replaces a file that appeared meanwhile.
        std::fs::hard_link(&partial, path).with_context(|| format!("{} appeared meanwhile", path.display()))?;
        std::fs::remove_file(&partial)?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        std::fs::File::open(dir)?.sync_all()?;
        anyhow::Ok((header.context("no header")?, records))
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}
