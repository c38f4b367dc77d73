//! The HTTP front's shared state: its settings ([`FrontConfig`]: cookies,
//! sessions, lockout, route rules) and the parts every handler uses ([`Front`]).

use std::sync::Arc;
use std::time::Duration;

use super::forwarded;
use crate::passwords::PasswordPool;
use crate::rate_limit::Limiter;
use crate::Node;

/// Failed-login lockout policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    /// Failures from one address bucket that lock it out of the account.
    pub threshold: u32,
    /// Failures from everywhere that lock the account itself.
    pub user_threshold: u32,
    pub window: Duration,
    pub duration: Duration,
}

/// A role requirement for forwarded requests (`[[identity.routes]]`): the
/// first rule whose host (if set) and path prefix match `X-Forwarded-Host` /
/// `X-Forwarded-Uri` decides which roles may pass (any one of them). Both are
/// read by [`forwarded`]; a request it cannot read one way is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Matched against the normalised forwarded host (see [`forwarded::normalise_host`]).
    #[serde(default)]
    pub host: Option<String>,
    pub path_prefix: String,
    pub roles: Vec<String>,
    /// Match the path prefix in any letter case, for backends that serve
    /// `/OPS` as `/ops`.
    #[serde(default)]
    pub ignore_case: bool,
    /// `"required"`: only a session that presented a second factor passes
    /// (API keys are refused unless `allow_keys`).
    #[serde(default)]
    pub mfa: Option<String>,
    /// Step-up: a second factor older than this (`"10m"`, `"90s"`, `"1h"`)
    /// is asked for again before the request passes. Implies `mfa`.
    #[serde(default)]
    pub mfa_within: Option<String>,
    /// On a rule that requires a second factor: API keys pass too. A key
    /// presents no factor: any key of a role the rule names passes (keys
    /// people make from their account need a fresh factor; keys an admin
    /// makes do not).
    #[serde(default)]
    pub allow_keys: bool,
    /// With `[jwt]`: the `aud` of tokens for requests this rule lets
    /// through (default: `[jwt] audience`).
    #[serde(default)]
    pub audience: Option<String>,
}

impl RouteRule {
    /// Refuses a rule that could never match as written: a prefix that is
    /// not a plain path, a host that is not normalised, no roles.
    pub fn validate(&self) -> Result<(), String> {
        if forwarded::plain_path(&self.path_prefix).as_deref() != Some(self.path_prefix.as_str()) {
            return Err(format!("identity.routes: path_prefix {:?} must be a plain absolute path", self.path_prefix));
        }
        if let Some(h) = &self.host {
            if forwarded::normalise_host(h).as_deref() != Some(h.as_str()) || h.contains(':') {
                return Err(format!("identity.routes: host {h:?} must be a lower-case host name without port"));
            }
        }
        if self.roles.is_empty() {
            return Err("identity.routes: roles must not be empty".into());
        }
        if let Some(m) = &self.mfa {
            if m != "required" {
                return Err(format!("identity.routes: mfa {m:?} must be \"required\" (or left out)"));
            }
        }
        if let Some(w) = &self.mfa_within {
            match humantime::parse_duration(w) {
                Ok(d) if d >= Duration::from_secs(30) && d <= Duration::from_secs(30 * 86_400) => {}
                _ => return Err(format!("identity.routes: mfa_within {w:?} must be a duration from 30s to 30d")),
            }
        }
        if let Some(a) = &self.audience {
            if a.is_empty() || a.len() > 256 || a.chars().any(char::is_control) {
                return Err("identity.routes: audience must be 1 to 256 characters without control characters".into());
            }
        }
        if self.allow_keys && !self.needs_mfa() {
            return Err("identity.routes: allow_keys applies to a rule with mfa or mfa_within".into());
        }
        Ok(())
    }

    /// Whether the rule asks for a second factor.
    pub fn needs_mfa(&self) -> bool {
        self.mfa.is_some() || self.mfa_within.is_some()
    }

    /// The step-up window, when the rule has one (validated at start-up).
    pub fn mfa_within(&self) -> Option<Duration> {
        self.mfa_within.as_deref().and_then(|w| humantime::parse_duration(w).ok())
    }
}

/// Settings of the HTTP front.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// `Secure` on the session cookie (off only in dev mode).
    pub secure_cookies: bool,
    /// The session cookie's full name, prefix included ([`cookie_name`]).
    pub cookie_name: String,
    /// `Domain=` of the session cookie, when a sign-in host is shared by
    /// several app subdomains; `None` keeps the cookie on this host.
    pub cookie_domain: Option<String>,
    pub session_ttl: Duration,
    pub session_idle: Duration,
    pub lockout: Lockout,
    pub routes: Vec<RouteRule>,
    /// Serve `GET /metrics` here (false when a separate listener does).
    pub metrics_on_front: bool,
    /// `Strict-Transport-Security` on every response (the front serves
    /// HTTPS); `None` sends none.
    pub hsts: Option<axum::http::HeaderValue>,
    /// The sign-in pages (`[pages]`); `None`: no pages, the JSON API only.
    pub pages: Option<Arc<crate::pages::PagesConfig>>,
    /// The origins a browser may call the JSON API from (`cors_origins`).
    pub cors: super::cors::Cors,
    /// A session is taken only from its client's address bucket and user
    /// agent (`bind_sessions`).
    pub bind_sessions: bool,
    /// Who may sign in with a password: `None` everyone; `Some(list)` only
    /// these usernames (`[sso] password_sign_in = false` and its
    /// `break_glass_users`).
    pub password_users: Option<Vec<String>>,
}

impl FrontConfig {
    /// Whether `username` may sign in with a password here.
    pub fn password_allowed(&self, username: &str) -> bool {
        self.password_users.as_ref().is_none_or(|list| list.iter().any(|u| u == username))
    }
}

/// What every handler shares: one reference-counted handle, since the
/// router clones it for every layer and extractor of every request (one
/// count to touch per clone, not one per part).
#[derive(Clone)]
pub struct Front(Arc<FrontParts>);

impl Front {
    pub fn new(parts: FrontParts) -> Front {
        Front(Arc::new(parts))
    }
}

impl std::ops::Deref for Front {
    type Target = FrontParts;

    fn deref(&self) -> &FrontParts {
        &self.0
    }
}

/// The parts of a [`Front`].
pub struct FrontParts {
    pub node: Node,
    pub config: Arc<FrontConfig>,
    /// This node's argon2 pool (a voter's logins, the admin API's hashing).
    pub passwords: PasswordPool,
    pub limits: Limiter,
    /// Where logins are checked: here on a voter, on a voter for a front.
    pub sign_in: crate::sign_in::SignIn,
    /// Sends sign-in links (`[mail]`, a voter's); `None` on fronts.
    pub mailer: Option<crate::mail::Mailer>,
    /// Upstream providers (`[sso]`); `None`: none configured.
    pub sso: Option<Arc<crate::sso::Sso>>,
    /// Second factors (`[mfa]`; the sealer only on a voter with `[secrets]`).
    pub mfa: Arc<crate::mfa::Mfa>,
    /// Downstream JWTs (`[jwt]`); `None`: none are minted, no JWKS is served.
    pub jwt: Option<Arc<crate::jwt::Jwt>>,
}
