//! The HTTP front (axum on hyper), on every node.
//!
//! | path | handler |
//! |---|---|
//! | `GET /healthz`, `GET /readyz` | [`health`] |
//! | `GET /auth/verify` | [`verify`]: forward-auth for nginx, Traefik, Caddy |
//! | `POST /api/v1/login`, `POST /api/v1/logout`, `GET /api/v1/me`, `GET /api/v1/me/sessions`, `DELETE /api/v1/me/sessions/{id}` | [`session`] |
//!
//! Every response carries the security headers; bodies are bounded to
//! [`MAX_BODY`] and the request head to [`MAX_HEADER_BYTES`]; errors are
//! `{"error": {"code", "message"}}` from [`ApiError`](crate::ApiError).
//! The client's address is resolved once per request ([`client_ip`]),
//! whether rate limits are on or off.

pub mod client_ip;
pub mod forwarded;
pub mod health;
pub mod serve;
pub mod session;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::passwords::PasswordPool;
use crate::{ApiError, Cluster};

/// Largest request body accepted anywhere on the front.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest request head (all header names and values) accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Failed-login lockout policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    /// Failures from one address bucket that lock it out of the account.
    pub threshold: u32,
    /// Failures from everywhere that lock the account itself.
    pub user_threshold: u32,
    pub window: Duration,
    pub duration: Duration,
}

/// A role requirement for forwarded requests (`[[identity.routes]]`): the
/// first rule whose host (if set) and path prefix match `X-Forwarded-Host` /
/// `X-Forwarded-Uri` decides which roles may pass (any one of them). Both are
/// read by [`forwarded`]; a request it cannot read one way is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Matched against the normalised forwarded host (see [`forwarded::normalise_host`]).
    #[serde(default)]
    pub host: Option<String>,
    pub path_prefix: String,
    pub roles: Vec<String>,
    /// Match the path prefix in any letter case, for backends that serve
    /// `/OPS` as `/ops`.
    #[serde(default)]
    pub ignore_case: bool,
}

impl RouteRule {
    /// Refuses a rule that could never match as written: a prefix that is
    /// not a plain path, a host that is not normalised, no roles.
    pub fn validate(&self) -> Result<(), String> {
        if forwarded::plain_path(&self.path_prefix).as_deref() != Some(self.path_prefix.as_str()) {
            return Err(format!("identity.routes: path_prefix {:?} must be a plain absolute path", self.path_prefix));
        }
        if let Some(h) = &self.host {
            if forwarded::normalise_host(h).as_deref() != Some(h.as_str()) || h.contains(':') {
                return Err(format!("identity.routes: host {h:?} must be a lower-case host name without port"));
            }
        }
        if self.roles.is_empty() {
            return Err("identity.routes: roles must not be empty".into());
        }
        Ok(())
    }
}

/// Settings of the HTTP front.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// `Secure` on the session cookie (off only in dev mode).
    pub secure_cookies: bool,
    /// The session cookie's full name, prefix included ([`cookie_name`]).
    pub cookie_name: String,
    /// `Domain=` of the session cookie, when a sign-in host is shared by
    /// several app subdomains; `None` keeps the cookie on this host.
    pub cookie_domain: Option<String>,
    pub session_ttl: Duration,
    pub session_idle: Duration,
    pub lockout: Lockout,
    pub routes: Vec<RouteRule>,
    /// Serve `GET /metrics` here (false when a separate listener does).
    pub metrics_on_front: bool,
}

/// What every handler shares.
#[derive(Clone)]
pub struct Front {
    pub cluster: Cluster,
    pub config: Arc<FrontConfig>,
    pub passwords: PasswordPool,
    pub limits: crate::limits::Limiter,
}

