//! `[proxy]`: reverse-proxy mode (docs/proxy.md): a listener of its own
//! whose requests are verified as `/auth/verify` verifies a forwarded one
//! and sent on to the upstream their host and path name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// Where the proxy listens (HTTPS when `[https]` is set, as the front).
    pub listen: SocketAddr,
    pub upstreams: Vec<UpstreamSettings>,
    /// Connecting to an upstream (default 5 s).
    #[serde(default = "default_connect")]
    pub connect_timeout: String,
    /// From the request sent to the upstream's response head (default 60 s).
    #[serde(default = "default_first_byte")]
    pub first_byte_timeout: String,
    /// No body bytes either way for this long ends the exchange (default 5 min).
    #[serde(default = "default_idle")]
    pub idle_timeout: String,
    /// Names of the identity headers upstream (defaults: `X-Auth-User`,
    /// `X-Auth-User-Id`, `X-Auth-Roles`, `X-Auth-Email`).
    #[serde(default)]
    pub headers: HeaderNames,
    /// Mutual TLS to `https://` upstreams: Gatehouse's certificate and key.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// The CA bundle `https://` upstreams are checked against.
    #[serde(default)]
    pub upstream_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderNames {
    pub user: Option<String>,
    pub user_id: Option<String>,
    pub roles: Option<String>,
    pub email: Option<String>,
}

/// `[[proxy.upstreams]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// The host requests must name (any when unset).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Pass Gatehouse's session cookie and a Gatehouse key in
    /// `Authorization` on to this upstream (off by default).
    #[serde(default)]
    pub pass_credentials: bool,
}

fn default_connect() -> String {
    "5s".into()
}
fn default_first_byte() -> String {
    "60s".into()
}
fn default_idle() -> String {
    "300s".into()
}
fn default_prefix() -> String {
    "/".into()
}

fn duration(name: &str, value: &str, max: Duration) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value)
        .ok()
        .filter(|d| *d >= Duration::from_millis(100) && *d <= max)
        .ok_or_else(|| ConfigError::Invalid(format!("proxy.{name} {value:?} must be a duration from 100ms to {max:?}")))
}

fn header(name: &str, value: &Option<String>, default: &str) -> Result<axum::http::HeaderName, ConfigError> {
    let v = value.as_deref().unwrap_or(default);
    let h = axum::http::HeaderName::from_bytes(v.as_bytes())
        .map_err(|_| ConfigError::Invalid(format!("proxy.headers.{name} {v:?} is not a header name")))?;
    let taken = [
        "host",
        "cookie",
        "set-cookie",
        "authorization",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "x-auth-mfa",
        "x-auth-mfa-age",
    ];
    if taken.contains(&h.as_str()) || h.as_str().starts_with("x-forwarded-") {
        return Err(ConfigError::Invalid(format!("proxy.headers.{name} {v:?} is a header the proxy owns")));
    }
    Ok(h)
}

