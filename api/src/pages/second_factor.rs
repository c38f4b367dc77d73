//! `GET /login/factor`, `POST /login/factor`: the second step of signing
//! in. A person whose first factor (a password, a mailed link, an upstream
//! provider) passed, and who has a second one, holds a session that waits
//! for it: its cookie opens nothing but this page. The code (TOTP or a
//! recovery code) is checked on a voter and spent through the log
//! ([`crate::mfa::check`]); the session then gets a new token, and the
//! browser goes on to where it was going.
//!
//! The form counts as a login for rate-limit policies (by address); wrong
//! codes also count against the user's factor, which locks on every node
//! after `[mfa] max_failures`.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use gatehouse_domain::sessions::{self, SessionIdentity};
use serde::Deserialize;

use super::render::{html, html_with_script, nonce, see_other, BrandView, PagesConfig};
use super::sign_in::{expired_form, notice};
use super::{csrf, form};
use crate::http::caller::credential;
use crate::http::client_ip::ClientIp;
use crate::http::front::Front;
use crate::mfa::check::Presented;
use crate::sign_in::passkeys::Ceremony;
use crate::ApiError;
use gatehouse_cluster::clock::now_ms;

#[derive(Template)]
#[template(path = "factor.html")]
struct FactorPage<'a> {
    brand: BrandView<'a>,
    nonce: &'a str,
    csrf: &'a str,
    rd: &'a str,
    username: &'a str,
    error: Option<&'a str>,
    /// A passkey ceremony, when the person has passkeys and this node runs them.
    passkey: Option<crate::mfa::passkey::Offer>,
    /// "Trust this browser for N days", on the sign-in's second step.
    trust_days: Option<u64>,
}

#[derive(Template)]
#[template(path = "factor_enroll.html")]
struct EnrollPage<'a> {
    brand: BrandView<'a>,
    nonce: &'a str,
    csrf: &'a str,
    rd: &'a str,
    username: &'a str,
    error: Option<&'a str>,
    qr_svg: &'a str,
    secret: &'a str,
    sealed: &'a str,
}

#[derive(Template)]
#[template(path = "recovery.html")]
struct CodesPage<'a> {
    brand: BrandView<'a>,
    nonce: &'a str,
    message: &'a str,
    codes: &'a [String],
}

#[derive(Deserialize)]
pub struct FactorQuery {
    #[serde(default)]
    rd: Option<String>,
}

fn pages(front: &Front) -> &PagesConfig {
    front.config.pages.as_deref().expect("the page routes exist only with [pages]")
}

/// The session this browser's cookie names, when it waits for its second
/// factor (and the cookie's token).
pub(super) async fn waiting(front: &Front, headers: &HeaderMap) -> Option<(SessionIdentity, String)> {
    let (token, true) = credential(headers, &front.config.cookie_name)? else { return None };
    let found = |front: &Front| sessions::verify_due(&front.node.view().read(), &token, now_ms()).ok();
    let id = match found(front) {
        Some(id) => Some(id),
        // Opened a moment ago through another node.
        None if sessions::parse_token(&token).is_some() => {
            front.node.catch_up(std::time::Duration::from_millis(500)).await;
            found(front)
        }
        None => None,
    };
    id.map(|id| (id, token))
}

/// Where a browser whose session waits for its factor is sent.
pub(super) fn factor_url(rd: &str) -> String {
    if rd.is_empty() {
        return "/login/factor".into();
    }
    let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    format!("/login/factor?rd={rd}")
}

/// Who the second step is for: the user, the session it pays or steps
/// up (and its token), and the name shown.
struct For<'a> {
    user_id: &'a str,
    session_id: &'a str,
    token: &'a str,
    username: &'a str,
}

async fn render(
    front: &Front,
    headers: &HeaderMap,
    status: StatusCode,
    rd: &str,
    who: &For<'_>,
    error: Option<&str>,
) -> Response {
    let pages = pages(front);
    let (token, set_cookie) = csrf::token(headers, front.config.secure_cookies);
    let n = nonce();
    let ceremony = Ceremony::Factor { token: who.token, user_id: who.user_id, session_id: who.session_id };
    let passkey = front.sign_in.offer_passkey(front, ceremony).await;
    let scripted = passkey.is_some();
    // Trust is offered on a sign-in's second step, not on a step-up.
    let waiting = sessions::verify_due(&front.node.view().read(), who.token, now_ms()).is_ok();
    let trust_days = front
        .mfa
        .config
        .trusted_device
        .filter(|_| waiting && crate::mfa::devices::offered(front, who.user_id))
        .map(|d| d.as_secs() / 86_400);
    let page = FactorPage {
        brand: pages.brand.view(),
        nonce: &n,
        csrf: &token,
        rd,
        username: who.username,
        error,
        passkey,
        trust_days,
    };
    if scripted {
        html_with_script(pages, status, page.render(), &n, set_cookie)
    } else {
        html(pages, status, page.render(), &n, set_cookie)
    }
}

