//! What a voter checks and writes when a person signs in or out: the
//! password against the stored argon2id hash (with the lockouts), the new
//! session, the revocations, and their audit events. Reached from the HTTP
//! front of a voter directly, and from a stateless front through
//! `SignInService` ([`super::service`]).

use std::net::IpAddr;
use std::time::Duration;

use gatehouse_domain::sessions::MAX_USER_AGENT;
use gatehouse_domain::{users, Payload};
use gatehouse_proto::events::{CreateSession, RecordLoginFailure, RevokeSession, UserStatus};

use crate::audit::{self, Actor};
use crate::http::front::{Front, FrontConfig};
use crate::identity::{Principal, Via};
use crate::passwords::{PasswordPool, MAX_PASSWORD_LEN};
use crate::{ApiError, Node};
use gatehouse_cluster::clock::now_ms;

/// A person's attempt to sign in.
pub struct Attempt {
    pub username: String,
    pub password: String,
    /// The client's address as the front resolved it (lockouts count by it).
    pub client_ip: IpAddr,
    pub user_agent: String,
    /// The second factor, given with the password (the JSON API's `totp`).
    pub second_factor: Option<String>,
    /// Without a second factor, a user who has one gets a session that
    /// waits for it (the pages ask for it next) instead of a refusal.
    pub factor_later: bool,
    /// The browser's trusted-device token (its cookie), standing in for
    /// the second factor while the trust lasts.
    pub device_token: Option<String>,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt").field("client_ip", &self.client_ip).finish_non_exhaustive()
    }
}

/// A session opened for a signed-in person.
#[derive(Clone)]
pub struct Opened {
    pub user_id: String,
    pub username: String,
    pub roles: Vec<String>,
    pub session_id: String,
    /// The session token: for the cookie only, never logged.
    pub token: String,
    pub expires_at: u64,
    /// The log index the session was applied at.
    pub log_index: u64,
    /// The session waits for its second factor: the browser goes to the
    /// factor page, and the token grants nothing else.
    pub factor_due: bool,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("user_id", &self.user_id).field("session_id", &self.session_id).finish()
    }
}

/// The address bucket a login's failures count against: the client IP as
/// read behind trusted proxies (whether or not limits are on: behind a
/// proxy the peer is the proxy, and every client would share one lockout),
/// an IPv6 client by its /64.
fn login_source(ip: IpAddr) -> String {
    gatehouse_domain::limits::bucket_ip(ip).to_string()
}

