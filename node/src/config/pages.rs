//! `[pages]` (the sign-in pages, sign-in links) and `[mail]` (the SMTP
//! server links are sent through): docs/sign-in.md.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[pages]`: the sign-in pages a person uses in a browser (docs/sign-in.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagesSettings {
    /// Serve `/login`, `/account` and the rest on this node or front.
    pub enabled: bool,
    /// Shown in every title and, without a logo, in the header.
    pub product_name: String,
    /// `#rrggbb` for buttons, focus rings and notices.
    pub accent_color: String,
    /// An `.svg` or `.png` (at most 256 KiB), served at `/assets/logo`.
    pub logo_file: Option<PathBuf>,
    /// Where browsers reach these pages (`https://login.example.com`):
    /// `/auth/verify` sends a browser there to sign in. Unset: the host
    /// the browser asked (the pages and the apps share it).
    pub public_url: Option<String>,
    /// Where a browser may be sent back after signing in (`?rd=`): these
    /// domains and their subdomains. Empty: only paths on the sign-in host.
    pub return_domains: Vec<String>,
    /// Offer "email me a link" on the sign-in page. A voter sends the
    /// links, so it needs `[mail]` and `public_url`; a front sends the
    /// requests on to the voters.
    pub email_links: bool,
    /// How long a sign-in link works (60 s to 24 h).
    pub link_ttl_secs: u64,
    /// Unspent links one address may hold at once (1 to 10): at most this
    /// many mails per address per `link_ttl_secs`, exact across the cluster.
    pub links_per_address: u32,
    /// Only addresses in these domains may ask for a link (exact domains,
    /// like `example.com`; a subdomain is not included). Empty: any.
    pub allowed_email_domains: Vec<String>,
    /// An API key is made from "my account" only within this many seconds
    /// of signing in (30 to 3600); later, the person signs in again first.
    pub reauth_secs: u64,
}

impl Default for PagesSettings {
    fn default() -> Self {
        PagesSettings {
            enabled: true,
            product_name: "Gatehouse".into(),
            accent_color: "#2457c5".into(),
            logo_file: None,
            public_url: None,
            return_domains: Vec::new(),
            email_links: false,
            link_ttl_secs: 15 * 60,
            links_per_address: 3,
            allowed_email_domains: Vec::new(),
            reauth_secs: 300,
        }
    }
}

impl PagesSettings {
    /// The pages as the HTTP front serves them (the logo read from its
    /// file), or `None` when they are off.
    pub fn load(&self, dev: bool) -> Result<Option<gatehouse_api::pages::PagesConfig>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let bad = |m: String| ConfigError::Invalid(m);
        let logo = match &self.logo_file {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| bad(format!("pages.logo_file {}: {e}", path.display())))?;
                Some((path.to_string_lossy().into_owned(), bytes))
            }
        };
        let brand = gatehouse_api::pages::Brand::new(
            &self.product_name,
            &self.accent_color,
            logo.as_ref().map(|(name, bytes)| (name.as_str(), bytes.clone())),
        )
        .map_err(bad)?;
        let return_domains = gatehouse_api::pages::ReturnDomains::new(&self.return_domains, dev).map_err(bad)?;
        let public_url = match &self.public_url {
            None => None,
            Some(u) => Some(public_url(u, dev).map_err(bad)?),
        };
        let links = if self.email_links { Some(self.links()?) } else { None };
        if !(30..=3600).contains(&self.reauth_secs) {
            return Err(bad("pages.reauth_secs must be 30 to 3600".into()));
        }
        let reauth = Duration::from_secs(self.reauth_secs);
        Ok(Some(gatehouse_api::pages::PagesConfig {
            brand,
            return_domains,
            public_url,
            links,
            reauth,
            // Set from `[sso]` when the node loads it.
            providers: Vec::new(),
            password_form: true,
        }))
    }

    fn links(&self) -> Result<gatehouse_api::sign_in::LinkSettings, ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !(60..=24 * 3600).contains(&self.link_ttl_secs) {
            return bad("pages.link_ttl_secs must be 60 to 86400");
        }
        if !(1..=gatehouse_domain::links::MAX_LIVE).contains(&self.links_per_address) {
            return bad("pages.links_per_address must be 1 to 10");
        }
        let mut domains = Vec::new();
        for d in &self.allowed_email_domains {
            let d = d.trim().to_ascii_lowercase();
            let label_ok = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if d.len() > 253 || !d.contains('.') || !d.split('.').all(label_ok) {
                return Err(ConfigError::Invalid(format!(
                    "pages.allowed_email_domains: {d:?} is not a domain like example.com"
                )));
            }
            domains.push(d);
        }
        Ok(gatehouse_api::sign_in::LinkSettings {
            ttl: Duration::from_secs(self.link_ttl_secs),
            per_address: self.links_per_address,
            allowed_domains: domains,
        })
    }
}

