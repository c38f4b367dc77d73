//! The command line: `gatehouse serve …`, `gatehouse front …`,
//! `gatehouse front-secret …`, `gatehouse tls …` (`tls.rs`) and
//! `gatehouse admin …`, one file
//! per admin service (as the API has one service per resource), the
//! connection, shared arguments and output beside them.
//!
//! Admin commands print tables for people and, with `--json`, one JSON
//! document for scripts. Errors go to stderr with a non-zero exit code.

mod args;
mod audit;
mod client;
mod cluster;
mod events;
mod jwt;
mod keys;
mod output;
mod roles;
mod roll;
mod sessions;
pub mod tls;
mod users;

use clap::{Args, Parser, Subcommand};
use gatehouse_proto::admin::cluster_service_client::ClusterServiceClient;
use gatehouse_proto::admin::event_service_client::EventServiceClient;
use gatehouse_proto::admin::key_service_client::KeyServiceClient;
use gatehouse_proto::admin::role_service_client::RoleServiceClient;
use gatehouse_proto::admin::session_service_client::SessionServiceClient;
use gatehouse_proto::admin::user_service_client::UserServiceClient;
use std::io::Write;
use std::path::PathBuf;

use client::{connect, Connection};
use cluster::*;
use events::*;
use keys::*;
use roles::*;
use sessions::*;
use users::*;

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
    /// Run a stateless front: verification and sign-in over a copy of the
    /// view, following the voters' committed log (docs/fronts.md).
    Front(FrontArgs),
    /// Make a front's secret: written to a new file (mode 0600), and the
    /// line for the voters' fronts file printed.
    FrontSecret(FrontSecretArgs),
    /// Operate a cluster through its admin API.
    Admin(Box<AdminArgs>),
    /// Every admin key is lost: on a stopped node, ask for a new one. The
    /// key is printed once; the node carries the request out through the
    /// log (audited) when it next starts and has a leader.
    RecoverAdmin(RecoverAdminArgs),
    /// A quorum is lost for good: on a stopped survivor, make it the only
    /// voter of a new epoch of its cluster, with everything it holds
    /// (docs/operations.md). Refused while a quorum of the others answers.
    Recover(RecoverArgs),
    /// Restore a backup (`admin cluster backup`) into a new data directory:
    /// a new one-voter cluster with a new cluster id (docs/operations.md).
    Restore(RestoreArgs),
    /// Make a key to seal backups with (`admin cluster backup
    /// --encrypt-key-file`): 32 random bytes as hex, in a new 0600 file.
    BackupKey(BackupKeyArgs),
    /// Certificates for a first cluster: a CA, and each node's certificate.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
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
pub struct FrontArgs {
    /// TOML configuration file with a [front] section; GATEHOUSE_* variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct FrontSecretArgs {
    /// The front's id (its `node_id`): positive, and no voter's.
    #[arg(long)]
    pub id: u64,
    /// Where to write the secret; the file must not exist yet.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Writes a new front secret to `args.out` and returns the fronts-file line.
pub fn front_secret(args: &FrontSecretArgs) -> anyhow::Result<String> {
    use rand::RngCore;
    anyhow::ensure!(args.id > 0, "front ids are positive");
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let secret = hex::encode(b);
    crate::bootstrap::write_private(&args.out, &secret)?;
    Ok(gatehouse_cluster::fronts::line_for(args.id, &secret))
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// The new node's configuration: its data directory (new or empty),
    /// id and addresses.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The key file a sealed backup was sealed with.
    #[arg(long, value_name = "FILE")]
    pub decrypt_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BackupKeyArgs {
    /// Where to write the key (64 hex digits, mode 0600); must not exist.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Writes a new backup key to `args.out`; returns its id.
pub fn backup_key(args: &BackupKeyArgs) -> anyhow::Result<String> {
    let (key, text) = gatehouse_storage::sealed::BackupKey::generate();
    crate::bootstrap::write_private(&args.out, &text)?;
    Ok(key.id().iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The stopped node's configuration (its data directory, id, cluster
    /// secret and TLS, to ask the other voters first).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Do it: without this flag the checks run and nothing is changed.
    #[arg(long)]
    pub force_new_cluster: bool,
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
    #[command(flatten)]
    pub connection: Connection,
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
    Audit(audit::AuditCommand),
    /// The keys that sign the JWTs apps get (`[jwt]`): list, rotate.
    #[command(subcommand)]
    Jwt(jwt::JwtCommand),
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

/// Runs one admin command, writing its output to `out`.
pub async fn admin(args: AdminArgs, out: &mut impl Write) -> anyhow::Result<()> {
    if let AdminCommand::Cluster(ClusterCommand::Roll { restart, timeout }) = &args.command {
        let roll = roll::Roll { restart: restart.clone(), timeout: std::time::Duration::from_secs(*timeout) };
        return roll::run(&args.connection, &roll, args.json, out).await;
    }
    let channel = connect(&args.connection).await?;
    let json = args.json;
    match args.command {
        AdminCommand::Cluster(cmd) => cluster(ClusterServiceClient::new(channel), cmd, json, out).await,
        AdminCommand::User(cmd) => user(UserServiceClient::new(channel), cmd, json, out).await,
        AdminCommand::Key(cmd) => key(KeyServiceClient::new(channel), cmd, json, out).await,
        AdminCommand::Session(cmd) => session(SessionServiceClient::new(channel), cmd, json, out).await,
        AdminCommand::Role(cmd) => role(RoleServiceClient::new(channel), cmd, json, out).await,
        AdminCommand::Audit(cmd) => {
            audit::run(gatehouse_proto::admin::audit_service_client::AuditServiceClient::new(channel), cmd, json, out)
                .await
        }
        AdminCommand::Jwt(cmd) => {
            jwt::jwt(gatehouse_proto::admin::jwt_service_client::JwtServiceClient::new(channel), cmd, json, out).await
        }
        AdminCommand::Watch { from, limit } => watch(EventServiceClient::new(channel), from, limit, json, out).await,
    }
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
