//! The proxy's one handler: refuse ambiguous framing, find the upstream,
//! verify as `/auth/verify` does, send on, stream back.

use axum::extract::{Extension, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::body::IdleBody;
use super::headers::{self, Injected};
use super::Proxy;
use crate::http::client_ip::ClientIp;
use crate::http::forwarded;
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
    if let Some(why) = headers::smuggling(req.headers()) {
        tracing::debug!(why, "a request with ambiguous framing was refused");
        return refuse(StatusCode::BAD_REQUEST, "invalid_argument", "the request's framing is ambiguous");
    }
    // The host and path the upstreams and route rules are matched on, each
    // with exactly one reading.
    let host_value = req
        .headers()
        .get(header::HOST)
        .cloned()
        .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    let host = host_value.as_ref().and_then(|h| h.to_str().ok()).and_then(forwarded::normalise_host);
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    let Some(path) = forwarded::plain_path(&target).map(|p| p.into_owned()) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_argument", "the request path is ambiguous");
    };
    let Some(upstream) = proxy.config.upstream(host.as_deref(), &path).cloned() else {
        return refuse(StatusCode::NOT_FOUND, "not_found", "no upstream serves this host and path");
    };
    // Verified as a forwarded request: the credential, and the request
    // itself as X-Forwarded-* (from the request, never from the client's
    // own X-Forwarded-* headers).
    let mut asked = HeaderMap::new();
    for name in [header::AUTHORIZATION, header::COOKIE, header::ACCEPT] {
        for v in req.headers().get_all(&name) {
            asked.append(name.clone(), v.clone());
        }
    }
    let proto = if proxy.https { "https" } else { "http" };
    let method = HeaderValue::from_str(req.method().as_str()).unwrap_or(HeaderValue::from_static("GET"));
    if let Some(h) = &host_value {
        asked.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
    }
    if let Ok(uri) = HeaderValue::from_str(&target) {
        asked.insert(HeaderName::from_static("x-forwarded-uri"), uri);
    }
    asked.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static(proto));
    asked.insert(HeaderName::from_static("x-forwarded-method"), method);
    let limits = limits.map(|Extension(l)| l);
    let (_, answer, allowed) = crate::http::verify::check(&proxy.front, &asked, client, limits.as_ref()).await;
    let Some(principal) = allowed else {
        // 401 (a browser: a redirect to sign in), 403, 429, 503: as verify answers.
        return answer;
    };
    let email = proxy.front.node.view().read().user(&principal.user_id).map(|u| u.email.clone()).unwrap_or_default();

    let websocket = headers::is_websocket(req.headers());
    let from_client = websocket.then(|| hyper::upgrade::on(&mut req));
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
            host: host_value.as_ref(),
            cookie_name: &proxy.front.config.cookie_name,
            pass_credentials: upstream.pass_credentials,
        },
    );
    let base = upstream.url.to_string();
    let uri = format!("{}{target}", base.trim_end_matches('/'));
    let idle = proxy.config.idle_timeout;
    let (body, sent_all) = IdleBody::watched(body, idle);
    let mut out = axum::http::Request::new(axum::body::Body::new(body));
    *out.method_mut() = parts.method;
    *out.version_mut() = axum::http::Version::HTTP_11;
    let Ok(uri) = uri.parse() else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_argument", "the request path cannot be sent on");
    };
    *out.uri_mut() = uri;
    *out.headers_mut() = h;
    // The first-byte timeout runs from the end of the request body (an
    // upload is bounded by the idle timeout while it moves).
    let first_byte = proxy.config.first_byte_timeout;
    let late = async move {
        let _ = sent_all.await;
        tokio::time::sleep(first_byte).await;
    };
    let mut resp = tokio::select! {
        answered = proxy.client.request(out) => match answered {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(upstream = %base, error = %e, "the upstream could not be reached");
                return refuse(StatusCode::BAD_GATEWAY, "bad_gateway", "the upstream did not answer");
            }
        },
        () = late => {
            tracing::warn!(upstream = %base, "the upstream did not answer in time");
            return refuse(StatusCode::GATEWAY_TIMEOUT, "gateway_timeout", "the upstream did not answer in time");
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(from_client) = from_client else {
            return refuse(StatusCode::BAD_GATEWAY, "bad_gateway", "the upstream switched protocols unasked");
        };
        let from_upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(a), Ok(b)) = tokio::join!(from_client, from_upstream) else { return };
            let (mut a, mut b) = (hyper_util::rt::TokioIo::new(a), hyper_util::rt::TokioIo::new(b));
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    resp.map(|b| axum::body::Body::new(IdleBody::new(b, idle)))
}
