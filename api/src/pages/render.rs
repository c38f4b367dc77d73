//! Rendering a page: the brand, a fresh nonce per response, the strict CSP
//! that names it, and the CSRF cookie a browser without one is given.
//!
//! Templates are compiled (askama) and escape every value for HTML; the
//! only inline style carries the response's nonce, and no script is
//! allowed at all: `default-src 'none'`, `style-src 'nonce-…'`, `img-src
//! 'self'` (the logo), `form-action 'self'` plus the return domains (a
//! sign-in redirects there), `frame-ancestors 'none'`, `base-uri 'none'`.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::return_to::ReturnDomains;

/// How the pages look: configuration, checked at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brand {
    /// Shown in every title and, without a logo, in the header.
    pub product_name: String,
    /// `#rrggbb`: buttons, focus rings, notices.
    pub accent: String,
    /// Served at `/assets/logo` (SVG or PNG, at most 256 KiB).
    pub logo: Option<Logo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logo {
    pub bytes: Arc<[u8]>,
    pub content_type: &'static str,
}

/// The largest logo served.
pub const MAX_LOGO: usize = 256 * 1024;

impl Brand {
    /// Checks the settings: a name of 1–64 printable characters, a colour
    /// `#rrggbb`, a logo file's type by its name and its size.
    pub fn new(product_name: &str, accent: &str, logo: Option<(&str, Vec<u8>)>) -> Result<Brand, String> {
        let name = product_name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err("pages.product_name must be 1 to 64 printable characters".into());
        }
        let hex = accent.strip_prefix('#').unwrap_or("");
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("pages.accent_color must be #rrggbb".into());
        }
        let logo = match logo {
            None => None,
            Some((file, bytes)) => {
                let content_type = if file.ends_with(".svg") {
                    "image/svg+xml"
                } else if file.ends_with(".png") {
                    "image/png"
                } else {
                    return Err("pages.logo_file must be an .svg or .png file".into());
                };
                if bytes.is_empty() || bytes.len() > MAX_LOGO {
                    return Err(format!("pages.logo_file must hold 1 byte to {} KiB", MAX_LOGO / 1024));
                }
                Some(Logo { bytes: bytes.into(), content_type })
            }
        };
        Ok(Brand { product_name: name.to_string(), accent: accent.to_ascii_lowercase(), logo })
    }

    /// What the templates see.
    pub(crate) fn view(&self) -> BrandView<'_> {
        BrandView { product_name: &self.product_name, accent: &self.accent, has_logo: self.logo.is_some() }
    }
}

impl Default for Brand {
    fn default() -> Brand {
        Brand { product_name: "Gatehouse".into(), accent: "#2457c5".into(), logo: None }
    }
}

/// The brand as templates read it.
pub(crate) struct BrandView<'a> {
    pub product_name: &'a str,
    pub accent: &'a str,
    pub has_logo: bool,
}

/// The sign-in pages' settings (`[pages]`).
#[derive(Debug, Clone)]
pub struct PagesConfig {
    pub brand: Brand,
    /// Where `?rd=` may send a browser after it signs in.
    pub return_domains: ReturnDomains,
    /// Where browsers reach these pages (`https://login.example.com`),
    /// for the sign-in redirect `/auth/verify` names; `None`: this host.
    pub public_url: Option<String>,
    /// Sign-in links by mail (`email_links`); `None`: password only.
    pub links: Option<crate::sign_in::LinkSettings>,
    /// How recent a sign-in must be to make an API key (`reauth_secs`).
    pub reauth: std::time::Duration,
    /// A button per upstream provider (`[[sso.providers]]`): (id, label).
    pub providers: Vec<(String, String)>,
    /// The password form is shown (off with `[sso] password_sign_in =
    /// false`, but for `/login?local=1`, the break-glass way in).
    pub password_form: bool,
}

/// The default re-authentication window: five minutes.
pub const REAUTH: std::time::Duration = std::time::Duration::from_secs(300);

impl Default for PagesConfig {
    fn default() -> PagesConfig {
        PagesConfig {
            brand: Brand::default(),
            return_domains: ReturnDomains::default(),
            public_url: None,
            links: None,
            reauth: REAUTH,
            providers: Vec::new(),
            password_form: true,
        }
    }
}

impl PagesConfig {
    /// The pages' CSP for a response with `nonce`; `script`: the page runs
    /// its own script (a passkey ceremony), which carries the nonce.
    fn csp(&self, nonce: &str, script: bool) -> String {
        let mut form_action = String::from("'self'");
        let schemes: &[&str] = if self.return_domains.allows_http() { &["https", "http"] } else { &["https"] };
        for d in self.return_domains.domains() {
            for s in schemes {
                form_action += &format!(" {s}://{d}:* {s}://*.{d}:*");
            }
        }
        let script = if script { format!("script-src 'nonce-{nonce}'; ") } else { String::new() };
        format!(
            "default-src 'none'; {script}style-src 'nonce-{nonce}'; img-src 'self'; form-action {form_action}; \
             frame-ancestors 'none'; base-uri 'none'"
        )
    }

