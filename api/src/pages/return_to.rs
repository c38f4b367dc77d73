//! Where a browser may be sent after it signs in (`rd`): never an open
//! redirect.
//!
//! A return URL is taken only as
//! - an absolute `https://` URL (`http://` too in dev mode) whose host is
//!   one of the configured return domains or a subdomain of one, with no
//!   user info; or
//! - a path on the sign-in host itself (`/account`), never `//…` or `/\…`
//!   (which a browser reads as another host).
//!
//! Anything a URL parser and a browser could read apart is refused before
//! parsing: backslashes, control characters, spaces and anything outside
//! printable ASCII (encode them), and more than [`MAX_LEN`] bytes. The URL
//! is then read with a WHATWG parser, as a browser reads it, and what is
//! sent on is the parser's serialisation, never the input.

use url::{Host, Url};

/// The longest return URL taken.
pub const MAX_LEN: usize = 2048;

/// The hosts a browser may be sent back to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReturnDomains {
    /// Lower-case domain names; each covers its subdomains too.
    domains: Vec<String>,
    /// `http://` URLs too (dev mode only).
    allow_http: bool,
}

impl ReturnDomains {
    /// `domains`, each a lower-case DNS name (checked: no scheme, port,
    /// path or wildcard; `example.com` covers `app.example.com`).
    pub fn new(domains: &[String], allow_http: bool) -> Result<ReturnDomains, String> {
        for d in domains {
            let fine = !d.is_empty()
                && d.len() <= 253
                && !d.starts_with('.')
                && !d.ends_with('.')
                && d.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
            if !fine {
                return Err(format!(
                    "pages.return_domains: {d:?} must be a lower-case domain name (no scheme, port, path or wildcard)"
                ));
            }
        }
        Ok(ReturnDomains { domains: domains.to_vec(), allow_http })
    }

    /// Whether `host` is a return domain or under one.
    pub fn covers(&self, host: &str) -> bool {
        self.domains.iter().any(|d| host == d || host.strip_suffix(d.as_str()).is_some_and(|rest| rest.ends_with('.')))
    }

    /// Whether `http://` URLs are taken (dev mode).
    pub fn allows_http(&self) -> bool {
        self.allow_http
    }

    /// The configured domains, for `form-action` in the pages' CSP.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Where to send the browser for `raw`, or `None` when `raw` is not a
    /// place it may go.
    pub fn check(&self, raw: &str) -> Option<String> {
        if raw.is_empty() || raw.len() > MAX_LEN || !raw.bytes().all(|b| b.is_ascii_graphic()) || raw.contains('\\') {
            return None;
        }
        if raw.starts_with('/') {
            // A path here: never a second slash, which makes it a host.
            if raw.starts_with("//") {
                return None;
            }
            let base = Url::parse("https://sign-in.invalid/").expect("a valid base");
            let url = base.join(raw).ok()?;
            if url.host_str() != Some("sign-in.invalid") {
                return None;
            }
            let mut path = url.path().to_string();
            if let Some(q) = url.query() {
                path = format!("{path}?{q}");
            }
            if let Some(f) = url.fragment() {
                path = format!("{path}#{f}");
            }
            return path.starts_with('/').then_some(path).filter(|p| !p.starts_with("//") && p.len() <= MAX_LEN);
        }
        let url = Url::parse(raw).ok()?;
        let scheme_ok = url.scheme() == "https" || (self.allow_http && url.scheme() == "http");
        if !scheme_ok || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        match url.host()? {
            // Normalising may lengthen it (escapes): still within the limit.
            Host::Domain(d) if self.covers(d) => Some(url.to_string()).filter(|u| u.len() <= MAX_LEN),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> ReturnDomains {
        ReturnDomains::new(&["example.com".to_string()], false).unwrap()
    }

    #[test]
    fn return_urls_within_the_domains_are_taken_as_the_parser_reads_them() {
        let d = domains();
        for (raw, to) in [
            ("https://example.com/", "https://example.com/"),
            ("https://app.example.com/x?y=1#z", "https://app.example.com/x?y=1#z"),
            ("https://APP.Example.com:8443/a", "https://app.example.com:8443/a"),
            ("https://a.b.example.com/%2F%2Fevil.com", "https://a.b.example.com/%2F%2Fevil.com"),
            ("/account", "/account"),
            ("/account?tab=keys#k", "/account?tab=keys#k"),
            ("/a/../account", "/account"),
            ("/%2F%2Fevil.com", "/%2F%2Fevil.com"),
        ] {
            assert_eq!(d.check(raw).as_deref(), Some(to), "{raw}");
        }
    }

    #[test]
    fn every_open_redirect_spelling_is_refused() {
        let d = domains();
        for raw in [
            "",
            "//evil.com",
            "//evil.com/https://example.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https:\\\\evil.com",
            "https://evil.com",
            "https:evil.com",
            "https:/evil.com",
            "https://evil.com/https://example.com",
            "https://example.com.evil.com/",
            "https://evilexample.com/",
            "https://example.com@evil.com/",
            "https://user:pass@app.example.com/",
            "https://evil.com%2F@example.com/",
            "https://evil.com%40example.com/",
            "https://evil.com#@example.com",
            "https://evil.com?@example.com",
            "http://example.com/",
            "javascript:alert(1)//example.com",
            "JavaScript:alert(document.domain)",
            "data:text/html,<script>alert(1)</script>",
            "ftp://example.com/",
            "https://example.com\t.evil.com/",
            "https://example.com\n.evil.com/",
            "/\t/evil.com",
            "/ /evil.com",
            " https://example.com/",
            "https://exämple.com/",
            "https://127.0.0.1/",
            "https://[::1]/",
            "https://%65vil.com/",
            "https:%2F%2Fevil.com",
            "%2F%2Fevil.com",
            "evil.com",
            "example.com",
            "https://example.com.",
        ] {
            assert_eq!(d.check(raw), None, "{raw:?}");
        }
        assert_eq!(d.check(&format!("/{}", "a".repeat(MAX_LEN))), None, "too long");
    }

    #[test]
    fn http_only_in_dev_mode_and_domains_are_checked() {
        let dev = ReturnDomains::new(&["localhost".to_string()], true).unwrap();
        assert_eq!(dev.check("http://localhost:8080/x").as_deref(), Some("http://localhost:8080/x"));
        assert!(dev.covers("localhost") && !dev.covers("notlocalhost"));
        for bad in ["", "*.example.com", "https://example.com", "example.com:443", "Example.com", ".example.com", "a/b"]
        {
            assert!(ReturnDomains::new(&[bad.to_string()], false).is_err(), "{bad}");
        }
        let none = ReturnDomains::new(&[], false).unwrap();
        assert_eq!(none.check("https://example.com/"), None);
        assert_eq!(none.check("/account").as_deref(), Some("/account"), "a path here needs no domain");
    }
}