/// Checks `attempt` and opens a session (see the module docs).
pub async fn login(front: &Front, attempt: Attempt) -> Result<Opened, ApiError> {
    let (node, passwords, config) = (&front.node, &front.passwords, &front.config);
    let ip = attempt.client_ip.to_string();
    let user_agent = attempt.user_agent.clone();
    let (second, later) = (attempt.second_factor.clone(), attempt.factor_later);
    let device = attempt.device_token.clone();
    let user = verify(node, passwords, config, attempt).await?;
    let (mut create, pending) = session_for(config, &user, &ip, &user_agent);
    let who = Actor {
        user_id: user.user_id.clone(),
        session_id: create.session_id.clone(),
        client_ip: ip.clone(),
        ..Default::default()
    };
    let (has_factor, required) = {
        let state = node.view().read();
        (state.has_factor(&user.user_id), state.factor_required(&user.user_id))
    };
    // A browser the person trusted: the trust stands in for the factor.
    let trusted = device.as_deref().and_then(|t| crate::mfa::devices::proof(front, &user.user_id, t));
    match (&second, has_factor) {
        (Some(code), true) => {
            if code.len() > crate::mfa::check::MAX_CODE {
                return Err(ApiError::InvalidSecondFactor);
            }
            create.factor = Some(crate::mfa::check::proof(front, &user.user_id, code, &who).await?);
        }
        (None, true) if trusted.is_some() => create.factor = trusted.clone(),
        (None, true) if !later => return Err(ApiError::SecondFactorRequired),
        // A role requires a factor this user has not enrolled: only the
        // pages can enroll it (with an admin's ticket).
        (_, false) if required && !later => return Err(ApiError::SecondFactorRequired),
        _ => {}
    }
    let by_device = create.factor.is_some() && create.factor == trusted;
    let mut factor =
        create.factor.as_ref().map(|_| if by_device { "a trusted browser" } else { "second factor given" });
    // Forgotten a moment ago on another node: the session waits instead.
    let untrusted = by_device.then(|| CreateSession { factor: None, ..create.clone() });
    let cmd = node.command(Payload::CreateSession(create));
    let mut request_id = cmd.request_id.clone();
    let mut applied = node.propose(vec![cmd]).await?;
    let forgotten = |a: &gatehouse_cluster::propose::Applied| {
        a.results.iter().any(|r| r.message == gatehouse_domain::devices::NOT_TRUSTED)
    };
    if let Some(untrusted) = untrusted.filter(|_| forgotten(&applied)) {
        let cmd = node.command(Payload::CreateSession(untrusted));
        request_id = cmd.request_id.clone();
        applied = node.propose(vec![cmd]).await?;
        factor = None;
    }
    if let Err(e) = applied.results.iter().try_for_each(ApiError::check) {
        return Err(match e {
            ApiError::FailedPrecondition(m) if m == gatehouse_domain::factors::LOCKED => ApiError::SecondFactorLocked,
            ApiError::FailedPrecondition(m) if m.contains("code") => ApiError::InvalidSecondFactor,
            e => e,
        });
    }
    let mut opened = pending.opened(applied.log_index);
    opened.factor_due = (has_factor || required) && factor.is_none();
    let action = if opened.factor_due { "login.first_factor" } else { "login.success" };
    let mut e = audit::event(action, "ok", &who, format!("session:{}", opened.session_id));
    e.request_id = request_id;
    e.detail = factor.unwrap_or_default().into();
    node.audit(e);
    Ok(opened)
}

/// A session about to be proposed: what the browser gets once it applies.
pub struct Pending(Opened);

impl Pending {
    pub fn opened(mut self, log_index: u64) -> Opened {
        self.0.log_index = log_index;
        self.0
    }
}

/// The command that opens a new session for `user`, and the session it opens.
pub fn new_session(
    node: &Node,
    config: &FrontConfig,
    user: &gatehouse_proto::state::UserRecord,
    ip: &str,
    user_agent: &str,
) -> (gatehouse_domain::Command, Pending) {
    let (create, pending) = session_for(config, user, ip, user_agent);
    (node.command(Payload::CreateSession(create)), pending)
}

/// A new session for `user` (a fresh token, the configured lifetimes), as
/// a `CreateSession` to propose alone or inside another command.
pub fn session_for(
    config: &FrontConfig,
    user: &gatehouse_proto::state::UserRecord,
    ip: &str,
    user_agent: &str,
) -> (CreateSession, Pending) {
    let minted = crate::mint::new_session_token();
    let session_id = gatehouse_cluster::ids::new_id();
    let expires_at = now_ms() + config.session_ttl.as_millis() as u64;
    let create = CreateSession {
        session_id: session_id.clone(),
        user_id: user.user_id.clone(),
        token_sha256: minted.token_sha256.to_vec(),
        expires_at,
        idle_timeout_ms: config.session_idle.as_millis() as u64,
        client_ip: ip.to_string(),
        user_agent: user_agent.chars().take(MAX_USER_AGENT / 4).collect(),
        factor: None,
        method: "pwd".into(),
    };
    let opened = Opened {
        user_id: user.user_id.clone(),
        username: user.username.clone(),
        roles: user.roles.clone(),
        session_id,
        token: minted.token,
        expires_at,
        log_index: 0,
        factor_due: false,
    };
    (create, Pending(opened))
}

