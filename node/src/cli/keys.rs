//! `gatehouse admin key …`.

use clap::Subcommand;
use gatehouse_proto::admin::key_service_client::KeyServiceClient;
use gatehouse_proto::admin::*;
use serde_json::json;
use std::io::Write;

use super::args::*;
use super::client::*;
use super::output::*;

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

pub(super) fn key_json(k: &ApiKey) -> serde_json::Value {
    json!({
        "id": k.id, "user_id": k.user_id, "username": k.username, "name": k.name, "roles": k.roles,
        "created_at": k.created_at, "expires_at": k.expires_at, "revoked_at": k.revoked_at, "last_used": k.last_used,
    })
}

pub(super) fn print_new_key(
    key: Option<&ApiKey>,
    secret: &str,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let id = key.map(|k| k.id.clone()).unwrap_or_default();
    if json {
        writeln!(out, "{}", json!({ "id": id, "key": secret }))?;
    } else {
        writeln!(out, "API key {id} (shown once, store it now):\n\n    {secret}\n")?;
    }
    Ok(())
}

pub(super) async fn key(
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

pub(super) fn print_keys(keys: &[ApiKey], out: &mut impl Write) -> anyhow::Result<()> {
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
