//! `[proxy]` as a node runs it.

use std::time::Duration;

use axum::http::HeaderName;

use crate::http::forwarded;

/// One upstream: the requests it takes (a host, a path prefix) and where
/// they go.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The normalised host requests must name (`None`: any).
    pub host: Option<String>,
    /// A plain absolute path prefix, matched on segment boundaries.
    pub path_prefix: String,
    /// `http://` or `https://` authority of the upstream, no path.
    pub url: http::Uri,
    /// Pass Gatehouse's own session cookie and a verified Gatehouse
    /// `Authorization` on to the upstream (off: kept back).
    pub pass_credentials: bool,
}

/// Where each identity goes upstream.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user: HeaderName,
    pub user_id: HeaderName,
    pub roles: HeaderName,
    pub email: HeaderName,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            user: HeaderName::from_static("x-auth-user"),
            user_id: HeaderName::from_static("x-auth-user-id"),
            roles: HeaderName::from_static("x-auth-roles"),
            email: HeaderName::from_static("x-auth-email"),
        }
    }
}

/// `[proxy]`.
#[derive(Debug)]
pub struct ProxyConfig {
    /// Upstreams naming a host first, then those for any host; each group
    /// longest path prefix first.
    pub upstreams: Vec<Upstream>,
    pub identity: IdentityHeaders,
    /// Connecting to an upstream.
    pub connect_timeout: Duration,
    /// From the request sent to the upstream's response head.
    pub first_byte_timeout: Duration,
    /// No body bytes either way for this long ends the exchange.
    pub idle_timeout: Duration,
    /// Mutual TLS to `https://` upstreams: the certificate chain and key
    /// Gatehouse presents (PEM), and the CA bundle upstreams are checked
    /// against (PEM; system roots are not used).
    pub client_identity:
        Option<(Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>)>,
    pub upstream_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl ProxyConfig {
    /// Orders the upstreams for matching and checks each.
    pub fn ordered(mut upstreams: Vec<Upstream>) -> Result<Vec<Upstream>, String> {
        for u in &upstreams {
            if forwarded::plain_path(&u.path_prefix).as_deref() != Some(u.path_prefix.as_str()) {
                return Err(format!("proxy.upstreams: path_prefix {:?} must be a plain absolute path", u.path_prefix));
            }
            if let Some(h) = &u.host {
                if forwarded::normalise_host(h).as_deref() != Some(h.as_str()) || h.contains(':') {
                    return Err(format!("proxy.upstreams: host {h:?} must be a lower-case host name without port"));
                }
            }
            let scheme_ok = matches!(u.url.scheme_str(), Some("http" | "https"));
            let bare = u.url.path_and_query().is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty());
            if !scheme_ok || u.url.authority().is_none() || !bare {
                return Err(format!("proxy.upstreams: url {} must be http(s)://host[:port] without a path", u.url));
            }
        }
        upstreams.sort_by(|a, b| {
            b.host.is_some().cmp(&a.host.is_some()).then(b.path_prefix.len().cmp(&a.path_prefix.len()))
        });
        Ok(upstreams)
    }

    /// The upstream for a request to `host` (normalised) and `path` (plain).
    pub fn upstream(&self, host: Option<&str>, path: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| {
            u.host.as_deref().is_none_or(|h| host == Some(h)) && forwarded::under(path, &u.path_prefix, false)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(host: Option<&str>, prefix: &str, url: &str) -> Upstream {
        Upstream {
            host: host.map(str::to_string),
            path_prefix: prefix.into(),
            url: url.parse().unwrap(),
            pass_credentials: false,
        }
    }

    fn config(upstreams: Vec<Upstream>) -> ProxyConfig {
        ProxyConfig {
            upstreams: ProxyConfig::ordered(upstreams).unwrap(),
            identity: IdentityHeaders::default(),
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            client_identity: None,
            upstream_ca: Vec::new(),
        }
    }

    #[test]
    fn a_named_host_then_the_longest_prefix_win() {
        let c = config(vec![
            up(None, "/", "http://a:1"),
            up(None, "/api", "http://b:1"),
            up(Some("admin.example"), "/", "http://c:1"),
            up(Some("docs.example"), "/guide", "http://d:1"),
        ]);
        let to = |host: &str, path: &str| c.upstream(Some(host), path).unwrap().url.authority().unwrap().to_string();
        assert_eq!(to("x.example", "/"), "a:1");
        assert_eq!(to("x.example", "/api/v1"), "b:1");
        assert_eq!(to("x.example", "/apix"), "a:1");
        assert_eq!(to("admin.example", "/"), "c:1");
        // The named host's upstream, though another's prefix is longer.
        assert_eq!(to("admin.example", "/api/v1"), "c:1");
        // What no upstream of the named host takes goes to those of any host.
        assert_eq!(to("docs.example", "/guide/x"), "d:1");
        assert_eq!(to("docs.example", "/api"), "b:1");
        let only = config(vec![up(Some("admin.example"), "/", "http://c:1")]);
        assert!(only.upstream(Some("x.example"), "/").is_none());
        assert!(only.upstream(None, "/").is_none());
    }

    #[test]
    fn upstreams_that_cannot_work_are_refused() {
        for bad in [
            up(None, "api", "http://a:1"),
            up(None, "/a/../b", "http://a:1"),
            up(Some("Admin.example"), "/", "http://a:1"),
            up(None, "/", "http://a:1/base"),
            up(None, "/", "ftp://a:1"),
            up(None, "/", "/relative"),
        ] {
            assert!(ProxyConfig::ordered(vec![bad.clone()]).is_err(), "{bad:?}");
        }
    }
}
