//! Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check`):
//! the same decision as `GET /auth/verify`, because it *is* that request.
//!
//! A `CheckRequest` is turned into the forward-auth request an nginx or a
//! Caddy would send (the client's headers, `X-Forwarded-Host`/`-Uri`/
//! `-Method` from the request's attributes, the client's address from its
//! source peer) and answered by the HTTP front's own router in-process: the
//! freshness check, the credential (`authorization` or the session cookie),
//! route rules with their refusal of ambiguous spellings, rate limits and
//! the audit all run as for `/auth/verify`. The answer becomes:
//!
//! - allowed: `ok_response` with `X-Auth-User`, `X-Auth-User-Id`,
//!   `X-Auth-Roles`, `X-Auth-MFA` and `X-Auth-MFA-Age` set (overwriting client copies), every other `x-auth-*`
//!   header the client sent in `headers_to_remove`, and the quota headers
//!   for the client's response;
//! - refused: `denied_response` with the status (401, 403, 429, 503, or 400
//!   for a malformed check), `WWW-Authenticate`, `Retry-After`,
//!   `X-RateLimit-*` and the JSON error body.
//!
//! A check is bounded: at most [`MAX_HEADERS`] headers, [`MAX_HEADER_BYTES`]
//! of them (431 past either), header names and values HTTP allows (400
//! otherwise), and a source address (400 without one: rate limits and the
//! audit need it).

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use envoy_types::ext_authz::v3::pb::{
    Address, Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response as GrpcResponse, Status};
use tower::ServiceExt;

use crate::http::front::Front;
use crate::ApiError;

/// Most headers a checked request may carry.
pub const MAX_HEADERS: usize = 128;
/// Most bytes of header names and values a checked request may carry
/// (the HTTP front's own head limit).
pub const MAX_HEADER_BYTES: usize = crate::http::MAX_HEADER_BYTES;
/// Largest `CheckRequest` decoded (headers, and a body Envoy may be told to send).
pub const MAX_CHECK_BYTES: usize = 256 << 10;
/// Largest error body passed back to Envoy.
const MAX_BODY: usize = 4 << 10;

/// The identity headers an allowed request carries upstream.
const IDENTITY: [&str; 5] = ["x-auth-user", "x-auth-user-id", "x-auth-roles", "x-auth-mfa", "x-auth-mfa-age"];
/// Headers of a refusal that the client should see.
const DENIAL_HEADERS: [&str; 7] = [
    "www-authenticate",
    // Where a browser signs in, or gives its second factor again.
    "location",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "content-type",
];

pub struct ExtAuthz {
    app: axum::Router,
    /// Where the signed identity goes upstream (`[jwt] header`), if minted.
    jwt_header: Option<axum::http::HeaderName>,
}

/// The service over the HTTP front `front` (the same router `/auth/verify` runs on).
pub fn server(front: Front) -> AuthorizationServer<ExtAuthz> {
    let jwt_header = front.jwt.as_ref().map(|j| j.config.header.clone());
    AuthorizationServer::new(ExtAuthz { app: crate::http::router(front), jwt_header })
        .max_decoding_message_size(MAX_CHECK_BYTES)
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, req: Request<CheckRequest>) -> Result<GrpcResponse<CheckResponse>, Status> {
        let check = req.into_inner();
        let sent = client_headers(&check);
        let answer = match forward_auth_request(&check) {
            Ok(request) => match self.app.clone().oneshot(request).await {
                Ok(r) => r,
                Err(never) => match never {},
            },
            Err(refused) => refused.into_response(),
        };
        Ok(GrpcResponse::new(check_response(answer, sent.as_ref(), self.jwt_header.as_ref()).await))
    }
}

