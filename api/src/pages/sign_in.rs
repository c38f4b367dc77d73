//! `GET /login`, `POST /login`, `POST /logout`: a person signs in with a
//! password in a plain HTML form and lands where they were going.
//!
//! The return URL (`rd`) is checked when the page is shown and again when
//! the form comes back ([`super::return_to`]); one that is not allowed is
//! dropped (the browser lands on `/account`), never followed. Wrong
//! username and wrong password get one answer. The login itself is the
//! JSON API's ([`crate::sign_in::SignIn::login`]): the same argon2id check,
//! lockout, limits (a form login counts as `/api/v1/login` for rate-limit
//! policies) and audit.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;

use super::render::{html, html_with_script, nonce, see_other, BrandView, PagesConfig};
use super::{csrf, form};
use crate::http::caller::credential;
use crate::http::client_ip::ClientIp;
use crate::http::front::Front;
use crate::identity::{Principal, Via};
use crate::rate_limit::limiter::RequestLimits;
use crate::sign_in::passkeys::Ceremony;
use crate::sign_in::Attempt;
use crate::ApiError;

/// The request's rate-limit context, as the limiter layer left it.
pub(super) type Limits = Option<Extension<RequestLimits>>;

/// The person this browser is signed in as: a session from the session
/// cookie only. (A cookie holding anything else, say an API key planted by
/// a sibling subdomain, is no sign-in.) `Ok(None)`: not signed in.
pub(super) async fn session(
    front: &Front,
    headers: &HeaderMap,
    client: std::net::IpAddr,
    limits: Option<&RequestLimits>,
) -> Result<Option<(Principal, String)>, ApiError> {
    let Some((token, true)) = credential(headers, &front.config.cookie_name) else { return Ok(None) };
    match crate::http::caller::authenticate(front, headers, client, limits, false).await {
        Ok((p, _)) if matches!(p.via, Via::Session { .. }) => Ok(Some((p, token))),
        Ok(_) | Err(ApiError::Unauthenticated) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The longest username and password a form may carry.
const MAX_USERNAME: usize = 128;
const MAX_PASSWORD: usize = 1024;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    brand: BrandView<'a>,
    nonce: &'a str,
    csrf: &'a str,
    rd: &'a str,
    username: &'a str,
    error: Option<&'a str>,
    notice: Option<&'a str>,
    signed_in: Option<&'a str>,
    /// The "email me a link" form is offered.
    links: bool,
    /// The password form is shown.
    password: bool,
    /// A button per upstream provider: (start URL, label).
    providers: Vec<(String, String)>,
    email: &'a str,
    email_error: Option<&'a str>,
    /// A passkey sign-in ceremony, when this node runs them.
    passkey: Option<crate::mfa::passkey::Offer>,
}

#[derive(Template)]
#[template(path = "notice.html")]
pub(super) struct Notice<'a> {
    pub brand: BrandView<'a>,
    pub nonce: &'a str,
    pub title: &'a str,
    pub message: &'a str,
    pub error: bool,
}

/// A page that says one thing (an expired form, a cluster that cannot
/// answer), with a link back to sign in.
pub(super) fn notice(pages: &PagesConfig, status: StatusCode, title: &str, message: &str) -> Response {
    let n = nonce();
    let page = Notice {
        brand: pages.brand.view(),
        nonce: &n,
        title,
        message,
        error: status.is_client_error() || status.is_server_error(),
    };
    html(pages, status, page.render(), &n, None)
}

/// The answer to a form whose CSRF proof failed.
pub(super) fn expired_form(pages: &PagesConfig) -> Response {
    notice(
        pages,
        StatusCode::FORBIDDEN,
        "Please try again",
        "This form has expired or was sent from another site. Open the page again and resubmit it.",
    )
}

#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    rd: Option<String>,
    /// What just happened (a fixed word: never echoed).
    #[serde(default)]
    done: Option<String>,
    /// `1`: show the password form even when providers-only (break glass).
    #[serde(default)]
    local: Option<String>,
}

fn pages(front: &Front) -> &PagesConfig {
    front.config.pages.as_deref().expect("the page routes exist only with [pages]")
}

