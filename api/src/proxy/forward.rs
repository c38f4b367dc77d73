//! The proxy's one handler: refuse ambiguous framing, find the upstream,
//! verify as `/auth/verify` does, send on, stream back.

use axum::extract::{Extension, Request, State};
use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::body::IdleBody;
use super::headers::{self, Injected};
use super::Proxy;
use crate::http::client_ip::ClientIp;
use crate::http::forwarded;
use crate::http::serve::Held;
use crate::http::verify::{self, Still};
use crate::rate_limit::limiter::RequestLimits;

/// Our own answer (the upstream's pass untouched): a JSON error without
/// any internal detail.
fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub async fn handle(
    State(proxy): State<Proxy>,
    Extension(client): Extension<ClientIp>,
    limits: Option<Extension<RequestLimits>>,
    mut req: Request,
) -> Response {
    // The target as the client sent it (the limits layer saw the request
    // as a forward-auth one; see `super::layers`).
    if let Some(Target(uri)) = req.extensions_mut().remove::<Target>() {
        *req.uri_mut() = uri;
    }
    if req.method() == axum::http::Method::CONNECT {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "CONNECT is not proxied");
    }
    if let Some(why) = headers::smuggling(req.headers()) {
        tracing::debug!(why, "a request with ambiguous framing was refused");
        return refuse(StatusCode::BAD_REQUEST, "invalid_argument", "the request's framing is ambiguous");
    }
    // The host and path the upstreams and route rules are matched on, each
    // with exactly one reading: a target's own authority (absolute form,
    // HTTP/2) must be the Host's.
    let Some(host_value) = target_host(&req) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_argument", "the request names two hosts, or none");
    };
    let host = host_value.to_str().ok().and_then(forwarded::normalise_host);
    let target = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let Some(path) = forwarded::plain_path(target.as_str()) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_argument", "the request path is ambiguous");
    };
    // Verified as a forwarded request: the credential, and the request
    // itself as X-Forwarded-* (from the request, never from the client's
    // own X-Forwarded-* headers).
    let mut asked = HeaderMap::new();
    for name in [header::AUTHORIZATION, header::COOKIE, header::ACCEPT, header::USER_AGENT] {
        for v in req.headers().get_all(&name) {
            asked.append(name.clone(), v.clone());
        }
    }
    let proto = if proxy.https { "https" } else { "http" };
    let method = HeaderValue::from_str(req.method().as_str()).unwrap_or(HeaderValue::from_static("GET"));
    asked.insert(HeaderName::from_static("x-forwarded-host"), host_value.clone());
    if let Ok(uri) = HeaderValue::from_str(target.as_str()) {
        asked.insert(HeaderName::from_static("x-forwarded-uri"), uri);
    }
    asked.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static(proto));
    asked.insert(HeaderName::from_static("x-forwarded-method"), method);
    let limits = limits.map(|Extension(l)| l);
    // A WebSocket's tunnel follows the log from before its verification:
    // a change applied in between is one it has not seen.
    let applied = (req.method() == axum::http::Method::GET && headers::is_websocket(req.headers()))
        .then(|| proxy.front.node.view().subscribe());
    let (_, answer, allowed) = crate::http::verify::check(&proxy.front, &asked, client, limits.as_ref()).await;
    let Some(principal) = allowed else {
        // 401 (a browser: a redirect to sign in), 403, 429, 503: as verify answers.
        return answer;
    };
    // Only now, so that a stranger learns nothing of what is routed.
    let Some(upstream) = proxy.config.upstream(host.as_deref(), &path) else {
        return refuse(StatusCode::NOT_FOUND, "not_found", "no upstream serves this host and path");
    };
    let email = proxy.front.node.view().read().user(&principal.user_id).map(|u| u.email.clone()).unwrap_or_default();

    let websocket = applied.is_some();
    let from_client = websocket.then(|| hyper::upgrade::on(&mut req));
    let held = req.extensions_mut().remove::<Held>();
    let (parts, body) = req.into_parts();
    let mut h = parts.headers;
    let jwt = proxy.front.jwt.as_ref().map(|j| &j.config.header);
    headers::upstream_request(
        &mut h,
        websocket,
        &Injected {
            identity: &proxy.config.identity,
            answer: answer.headers(),
            jwt,
            principal: &principal,
            email: &email,
            client: client.0,
            proto,
            host: &host_value,
            cookie_name: &proxy.front.config.cookie_name,
            pass_credentials: upstream.pass_credentials,
        },
    );
    let mut uri = upstream.url.clone().into_parts();
    uri.path_and_query = Some(target);
    let Ok(uri) = axum::http::Uri::from_parts(uri) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_argument", "the request path cannot be sent on");
    };
    let idle = proxy.config.idle_timeout;
    // The first-byte timeout runs from the end of the request body (an
    // upload is bounded by the idle timeout while it moves); a request
    // without one starts it at once, with no body to watch.
    let (body, sent_all) = if http_body::Body::is_end_stream(&body) {
        (body, None)
    } else {
        let (body, sent_all) = IdleBody::watched(body, idle);
        (axum::body::Body::new(body), Some(sent_all))
    };
    let mut out = axum::http::Request::new(body);
    *out.method_mut() = parts.method;
    *out.version_mut() = axum::http::Version::HTTP_11;
    *out.uri_mut() = uri;
    *out.headers_mut() = h;
    let first_byte = proxy.config.first_byte_timeout;
    let late = async move {
        if let Some(sent_all) = sent_all {
            let _ = sent_all.await;
        }
        tokio::time::sleep(first_byte).await;
    };
    let mut resp = tokio::select! {
        answered = proxy.client.request(out) => match answered {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(upstream = %upstream.url, error = %e, "the upstream could not be reached");
                return refuse(StatusCode::BAD_GATEWAY, "bad_gateway", "the upstream did not answer");
            }
        },
        () = late => {
            tracing::warn!(upstream = %upstream.url, "the upstream did not answer in time");
            return refuse(StatusCode::GATEWAY_TIMEOUT, "gateway_timeout", "the upstream did not answer in time");
        }
    };
    headers::strip_set_cookies(resp.headers_mut(), &proxy.front.config.cookie_name);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Only to the WebSocket that was asked for.
        let agreed =
            resp.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
                && resp.headers().contains_key(header::SEC_WEBSOCKET_ACCEPT);
        let Some(from_client) = from_client.filter(|_| agreed) else {
            return refuse(StatusCode::BAD_GATEWAY, "bad_gateway", "the upstream switched protocols unasked");
        };
        let from_upstream = hyper::upgrade::on(&mut resp);
        let front = proxy.front.clone();
        tokio::spawn(async move {
            let (Ok(a), Ok(b)) = tokio::join!(from_client, from_upstream) else { return };
            let open = front.node.metrics().proxy_tunnels.clone();
            open.inc();
            let bytes = tunnel(hyper_util::rt::TokioIo::new(a), hyper_util::rt::TokioIo::new(b), idle);
            let drained = async move {
                match held {
                    Some(h) => h.draining().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = bytes => {}
                () = refused(&front, &asked, applied) => {
                    tracing::info!(user_id = %principal.user_id, "a WebSocket tunnel was closed: its caller no longer passes");
                }
                () = drained => tracing::debug!("a WebSocket tunnel was closed: the listener drains"),
            }
            open.dec();
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    let mut resp = resp.map(|b| axum::body::Body::new(IdleBody::new(b, idle)));
    // The upstream's own answer: its 401 is no refused Gatehouse credential.
    resp.extensions_mut().insert(crate::rate_limit::layer::FromUpstream);
    resp
}

/// The request target as the proxy's limits layer set it aside.
#[derive(Clone)]
pub struct Target(pub axum::http::Uri);

/// The host a request names: its `Host`, or its target's authority (an
/// absolute-form target, HTTP/2's `:authority`); `None` when both are
/// given and differ, or neither is.
fn target_host(req: &Request) -> Option<HeaderValue> {
    let host = req.headers().get(header::HOST);
    let authority = req.uri().authority().map(|a| a.as_str());
    match (host, authority) {
        (Some(h), Some(a)) if h.as_bytes().eq_ignore_ascii_case(a.as_bytes()) => Some(h.clone()),
        (Some(_), Some(_)) => None,
        (Some(h), None) => Some(h.clone()),
        (None, Some(a)) => HeaderValue::from_str(a).ok(),
        (None, None) => None,
    }
}

/// Resolves once the caller of a tunnel no longer passes (see
/// [`verify::still_allowed`]): checked whenever the log moves (at most
/// four times a second) and every 30 s (for an expiry). A node that cannot
/// tell (its view not known to be current) keeps the tunnel for up to
/// [`UNKNOWN_GRACE`], then closes it.
async fn refused(front: &crate::http::Front, asked: &HeaderMap, applied: Option<tokio::sync::watch::Receiver<u64>>) {
    let mut applied = applied.unwrap_or_else(|| front.node.view().subscribe());
    let mut unknown_since = None;
    loop {
        // While in doubt, no longer than the grace left.
        let wait = unknown_since
            .map_or(RECHECK, |since: tokio::time::Instant| UNKNOWN_GRACE.saturating_sub(since.elapsed()).min(RECHECK));
        let _ = tokio::time::timeout(wait, applied.changed()).await;
        match verify::still_allowed(front, asked).await {
            Still::Allowed => unknown_since = None,
            Still::Refused => return,
            Still::Unknown => {
                let since = *unknown_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= UNKNOWN_GRACE {
                    return;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// A tunnel's caller is checked at least this often (for an expiry).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a tunnel outlives its node's doubt about its view.
const UNKNOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Bytes both ways between a WebSocket's client and its upstream, until
/// either closes or neither sends anything for `idle`.
async fn tunnel<A, B>(mut a: A, mut b: B, idle: std::time::Duration)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_a, mut from_b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let moved = tokio::time::timeout(idle, async {
            tokio::select! {
                n = a.read(&mut from_a) => match n {
                    Ok(n) if n > 0 => b.write_all(&from_a[..n]).await.is_ok(),
                    _ => false,
                },
                n = b.read(&mut from_b) => match n {
                    Ok(n) if n > 0 => a.write_all(&from_b[..n]).await.is_ok(),
                    _ => false,
                },
            }
        })
        .await;
        if !matches!(moved, Ok(true)) {
            let _ = a.shutdown().await;
            let _ = b.shutdown().await;
            return;
        }
    }
}