pub fn router(front: Front) -> Router {
    let metrics_on_front = front.config.metrics_on_front;
    let router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/auth/verify", get(verify::verify))
        .route("/api/v1/login", post(session::login))
        .route("/api/v1/logout", post(session::logout))
        .route("/api/v1/me", get(session::me))
        .route("/api/v1/me/sessions", get(session::my_sessions))
        .route("/api/v1/me/sessions/{id}", delete(session::revoke_my_session));
    let router = if metrics_on_front { router.route("/metrics", get(metrics)) } else { router };
    router
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(front.clone())
        .layer(axum::middleware::from_fn_with_state(front.clone(), crate::limits::layer))
        // Outside the limits: the client's address is known whether they are on or off.
        .layer(axum::middleware::from_fn_with_state(front.clone(), client_ip::layer))
        .layer(axum::middleware::from_fn_with_state(front, guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// Headers every response carries.
const SECURITY_HEADERS: [(header::HeaderName, &str); 5] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"),
    (header::CACHE_CONTROL, "no-store"),
];

/// The routes above, as metric labels (anything else is `unmatched`).
const ROUTES: [&str; 9] = [
    "/healthz",
    "/readyz",
    "/auth/verify",
    "/api/v1/login",
    "/api/v1/logout",
    "/api/v1/me",
    "/api/v1/me/sessions",
    "/api/v1/me/sessions/{id}",
    "/metrics",
];

/// The separate metrics listener's router: `GET /metrics` only.
pub fn metrics_router(front: Front) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(front.clone())
        .layer(axum::middleware::from_fn_with_state(front, guard))
}

/// `GET /metrics`: every series in the Prometheus text format.
pub async fn metrics(axum::extract::State(front): axum::extract::State<Front>) -> Response {
    let body = front.cluster.scrape_metrics();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// One layer for every request: 431 for heads over [`MAX_HEADER_BYTES`],
/// the security headers on every response (errors included), and the
/// request's count and latency by route and status.
async fn guard(axum::extract::State(front): axum::extract::State<Front>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .and_then(|m| ROUTES.iter().find(|r| **r == m.as_str()).copied())
        .unwrap_or("unmatched");
    untrusted_forwarded_for(&front, &req);
    let size: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let resp = if size > MAX_HEADER_BYTES {
        let body =
            serde_json::json!({ "error": { "code": "headers_too_large", "message": "request headers too large" } });
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, axum::Json(body)).into_response()
    } else if crate::trace::exporting() {
        // Only when exporting traces: the verify path stays span-free otherwise.
        use tracing::Instrument;
        let span = tracing::info_span!(
            "http.request",
            otel.kind = "server",
            http.route = route,
            http.method = %req.method(),
            http.status_code = tracing::field::Empty,
            decision = tracing::field::Empty,
            user_id = tracing::field::Empty,
            node_id = front.cluster.id(),
        );
        crate::trace::continue_trace(&span, req.headers());
        let resp = next.run(req).instrument(span.clone()).await;
        span.record("http.status_code", resp.status().as_u16());
        resp
    } else {
        next.run(req).await
    };
    let mut resp = json_errors(resp);
    let h = resp.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    front.cluster.metrics().observe_http(route, resp.status().as_u16(), started.elapsed());
    resp
}

/// A proxy in front of Gatehouse that is not in `trusted_proxies` makes
/// every client behind it one address (one rate-limit bucket, one audit
/// address): counted, and said in the log at the first such request after
/// start and then at most once a minute.
fn untrusted_forwarded_for(front: &Front, req: &Request) {
    if !req.headers().contains_key("x-forwarded-for") {
        return;
    }
    let Some(peer) = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip()) else {
        return;
    };
    if front.limits.trusts(peer) {
        return;
    }
    front.cluster.metrics().untrusted_forwarded_for.inc();
    static WARNED: crate::throttle::Throttle = crate::throttle::Throttle::new(60_000);
    if let Some(suppressed) = WARNED.allow() {
        tracing::warn!(
            %peer,
            suppressed,
            "X-Forwarded-For from a peer that is not in rate_limits.trusted_proxies is ignored: \
             if it is your proxy, every client behind it counts as this one address"
        );
    }
}

/// Every error is our JSON shape: the framework's own rejections (a query,
/// path or body it could not read, a body over the limit, a wrong method)
/// come as plain text naming what it failed to parse, so they are replaced
/// here, with a fixed message per status and nothing of the input.
fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json =
        resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (code, message) = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            ("invalid_argument", "the request could not be read")
        }
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed on this path"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "unsupported content type"),
        s if s.is_client_error() => ("bad_request", "the request was refused"),
        _ => ("internal", "internal error"),
    };
    let allow = resp.headers().get(header::ALLOW).cloned();
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut out = (status, axum::Json(body)).into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

