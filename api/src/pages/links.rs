//! Sign-in links on the pages: `POST /login/email` asks for one, `GET
//! /login/link` shows the confirmation, `POST /login/link` spends it.
//!
//! Asking sets a cookie of this browser (`__Host-gatehouse_link`: 256
//! random bits, `HttpOnly`, `SameSite=Strict`, host-only) whose SHA-256
//! the link is bound to; the answer is the same page whether or not the
//! address has an account. Opening the link only shows a page with one
//! button, since mail scanners fetch links: the POST from it spends the
//! link, in this browser only, once on the whole cluster
//! ([`crate::sign_in::links`]). The confirmation page sends no referrer,
//! so the token in its address goes nowhere.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;

use super::render::{html, nonce, BrandView, PagesConfig};
use super::sign_in::{expired_form, notice, session};
use super::{csrf, form};
use crate::http::client_ip::ClientIp;
use crate::http::front::Front;
use crate::sign_in::links::{Refused, MAX_EMAIL};
use crate::sign_in::{LinkRequest, LinkSpend};
use crate::ApiError;

/// The link cookie's name: host-bound when it is `Secure`.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-gatehouse_link"
    } else {
        "gatehouse_link"
    }
}

/// This browser's link secret (a new one when it had none), and the
/// `Set-Cookie` that keeps it for the new link's whole lifetime.
fn browser_secret(headers: &HeaderMap, secure: bool, ttl_secs: u64) -> (String, HeaderValue) {
    let well_formed = |t: &String| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit());
    let secret = crate::http::caller::cookie(headers, cookie_name(secure))
        .filter(well_formed)
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 32]>()));
    let attrs = if secure { "; Secure" } else { "" };
    let cookie =
        format!("{}={secret}; Path=/; Max-Age={ttl_secs}; HttpOnly; SameSite=Strict{attrs}", cookie_name(secure));
    let header = HeaderValue::from_str(&cookie).expect("hex is header-safe");
    (secret, header)
}