/// `GET /login?rd=…`: the sign-in form.
pub async fn page(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let pages = pages(&front);
    let rd = q.rd.as_deref().and_then(|r| pages.return_domains.check(r)).unwrap_or_default();
    // Who this browser is signed in as, when it is.
    let signed_in = if front.node.is_fresh() {
        session(&front, &headers, client.0, None).await.ok().flatten().map(|(p, _)| p.username)
    } else {
        None
    };
    let notice = match q.done.as_deref() {
        Some("signed_out") => Some("You are signed out."),
        _ => None,
    };
    let local = q.local.as_deref() == Some("1");
    let form = Form {
        username: "",
        error: None,
        notice,
        signed_in: signed_in.as_deref(),
        email: "",
        email_error: None,
        local,
    };
    render_form(&front, &headers, StatusCode::OK, &rd, form).await
}

/// The sign-in form; `said` is an error, or else maybe a notice.
async fn render(
    front: &Front,
    headers: &HeaderMap,
    status: StatusCode,
    rd: &str,
    username: &str,
    said: Result<&str, Option<&str>>,
    signed_in: Option<&str>,
) -> Response {
    let (error, notice) = match said {
        Ok(error) => (Some(error), None),
        Err(notice) => (None, notice),
    };
    // A password was just posted: the form stays.
    let form = Form { username, error, notice, signed_in, email: "", email_error: None, local: true };
    render_form(front, headers, status, rd, form).await
}

/// The sign-in form with an error in its email part.
pub(super) async fn render_with_email(
    front: &Front,
    headers: &HeaderMap,
    status: StatusCode,
    rd: &str,
    email: &str,
    error: &str,
) -> Response {
    let form = Form {
        username: "",
        error: None,
        notice: None,
        signed_in: None,
        email,
        email_error: Some(error),
        local: false,
    };
    render_form(front, headers, status, rd, form).await
}

/// What the sign-in form shows beside the brand and its tokens.
struct Form<'a> {
    username: &'a str,
    error: Option<&'a str>,
    notice: Option<&'a str>,
    signed_in: Option<&'a str>,
    email: &'a str,
    email_error: Option<&'a str>,
    /// The break-glass password form was asked for.
    local: bool,
}

async fn render_form(front: &Front, headers: &HeaderMap, status: StatusCode, rd: &str, f: Form<'_>) -> Response {
    let passkey = front.sign_in.offer_passkey(front, Ceremony::SignIn).await;
    let pages = pages(front);
    let (token, set_cookie) = csrf::token(headers, front.config.secure_cookies);
    let n = nonce();
    let page = LoginPage {
        brand: pages.brand.view(),
        nonce: &n,
        csrf: &token,
        rd,
        username: f.username,
        error: f.error,
        notice: f.notice,
        signed_in: f.signed_in,
        links: pages.links.is_some(),
        password: pages.password_form || f.local,
        providers: pages
            .providers
            .iter()
            .map(|(id, name)| {
                let mut url = format!("/login/sso/{id}");
                if !rd.is_empty() {
                    url += "?rd=";
                    url.extend(url::form_urlencoded::byte_serialize(rd.as_bytes()));
                }
                (url, name.clone())
            })
            .collect(),
        email: f.email,
        email_error: f.email_error,
        passkey,
    };
    match page.passkey {
        Some(_) => html_with_script(pages, status, page.render(), &n, set_cookie),
        None => html(pages, status, page.render(), &n, set_cookie),
    }
}

