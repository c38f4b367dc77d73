//! `GET /auth/verify`: forward-auth for nginx `auth_request`, Traefik
//! ForwardAuth and Caddy `forward_auth`.
//!
//! 200 with `X-Auth-User`, `X-Auth-User-Id`, `X-Auth-Roles`; 401 with
//! `WWW-Authenticate`; 403 for a disabled user or a missing role; 503 when
//! this node cannot prove it is fresh (fail closed).
//!
//! A browser without a valid session (no `Authorization`, HTML accepted)
//! is told where to sign in, with the page it wanted as the return URL
//! (from `X-Forwarded-Proto`, `-Host`, `-Uri`, kept only when the sign-in
//! pages would take it): a 401 with `Location` (nginx `auth_request` takes
//! only 401 and 403: `auth_request_set` and `error_page 401`), or with
//! `?redirect=true` a 302 (303 for other methods than GET and HEAD) that
//! Traefik and Caddy pass to the browser as it is. An API client keeps
//! the plain 401.
//!
//! With `[jwt]`, an allowed request's answer also carries a signed token
//! (`Authorization: Bearer`, or the configured header) for the app, with
//! the audience of the matching route rule (or `[jwt] audience`).

use super::client_ip::ClientIp;
use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_domain::roles;
use serde::Deserialize;

use super::caller::{authenticate, credential};
use super::forwarded;
use super::front::{Front, RouteRule};
use crate::identity::Principal;
use crate::rate_limit::limiter::RequestLimits;
use crate::ApiError;

#[derive(Debug, Deserialize)]
pub struct VerifyQuery {
    /// A role the caller must hold.
    role: Option<String>,
    /// Send a browser that must sign in a redirect (Traefik, Caddy), not a 401.
    #[serde(default)]
    redirect: bool,
}

