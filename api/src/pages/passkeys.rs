//! A person's passkeys on "my account": listed, added (a WebAuthn
//! registration run by the page's one script, with the password again),
//! renamed, and removed (the password and a fresh second factor).
//!
//! | route | what it does |
//! |---|---|
//! | `GET /account/passkeys` | the list, and a fresh registration ceremony |
//! | `POST /account/passkeys` (`name`, `password`, `ceremony`, `passkey`) | adds one; recovery codes when it is the first factor |
//! | `POST /account/passkeys/rename` (`id`, `name`) | renames one |
//! | `POST /account/passkeys/remove` (`id`, `password`, `code`) | removes one |
//!
//! Ceremonies run on a voter ([`crate::mfa::passkey`]): their state is
//! sealed with the voters' key; a stateless front asks a voter for each
//! one and sends every change on to it (`crate::sign_in::passkeys`).

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;

use super::account::{posted, signed_in, unavailable, when};
use super::render::{html, html_with_script, nonce, see_other, BrandView, PagesConfig};
use super::sign_in::Limits;
use crate::http::client_ip::ClientIp;
use crate::http::front::Front;
use crate::identity::Principal;
use crate::mfa::passkey::{self, Offer, MAX_CEREMONY, MAX_RESPONSE};
use crate::sign_in::own;
use crate::sign_in::passkeys::{Ceremony, NewPasskey};
use crate::ApiError;

struct Row {
    id: String,
    name: String,
    added: String,
    used: String,
}

#[derive(Template)]
#[template(path = "passkeys.html")]
struct PasskeysPage<'a> {
    brand: BrandView<'a>,
    nonce: &'a str,
    csrf: &'a str,
    error: Option<&'a str>,
    done: Option<&'a str>,
    passkeys: Vec<Row>,
    offer: Option<Offer>,
    needs_password: bool,
    /// The person has a second factor: adding a passkey asks for it.
    has_factor: bool,
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
pub struct Done {
    #[serde(default)]
    done: Option<String>,
}

fn pages(front: &Front) -> &PagesConfig {
    front.config.pages.as_deref().expect("the page routes exist only with [pages]")
}

/// The page for `p` (the session of `token`): their passkeys and a fresh
/// ceremony to add one.
async fn render(
    front: &Front,
    headers: &HeaderMap,
    (p, token): (&Principal, &str),
    status: StatusCode,
    error: Option<&str>,
    done: Option<&str>,
) -> Response {
    let pages = pages(front);
    let offer = front.sign_in.offer_passkey(front, Ceremony::Register { p, token }).await;
    let passkeys = passkey::list(&front.node, &p.user_id)
        .into_iter()
        .map(|k| Row {
            id: k.id,
            name: k.name,
            added: when(k.created_at),
            used: if k.last_used_at == 0 { "never".into() } else { when(k.last_used_at) },
        })
        .collect();
    let (csrf, set_cookie) = super::csrf::token(headers, front.config.secure_cookies);
    let n = nonce();
    let scripted = offer.is_some();
    let page = PasskeysPage {
        brand: pages.brand.view(),
        nonce: &n,
        csrf: &csrf,
        error,
        done,
        passkeys,
        offer,
        needs_password: own::has_password(front, p),
        has_factor: front.node.view().read().has_factor(&p.user_id),
    };
    if scripted {
        html_with_script(pages, status, page.render(), &n, set_cookie)
    } else {
        html(pages, status, page.render(), &n, set_cookie)
    }
}

/// `GET /account/passkeys`.
pub async fn page(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    headers: HeaderMap,
    Query(q): Query<Done>,
) -> Response {
    let (p, token) = match signed_in(&front, &headers, client.0, limits.as_deref()).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let done = match q.done.as_deref() {
        Some("added") => Some("Your passkey is added."),
        Some("renamed") => Some("Your passkey is renamed."),
        Some("removed") => Some("Your passkey is removed."),
        _ => None,
    };
    render(&front, &headers, (&p, &token), StatusCode::OK, None, done).await
}

/// What a refused change tells the person, and its status.
fn refusal(front: &Front, p: &Principal, e: &ApiError) -> Option<(StatusCode, &'static str)> {
    Some(match e {
        ApiError::PermissionDenied(_) if own::has_password(front, p) => {
            (StatusCode::FORBIDDEN, "Enter your password to change your passkeys.")
        }
        ApiError::PermissionDenied(_) => {
            (StatusCode::FORBIDDEN, "Sign in again first: your passkeys change only from a recent sign-in.")
        }
        ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "Your password is not right."),
        ApiError::InvalidSecondFactor => (StatusCode::UNAUTHORIZED, "The passkey or the code was not accepted."),
        ApiError::SecondFactorRequired => {
            (StatusCode::FORBIDDEN, "Enter a code from your app or a recovery code, or sign in again first.")
        }
        ApiError::SecondFactorLocked => {
            (StatusCode::FORBIDDEN, "Too many wrong codes: your second factor is locked for a while.")
        }
        ApiError::RateLimited(_) => {
            (StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Wait a minute, then try again.")
        }
        ApiError::AlreadyExists(_) => (StatusCode::CONFLICT, "This passkey is registered already."),
        ApiError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "Check the name: at most 64 characters."),
        ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "No such passkey."),
        ApiError::FailedPrecondition(m) if m == gatehouse_domain::factors::REQUIRED => {
            (StatusCode::CONFLICT, "Your role requires two-step sign-in: your last factor cannot be removed.")
        }
        ApiError::FailedPrecondition(m) if m.starts_with("at most") => {
            (StatusCode::CONFLICT, "You have as many passkeys as one may: remove one first.")
        }
        ApiError::FailedPrecondition(m) if m.contains("not available") => {
            (StatusCode::CONFLICT, "Passkeys are not available here.")
        }
        _ => return None,
    })
}