/// Whose principal `p` is, for [`render`] (an API key has no session: no
/// passkey ceremony is offered to it).
fn principal_for<'a>(p: &'a crate::identity::Principal, token: &'a str) -> For<'a> {
    let session_id = crate::sign_in::passkeys::session_id(p);
    For { user_id: &p.user_id, session_id, token, username: &p.username }
}

/// What the form presented: a passkey's answer when there is one, else
/// the code typed.
fn presented(f: &std::collections::HashMap<&'static str, String>) -> Presented {
    if f["passkey"].is_empty() {
        Presented::Code(f["code"].trim().to_string())
    } else {
        Presented::Passkey { ceremony: f["ceremony"].clone(), response: f["passkey"].clone() }
    }
}

/// Why a presented factor was refused, as the page says it.
fn wrong(presented: &Presented) -> &'static str {
    match presented {
        Presented::Code(_) => "That code is wrong or was used already.",
        Presented::Passkey { .. } => "That passkey was not accepted. Try again, or enter a code.",
    }
}

/// The fields of the second step's forms.
const FIELDS: [(&str, usize); 6] = [
    ("trust", 1),
    ("csrf", 64),
    ("rd", super::return_to::MAX_LEN),
    ("code", crate::mfa::check::MAX_CODE),
    ("ceremony", crate::mfa::passkey::MAX_CEREMONY),
    ("passkey", crate::mfa::passkey::MAX_RESPONSE),
];

/// `GET /login/factor?rd=…`: the code form, for a session that waits for
/// it; anyone else goes to sign in.
pub async fn page(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    headers: HeaderMap,
    Query(q): Query<FactorQuery>,
) -> Response {
    let pages = pages(&front);
    let rd = q.rd.as_deref().and_then(|r| pages.return_domains.check(r)).unwrap_or_default();
    if !front.node.is_fresh() {
        return notice(
            pages,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not available",
            "Signing in is not possible right now. Try again shortly.",
        );
    }
    match waiting(&front, &headers).await {
        // No factor yet (a role requires one): enrolling is the second step.
        Some((id, token)) if !front.node.view().read().has_factor(&id.user_id) => {
            enroll_form(&front, &headers, StatusCode::OK, &rd, &token, None).await
        }
        Some((id, token)) => {
            let who = For { user_id: &id.user_id, session_id: &id.session_id, token: &token, username: &id.username };
            render(&front, &headers, StatusCode::OK, &rd, &who, None).await
        }
        // Signed in: a step-up (a route asks for a fresh factor).
        None => match super::sign_in::session(&front, &headers, client.0, None).await {
            Ok(Some((p, token))) if front.node.view().read().has_factor(&p.user_id) => {
                render(&front, &headers, StatusCode::OK, &rd, &principal_for(&p, &token), None).await
            }
            Ok(Some(_)) => {
                let why = "This page asks for two-step sign-in. Add an authenticator app in your account first.";
                notice(pages, StatusCode::FORBIDDEN, "Two-step sign-in needed", why)
            }
            _ => see_other(&pages.login_url(&rd)),
        },
    }
}

