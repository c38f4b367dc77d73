//! `GET /account` and its forms: a person sees who they are signed in as
//! and where, signs out other sessions, makes API keys (shown once) and
//! revokes them, and changes their password.
//!
//! | form | what it does |
//! |---|---|
//! | `POST /account/sessions/{id}/revoke` | signs one of their sessions out |
//! | `POST /account/keys` (`name`, `role`, `days`, `password`) | a key, shown once; the password given again |
//! | `POST /account/keys/{id}/revoke` | revokes one of their keys |
//! | `POST /account/password` (`current`, `new`, `repeat`) | a new password; every other session ends |
//!
//! A key outlives the session it is made from, so the form asks for the
//! password again (a person without one makes keys only from a recent
//! sign-in): [`crate::sign_in::own`].
//!
//! Only a session from the session cookie opens these pages (a bearer
//! token is an API client's: it gets the JSON API; a cookie holding an API
//! key is no sign-in). A browser without a valid session is sent to sign
//! in and back here. Policies by user or key apply as on the JSON API.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;

use super::render::{html, nonce, see_other, BrandView};
use super::sign_in::{expired_form, notice, session, Limits};
use super::{csrf, form};
use crate::http::client_ip::ClientIp;
use crate::http::front::Front;
use crate::identity::{Principal, Via};
use crate::rate_limit::limiter::RequestLimits;
use crate::sign_in::own::{self, OwnKey, MAX_KEY_NAME};
use crate::ApiError;

/// One session as the page lists it.
struct SessionRow {
    id: String,
    client_ip: String,
    user_agent: String,
    created: String,
    last_seen: String,
    current: bool,
}

/// One API key as the page lists it.
struct KeyRow {
    id: String,
    name: String,
    roles: String,
    created: String,
    expires: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage<'a> {
    brand: BrandView<'a>,
    nonce: &'a str,
    csrf: &'a str,
    username: &'a str,
    email: &'a str,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    sessions: Vec<SessionRow>,
    keys: Vec<KeyRow>,
    /// The person's roles, for a key's role.
    roles: Vec<String>,
    /// A key is made with the password given again.
    needs_password: bool,
    /// Without a password: the sign-in is recent enough to make a key.
    recent: bool,
    /// Since when an authenticator app is on, and its last use.
    totp_enrolled: Option<String>,
    totp_used: Option<String>,
    recovery_left: usize,
    /// The second factor is locked after wrong codes.
    locked: bool,
    /// Authenticator apps can be added here (the node holds `[secrets]`).
    totp_offered: bool,
    /// How many passkeys the person holds, and whether one can be added here.
    passkeys: usize,
    passkeys_offered: bool,
    /// Browsers the person trusts to skip the second step.
    trusted_browsers: usize,
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage<'a> {
    brand: BrandView<'a>,
    nonce: &'a str,
    name: &'a str,
    key: &'a str,
}

#[derive(Deserialize)]
pub struct AccountQuery {
    /// What just happened (a fixed word: never echoed).
    #[serde(default)]
    done: Option<String>,
}