/// The page again after a refused change, or the notice for a failure.
async fn refused(
    front: &Front,
    headers: &HeaderMap,
    (p, token): (&Principal, &str),
    e: ApiError,
    what: &str,
) -> Response {
    tracing::Span::current().record("outcome", "refused");
    match refusal(front, p, &e) {
        Some((status, why)) => render(front, headers, (p, token), status, Some(why), None).await,
        None => {
            tracing::warn!(error = %e, "{what} failed");
            unavailable(front, "Your passkeys cannot be changed right now.")
        }
    }
}

/// `POST /account/passkeys` (`csrf`, `name`, `password`, `ceremony`, `passkey`).
#[tracing::instrument(level = "info", name = "page.passkey_add", skip_all, fields(outcome))]
pub async fn add(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = [
        ("csrf", 64),
        ("name", 256),
        ("password", crate::passwords::MAX_PASSWORD_LEN),
        ("code", crate::mfa::check::MAX_CODE),
        ("ceremony", MAX_CEREMONY),
        ("passkey", MAX_RESPONSE),
    ];
    let (f, p, token) = match posted(&front, client.0, limits.as_deref(), &uri, &headers, &body, &expected).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    if f["passkey"].is_empty() || f["ceremony"].is_empty() {
        let why = Some("The passkey was not made. Try again.");
        return render(&front, &headers, (&p, &token), StatusCode::BAD_REQUEST, why, None).await;
    }
    let new = NewPasskey {
        name: f["name"].clone(),
        ceremony: f["ceremony"].clone(),
        response: f["passkey"].clone(),
        password: f["password"].clone(),
        code: f["code"].clone(),
    };
    match front.sign_in.add_passkey(&front, &p, &token, new, client.0).await {
        Ok(codes) if codes.is_empty() => {
            tracing::Span::current().record("outcome", "ok");
            see_other("/account/passkeys?done=added")
        }
        Ok(codes) => {
            tracing::Span::current().record("outcome", "ok");
            let pages = pages(&front);
            let n = nonce();
            let message = "Your passkey is added, and two-step sign-in is on.";
            let page = CodesPage { brand: pages.brand.view(), nonce: &n, message, codes: &codes };
            let mut resp = html(pages, StatusCode::OK, page.render(), &n, None);
            resp.headers_mut()
                .insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => refused(&front, &headers, (&p, &token), e, "adding a passkey").await,
    }
}

/// `POST /account/passkeys/rename` (`csrf`, `id`, `name`).
#[tracing::instrument(level = "info", name = "page.passkey_rename", skip_all, fields(outcome))]
pub async fn rename(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = [("csrf", 64), ("id", 2 * gatehouse_domain::passkeys::MAX_CREDENTIAL_ID), ("name", 256)];
    let (f, p, token) = match posted(&front, client.0, limits.as_deref(), &uri, &headers, &body, &expected).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    match front.sign_in.rename_passkey(&front, &p, &token, &f["id"], &f["name"], client.0).await {
        Ok(()) => {
            tracing::Span::current().record("outcome", "ok");
            see_other("/account/passkeys?done=renamed")
        }
        Err(e) => refused(&front, &headers, (&p, &token), e, "renaming a passkey").await,
    }
}

/// `POST /account/passkeys/remove` (`csrf`, `id`, `password`, `code`).
#[tracing::instrument(level = "info", name = "page.passkey_remove", skip_all, fields(outcome))]
pub async fn remove(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = [
        ("csrf", 64),
        ("id", 2 * gatehouse_domain::passkeys::MAX_CREDENTIAL_ID),
        ("password", crate::passwords::MAX_PASSWORD_LEN),
        ("code", crate::mfa::check::MAX_CODE),
    ];
    let (f, p, token) = match posted(&front, client.0, limits.as_deref(), &uri, &headers, &body, &expected).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let password = f["password"].clone();
    match front.sign_in.remove_passkey(&front, &p, &token, &f["id"], password, &f["code"], client.0).await {
        Ok(()) => {
            tracing::Span::current().record("outcome", "ok");
            see_other("/account/passkeys?done=removed")
        }
        Err(e) => refused(&front, &headers, (&p, &token), e, "removing a passkey").await,
    }
}
