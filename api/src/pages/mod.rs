//! The sign-in pages a person uses in a browser, served by every node and
//! front beside the JSON API: server-rendered HTML that works without
//! JavaScript.
//!
//! | path | handler |
//! |---|---|
//! | `GET /login`, `POST /login`, `POST /login/passkey`, `POST /logout` | [`sign_in`] |
//! | `POST /login/email`, `GET /login/link`, `POST /login/link` | [`links`] |
//! | `GET /login/sso/{id}`, `GET /login/sso/{id}/callback`, `POST /login/sso/{id}/backchannel-logout` | [`sso`] |
//! | `GET /login/factor`, `POST /login/factor`, `POST /login/factor/enroll` (the second step) | [`second_factor`] |
//! | `GET /account`, `POST /account/sessions/{id}/revoke`, `POST /account/keys`, `POST /account/keys/{id}/revoke`, `POST /account/password` | [`account`] |
//! | `GET /account/totp`, `POST /account/totp`, `POST /account/totp/remove`, `POST /account/recovery`, `POST /account/devices/forget` | [`authenticator`] |
//! | `GET /account/passkeys`, `POST /account/passkeys`, `POST /account/passkeys/rename`, `POST /account/passkeys/remove` | [`passkeys`] |
//! | `GET /assets/logo` | the configured logo |
//!
//! Every page carries a strict CSP with a fresh nonce and no script, but
//! for the pages that run a passkey ceremony: their one script carries
//! the nonce ([`render`]); every form a CSRF token bound to the browser ([`csrf`]);
//! every return URL is checked against the configured domains
//! ([`return_to`]); posted forms are read strictly ([`form`]). What a page
//! does is the JSON API's own code underneath (`crate::sign_in`).

pub mod account;
pub mod authenticator;
pub mod csrf;
pub mod form;
pub mod links;
pub mod passkeys;
pub mod render;
pub mod return_to;
pub mod second_factor;
pub mod sign_in;
pub mod sso;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use render::{Brand, PagesConfig};
pub use return_to::ReturnDomains;

use crate::http::front::Front;

/// The page routes, as metric labels.
pub const ROUTES: [&str; 23] = [
    "/account/devices/forget",
    "/login",
    "/login/passkey",
    "/account/passkeys",
    "/account/passkeys/rename",
    "/account/passkeys/remove",
    "/login/factor",
    "/login/factor/enroll",
    "/account/totp",
    "/account/totp/remove",
    "/account/recovery",
    "/login/sso/{id}",
    "/login/sso/{id}/callback",
    "/login/sso/{id}/backchannel-logout",
    "/login/email",
    "/login/link",
    "/logout",
    "/account",
    "/account/sessions/{id}/revoke",
    "/account/keys",
    "/account/keys/{id}/revoke",
    "/account/password",
    "/assets/logo",
];

/// The pages' routes, added to the HTTP front's router.
pub fn routes(router: Router<Front>) -> Router<Front> {
    router
        .route("/login", get(sign_in::page).post(sign_in::submit))
        .route("/login/passkey", post(sign_in::passkey))
        .route("/login/factor", get(second_factor::page).post(second_factor::submit))
        .route("/login/factor/enroll", post(second_factor::enroll))
        .route("/login/email", post(links::request))
        .route("/login/link", get(links::confirm).post(links::spend))
        .route("/login/sso/{id}", get(sso::start))
        .route("/login/sso/{id}/callback", get(sso::callback))
        .route("/login/sso/{id}/backchannel-logout", post(sso::backchannel_logout))
        .route("/logout", post(sign_in::logout))
        .route("/account", get(account::page))
        .route("/account/sessions/{id}/revoke", post(account::revoke))
        .route("/account/keys", post(account::create_key))
        .route("/account/keys/{id}/revoke", post(account::revoke_key))
        .route("/account/password", post(account::change_password))
        .route("/account/totp", get(authenticator::page).post(authenticator::enroll))
        .route("/account/totp/remove", post(authenticator::remove))
        .route("/account/recovery", post(authenticator::recovery_codes))
        .route("/account/devices/forget", post(authenticator::forget_devices))
        .route("/account/passkeys", get(passkeys::page).post(passkeys::add))
        .route("/account/passkeys/rename", post(passkeys::rename))
        .route("/account/passkeys/remove", post(passkeys::remove))
        .route("/assets/logo", get(logo))
}

/// A JSON refusal of a page request (one made before the page's own
/// handler: a rate limit, a body over the limit) as a page, with the same
/// status and its `Retry-After` and rate-limit headers.
pub fn as_page(front: &Front, resp: Response) -> Response {
    let Some(pages) = front.config.pages.as_deref() else { return resp };
    let status = resp.status();
    let json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (title, message) = match status {
        StatusCode::TOO_MANY_REQUESTS => ("Please wait", "Too many attempts. Wait a minute, then try again."),
        StatusCode::SERVICE_UNAVAILABLE => ("Not available", "This is not possible right now. Try again shortly."),
        StatusCode::NOT_FOUND => ("Not found", "There is no such page."),
        StatusCode::PAYLOAD_TOO_LARGE => ("Please try again", "The form was too large."),
        s if s.is_server_error() => ("Not available", "Something went wrong. Try again shortly."),
        _ => ("Please try again", "The request was refused. Open the page again and resubmit it."),
    };
    let mut page = sign_in::notice(pages, status, title, message);
    for (name, value) in resp.headers() {
        let keep = name == header::RETRY_AFTER || name.as_str().starts_with("x-ratelimit-") || name == header::ALLOW;
        if keep {
            page.headers_mut().append(name.clone(), value.clone());
        }
    }
    page
}

/// `GET /assets/logo`: the configured logo (cached a day), or 404.
async fn logo(State(front): State<Front>) -> Response {
    let Some(logo) = front.config.pages.as_ref().and_then(|p| p.brand.logo.clone()) else {
        return crate::ApiError::NotFound("no such endpoint".into()).into_response();
    };
    let mut resp = (StatusCode::OK, logo.bytes.to_vec()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(logo.content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    resp
}