/// Checks `attempt`'s password as a login does (argon2id, lockout, the
/// failure recorded, audited) without opening a session: the user it
/// belongs to, or `InvalidCredentials`.
pub async fn verify(
    node: &Node,
    passwords: &PasswordPool,
    config: &FrontConfig,
    attempt: Attempt,
) -> Result<gatehouse_proto::state::UserRecord, ApiError> {
    if attempt.username.len() > 64 || attempt.password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::InvalidCredentials);
    }
    let username = attempt.username.to_ascii_lowercase();
    let now = now_ms();
    // Read your writes: the user (or a password change) may have been
    // committed through another node a moment ago. Done for every login, so
    // the timing does not depend on whether the user exists here.
    node.catch_up(Duration::from_millis(500)).await;
    let user = node.view().read().user_by_name(&username).cloned();
    // Lockouts are per (user, client address bucket): see `users::record_login_failure`.
    let source = login_source(attempt.client_ip);
    // With password sign-in off, only the break-glass users' passwords count.
    let allowed = config.password_allowed(&username);
    let usable = user
        .as_ref()
        .filter(|u| allowed && u.status == UserStatus::Active as i32 && !users::is_locked_from(u, &source, now));
    // The same argon2 work whether or not the user exists or may log in.
    let ok = passwords.verify(attempt.password, usable.map(|u| u.password_hash.clone())).await?;
    let ip = attempt.client_ip.to_string();
    let Some(user) = usable.filter(|_| ok) else {
        let anonymous = Actor { client_ip: ip.clone(), ..Default::default() };
        // An unknown username is not recorded: people type their password
        // into the username field.
        let resource = match &user {
            Some(u) => format!("user:{}", u.user_id),
            None => "user:unknown".to_string(),
        };
        node.audit(audit::event("login.failure", "denied", &anonymous, resource));
        if let Some(u) = user.as_ref().filter(|u| allowed && !users::is_locked_from(u, &source, now)) {
            // Counted through the log, so a lockout holds on every node. In
            // the background: the answer must not take longer for real users.
            let l = &config.lockout;
            let cmd = node.command(Payload::RecordLoginFailure(RecordLoginFailure {
                user_id: u.user_id.clone(),
                threshold: l.threshold,
                window_ms: l.window.as_millis() as u64,
                lockout_ms: l.duration.as_millis() as u64,
                source: source.clone(),
                user_threshold: l.user_threshold,
            }));
            let node = node.clone();
            let user_id = u.user_id.clone();
            tokio::spawn(async move {
                if let Err(e) = node.propose_one(cmd).await {
                    tracing::warn!(error = %e, "recording a failed login failed");
                    return;
                }
                let locked =
                    node.view().read().user(&user_id).is_some_and(|u| users::is_locked_from(u, &source, now_ms()));
                if locked {
                    node.audit(audit::event("user.lockout", "ok", &anonymous, format!("user:{user_id}")));
                }
            });
        }
        return Err(ApiError::InvalidCredentials);
    };

    Ok(user.clone())
}

/// Ends the caller's own session; `p` must have come through one.
pub async fn logout(node: &Node, p: &Principal, client_ip: &str) -> Result<u64, ApiError> {
    let Via::Session { session_id } = &p.via else {
        return Err(ApiError::InvalidArgument("logout ends a session; this request used an API key".into()));
    };
    let resource = format!("session:{session_id}");
    let cmd = node.command(Payload::RevokeSession(RevokeSession { session_id: session_id.clone() }));
    let applied = node.propose(vec![cmd]).await?;
    for r in &applied.results {
        ApiError::check(r)?;
    }
    node.audit(audit::event("logout", "ok", &Actor::of(p, client_ip.to_string()), resource));
    Ok(applied.log_index)
}

/// Ends one of the caller's sessions (`id`), audited with before and after.
pub async fn revoke_own(node: &Node, p: &Principal, id: &str, client_ip: &str) -> Result<u64, ApiError> {
    let mine = node.view().read().session(id).is_some_and(|s| s.user_id == p.user_id);
    if !mine {
        // Someone else's session and no session at all look the same.
        return Err(ApiError::NotFound("no such session".into()));
    }
    let cmd = node.command(Payload::RevokeSession(RevokeSession { session_id: id.to_string() }));
    Ok(audit::write(node, &Actor::of(p, client_ip.to_string()), cmd).await?.log_index)
}
