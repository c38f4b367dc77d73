//! Signing in through the company's identity provider on the pages:
//!
//! | path | what |
//! |---|---|
//! | `GET /login/sso/{id}?rd=…` | starts a sign-in: the flow cookie, then `303` to the provider |
//! | `GET /login/sso/{id}/callback?code=…&state=…` | the provider's answer: the session cookie, then `303` to `rd` |
//! | `POST /login/sso/{id}/backchannel-logout` | the provider's logout token (server to server) |
//!
//! The buttons on the sign-in page are plain links: starting a flow in
//! someone's browser gains an attacker nothing (the browser signs in as its
//! own person at the provider, and only it holds the flow cookie). What
//! each step checks is in [`crate::sso`].

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::render::{see_other, PagesConfig};
use super::sign_in::{notice, session};
use crate::http::client_ip::ClientIp;
use crate::http::front::Front;
use crate::sso::flow::{self, FLOW_TTL_MS};
use crate::sso::logout::LogoutError;
use crate::sso::rules::Refusal;
use crate::sso::sign_in::{Callback, SsoError, Why};

fn pages(front: &Front) -> &PagesConfig {
    front.config.pages.as_deref().expect("the page routes exist only with [pages]")
}

fn no_provider(pages: &PagesConfig) -> Response {
    notice(pages, StatusCode::NOT_FOUND, "Not available", "There is no such way to sign in here.")
}

fn unavailable(pages: &PagesConfig) -> Response {
    notice(
        pages,
        StatusCode::SERVICE_UNAVAILABLE,
        "Not signed in",
        "Your identity provider cannot be reached right now. Try again shortly.",
    )
}

#[derive(Deserialize)]
pub struct StartQuery {
    #[serde(default)]
    rd: Option<String>,
}

/// The flow cookie, `Lax` so the provider's redirect back carries it.
fn flow_cookie(secure: bool, value: &str, max_age_secs: u64) -> Option<HeaderValue> {
    let attrs = if secure { "; Secure" } else { "" };
    let name = flow::cookie_name(secure);
    HeaderValue::from_str(&format!("{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{attrs}"))
        .ok()
}

