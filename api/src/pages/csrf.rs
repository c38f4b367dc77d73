//! CSRF protection for every form: a per-browser token in a cookie of
//! this host alone, repeated in a hidden field of each form.
//!
//! The cookie is `__Host-gatehouse_csrf` (`gatehouse_csrf` in dev mode):
//! `HttpOnly`, `SameSite=Strict`, host-only, 256 random bits, set by the
//! first page a browser gets. A POST is taken only when its form field
//! equals the cookie (compared in constant time), and its `Origin`, when
//! sent, is this host, and the browser does not call it cross-site
//! (`Sec-Fetch-Site`). Another site can neither read the cookie nor, with
//! the `__Host-` prefix, plant one from a sibling subdomain, so it cannot
//! forge the field: no login CSRF, no forged revocation.

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

/// Whether a form POST carrying `field` is this browser's own.
pub fn check(headers: &HeaderMap, secure: bool, field: &str) -> bool {
    let Some(cookie) = crate::http::caller::cookie(headers, cookie_name(secure)) else { return false };
    if !well_formed(&cookie) || !bool::from(cookie.as_bytes().ct_eq(field.as_bytes())) {
        return false;
    }
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site") {
        return false;
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => same_origin(origin, headers),
    }
}

/// `Origin` is this host (as the browser addressed it).
fn same_origin(origin: &HeaderValue, headers: &HeaderMap) -> bool {
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), headers.get(header::HOST).map(|h| h.to_str())) else {
        return false;
    };
    origin == format!("https://{host}") || origin == format!("http://{host}")
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
    fn a_post_needs_the_cookie_the_field_and_no_foreign_origin() {
        let t = "ab".repeat(32);
        let cookie = ("cookie", format!("__Host-gatehouse_csrf={t}"));
        let host = ("host", "login.example.com".to_string());
        assert!(check(&headers(&[cookie.clone(), host.clone()]), true, &t));
        let same = ("origin", "https://login.example.com".to_string());
        assert!(check(&headers(&[cookie.clone(), host.clone(), same]), true, &t));
        // Forged: no cookie, another token, another origin, a cross-site fetch.
        assert!(!check(&headers(std::slice::from_ref(&host)), true, &t));
        assert!(!check(&headers(&[cookie.clone(), host.clone()]), true, &"cd".repeat(32)));
        assert!(!check(&headers(&[cookie.clone(), host.clone()]), true, ""));
        let evil = ("origin", "https://evil.example".to_string());
        assert!(!check(&headers(&[cookie.clone(), host.clone(), evil]), true, &t));
        let null = ("origin", "null".to_string());
        assert!(!check(&headers(&[cookie.clone(), host.clone(), null]), true, &t));
        let cross = ("sec-fetch-site", "cross-site".to_string());
        assert!(!check(&headers(&[cookie.clone(), host.clone(), cross]), true, &t));
        // The dev cookie does not stand in for the host-bound one.
        let dev = ("cookie", format!("gatehouse_csrf={t}"));
        assert!(!check(&headers(&[dev, host]), true, &t));
    }
}
