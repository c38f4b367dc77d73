//! The command line: `gatehouse serve …` and `gatehouse admin …`.
//!
//! Admin commands print tables for people and, with `--json`, one JSON
//! document for scripts. Errors go to stderr with a non-zero exit code.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gatehouse_proto::admin::cluster_service_client::ClusterServiceClient;
use gatehouse_proto::admin::key_service_client::KeyServiceClient;
use gatehouse_proto::admin::role_service_client::RoleServiceClient;
use gatehouse_proto::admin::session_service_client::SessionServiceClient;
use gatehouse_proto::admin::user_service_client::UserServiceClient;
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
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Roles: built-in ones, and custom ones holding permission sets.
    #[command(subcommand)]
    Role(RoleCommand),
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// List built-in and custom roles with their permissions.
    List,
    /// Create a custom role.
    Create {
        name: String,
        /// A permission to grant (repeatable), e.g. users.read, keys.write.
        #[arg(long = "permission")]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Replace a custom role's permissions and description.
    Update {
        name: String,
        #[arg(long = "permission")]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a custom role no user or key holds.
    Delete { name: String },
}

/// `--wait all`: return only once every reachable voter applied the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    All,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        username: String,
        #[arg(long)]
        email: String,
        /// A role to hold (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Read a password (at least 12 characters) from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List {
        #[arg(long)]
        role: Option<String>,
        /// active or disabled.
        #[arg(long)]
        status: Option<String>,
    },
    /// Disable a user: its keys stop working and its sessions end.
    Disable { user: String },
    /// Enable a disabled user.
    Enable { user: String },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key; prints it once.
    Create {
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. 90d, 12h (default: no expiry).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Restrict the key to these of the user's roles (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        user: Option<String>,
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key.
    Revoke {
        id: String,
        #[arg(long, value_enum)]
        wait: Option<Wait>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List a user's sessions.
    List {
        #[arg(long)]
        user: String,
    },
    /// Revoke one session.
    Revoke {
        id: String,
        #[arg(long, value_enum)]
        wait: Option<Wait>,
    },
    /// Revoke every session of a user.
    RevokeAll {
        #[arg(long)]
        user: String,
        #[arg(long, value_enum)]
        wait: Option<Wait>,
    },
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

async fn connect(args: &AdminArgs) -> anyhow::Result<InterceptedService<Channel, Bearer>> {
    let endpoint =
        if args.endpoint.contains("://") { args.endpoint.clone() } else { format!("http://{}", args.endpoint) };
    let channel = Channel::from_shared(endpoint.clone())
        .context("invalid endpoint")?
        .connect()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let value: MetadataValue<Ascii> =
        format!("Bearer {}", token(args)?).parse().context("the API key has invalid characters")?;
    Ok(InterceptedService::new(channel, Bearer(value)))
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
    let channel = connect(&args).await?;
    let json = args.json;
    match args.command {
        AdminCommand::Cluster(cmd) => cluster(ClusterServiceClient::new(channel), cmd, json, out).await,
        AdminCommand::User(cmd) => user(UserServiceClient::new(channel), cmd, json, out).await,
        AdminCommand::Key(cmd) => key(KeyServiceClient::new(channel), cmd, json, out).await,
        AdminCommand::Session(cmd) => session(SessionServiceClient::new(channel), cmd, json, out).await,
        AdminCommand::Role(cmd) => role(RoleServiceClient::new(channel), cmd, json, out).await,
    }
}

type Authed = InterceptedService<Channel, Bearer>;

async fn cluster(
    mut client: ClusterServiceClient<Authed>,
    cmd: ClusterCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match &cmd {
        ClusterCommand::Status => {
            let s = client.status(ClusterStatusRequest {}).await.map_err(rpc_error)?.into_inner();
            print_status(&s, json, out)
        }
        ClusterCommand::AddLearner { id, addr } => {
            let r =
                client.add_learner(AddLearnerRequest { node_id: *id, addr: addr.clone() }).await.map_err(rpc_error)?;
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

fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

fn user_json(u: &User) -> serde_json::Value {
    json!({
        "id": u.id, "username": u.username, "email": u.email, "roles": u.roles, "status": u.status,
        "created_at": u.created_at, "updated_at": u.updated_at, "locked_until": u.locked_until,
    })
}

fn key_json(k: &ApiKey) -> serde_json::Value {
    json!({
        "id": k.id, "user_id": k.user_id, "username": k.username, "name": k.name, "roles": k.roles,
        "created_at": k.created_at, "expires_at": k.expires_at, "revoked_at": k.revoked_at, "last_used": k.last_used,
    })
}

fn session_json(s: &Session) -> serde_json::Value {
    json!({
        "id": s.id, "user_id": s.user_id, "username": s.username, "created_at": s.created_at, "expires_at": s.expires_at,
        "last_seen": s.last_seen, "client_ip": s.client_ip, "user_agent": s.user_agent,
    })
}

fn print_revoked(r: &Revoked, what: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        writeln!(
            out,
            "{}",
            json!({ "revoked": r.count, "log_index": r.log_index, "applied_on": r.applied_on, "unreachable": r.unreachable })
        )?;
    } else {
        writeln!(out, "revoked {} {what} (log index {})", r.count, r.log_index)?;
        if !r.applied_on.is_empty() || !r.unreachable.is_empty() {
            writeln!(out, "applied on nodes {:?}; unreachable {:?}", r.applied_on, r.unreachable)?;
        }
    }
    Ok(())
}

fn read_password_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!pw.is_empty(), "no password on stdin");
    Ok(pw)
}

async fn user(
    mut client: UserServiceClient<Authed>,
    cmd: UserCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Create { username, email, roles, password_stdin } => {
            let password = if password_stdin { read_password_stdin()? } else { String::new() };
            let u = client
                .create(CreateUserRequest { username, email, roles, password })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                writeln!(out, "{}", user_json(&u))?;
            } else {
                writeln!(out, "created user {} ({}) with roles [{}]", u.username, u.id, u.roles.join(", "))?;
            }
        }
        UserCommand::List { role, status } => {
            let req = ListUsersRequest { role: role.unwrap_or_default(), status: status.unwrap_or_default() };
            let users = client.list(req).await.map_err(rpc_error)?.into_inner().users;
            if json {
                writeln!(out, "{}", json!({ "users": users.iter().map(user_json).collect::<Vec<_>>() }))?;
            } else {
                writeln!(out, "{:<24} {:<32} {:<10} ROLES", "USERNAME", "ID", "STATUS")?;
                for u in users {
                    writeln!(out, "{:<24} {:<32} {:<10} {}", u.username, u.id, u.status, u.roles.join(","))?;
                }
            }
        }
        UserCommand::Disable { user } => {
            let u = client
                .set_status(SetUserStatusRequest { user, status: "disabled".into() })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                writeln!(out, "{}", user_json(&u))?;
            } else {
                writeln!(out, "disabled {}: its keys no longer work and its sessions ended", u.username)?;
            }
        }
        UserCommand::Enable { user } => {
            let u = client
                .set_status(SetUserStatusRequest { user, status: "active".into() })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                writeln!(out, "{}", user_json(&u))?;
            } else {
                writeln!(out, "enabled {}", u.username)?;
            }
        }
    }
    Ok(())
}

