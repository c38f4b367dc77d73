//! What a signed-in person changes in their own account from the pages:
//! API keys (shown once, revoked) and the password. Checked and written
//! on a voter ([`super::SignIn`] sends a front's on), each audited.
//!
//! Re-authentication: a key outlives the session it was made from, so a
//! person with a password gives it again in the form that makes the key
//! (checked as a login: argon2id, lockout, limits); a person without one
//! (who signs in with mailed links) makes keys only from a session begun
//! within the re-authentication window (`[pages] reauth_secs`). A stolen
//! cookie, even a young one seen by a sibling app under a shared cookie
//! domain, therefore cannot become a key. A password change asks for the
//! current password the same way; the new password and this browser's new
//! session go into the log as one entry (`SetPassword` ends every other).

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
#[derive(Clone)]
pub struct OwnKey {
    pub name: String,
    /// One of the person's roles, or `None` for all of them.
    pub role: Option<String>,
    /// Days until it expires, 1 to [`MAX_KEY_DAYS`].
    pub days: u64,
    /// The person's password, given again (empty for a person without one).
    pub password: String,
    /// A code from the person's authenticator, when their last second
    /// factor is older than the re-authentication window.
    pub code: String,
}

impl std::fmt::Debug for OwnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnKey").field("name", &self.name).field("days", &self.days).finish_non_exhaustive()
    }
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

/// Whether the person has a password (a front's view holds a marker for it).
pub fn has_password(front: &Front, p: &Principal) -> bool {
    front.node.view().read().user(&p.user_id).is_some_and(|u| !u.password_hash.is_empty())
}

/// Whether `p`'s session began within `window` (a person without a
/// password makes keys only then).
pub fn recent(front: &Front, p: &Principal, window: Duration) -> bool {
    let Via::Session { session_id } = &p.via else { return false };
    let began = front.node.view().read().session(session_id).map_or(0, |s| s.created_at);
    now_ms().saturating_sub(began) <= window.as_millis() as u64
}

/// The re-authentication window (`[pages] reauth_secs`).
pub fn window(front: &Front) -> Duration {
    front.config.pages.as_deref().map_or(Duration::from_secs(300), |p| p.reauth)
}

/// A sensitive change: only through a session (never an API key).
fn session_only(p: &Principal) -> Result<(), ApiError> {
    match p.via {
        Via::Session { .. } => Ok(()),
        Via::ApiKey { .. } => Err(ApiError::PermissionDenied("this needs a signed-in session, not an API key".into())),
    }
}

/// Checks `password` as a login of `p` would, with the login endpoint's
/// strict limits by `ip` (counted here, on a voter, for a front's too); a
/// wrong one is audited against the session that sent it.
async fn confirm_password(front: &Front, p: &Principal, password: String, ip: IpAddr) -> Result<(), ApiError> {
    front.limits.login_attempt(ip).await?;
    let attempt = Attempt {
        username: p.username.clone(),
        password,
        client_ip: ip,
        user_agent: String::new(),
        second_factor: None,
        factor_later: false,
        device_token: None,
    };
    match check::verify(&front.node, &front.passwords, &front.config, attempt).await {
        Ok(user) if user.user_id == p.user_id => Ok(()),
        Ok(_) => Err(ApiError::InvalidCredentials),
        Err(e) => {
            if e == ApiError::InvalidCredentials {
                let mut ev =
                    audit::event("user.reauth", "denied", &Actor::of(p, ip.to_string()), format!("user:{}", p.user_id));
                ev.detail = "wrong password".into();
                front.node.audit(ev);
                front.limits.login_refused(ip).await?;
            }
            Err(e)
        }
    }
}

/// Re-authentication before a sensitive change (see the module docs):
/// the password again, or for a person without one a recent sign-in.
pub async fn reauth(front: &Front, p: &Principal, password: String, ip: IpAddr) -> Result<(), ApiError> {
    session_only(p)?;
    if has_password(front, p) {
        if password.is_empty() {
            return Err(ApiError::PermissionDenied(SIGN_IN_AGAIN.into()));
        }
        confirm_password(front, p, password, ip).await
    } else if !recent(front, p, window(front)) {
        Err(ApiError::PermissionDenied(SIGN_IN_AGAIN.into()))
    } else {
        Ok(())
    }
}

/// Makes a key for `p` (see the module docs).
pub async fn create_key(front: &Front, p: &Principal, k: OwnKey, ip: IpAddr) -> Result<NewOwnKey, ApiError> {
    reauth(front, p, k.password.clone(), ip).await?;
    // A key outlives the session: a person with a second factor shows a
    // fresh one (a role that requires a factor asks it of every key).
    crate::mfa::check::fresh_factor(front, p, &k.code, window(front), ip).await?;
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
        let now = now_ms();
        let live = |key: &&gatehouse_proto::state::ApiKeyRecord| {
            key.user_id == p.user_id && key.revoked_at == 0 && (key.expires_at == 0 || key.expires_at > now)
        };
        if state.api_keys().filter(live).count() >= MAX_OWN_KEYS {
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
    session_only(p)?;
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
/// one under the password policy; the new password and this browser's new
/// session are one log entry, which ends every other session.
pub async fn change_password(
    front: &Front,
    p: &Principal,
    current: String,
    new: String,
    ip: IpAddr,
    user_agent: String,
) -> Result<Opened, ApiError> {
    session_only(p)?;
    crate::passwords::check_policy(&new)?;
    confirm_password(front, p, current, ip).await?;
    let node = &front.node;
    let hash = front.passwords.hash(new).await?;
    users::validate_password_hash(&hash).map_err(ApiError::from)?;
    let user = node.view().read().user(&p.user_id).cloned().ok_or(ApiError::Unauthenticated)?;
    let set = node.command(Payload::SetPassword(SetPassword { user_id: p.user_id.clone(), password_hash: hash }));
    let request_id = set.request_id.clone();
    let (open, pending) = check::new_session(node, &front.config, &user, &ip.to_string(), &user_agent);
    let applied = node.propose(vec![set, open]).await?;
    let outcome = applied.results.iter().try_for_each(ApiError::check);
    let mut ev = audit::event(
        "user.set_password",
        if outcome.is_ok() { "ok" } else { "failed" },
        &Actor::of(p, ip.to_string()),
        format!("user:{}", p.user_id),
    );
    ev.request_id = request_id;
    ev.detail = "by the user, from the account page".into();
    node.audit(ev);
    outcome?;
    let mut opened = pending.opened(applied.log_index);
    // A person with a second factor confirms the change with it: the new
    // session waits for it (the old one, which had it, ended).
    opened.factor_due = node.view().read().session(&opened.session_id).is_some_and(|s| s.factor_due);
    Ok(opened)
}
