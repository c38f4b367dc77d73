//! CSRF protection for every form: a per-browser token in a cookie of
//! this host alone, repeated in a hidden field of each form.
//!
//! The cookie is `__Host-gatehouse_csrf` (`gatehouse_csrf` in dev mode):
//! `HttpOnly`, `SameSite=Strict`, host-only, 256 random bits, set by the
//! first page a browser gets. A POST is taken only when its form field
//! equals the cookie (compared in constant time), and the browser does not
//! call it cross-site ([`check`]). Another site can neither read the
//! cookie nor, with the `__Host-` prefix, plant one from a sibling
//! subdomain, so it cannot forge the field: no login CSRF, no forged
//! revocation. (In dev mode, over plain HTTP, the cookie has no prefix.)

use axum::http::{header, HeaderMap, HeaderValue};
use subtle::ConstantTimeEq;

/// The form field every POST carries.
pub const FIELD: &str = "csrf";

/// The cookie's name: host-bound when it is `Secure`.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-gatehouse_csrf"
    } else {
        "gatehouse_csrf"
    }
}

/// The browser's token, and the `Set-Cookie` that gives it one when it
/// had none (or a malformed one).
pub fn token(headers: &HeaderMap, secure: bool) -> (String, Option<HeaderValue>) {
    if let Some(t) = crate::http::caller::cookie(headers, cookie_name(secure)).filter(|t| well_formed(t)) {
        return (t, None);
    }
    let fresh = hex::encode(rand::random::<[u8; 32]>());
    let attrs = if secure { "; Secure" } else { "" };
    let cookie = format!("{}={fresh}; Path=/; HttpOnly; SameSite=Strict{attrs}", cookie_name(secure));
    (fresh, Some(HeaderValue::from_str(&cookie).expect("hex is header-safe")))
}

fn well_formed(t: &str) -> bool {
    t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a form POST carrying `field` is this browser's own: the token
/// matches the cookie, and the browser did not call the POST cross-site.
///
/// `Sec-Fetch-Site` decides when the browser sends it (`same-origin` or
/// `none`, a typed URL, pass; `same-site`, a sibling subdomain, and
/// `cross-site` do not). Otherwise an `Origin` that names a site must be
/// this one (`authority`: the host the request was sent to); `Origin:
/// null` (what a browser sends from a page without referrers, or a
/// sandboxed frame) and no `Origin` leave it to the token.
pub fn check(headers: &HeaderMap, secure: bool, field: &str, authority: Option<&str>) -> bool {
    let Some(cookie) = crate::http::caller::cookie(headers, cookie_name(secure)) else { return false };
    if !well_formed(&cookie) || !bool::from(cookie.as_bytes().ct_eq(field.as_bytes())) {
        return false;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    match headers.get(header::ORIGIN).map(|o| o.as_bytes()) {
        None | Some(b"null") => true,
        Some(origin) => authority
            .is_some_and(|a| origin == format!("https://{a}").as_bytes() || origin == format!("http://{a}").as_bytes()),
    }
}

/// The host a request was sent to: its `Host` header, or with HTTP/2 its
/// `:authority` (the URI's).
pub fn authority<'a>(headers: &'a HeaderMap, uri: &'a axum::http::Uri) -> Option<&'a str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_browser_gets_one_token_and_keeps_it() {
        let (t, set) = token(&HeaderMap::new(), true);
        let set = set.unwrap().to_str().unwrap().to_string();
        assert!(well_formed(&t));
        assert!(set.starts_with(&format!("__Host-gatehouse_csrf={t}; Path=/; HttpOnly; SameSite=Strict; Secure")));
        let again = headers(&[("cookie", format!("__Host-gatehouse_csrf={t}"))]);
        assert_eq!(token(&again, true), (t, None));
        let garbage = headers(&[("cookie", "__Host-gatehouse_csrf=<script>".to_string())]);
        assert!(token(&garbage, true).1.is_some(), "a malformed one is replaced");
    }

    #[test]
    fn a_post_needs_the_cookie_the_field_and_no_foreign_site() {
        let t = "ab".repeat(32);
        let cookie = ("cookie", format!("__Host-gatehouse_csrf={t}"));
        let here = Some("login.example.com");
        let with = |extra: &[(&'static str, &str)]| {
            let mut h = headers(std::slice::from_ref(&cookie));
            for (k, v) in extra {
                h.append(*k, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        assert!(check(&with(&[]), true, &t, here));
        // What browsers send: the fetch metadata, an Origin (or "null" from
        // a page without referrers).
        assert!(check(&with(&[("sec-fetch-site", "same-origin"), ("origin", "null")]), true, &t, here));
        assert!(check(&with(&[("sec-fetch-site", "none")]), true, &t, here));
        assert!(check(&with(&[("origin", "https://login.example.com")]), true, &t, here));
        assert!(check(&with(&[("origin", "null")]), true, &t, here));
        // Forged: no cookie, another token, another site.
        assert!(!check(&HeaderMap::new(), true, &t, here));
        assert!(!check(&with(&[]), true, &"cd".repeat(32), here));
        assert!(!check(&with(&[]), true, "", here));
        assert!(!check(&with(&[("origin", "https://evil.example")]), true, &t, here));
        assert!(!check(&with(&[("origin", "https://login.example.com")]), true, &t, None));
        assert!(!check(&with(&[("sec-fetch-site", "cross-site")]), true, &t, here));
        assert!(!check(&with(&[("sec-fetch-site", "same-site")]), true, &t, here), "a sibling subdomain");
        assert!(!check(
            &with(&[("sec-fetch-site", "cross-site"), ("origin", "https://login.example.com")]),
            true,
            &t,
            here
        ));
        // The dev cookie does not stand in for the host-bound one.
        let dev = headers(&[("cookie", format!("gatehouse_csrf={t}"))]);
        assert!(!check(&dev, true, &t, here));
    }

    #[test]
    fn the_authority_is_the_host_header_or_the_http2_authority() {
        let uri: axum::http::Uri = "https://login.example.com:8443/login".parse().unwrap();
        assert_eq!(authority(&HeaderMap::new(), &uri), Some("login.example.com:8443"));
        let h = headers(&[("host", "login.example.com".to_string())]);
        assert_eq!(authority(&h, &"/login".parse().unwrap()), Some("login.example.com"));
        assert_eq!(authority(&HeaderMap::new(), &"/login".parse().unwrap()), None);
    }
}
