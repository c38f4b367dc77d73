//! CORS for the JSON API (`/api/v1/…`): a web app on one of the origins
//! in `[identity] cors_origins` may call it from the browser, with the
//! session cookie; any other origin gets no CORS header, so the browser
//! never hands it a response, and its preflight is refused.
//!
//! Origins are exact (`https://app.example.com`, a port when not the
//! default): no wildcard in production, where `*` would let any site read
//! a signed-in person's answers. Nothing outside `/api/v1/` ever carries
//! CORS headers (forward-auth and the pages are not for scripts).

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// The path prefix CORS covers.
const API: &str = "/api/v1/";
/// The methods and request headers a preflight may ask for.
const METHODS: &str = "GET, POST, DELETE";
const HEADERS: [&str; 3] = ["authorization", "content-type", "x-requested-with"];
/// How long a browser may keep a preflight's answer (seconds).
const MAX_AGE: &str = "600";

/// The origins allowed to call the JSON API from a browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    /// `scheme://host[:port]`, lower case.
    origins: Vec<String>,
    /// `*`: any origin (dev mode only).
    any: bool,
}

impl Cors {
    /// Checks each origin: `https://host[:port]` (`http://` too), nothing
    /// else; `*` only when `dev`.
    pub fn new(origins: &[String], dev: bool) -> Result<Cors, String> {
        let mut cors = Cors::default();
        for o in origins {
            if o == "*" {
                if !dev {
                    return Err("identity.cors_origins: \"*\" is refused outside dev mode: list each origin".into());
                }
                cors.any = true;
                continue;
            }
            let bad = || format!("identity.cors_origins: {o:?} must be an origin like https://app.example.com[:port]");
            let url = url::Url::parse(o).map_err(|_| bad())?;
            let origin = url.origin().ascii_serialization();
            let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
            let plain = url.username().is_empty()
                && url.password().is_none()
                && url.host_str().is_some_and(|h| {
                    h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'))
                });
            if !matches!(url.scheme(), "https" | "http") || !bare || !plain || origin == "null" {
                return Err(bad());
            }
            if o.trim_end_matches('/') != origin {
                return Err(format!("identity.cors_origins: {o:?} must be written as {origin:?}"));
            }
            cors.origins.push(origin);
        }
        Ok(cors)
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|o| o == origin)
    }

    /// The request's `Origin`, when it is one of ours and the path is the
    /// JSON API's.
    fn allowed(&self, path: &str, headers: &HeaderMap) -> Option<HeaderValue> {
        if !path.starts_with(API) || (self.origins.is_empty() && !self.any) {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        self.allows(origin.to_str().ok()?).then(|| origin.clone())
    }

    /// The answer to a CORS preflight for the JSON API, or `None` when
    /// `method`/`headers` are no preflight for it.
    pub fn preflight(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
        if method != Method::OPTIONS
            || !path.starts_with(API)
            || !headers.contains_key(header::ORIGIN)
            || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let refused = || Some(crate::ApiError::PermissionDenied("cross-origin request refused".into()).into_response());
        let Some(origin) = self.allowed(path, headers) else { return refused() };
        let wanted = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD).and_then(|m| m.to_str().ok());
        if !wanted.is_some_and(|m| METHODS.split(", ").any(|ok| ok == m)) {
            return refused();
        }
        let asked = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).and_then(|h| h.to_str().ok()).unwrap_or("");
        let fine = asked
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .all(|h| h.is_empty() || HEADERS.contains(&h.as_str()));
        if !fine {
            return refused();
        }
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(METHODS));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-requested-with"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        Some(resp)
    }

    /// The CORS headers of an answer to an allowed origin's request (the
    /// `Origin` it came with, taken before the request went on).
    pub fn origin_of(&self, path: &str, headers: &HeaderMap) -> Option<HeaderValue> {
        self.allowed(path, headers)
    }

    /// Adds the CORS headers for `origin` to `resp`.
    pub fn decorate(resp: &mut Response, origin: HeaderValue) {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn cors() -> Cors {
        Cors::new(&["https://app.example.com".into(), "http://localhost:3000".into()], false).unwrap()
    }

    #[test]
    fn origins_are_exact_and_no_wildcard_outside_dev() {
        assert!(Cors::new(&["*".into()], false).is_err());
        assert!(Cors::new(&["*".into()], true).unwrap().allows("https://anything.example"));
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "https://app.example.com/?q",
            "https://user@app.example.com",
            "ftp://app.example.com",
            "https://App.Example.com",
            "https://app.example.com:443",
            "null",
            "https://*.example.com",
        ] {
            assert!(Cors::new(&[bad.into()], false).is_err(), "{bad}");
        }
        assert!(Cors::new(&["https://app.example.com:8443".into()], false).is_ok());
    }

    #[test]
    fn a_listed_origin_gets_its_preflight_and_others_are_refused() {
        let c = cors();
        let ok = headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "Content-Type, X-Requested-With"),
        ]);
        let resp = c.preflight(&Method::OPTIONS, "/api/v1/login", &ok).unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
        for bad in [
            headers(&[("origin", "https://evil.example"), ("access-control-request-method", "POST")]),
            headers(&[("origin", "https://app.example.com.evil.example"), ("access-control-request-method", "GET")]),
            headers(&[("origin", "null"), ("access-control-request-method", "GET")]),
            headers(&[("origin", "https://app.example.com"), ("access-control-request-method", "PUT")]),
            headers(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-evil"),
            ]),
        ] {
            let resp = c.preflight(&Method::OPTIONS, "/api/v1/me", &bad).unwrap();
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
            assert!(resp.headers().get("access-control-allow-origin").is_none());
        }
        // Not a preflight, or not the JSON API: none of CORS's business.
        assert!(c.preflight(&Method::GET, "/api/v1/me", &ok).is_none());
        assert!(c.preflight(&Method::OPTIONS, "/auth/verify", &ok).is_none());
        assert!(c.origin_of("/auth/verify", &ok).is_none());
        assert!(c.origin_of("/api/v1/me", &ok).is_some());
        assert!(Cors::default().origin_of("/api/v1/me", &ok).is_none());
    }
}