/// A time as the page shows it (UTC, to the minute).
pub(super) fn when(ms: u64) -> String {
    if ms == 0 {
        return "—".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-12-05T17:33:03Z → 2026-12-05 17:33 UTC
    format!("{} {} UTC", &s[..10], &s[11..16])
}

/// The person signed in, from the session cookie only; `Err` is the answer
/// to give instead (sign in first, or the cluster cannot answer).
pub(super) async fn signed_in(
    front: &Front,
    headers: &HeaderMap,
    client: std::net::IpAddr,
    limits: Option<&RequestLimits>,
) -> Result<(Principal, String), Response> {
    let pages = front.config.pages.as_deref().expect("the page routes exist only with [pages]");
    match session(front, headers, client, limits).await {
        Ok(Some(found)) => Ok(found),
        // Half signed in: the second factor is still due.
        Ok(None) if super::second_factor::waiting(front, headers).await.is_some() => {
            Err(see_other(&super::second_factor::factor_url("/account")))
        }
        Ok(None) => Err(see_other(&pages.login_url("/account"))),
        Err(ApiError::RateLimited(q)) => Err(crate::rate_limit::quota::limited_response(q)),
        Err(_) => Err(notice(
            pages,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not available",
            "Your account cannot be shown right now. Try again shortly.",
        )),
    }
}

/// `GET /account`.
pub async fn page(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    headers: HeaderMap,
    Query(q): Query<AccountQuery>,
) -> Response {
    let (p, _) = match signed_in(&front, &headers, client.0, limits.as_deref()).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let notice = match q.done.as_deref() {
        Some("revoked") => Some("The session is signed out."),
        Some("key_revoked") => Some("The key is revoked."),
        Some("password") => Some("Your password is changed. Every other session of yours is signed out."),
        Some("totp_off") => Some("The authenticator app is turned off."),
        Some("devices_forgotten") => Some("No browser skips the second step any more."),
        Some("totp_on") => {
            Some("Your authenticator app is on, beside your passkeys; your recovery codes stay as they were.")
        }
        _ => None,
    };
    render(&front, &headers, &p, StatusCode::OK, Err(notice))
}

/// The account page for `p`; `said` is an error, or else maybe a notice.
pub(super) fn render(
    front: &Front,
    headers: &HeaderMap,
    p: &Principal,
    status: StatusCode,
    said: Result<&str, Option<&str>>,
) -> Response {
    let pages = front.config.pages.as_deref().expect("the page routes exist only with [pages]");
    let current = match &p.via {
        Via::Session { session_id } => session_id.clone(),
        Via::ApiKey { .. } => String::new(),
    };
    let (email, roles, sessions, keys) = {
        let state = front.node.view().read();
        let user = state.user(&p.user_id);
        let email = user.map(|u| u.email.clone()).unwrap_or_default();
        let roles = user.map(|u| u.roles.clone()).unwrap_or_default();
        let now = gatehouse_cluster::clock::now_ms();
        let mut mine: Vec<_> = state
            .api_keys()
            .filter(|k| k.user_id == p.user_id && k.revoked_at == 0 && (k.expires_at == 0 || k.expires_at > now))
            .collect();
        mine.sort_by_key(|k| std::cmp::Reverse(k.created_at));
        let keys = mine
            .into_iter()
            .map(|k| KeyRow {
                id: k.key_id.clone(),
                name: k.name.clone(),
                roles: if k.roles.is_empty() { "none".into() } else { k.roles.join(", ") },
                created: when(k.created_at),
                expires: if k.expires_at == 0 { "never".into() } else { when(k.expires_at) },
                last_used: when(k.last_used.max(front.node.last_use().key(&k.key_id))),
            })
            .collect();
        let mut list: Vec<_> = state.sessions_of(&p.user_id).collect();
        list.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let rows = list
            .into_iter()
            .map(|s| SessionRow {
                current: s.session_id == current,
                last_seen: when(s.last_seen.max(front.node.last_use().session(&s.session_id))),
                created: when(s.created_at),
                id: s.session_id,
                client_ip: s.client_ip,
                user_agent: s.user_agent,
            })
            .collect();
        (email, roles, rows, keys)
    };
    let (error, notice) = match said {
        Ok(e) => (Some(e), None),
        Err(n) => (None, n),
    };
    let factors = crate::mfa::check::view_of(&front.node, &p.user_id);
    let (token, set_cookie) = csrf::token(headers, front.config.secure_cookies);
    let n = nonce();
    let page = AccountPage {
        brand: pages.brand.view(),
        nonce: &n,
        csrf: &token,
        username: &p.username,
        email: &email,
        notice,
        error,
        sessions,
        keys,
        roles,
        needs_password: own::has_password(front, p),
        recent: own::recent(front, p, pages.reauth),
        totp_enrolled: factors.totp_enrolled_at.map(when),
        totp_used: Some(factors.totp_last_used_at).filter(|t| *t != 0).map(when),
        recovery_left: factors.recovery_left,
        locked: factors.locked_until != 0,
        // A voter with [secrets], or a front (its voters decide).
        totp_offered: front.mfa.sealer().is_some() || matches!(front.sign_in, crate::sign_in::SignIn::Voters(_)),
        passkeys: crate::mfa::passkey::list(&front.node, &p.user_id).len(),
        passkeys_offered: crate::sign_in::passkeys::offered(front),
        trusted_browsers: crate::mfa::devices::trusted(front, &p.user_id),
    };
    html(pages, status, page.render(), &n, set_cookie)
}

/// `POST /account/sessions/{id}/revoke` (`csrf`): signs out one of the
/// caller's own sessions (another person's is refused as not found).
pub async fn revoke(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let pages = front.config.pages.as_deref().expect("the page routes exist only with [pages]");
    let Some(f) = form::fields(&body, &[("csrf", 64)]) else { return expired_form(pages) };
    if !csrf::check(&headers, front.config.secure_cookies, &f["csrf"], csrf::authority(&headers, &uri)) {
        return expired_form(pages);
    }
    let (p, token) = match signed_in(&front, &headers, client.0, limits.as_deref()).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    match front.sign_in.revoke_own(&front.node, &p, &token, &id, client.0).await {
        Ok(()) => see_other("/account?done=revoked"),
        Err(ApiError::NotFound(_) | ApiError::InvalidArgument(_)) => notice(
            pages,
            StatusCode::NOT_FOUND,
            "No such session",
            "That session is not one of yours, or it has ended.",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "revoking an own session failed");
            notice(
                pages,
                StatusCode::SERVICE_UNAVAILABLE,
                "Not signed out",
                "The session could not be signed out right now. Try again shortly.",
            )
        }
    }
}

