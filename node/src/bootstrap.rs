//! The first admin: a user `admin` with the `admin` role and one API key,
//! created once by the node that initialised the cluster. The key is shown
//! once (dev mode prints it; a configured cluster writes it to a 0600 file)
//! and never logged; only its hash enters the log.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use gatehouse_api::mint::{new_api_key, NewKey};
use gatehouse_cluster::ids::new_id;
use gatehouse_cluster::Cluster;
use gatehouse_domain::roles::ADMIN;
use gatehouse_domain::{ApplyError, Payload};
use gatehouse_proto::events::{CreateApiKey, CreateUser};

/// Creates the first admin if the cluster has no user yet. Returns the key.
///
/// With a key file, the key reaches the disk before the admin is proposed
/// (a temporary file in the same directory, synced, then linked into place
/// so an existing file is never overwritten), so a crash can never leave an
/// admin whose only key nobody holds. After a crash between the two, the
/// next start finds the file and no user, and proposes the same key again.
pub async fn first_admin(cluster: &Cluster, key_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let mut metrics = cluster.raft().metrics();
    tokio::time::timeout(Duration::from_secs(30), metrics.wait_for(|m| m.current_leader.is_some()))
        .await
        .context("no leader elected within 30 s")??;
    // "No user yet" must be the cluster's answer, not a lagging view's.
    if !cluster.catch_up(Duration::from_secs(2)).await {
        anyhow::bail!("could not confirm with the leader that the cluster has no user yet; start again");
    }
    if cluster.view().read().users().next().is_some() {
        return Ok(None);
    }
    let (key, written_here) = match key_file {
        Some(path) if path.symlink_metadata().is_ok() => {
            let key = adopt(path)?;
            tracing::info!(key_id = %key.key_id, "bootstrap key file found and no user yet: proposing its key");
            (key, false)
        }
        Some(path) => {
            let key = new_api_key();
            write_private_atomic(path, &key.key)?;
            (key, true)
        }
        None => (new_api_key(), false),
    };
    let user_id = new_id();
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
            // Another node bootstrapped first: nothing to show. The file
            // goes only if this run wrote it and its key does not exist (an
            // earlier run's key may be the one that was committed).
            if matches!(e, gatehouse_api::ApiError::AlreadyExists(_)) {
                let exists = cluster.view().read().api_key(&key.key_id).is_some();
                if let (Some(path), true, false) = (key_file, written_here, exists) {
                    let _ = std::fs::remove_file(path);
                }
                return Ok(None);
            }
            return Err(anyhow::anyhow!(ApplyError::FailedPrecondition(e.to_string())));
        }
    }
    tracing::info!(key_id = %key.key_id, "bootstrap admin created");
    if let Some(path) = key_file {
        tracing::info!(path = %path.display(), "bootstrap admin key is in its file");
    }
    Ok(Some(key.key))
}

/// An existing key file, proposed again after a crash: only a regular file
/// (not a symlink) of this user that nobody else can read, so a key planted
/// in a shared directory never becomes the admin key.
fn adopt(path: &Path) -> anyhow::Result<NewKey> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = path.symlink_metadata().with_context(|| format!("reading {}", path.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "bootstrap key file {} exists but is not a private (0600) regular file of this user; refusing to use it",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    NewKey::parse(text.trim()).with_context(|| {
        format!("bootstrap key file {} exists and is not a Gatehouse key; refusing to replace it", path.display())
    })
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

/// [`write_private`], all or nothing: a reader (or a restart after a crash)
/// sees no file or the whole key, never a torn one. Refuses an existing file.
pub fn write_private_atomic(path: &Path, content: &str) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().context("the key file needs a file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", new_id()));
    write_private(&tmp, content)?;
    // A hard link fails if `path` exists: the old key is never replaced.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked.with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    // The directory entry itself reaches the disk before anyone relies on it.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_written_whole_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.key");
        write_private_atomic(&path, "gk_first").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "gk_first\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(write_private_atomic(&path, "gk_second").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "gk_first\n");
        // No temporary file is left behind either way.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn only_a_private_regular_key_file_is_adopted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = new_api_key();
        let own = dir.path().join("own.key");
        write_private_atomic(&own, &key.key).unwrap();
        assert_eq!(adopt(&own).unwrap().key_id, key.key_id);
        let open = dir.path().join("open.key");
        std::fs::write(&open, &key.key).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(adopt(&open).is_err(), "readable by others");
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&own, &link).unwrap();
        assert!(adopt(&link).is_err(), "a symlink");
        let junk = dir.path().join("junk.key");
        write_private_atomic(&junk, "not a key").unwrap();
        assert!(adopt(&junk).is_err());
    }
}