/// `POST /login/passkey` (`csrf`, `rd`, `ceremony`, `passkey`): a sign-in
/// with a passkey alone (its answer to the login page's ceremony): a
/// session cookie and on to `rd`, or the login page again with why. Counts
/// as a login for rate-limit policies; a refused answer counts against the
/// address like a wrong password (the rate-limit layer counts its 401).
#[tracing::instrument(level = "info", name = "page.login_passkey", skip_all, fields(outcome))]
pub async fn passkey(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use crate::mfa::passkey::{MAX_CEREMONY, MAX_RESPONSE};
    let pages = pages(&front);
    let expected =
        [("csrf", 64), ("rd", super::return_to::MAX_LEN), ("ceremony", MAX_CEREMONY), ("passkey", MAX_RESPONSE)];
    let Some(f) = form::fields(&body, &expected) else { return expired_form(pages) };
    if !csrf::check(&headers, front.config.secure_cookies, &f["csrf"], csrf::authority(&headers, &uri)) {
        tracing::Span::current().record("outcome", "csrf");
        return expired_form(pages);
    }
    let rd = pages.return_domains.check(&f["rd"]).unwrap_or_default();
    let (fr, hd, rdr) = (&front, &headers, &rd);
    let refused = move |status, why: &'static str| {
        tracing::Span::current().record("outcome", "refused");
        render(fr, hd, status, rdr, "", Ok(why), None)
    };
    if !crate::sign_in::passkeys::offered(&front) {
        return refused(StatusCode::CONFLICT, "Passkeys are not available here. Sign in another way.").await;
    }
    if f["passkey"].is_empty() || f["ceremony"].is_empty() {
        return refused(StatusCode::BAD_REQUEST, "The passkey was not used. Try again.").await;
    }
    if !front.node.ensure_fresh().await {
        let why = "Signing in is not possible right now. Try again shortly.";
        return refused(StatusCode::SERVICE_UNAVAILABLE, why).await;
    }
    let before = session(&front, &headers, client.0, None).await.ok().flatten();
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    match front.sign_in.passkey_sign_in(&front, &f["ceremony"], &f["passkey"], client.0, user_agent).await {
        Ok(opened) => {
            tracing::Span::current().record("outcome", "ok");
            signed_in(&front, client.0, before, &opened, &rd).await
        }
        // A 401 here counts against the address (the rate-limit layer).
        Err(ApiError::InvalidCredentials) => {
            let why = "That passkey was not accepted. Try again, or sign in another way.";
            refused(StatusCode::UNAUTHORIZED, why).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "a passkey sign-in failed");
            let status = axum::response::IntoResponse::into_response(e).status();
            refused(status, "Signing in is not possible right now. Try again shortly.").await
        }
    }
}

/// `POST /login` (`csrf`, `rd`, `username`, `password`): a session cookie
/// and a redirect to `rd` (or `/account`), or the form again with why.
#[tracing::instrument(level = "info", name = "page.login", skip_all, fields(outcome))]
pub async fn submit(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pages = pages(&front);
    let expected =
        [("csrf", 64), ("rd", super::return_to::MAX_LEN), ("username", MAX_USERNAME), ("password", MAX_PASSWORD)];
    let Some(f) = form::fields(&body, &expected) else {
        return notice(
            pages,
            StatusCode::BAD_REQUEST,
            "Please try again",
            "The form could not be read. Open the page again and resubmit it.",
        );
    };
    if !csrf::check(&headers, front.config.secure_cookies, &f["csrf"], csrf::authority(&headers, &uri)) {
        tracing::Span::current().record("outcome", "csrf");
        return expired_form(pages);
    }
    let rd = pages.return_domains.check(&f["rd"]).unwrap_or_default();
    let username = f["username"].trim();
    if username.is_empty() || f["password"].is_empty() {
        let why = "Enter your username and password.";
        return render(&front, &headers, StatusCode::BAD_REQUEST, &rd, username, Ok(why), None).await;
    }
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let attempt = Attempt {
        username: username.to_string(),
        password: f["password"].clone(),
        client_ip: client.0,
        user_agent,
        second_factor: None,
        factor_later: true,
        device_token: crate::mfa::devices::token(&front, &headers),
    };
    let (fr, hd, rdr) = (&front, &headers, &rd);
    let refused = move |status, why: &'static str| {
        tracing::Span::current().record("outcome", "refused");
        render(fr, hd, status, rdr, username, Ok(why), None)
    };
    if !front.node.ensure_fresh().await {
        let why = "Signing in is not possible right now. Try again shortly.";
        return refused(StatusCode::SERVICE_UNAVAILABLE, why).await;
    }
    // A session this browser already has ends when the new one starts: a
    // sign-in never leaves an older session (maybe another person's) behind.
    let before = session(&front, &headers, client.0, None).await.ok().flatten();
    let opened = match front.sign_in.login(&front, attempt).await {
        Ok(o) => o,
        Err(ApiError::InvalidCredentials | ApiError::Unauthenticated) => {
            return refused(StatusCode::UNAUTHORIZED, "Wrong username or password.").await
        }
        Err(ApiError::RateLimited(_)) => {
            return refused(StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Wait a minute, then try again.").await
        }
        Err(ApiError::PermissionDenied(_)) => {
            return refused(StatusCode::FORBIDDEN, "This account cannot sign in. Ask your administrator.").await
        }
        Err(e) => {
            let status = axum::response::IntoResponse::into_response(e).status();
            return refused(status, "Signing in is not possible right now. Try again shortly.").await;
        }
    };
    tracing::Span::current().record("outcome", "ok");
    signed_in(&front, client.0, before, &opened, &rd).await
}

