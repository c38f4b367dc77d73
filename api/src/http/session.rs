//! Login, logout and the caller's own sessions.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gatehouse_domain::sessions::MAX_USER_AGENT;
use gatehouse_domain::{users, Payload};
use gatehouse_proto::events::{CreateSession, RecordLoginFailure, RevokeSession, UserStatus};
use serde::Deserialize;
use serde_json::json;

use super::caller::{authenticate, csrf_ok};
use super::client_ip::ClientIp;
use super::front::Front;
use crate::audit::{self, Actor};
use crate::identity::{Principal, Via};
use crate::passwords::MAX_PASSWORD_LEN;
use crate::rate_limit::limiter::RequestLimits;
use crate::rate_limit::quota::Quota;
use crate::ApiError;
use gatehouse_cluster::clock::now_ms;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
}

/// The request's rate-limit context, as the limiter layer left it.
type Limits = Option<Extension<RequestLimits>>;

/// The caller as an audit actor, from the request's client address.
fn actor(p: &Principal, ip: ClientIp) -> Actor {
    Actor::of(p, ip.0.to_string())
}

fn with_quota(mut resp: Response, quota: Option<Quota>) -> Response {
    if let Some(q) = quota {
        resp.extensions_mut().insert(q);
    }
    resp
}

/// `Set-Cookie` for the session: `Path=/`, `HttpOnly`, `SameSite=Lax`,
/// `Secure` outside dev mode, `Domain` only when configured (the name's
/// prefix says which: see [`super::cookie_name`]).
fn session_cookie(front: &Front, value: &str, max_age_secs: u64) -> HeaderValue {
    let secure = if front.config.secure_cookies { "; Secure" } else { "" };
    let domain = front.config.cookie_domain.as_deref().map(|d| format!("; Domain={d}")).unwrap_or_default();
    let c = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}{domain}",
        front.config.cookie_name
    );
    HeaderValue::from_str(&c).expect("cookie names, domains and tokens are header-safe")
}

/// The address bucket a login's failures count against: the client IP as
/// read behind trusted proxies (whether or not limits are on: behind a
/// proxy the peer is the proxy, and every client would share one lockout),
/// an IPv6 client by its /64.
fn login_source(ip: ClientIp) -> String {
    gatehouse_domain::limits::bucket_ip(ip.0).to_string()
}

/// `POST /api/v1/login` `{username, password}` → session cookie.
#[tracing::instrument(level = "info", name = "http.login", skip_all, fields(user_id, outcome))]
pub async fn login(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Login CSRF: a cross-site form must not log a browser into another account.
    if !csrf_ok(&headers) {
        return Err(ApiError::Csrf);
    }
    if !front.node.ensure_fresh().await {
        return Err(ApiError::Stale);
    }
    let body: LoginBody = serde_json::from_slice(&body)
        .map_err(|_| ApiError::InvalidArgument("body must be JSON {\"username\", \"password\"}".into()))?;
    if body.totp.is_some() {
        return Err(ApiError::InvalidArgument("MFA codes are not supported yet".into()));
    }
    if body.username.len() > 64 || body.password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::InvalidCredentials);
    }
    let username = body.username.to_ascii_lowercase();
    let now = now_ms();
    // Read your writes: the user (or a password change) may have been
    // committed through another node a moment ago. Done for every login, so
    // the timing does not depend on whether the user exists here.
    front.node.catch_up(Duration::from_millis(500)).await;
    let user = front.node.view().read().user_by_name(&username).cloned();
    // Lockouts are per (user, client address bucket): see `users::record_login_failure`.
    let source = login_source(client);
    let usable =
        user.as_ref().filter(|u| u.status == UserStatus::Active as i32 && !users::is_locked_from(u, &source, now));
    // The same argon2 work whether or not the user exists or may log in.
    let ok = front.passwords.verify(body.password, usable.map(|u| u.password_hash.clone())).await?;
    let ip = client.0.to_string();
    let Some(user) = usable.filter(|_| ok) else {
        let anonymous = Actor { client_ip: ip.clone(), ..Default::default() };
        // An unknown username is not recorded: people type their password
        // into the username field.
        let resource = match &user {
            Some(u) => format!("user:{}", u.user_id),
            None => "user:unknown".to_string(),
        };
        front.node.audit(audit::event("login.failure", "denied", &anonymous, resource));
        if let Some(u) = user.as_ref().filter(|u| !users::is_locked_from(u, &source, now)) {
            // Counted through the log, so a lockout holds on every node. In
            // the background: the answer must not take longer for real users.
            let l = &front.config.lockout;
            let cmd = front.node.command(Payload::RecordLoginFailure(RecordLoginFailure {
                user_id: u.user_id.clone(),
                threshold: l.threshold,
                window_ms: l.window.as_millis() as u64,
                lockout_ms: l.duration.as_millis() as u64,
                source: source.clone(),
                user_threshold: l.user_threshold,
            }));
            let node = front.node.clone();
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
        tracing::Span::current().record("outcome", "denied");
        return Err(ApiError::InvalidCredentials);
    };

    let minted = crate::mint::new_session_token();
    let session_id = gatehouse_cluster::ids::new_id();
    let ttl = front.config.session_ttl;
    let user_agent: String = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(MAX_USER_AGENT / 4)
        .collect();
    let cmd = front.node.command(Payload::CreateSession(CreateSession {
        session_id: session_id.clone(),
        user_id: user.user_id.clone(),
        token_sha256: minted.token_sha256.to_vec(),
        expires_at: now + ttl.as_millis() as u64,
        idle_timeout_ms: front.config.session_idle.as_millis() as u64,
        client_ip: ip.clone(),
        user_agent,
    }));
    let request_id = cmd.request_id.clone();
    front.node.propose_one(cmd).await?;
    let who =
        Actor { user_id: user.user_id.clone(), session_id: session_id.clone(), client_ip: ip, ..Default::default() };
    let mut e = audit::event("login.success", "ok", &who, format!("session:{session_id}"));
    e.request_id = request_id;
    front.node.audit(e);
    tracing::Span::current().record("user_id", user.user_id.as_str());
    tracing::Span::current().record("outcome", "ok");
    let body = json!({
        "user": { "id": user.user_id, "username": user.username, "roles": user.roles },
        "session_id": session_id,
        "expires_at": now + ttl.as_millis() as u64,
    });
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&front, &minted.token, ttl.as_secs()));
    Ok(resp)
}

