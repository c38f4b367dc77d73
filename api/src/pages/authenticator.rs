//! A person's second factor on "my account": an authenticator app added
//! (a QR code and the key in text, confirmed by one code and the password
//! again), turned off, and new recovery codes (each with the password and
//! a current code). Recovery codes are shown once, on a page of their own.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /account/totp` | a fresh secret: QR code, key, the confirming form |
//! | `POST /account/totp` (`sealed`, `code`, `password`) | turns it on; the recovery codes |
//! | `POST /account/totp/remove` (`code`, `password`) | turns it off, with its recovery codes |
//! | `POST /account/recovery` (`code`, `password`) | new recovery codes replace the old |
//! | `POST /account/devices/forget` | no trusted browser skips the second step any more |
//!
//! The secret offered by `GET` is not written anywhere: it travels in the
//! form sealed under the voters' key-encryption key, bound to this user and
//! this session, and is written (sealed again, for the user) only once a
//! code from the app proves the app holds it. Checked on a voter
//! ([`crate::mfa::check`]); a stateless front sends each step on to one
//! (`SignInService`), since it holds no key to seal or open with.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;

use super::account::{posted, render as account, signed_in, unavailable};
use super::render::{html, nonce, see_other, BrandView, PagesConfig};
use super::sign_in::Limits;
use crate::http::client_ip::ClientIp;
use crate::http::front::Front;
use crate::identity::Principal;
use crate::mfa::check::{MAX_CODE, MAX_SEALED_FORM};
use crate::sign_in::own;
use crate::ApiError;

#[derive(Template)]
#[template(path = "totp.html")]
struct TotpPage<'a> {
    brand: BrandView<'a>,
    nonce: &'a str,
    csrf: &'a str,
    error: Option<&'a str>,
    qr_svg: &'a str,
    secret: &'a str,
    sealed: &'a str,
    needs_password: bool,
}

#[derive(Template)]
#[template(path = "recovery.html")]
struct RecoveryPage<'a> {
    brand: BrandView<'a>,
    nonce: &'a str,
    message: &'a str,
    codes: &'a [String],
}

fn pages(front: &Front) -> &PagesConfig {
    front.config.pages.as_deref().expect("the page routes exist only with [pages]")
}

/// The enrollment page with a fresh secret; `error` says why the last try failed.
async fn offer(
    front: &Front,
    headers: &HeaderMap,
    (p, token): (&Principal, &str),
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let enrolling = match front.sign_in.offer_totp(front, p, token).await {
        Ok(e) => e,
        Err(ApiError::FailedPrecondition(_)) => {
            return account(front, headers, p, StatusCode::CONFLICT, Ok("Authenticator apps are not available here."))
        }
        Err(e) => {
            tracing::warn!(error = %e, "offering an authenticator failed");
            return unavailable(front, "An authenticator app cannot be added right now.");
        }
    };
    let pages = pages(front);
    let (csrf, set_cookie) = super::csrf::token(headers, front.config.secure_cookies);
    let n = nonce();
    let page = TotpPage {
        brand: pages.brand.view(),
        nonce: &n,
        csrf: &csrf,
        error,
        qr_svg: &enrolling.qr_svg,
        secret: &enrolling.secret,
        sealed: &enrolling.sealed,
        needs_password: own::has_password(front, p),
    };
    let mut resp = html(pages, status, page.render(), &n, set_cookie);
    // The secret is on this page: never kept by a cache.
    resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    resp
}

fn codes_page(front: &Front, message: &str, codes: &[String]) -> Response {
    let pages = pages(front);
    let n = nonce();
    let page = RecoveryPage { brand: pages.brand.view(), nonce: &n, message, codes };
    let mut resp = html(pages, StatusCode::OK, page.render(), &n, None);
    resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    resp
}

/// `GET /account/totp`.
pub async fn page(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    headers: HeaderMap,
) -> Response {
    let (p, token) = match signed_in(&front, &headers, client.0, limits.as_deref()).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    if front.node.view().read().factors_of(&p.user_id).is_some_and(|r| r.totp.is_some()) {
        return see_other("/account");
    }
    offer(&front, &headers, (&p, &token), StatusCode::OK, None).await
}

fn p_has_no_totp(front: &Front, p: &Principal) -> bool {
    front.node.view().read().factors_of(&p.user_id).is_none_or(|r| r.totp.is_none())
}

/// What a refused factor change tells the person, and its status.
fn refusal(front: &Front, p: &Principal, e: &ApiError) -> Option<(StatusCode, &'static str)> {
    Some(match e {
        ApiError::PermissionDenied(_) if own::has_password(front, p) => {
            (StatusCode::FORBIDDEN, "Enter your password to change your second factor.")
        }
        ApiError::PermissionDenied(_) => {
            (StatusCode::FORBIDDEN, "Sign in again first: your second factor changes only from a recent sign-in.")
        }
        ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "Your password is not right."),
        ApiError::InvalidSecondFactor => (StatusCode::UNAUTHORIZED, "That code is wrong or was used already."),
        ApiError::SecondFactorLocked => {
            (StatusCode::FORBIDDEN, "Too many wrong codes: your second factor is locked for a while.")
        }
        ApiError::RateLimited(_) => {
            (StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Wait a minute, then try again.")
        }
        ApiError::FailedPrecondition(m) if m == gatehouse_domain::factors::REQUIRED => {
            (StatusCode::CONFLICT, "Your role requires two-step sign-in: it cannot be turned off.")
        }
        // Adding an app beside a passkey asks for the passkey fresh.
        ApiError::SecondFactorRequired if p_has_no_totp(front, p) => (
            StatusCode::FORBIDDEN,
            "Your second factor must be recent to add another: sign out, sign in with your passkey, then add the app.",
        ),
        ApiError::SecondFactorRequired => (StatusCode::FORBIDDEN, "Enter a code from your authenticator app."),
        _ => return None,
    })
}

