//! Headers on the way to the upstream and back.
//!
//! Upstream, in this order:
//! 1. hop-by-hop headers go (RFC 9110 §7.6.1: `Connection` and every name
//!    it lists, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
//!    `Transfer-Encoding`, `Upgrade` unless the request is a WebSocket
//!    upgrade, `Proxy-Authorization`), and `Host` (the upstream's is set);
//! 2. every client copy of an identity goes: any `X-Auth-*` (and its
//!    `x_auth_*` spelling), the configured names and their underscore
//!    spellings, `X-Forwarded-User`/`-Email`/`-Groups`/
//!    `-Preferred-Username`, `X-Forwarded-For`/`-Proto`/`-Host`, `Forwarded`;
//! 3. Gatehouse's own credential goes, unless the upstream passes it: its
//!    session cookie out of `Cookie`, a Gatehouse key or session in
//!    `Authorization`;
//! 4. the identity is set from the verify answer (and the JWT, with
//!    `[jwt]`), then `X-Forwarded-For`, `-Proto`, `-Host`.
//!
//! Values come from `HeaderValue`s made by the verify answer or checked by
//! `HeaderValue::from_str`, which refuses CR, LF and NUL: no identity can
//! carry a header of its own.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

use super::config::IdentityHeaders;
use crate::identity::Principal;

/// Why a request is refused as a smuggling attempt, if it is: framing two
/// readers could read two ways. (hyper's parser already refuses obsolete
/// line folding, invalid header bytes and differing `Content-Length`s.)
pub fn smuggling(headers: &HeaderMap) -> Option<&'static str> {
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let encodings: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if lengths > 1 {
        return Some("more than one Content-Length");
    }
    if lengths == 1 && !encodings.is_empty() {
        return Some("both Content-Length and Transfer-Encoding");
    }
    if encodings.len() > 1 || encodings.first().is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"chunked")) {
        return Some("a Transfer-Encoding other than chunked");
    }
    if let Some(v) = headers.get(header::CONTENT_LENGTH) {
        if v.is_empty() || v.len() > 19 || !v.as_bytes().iter().all(u8::is_ascii_digit) {
            return Some("a malformed Content-Length");
        }
    }
    None
}

/// Whether the request asks to become a WebSocket, and nothing else: every
/// `Upgrade` it carries names `websocket` alone.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(header::UPGRADE).iter().peekable();
    let upgrade = upgrades.peek().is_some() && upgrades.all(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The names every `Connection` header lists, trimmed.
fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers (and those `Connection` names); `Upgrade`
/// stays when `keep_upgrade` (a WebSocket handshake, whose `Connection:
/// upgrade` is then set again).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> =
        connection_tokens(h).filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()).collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(name);
    }
    h.remove(header::UPGRADE);
    h.remove(HeaderName::from_static("http2-settings"));
    h.remove(HeaderName::from_static("proxy-authenticate"));
    // A WebSocket handshake asks for exactly that, and nothing more.
    if keep_upgrade {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether `name` (lower case) is a client's copy of something apps read
/// as identity or as the request's origin: what the proxy sets itself, and
/// the names other proxies set (an app behind this one may read them).
fn identity_like(name: &str, identity: &IdentityHeaders, jwt: Option<&HeaderName>) -> bool {
    const NAMES: [&str; 8] = [
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "remote-user",
        "x-remote-user",
        // Path overrides some frameworks honour (a route rule dodged).
        "x-original-url",
        "x-rewrite-url",
        "x-original-uri",
    ];
    const PREFIXES: [&str; 3] = ["x-auth-", "x-forwarded-", "x-webauth-"];
    // Copied only for an underscore spelling (most names have none).
    let dashed = if name.contains('_') { std::borrow::Cow::Owned(name.replace('_', "-")) } else { name.into() };
    let dashed: &str = &dashed;
    let ours = [&identity.user, &identity.user_id, &identity.roles, &identity.email];
    PREFIXES.iter().any(|p| dashed.starts_with(p))
        || NAMES.contains(&dashed)
        || ours.iter().any(|n| n.as_str() == dashed)
        || jwt.is_some_and(|j| j.as_str() == dashed && *j != header::AUTHORIZATION)
}

/// Whether a cookie is one of Gatehouse's own (its session, CSRF, trusted
/// browser, sign-in link and provider-flow cookies, with or without the
/// `__Host-`/`__Secure-` prefix), or the configured session cookie.
pub fn gatehouse_cookie(name: &str, session_cookie: &str) -> bool {
    let bare = name.strip_prefix("__Host-").or_else(|| name.strip_prefix("__Secure-")).unwrap_or(name);
    name == session_cookie || bare.starts_with("gatehouse_")
}

/// Removes every `Set-Cookie` of an upstream's answer that names one of
/// Gatehouse's cookies (an upstream cannot fix a session or a CSRF token
/// on the sign-in pages' host).
pub fn strip_set_cookies(h: &mut HeaderMap, session_cookie: &str) {
    let kept: Vec<HeaderValue> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            let name = v.to_str().ok().and_then(|s| s.split(['=', ';']).next()).map(str::trim);
            name.is_some_and(|n| !gatehouse_cookie(n, session_cookie))
        })
        .cloned()
        .collect();
    h.remove(header::SET_COOKIE);
    for v in kept {
        h.append(header::SET_COOKIE, v);
    }
}