    /// The login page's address for a browser that wants `return_to`.
    pub fn login_url(&self, return_to: &str) -> String {
        let base = self.public_url.as_deref().unwrap_or("").trim_end_matches('/');
        let rd: String = url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
        format!("{base}/login?rd={rd}")
    }
}

/// A fresh nonce (128 random bits) for one response.
pub fn nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// One rendered page: HTML, its CSP with `nonce`, the CSRF cookie when the
/// browser needed one, and nothing cached.
pub fn html(
    pages: &PagesConfig,
    status: StatusCode,
    body: Result<String, askama::Error>,
    nonce: &str,
    csrf_cookie: Option<HeaderValue>,
) -> Response {
    page(pages, status, body, nonce, csrf_cookie, false)
}

/// [`html`] for a page that runs a passkey ceremony: its one script
/// (carrying `nonce`) may run; nothing else does, and the page is never
/// cached (the ceremony is for this view only).
pub fn html_with_script(
    pages: &PagesConfig,
    status: StatusCode,
    body: Result<String, askama::Error>,
    nonce: &str,
    csrf_cookie: Option<HeaderValue>,
) -> Response {
    let mut resp = page(pages, status, body, nonce, csrf_cookie, true);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn page(
    pages: &PagesConfig,
    status: StatusCode,
    body: Result<String, askama::Error>,
    nonce: &str,
    csrf_cookie: Option<HeaderValue>,
    script: bool,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "a page failed to render");
            return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
        }
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_str(&pages.csp(nonce, script)).expect("ASCII policy"));
    // Not `no-referrer`, with which a browser sends `Origin: null` on the
    // pages' own form posts; nothing goes to other sites all the same.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if let Some(c) = csrf_cookie {
        h.append(header::SET_COOKIE, c);
    }
    resp
}

/// A redirect the browser follows with a GET (`303 See Other`).
pub fn see_other(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    match HeaderValue::from_str(to) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    }
    resp
}

/// Whether a request comes from a browser that wants a page (not an API
/// client): no `Authorization`, and HTML accepted.
pub fn wants_page(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::AUTHORIZATION)
        && headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.split(',').any(|t| t.trim().starts_with("text/html")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brand_is_checked() {
        assert!(Brand::new("Example SSO", "#1A2b3C", None).is_ok());
        assert_eq!(Brand::new("Example SSO", "#1A2b3C", None).unwrap().accent, "#1a2b3c");
        assert!(Brand::new("", "#000000", None).is_err());
        assert!(Brand::new(&"x".repeat(65), "#000000", None).is_err());
        assert!(Brand::new("a\u{7}b", "#000000", None).is_err());
        for bad in ["red", "#12345", "#1234567", "#12345g", "000000", "#000000;}body{x"] {
            assert!(Brand::new("X", bad, None).is_err(), "{bad}");
        }
        assert!(Brand::new("X", "#000000", Some(("logo.svg", b"<svg/>".to_vec()))).is_ok());
        assert!(Brand::new("X", "#000000", Some(("logo.gif", b"GIF".to_vec()))).is_err());
        assert!(Brand::new("X", "#000000", Some(("logo.png", vec![0; MAX_LOGO + 1]))).is_err());
    }

    #[test]
    fn the_csp_allows_no_script_but_a_passkey_pages_own_and_forms_only_here_and_to_the_return_domains() {
        let pages = PagesConfig {
            return_domains: ReturnDomains::new(&["example.com".into()], false).unwrap(),
            ..Default::default()
        };
        let csp = pages.csp("abc", false);
        assert_eq!(
            csp,
            "default-src 'none'; style-src 'nonce-abc'; img-src 'self'; form-action 'self' https://example.com:* \
             https://*.example.com:*; frame-ancestors 'none'; base-uri 'none'"
        );
        assert!(!csp.contains("unsafe") && !csp.contains("script-src"));
        assert_ne!(nonce(), nonce());
        // A passkey page runs its one script, by nonce only.
        let scripted = pages.csp("abc", true);
        assert!(scripted.starts_with("default-src 'none'; script-src 'nonce-abc'; style-src"), "{scripted}");
        assert!(!scripted.contains("unsafe") && !scripted.contains("connect-src"));
    }

    #[test]
    fn the_login_url_carries_the_return_url_encoded() {
        let here = PagesConfig::default();
        assert_eq!(here.login_url("/account"), "/login?rd=%2Faccount");
        let there = PagesConfig { public_url: Some("https://login.example.com/".into()), ..Default::default() };
        assert_eq!(
            there.login_url("https://app.example.com/a?b=c&d"),
            "https://login.example.com/login?rd=https%3A%2F%2Fapp.example.com%2Fa%3Fb%3Dc%26d"
        );
    }

    #[test]
    fn pages_are_for_browsers_without_a_bearer_token() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"));
        assert!(wants_page(&h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer gk_x"));
        assert!(!wants_page(&h));
        let mut api = HeaderMap::new();
        api.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_page(&api));
        assert!(!wants_page(&HeaderMap::new()));
    }
}
