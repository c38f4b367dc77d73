//! The command line: `gatehouse serve …` and `gatehouse admin …`.
//!
//! Admin commands print tables for people and, with `--json`, one JSON
//! document for scripts. Errors go to stderr with a non-zero exit code.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gatehouse_proto::admin::cluster_service_client::ClusterServiceClient;
use gatehouse_proto::admin::*;
use serde_json::json;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "An auth cluster: API keys, sessions and JWTs verified on every node, replicated with Raft."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(ServeArgs),
    /// Operate a cluster through its admin API.
    Admin(AdminArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// One self-initialising node with data in ./gatehouse-data; prints a bootstrap admin key once.
    #[arg(long, conflicts_with = "config")]
    pub dev: bool,
    /// TOML configuration file; GATEHOUSE_* variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin API endpoint (any node).
    #[arg(long, global = true, env = "GATEHOUSE_ENDPOINT", default_value = "http://127.0.0.1:9090")]
    pub endpoint: String,
    /// Admin API key. Prefer GATEHOUSE_TOKEN or --token-file: arguments are visible to other users.
    #[arg(long, global = true, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin API key.
    #[arg(long, global = true, env = "GATEHOUSE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Cluster membership and health.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term and every member's state and applied index.
    Status,
    /// Add a node as a non-voting learner; returns once it caught up.
    AddLearner {
        /// The new node's id.
        id: u64,
        /// The new node's gRPC address (host:port).
        addr: String,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a node from the cluster.
    Remove { id: u64 },
    /// Build a snapshot now (and compact the log behind it).
    Snapshot,
}

#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

fn token(args: &AdminArgs) -> anyhow::Result<String> {
    if let Some(path) = &args.token_file {
        let t = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(t.trim().to_string());
    }
    args.token
        .clone()
        .filter(|t| !t.is_empty())
        .context("an admin API key is required: set GATEHOUSE_TOKEN or --token-file")
}

async fn connect(args: &AdminArgs) -> anyhow::Result<ClusterServiceClient<InterceptedService<Channel, Bearer>>> {
    let endpoint =
        if args.endpoint.contains("://") { args.endpoint.clone() } else { format!("http://{}", args.endpoint) };
    let channel = Channel::from_shared(endpoint.clone())
        .context("invalid endpoint")?
        .connect()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let value: MetadataValue<Ascii> =
        format!("Bearer {}", token(args)?).parse().context("the API key has invalid characters")?;
    Ok(ClusterServiceClient::with_interceptor(channel, Bearer(value)))
}

/// A failed RPC, as the operator should read it.
fn rpc_error(status: tonic::Status) -> anyhow::Error {
    let mut msg = format!("{}: {}", code_name(status.code()), status.message());
    if let Some(leader) = status.metadata().get(gatehouse_api::error::LEADER_METADATA).and_then(|v| v.to_str().ok()) {
        msg.push_str(&format!(" (leader: {leader})"));
    }
    anyhow::anyhow!(msg)
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "timed out",
        _ => "error",
    }
}

/// Runs one admin command, writing its output to `out`.
pub async fn admin(args: AdminArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    match &args.command {
        AdminCommand::Cluster(ClusterCommand::Status) => {
            let s = client.status(ClusterStatusRequest {}).await.map_err(rpc_error)?.into_inner();
            print_status(&s, args.json, out)
        }
        AdminCommand::Cluster(ClusterCommand::AddLearner { id, addr }) => {
            let r =
                client.add_learner(AddLearnerRequest { node_id: *id, addr: addr.clone() }).await.map_err(rpc_error)?;
            print_membership(&r.into_inner(), args.json, out)
        }
        AdminCommand::Cluster(ClusterCommand::Promote { id }) => {
            let r = client.promote(PromoteRequest { node_id: *id }).await.map_err(rpc_error)?;
            print_membership(&r.into_inner(), args.json, out)
        }
        AdminCommand::Cluster(ClusterCommand::Remove { id }) => {
            let r = client.remove_node(RemoveNodeRequest { node_id: *id }).await.map_err(rpc_error)?;
            print_membership(&r.into_inner(), args.json, out)
        }
        AdminCommand::Cluster(ClusterCommand::Snapshot) => {
            let r = client.trigger_snapshot(TriggerSnapshotRequest {}).await.map_err(rpc_error)?.into_inner();
            if args.json {
                writeln!(out, "{}", json!({ "snapshot_index": r.snapshot_index }))?;
            } else {
                writeln!(out, "snapshot built at index {}", r.snapshot_index)?;
            }
            Ok(())
        }
    }
}

fn print_status(s: &ClusterStatusResponse, as_json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if as_json {
        let nodes: Vec<_> = s
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.id, "addr": n.addr, "voter": n.voter, "reachable": n.reachable, "state": n.state,
                    "term": n.term, "applied_index": n.applied_index, "last_log_index": n.last_log_index,
                    "matched_index": n.matched_index, "replication_lag": n.replication_lag,
                })
            })
            .collect();
        let leader = if s.leader_id == 0 { serde_json::Value::Null } else { json!(s.leader_id) };
        writeln!(out, "{}", json!({ "leader": leader, "term": s.term, "answered_by": s.node_id, "nodes": nodes }))?;
        return Ok(());
    }
    let leader = if s.leader_id == 0 { "none".to_string() } else { format!("{} ({})", s.leader_id, s.leader_addr) };
    writeln!(out, "leader: {leader}   term: {}", s.term)?;
    writeln!(
        out,
        "{:<6} {:<22} {:<8} {:<10} {:>6} {:>10} {:>10} {:>6}",
        "ID", "ADDR", "ROLE", "STATE", "TERM", "APPLIED", "LAST_LOG", "LAG"
    )?;
    for n in &s.nodes {
        let role = if n.voter { "voter" } else { "learner" };
        let state = if n.reachable { n.state.as_str() } else { "unreachable" };
        writeln!(
            out,
            "{:<6} {:<22} {:<8} {:<10} {:>6} {:>10} {:>10} {:>6}",
            n.id, n.addr, role, state, n.term, n.applied_index, n.last_log_index, n.replication_lag
        )?;
    }
    Ok(())
}

fn print_membership(r: &MembershipResponse, as_json: bool, out: &mut impl Write) -> anyhow::Result<()> {
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