/// Why a check could not be read as a request.
enum Malformed {
    Invalid(&'static str),
    TooLarge,
}

impl IntoResponse for Malformed {
    fn into_response(self) -> Response {
        match self {
            Malformed::Invalid(why) => ApiError::InvalidArgument(why.into()).into_response(),
            Malformed::TooLarge => {
                let body = serde_json::json!({ "error": {
                    "code": "headers_too_large",
                    "message": format!("at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes of them"),
                }});
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, axum::Json(body)).into_response()
            }
        }
    }
}

/// The checked request's headers, as Envoy sent them (raw, or as a map).
fn client_headers(check: &CheckRequest) -> Option<Vec<(String, Vec<u8>)>> {
    let http = check.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
    Some(match &http.header_map {
        Some(map) if !map.headers.is_empty() => map
            .headers
            .iter()
            .map(|h| {
                let value = if h.raw_value.is_empty() { h.value.as_bytes().to_vec() } else { h.raw_value.clone() };
                (h.key.clone(), value)
            })
            .collect(),
        _ => http.headers.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect(),
    })
}

/// The forward-auth request a `CheckRequest` stands for (see the module docs).
fn forward_auth_request(check: &CheckRequest) -> Result<axum::http::Request<Body>, Malformed> {
    let attributes = check.attributes.as_ref().ok_or(Malformed::Invalid("the check has no attributes"))?;
    let http = attributes
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .ok_or(Malformed::Invalid("the check has no HTTP request attributes"))?;
    let source = source_address(attributes).ok_or(Malformed::Invalid("the check has no source address"))?;
    let sent = client_headers(check).unwrap_or_default();
    if sent.len() > MAX_HEADERS {
        return Err(Malformed::TooLarge);
    }
    let bytes: usize = sent.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + http.path.len() + http.host.len();
    if bytes > MAX_HEADER_BYTES {
        return Err(Malformed::TooLarge);
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &sent {
        // HTTP/2 pseudo-headers are the attributes below.
        if name.starts_with(':') {
            continue;
        }
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| Malformed::Invalid("a malformed header name"))?;
        let value = HeaderValue::from_bytes(value).map_err(|_| Malformed::Invalid("a malformed header value"))?;
        headers.append(name, value);
    }
    // What the protected request is comes from Envoy, never from the client.
    for (name, value) in
        [("x-forwarded-host", &http.host), ("x-forwarded-uri", &http.path), ("x-forwarded-method", &http.method)]
    {
        headers.remove(name);
        if !value.is_empty() {
            let value =
                HeaderValue::from_str(value).map_err(|_| Malformed::Invalid("a malformed host, path or method"))?;
            headers.insert(name, value);
        }
    }
    let mut request = axum::http::Request::get("/auth/verify").body(Body::empty()).expect("a valid request");
    *request.headers_mut() = headers;
    request.extensions_mut().insert(axum::extract::ConnectInfo(source));
    request.extensions_mut().insert(crate::http::client_ip::ViaEnvoy);
    Ok(request)
}

/// The client as Envoy saw it (its downstream peer).
fn source_address(attributes: &envoy_types::pb::envoy::service::auth::v3::AttributeContext) -> Option<SocketAddr> {
    let address = attributes.source.as_ref()?.address.as_ref()?.address.as_ref()?;
    let Address::SocketAddress(socket) = address else { return None };
    let ip: IpAddr = socket.address.parse().ok()?;
    let port = match socket.port_specifier {
        Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p as u16,
        _ => 0,
    };
    Some(SocketAddr::new(ip, port))
}

