//! The command line: `gatehouse serve …` and `gatehouse admin …`.
//!
//! Admin commands print tables for people and, with `--json`, one JSON
//! document for scripts. Errors go to stderr with a non-zero exit code.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gatehouse_proto::admin::cluster_service_client::ClusterServiceClient;
use gatehouse_proto::admin::event_service_client::EventServiceClient;
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
    about = "An auth cluster: API keys and sessions verified on every node, replicated with Raft."
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
    Admin(Box<AdminArgs>),
    /// Every admin key is lost: on a stopped node, ask for a new one. The
    /// key is printed once; the node carries the request out through the
    /// log (audited) when it next starts and has a leader.
    RecoverAdmin(RecoverAdminArgs),
    /// Print a shell completion script, e.g. `gatehouse completions bash > /etc/bash_completion.d/gatehouse`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut impl Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "gatehouse", out);
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
pub struct RecoverAdminArgs {
    /// The stopped node's data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The user to give the key to: created with the admin role, or given it.
    #[arg(long, default_value = "admin")]
    pub username: String,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin API endpoint (any node).
    #[arg(long, global = true, env = "GATEHOUSE_ENDPOINT", default_value = "http://127.0.0.1:9090")]
    pub endpoint: String,
    /// Admin API key. Use GATEHOUSE_TOKEN or --token-file instead: arguments are
    /// visible to every user of the machine (a warning says so).
    #[arg(long, global = true, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin API key on its first line ("-": the first line of
    /// standard input; --password-stdin then reads the second).
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
    /// Cluster membership, leadership and health.
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
    /// Roles: built-in ones, custom ones holding permission sets, and who holds them.
    #[command(subcommand)]
    Role(RoleCommand),
    /// The tamper-evident audit log: query, export, verify.
    #[command(subcommand)]
    Audit(crate::audit_cli::AuditCommand),
    /// Follow committed changes as they happen (hashes of secrets removed).
    Watch {
        /// First log index to show (default: the oldest still in the log).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after this many events (default: follow until interrupted).
        #[arg(long)]
        limit: Option<u64>,
    },
}

/// Which page of a list to fetch.
#[derive(Debug, Clone, Args)]
pub struct Paging {
    /// Items per page (default 100, at most 1000).
    #[arg(long, default_value_t = 0)]
    pub page_size: u32,
    /// Continue from a previous page's token.
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Fetch every page.
    #[arg(long, conflicts_with = "page_token")]
    pub all: bool,
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
        /// A role whose holders may assign this one (repeatable); without
        /// it only holders of roles.write (and of this role) may.
        #[arg(long = "assignable-by", value_name = "ROLE")]
        assignable_by: Vec<String>,
    },
    /// Replace a custom role's permissions, description and assigners.
    Update {
        name: String,
        #[arg(long = "permission")]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long = "assignable-by", value_name = "ROLE")]
        assignable_by: Vec<String>,
    },
    /// Delete a custom role no user or key holds.
    Delete { name: String },
    /// Give a user a role.
    Assign {
        role: String,
        #[arg(long)]
        user: String,
    },
    /// Take a role from a user (keys restricted to it lose it too).
    Unassign {
        role: String,
        #[arg(long)]
        user: String,
    },
}

/// `--wait all`: return only once every reachable voter applied the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    All,
}

