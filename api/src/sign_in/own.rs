//! What a signed-in person changes in their own account from the pages:
//! API keys (shown once, revoked) and the password. Checked and written
//! on a voter ([`super::SignIn`] sends a front's on), each audited.
//!
//! Re-authentication: a key outlives the session it was made from, so it
//! is made only from a session begun (with a password or a mailed link)
//! within the re-authentication window (`[pages] reauth_secs`); an older
//! one must sign in again first. A stolen cookie therefore cannot become a
//! key. A password change asks for the current password itself (checked
//! as a login: argon2id, lockout, limits), ends every session of the user
//! (the log's `SetPassword` does), and opens a new one for this browser.

use std::net::IpAddr;
use std::time::Duration;

use gatehouse_domain::{keys, users, Payload};
use gatehouse_proto::events::{CreateApiKey, RevokeApiKey, SetPassword};

use super::check::{self, Attempt, Opened};
use crate::audit::{self, Actor};
use crate::http::front::Front;
use crate::identity::{Principal, Via};
use crate::{mint, ApiError};
use gatehouse_cluster::clock::now_ms;

/// What an older session is told when it tries a sensitive change.
pub const SIGN_IN_AGAIN: &str = "sign in again to do this: your sign-in is older than the re-authentication window";

/// The longest key name.
pub const MAX_KEY_NAME: usize = 64;
/// The longest lifetime of a key made from the pages.
pub const MAX_KEY_DAYS: u64 = 366;
/// Keys one person may hold: the pages make no more beyond it.
pub const MAX_OWN_KEYS: usize = 20;

/// A key a person asks for.
#[derive(Debug, Clone)]
pub struct OwnKey {
    pub name: String,
    /// One of the person's roles, or `None` for all of them.
    pub role: Option<String>,
    /// Days until it expires, 1 to [`MAX_KEY_DAYS`].
    pub days: u64,
}

/// A key just made: its id, and the key itself, shown once.
pub struct NewOwnKey {
    pub key_id: String,
    pub key: String,
    pub log_index: u64,
}

impl std::fmt::Debug for NewOwnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewOwnKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// Whether `p`'s session began within `window` (a key is made only then).
pub fn recent(front: &Front, p: &Principal, window: Duration) -> bool {
    let Via::Session { session_id } = &p.via else { return false };
    let began = front.node.view().read().session(session_id).map_or(0, |s| s.created_at);
    now_ms().saturating_sub(began) <= window.as_millis() as u64
}

fn window(front: &Front) -> Duration {
    front.config.pages.as_deref().map_or(Duration::from_secs(300), |p| p.reauth)
}

/// Makes a key for `p` (see the module docs).
pub async fn create_key(front: &Front, p: &Principal, k: OwnKey, ip: IpAddr) -> Result<NewOwnKey, ApiError> {
    if !recent(front, p, window(front)) {
        return Err(ApiError::PermissionDenied(SIGN_IN_AGAIN.into()));
    }
    let name = k.name.trim();
    if name.is_empty() || name.chars().count() > MAX_KEY_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::InvalidArgument("a key's name is 1 to 64 printable characters".into()));
    }
    if !(1..=MAX_KEY_DAYS).contains(&k.days) {
        return Err(ApiError::InvalidArgument("a key lives 1 to 366 days".into()));
    }
    let node = &front.node;
    let roles = {
        let state = node.view().read();
        let user = state.user(&p.user_id).ok_or(ApiError::Unauthenticated)?;
        if state.api_keys().filter(|key| key.user_id == p.user_id && key.revoked_at == 0).count() >= MAX_OWN_KEYS {
            return Err(ApiError::FailedPrecondition(format!("you hold {MAX_OWN_KEYS} keys: revoke one first")));
        }
        match &k.role {
            None => user.roles.clone(),
            // Only a role the person holds: a key never grants more.
            Some(role) if user.roles.contains(role) => vec![role.clone()],
            Some(_) => return Err(ApiError::InvalidArgument("that is not one of your roles".into())),
        }
    };
    let key = mint::new_api_key();
    let cmd = node.command(Payload::CreateApiKey(CreateApiKey {
        key_id: key.key_id.clone(),
        user_id: p.user_id.clone(),
        name: name.to_string(),
        secret_sha256: key.secret_sha256.to_vec(),
        expires_at: now_ms() + k.days * 86_400_000,
        roles,
        roles_exact: true,
    }));
    let result = audit::write(node, &Actor::of(p, ip.to_string()), cmd).await?;
    Ok(NewOwnKey { key_id: key.key_id, key: key.key, log_index: result.log_index })
}

/// Revokes one of `p`'s own keys (another person's is "not found").
pub async fn revoke_key(front: &Front, p: &Principal, key_id: &str, ip: IpAddr) -> Result<u64, ApiError> {
    keys::validate_key_id(key_id).map_err(|_| ApiError::NotFound("no such key".into()))?;
    let node = &front.node;
    let mine = node.view().read().api_key(key_id).is_some_and(|k| k.user_id == p.user_id && k.revoked_at == 0);
    if !mine {
        return Err(ApiError::NotFound("no such key".into()));
    }
    let cmd = node.command(Payload::RevokeApiKey(RevokeApiKey { key_id: key_id.to_string() }));
    Ok(audit::write(node, &Actor::of(p, ip.to_string()), cmd).await?.log_index)
}

/// Changes `p`'s password: the current one checked as a login, the new
/// one under the password policy; every session ends, and the one
/// returned is this browser's new session.
pub async fn change_password(
    front: &Front,
    p: &Principal,
    current: String,
    new: String,
    ip: IpAddr,
    user_agent: String,
) -> Result<Opened, ApiError> {
    crate::passwords::check_policy(&new)?;
    let node = &front.node;
    let username = p.username.clone();
    let attempt = |password: String| Attempt {
        username: username.clone(),
        password,
        client_ip: ip,
        user_agent: user_agent.clone(),
    };
    // The current password, exactly as a login checks it (lockout included).
    check::login(node, &front.passwords, &front.config, attempt(current)).await?;
    let hash = front.passwords.hash(new.clone()).await?;
    users::validate_password_hash(&hash).map_err(ApiError::from)?;
    let cmd = node.command(Payload::SetPassword(SetPassword { user_id: p.user_id.clone(), password_hash: hash }));
    audit::write(node, &Actor::of(p, ip.to_string()), cmd).await?;
    check::login(node, &front.passwords, &front.config, attempt(new)).await
}