/// A step-up from a signed-in browser: the code makes its session's second
/// factor fresh, and the browser goes back to `rd`.
async fn step_up(
    front: &Front,
    client: std::net::IpAddr,
    headers: &HeaderMap,
    rd: &str,
    presented: &Presented,
) -> Response {
    let pages = pages(front);
    let Ok(Some((p, token))) = super::sign_in::session(front, headers, client, None).await else {
        // Over (the wait passed) or never begun: sign in again.
        return see_other(&pages.login_url(rd));
    };
    let who = principal_for(&p, &token);
    let who = &who;
    let again = move |status, why: &'static str| {
        tracing::Span::current().record("outcome", "refused");
        render(front, headers, status, rd, who, Some(why))
    };
    if presented.is_empty() {
        return again(StatusCode::BAD_REQUEST, "Enter the code.").await;
    }
    match front.sign_in.step_up(front, &p, &token, presented, client).await {
        Ok(()) => {
            tracing::Span::current().record("outcome", "ok");
            see_other(if rd.is_empty() { "/account" } else { rd })
        }
        Err(ApiError::InvalidSecondFactor) => again(StatusCode::UNAUTHORIZED, wrong(presented)).await,
        Err(ApiError::SecondFactorLocked) => {
            let why = "Too many wrong codes: your second factor is locked for a while. Try again later.";
            again(StatusCode::FORBIDDEN, why).await
        }
        Err(ApiError::RateLimited(_)) => {
            again(StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Wait a minute, then try again.").await
        }
        Err(e) => {
            tracing::warn!(error = %e, "a step-up failed");
            let status = axum::response::IntoResponse::into_response(e).status();
            again(status, "This is not possible right now. Try again shortly.").await
        }
    }
}

/// The first enrollment's form, with a fresh secret, for the waiting
/// session of `token`.
async fn enroll_form(
    front: &Front,
    headers: &HeaderMap,
    status: StatusCode,
    rd: &str,
    token: &str,
    error: Option<&str>,
) -> Response {
    let pages = pages(front);
    let Some(p) = crate::mfa::check::waiting_principal(&front.node, token) else {
        return see_other(&pages.login_url(rd));
    };
    let offer = match front.sign_in.offer_totp(front, &p, token).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "offering a first authenticator failed");
            let why =
                "Your role requires two-step sign-in, and it cannot be set up here right now. Ask your administrator.";
            return notice(pages, StatusCode::SERVICE_UNAVAILABLE, "Not available", why);
        }
    };
    let (csrf, set_cookie) = csrf::token(headers, front.config.secure_cookies);
    let n = nonce();
    let page = EnrollPage {
        brand: pages.brand.view(),
        nonce: &n,
        csrf: &csrf,
        rd,
        username: &p.username,
        error,
        qr_svg: &offer.qr_svg,
        secret: &offer.secret,
        sealed: &offer.sealed,
    };
    let mut resp = html(pages, status, page.render(), &n, set_cookie);
    resp.headers_mut().insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    resp
}

/// `POST /login/factor/enroll` (`csrf`, `rd`, `sealed`, `ticket`, `code`):
/// a waiting session's first factor, with the admin's enrollment ticket.
/// The recovery codes are shown once, with the session's new cookie.
#[tracing::instrument(level = "info", name = "page.factor_enroll", skip_all, fields(outcome))]
pub async fn enroll(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pages = pages(&front);
    let expected = [
        ("csrf", 64),
        ("rd", super::return_to::MAX_LEN),
        ("sealed", crate::mfa::check::MAX_SEALED_FORM),
        ("ticket", crate::mfa::check::MAX_TICKET),
        ("code", crate::mfa::check::MAX_CODE),
    ];
    let Some(f) = form::fields(&body, &expected) else { return expired_form(pages) };
    if !csrf::check(&headers, front.config.secure_cookies, &f["csrf"], csrf::authority(&headers, &uri)) {
        return expired_form(pages);
    }
    let rd = pages.return_domains.check(&f["rd"]).unwrap_or_default();
    if !front.node.ensure_fresh().await {
        return notice(
            pages,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not available",
            "Signing in is not possible right now. Try again shortly.",
        );
    }
    let Some((_, token)) = waiting(&front, &headers).await else { return see_other(&pages.login_url(&rd)) };
    let again = |status, why: &'static str| {
        tracing::Span::current().record("outcome", "refused");
        let (front, headers, rd, token) = (front.clone(), headers.clone(), rd.clone(), token.clone());
        async move { enroll_form(&front, &headers, status, &rd, &token, Some(why)).await }
    };
    let done = front.sign_in.enroll_waiting(&front, &token, &f["sealed"], &f["code"], &f["ticket"], client.0).await;
    let (opened, codes) = match done {
        Ok(x) => x,
        Err(ApiError::InvalidSecondFactor) => {
            return again(StatusCode::UNAUTHORIZED, "The code or the enrollment ticket is not right.").await
        }
        Err(ApiError::InvalidArgument(_)) => {
            return again(StatusCode::BAD_REQUEST, "This form has expired. Scan the new code.").await
        }
        Err(ApiError::RateLimited(_)) => {
            return again(StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Wait a minute, then try again.").await
        }
        Err(ApiError::Unauthenticated) => return see_other(&pages.login_url(&rd)),
        Err(e) => {
            tracing::warn!(error = %e, "a first enrollment failed");
            return notice(
                pages,
                StatusCode::SERVICE_UNAVAILABLE,
                "Not available",
                "Signing in is not possible right now. Try again shortly.",
            );
        }
    };
    tracing::Span::current().record("outcome", "ok");
    let n = nonce();
    let message = "Two-step sign-in is on, and you are signed in.";
    let page = CodesPage { brand: pages.brand.view(), nonce: &n, message, codes: &codes };
    let mut resp = html(pages, StatusCode::OK, page.render(), &n, None);
    let max_age = opened.expires_at.saturating_sub(now_ms()).div_ceil(1000);
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    h.append(header::SET_COOKIE, crate::http::session::session_cookie(&front, &opened.token, max_age));
    resp
}