/// Where a browser that must sign in goes: the 401 with `Location`, or the
/// redirect `?redirect=true` asks for.
fn to_sign_in(front: &Front, q: &VerifyQuery, headers: &HeaderMap, resp: Response) -> Response {
    let Some(pages) = front.config.pages.as_deref() else { return resp };
    if resp.status() != StatusCode::UNAUTHORIZED || !crate::pages::render::wants_page(headers) {
        return resp;
    }
    let back = forwarded::original_url(headers).and_then(|u| pages.return_domains.check(&u)).unwrap_or_default();
    let login = pages.login_url(&back);
    let Ok(location) = HeaderValue::from_str(&login) else { return resp };
    let mut resp = resp;
    if q.redirect {
        let method = headers.get("x-forwarded-method").map(|m| m.as_bytes());
        let status =
            if method.is_none_or(|m| m == b"GET" || m == b"HEAD") { StatusCode::FOUND } else { StatusCode::SEE_OTHER };
        *resp.status_mut() = status;
        resp.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

/// What a route rule asks of the caller's second factor (`Some`: the
/// refusal): nothing, a
/// session that presented one, or one presented within `mfa_within`. A
/// browser that must give one (again) is sent to the second-step page and
/// back; an API client gets 401 with why.
fn second_factor(
    front: &Front,
    q: &VerifyQuery,
    headers: &HeaderMap,
    rule: &RouteRule,
    p: &Principal,
) -> Option<(&'static str, Response)> {
    let decision = match factor_refusal(rule, p)? {
        Err(e) => return Some(("mfa_key_refused", e.into_response())),
        Ok(decision) => decision,
    };
    let mut resp = unauthorized(ApiError::SecondFactorRequired);
    // A browser goes to the second step (a step-up for a person with a
    // factor; enrolling one from the account page for a person without).
    if let Some(pages) = front.config.pages.as_deref().filter(|_| crate::pages::render::wants_page(headers)) {
        let back = forwarded::original_url(headers).and_then(|u| pages.return_domains.check(&u)).unwrap_or_default();
        let base = pages.public_url.as_deref().unwrap_or("").trim_end_matches('/');
        let rd: String = url::form_urlencoded::byte_serialize(back.as_bytes()).collect();
        if let Ok(location) = HeaderValue::from_str(&format!("{base}/login/factor?rd={rd}")) {
            if q.redirect {
                let method = headers.get("x-forwarded-method").map(|m| m.as_bytes());
                let get = method.is_none_or(|m| m == b"GET" || m == b"HEAD");
                *resp.status_mut() = if get { StatusCode::FOUND } else { StatusCode::SEE_OTHER };
                resp.headers_mut().remove(header::WWW_AUTHENTICATE);
            }
            resp.headers_mut().insert(header::LOCATION, location);
        }
    }
    Some((decision, resp))
}

/// Why `p` does not meet `rule`'s second-factor demand, if it does not:
/// `Ok(decision)` a factor to give (again), `Err` a refusal outright (a
/// key where keys are not accepted).
fn factor_refusal(rule: &RouteRule, p: &Principal) -> Option<Result<&'static str, ApiError>> {
    if !rule.needs_mfa() {
        return None;
    }
    let factor_at = match (&p.via, p.factor) {
        (crate::identity::Via::ApiKey { .. }, _) if rule.allow_keys => return None,
        (crate::identity::Via::ApiKey { .. }, _) => {
            let e = ApiError::PermissionDenied("this route requires a second factor: API keys are not accepted".into());
            return Some(Err(e));
        }
        (_, Some((_, at))) => at,
        (_, None) => 0,
    };
    let within = rule.mfa_within().map(|w| w.as_millis() as u64);
    let stale =
        factor_at == 0 || within.is_some_and(|w| gatehouse_cluster::clock::now_ms().saturating_sub(factor_at) > w);
    stale.then_some(Ok(if factor_at == 0 { "mfa_required" } else { "mfa_stale" }))
}

/// Whether `p` passes `rule` (one of its roles, its second factor): what a
/// voter checks before signing a token of the rule's audience for a front.
pub fn admits(rule: &RouteRule, p: &Principal) -> bool {
    holds_a_role(rule, p) && factor_refusal(rule, p).is_none()
}

/// Whether `p` holds one of the roles `rule` asks for.
fn holds_a_role(rule: &RouteRule, p: &Principal) -> bool {
    rule.roles.iter().any(|r| p.roles.contains(r))
}

fn unauthorized(e: ApiError) -> Response {
    let mut resp = e.into_response();
    if resp.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gatehouse\""));
    }
    resp
}

/// What the route rules ask of a forwarded request.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// No rule matches.
    Free,
    /// The first matching rule (one of its roles is needed).
    Needs(&'a RouteRule),
    /// Rules exist, but the forwarded request could be read two ways
    /// ([`forwarded::Ambiguous`]): a rule could be dodged by spelling, so
    /// the request is refused.
    Ambiguous,
}

/// The roles a forwarded request needs, from the first matching route rule.
/// The host is read only when a rule names one.
fn required_roles<'a>(rules: &'a [RouteRule], headers: &HeaderMap) -> Route<'a> {
    if rules.is_empty() {
        return Route::Free;
    }
    let Ok(path) = forwarded::path(headers) else { return Route::Ambiguous };
    let host = if rules.iter().any(|r| r.host.is_some()) {
        match forwarded::host(headers) {
            Ok(h) => Some(h),
            Err(_) => return Route::Ambiguous,
        }
    } else {
        None
    };
    rules
        .iter()
        .find(|r| {
            r.host.as_deref().is_none_or(|h| host.as_deref() == Some(h))
                && forwarded::under(&path, &r.path_prefix, r.ignore_case)
        })
        .map_or(Route::Free, Route::Needs)
}

/// The decision and the caller's id go on the `http.request` span, which
/// exists only while traces are exported (see `http::guard`): no span of its
/// own, so the verification path stays span-free otherwise.
pub async fn verify(
    State(front): State<Front>,
    Extension(client): Extension<ClientIp>,
    limits: Option<Extension<RequestLimits>>,
    Query(q): Query<VerifyQuery>,
    // The request itself, not a `HeaderMap` extractor: that one copies
    // every header of every request.
    req: axum::extract::Request,
) -> Response {
    let limits = limits.map(|Extension(l)| l);
    let (decision, resp) = decide(&front, &q, req.headers(), client, limits.as_ref(), &mut None).await;
    tracing::Span::current().record("decision", decision);
    front.node.metrics().verify_decision(decision);
    resp
}