/// `POST /account/totp` (`csrf`, `sealed`, `code`, `password`).
#[tracing::instrument(level = "info", name = "page.totp_enroll", skip_all, fields(outcome))]
pub async fn enroll(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let max = crate::passwords::MAX_PASSWORD_LEN;
    let expected = [("csrf", 64), ("sealed", MAX_SEALED_FORM), ("code", MAX_CODE), ("password", max)];
    let (f, p, token) = match posted(&front, client.0, limits.as_deref(), &uri, &headers, &body, &expected).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let password = f["password"].clone();
    let outcome = front.sign_in.enroll_totp(&front, &p, &token, &f["sealed"], &f["code"], password, client.0).await;
    match outcome {
        // Beside a passkey: the person's recovery codes stay as they were.
        Ok(codes) if codes.is_empty() => {
            tracing::Span::current().record("outcome", "ok");
            see_other("/account?done=totp_on")
        }
        Ok(codes) => {
            tracing::Span::current().record("outcome", "ok");
            codes_page(&front, "Your authenticator app is on: you will be asked for a code when you sign in.", &codes)
        }
        Err(e) => {
            tracing::Span::current().record("outcome", "refused");
            if let Some((status, why)) = refusal(&front, &p, &e) {
                // A fresh secret: the one that failed is not offered again.
                return offer(&front, &headers, (&p, &token), status, Some(why)).await;
            }
            match e {
                ApiError::InvalidArgument(_) => {
                    let why = Some("This form has expired. Scan the new code.");
                    offer(&front, &headers, (&p, &token), StatusCode::BAD_REQUEST, why).await
                }
                ApiError::AlreadyExists(_) => see_other("/account"),
                e => {
                    tracing::warn!(error = %e, "enrolling an authenticator failed");
                    unavailable(&front, "The authenticator app could not be turned on right now.")
                }
            }
        }
    }
}

/// `POST /account/totp/remove` (`csrf`, `code`, `password`).
#[tracing::instrument(level = "info", name = "page.totp_remove", skip_all, fields(outcome))]
pub async fn remove(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let max = crate::passwords::MAX_PASSWORD_LEN;
    let expected = [("csrf", 64), ("code", MAX_CODE), ("password", max)];
    let (f, p, token) = match posted(&front, client.0, limits.as_deref(), &uri, &headers, &body, &expected).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    match front.sign_in.remove_totp(&front, &p, &token, &f["code"], f["password"].clone(), client.0).await {
        Ok(()) => {
            tracing::Span::current().record("outcome", "ok");
            see_other("/account?done=totp_off")
        }
        Err(e) => {
            tracing::Span::current().record("outcome", "refused");
            match refusal(&front, &p, &e) {
                Some((status, why)) => account(&front, &headers, &p, status, Ok(why)),
                None => {
                    tracing::warn!(error = %e, "removing an authenticator failed");
                    unavailable(&front, "The authenticator app could not be turned off right now.")
                }
            }
        }
    }
}

/// `POST /account/recovery` (`csrf`, `code`, `password`).
#[tracing::instrument(level = "info", name = "page.recovery_codes", skip_all, fields(outcome))]
pub async fn recovery_codes(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let max = crate::passwords::MAX_PASSWORD_LEN;
    let expected = [("csrf", 64), ("code", MAX_CODE), ("password", max)];
    let (f, p, token) = match posted(&front, client.0, limits.as_deref(), &uri, &headers, &body, &expected).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    match front.sign_in.new_recovery_codes(&front, &p, &token, &f["code"], f["password"].clone(), client.0).await {
        Ok(codes) => {
            tracing::Span::current().record("outcome", "ok");
            codes_page(&front, "Your old recovery codes no longer work.", &codes)
        }
        Err(e) => {
            tracing::Span::current().record("outcome", "refused");
            match refusal(&front, &p, &e) {
                Some((status, why)) => account(&front, &headers, &p, status, Ok(why)),
                None => {
                    tracing::warn!(error = %e, "new recovery codes failed");
                    unavailable(&front, "New recovery codes could not be made right now.")
                }
            }
        }
    }
}

/// `POST /account/devices/forget` (`csrf`): no browser of the person's
/// skips the second step any more (this one's cookie is cleared too).
#[tracing::instrument(level = "info", name = "page.devices_forget", skip_all, fields(outcome))]
pub async fn forget_devices(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Limits,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = [("csrf", 64)];
    let (_, p, token) = match posted(&front, client.0, limits.as_deref(), &uri, &headers, &body, &expected).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    match front.sign_in.forget_devices(&front, &p, &token, client.0).await {
        Ok(()) => {
            tracing::Span::current().record("outcome", "ok");
            let mut resp = see_other("/account?done=devices_forgotten");
            let gone = crate::mfa::devices::cookie(&front, "", 0);
            resp.headers_mut().append(axum::http::header::SET_COOKIE, gone);
            resp
        }
        Err(ApiError::NotFound(_)) => {
            let mut resp = see_other("/account");
            let gone = crate::mfa::devices::cookie(&front, "", 0);
            resp.headers_mut().append(axum::http::header::SET_COOKIE, gone);
            resp
        }
        Err(e) => {
            tracing::Span::current().record("outcome", "refused");
            tracing::warn!(error = %e, "forgetting trusted browsers failed");
            unavailable(&front, "Trusted browsers cannot be forgotten right now.")
        }
    }
}