/// Joins every `Cookie` header into one (RFC 9113 §8.2.3: an HTTP/2
/// client may split them; HTTP/1.1 servers read one), without Gatehouse's
/// own cookies unless `keep_ours`.
fn cookies(h: &mut HeaderMap, session_cookie: &str, keep_ours: bool) {
    let pairs: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| keep_ours || !gatehouse_cookie(pair.split('=').next().unwrap_or("").trim(), session_cookie))
        .map(str::to_string)
        .collect();
    h.remove(header::COOKIE);
    if pairs.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&pairs.join("; ")) {
        h.insert(header::COOKIE, v);
    }
}

/// What the upstream is told, beside the request.
pub struct Injected<'a> {
    pub identity: &'a IdentityHeaders,
    /// The verify answer: its `X-Auth-*` and the JWT header.
    pub answer: &'a HeaderMap,
    pub jwt: Option<&'a HeaderName>,
    pub principal: &'a Principal,
    pub email: &'a str,
    pub client: IpAddr,
    pub proto: &'static str,
    /// The host the request named (its `Host`, or its target's authority).
    pub host: &'a HeaderValue,
    /// Gatehouse's session cookie name, and whether its credential goes on.
    pub cookie_name: &'a str,
    pub pass_credentials: bool,
}

/// The request headers as the upstream gets them (see the module doc).
pub fn upstream_request(h: &mut HeaderMap, websocket: bool, i: &Injected) {
    strip_hop_by_hop(h, websocket);
    h.remove(header::HOST);
    let names: Vec<HeaderName> = h.keys().cloned().collect();
    for name in names {
        if identity_like(name.as_str(), i.identity, i.jwt) {
            h.remove(&name);
        }
    }
    cookies(h, i.cookie_name, i.pass_credentials);
    if !i.pass_credentials {
        let gatehouse = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::identity::bearer);
        if gatehouse.is_some_and(crate::identity::is_gatehouse_token) {
            h.remove(header::AUTHORIZATION);
        }
    }
    let from_answer = [
        ("x-auth-user", &i.identity.user),
        ("x-auth-user-id", &i.identity.user_id),
        ("x-auth-roles", &i.identity.roles),
    ];
    for (name, to) in from_answer {
        if let Some(v) = i.answer.get(name) {
            h.insert(to.clone(), v.clone());
        }
    }
    for name in ["x-auth-mfa", "x-auth-mfa-age"] {
        if let Some(v) = i.answer.get(name) {
            h.insert(HeaderName::from_static(name), v.clone());
        }
    }
    if let Ok(user) = HeaderValue::from_str(&i.principal.username) {
        h.insert(HeaderName::from_static("x-forwarded-user"), user);
    }
    if let Ok(email) = HeaderValue::from_str(i.email) {
        if !i.email.is_empty() {
            h.insert(i.identity.email.clone(), email.clone());
            h.insert(HeaderName::from_static("x-forwarded-email"), email);
        }
    }
    if let Some(jwt) = i.jwt {
        if let Some(v) = i.answer.get(jwt) {
            h.insert(jwt.clone(), v.clone());
        }
    }
    if let Ok(ip) = HeaderValue::from_str(&i.client.to_string()) {
        h.insert(HeaderName::from_static("x-forwarded-for"), ip);
    }
    h.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static(i.proto));
    h.insert(HeaderName::from_static("x-forwarded-host"), i.host.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        assert_eq!(smuggling(&map(&[("content-length", "5")])), None);
        assert_eq!(smuggling(&map(&[("transfer-encoding", "chunked")])), None);
        assert_eq!(smuggling(&map(&[("transfer-encoding", "Chunked")])), None);
        for bad in [
            map(&[("content-length", "5"), ("transfer-encoding", "chunked")]),
            map(&[("content-length", "5"), ("content-length", "5")]),
            map(&[("content-length", "5"), ("content-length", "6")]),
            map(&[("transfer-encoding", "gzip, chunked")]),
            map(&[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")]),
            map(&[("transfer-encoding", "identity")]),
            map(&[("content-length", "+5")]),
            map(&[("content-length", "5, 5")]),
        ] {
            assert!(smuggling(&bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn identities_and_credentials_are_replaced_never_passed_on() {
        let mut h = map(&[
            ("host", "app.example"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "hop"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("x-auth-user", "mallory"),
            ("X_Auth_Roles", "admin"),
            ("x-forwarded-user", "mallory"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("x-email", "m@evil"),
            ("cookie", "a=1; __Host-gatehouse_session=gs_secret; b=2"),
            ("cookie", "__Host-gatehouse_device=dv; c=3; __Host-gatehouse_csrf=x"),
            ("x-forwarded-uri", "/admin"),
            ("x-original-url", "/admin"),
            ("x-real-ip", "10.0.0.1"),
            ("remote-user", "root"),
            ("x-webauth-user", "root"),
            ("authorization", "Bearer gk_key.secret"),
            ("accept", "text/html"),
        ]);
        let identity = IdentityHeaders { email: HeaderName::from_static("x-email"), ..Default::default() };
        let answer = map(&[("x-auth-user", "ann"), ("x-auth-user-id", "u1"), ("x-auth-roles", "viewer")]);
        let p = Principal {
            user_id: "u1".into(),
            username: "ann".into(),
            roles: vec!["viewer".into()],
            via: crate::identity::Via::ApiKey { key_id: "k".into() },
            factor: None,
        };
        let host = HeaderValue::from_static("app.example");
        let i = Injected {
            identity: &identity,
            answer: &answer,
            jwt: None,
            principal: &p,
            email: "ann@example.com",
            client: "192.0.2.9".parse().unwrap(),
            proto: "https",
            host: &host,
            cookie_name: "__Host-gatehouse_session",
            pass_credentials: false,
        };
        upstream_request(&mut h, false, &i);
        for gone in [
            "host",
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "x_auth_roles",
            "forwarded",
            "authorization",
            "x-forwarded-uri",
            "x-original-url",
            "x-real-ip",
            "remote-user",
            "x-webauth-user",
        ] {
            assert!(!h.contains_key(gone), "{gone}: {h:?}");
        }
        assert_eq!(h["x-auth-user"], "ann");
        assert_eq!(h.get_all("x-auth-user").iter().count(), 1);
        assert_eq!(h["x-auth-roles"], "viewer");
        assert_eq!(h["x-forwarded-user"], "ann");
        assert_eq!(h["x-email"], "ann@example.com");
        assert_eq!(h["x-forwarded-for"], "192.0.2.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h["cookie"], "a=1; b=2; c=3", "one Cookie header, none of Gatehouse's");
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["accept"], "text/html");
        // An email that would carry a header of its own is not sent.
        let mut h = map(&[]);
        upstream_request(&mut h, false, &Injected { email: "a@b\r\nx-auth-roles: admin", ..i });
        assert!(h.get("x-email").is_none_or(|v| !v.to_str().unwrap().contains('\n')));
        assert_eq!(h.get_all("x-auth-roles").iter().count(), 1);
    }

    #[test]
    fn a_websocket_keeps_its_upgrade_and_nothing_else() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        assert!(is_websocket(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!is_websocket(&map(&[("upgrade", "websocket")])), "no Connection: upgrade");
        // A second protocol smuggled beside it makes it no WebSocket at all.
        let two = map(&[("connection", "upgrade"), ("upgrade", "websocket"), ("upgrade", "h2c")]);
        assert!(!is_websocket(&two));
        let mut h = map(&[("connection", "upgrade, http2-settings"), ("upgrade", "h2c"), ("http2-settings", "AAA")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn an_upstream_cannot_set_gatehouse_s_cookies() {
        let mut h = map(&[
            ("set-cookie", "__Host-gatehouse_session=gs_fixed; Path=/; Secure"),
            ("set-cookie", "gatehouse_csrf=x"),
            ("set-cookie", "__Secure-gatehouse_session=y"),
            ("set-cookie", "app=1; Path=/"),
        ]);
        strip_set_cookies(&mut h, "__Host-gatehouse_session");
        let left: Vec<&str> = h.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(left, ["app=1; Path=/"]);
    }
}