/// `GET /login/sso/{id}?rd=…`: to the provider.
pub async fn start(State(front): State<Front>, Path(id): Path<String>, Query(q): Query<StartQuery>) -> Response {
    let pages = pages(&front);
    if front.sso.as_deref().and_then(|s| s.provider(&id)).is_none() {
        return no_provider(pages);
    }
    let rd = q.rd.as_deref().and_then(|r| pages.return_domains.check(r)).unwrap_or_default();
    match front.sign_in.upstream_start(&front, &id, &rd).await {
        Ok(started) => {
            let mut resp = see_other(&started.url);
            if let Some(c) = flow_cookie(front.config.secure_cookies, &started.cookie, FLOW_TTL_MS / 1000) {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(SsoError::Api(crate::ApiError::NotFound(_))) => no_provider(pages),
        Err(_) => unavailable(pages),
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The longest code and state taken.
const MAX_PARAM: usize = 2048;

/// `GET /login/sso/{id}/callback`: the session, then on to where the
/// person was going.
#[tracing::instrument(level = "info", name = "page.sso_callback", skip_all, fields(outcome))]
pub async fn callback(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let pages = pages(&front);
    if front.sso.as_deref().and_then(|s| s.provider(&id)).is_none() {
        return no_provider(pages);
    }
    let said = |status, title: &str, why: &str| {
        tracing::Span::current().record("outcome", "refused");
        clear_flow(&front, notice(pages, status, title, why))
    };
    if q.error.is_some() {
        // The person said no at the provider, or it refused them. The flow
        // cookie stays: anyone can link here with `?error=`, and a flow under
        // way in this browser is not ended for it.
        tracing::Span::current().record("outcome", "provider_error");
        return notice(
            pages,
            StatusCode::FORBIDDEN,
            "Not signed in",
            "Your identity provider did not sign you in. Try again.",
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return said(
            StatusCode::BAD_REQUEST,
            "Not signed in",
            "The answer from your identity provider was incomplete.",
        );
    };
    if code.is_empty() || code.len() > MAX_PARAM || state.len() > MAX_PARAM {
        return said(StatusCode::BAD_REQUEST, "Not signed in", "The answer from your identity provider was not valid.");
    }
    if !front.node.ensure_fresh().await {
        return said(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not signed in",
            "Signing in is not possible right now. Try again shortly.",
        );
    }
    let secure = front.config.secure_cookies;
    let flow = crate::http::caller::cookie(&headers, flow::cookie_name(secure)).unwrap_or_default();
    let before = session(&front, &headers, client.0, None).await.ok().flatten();
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let cb = Callback { provider: id, code, state, flow, client_ip: client.0, user_agent };
    let (opened, rd) = match front.sign_in.upstream_finish(&front, cb).await {
        Ok(done) => done,
        Err(SsoError::Refused(why)) => {
            let (status, title, message) = explain(&why);
            return said(status, title, message);
        }
        Err(SsoError::Unavailable) => return clear_flow(&front, unavailable(pages)),
        Err(SsoError::Api(e)) => {
            tracing::warn!(error = %e, "a sign-in through a provider failed");
            return said(
                StatusCode::SERVICE_UNAVAILABLE,
                "Not signed in",
                "Signing in is not possible right now. Try again shortly.",
            );
        }
    };
    tracing::Span::current().record("outcome", "ok");
    // The return URL was checked when the flow started; checked again.
    let rd = pages.return_domains.check(&rd).unwrap_or_default();
    clear_flow(&front, super::sign_in::signed_in(&front, client.0, before, &opened, &rd).await)
}

/// The page's words for a refusal.
fn explain(why: &Why) -> (StatusCode, &'static str, &'static str) {
    let forbidden = StatusCode::FORBIDDEN;
    match why {
        Why::Flow(_) => (
            StatusCode::BAD_REQUEST,
            "Please try again",
            "This sign-in was started in another browser, or too long ago. Start again from the sign-in page.",
        ),
        Why::FlowUsed => (
            StatusCode::BAD_REQUEST,
            "Please try again",
            "This sign-in was completed already. Start again from the sign-in page.",
        ),
        Why::Provider | Why::Token => (
            StatusCode::BAD_GATEWAY,
            "Not signed in",
            "The answer from your identity provider could not be accepted. Try again, or ask your administrator.",
        ),
        Why::Rules(Refusal::EmailUnverified) => {
            (forbidden, "Not signed in", "Your identity provider has not verified your email address.")
        }
        Why::Rules(Refusal::NoEmail) => (forbidden, "Not signed in", "Your identity provider gave no email address."),
        Why::Rules(Refusal::Domain | Refusal::HostedDomain) => {
            (forbidden, "Not signed in", "Accounts of your organisation cannot sign in here.")
        }
        Why::Rules(Refusal::Group) => (
            forbidden,
            "Not signed in",
            "Your account is not in a group that may sign in here. Ask your administrator.",
        ),
        Why::Rules(Refusal::NoUsername) | Why::UsernameTaken | Why::EmailTaken => (
            StatusCode::CONFLICT,
            "Not signed in",
            "An account for you cannot be made here automatically. Ask your administrator.",
        ),
        Why::NotLinked => (forbidden, "Not signed in", "There is no account here for you. Ask your administrator."),
        Why::Disabled => (forbidden, "Not signed in", "This account cannot sign in. Ask your administrator."),
    }
}

/// Ends the flow cookie with the answer: a flow is good for one callback.
fn clear_flow(front: &Front, mut resp: Response) -> Response {
    if let Some(c) = flow_cookie(front.config.secure_cookies, "", 0) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// `POST /login/sso/{id}/backchannel-logout` (`logout_token`): 200 once
/// the sessions ended on every node, 400 for a token that is not valid.
pub async fn backchannel_logout(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = |status: StatusCode, error: Option<&str>| {
        let body = match error {
            Some(e) => serde_json::json!({ "error": e }).to_string(),
            None => String::new(),
        };
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if error.is_some() {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        resp
    };
    if front.sso.as_deref().and_then(|s| s.provider(&id)).is_none() {
        return answer(StatusCode::NOT_FOUND, Some("invalid_request"));
    }
    let form = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    let tokens: Vec<String> = if form {
        url::form_urlencoded::parse(&body).filter(|(k, _)| k == "logout_token").map(|(_, v)| v.into_owned()).collect()
    } else {
        Vec::new()
    };
    let [token] = tokens.as_slice() else { return answer(StatusCode::BAD_REQUEST, Some("invalid_request")) };
    match front.sign_in.upstream_logout(&front, &id, token, client.0).await {
        Ok(_) => answer(StatusCode::OK, None),
        Err(LogoutError::Invalid | LogoutError::Replayed) => answer(StatusCode::BAD_REQUEST, Some("invalid_request")),
        Err(LogoutError::Unavailable) => answer(StatusCode::SERVICE_UNAVAILABLE, Some("temporarily_unavailable")),
        Err(LogoutError::Api(e)) => {
            tracing::warn!(error = %e, "a back-channel logout failed");
            answer(StatusCode::SERVICE_UNAVAILABLE, Some("temporarily_unavailable"))
        }
    }
}
