//! `GET /auth/verify`: forward-auth for nginx `auth_request`, Traefik
//! ForwardAuth and Caddy `forward_auth`.
//!
//! 200 with `X-Auth-User`, `X-Auth-User-Id`, `X-Auth-Roles`; 401 with
//! `WWW-Authenticate`; 403 for a disabled user or a missing role; 503 when
//! this node cannot prove it is fresh (fail closed).

use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_domain::roles;
use serde::Deserialize;

use super::{credential, Front, RouteRule};
use crate::identity::{resolve, Principal, Via};
use crate::limits::RequestLimits;
use crate::ApiError;

#[derive(Debug, Deserialize)]
pub struct VerifyQuery {
    /// A role the caller must hold.
    role: Option<String>,
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
    /// The first matching rule's roles (one of them is needed).
    Needs(&'a [String]),
    /// Rules exist, but the forwarded path could be read two ways
    /// (`//`, `.` or `..` segments, percent-escapes, backslashes): a rule
    /// could be dodged by spelling, so the request is refused.
    Ambiguous,
}

/// The path of a forwarded URI, if it has exactly one reading.
pub(crate) fn plain_path(uri: &str) -> Option<&str> {
    let path = uri.split(['?', '#']).next().unwrap_or("");
    let ambiguous = !path.starts_with('/')
        || path.contains("//")
        || path.contains(['%', '\\'])
        || path.split('/').any(|seg| seg == "." || seg == "..");
    (!ambiguous).then_some(path)
}

/// `prefix` covers `path` on a segment boundary: `/ops` covers `/ops` and
/// `/ops/x`, not `/opsx`.
pub(crate) fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
}

/// The roles a forwarded request needs, from the first matching route rule.
fn required_roles<'a>(rules: &'a [RouteRule], headers: &HeaderMap) -> Route<'a> {
    if rules.is_empty() {
        return Route::Free;
    }
    let host = headers.get("x-forwarded-host").and_then(|v| v.to_str().ok()).unwrap_or("");
    let uri = headers.get("x-forwarded-uri").and_then(|v| v.to_str().ok()).unwrap_or("/");
    let Some(path) = plain_path(uri) else { return Route::Ambiguous };
    rules
        .iter()
        .find(|r| r.host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(host)) && under(path, &r.path_prefix))
        .map_or(Route::Free, |r| Route::Needs(&r.roles))
}

/// The decision and the caller's id go on the `http.request` span, which
/// exists only while traces are exported (see `http::guard`): no span of its
/// own, so the verification path stays span-free otherwise.
pub async fn verify(
    State(front): State<Front>,
    limits: Option<Extension<RequestLimits>>,
    Query(q): Query<VerifyQuery>,
    headers: HeaderMap,
) -> Response {
    let limits = limits.map(|Extension(l)| l);
    let (decision, resp) = decide(&front, &q, &headers, limits.as_ref()).await;
    tracing::Span::current().record("decision", decision);
    front.cluster.metrics().verify_decision(decision);
    resp
}

/// The decision (a bounded name, for the span and the metrics) and the answer.
async fn decide(
    front: &Front,
    q: &VerifyQuery,
    headers: &HeaderMap,
    limits: Option<&RequestLimits>,
) -> (&'static str, Response) {
    if !front.cluster.ensure_fresh().await {
        return ("stale", ApiError::Stale.into_response());
    }
    if let Some(role) = &q.role {
        if roles::validate_name(role).is_err() {
            return ("invalid_argument", ApiError::InvalidArgument("invalid role name".into()).into_response());
        }
    }
    let Some((token, _)) = credential(headers, &front.config.cookie_name) else {
        return ("no_credential", unauthorized(ApiError::Unauthenticated));
    };
    let principal = match resolve(&front.cluster, &token).await {
        Ok(p) => p,
        Err(e) => return (e.code(), unauthorized(e)),
    };
    // Ids only, never the credential.
    tracing::Span::current().record("user_id", principal.user_id.as_str());
    let key_id = match &principal.via {
        Via::ApiKey { key_id } => Some(key_id.as_str()),
        Via::Session { .. } => None,
    };
    let quota = match crate::limits::caller_known(front, limits, &principal.user_id, &principal.username, key_id).await
    {
        Ok(q) => q,
        Err(limited) => return ("rate_limited", limited.into_response()),
    };
    let denied = |decision: &'static str, e: ApiError| {
        // Aggregated: a user without the role may hit a protected page often.
        let ip = limits.map(|l| l.client_ip.to_string()).unwrap_or_default();
        front.cluster.audit_count("forward_auth.denied", format!("user:{}", principal.user_id), ip);
        (decision, e.into_response())
    };
    if let Some(role) = &q.role {
        if !principal.roles.contains(role) {
            return denied("missing_role", ApiError::PermissionDenied(format!("requires role {role}")));
        }
    }
    match required_roles(&front.config.routes, headers) {
        Route::Free => {}
        Route::Needs(needed) if needed.iter().any(|r| principal.roles.contains(r)) => {}
        Route::Needs(_) => {
            return denied("missing_role", ApiError::PermissionDenied("this route requires another role".into()));
        }
        Route::Ambiguous => {
            return denied("ambiguous_path", ApiError::PermissionDenied("the forwarded path is ambiguous".into()));
        }
    }
    let mut resp = allow(&principal);
    if let Some(q) = quota {
        resp.extensions_mut().insert(q);
    }
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
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_decides() {
        let rules = vec![
            RouteRule { host: Some("admin.example".into()), path_prefix: "/".into(), roles: vec!["admin".into()] },
            RouteRule { host: None, path_prefix: "/ops".into(), roles: vec!["operator".into(), "admin".into()] },
        ];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", HeaderValue::from_static("ADMIN.example"));
        assert_eq!(required_roles(&rules, &h), Route::Needs(&["admin".to_string()]));
        h.insert("x-forwarded-host", HeaderValue::from_static("app.example"));
        for ops in ["/ops", "/ops/metrics", "/ops?x=1", "/ops/a/b#frag"] {
            h.insert("x-forwarded-uri", HeaderValue::from_str(ops).unwrap());
            assert!(matches!(required_roles(&rules, &h), Route::Needs(r) if r.len() == 2), "{ops}");
        }
        for free in ["/public", "/opsx", "/", "/o"] {
            h.insert("x-forwarded-uri", HeaderValue::from_str(free).unwrap());
            assert_eq!(required_roles(&rules, &h), Route::Free, "{free}");
        }
    }

    #[test]
    fn paths_that_could_dodge_a_rule_are_refused() {
        let rules = vec![RouteRule { host: None, path_prefix: "/ops".into(), roles: vec!["admin".into()] }];
        let mut h = HeaderMap::new();
        for hostile in ["//ops", "/./ops", "/x/../ops", "/%6Fps", "/ops%2F..", "\\ops", "ops", "/a//ops"] {
            h.insert("x-forwarded-uri", HeaderValue::from_str(hostile).unwrap());
            assert_eq!(required_roles(&rules, &h), Route::Ambiguous, "{hostile}");
        }
        // Without rules nothing is looked at.
        assert_eq!(required_roles(&[], &h), Route::Free);
    }
}