/// The forward-auth decision for a request Gatehouse proxies itself
/// (`crate::proxy`): `headers` carry the credential and the request as
/// `X-Forwarded-*`; a browser that must sign in is redirected. On "allow",
/// the answer's headers are the identity to inject, and the caller is
/// returned beside it.
pub async fn check(
    front: &Front,
    headers: &HeaderMap,
    client: ClientIp,
    limits: Option<&RequestLimits>,
) -> (&'static str, Response, Option<Principal>) {
    let q = VerifyQuery { role: None, redirect: true };
    let mut allowed = None;
    let (decision, resp) = decide(front, &q, headers, client, limits, &mut allowed).await;
    front.node.metrics().verify_decision(decision);
    (decision, resp, allowed)
}

/// Whether an allowed caller still passes, for what outlives its request
/// (a WebSocket tunnel through the proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Still {
    Allowed,
    /// Revoked, expired, disabled, or no longer holding a role the route needs.
    Refused,
    /// This node cannot tell now: its view is not known to be current.
    Unknown,
}

/// Whether the caller of an allowed request still passes: its credential
/// still resolves against the view as it is now (not revoked, expired,
/// idle past its session's limit, or its user disabled), and the route
/// still admits its roles. No limits, metrics, audit, token, or use
/// recorded. A second factor's age and the session's binding are not
/// checked again: both held when the request was allowed.
///
/// What this node's view already refuses is refused at once; only an
/// "allowed" waits on the view being known current (`Unknown` otherwise).
pub async fn still_allowed(front: &Front, headers: &HeaderMap) -> Still {
    if !passes_now(front, headers) {
        return Still::Refused;
    }
    if !front.node.ensure_fresh().await {
        return Still::Unknown;
    }
    if passes_now(front, headers) {
        Still::Allowed
    } else {
        Still::Refused
    }
}

/// [`still_allowed`] against this node's view as it is.
fn passes_now(front: &Front, headers: &HeaderMap) -> bool {
    let Some((token, _)) = credential(headers, &front.config.cookie_name) else { return false };
    let Ok(principal) = crate::identity::still_valid(&front.node, &token) else { return false };
    match required_roles(&front.config.routes, headers) {
        Route::Free => true,
        Route::Needs(rule) => holds_a_role(rule, &principal),
        Route::Ambiguous => false,
    }
}