/// The presented credential: `Authorization: Bearer …` first, then the
/// session cookie. The flag says whether it came from the cookie (which
/// browsers attach on their own, so state changes need CSRF proof).
pub fn credential(headers: &HeaderMap, cookie_name: &str) -> Option<(String, bool)> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let token = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?;
        return Some((token.trim().to_string(), false));
    }
    cookie(headers, cookie_name).map(|c| (c, true))
}

/// The session cookie's name: `__Host-<base>` when it is `Secure` and bound
/// to this host (the browser then refuses it from a sibling subdomain or
/// over plain HTTP, and with a `Domain` or another `Path`), `__Secure-<base>`
/// when a cookie domain is configured, the bare base name only without
/// `Secure` (dev mode).
pub fn cookie_name(base: &str, secure: bool, domain: Option<&str>) -> String {
    match (secure, domain) {
        (false, _) => base.to_string(),
        (true, None) => format!("__Host-{base}"),
        (true, Some(_)) => format!("__Secure-{base}"),
    }
}

/// The value of cookie `name`, if sent exactly once. Two cookies of the
/// name (one planted by a sibling subdomain, say) are refused, never "take
/// the first": which one a browser sends first is not the server's choice.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string());
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// CSRF proof for a browser request: a custom header (which a cross-site
/// form cannot set) or an `Origin` equal to this host.
pub fn csrf_ok(headers: &HeaderMap) -> bool {
    if headers.contains_key("x-requested-with") {
        return true;
    }
    let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) else { return false };
    let (Ok(origin), Ok(host)) = (origin.to_str(), host.to_str()) else { return false };
    origin == format!("https://{host}") || origin == format!("http://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn credentials_prefer_the_authorization_header() {
        let h = headers(&[("authorization", "Bearer gk_x"), ("cookie", "gatehouse_session=gs_y")]);
        assert_eq!(credential(&h, "gatehouse_session"), Some(("gk_x".into(), false)));
        let h = headers(&[("cookie", "a=b; gatehouse_session=gs_y; c=d")]);
        assert_eq!(credential(&h, "gatehouse_session"), Some(("gs_y".into(), true)));
        assert_eq!(credential(&headers(&[("authorization", "Basic abc")]), "gatehouse_session"), None);
        assert_eq!(credential(&headers(&[("cookie", "other=1")]), "gatehouse_session"), None);
    }

    #[test]
    fn two_session_cookies_are_refused_not_picked() {
        let name = "__Host-gatehouse_session";
        let one = headers(&[("cookie", "__Host-gatehouse_session=gs_a; gatehouse_session=gs_b")]);
        assert_eq!(cookie(&one, name).as_deref(), Some("gs_a"));
        for two in [
            headers(&[("cookie", "__Host-gatehouse_session=gs_a; __Host-gatehouse_session=gs_b")]),
            headers(&[("cookie", "__Host-gatehouse_session=gs_a"), ("cookie", "__Host-gatehouse_session=gs_a")]),
        ] {
            assert_eq!(cookie(&two, name), None);
            assert_eq!(credential(&two, name), None);
        }
    }

    #[test]
    fn cookie_names_carry_the_prefix_their_attributes_allow() {
        assert_eq!(cookie_name("gatehouse_session", true, None), "__Host-gatehouse_session");
        assert_eq!(cookie_name("gatehouse_session", true, Some("example.com")), "__Secure-gatehouse_session");
        assert_eq!(cookie_name("gatehouse_session", false, None), "gatehouse_session");
    }

    #[test]
    fn csrf_needs_a_custom_header_or_same_origin() {
        assert!(csrf_ok(&headers(&[("x-requested-with", "fetch")])));
        assert!(csrf_ok(&headers(&[("origin", "https://auth.example"), ("host", "auth.example")])));
        assert!(!csrf_ok(&headers(&[("origin", "https://evil.example"), ("host", "auth.example")])));
        assert!(!csrf_ok(&headers(&[("host", "auth.example")])));
    }
}
