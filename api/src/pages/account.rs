//! `GET /account` and `POST /account/sessions/{id}/revoke`: a person sees
//! who they are signed in as and where, and signs out other sessions.
//!
//! Only a session from the session cookie opens these pages (a bearer
//! token is an API client's: it gets the JSON API; a cookie holding an API
//! key is no sign-in). A browser without a valid session is sent to sign
//! in and back here. Policies by user or key apply as on the JSON API.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;

use super::render::{html, nonce, see_other, BrandView};
use super::sign_in::{expired_form, notice, session, Limits};
use super::{csrf, form};
use crate::http::client_ip::ClientIp;
use crate::http::front::Front;
use crate::identity::{Principal, Via};
use crate::rate_limit::limiter::RequestLimits;
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

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage<'a> {
    brand: BrandView<'a>,
    nonce: &'a str,
    csrf: &'a str,
    username: &'a str,
    email: &'a str,
    notice: Option<&'a str>,
    sessions: Vec<SessionRow>,
}

#[derive(Deserialize)]
pub struct AccountQuery {
    /// What just happened (a fixed word: never echoed).
    #[serde(default)]
    done: Option<String>,
}

/// A time as the page shows it (UTC, to the minute).
fn when(ms: u64) -> String {
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
async fn signed_in(
    front: &Front,
    headers: &HeaderMap,
    client: std::net::IpAddr,
    limits: Option<&RequestLimits>,
) -> Result<(Principal, String), Response> {
    let pages = front.config.pages.as_deref().expect("the page routes exist only with [pages]");
    match session(front, headers, client, limits).await {
        Ok(Some(found)) => Ok(found),
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
    let pages = front.config.pages.as_deref().expect("the page routes exist only with [pages]");
    let (p, _) = match signed_in(&front, &headers, client.0, limits.as_deref()).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let current = match &p.via {
        Via::Session { session_id } => session_id.clone(),
        Via::ApiKey { .. } => String::new(),
    };
    let (email, sessions) = {
        let state = front.node.view().read();
        let email = state.user(&p.user_id).map(|u| u.email.clone()).unwrap_or_default();
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
        (email, rows)
    };
    let notice = match q.done.as_deref() {
        Some("revoked") => Some("The session is signed out."),
        _ => None,
    };
    let (token, set_cookie) = csrf::token(&headers, front.config.secure_cookies);
    let n = nonce();
    let page = AccountPage {
        brand: pages.brand.view(),
        nonce: &n,
        csrf: &token,
        username: &p.username,
        email: &email,
        notice,
        sessions,
    };
    html(pages, StatusCode::OK, page.render(), &n, set_cookie)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_in_utc_to_the_minute() {
        assert_eq!(when(0), "—");
        assert_eq!(when(1_796_490_379_000), "2026-12-05 17:06 UTC");
    }
}