/// `mail.tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTlsSetting {
    /// `STARTTLS`, required (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// None: a server on this machine (loopback), or dev mode.
    None,
}

/// `[mail]`: the SMTP server a voter sends sign-in links through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    pub host: String,
    /// Default: 587 with `starttls`, 465 with `implicit`, 25 with `none`.
    pub port: Option<u16>,
    #[serde(default = "starttls")]
    pub tls: MailTlsSetting,
    /// A CA (PEM) to trust beside the system's roots, for a server with a
    /// private certificate.
    pub ca_file: Option<PathBuf>,
    /// SMTP AUTH user; the password comes from `password_file`.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The sender, like `Gatehouse <no-reply@example.com>`.
    pub from: String,
    #[serde(default = "mail_timeout")]
    pub timeout_secs: u64,
}

fn starttls() -> MailTlsSetting {
    MailTlsSetting::Starttls
}

fn mail_timeout() -> u64 {
    10
}

impl MailSettings {
    /// The mailer's settings, with the password and CA read from their
    /// files. Plaintext only to a loopback server or in dev mode.
    pub fn load(&self, dev: bool) -> Result<gatehouse_api::mail::MailConfig, ConfigError> {
        use gatehouse_api::mail::MailTls;
        let bad = |m: String| ConfigError::Invalid(m);
        let host = self.host.trim();
        if host.is_empty() || host.len() > 253 || host.contains(['/', ' ', '@']) {
            return Err(bad("mail.host must be a host name or address".into()));
        }
        let tls = match self.tls {
            MailTlsSetting::Starttls => MailTls::StartTls,
            MailTlsSetting::Implicit => MailTls::Implicit,
            MailTlsSetting::None => MailTls::None,
        };
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if tls == MailTls::None && !dev && !loopback {
            return Err(bad(
                "mail.tls = \"none\" sends links in plaintext: only to a loopback server, or in dev mode".into()
            ));
        }
        let port = self.port.unwrap_or(match tls {
            MailTls::StartTls => 587,
            MailTls::Implicit => 465,
            MailTls::None => 25,
        });
        let from = self.from.parse().map_err(|_| bad(format!("mail.from {:?} is no mail address", self.from)))?;
        let credentials = match (&self.username, &self.password_file) {
            (Some(user), Some(path)) => {
                if tls == MailTls::None && !loopback {
                    return Err(bad("mail: a password is sent only over TLS or to a loopback server".into()));
                }
                Some((user.clone(), super::read_secret_file(path)?.trim().to_string()))
            }
            (None, None) => None,
            _ => return Err(bad("mail.username and mail.password_file go together".into())),
        };
        let ca_pem = match &self.ca_file {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?),
        };
        if !(1..=300).contains(&self.timeout_secs) {
            return Err(bad("mail.timeout_secs must be 1 to 300".into()));
        }
        Ok(gatehouse_api::mail::MailConfig {
            host: host.to_string(),
            port,
            tls,
            ca_pem,
            credentials,
            from,
            timeout: Duration::from_secs(self.timeout_secs),
        })
    }
}

/// `pages.public_url`: a scheme and host (and port) only.
fn public_url(raw: &str, dev: bool) -> Result<String, String> {
    let bad = || format!("pages.public_url {raw:?} must be https://host[:port] (http:// in dev mode only), no path");
    let url = url::Url::parse(raw).map_err(|_| bad())?;
    let scheme_ok = url.scheme() == "https" || (dev && url.scheme() == "http");
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    if !scheme_ok || !bare || !url.username().is_empty() || url.password().is_some() || url.host().is_none() {
        return Err(bad());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}