async fn key(
    mut client: KeyServiceClient<Authed>,
    cmd: KeyCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create { user, name, ttl, roles } => {
            let req = CreateKeyRequest { user, name, ttl_seconds: ttl.map_or(0, |d| d.as_secs().max(1)), roles };
            let r = client.create(req).await.map_err(rpc_error)?.into_inner();
            let id = r.key.as_ref().map(|k| k.id.clone()).unwrap_or_default();
            if json {
                writeln!(out, "{}", json!({ "id": id, "key": r.secret }))?;
            } else {
                writeln!(out, "API key {id} (shown once, store it now):\n\n    {}\n", r.secret)?;
            }
        }
        KeyCommand::List { user, all } => {
            let req = ListKeysRequest { user: user.unwrap_or_default(), include_revoked: all };
            let keys = client.list(req).await.map_err(rpc_error)?.into_inner().keys;
            if json {
                writeln!(out, "{}", json!({ "keys": keys.iter().map(key_json).collect::<Vec<_>>() }))?;
            } else {
                writeln!(
                    out,
                    "{:<16} {:<20} {:<20} {:<20} {:<20} {:<20} ROLES",
                    "ID", "USER", "NAME", "LAST USED", "EXPIRES", "REVOKED"
                )?;
                for k in keys {
                    let roles = if k.roles.is_empty() { "(all of the user's)".to_string() } else { k.roles.join(",") };
                    writeln!(
                        out,
                        "{:<16} {:<20} {:<20} {:<20} {:<20} {:<20} {roles}",
                        k.id,
                        k.username,
                        k.name,
                        when(k.last_used),
                        when(k.expires_at),
                        when(k.revoked_at)
                    )?;
                }
            }
        }
        KeyCommand::Revoke { id, wait } => {
            let r = client
                .revoke(RevokeKeyRequest { id, wait_all: wait == Some(Wait::All) })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_revoked(&r, "key", json, out)?;
        }
    }
    Ok(())
}