/// A sign-in went through: the session this browser had before (`before`)
/// ends, the new one's cookie is set, and the browser goes on to `rd` (or
/// `/account`).
pub(super) async fn signed_in(
    front: &Front,
    client: std::net::IpAddr,
    before: Option<(Principal, String)>,
    opened: &crate::sign_in::Opened,
    rd: &str,
) -> Response {
    if let Some((p, token)) = before {
        if let Err(e) = front.sign_in.logout(&front.node, &p, &token, client).await {
            tracing::warn!(error = %e, "ending the session a sign-in replaced failed");
        }
    }
    let max_age = opened.expires_at.saturating_sub(gatehouse_cluster::clock::now_ms()).div_ceil(1000);
    // A person with a second factor gives it next: the session (opened by
    // any first factor) waits for it and opens nothing else meanwhile.
    let due = opened.factor_due || front.node.view().read().session(&opened.session_id).is_some_and(|s| s.factor_due);
    let mut resp = if due {
        see_other(&super::second_factor::factor_url(rd))
    } else {
        see_other(if rd.is_empty() { "/account" } else { rd })
    };
    resp.headers_mut().append(header::SET_COOKIE, crate::http::session::session_cookie(front, &opened.token, max_age));
    resp
}

/// `POST /logout` (`csrf`): ends this browser's session, clears its cookie.
pub async fn logout(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pages = pages(&front);
    let Some(f) = form::fields(&body, &[("csrf", 64)]) else { return expired_form(pages) };
    if !csrf::check(&headers, front.config.secure_cookies, &f["csrf"], csrf::authority(&headers, &uri)) {
        return expired_form(pages);
    }
    let cookie_sent = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(';').any(|pair| pair.trim().starts_with(&format!("{}=", front.config.cookie_name))));
    let clear = |mut resp: Response| {
        resp.headers_mut().append(header::SET_COOKIE, crate::http::session::session_cookie(&front, "", 0));
        resp
    };
    let unavailable = || {
        notice(
            pages,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not signed out",
            "Signing out is not possible right now. Try again shortly.",
        )
    };
    match session(&front, &headers, client.0, limits.as_deref()).await {
        Ok(Some((p, token))) => {
            if let Err(e) = front.sign_in.logout(&front.node, &p, &token, client.0).await {
                tracing::warn!(error = %e, "signing out failed");
                return unavailable();
            }
        }
        // Two session cookies (one planted by a sibling subdomain): which
        // session is this person's cannot be told, so none is ended.
        Ok(None) if cookie_sent && credential(&headers, &front.config.cookie_name).is_none() => {
            let why = "Your browser holds two sign-in cookies for this site, so which session to end cannot be \
                       told. Clear this site's cookies in your browser.";
            return clear(notice(pages, StatusCode::BAD_REQUEST, "Not signed out", why));
        }
        // A session still waiting for its second factor (the second step's
        // "cancel") ends too.
        Ok(None) if super::second_factor::waiting(&front, &headers).await.is_some() => {
            let (token, _) = credential(&headers, &front.config.cookie_name).unwrap_or_default();
            let Some(p) = crate::mfa::check::waiting_principal(&front.node, &token) else { return unavailable() };
            if let Err(e) = front.sign_in.logout(&front.node, &p, &token, client.0).await {
                tracing::warn!(error = %e, "ending a session that waited for its factor failed");
                return unavailable();
            }
        }
        // No session (over, or never): the cookie is cleared all the same.
        Ok(None) => {}
        Err(_) => return unavailable(),
    }
    clear(see_other("/login?done=signed_out"))
}
