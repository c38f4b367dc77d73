//! `gatehouse admin jwt …`: the keys that sign downstream JWTs.

use clap::Subcommand;
use gatehouse_proto::admin::jwt_service_client::JwtServiceClient;
use gatehouse_proto::admin::{JwtKey, ListJwtKeysRequest, RotateJwtKeyRequest};
use serde_json::json;
use std::io::Write;

use super::client::*;

#[derive(Debug, Subcommand)]
pub enum JwtCommand {
    /// The published keys: which signs, which is next, which are retiring.
    Keys,
    /// Add a key: published at once, signing after the publish delay; the
    /// key it replaces leaves the JWKS once its tokens have expired.
    Rotate,
}

fn key_json(k: &JwtKey) -> serde_json::Value {
    json!({ "kid": k.kid, "alg": k.alg, "state": k.state, "created_at": k.created_at,
            "current_from": k.current_from, "retire_at": k.retire_at })
}

fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

pub(super) async fn jwt(
    mut client: JwtServiceClient<Authed>,
    cmd: JwtCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let keys = match cmd {
        JwtCommand::Keys => client.list_keys(ListJwtKeysRequest {}).await.map_err(rpc_error)?.into_inner().keys,
        JwtCommand::Rotate => vec![client.rotate(RotateJwtKeyRequest {}).await.map_err(rpc_error)?.into_inner()],
    };
    if json {
        let keys: Vec<_> = keys.iter().map(key_json).collect();
        writeln!(out, "{}", json!({ "keys": keys }))?;
        return Ok(());
    }
    if keys.is_empty() {
        writeln!(out, "no signing key yet")?;
    }
    for k in &keys {
        writeln!(
            out,
            "{}  {:<6}  {:<8}  signs from {}  retires {}",
            k.kid,
            k.alg,
            k.state,
            time(k.current_from),
            time(k.retire_at)
        )?;
    }
    Ok(())
}