impl ProxySettings {
    pub fn load(&self) -> Result<gatehouse_api::proxy::ProxyConfig, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        if self.upstreams.is_empty() {
            return Err(bad("[proxy] needs at least one [[proxy.upstreams]]".into()));
        }
        let upstreams = self
            .upstreams
            .iter()
            .map(|u| {
                let url = u.url.parse().map_err(|_| bad(format!("proxy.upstreams: url {:?} is not a URL", u.url)))?;
                Ok(gatehouse_api::proxy::Upstream {
                    host: u.host.clone(),
                    path_prefix: u.path_prefix.clone(),
                    url,
                    pass_credentials: u.pass_credentials,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let upstreams = gatehouse_api::proxy::ProxyConfig::ordered(upstreams).map_err(bad)?;
        let identity = gatehouse_api::proxy::config::IdentityHeaders {
            user: header("user", &self.headers.user, "x-auth-user")?,
            user_id: header("user_id", &self.headers.user_id, "x-auth-user-id")?,
            roles: header("roles", &self.headers.roles, "x-auth-roles")?,
            email: header("email", &self.headers.email, "x-auth-email")?,
        };
        let mut names = [&identity.user, &identity.user_id, &identity.roles, &identity.email].map(|h| h.as_str());
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad("proxy.headers: each identity goes in a header of its own".into()));
        }
        for u in &self.upstreams {
            if u.url.split("://").nth(1).is_some_and(|rest| rest.split('/').next().unwrap_or("").contains('@')) {
                return Err(bad(format!("proxy.upstreams: url {:?} must not carry a user or password", u.url)));
            }
        }
        let tls = |e: gatehouse_tls::TlsError| bad(format!("[proxy]: {e}"));
        let client_identity = match (&self.client_cert_file, &self.client_key_file) {
            (Some(c), Some(k)) => Some((
                gatehouse_tls::pem::certificates(c).map_err(tls)?,
                gatehouse_tls::pem::private_key(k).map_err(tls)?,
            )),
            (None, None) => None,
            _ => return Err(bad("proxy.client_cert_file and client_key_file go together".into())),
        };
        let upstream_ca = match &self.upstream_ca_file {
            Some(p) => gatehouse_tls::pem::certificates(p).map_err(tls)?,
            None => Vec::new(),
        };
        let https_upstream = self.upstreams.iter().any(|u| u.url.starts_with("https://"));
        if https_upstream && upstream_ca.is_empty() {
            return Err(bad("an https:// upstream needs proxy.upstream_ca_file (system roots are not used)".into()));
        }
        let first_byte_timeout = duration("first_byte_timeout", &self.first_byte_timeout, Duration::from_secs(3600))?;
        let idle_timeout = duration("idle_timeout", &self.idle_timeout, Duration::from_secs(24 * 3600))?;
        if idle_timeout < first_byte_timeout {
            // An exchange waiting for its first byte moves nothing: the
            // connection would be dropped as idle before the timeout says.
            return Err(bad("proxy.idle_timeout must be at least proxy.first_byte_timeout".into()));
        }
        Ok(gatehouse_api::proxy::ProxyConfig {
            upstreams,
            identity,
            connect_timeout: duration("connect_timeout", &self.connect_timeout, Duration::from_secs(60))?,
            first_byte_timeout,
            idle_timeout,
            client_identity,
            upstream_ca,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ProxySettings {
        ProxySettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstreams: vec![UpstreamSettings {
                host: None,
                path_prefix: "/".into(),
                url: "http://127.0.0.1:3000".into(),
                pass_credentials: false,
            }],
            connect_timeout: default_connect(),
            first_byte_timeout: default_first_byte(),
            idle_timeout: default_idle(),
            headers: HeaderNames::default(),
            client_cert_file: None,
            client_key_file: None,
            upstream_ca_file: None,
        }
    }

    #[test]
    fn settings_are_checked_at_start_up() {
        let ok = settings().load().unwrap();
        assert_eq!(ok.idle_timeout, Duration::from_secs(300));
        let https = UpstreamSettings { url: "https://app:443".into(), ..settings().upstreams[0].clone() };
        for bad in [
            ProxySettings { upstreams: vec![], ..settings() },
            ProxySettings { upstreams: vec![https], ..settings() },
            ProxySettings { connect_timeout: "0s".into(), ..settings() },
            ProxySettings { idle_timeout: "forever".into(), ..settings() },
            ProxySettings { headers: HeaderNames { user: Some("Cookie".into()), ..Default::default() }, ..settings() },
            ProxySettings {
                headers: HeaderNames { email: Some("bad name".into()), ..Default::default() },
                ..settings()
            },
            ProxySettings { client_cert_file: Some("/x.pem".into()), ..settings() },
            ProxySettings { headers: HeaderNames { user: Some("TE".into()), ..Default::default() }, ..settings() },
            ProxySettings {
                headers: HeaderNames { email: Some("X-Auth-Roles".into()), ..Default::default() },
                ..settings()
            },
            ProxySettings {
                upstreams: vec![UpstreamSettings {
                    url: "http://u:p@app:80".into(),
                    ..settings().upstreams[0].clone()
                }],
                ..settings()
            },
            ProxySettings { first_byte_timeout: "10m".into(), idle_timeout: "1m".into(), ..settings() },
        ] {
            assert!(bad.load().is_err(), "{bad:?}");
        }
    }
}
