//! Login, logout and the caller's own sessions.

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::caller::{authenticate, credential, csrf_ok};
use super::client_ip::ClientIp;
use super::front::Front;
use crate::identity::Via;
use crate::rate_limit::limiter::RequestLimits;
use crate::rate_limit::quota::Quota;
use crate::sign_in::Attempt;
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

fn with_quota(mut resp: Response, quota: Option<Quota>) -> Response {
    if let Some(q) = quota {
        resp.extensions_mut().insert(q);
    }
    resp
}

/// `Set-Cookie` for the session: `Path=/`, `HttpOnly`, `SameSite=Lax`,
/// `Secure` outside dev mode, `Domain` only when configured (the name's
/// prefix says which: see [`super::cookie_name`]).
pub(crate) fn session_cookie(front: &Front, value: &str, max_age_secs: u64) -> HeaderValue {
    let secure = if front.config.secure_cookies { "; Secure" } else { "" };
    let domain = front.config.cookie_domain.as_deref().map(|d| format!("; Domain={d}")).unwrap_or_default();
    let c = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}{domain}",
        front.config.cookie_name
    );
    HeaderValue::from_str(&c).expect("cookie names, domains and tokens are header-safe")
}

/// `POST /api/v1/login` `{username, password}` → session cookie. Checked
/// where the password hashes are ([`crate::sign_in`]).
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
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let attempt = Attempt {
        username: body.username,
        password: body.password,
        client_ip: client.0,
        user_agent,
        second_factor: body.totp,
        factor_later: false,
        device_token: None,
    };
    let opened = match front.sign_in.login(&front, attempt).await {
        Ok(o) => o,
        Err(e) => {
            tracing::Span::current().record("outcome", "denied");
            return Err(e);
        }
    };
    tracing::Span::current().record("user_id", opened.user_id.as_str());
    tracing::Span::current().record("outcome", "ok");
    let body = json!({
        "user": { "id": opened.user_id, "username": opened.username, "roles": opened.roles },
        "session_id": opened.session_id,
        "expires_at": opened.expires_at,
    });
    // Rounded up: the cookie lasts as long as the session, never less.
    let max_age = opened.expires_at.saturating_sub(now_ms()).div_ceil(1000);
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&front, &opened.token, max_age));
    Ok(resp)
}

/// `POST /api/v1/logout`: revokes the current session, clears the cookie.
pub async fn logout(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (p, quota) = authenticate(&front, &headers, client.0, limits.as_deref(), true).await?;
    let token = credential(&headers, &front.config.cookie_name).map(|c| c.0).unwrap_or_default();
    front.sign_in.logout(&front.node, &p, &token, client.0).await?;
    let mut resp = Json(json!({ "status": "logged_out" })).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&front, "", 0));
    Ok(with_quota(resp, quota))
}

/// `GET /api/v1/me`: the caller's identity.
pub async fn me(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (p, quota) = authenticate(&front, &headers, client.0, limits.as_deref(), false).await?;
    let email = front.node.view().read().user(&p.user_id).map(|u| u.email.clone()).unwrap_or_default();
    let auth = match &p.via {
        Via::ApiKey { key_id } => json!({ "type": "api_key", "key_id": key_id }),
        Via::Session { session_id } => json!({ "type": "session", "session_id": session_id }),
    };
    let body = json!({ "user_id": p.user_id, "username": p.username, "email": email, "roles": p.roles, "auth": auth });
    Ok(with_quota(Json(body).into_response(), quota))
}

/// `GET /api/v1/me/sessions`: the caller's sessions.
pub async fn my_sessions(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (p, quota) = authenticate(&front, &headers, client.0, limits.as_deref(), false).await?;
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
    let (p, quota) = authenticate(&front, &headers, client.0, limits.as_deref(), true).await?;
    let token = credential(&headers, &front.config.cookie_name).map(|c| c.0).unwrap_or_default();
    front.sign_in.revoke_own(&front.node, &p, &token, &id, client.0).await?;
    Ok(with_quota(Json(json!({ "status": "revoked", "id": id })).into_response(), quota))
}
