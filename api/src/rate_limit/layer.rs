//! The HTTP layer: admits a request before its handler, counts refused
//! credentials after it, and writes the tightest quota into the response;
//! and the check a handler makes once it knows its caller.

use std::net::{IpAddr, SocketAddr};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::limiter::RequestLimits;
use super::policy::Subject;
use super::quota::Quota;
use crate::http::client_ip::ClientIp;
use crate::http::front::Front;
use crate::ApiError;

/// The HTTP layer: admits before the handler, counts refused credentials
/// after it, and writes the tightest quota into the response.
/// Marks an answer as an upstream's (reverse-proxy mode): its 401 is no
/// credential Gatehouse refused, so it counts against no failure limit.
#[derive(Clone, Copy, Debug)]
pub struct FromUpstream;

pub async fn around(front: &Front, mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let limiter = &front.limits;
    // The sign-in page's forms (a password, asking for a link, spending
    // one) are logins like the JSON API's: the same policies count them.
    let path = match req.uri().path() {
        "/login" | "/login/email" | "/login/link" | "/login/passkey" | "/login/factor" | "/login/factor/enroll"
            if req.method() == axum::http::Method::POST =>
        {
            super::limiter::LOGIN_PATH
        }
        // A provider's callback is a sign-in too (each one may cost a call
        // to the provider with our client's credentials).
        p if p.starts_with("/login/sso/") && p.ends_with("/callback") => super::limiter::LOGIN_PATH,
        p => p,
    };
    // Probes and scrapes are never limited.
    if !limiter.enabled() || matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return next.run(req).await;
    }
    // Resolved once, by `http::client_ip::resolve_into` (before this).
    let ip = match req.extensions().get::<ClientIp>() {
        Some(c) => c.0,
        None => {
            let peer = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
            limiter.client_ip(peer.as_ref(), req.headers())
        }
    };
    // Refused credentials count when they were sent on purpose: a bearer
    // token or a login. A browser's stale session cookie is not an attack.
    // A login sent on to a voter is counted there.
    let login_here = path == super::limiter::LOGIN_PATH && !limiter.logins_elsewhere();
    let presents = req.headers().contains_key(axum::http::header::AUTHORIZATION) || login_here;
    // A 256-bit key or session is looked at even over a failure limit (it
    // cannot be guessed); a password never is: a guess must not learn from
    // a different answer whether it was right.
    let credential = path != "/api/v1/login"
        && (req.headers().contains_key(axum::http::header::AUTHORIZATION)
            || req.headers().contains_key(axum::http::header::COOKIE));
    let (ctx, before) = limiter.before(&Subject { ip, path, headers: req.headers() }, credential).await;
    let quota = match before {
        Ok(q) => q,
        Err(e) => return refusal(front, e, ip),
    };
    req.extensions_mut().insert(ctx);
    let mut resp = next.run(req).await;
    let from_handler = resp.extensions_mut().remove::<Quota>();
    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
        // The handler's refusal (a policy by key or user) carries its own headers.
        if let Some(q) = from_handler {
            front.node.audit_rate_limited(&q.policy, ip);
        }
        return resp;
    }
    let mut quota = match (quota, from_handler) {
        (Some(a), b) => Some(a.tighter(b)),
        (None, b) => b,
    };
    let refused_here = resp.status() == StatusCode::UNAUTHORIZED && resp.extensions().get::<FromUpstream>().is_none();
    if ctx.over_failures() && refused_here {
        // Over the limit and not verified: the failure limit's answer, and
        // nothing more counted (the bucket is full).
        return refusal(front, limiter.failure_refusal(&ctx), ip);
    }
    if presents && refused_here {
        match limiter.refused(&ctx).await {
            Ok(q) => quota = q.map(|q| q.tighter(quota.take())),
            Err(e) => return refusal(front, e, ip),
        }
    }
    if let Some(q) = quota {
        q.write(resp.headers_mut());
    }
    resp
}

/// A handler's check once it knows the caller (policies by key or user).
pub async fn caller_known(
    front: &Front,
    ctx: Option<&RequestLimits>,
    user_id: &str,
    username: &str,
    key_id: Option<&str>,
) -> Result<Option<Quota>, ApiError> {
    match ctx {
        Some(ctx) => front.limits.caller_known(ctx, user_id, username, key_id).await,
        None => Ok(None),
    }
}

/// The answer to a request the limiter refused; a 429 is audited.
fn refusal(front: &Front, e: ApiError, ip: IpAddr) -> Response {
    if let ApiError::RateLimited(q) = &e {
        front.node.audit_rate_limited(&q.policy, ip);
    }
    e.into_response()
}