/// Where a password comes from: never the command line.
#[derive(Debug, Clone, Args)]
pub struct PasswordSource {
    /// Read the password (at least 12 characters) from the first line of stdin.
    #[arg(long, conflicts_with = "password_file")]
    pub password_stdin: bool,
    /// Read the password from the first line of a file.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
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
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Show one user (by username or id).
    Get { user: String },
    /// List users, by username.
    List {
        #[arg(long)]
        role: Option<String>,
        /// active or disabled.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Change a user's email, roles or status.
    Update {
        user: String,
        #[arg(long)]
        email: Option<String>,
        /// Replace the user's roles with these (repeatable).
        #[arg(long = "role", conflicts_with = "no_roles")]
        roles: Vec<String>,
        /// Remove every role.
        #[arg(long)]
        no_roles: bool,
        /// active or disabled.
        #[arg(long)]
        status: Option<String>,
    },
    /// Set a user's password; ends all of the user's sessions.
    SetPassword {
        user: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Delete a user with all of its keys and sessions.
    Delete {
        user: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Disable a user: its keys stop working and its sessions end.
    Disable {
        user: String,
        /// Return only once every reachable voter applied it.
        #[arg(long, value_enum)]
        wait: Option<Wait>,
    },
    /// Enable a disabled user.
    Enable {
        user: String,
        #[arg(long, value_enum)]
        wait: Option<Wait>,
    },
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
    /// Show one key (never its secret).
    Get { id: String },
    /// List keys, newest first (never their secrets).
    List {
        #[arg(long)]
        user: Option<String>,
        /// Include revoked keys.
        #[arg(long)]
        revoked: bool,
        #[command(flatten)]
        paging: Paging,
    },
    /// Revoke a key.
    Revoke {
        id: String,
        #[arg(long, value_enum)]
        wait: Option<Wait>,
    },
    /// Replace a key with a new one (printed once); the old one ends after the grace period.
    Rotate {
        id: String,
        /// How long the old key keeps working, e.g. 1h (default: revoked at once; at most 30d).
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List a user's sessions, newest first.
    List {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one session.
    Get { id: String },
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
    /// Emergency: revoke every session in the cluster.
    RevokeEverything {
        /// Confirm: every signed-in user is signed out.
        #[arg(long)]
        yes: bool,
        #[arg(long, value_enum)]
        wait: Option<Wait>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term and every member's state, commit and applied index, and lag.
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
    /// Hand leadership to a voter; returns once it leads.
    TransferLeader { id: u64 },
    /// Build a snapshot now (and compact the log behind it).
    Snapshot,
}

#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

fn token(args: &AdminArgs) -> anyhow::Result<String> {
    if let Some(path) = &args.token_file {
        // One line only from stdin: a password for --password-stdin may follow.
        let text = if path.as_os_str() == "-" {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the key from stdin")?;
            line
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        };
        let first = text.lines().next().unwrap_or_default().trim();
        anyhow::ensure!(!first.is_empty(), "no API key on the first line of {}", path.display());
        return Ok(first.to_string());
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
pub fn rpc_error(status: tonic::Status) -> anyhow::Error {
    let mut msg = format!("{}: {}", code_name(status.code()), status.message());
    if let Some(leader) = status.metadata().get(gatehouse_cluster::error::LEADER_METADATA).and_then(|v| v.to_str().ok())
    {
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
        AdminCommand::Audit(cmd) => {
            crate::audit_cli::run(
                gatehouse_proto::admin::audit_service_client::AuditServiceClient::new(channel),
                cmd,
                json,
                out,
            )
            .await
        }
        AdminCommand::Watch { from, limit } => watch(EventServiceClient::new(channel), from, limit, json, out).await,
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

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
                    "id": n.id, "addr": n.addr, "voter": n.voter, "reachable": n.reachable, "state": gatehouse_cluster::raft::service::node_state_name(n.state),
                    "term": n.term, "commit_index": n.commit_index, "applied_index": n.applied_index,
                    "last_log_index": n.last_log_index, "matched_index": n.matched_index,
                    "replication_lag": n.replication_lag,
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
        "{:<6} {:<22} {:<8} {:<10} {:>6} {:>10} {:>10} {:>10} {:>6}",
        "ID", "ADDR", "ROLE", "STATE", "TERM", "COMMIT", "APPLIED", "LAST_LOG", "LAG"
    )?;
    for n in &s.nodes {
        let role = if n.voter { "voter" } else { "learner" };
        let state =
            if n.reachable { gatehouse_cluster::raft::service::node_state_name(n.state) } else { "unreachable" };
        writeln!(
            out,
            "{:<6} {:<22} {:<8} {:<10} {:>6} {:>10} {:>10} {:>10} {:>6}",
            n.id, n.addr, role, state, n.term, n.commit_index, n.applied_index, n.last_log_index, n.replication_lag
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

impl PasswordSource {
    /// The password from stdin or the file; `None` if neither was asked for.
    fn read(&self) -> anyhow::Result<Option<String>> {
        let line = if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            text.lines().next().unwrap_or_default().to_string()
        } else if self.password_stdin {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        } else {
            return Ok(None);
        };
        anyhow::ensure!(!line.is_empty(), "the password is empty");
        Ok(Some(line))
    }
}

/// Fetches one page, or every page with `--all`; returns the items and the
/// token of the next page (empty at the end).
async fn pages<T, Fut>(paging: &Paging, mut fetch: impl FnMut(String) -> Fut) -> anyhow::Result<(Vec<T>, String)>
where
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut all = Vec::new();
    let mut token = paging.page_token.clone();
    loop {
        let (items, next) = fetch(token).await.map_err(rpc_error)?;
        all.extend(items);
        if !paging.all || next.is_empty() {
            return Ok((all, next));
        }
        token = next;
    }
}

fn print_user(u: &User, verb: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", user_json(u))?;
    } else if verb.is_empty() {
        writeln!(out, "username:  {}\nid:        {}\nemail:     {}", u.username, u.id, u.email)?;
        writeln!(out, "roles:     {}\nstatus:    {}", u.roles.join(", "), u.status)?;
        writeln!(out, "created:   {}\nupdated:   {}", when(u.created_at), when(u.updated_at))?;
        if u.locked_until != 0 {
            writeln!(out, "locked:    until {}", when(u.locked_until))?;
        }
    } else {
        writeln!(out, "{verb} user {} ({}): roles [{}], {}", u.username, u.id, u.roles.join(", "), u.status)?;
    }
    Ok(())
}

async fn user(
    mut client: UserServiceClient<Authed>,
    cmd: UserCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Create { username, email, roles, password } => {
            let password = password.read()?.unwrap_or_default();
            let req = CreateUserRequest { username, email, roles, password };
            let u = client.create(req).await.map_err(rpc_error)?.into_inner();
            print_user(&u, "created", json, out)?;
        }
        UserCommand::Get { user } => {
            let u = client.get(GetUserRequest { user }).await.map_err(rpc_error)?.into_inner();
            print_user(&u, "", json, out)?;
        }
        UserCommand::List { role, status, paging } => {
            let (role, status) = (role.unwrap_or_default(), status.unwrap_or_default());
            let (users, next) = pages(&paging, |page_token| {
                let req = ListUsersRequest {
                    role: role.clone(),
                    status: status.clone(),
                    page_size: paging.page_size,
                    page_token,
                };
                let mut client = client.clone();
                async move { client.list(req).await.map(|r| r.into_inner()).map(|r| (r.users, r.next_page_token)) }
            })
            .await?;
            if json {
                let users: Vec<_> = users.iter().map(user_json).collect();
                writeln!(out, "{}", json!({ "users": users, "next_page_token": next }))?;
            } else {
                writeln!(out, "{:<24} {:<32} {:<10} ROLES", "USERNAME", "ID", "STATUS")?;
                for u in users {
                    writeln!(out, "{:<24} {:<32} {:<10} {}", u.username, u.id, u.status, u.roles.join(","))?;
                }
                print_next(&next, out)?;
            }
        }
        UserCommand::Update { user, email, roles, no_roles, status } => {
            let req = UpdateUserRequest {
                user,
                email: email.unwrap_or_default(),
                set_roles: no_roles || !roles.is_empty(),
                roles,
                status: status.unwrap_or_default(),
            };
            let u = client.update(req).await.map_err(rpc_error)?.into_inner();
            print_user(&u, "updated", json, out)?;
        }
        UserCommand::SetPassword { user, password } => {
            let password = password.read()?.context("give the password with --password-stdin or --password-file")?;
            let r = client.set_password(SetPasswordRequest { user, password }).await.map_err(rpc_error)?.into_inner();
            let u = r.user.unwrap_or_default();
            if json {
                writeln!(out, "{}", json!({ "user": user_json(&u), "sessions_revoked": r.sessions_revoked }))?;
            } else {
                writeln!(out, "password set for {}; {} session(s) ended", u.username, r.sessions_revoked)?;
            }
        }
        UserCommand::Delete { user, yes } => {
            anyhow::ensure!(yes, "deleting {user} also deletes its keys and sessions: confirm with --yes");
            let r = client.delete(DeleteUserRequest { user }).await.map_err(rpc_error)?.into_inner();
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({ "deleted": r.user_id, "keys_deleted": r.keys_deleted, "sessions_revoked": r.sessions_revoked })
                )?;
            } else {
                writeln!(
                    out,
                    "deleted user {} with {} key(s) and {} session(s)",
                    r.user_id, r.keys_deleted, r.sessions_revoked
                )?;
            }
        }
        UserCommand::Disable { user, wait } => {
            let req = SetUserStatusRequest { user, status: "disabled".into(), wait_all: wait == Some(Wait::All) };
            let u = client.set_status(req).await.map_err(rpc_error)?.into_inner();
            print_user(&u, "disabled (keys stop working, sessions ended)", json, out)?;
        }
        UserCommand::Enable { user, wait } => {
            let req = SetUserStatusRequest { user, status: "active".into(), wait_all: wait == Some(Wait::All) };
            let u = client.set_status(req).await.map_err(rpc_error)?.into_inner();
            print_user(&u, "enabled", json, out)?;
        }
    }
    Ok(())
}

fn print_next(next: &str, out: &mut impl Write) -> anyhow::Result<()> {
    if !next.is_empty() {
        writeln!(out, "(more: --page-token {next}, or --all)")?;
    }
    Ok(())
}

fn print_new_key(key: Option<&ApiKey>, secret: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let id = key.map(|k| k.id.clone()).unwrap_or_default();
    if json {
        writeln!(out, "{}", json!({ "id": id, "key": secret }))?;
    } else {
        writeln!(out, "API key {id} (shown once, store it now):\n\n    {secret}\n")?;
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
            print_new_key(r.key.as_ref(), &r.secret, json, out)?;
        }
        KeyCommand::Get { id } => {
            let k = client.get(GetKeyRequest { id }).await.map_err(rpc_error)?.into_inner();
            if json {
                writeln!(out, "{}", key_json(&k))?;
            } else {
                print_keys(&[k], out)?;
            }
        }
        KeyCommand::List { user, revoked, paging } => {
            let user = user.unwrap_or_default();
            let (keys, next) = pages(&paging, |page_token| {
                let req = ListKeysRequest {
                    user: user.clone(),
                    include_revoked: revoked,
                    page_size: paging.page_size,
                    page_token,
                };
                let mut client = client.clone();
                async move { client.list(req).await.map(|r| r.into_inner()).map(|r| (r.keys, r.next_page_token)) }
            })
            .await?;
            if json {
                let keys: Vec<_> = keys.iter().map(key_json).collect();
                writeln!(out, "{}", json!({ "keys": keys, "next_page_token": next }))?;
            } else {
                print_keys(&keys, out)?;
                print_next(&next, out)?;
            }
        }
        KeyCommand::Revoke { id, wait } => {
            let req = RevokeKeyRequest { id, wait_all: wait == Some(Wait::All) };
            let r = client.revoke(req).await.map_err(rpc_error)?.into_inner();
            print_revoked(&r, "key", json, out)?;
        }
        KeyCommand::Rotate { id, grace } => {
            let req = RotateKeyRequest { id, grace_seconds: grace.map_or(0, |d| d.as_secs().max(1)) };
            let r = client.rotate(req).await.map_err(rpc_error)?.into_inner();
            let old = r.old_key.unwrap_or_default();
            if json {
                let id = r.key.as_ref().map(|k| k.id.clone()).unwrap_or_default();
                writeln!(out, "{}", json!({ "id": id, "key": r.secret, "old_key": key_json(&old) }))?;
            } else {
                print_new_key(r.key.as_ref(), &r.secret, false, out)?;
                if old.revoked_at != 0 {
                    writeln!(out, "old key {} revoked", old.id)?;
                } else {
                    writeln!(out, "old key {} keeps working until {}", old.id, when(old.expires_at))?;
                }
            }
        }
    }
    Ok(())
}

fn print_keys(keys: &[ApiKey], out: &mut impl Write) -> anyhow::Result<()> {
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
    Ok(())
}

fn print_sessions(sessions: &[Session], out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(out, "{:<32} {:<20} {:<20} {:<20} {:<16} USER AGENT", "ID", "CREATED", "LAST SEEN", "EXPIRES", "IP")?;
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
    Ok(())
}

async fn session(
    mut client: SessionServiceClient<Authed>,
    cmd: SessionCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let wait_all = |w: Option<Wait>| w == Some(Wait::All);
    let r = match cmd {
        SessionCommand::List { user, paging } => {
            let (sessions, next) = pages(&paging, |page_token| {
                let req = ListSessionsRequest { user: user.clone(), page_size: paging.page_size, page_token };
                let mut client = client.clone();
                async move { client.list(req).await.map(|r| r.into_inner()).map(|r| (r.sessions, r.next_page_token)) }
            })
            .await?;
            if json {
                let sessions: Vec<_> = sessions.iter().map(session_json).collect();
                writeln!(out, "{}", json!({ "sessions": sessions, "next_page_token": next }))?;
            } else {
                print_sessions(&sessions, out)?;
                print_next(&next, out)?;
            }
            return Ok(());
        }
        SessionCommand::Get { id } => {
            let s = client.get(GetSessionRequest { id }).await.map_err(rpc_error)?.into_inner();
            if json {
                writeln!(out, "{}", session_json(&s))?;
            } else {
                print_sessions(&[s], out)?;
            }
            return Ok(());
        }
        SessionCommand::Revoke { id, wait } => {
            client.revoke(RevokeSessionRequest { id, wait_all: wait_all(wait) }).await
        }
        SessionCommand::RevokeAll { user, wait } => {
            client.revoke_all(RevokeUserSessionsRequest { user, wait_all: wait_all(wait) }).await
        }
        SessionCommand::RevokeEverything { yes, wait } => {
            anyhow::ensure!(yes, "this signs out every user of the cluster: confirm with --yes");
            client.revoke_everything(RevokeEverySessionRequest { confirm: true, wait_all: wait_all(wait) }).await
        }
    };
    print_revoked(&r.map_err(rpc_error)?.into_inner(), "session(s)", json, out)
}

fn role_json(r: &Role) -> serde_json::Value {
    json!({
        "name": r.name,
        "permissions": r.permissions,
        "description": r.description,
        "built_in": r.built_in,
        "assignable_by": r.assignable_by,
    })
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
        RoleCommand::Create { name, permissions, description, assignable_by } => client
            .create(PutRoleRequest { name, permissions, description, assignable_by })
            .await
            .map_err(rpc_error)?
            .into_inner(),
        RoleCommand::Update { name, permissions, description, assignable_by } => client
            .update(PutRoleRequest { name, permissions, description, assignable_by })
            .await
            .map_err(rpc_error)?
            .into_inner(),
        RoleCommand::Delete { name } => {
            client.delete(DeleteRoleRequest { name: name.clone() }).await.map_err(rpc_error)?;
            if json {
                writeln!(out, "{}", json!({ "deleted": name }))?;
            } else {
                writeln!(out, "deleted role {name}")?;
            }
            return Ok(());
        }
        RoleCommand::Assign { role, user } => {
            let u = client.assign(RoleAssignment { user, role }).await.map_err(rpc_error)?.into_inner();
            return print_user(&u, "updated", json, out);
        }
        RoleCommand::Unassign { role, user } => {
            let u = client.unassign(RoleAssignment { user, role }).await.map_err(rpc_error)?.into_inner();
            return print_user(&u, "updated", json, out);
        }
    };
    if json {
        writeln!(out, "{}", role_json(&written))?;
    } else {
        writeln!(out, "role {}: {}", written.name, written.permissions.join(", "))?;
    }
    Ok(())
}

/// The snake_case name of a command's payload, e.g. `create_api_key`.
fn payload_name(cmd: &gatehouse_proto::events::Command) -> String {
    serde_json::to_value(&cmd.payload)
        .ok()
        .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()))
        .unwrap_or_else(|| "none".into())
}

async fn watch(
    mut client: EventServiceClient<Authed>,
    from: u64,
    limit: Option<u64>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut stream = client.watch(WatchRequest { from_index: from }).await.map_err(rpc_error)?.into_inner();
    if !json {
        writeln!(out, "{:<10} {:<6} {:<24} {:<6} DETAIL", "INDEX", "TERM", "WHAT", "NODE")?;
    }
    let mut seen = 0;
    while limit.is_none_or(|l| seen < l) {
        let Some(event) = stream.message().await.map_err(rpc_error)? else { break };
        seen += 1;
        match &event.kind {
            Some(watch_event::Kind::Command(c)) if json => {
                let body = serde_json::to_value(&c.payload)?;
                writeln!(
                    out,
                    "{}",
                    json!({ "index": event.index, "term": event.term, "position": event.position,
                            "proposed_at": c.proposed_at, "origin_node": c.origin_node, "request_id": c.request_id,
                            "command": body })
                )?;
            }
            Some(watch_event::Kind::Command(c)) => {
                let detail = serde_json::to_value(&c.payload)?
                    .as_object()
                    .and_then(|o| o.values().next().cloned())
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{:<10} {:<6} {:<24} {:<6} {detail}",
                    event.index,
                    event.term,
                    payload_name(c),
                    c.origin_node
                )?;
            }
            Some(watch_event::Kind::Membership(m)) if json => {
                writeln!(
                    out,
                    "{}",
                    json!({ "index": event.index, "term": event.term, "position": event.position,
                            "membership": { "voters": m.voters, "learners": m.learners } })
                )?;
            }
            Some(watch_event::Kind::Membership(m)) => {
                let detail = format!("voters {:?} learners {:?}", m.voters, m.learners);
                writeln!(out, "{:<10} {:<6} {:<24} {:<6} {detail}", event.index, event.term, "membership", "-")?;
            }
            None => {}
        }
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        // Catches conflicting or dangling argument references in every subcommand.
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_cover_every_admin_command() {
        let mut script = Vec::new();
        completions(clap_complete::Shell::Bash, &mut script);
        let script = String::from_utf8(script).unwrap();
        for cmd in ["transfer-leader", "revoke-everything", "set-password", "rotate", "unassign", "watch"] {
            assert!(script.contains(cmd), "{cmd} missing from the bash completions");
        }
    }

    #[test]
    fn passwords_never_come_from_argv() {
        for args in [
            &["gatehouse", "admin", "user", "set-password", "ann", "--password", "hunter2hunter2"][..],
            &["gatehouse", "admin", "user", "create", "ann", "--email", "a@b.c", "--password", "hunter2hunter2"],
            &[
                "gatehouse",
                "admin",
                "user",
                "create",
                "ann",
                "--email",
                "a@b.c",
                "--password-stdin",
                "--password-file",
                "f",
            ],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