/// The decision (a bounded name, for the span and the metrics) and the answer.
async fn decide(
    front: &Front,
    q: &VerifyQuery,
    headers: &HeaderMap,
    client: ClientIp,
    limits: Option<&RequestLimits>,
    allowed: &mut Option<Principal>,
) -> (&'static str, Response) {
    if let Some(role) = &q.role {
        if roles::validate_name(role).is_err() {
            return ("invalid_argument", ApiError::InvalidArgument("invalid role name".into()).into_response());
        }
    }
    // Freshness, the credential, the caller's own limits: as every handler.
    let (principal, quota) = match authenticate(front, headers, client.0, limits, false).await {
        Ok(found) => found,
        Err(e) => {
            let decision = match &e {
                ApiError::Unauthenticated if credential(headers, &front.config.cookie_name).is_none() => {
                    "no_credential"
                }
                e => e.code(),
            };
            return (decision, to_sign_in(front, q, headers, unauthorized(e)));
        }
    };
    // Ids only, never the credential.
    tracing::Span::current().record("user_id", principal.user_id.as_str());
    let denied = |decision: &'static str, e: ApiError| {
        // Aggregated: a user without the role may hit a protected page often.
        let ip = client.0.to_string();
        front.node.audit_count("forward_auth.denied", format!("user:{}", principal.user_id), ip);
        (decision, e.into_response())
    };
    if let Some(role) = &q.role {
        if !principal.roles.contains(role) {
            return denied("missing_role", ApiError::PermissionDenied(format!("requires role {role}")));
        }
    }
    let mut audience = None;
    match required_roles(&front.config.routes, headers) {
        Route::Free => {}
        Route::Needs(rule) if holds_a_role(rule, &principal) => {
            audience = rule.audience.as_deref();
            if let Some((decision, resp)) = second_factor(front, q, headers, rule, &principal) {
                front.node.audit_count(
                    "forward_auth.denied",
                    format!("user:{}", principal.user_id),
                    client.0.to_string(),
                );
                return (decision, resp);
            }
        }
        Route::Needs(_) => {
            return denied("missing_role", ApiError::PermissionDenied("this route requires another role".into()));
        }
        Route::Ambiguous => {
            return denied("ambiguous_path", ApiError::PermissionDenied("the forwarded path is ambiguous".into()));
        }
    }
    let mut resp = allow(&principal);
    // The signed identity, when `[jwt]` is set: none, no pass.
    if let Some(jwt) = front.jwt.as_deref() {
        let audience = audience.unwrap_or(&jwt.config.audience);
        let presented = credential(headers, &front.config.cookie_name).map(|c| c.0).unwrap_or_default();
        match crate::jwt::mint::token(front, &presented, &principal, audience).await {
            Ok(minted) => {
                if let Some(v) = jwt.config.header_value(&minted.token) {
                    resp.headers_mut().insert(jwt.config.header.clone(), v);
                }
            }
            Err(e) => return ("jwt_unavailable", e.into_response()),
        }
    }
    if let Some(q) = quota {
        resp.extensions_mut().insert(q);
    }
    *allowed = Some(principal);
    ("allow", resp)
}

