//! The first admin: a user `admin` with the `admin` role and one API key,
//! created once by the node that initialised the cluster. The key is shown
//! once (dev mode prints it; a configured cluster writes it to a 0600 file)
//! and never logged; only its hash enters the log.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use gatehouse_api::credentials::{new_api_key, new_id};
use gatehouse_api::Cluster;
use gatehouse_domain::roles::ADMIN;
use gatehouse_domain::{ApplyError, Payload};
use gatehouse_proto::events::{CreateApiKey, CreateUser};

/// Creates the first admin if the cluster has no user yet. Returns the key.
pub async fn first_admin(cluster: &Cluster, key_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let mut metrics = cluster.raft().metrics();
    tokio::time::timeout(Duration::from_secs(30), metrics.wait_for(|m| m.current_leader.is_some()))
        .await
        .context("no leader elected within 30 s")??;
    if cluster.view().read().users().next().is_some() {
        return Ok(None);
    }
    if let Some(path) = key_file {
        if path.exists() {
            anyhow::bail!("bootstrap key file {} already exists; refusing to overwrite it", path.display());
        }
    }
    let user_id = new_id();
    let key = new_api_key();
    let user = cluster.command(Payload::CreateUser(CreateUser {
        user_id: user_id.clone(),
        username: "admin".into(),
        email: "admin@localhost".into(),
        password_hash: String::new(),
        roles: vec![ADMIN.into()],
    }));
    let api_key = cluster.command(Payload::CreateApiKey(CreateApiKey {
        key_id: key.key_id.clone(),
        user_id,
        name: "bootstrap".into(),
        secret_sha256: key.secret_sha256.to_vec(),
        expires_at: 0,
        roles: vec![ADMIN.into()],
        roles_exact: true,
    }));
    let applied = cluster.propose(vec![user, api_key]).await?;
    for r in &applied.results {
        if let Err(e) = gatehouse_api::ApiError::check(r) {
            // Another node bootstrapped first: nothing to show.
            if matches!(e, gatehouse_api::ApiError::AlreadyExists(_)) {
                return Ok(None);
            }
            return Err(anyhow::anyhow!(ApplyError::FailedPrecondition(e.to_string())));
        }
    }
    tracing::info!(key_id = %key.key_id, "bootstrap admin created");
    if let Some(path) = key_file {
        write_private(path, &key.key)?;
        tracing::info!(path = %path.display(), "bootstrap admin key written");
    }
    Ok(Some(key.key))
}

/// Writes a secret to a new file readable only by its owner.
pub fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}
