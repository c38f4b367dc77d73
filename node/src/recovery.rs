//! Recovering admin access when every admin key is lost.
//!
//! Whoever can write a node's data directory already holds that replica, so
//! they may ask for a new admin key, offline:
//!
//! ```text
//!   gatehouse recover-admin --data-dir /var/lib/gatehouse   (node stopped)
//!     → prints a new API key once
//!     → writes <data_dir>/admin-recovery.json (0600): the user name, the
//!       key id and the SHA-256 of its secret, never the secret
//!   gatehouse serve …                                        (node started)
//!     → once a leader is known, proposes through the log: the user (created,
//!       or given the admin role) and the key; audits `cluster.admin_recovered`;
//!       removes the file
//! ```
//!
//! Nothing is written to the store behind the log's back: the replica stays
//! identical to the others, and every node learns of the recovery from the
//! log and the audit chain.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use gatehouse_api::mint::new_api_key;
use gatehouse_api::{ApiError, Node};
use gatehouse_cluster::ids::new_id;
use gatehouse_cluster::periodic::Shutdown;
use gatehouse_domain::roles::ADMIN;
use gatehouse_domain::Payload;
use gatehouse_proto::events::{AssignRole, CreateApiKey, CreateUser};
use serde::{Deserialize, Serialize};

/// How long an attempt waits for a leader, and the pause between attempts.
const LEADER_WAIT: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(2);

/// The request file's name in the data directory.
pub const FILE: &str = "admin-recovery.json";

/// What the file holds: enough to create the key, nothing that is one.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Request {
    version: u8,
    username: String,
    key_id: String,
    /// Hex SHA-256 of the key's secret.
    secret_sha256: String,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// `gatehouse recover-admin`: writes the request into a stopped node's data
/// directory and returns the new key (to show once).
pub fn request(data_dir: &Path, username: &str) -> anyhow::Result<String> {
    gatehouse_domain::users::validate_username(username).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !data_dir.join("db").is_dir() {
        bail!("{} holds no Gatehouse store (no db/ inside)", data_dir.display());
    }
    // Run as the node's user: files this writes (the store's own, the
    // request) must stay readable by the node.
    {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(data_dir)?.uid();
        // SAFETY: geteuid has no preconditions and cannot fail.
        if owner != unsafe { libc::geteuid() } {
            bail!("run this as the user that owns {} (the node's user)", data_dir.display());
        }
    }
    // The store's lock: held while the node runs.
    let (log_store, _) = gatehouse_storage::open(data_dir)
        .with_context(|| format!("opening the store in {}: stop the node first", data_dir.display()))?;
    drop(log_store);
    let key = new_api_key();
    let req = Request {
        version: 1,
        username: username.to_string(),
        key_id: key.key_id.clone(),
        secret_sha256: hex::encode(key.secret_sha256),
    };
    let text = serde_json::to_string(&req)?;
    crate::bootstrap::write_private_atomic(&path(data_dir), &text)
        .context("an admin recovery is already pending in this data directory")?;
    Ok(key.key)
}

/// On start: if a recovery request waits in `data_dir`, carries it out in
/// the background once a leader is known (retrying until it is done or the
/// node stops).
pub fn resume(node: &Node, data_dir: &Path, mut stop: Shutdown) {
    let file = path(data_dir);
    if !file.exists() {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        loop {
            match carry_out(&node, &file).await {
                Ok(()) => return,
                Err(Failed::Refused(e)) => {
                    // The log refused it (a disabled user, say): retrying
                    // changes nothing. The request stays for the operator.
                    tracing::error!(error = %e, file = %file.display(), "admin recovery refused; fix and restart");
                    return;
                }
                Err(Failed::NotYet(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "admin recovery not done yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = stop.wait() => return,
                    }
                }
            }
        }
    });
}

/// Why a recovery was not carried out.
enum Failed {
    /// No leader, no quorum: later.
    NotYet(anyhow::Error),
    /// The request or the log refused it: not by retrying.
    Refused(String),
}