/// `POST /api/v1/logout`: revokes the current session, clears the cookie.
pub async fn logout(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (p, quota) = authenticate(&front, &headers, limits.as_deref(), true).await?;
    let who = actor(&p, client);
    let Via::Session { session_id } = p.via else {
        return Err(ApiError::InvalidArgument("logout ends a session; this request used an API key".into()));
    };
    let resource = format!("session:{session_id}");
    front.node.propose_one(front.node.command(Payload::RevokeSession(RevokeSession { session_id }))).await?;
    front.node.audit(audit::event("logout", "ok", &who, resource));
    let mut resp = Json(json!({ "status": "logged_out" })).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&front, "", 0));
    Ok(with_quota(resp, quota))
}

/// `GET /api/v1/me`: the caller's identity.
pub async fn me(State(front): State<Front>, limits: Limits, headers: HeaderMap) -> Result<Response, ApiError> {
    let (p, quota) = authenticate(&front, &headers, limits.as_deref(), false).await?;
    let email = front.node.view().read().user(&p.user_id).map(|u| u.email.clone()).unwrap_or_default();
    let auth = match &p.via {
        Via::ApiKey { key_id } => json!({ "type": "api_key", "key_id": key_id }),
        Via::Session { session_id } => json!({ "type": "session", "session_id": session_id }),
    };
    let body = json!({ "user_id": p.user_id, "username": p.username, "email": email, "roles": p.roles, "auth": auth });
    Ok(with_quota(Json(body).into_response(), quota))
}

/// `GET /api/v1/me/sessions`: the caller's sessions.
pub async fn my_sessions(State(front): State<Front>, limits: Limits, headers: HeaderMap) -> Result<Response, ApiError> {
    let (p, quota) = authenticate(&front, &headers, limits.as_deref(), false).await?;
    let current = match &p.via {
        Via::Session { session_id } => session_id.as_str(),
        Via::ApiKey { .. } => "",
    };
    let state = front.node.view().read();
    let mut list: Vec<_> = state.sessions_of(&p.user_id).collect();
    list.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    let sessions: Vec<_> = list
        .into_iter()
        .map(|s| {
            json!({
                "id": s.session_id, "created_at": s.created_at, "expires_at": s.expires_at,
                "last_seen": s.last_seen.max(front.node.last_use().session(&s.session_id)),
                "client_ip": s.client_ip, "user_agent": s.user_agent, "current": s.session_id == current,
            })
        })
        .collect();
    Ok(with_quota(Json(json!({ "sessions": sessions })).into_response(), quota))
}

/// `DELETE /api/v1/me/sessions/{id}`: revokes one of the caller's sessions.
pub async fn revoke_my_session(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (p, quota) = authenticate(&front, &headers, limits.as_deref(), true).await?;
    let mine = front.node.view().read().session(&id).is_some_and(|s| s.user_id == p.user_id);
    if !mine {
        // Someone else's session and no session at all look the same.
        return Err(ApiError::NotFound("no such session".into()));
    }
    let cmd = front.node.command(Payload::RevokeSession(RevokeSession { session_id: id.clone() }));
    audit::write(&front.node, &actor(&p, client), cmd).await?;
    Ok(with_quota(Json(json!({ "status": "revoked", "id": id })).into_response(), quota))
}
