//! The HTTP front (axum on hyper), on every node.
//!
//! | path | handler |
//! |---|---|
//! | `GET /healthz`, `GET /readyz` | [`health`] |
//! | `GET /auth/verify` | [`verify`]: forward-auth for nginx, Traefik, Caddy |
//! | `GET /.well-known/jwks.json` (with `[jwt]`) | [`crate::jwt::keys`]: the keys apps verify our tokens with |
//! | `POST /api/v1/login`, `POST /api/v1/logout`, `GET /api/v1/me`, `GET /api/v1/me/sessions`, `DELETE /api/v1/me/sessions/{id}` | [`session`] |
//! | `/login`, `/logout`, `/account`, … (with `[pages]`) | [`crate::pages`] |
//!
//! Every response carries the security headers; bodies are bounded to
//! [`MAX_BODY`] and the request head to [`MAX_HEADER_BYTES`]; errors are
//! `{"error": {"code", "message"}}` from [`ApiError`](crate::ApiError).
//! The client's address is resolved once per request ([`client_ip`]),
//! whether rate limits are on or off. The JSON API answers the browsers of
//! the configured origins ([`cors`]).

pub mod caller;
pub mod client_ip;
pub mod conn;
pub mod cors;
pub mod forwarded;
pub mod framing;
pub mod front;
pub mod health;
pub mod serve;
pub mod session;
pub mod verify;

pub use front::{Front, FrontConfig, FrontParts, Lockout, RouteRule};

use crate::ApiError;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use std::net::SocketAddr;

/// Largest request body accepted anywhere on the front.
pub const MAX_BODY: usize = 64 * 1024;

/// Largest request head (all header names and values) accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

pub fn router(front: Front) -> Router {
    let metrics_on_front = front.config.metrics_on_front;
    let router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/auth/verify", get(verify::verify))
        .route("/.well-known/jwks.json", get(crate::jwt::keys::jwks_handler))
        .route("/api/v1/login", post(session::login))
        .route("/api/v1/logout", post(session::logout))
        .route("/api/v1/me", get(session::me))
        .route("/api/v1/me/sessions", get(session::my_sessions))
        .route("/api/v1/me/sessions/{id}", delete(session::revoke_my_session));
    let router = if metrics_on_front { router.route("/metrics", get(metrics)) } else { router };
    let router = if front.config.pages.is_some() { crate::pages::routes(router) } else { router };
    router
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(front.clone())
        .layer(axum::middleware::from_fn_with_state(front, layers))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// The front's layers as one (each layer of its own costs every request a
/// boxed future and a clone of the service): the [`guard`], then the
/// client's address (known whether limits are on or off), then the limits.
async fn layers(axum::extract::State(front): axum::extract::State<Front>, req: Request, next: Next) -> Response {
    let front = &front;
    let cors = &front.config.cors;
    // A CORS preflight is answered here (before any limit: it does nothing).
    if let Some(answer) = cors.preflight(req.method(), req.uri().path(), req.headers()) {
        return guarded(front, req, |_| async { answer }).await;
    }
    let origin = cors.origin_of(req.uri().path(), req.headers());
    let mut resp = guarded(front, req, move |mut req| async move {
        client_ip::resolve_into(front, &mut req);
        crate::rate_limit::layer::around(front, req, next).await
    })
    .await;
    if let Some(origin) = origin {
        cors::Cors::decorate(&mut resp, origin);
    }
    resp
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
const ROUTES: [&str; 10] = [
    "/healthz",
    "/readyz",
    "/auth/verify",
    "/.well-known/jwks.json",
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
    let body = front.node.scrape_metrics();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// One layer for every request: 431 for heads over [`MAX_HEADER_BYTES`],
/// the security headers on every response (errors included), and the
/// request's count and latency by route and status.
async fn guard(axum::extract::State(front): axum::extract::State<Front>, req: Request, next: Next) -> Response {
    guarded(&front, req, |req| next.run(req)).await
}

/// [`guard`] around `inner`.
async fn guarded<F, Fut>(front: &Front, req: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .and_then(|m| ROUTES.iter().chain(&crate::pages::ROUTES).find(|r| **r == m.as_str()).copied())
        .unwrap_or("unmatched");
    untrusted_forwarded_for(front, &req);
    let size: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let resp = if size > MAX_HEADER_BYTES {
        let body =
            serde_json::json!({ "error": { "code": "headers_too_large", "message": "request headers too large" } });
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, axum::Json(body)).into_response()
    } else if gatehouse_cluster::trace::exporting() {
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
            node_id = front.node.id(),
        );
        gatehouse_cluster::trace::continue_trace(&span, req.headers());
        let resp = inner(req).instrument(span.clone()).await;
        span.record("http.status_code", resp.status().as_u16());
        resp
    } else {
        inner(req).await
    };
    let mut resp = json_errors(resp);
    if crate::pages::ROUTES.contains(&route) {
        // A refusal made before the page's handler (a rate limit, a body
        // too large) is a page too.
        resp = crate::pages::as_page(front, resp);
    }
    let h = resp.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        // A page sets a policy of its own (with its nonce, a referrer
        // policy that keeps its forms' `Origin`), the logo its caching.
        let own = [header::CONTENT_SECURITY_POLICY, header::REFERRER_POLICY, header::CACHE_CONTROL];
        if own.contains(&name) && h.contains_key(&name) {
            continue;
        }
        h.insert(name, HeaderValue::from_static(value));
    }
    if let Some(hsts) = &front.config.hsts {
        h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    front.node.metrics().observe_http(route, resp.status().as_u16(), started.elapsed());
    resp
}

/// A proxy in front of Gatehouse that is not in `trusted_proxies` makes
/// every client behind it one address (one rate-limit bucket, one audit
/// address): counted, and said in the log at the first such request after
/// start and then at most once a minute.
fn untrusted_forwarded_for(front: &Front, req: &Request) {
    if !req.headers().contains_key("x-forwarded-for") || req.extensions().get::<client_ip::ViaEnvoy>().is_some() {
        return;
    }
    let Some(peer) = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip()) else {
        return;
    };
    if front.limits.trusts(peer) {
        return;
    }
    front.node.metrics().untrusted_forwarded_for.inc();
    static WARNED: gatehouse_cluster::throttle::Throttle = gatehouse_cluster::throttle::Throttle::new(60_000);
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
    let is_ours = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_ours {
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
