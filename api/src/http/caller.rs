//! Who is calling the HTTP front: the one way every handler that needs a
//! caller (verify, the session endpoints) authenticates it
//! ([`authenticate`]), from a bearer token or the session cookie (its name
//! and its one value), with the CSRF proof a cookie needs.

use std::net::IpAddr;

use axum::http::{header, HeaderMap};

use super::front::Front;
use crate::identity::{Principal, Via};
use crate::rate_limit::limiter::RequestLimits;
use crate::rate_limit::quota::Quota;
use crate::ApiError;

/// The caller, from the Authorization header or the session cookie, as of
/// a fresh view (`stale` otherwise); a state change through the cookie
/// needs CSRF proof. Policies by key or user apply once the caller is
/// known; their quota is for the response. A client over a failure limit
/// (`limits`) is resolved without a catch-up.
pub async fn authenticate(
    front: &Front,
    headers: &HeaderMap,
    client: IpAddr,
    limits: Option<&RequestLimits>,
    changes_state: bool,
) -> Result<(Principal, Option<Quota>), ApiError> {
    if !front.node.ensure_fresh().await {
        return Err(ApiError::Stale);
    }
    let (token, from_cookie) = credential(headers, &front.config.cookie_name).ok_or(ApiError::Unauthenticated)?;
    if changes_state && from_cookie && !csrf_ok(headers) {
        return Err(ApiError::Csrf);
    }
    let catch_up = limits.is_none_or(|l| !l.over_failures());
    let p = crate::identity::resolve_with(&front.node, &token, catch_up).await?;
    if front.config.bind_sessions && !bound_here(front, &p, client, headers) {
        // Aggregated: a stolen cookie tried from elsewhere may come often.
        front.node.audit_count("session.binding_refused", format!("user:{}", p.user_id), client.to_string());
        return Err(ApiError::Unauthenticated);
    }
    let key_id = match &p.via {
        Via::ApiKey { key_id } => Some(key_id.as_str()),
        Via::Session { .. } => None,
    };
    let quota = crate::rate_limit::layer::caller_known(front, limits, &p.user_id, &p.username, key_id).await?;
    Ok((p, quota))
}

/// With session binding on, whether a session is used from where it
/// began: the client's address bucket (an IPv4 address, an IPv6 /64) and
/// the same `User-Agent`. API keys are not bound.
fn bound_here(front: &Front, p: &Principal, client: IpAddr, headers: &HeaderMap) -> bool {
    let Via::Session { session_id } = &p.via else { return true };
    let Some(s) = front.node.view().read().session(session_id) else { return false };
    let began = s.client_ip.parse::<IpAddr>().ok().map(gatehouse_domain::limits::bucket_ip);
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    began == Some(gatehouse_domain::limits::bucket_ip(client)) && agent == s.user_agent
}

/// The presented credential: `Authorization: Bearer …` first, then the
/// session cookie. The flag says whether it came from the cookie (which
/// browsers attach on their own, so state changes need CSRF proof).
///
/// Two `Authorization` headers are no credential: which one a proxy or an
/// upstream reads is not ours to choose.
pub fn credential(headers: &HeaderMap, cookie_name: &str) -> Option<(String, bool)> {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(v) = authorization.next() {
        if authorization.next().is_some() {
            return None;
        }
        let token = crate::identity::bearer(v.to_str().ok()?)?;
        return Some((token.to_string(), false));
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
    use axum::http::HeaderValue;

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
        let two = headers(&[("authorization", "Bearer gk_x"), ("authorization", "Bearer gk_y")]);
        assert_eq!(credential(&two, "gatehouse_session"), None);
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