/// A form from a signed-in browser: its fields (CSRF checked) and the
/// person, or the answer to give instead.
pub(super) async fn posted(
    front: &Front,
    client: std::net::IpAddr,
    limits: Option<&RequestLimits>,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    expected: &[(&'static str, usize)],
) -> Result<(std::collections::HashMap<&'static str, String>, Principal, String), Response> {
    let pages = front.config.pages.as_deref().expect("the page routes exist only with [pages]");
    let Some(f) = form::fields(body, expected) else { return Err(expired_form(pages)) };
    if !csrf::check(headers, front.config.secure_cookies, &f["csrf"], csrf::authority(headers, uri)) {
        return Err(expired_form(pages));
    }
    let (p, token) = signed_in(front, headers, client, limits).await?;
    Ok((f, p, token))
}

pub(super) fn unavailable(front: &Front, what: &str) -> Response {
    let pages = front.config.pages.as_deref().expect("the page routes exist only with [pages]");
    notice(pages, StatusCode::SERVICE_UNAVAILABLE, "Not available", &format!("{what} Try again shortly."))
}

/// `POST /account/keys` (`csrf`, `name`, `role`, `days`): the new key, shown
/// once on a page of its own.
#[tracing::instrument(level = "info", name = "page.key_create", skip_all, fields(outcome))]
pub async fn create_key(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let max = crate::passwords::MAX_PASSWORD_LEN;
    let expected = [
        ("csrf", 64),
        ("name", MAX_KEY_NAME * 4),
        ("role", 64),
        ("days", 3),
        ("password", max),
        ("code", crate::mfa::check::MAX_CODE),
    ];
    let (f, p, token) = match posted(&front, client.0, limits.as_deref(), &uri, &headers, &body, &expected).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let Ok(days) = f["days"].parse::<u64>() else {
        return render(&front, &headers, &p, StatusCode::BAD_REQUEST, Ok("Choose how long the key lives."));
    };
    let role = Some(f["role"].clone()).filter(|r| !r.is_empty());
    let key = OwnKey { name: f["name"].clone(), role, days, password: f["password"].clone(), code: f["code"].clone() };
    let made = match front.sign_in.create_own_key(&front, &p, &token, key, client.0).await {
        Ok(m) => m,
        Err(ApiError::PermissionDenied(_)) => {
            tracing::Span::current().record("outcome", "reauth");
            let why = if own::has_password(&front, &p) {
                "Enter your password to make a key."
            } else {
                "Sign in again with a new link first: a key is made only from a recent sign-in."
            };
            return render(&front, &headers, &p, StatusCode::FORBIDDEN, Ok(why));
        }
        Err(ApiError::InvalidCredentials) => {
            tracing::Span::current().record("outcome", "password");
            return render(&front, &headers, &p, StatusCode::UNAUTHORIZED, Ok("Your password is not right."));
        }
        Err(ApiError::SecondFactorRequired) => {
            let why = "Enter a code from your authenticator app to make a key.";
            return render(&front, &headers, &p, StatusCode::FORBIDDEN, Ok(why));
        }
        Err(ApiError::InvalidSecondFactor) => {
            let why = "That code is wrong or was used already.";
            return render(&front, &headers, &p, StatusCode::UNAUTHORIZED, Ok(why));
        }
        Err(ApiError::SecondFactorLocked) => {
            let why = "Too many wrong codes: your second factor is locked for a while.";
            return render(&front, &headers, &p, StatusCode::FORBIDDEN, Ok(why));
        }
        Err(ApiError::RateLimited(_)) => {
            let why = "Too many attempts. Wait a minute, then try again.";
            return render(&front, &headers, &p, StatusCode::TOO_MANY_REQUESTS, Ok(why));
        }
        Err(ApiError::InvalidArgument(_)) => {
            let why = "Give the key a name of 1 to 64 characters, one of your roles, and 1 to 366 days.";
            return render(&front, &headers, &p, StatusCode::BAD_REQUEST, Ok(why));
        }
        Err(ApiError::FailedPrecondition(_)) => {
            let why = "You hold as many keys as allowed: revoke one first.";
            return render(&front, &headers, &p, StatusCode::CONFLICT, Ok(why));
        }
        Err(e) => {
            tracing::warn!(error = %e, "making an own key failed");
            return unavailable(&front, "The key could not be made right now.");
        }
    };
    tracing::Span::current().record("outcome", "ok");
    let pages = front.config.pages.as_deref().expect("the page routes exist only with [pages]");
    let n = nonce();
    let name = f["name"].trim();
    let page = KeyPage { brand: pages.brand.view(), nonce: &n, name, key: &made.key };
    html(pages, StatusCode::OK, page.render(), &n, None)
}

/// `POST /account/keys/{id}/revoke` (`csrf`).
pub async fn revoke_key(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (_, p, token) = match posted(&front, client.0, limits.as_deref(), &uri, &headers, &body, &[("csrf", 64)]).await
    {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    match front.sign_in.revoke_own_key(&front, &p, &token, &id, client.0).await {
        Ok(()) => see_other("/account?done=key_revoked"),
        Err(ApiError::NotFound(_)) => {
            render(&front, &headers, &p, StatusCode::NOT_FOUND, Ok("That key is not one of yours, or it is revoked."))
        }
        Err(e) => {
            tracing::warn!(error = %e, "revoking an own key failed");
            unavailable(&front, "The key could not be revoked right now.")
        }
    }
}

/// `POST /account/password` (`csrf`, `current`, `new`, `repeat`): every
/// session ends; this browser gets a new one.
#[tracing::instrument(level = "info", name = "page.password_change", skip_all, fields(outcome))]
pub async fn change_password(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let max = crate::passwords::MAX_PASSWORD_LEN;
    let expected = [("csrf", 64), ("current", max), ("new", max), ("repeat", max)];
    let (f, p, token) = match posted(&front, client.0, limits.as_deref(), &uri, &headers, &body, &expected).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let said = |status, why: &str| {
        tracing::Span::current().record("outcome", "refused");
        render(&front, &headers, &p, status, Ok(why))
    };
    if f["new"] != f["repeat"] {
        return said(StatusCode::BAD_REQUEST, "The new password and its repetition differ.");
    }
    if let Err(ApiError::InvalidArgument(why)) = crate::passwords::check_policy(&f["new"]) {
        return said(StatusCode::BAD_REQUEST, &format!("The new password is not accepted: {why}."));
    }
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (current, new) = (f["current"].clone(), f["new"].clone());
    let opened = match front.sign_in.change_password(&front, &p, &token, current, new, client.0, user_agent).await {
        Ok(o) => o,
        Err(ApiError::InvalidCredentials | ApiError::Unauthenticated) => {
            return said(StatusCode::UNAUTHORIZED, "Your current password is not right.")
        }
        Err(ApiError::RateLimited(_)) => {
            return said(StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Wait a minute, then try again.")
        }
        Err(ApiError::InvalidArgument(why)) => {
            return said(StatusCode::BAD_REQUEST, &format!("The new password is not accepted: {why}."))
        }
        Err(e) => {
            tracing::warn!(error = %e, "changing a password failed");
            return unavailable(&front, "Your password could not be changed right now.");
        }
    };
    tracing::Span::current().record("outcome", "ok");
    // Every earlier session ended with the change: none to end here.
    super::sign_in::signed_in(&front, client.0, None, &opened, "/account?done=password").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_in_utc_to_the_minute() {
        assert_eq!(when(0), "—");
        assert_eq!(when(1_796_490_379_000), "2026-12-05 17:06 UTC");
    }
}
