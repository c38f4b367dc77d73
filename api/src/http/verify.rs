//! `GET /auth/verify`: forward-auth for nginx `auth_request`, Traefik
//! ForwardAuth and Caddy `forward_auth`.
//!
//! 200 with `X-Auth-User`, `X-Auth-User-Id`, `X-Auth-Roles`; 401 with
//! `WWW-Authenticate`; 403 for a disabled user or a missing role; 503 when
//! this node cannot prove it is fresh (fail closed).

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_domain::roles;
use serde::Deserialize;

use super::{credential, Front, RouteRule};
use crate::identity::{resolve, Principal};
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

/// The roles a forwarded request needs, from the first matching route rule.
fn required_roles<'a>(rules: &'a [RouteRule], headers: &HeaderMap) -> Option<&'a [String]> {
    let host = headers.get("x-forwarded-host").and_then(|v| v.to_str().ok()).unwrap_or("");
    let uri = headers.get("x-forwarded-uri").and_then(|v| v.to_str().ok()).unwrap_or("/");
    rules
        .iter()
        .find(|r| r.host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(host)) && uri.starts_with(&r.path_prefix))
        .map(|r| r.roles.as_slice())
}

#[tracing::instrument(level = "debug", name = "http.verify", skip_all, fields(decision))]
pub async fn verify(State(front): State<Front>, Query(q): Query<VerifyQuery>, headers: HeaderMap) -> Response {
    let (decision, resp) = decide(&front, &q, &headers).await;
    tracing::Span::current().record("decision", decision);
    front.cluster.metrics().verify_decision(decision);
    resp
}

/// The decision (a bounded name, for the span and the metrics) and the answer.
async fn decide(front: &Front, q: &VerifyQuery, headers: &HeaderMap) -> (&'static str, Response) {
    if !front.cluster.is_fresh() {
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
    // On the request's span when traces are exported (ids only, never the credential).
    tracing::Span::current().record("user_id", principal.user_id.as_str());
    if let Some(role) = &q.role {
        if !principal.roles.contains(role) {
            return ("missing_role", ApiError::PermissionDenied(format!("requires role {role}")).into_response());
        }
    }
    if let Some(needed) = required_roles(&front.config.routes, headers) {
        if !needed.iter().any(|r| principal.roles.contains(r)) {
            let e = ApiError::PermissionDenied("this route requires another role".into());
            return ("missing_role", e.into_response());
        }
    }
    ("allow", allow(&principal))
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
        assert_eq!(required_roles(&rules, &h).unwrap(), ["admin".to_string()]);
        h.insert("x-forwarded-host", HeaderValue::from_static("app.example"));
        h.insert("x-forwarded-uri", HeaderValue::from_static("/ops/metrics"));
        assert_eq!(required_roles(&rules, &h).unwrap().len(), 2);
        h.insert("x-forwarded-uri", HeaderValue::from_static("/public"));
        assert!(required_roles(&rules, &h).is_none());
    }
}
