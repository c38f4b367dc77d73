//! `gatehouse admin session …`.

use clap::Subcommand;
use gatehouse_proto::admin::session_service_client::SessionServiceClient;
use gatehouse_proto::admin::*;
use serde_json::json;
use std::io::Write;

use super::args::*;
use super::client::*;
use super::output::*;

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

pub(super) fn session_json(s: &Session) -> serde_json::Value {
    json!({
        "id": s.id, "user_id": s.user_id, "username": s.username, "created_at": s.created_at, "expires_at": s.expires_at,
        "last_seen": s.last_seen, "client_ip": s.client_ip, "user_agent": s.user_agent,
    })
}

pub(super) async fn session(
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

pub(super) fn print_sessions(sessions: &[Session], out: &mut impl Write) -> anyhow::Result<()> {
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
