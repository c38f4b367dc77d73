//! `gatehouse admin user …`.

use anyhow::Context;
use clap::Subcommand;
use gatehouse_proto::admin::user_service_client::UserServiceClient;
use gatehouse_proto::admin::*;
use serde_json::json;
use std::io::Write;

use super::args::*;
use super::client::*;
use super::output::*;

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
    /// Remove every second factor of a user (a lost authenticator): they
    /// sign in with the first factor alone until they enroll again.
    ResetFactors {
        user: String,
        /// Confirm the reset.
        #[arg(long)]
        yes: bool,
    },
    /// Issue a one-time enrollment ticket (shown once): a user whose role
    /// requires a second factor and who has none enrolls with it.
    EnrollTicket {
        user: String,
        /// Hours it stays valid (1 to 168).
        #[arg(long, default_value_t = 72)]
        hours: u32,
    },
    /// Enable a disabled user.
    Enable {
        user: String,
        #[arg(long, value_enum)]
        wait: Option<Wait>,
    },
}

pub(super) fn user_json(u: &User) -> serde_json::Value {
    json!({
        "id": u.id, "username": u.username, "email": u.email, "roles": u.roles, "status": u.status,
        "created_at": u.created_at, "updated_at": u.updated_at, "locked_until": u.locked_until,
        "second_factors": u.second_factors, "recovery_codes_left": u.recovery_codes_left,
    })
}

pub(super) fn print_user(u: &User, verb: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", user_json(u))?;
    } else if verb.is_empty() {
        writeln!(out, "username:  {}\nid:        {}\nemail:     {}", u.username, u.id, u.email)?;
        writeln!(out, "roles:     {}\nstatus:    {}", u.roles.join(", "), u.status)?;
        writeln!(out, "created:   {}\nupdated:   {}", when(u.created_at), when(u.updated_at))?;
        if u.locked_until != 0 {
            writeln!(out, "locked:    until {}", when(u.locked_until))?;
        }
        if u.second_factors.is_empty() {
            writeln!(out, "mfa:       none")?;
        } else {
            let left = u.recovery_codes_left;
            writeln!(out, "mfa:       {} ({left} recovery code(s) left)", u.second_factors.join(", "))?;
        }
    } else {
        writeln!(out, "{verb} user {} ({}): roles [{}], {}", u.username, u.id, u.roles.join(", "), u.status)?;
    }
    Ok(())
}

pub(super) async fn user(
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
        UserCommand::ResetFactors { user, yes } => {
            anyhow::ensure!(yes, "resetting removes the user's authenticator and recovery codes: add --yes to confirm");
            let u = client.reset_factors(ResetFactorsRequest { user }).await.map_err(rpc_error)?.into_inner();
            print_user(&u, "reset the second factors of", json, out)?;
        }
        UserCommand::EnrollTicket { user, hours } => {
            let req = IssueEnrollTicketRequest { user, valid_hours: hours };
            let t = client.issue_enroll_ticket(req).await.map_err(rpc_error)?.into_inner();
            if json {
                writeln!(out, "{}", json!({ "user_id": t.user_id, "ticket": t.ticket, "expires_at": t.expires_at }))?;
            } else {
                writeln!(out, "enrollment ticket for {} (shown once, valid until {}):", t.user_id, when(t.expires_at))?;
                writeln!(out, "{}", t.ticket)?;
            }
        }
        UserCommand::Enable { user, wait } => {
            let req = SetUserStatusRequest { user, status: "active".into(), wait_all: wait == Some(Wait::All) };
            let u = client.set_status(req).await.map_err(rpc_error)?.into_inner();
            print_user(&u, "enabled", json, out)?;
        }
    }
    Ok(())
}