fn header_option(name: &str, value: &HeaderValue, action: HeaderAppendAction) -> Option<HeaderValueOption> {
    Some(HeaderValueOption {
        header: Some(envoy_types::ext_authz::v3::pb::HeaderValue {
            key: name.to_string(),
            value: value.to_str().ok()?.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    })
}

/// The HTTP front's answer as Envoy's.
async fn check_response(
    answer: Response,
    sent: Option<&Vec<(String, Vec<u8>)>>,
    jwt_header: Option<&axum::http::HeaderName>,
) -> CheckResponse {
    let status = answer.status();
    let headers = answer.headers().clone();
    if status == StatusCode::OK {
        // The signed identity replaces whatever the client sent under its
        // name; with `[jwt]`, the Gatehouse credential it stands for does
        // not go upstream either (a key or session token in
        // `Authorization`), nor the underscore spelling of its header.
        let jwt = jwt_header.map(|h| h.as_str());
        let underscored = jwt.map(|h| h.replace('-', "_"));
        let credential = |name: &str, value: &[u8]| {
            name == "authorization"
                && jwt.is_some_and(|h| h != "authorization")
                && crate::identity::bearer(std::str::from_utf8(value).unwrap_or_default())
                    .is_some_and(crate::identity::is_gatehouse_token)
        };
        let set = IDENTITY
            .iter()
            .copied()
            .chain(jwt)
            .filter_map(|name| header_option(name, headers.get(name)?, HeaderAppendAction::OverwriteIfExistsOrAdd))
            .collect();
        // Any other identity-looking header a client sent is dropped (with
        // underscores too: some backends read `x_auth_user` as `X-Auth-User`),
        // and so is an identity header this answer does not set.
        let mut to_remove: Vec<String> = sent
            .into_iter()
            .flatten()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .filter(|(name, value)| {
                let identity_like = (name.starts_with("x-auth-") || name.starts_with("x_auth_"))
                    && !IDENTITY.contains(&name.as_str())
                    && Some(name.as_str()) != jwt;
                identity_like || underscored.as_deref() == Some(name.as_str()) || credential(name, value)
            })
            .map(|(name, _)| name)
            .chain(
                IDENTITY
                    .iter()
                    .copied()
                    .chain(jwt)
                    .filter(|n| headers.get(*n).and_then(|v| v.to_str().ok()).is_none())
                    .map(|n| n.to_string()),
            )
            .collect();
        to_remove.sort();
        to_remove.dedup();
        let quota = ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]
            .iter()
            .filter_map(|name| header_option(name, headers.get(*name)?, HeaderAppendAction::OverwriteIfExistsOrAdd))
            .collect();
        return CheckResponse {
            status: Some(rpc::Status { code: tonic::Code::Ok as i32, ..Default::default() }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: set,
                headers_to_remove: to_remove,
                response_headers_to_add: quota,
                ..Default::default()
            })),
            ..Default::default()
        };
    }
    let denial_headers = DENIAL_HEADERS
        .iter()
        .filter_map(|name| header_option(name, headers.get(*name)?, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    let body = axum::body::to_bytes(answer.into_body(), MAX_BODY).await.unwrap_or_default();
    let code =
        if status == StatusCode::UNAUTHORIZED { tonic::Code::Unauthenticated } else { tonic::Code::PermissionDenied };
    CheckResponse {
        status: Some(rpc::Status { code: code as i32, ..Default::default() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(status.as_u16()) }),
            headers: denial_headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{socket_address::PortSpecifier, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request as Req};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    fn check(headers: &[(&str, &str)], source: Option<&str>) -> CheckRequest {
        let address = source.map(|ip| envoy_types::pb::envoy::config::core::v3::Address {
            address: Some(Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(4242)),
                ..Default::default()
            })),
        });
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer { address, ..Default::default() }),
                request: Some(Req {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        host: "app.example".into(),
                        path: "/ops/x?y=1".into(),
                        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_protected_request_is_what_envoy_says_not_what_the_client_says() {
        let c = check(
            &[(":authority", "app.example"), ("x-forwarded-uri", "/public"), ("authorization", "Bearer gk_x")],
            Some("192.0.2.1"),
        );
        let r = forward_auth_request(&c).ok().unwrap();
        assert_eq!(r.uri(), "/auth/verify");
        assert_eq!(r.headers()["x-forwarded-uri"], "/ops/x?y=1");
        assert_eq!(r.headers()["x-forwarded-host"], "app.example");
        assert_eq!(r.headers()["authorization"], "Bearer gk_x");
        assert!(!r.headers().contains_key(":authority"));
        let peer = r.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().unwrap().0;
        assert_eq!(peer, "192.0.2.1:4242".parse().unwrap());
    }

    #[test]
    fn malformed_checks_are_refused_by_kind() {
        let status = |c: &CheckRequest| forward_auth_request(c).err().unwrap().into_response().status();
        assert_eq!(status(&CheckRequest::default()), StatusCode::BAD_REQUEST);
        assert_eq!(status(&check(&[], None)), StatusCode::BAD_REQUEST, "no source address");
        assert_eq!(status(&check(&[], Some("not-an-ip"))), StatusCode::BAD_REQUEST);
        assert_eq!(status(&check(&[("bad name", "v")], Some("192.0.2.1"))), StatusCode::BAD_REQUEST);
        assert_eq!(status(&check(&[("x", "a\nb")], Some("192.0.2.1"))), StatusCode::BAD_REQUEST);
        let many: Vec<(String, String)> = (0..=MAX_HEADERS).map(|i| (format!("h{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(status(&check(&many, Some("192.0.2.1"))), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let big = "x".repeat(MAX_HEADER_BYTES);
        assert_eq!(status(&check(&[("cookie", &big)], Some("192.0.2.1"))), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[tokio::test]
    async fn an_allowed_check_sets_identity_and_drops_the_client_s_own() {
        let mut answer = StatusCode::OK.into_response();
        answer.headers_mut().insert("x-auth-user", HeaderValue::from_static("alice"));
        answer.headers_mut().insert("x-auth-user-id", HeaderValue::from_static("0123"));
        answer.headers_mut().insert("x-auth-roles", HeaderValue::from_static("viewer"));
        answer.headers_mut().insert("x-auth-mfa", HeaderValue::from_static("totp"));
        answer.headers_mut().insert("x-auth-mfa-age", HeaderValue::from_static("12"));
        let sent = vec![
            ("x-auth-mfa".to_string(), b"totp".to_vec()),
            ("x-auth-user".to_string(), b"mallory".to_vec()),
            ("X-Auth-Admin".to_string(), b"1".to_vec()),
            ("x_auth_user".to_string(), b"mallory".to_vec()),
        ];
        let r = check_response(answer, Some(&sent), None).await;
        assert_eq!(r.status.unwrap().code, 0);
        let Some(HttpResponse::OkResponse(ok)) = r.http_response else { panic!("allowed") };
        let set: Vec<(String, String)> =
            ok.headers.iter().map(|h| h.header.as_ref().map(|h| (h.key.clone(), h.value.clone())).unwrap()).collect();
        assert!(set.contains(&("x-auth-user".into(), "alice".into())));
        assert!(set.contains(&("x-auth-mfa".into(), "totp".into())), "the factor is ours, not the client's");
        assert!(ok.headers.iter().all(|h| h.append_action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32));
        assert_eq!(ok.headers_to_remove, vec!["x-auth-admin".to_string(), "x_auth_user".to_string()]);
        // An identity header the answer does not carry is removed, not left to the client.
        let mut partial = StatusCode::OK.into_response();
        partial.headers_mut().insert("x-auth-user", HeaderValue::from_static("alice"));
        let Some(HttpResponse::OkResponse(ok)) = check_response(partial, None, None).await.http_response else {
            panic!()
        };
        let gone = ["x-auth-mfa", "x-auth-mfa-age", "x-auth-roles", "x-auth-user-id"];
        assert_eq!(ok.headers_to_remove, gone.map(String::from).to_vec());
    }

    #[tokio::test]
    async fn the_signed_identity_replaces_the_client_s_header_of_its_name() {
        let jwt = axum::http::HeaderName::from_static("x-auth-jwt");
        let mut answer = StatusCode::OK.into_response();
        answer.headers_mut().insert("x-auth-user", HeaderValue::from_static("alice"));
        answer.headers_mut().insert("x-auth-jwt", HeaderValue::from_static("eyJ.minted.sig"));
        let sent = vec![("x-auth-jwt".to_string(), b"eyJ.forged.sig".to_vec())];
        let Some(HttpResponse::OkResponse(ok)) = check_response(answer, Some(&sent), Some(&jwt)).await.http_response
        else {
            panic!("allowed")
        };
        let set: Vec<(String, String)> =
            ok.headers.iter().map(|h| h.header.as_ref().map(|h| (h.key.clone(), h.value.clone())).unwrap()).collect();
        assert!(set.contains(&("x-auth-jwt".into(), "eyJ.minted.sig".into())));
        assert!(!ok.headers_to_remove.contains(&"x-auth-jwt".to_string()), "set, not removed after");
        // The Gatehouse credential the token stands for does not go upstream
        // beside it, nor the header's underscore spelling; another scheme does.
        let mut answer = StatusCode::OK.into_response();
        answer.headers_mut().insert("x-auth-jwt", HeaderValue::from_static("eyJ.minted.sig"));
        for (value, removed) in [("Bearer gk_abc.def", true), ("Bearer gs_abc", true), ("Basic dXNlcjpwdw==", false)] {
            let sent = vec![
                ("Authorization".to_string(), value.as_bytes().to_vec()),
                ("x_auth_jwt".to_string(), b"eyJ.forged.sig".to_vec()),
            ];
            let mut again = StatusCode::OK.into_response();
            *again.headers_mut() = answer.headers().clone();
            let Some(HttpResponse::OkResponse(ok)) = check_response(again, Some(&sent), Some(&jwt)).await.http_response
            else {
                panic!("allowed")
            };
            assert_eq!(ok.headers_to_remove.contains(&"authorization".to_string()), removed, "{value}");
            assert!(ok.headers_to_remove.contains(&"x_auth_jwt".to_string()));
        }
        // `Authorization`: the client's Gatehouse key is replaced by the token.
        let auth = axum::http::header::AUTHORIZATION;
        let mut answer = StatusCode::OK.into_response();
        answer.headers_mut().insert(auth.clone(), HeaderValue::from_static("Bearer eyJ.minted.sig"));
        let Some(HttpResponse::OkResponse(ok)) = check_response(answer, None, Some(&auth)).await.http_response else {
            panic!("allowed")
        };
        let h = ok.headers.iter().find(|h| h.header.as_ref().unwrap().key == "authorization").unwrap();
        assert_eq!(h.header.as_ref().unwrap().value, "Bearer eyJ.minted.sig");
        assert_eq!(h.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
        // Without `[jwt]`, a client's `Authorization` is left alone (it is no identity header).
        let Some(HttpResponse::OkResponse(ok)) =
            check_response(StatusCode::OK.into_response(), None, None).await.http_response
        else {
            panic!("allowed")
        };
        assert!(!ok.headers_to_remove.contains(&"authorization".to_string()));
    }

    #[tokio::test]
    async fn a_refusal_keeps_its_status_headers_and_body() {
        let answer = ApiError::Unauthenticated.into_response();
        let mut answer = answer;
        answer
            .headers_mut()
            .insert(axum::http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gatehouse\""));
        let r = check_response(answer, None, None).await;
        assert_eq!(r.status.unwrap().code, tonic::Code::Unauthenticated as i32);
        let Some(HttpResponse::DeniedResponse(d)) = r.http_response else { panic!("denied") };
        assert_eq!(d.status.unwrap().code, 401);
        assert!(d.headers.iter().any(|h| h.header.as_ref().unwrap().key == "www-authenticate"));
        assert!(d.body.contains("unauthenticated"));
    }
}