impl From<anyhow::Error> for Failed {
    fn from(e: anyhow::Error) -> Self {
        Failed::NotYet(e)
    }
}

async fn carry_out(node: &Node, file: &Path) -> Result<(), Failed> {
    let text = std::fs::read_to_string(file).context("reading the recovery request")?;
    let Ok(req) = serde_json::from_str::<Request>(&text) else {
        return Err(Failed::Refused("the recovery request is malformed".into()));
    };
    let secret_sha256 = hex::decode(&req.secret_sha256).ok().filter(|h| h.len() == 32);
    let (1, Some(secret_sha256)) = (req.version, secret_sha256) else {
        return Err(Failed::Refused("the recovery request is malformed".into()));
    };
    // At start an election is usually under way: give it time before
    // counting a failed attempt.
    let elected = async {
        while node.leader().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(LEADER_WAIT, elected).await.context("no leader yet")?;
    if !node.catch_up(Duration::from_secs(2)).await {
        return Err(Failed::NotYet(anyhow::anyhow!("not caught up with the leader yet")));
    }
    let existing = node.view().read().user_by_name(&req.username).cloned();
    let mut commands = Vec::new();
    let user_id = match &existing {
        Some(u) => {
            if !u.roles.iter().any(|r| r == ADMIN) {
                commands.push(
                    node.command(Payload::AssignRole(AssignRole { user_id: u.user_id.clone(), role: ADMIN.into() })),
                );
            }
            u.user_id.clone()
        }
        None => {
            let user_id = new_id();
            commands.push(node.command(Payload::CreateUser(CreateUser {
                user_id: user_id.clone(),
                username: req.username.clone(),
                email: format!("{}@localhost", req.username),
                password_hash: String::new(),
                roles: vec![ADMIN.into()],
            })));
            user_id
        }
    };
    if node.view().read().api_key(&req.key_id).is_none() {
        commands.push(node.command(Payload::CreateApiKey(CreateApiKey {
            key_id: req.key_id.clone(),
            user_id: user_id.clone(),
            name: "admin-recovery".into(),
            secret_sha256,
            expires_at: 0,
            roles: vec![ADMIN.into()],
            roles_exact: true,
        })));
    }
    if !commands.is_empty() {
        let applied = node.propose(commands).await.map_err(|e| Failed::NotYet(anyhow::anyhow!("{e}")))?;
        for r in &applied.results {
            ApiError::check(r).map_err(|e| Failed::Refused(e.to_string()))?;
        }
    }
    let node_id = node.id();
    let actor = gatehouse_api::audit::Actor::default();
    let mut event = gatehouse_api::audit::event("cluster.admin_recovered", "ok", &actor, format!("user:{user_id}"));
    event.node_id = node_id;
    event.detail = format!("key_id={} node={node_id} (offline recovery request from the data directory)", req.key_id);
    node.audit(event);
    std::fs::remove_file(file).map_err(|e| Failed::Refused(format!("removing the carried-out request: {e}")))?;
    tracing::warn!(user_id = %user_id, key_id = %req.key_id, "admin access recovered from an offline request");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_needs_a_store_and_holds_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        assert!(request(dir.path(), "root").unwrap_err().to_string().contains("no db/"));
        gatehouse_storage::open(dir.path()).unwrap();
        assert!(request(dir.path(), "Bad Name").is_err());
        let key = request(dir.path(), "rescue").unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        let secret = gatehouse_domain::keys::parse_key(&key).unwrap().1;
        assert!(!text.contains(secret), "the secret is not in the file");
        let req: Request = serde_json::from_str(&text).unwrap();
        assert_eq!(req.secret_sha256, hex::encode(gatehouse_domain::keys::secret_hash(secret)));
        // One pending request at a time.
        assert!(request(dir.path(), "rescue").is_err());
    }
}