fn allow(p: &Principal) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    // Usernames, ids and role names are validated to header-safe ASCII.
    for (name, value) in
        [("x-auth-user", &p.username), ("x-auth-user-id", &p.user_id), ("x-auth-roles", &p.roles.join(","))]
    {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    // The second factor and its age in seconds (`none`, and no age, for a
    // key or a session without one).
    match p.factor {
        Some((factor, at)) => {
            h.insert("x-auth-mfa", HeaderValue::from_static(factor));
            let age = gatehouse_cluster::clock::now_ms().saturating_sub(at) / 1000;
            h.insert("x-auth-mfa-age", HeaderValue::from(age));
        }
        None => {
            h.insert("x-auth-mfa", HeaderValue::from_static("none"));
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: Option<&str>, prefix: &str, roles: &[&str]) -> RouteRule {
        RouteRule {
            host: host.map(str::to_string),
            path_prefix: prefix.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }
    }

    fn forwarded(host: &[u8], uri: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", HeaderValue::from_bytes(host).unwrap());
        h.insert("x-forwarded-uri", HeaderValue::from_bytes(uri).unwrap());
        h
    }

    #[test]
    fn second_factor_rules_are_checked_at_start_up() {
        let ok = RouteRule { mfa: Some("required".into()), allow_keys: true, ..rule(None, "/ops", &["admin"]) };
        assert!(ok.validate().is_ok() && ok.needs_mfa());
        let window = RouteRule { mfa_within: Some("10m".into()), ..rule(None, "/ops", &["admin"]) };
        assert_eq!(window.mfa_within(), Some(std::time::Duration::from_secs(600)));
        assert!(window.validate().is_ok() && window.needs_mfa());
        for bad in [
            RouteRule { mfa: Some("yes".into()), ..rule(None, "/ops", &["admin"]) },
            RouteRule { mfa_within: Some("5s".into()), ..rule(None, "/ops", &["admin"]) },
            RouteRule { mfa_within: Some("forever".into()), ..rule(None, "/ops", &["admin"]) },
            RouteRule { mfa_within: Some("90d".into()), ..rule(None, "/ops", &["admin"]) },
            RouteRule { allow_keys: true, ..rule(None, "/ops", &["admin"]) },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let rules = vec![rule(Some("admin.example"), "/", &["admin"]), rule(None, "/ops", &["operator", "admin"])];
        for host in ["ADMIN.example", "admin.example:443", "admin.example.", "Admin.Example.:8443"] {
            let h = forwarded(host.as_bytes(), b"/");
            assert_eq!(required_roles(&rules, &h), Route::Needs(&rules[0]), "{host}");
        }
        for ops in ["/ops", "/ops/metrics", "/ops?x=1", "/ops/a/b"] {
            let h = forwarded(b"app.example", ops.as_bytes());
            assert!(matches!(required_roles(&rules, &h), Route::Needs(r) if r.roles.len() == 2), "{ops}");
        }
        for free in ["/public", "/opsx", "/", "/o", "/OPS"] {
            assert_eq!(required_roles(&rules, &forwarded(b"app.example", free.as_bytes())), Route::Free, "{free}");
        }
    }

    #[test]
    fn a_rule_may_ignore_case() {
        let rules = vec![RouteRule { ignore_case: true, ..rule(None, "/ops", &["admin"]) }];
        for ops in ["/OPS", "/Ops/secret", "/ops"] {
            assert!(matches!(required_roles(&rules, &forwarded(b"a", ops.as_bytes())), Route::Needs(_)), "{ops}");
        }
        assert_eq!(required_roles(&rules, &forwarded(b"a", b"/OPSX")), Route::Free);
    }

    #[test]
    fn paths_that_could_dodge_a_rule_are_refused() {
        let rules = vec![rule(None, "/ops", &["admin"])];
        let hostile: [&[u8]; 11] = [
            b"//ops",
            b"/./ops",
            b"/x/../ops",
            b"/ops#/../public",
            b"/ops%2F..",
            b"\\ops",
            b"ops",
            b"/a//ops",
            b"/ops/secret?\xff",
            b"/ops;x/secret",
            b"/caf\xc3\xa9/ops",
        ];
        for raw in hostile {
            let h = forwarded(b"app.example", raw);
            assert_eq!(required_roles(&rules, &h), Route::Ambiguous, "{}", String::from_utf8_lossy(raw));
        }
        // An escaped letter is the letter: the rule still applies.
        assert!(matches!(required_roles(&rules, &forwarded(b"app.example", b"/%6Fps/x")), Route::Needs(_)));
        // A missing path is not `/`.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", HeaderValue::from_static("app.example"));
        assert_eq!(required_roles(&rules, &h), Route::Ambiguous);
        // Without rules nothing is looked at.
        assert_eq!(required_roles(&[], &forwarded(b"a", b"//ops")), Route::Free);
    }

    #[test]
    fn hosts_that_could_dodge_a_rule_are_refused() {
        let rules = vec![rule(Some("admin.example"), "/", &["admin"])];
        for raw in [&b"app.example,admin.example"[..], b"adm\xc3\xafn.example", b"admin.example:x", b"a b"] {
            let h = forwarded(raw, b"/");
            assert_eq!(required_roles(&rules, &h), Route::Ambiguous, "{}", String::from_utf8_lossy(raw));
        }
        // A missing host is not "".
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-uri", HeaderValue::from_static("/"));
        assert_eq!(required_roles(&rules, &h), Route::Ambiguous);
        // Path-only rules do not need the host.
        assert_eq!(required_roles(&[rule(None, "/ops", &["admin"])], &h), Route::Free);
    }

    #[test]
    fn rules_that_cannot_match_are_refused_at_load() {
        assert!(rule(None, "/ops", &["admin"]).validate().is_ok());
        assert!(rule(Some("admin.example.com"), "/", &["admin"]).validate().is_ok());
        for bad in [
            rule(None, "ops", &["admin"]),
            rule(None, "/ops;x", &["admin"]),
            rule(None, "/%6Fps", &["admin"]),
            rule(None, "/ops", &[]),
            rule(Some("Admin.example.com"), "/", &["admin"]),
            rule(Some("admin.example.com:443"), "/", &["admin"]),
            rule(Some("a,b"), "/", &["admin"]),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