/// `POST /login/factor` (`csrf`, `rd`, `code`): the session's new cookie
/// and on to `rd` (or `/account`), or the form again with why.
#[tracing::instrument(level = "info", name = "page.factor", skip_all, fields(outcome))]
pub async fn submit(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pages = pages(&front);
    let Some(f) = form::fields(&body, &FIELDS) else { return expired_form(pages) };
    if !csrf::check(&headers, front.config.secure_cookies, &f["csrf"], csrf::authority(&headers, &uri)) {
        tracing::Span::current().record("outcome", "csrf");
        return expired_form(pages);
    }
    let rd = pages.return_domains.check(&f["rd"]).unwrap_or_default();
    if !front.node.ensure_fresh().await {
        return notice(
            pages,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not available",
            "Signing in is not possible right now. Try again shortly.",
        );
    }
    let presented = presented(&f);
    let Some((id, token)) = waiting(&front, &headers).await else {
        return step_up(&front, client.0, &headers, &rd, &presented).await;
    };
    let who = For { user_id: &id.user_id, session_id: &id.session_id, token: &token, username: &id.username };
    let (fr, hd, rdr, who) = (&front, &headers, &rd, &who);
    let again = move |status, why: &'static str| {
        tracing::Span::current().record("outcome", "refused");
        render(fr, hd, status, rdr, who, Some(why))
    };
    if presented.is_empty() {
        return again(StatusCode::BAD_REQUEST, "Enter the code.").await;
    }
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    // "Trust this browser": a device token for its cookie, its hash sent
    // with the factor (where trust is on).
    let ttl = front.mfa.config.trusted_device.filter(|_| f["trust"] == "1");
    let device = ttl.map(|_| crate::mfa::devices::mint(user_agent));
    let trust = device.as_ref().map(|(_, t)| t);
    match front.sign_in.present_factor(&front, &token, &presented, client.0, trust).await {
        Ok(opened) => {
            tracing::Span::current().record("outcome", "ok");
            let max_age = opened.expires_at.saturating_sub(now_ms()).div_ceil(1000);
            let mut resp = see_other(if rd.is_empty() { "/account" } else { &rd });
            let h = resp.headers_mut();
            h.append(header::SET_COOKIE, crate::http::session::session_cookie(&front, &opened.token, max_age));
            if let (Some((device, _)), Some(ttl)) = (&device, ttl) {
                h.append(header::SET_COOKIE, crate::mfa::devices::cookie(&front, device, ttl.as_secs()));
            }
            resp
        }
        Err(ApiError::InvalidSecondFactor) => again(StatusCode::UNAUTHORIZED, wrong(&presented)).await,
        Err(ApiError::SecondFactorLocked) => {
            let why = "Too many wrong codes: your second factor is locked for a while. Try again later.";
            again(StatusCode::FORBIDDEN, why).await
        }
        Err(ApiError::RateLimited(_)) => {
            again(StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Wait a minute, then try again.").await
        }
        Err(ApiError::Unauthenticated) => see_other(&pages.login_url(&rd)),
        Err(e) => {
            tracing::warn!(error = %e, "a second factor could not be checked");
            let status = axum::response::IntoResponse::into_response(e).status();
            again(status, "Signing in is not possible right now. Try again shortly.").await
        }
    }
}