async fn session(
    mut client: SessionServiceClient<Authed>,
    cmd: SessionCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        SessionCommand::List { user } => {
            let sessions = client.list(ListSessionsRequest { user }).await.map_err(rpc_error)?.into_inner().sessions;
            if json {
                writeln!(out, "{}", json!({ "sessions": sessions.iter().map(session_json).collect::<Vec<_>>() }))?;
            } else {
                writeln!(
                    out,
                    "{:<32} {:<20} {:<20} {:<20} {:<16} USER AGENT",
                    "ID", "CREATED", "LAST SEEN", "EXPIRES", "IP"
                )?;
                for s in sessions {
                    writeln!(
                        out,
                        "{:<32} {:<20} {:<20} {:<20} {:<16} {}",
                        s.id,
                        when(s.created_at),
                        when(s.last_seen),
                        when(s.expires_at),
                        s.client_ip,
                        s.user_agent
                    )?;
                }
            }
        }
        SessionCommand::Revoke { id, wait } => {
            let r = client
                .revoke(RevokeSessionRequest { id, wait_all: wait == Some(Wait::All) })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_revoked(&r, "session", json, out)?;
        }
        SessionCommand::RevokeAll { user, wait } => {
            let req = RevokeUserSessionsRequest { user, wait_all: wait == Some(Wait::All) };
            let r = client.revoke_all(req).await.map_err(rpc_error)?.into_inner();
            print_revoked(&r, "sessions", json, out)?;
        }
    }
    Ok(())
}

fn role_json(r: &Role) -> serde_json::Value {
    json!({ "name": r.name, "permissions": r.permissions, "description": r.description, "built_in": r.built_in })
}

async fn role(
    mut client: RoleServiceClient<Authed>,
    cmd: RoleCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let written = match cmd {
        RoleCommand::List => {
            let roles = client.list(ListRolesRequest {}).await.map_err(rpc_error)?.into_inner().roles;
            if json {
                writeln!(out, "{}", json!({ "roles": roles.iter().map(role_json).collect::<Vec<_>>() }))?;
            } else {
                writeln!(out, "{:<20} {:<8} PERMISSIONS", "ROLE", "KIND")?;
                for r in roles {
                    let kind = if r.built_in { "built-in" } else { "custom" };
                    writeln!(out, "{:<20} {:<8} {}", r.name, kind, r.permissions.join(","))?;
                }
            }
            return Ok(());
        }
        RoleCommand::Create { name, permissions, description } => {
            client.create(PutRoleRequest { name, permissions, description }).await.map_err(rpc_error)?.into_inner()
        }
        RoleCommand::Update { name, permissions, description } => {
            client.update(PutRoleRequest { name, permissions, description }).await.map_err(rpc_error)?.into_inner()
        }
        RoleCommand::Delete { name } => {
            client.delete(DeleteRoleRequest { name: name.clone() }).await.map_err(rpc_error)?;
            if json {
                writeln!(out, "{}", json!({ "deleted": name }))?;
            } else {
                writeln!(out, "deleted role {name}")?;
            }
            return Ok(());
        }
    };
    if json {
        writeln!(out, "{}", role_json(&written))?;
    } else {
        writeln!(out, "role {}: {}", written.name, written.permissions.join(", "))?;
    }
    Ok(())
}