fn sha256(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

fn pages(front: &Front) -> &PagesConfig {
    front.config.pages.as_deref().expect("the page routes exist only with [pages]")
}

fn links_off(pages: &PagesConfig) -> Response {
    notice(pages, StatusCode::NOT_FOUND, "Not available", "Signing in with an email link is not offered here.")
}

fn unreadable(pages: &PagesConfig) -> Response {
    notice(pages, StatusCode::BAD_REQUEST, "Please try again", "The form could not be read. Open the page again.")
}

/// `POST /login/email` (`csrf`, `rd`, `email`): "check your mail", the same
/// for every address; the link cookie when the browser had none.
#[tracing::instrument(level = "info", name = "page.link_request", skip_all, fields(outcome))]
pub async fn request(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pages = pages(&front);
    let Some(settings) = &pages.links else { return links_off(pages) };
    let expected = [("csrf", 64), ("rd", super::return_to::MAX_LEN), ("email", MAX_EMAIL)];
    let Some(f) = form::fields(&body, &expected) else { return unreadable(pages) };
    if !csrf::check(&headers, front.config.secure_cookies, &f["csrf"], csrf::authority(&headers, &uri)) {
        tracing::Span::current().record("outcome", "csrf");
        return expired_form(pages);
    }
    let rd = pages.return_domains.check(&f["rd"]).unwrap_or_default();
    let email = f["email"].trim();
    if email.is_empty() || gatehouse_domain::users::validate_email(email).is_err() {
        let why = "Enter your email address, like name@example.com.";
        return super::sign_in::render_with_email(&front, &headers, StatusCode::BAD_REQUEST, &rd, email, why).await;
    }
    let (secret, set_cookie) = browser_secret(&headers, front.config.secure_cookies, settings.ttl.as_secs());
    let req =
        LinkRequest { email: email.to_string(), browser_sha256: sha256(&secret), client_ip: client.0, return_to: rd };
    let refused = |status, why: &str| {
        tracing::Span::current().record("outcome", "refused");
        notice(pages, status, "Please try again", why)
    };
    if let Err(e) = front.sign_in.request_link(&front, req).await {
        return match e {
            ApiError::RateLimited(_) => {
                refused(StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Wait a minute, then try again.")
            }
            e => {
                tracing::warn!(error = %e, "a sign-in link could not be asked for");
                refused(StatusCode::SERVICE_UNAVAILABLE, "Sending a link is not possible right now. Try again shortly.")
            }
        };
    }
    tracing::Span::current().record("outcome", "ok");
    let minutes = settings.ttl.as_secs().div_ceil(60);
    let message = format!(
        "If this address belongs to an account, a sign-in link is on its way. Open it in this browser within \
         {minutes} minutes."
    );
    let mut resp = notice(pages, StatusCode::OK, "Check your email", &message);
    resp.headers_mut().append(header::SET_COOKIE, set_cookie);
    resp
}

#[derive(Deserialize)]
pub struct LinkQuery {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    rd: Option<String>,
}

#[derive(Template)]
#[template(path = "link.html")]
struct ConfirmPage<'a> {
    brand: BrandView<'a>,
    nonce: &'a str,
    csrf: &'a str,
    token: &'a str,
    rd: &'a str,
}

/// `GET /login/link?token=…&rd=…`: one button that spends the link. Mail
/// scanners that fetch the link spend nothing.
pub async fn confirm(State(front): State<Front>, headers: HeaderMap, Query(q): Query<LinkQuery>) -> Response {
    let pages = pages(&front);
    if pages.links.is_none() {
        return links_off(pages);
    }
    let Some(token) = q.token.as_deref().and_then(gatehouse_domain::links::parse_token) else {
        return notice(
            pages,
            StatusCode::BAD_REQUEST,
            "Link not valid",
            "This sign-in link is not complete. Open it from the mail again, or ask for a new one.",
        );
    };
    let rd = q.rd.as_deref().and_then(|r| pages.return_domains.check(r)).unwrap_or_default();
    let (csrf, set_cookie) = csrf::token(&headers, front.config.secure_cookies);
    let n = nonce();
    let page = ConfirmPage { brand: pages.brand.view(), nonce: &n, csrf: &csrf, token, rd: &rd };
    let mut resp = html(pages, StatusCode::OK, page.render(), &n, set_cookie);
    // The token is in this page's address: no referrer leaves it.
    resp.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// `POST /login/link` (`csrf`, `token`, `rd`): spends the link in this
/// browser, sets the session cookie and goes on to `rd` (or `/account`).
#[tracing::instrument(level = "info", name = "page.link_spend", skip_all, fields(outcome))]
pub async fn spend(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pages = pages(&front);
    if pages.links.is_none() {
        return links_off(pages);
    }
    let expected = [("csrf", 64), ("rd", super::return_to::MAX_LEN), ("token", 64)];
    let Some(f) = form::fields(&body, &expected) else { return unreadable(pages) };
    if !csrf::check(&headers, front.config.secure_cookies, &f["csrf"], csrf::authority(&headers, &uri)) {
        tracing::Span::current().record("outcome", "csrf");
        return expired_form(pages);
    }
    let rd = pages.return_domains.check(&f["rd"]).unwrap_or_default();
    let said = |status, title: &str, why: &str| {
        tracing::Span::current().record("outcome", "refused");
        notice(pages, status, title, why)
    };
    let other_browser = || {
        said(
            StatusCode::FORBIDDEN,
            "Open the link where you asked for it",
            "This link signs in only the browser it was asked for in. Open it there, or ask for a new one here.",
        )
    };
    let Some(secret) = crate::http::caller::cookie(&headers, cookie_name(front.config.secure_cookies)) else {
        return other_browser();
    };
    if !front.node.ensure_fresh().await {
        return said(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not signed in",
            "Signing in is not possible right now. Try again shortly.",
        );
    }
    let before = session(&front, &headers, client.0, None).await.ok().flatten();
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let spend =
        LinkSpend { token: f["token"].clone(), browser_sha256: sha256(&secret), client_ip: client.0, user_agent };
    let opened = match front.sign_in.spend_link(&front, spend).await {
        Ok(o) => o,
        Err(e) => {
            let gone = StatusCode::GONE;
            return match (Refused::of(&e), e) {
                (Some(Refused::Unknown), _) => said(
                    gone,
                    "Link already used",
                    "This sign-in link was used already or is not valid. Each link works once: ask for a new one.",
                ),
                (Some(Refused::Expired), _) => {
                    said(gone, "Link expired", "This sign-in link has expired. Ask for a new one.")
                }
                (Some(Refused::OtherBrowser), _) => other_browser(),
                (Some(Refused::Disabled), _) => {
                    said(StatusCode::FORBIDDEN, "Not signed in", "This account cannot sign in. Ask your administrator.")
                }
                (None, ApiError::RateLimited(_)) => said(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Please wait",
                    "Too many attempts. Wait a minute, then try again.",
                ),
                (None, e) => {
                    tracing::warn!(error = %e, "spending a sign-in link failed");
                    said(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Not signed in",
                        "Signing in is not possible right now. Try again shortly.",
                    )
                }
            };
        }
    };
    tracing::Span::current().record("outcome", "ok");
    super::sign_in::signed_in(&front, client.0, before, &opened, &rd).await
}
