//! Reverse-proxy mode: Gatehouse itself in the request path (as
//! oauth2-proxy is), for those with no nginx, Traefik or Caddy to ask it.
//! Each request is verified exactly as `/auth/verify` verifies a forwarded
//! one (the same function, route rules and limits), then sent on to the
//! upstream its host and path name, with the caller's identity injected
//! and every client copy of it removed (docs/proxy.md).
//!
//! # Layout
//! - [`config`]: `[proxy]` as a node runs it: upstreams by host and path
//!   prefix, timeouts, identity header names.
//! - [`headers`]: what goes upstream and back: hop-by-hop headers
//!   (RFC 9110 §7.6.1), identity headers stripped then injected,
//!   `X-Forwarded-*`, Gatehouse's own credential kept back; and the
//!   requests refused as smuggling attempts.
//! - [`body`]: a streamed body with an idle timeout.
//! - [`client`]: the pooled hyper client (HTTP, or HTTPS with an optional
//!   client certificate for mutual TLS to the upstream).
//! - [`forward`]: the handler: verify, send on, stream back, WebSocket upgrades.

pub mod body;
pub mod client;
pub mod config;
pub mod forward;
pub mod headers;

use std::sync::Arc;

pub use config::{ProxyConfig, Upstream};

use crate::http::front::Front;

/// What the proxy's handler shares: the front it verifies with, the
/// settings and the client.
#[derive(Clone)]
pub struct Proxy(Arc<ProxyParts>);

pub struct ProxyParts {
    pub front: Front,
    pub config: ProxyConfig,
    pub client: client::Client,
    /// Whether this listener serves HTTPS (for `X-Forwarded-Proto`).
    pub https: bool,
}

impl std::ops::Deref for Proxy {
    type Target = ProxyParts;

    fn deref(&self) -> &ProxyParts {
        &self.0
    }
}

impl Proxy {
    pub fn new(front: Front, config: ProxyConfig, https: bool) -> Result<Proxy, String> {
        let client = client::Client::new(&config)?;
        Ok(Proxy(Arc::new(ProxyParts { front, config, client, https })))
    }
}

/// The proxy listener's router: every path goes to [`forward::handle`],
/// after the client's address is resolved and the rate limits applied
/// (as on the HTTP front); nothing else of the front's (its JSON errors,
/// its security headers) touches an upstream's answer.
pub fn router(proxy: Proxy) -> axum::Router {
    axum::Router::new()
        .fallback(forward::handle)
        .with_state(proxy.clone())
        .layer(axum::middleware::from_fn_with_state(proxy, layers))
}

/// The client's address, then the rate limits, applied to the request as
/// the forward-auth request it stands for: path `/auth/verify`, the
/// request itself as `X-Forwarded-Host`, `-Uri`, `-Method` (so the
/// policies of forward-auth apply, the upstream's own paths are never
/// taken for Gatehouse's, and a client's own `X-Forwarded-*` never
/// chooses a bucket). The target is set aside for the handler. Quota
/// headers go on the answer, as forward-auth's do.
async fn layers(
    axum::extract::State(proxy): axum::extract::State<Proxy>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, HeaderName, HeaderValue};
    let front = &proxy.front;
    crate::http::client_ip::resolve_into(front, &mut req);
    let target = req.uri().clone();
    let host = req.headers().get(header::HOST).cloned();
    let h = req.headers_mut();
    for name in ["x-forwarded-host", "x-forwarded-uri", "x-forwarded-method", "x-forwarded-proto"] {
        h.remove(name);
    }
    if let Some(host) = host {
        h.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    let path = target.path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = HeaderValue::from_str(path) {
        h.insert(HeaderName::from_static("x-forwarded-uri"), uri);
    }
    if let Ok(method) = HeaderValue::from_str(req.method().as_str()) {
        req.headers_mut().insert(HeaderName::from_static("x-forwarded-method"), method);
    }
    req.extensions_mut().insert(forward::Target(target));
    *req.uri_mut() = axum::http::Uri::from_static("/auth/verify");
    crate::rate_limit::layer::around(front, req, next).await
}
