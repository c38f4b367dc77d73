//! Signing in through the company's identity provider (upstream OIDC).
//!
//! ```text
//!   pages/sso.rs  POST /login/sso/{id}          ─► start:  flow.rs (cookie, state, nonce, PKCE) ─► 303 to the provider
//!                 GET  /login/sso/{id}/callback ─► finish: provider.rs (code → tokens, ID token checked)
//!                                                          rules.rs (domains, groups, username, roles)
//!                                                          ─► UpstreamSignIn (flow spent + user + roles + session)
//!                 POST /login/sso/{id}/backchannel-logout ─► logout.rs ─► UpstreamEnd
//!   recheck.rs    every few seconds on the leader: refresh tokens ─► UpstreamChecked / UpstreamEnd
//! ```
//!
//! The provider's client secret, the key that seals refresh tokens and the
//! calls to the provider stay on the voters (a front sends the flow on).
//! What the log holds: the link of (issuer, subject) to a user, the roles
//! the mapping granted, the sealed refresh token ([`crate::seal`]) and the
//! spent flows (`gatehouse_domain::upstream`).

pub mod flow;
pub mod logout;
pub mod provider;
pub mod recheck;
pub mod rules;
pub mod sign_in;

use std::sync::Arc;
use std::time::Duration;

pub use provider::{Provider, ProviderError};
pub use rules::{Claims, Refusal, RoleMapping, Rules};

use crate::seal::Sealer;

/// What to do when a provider says a person is gone (a refused refresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offboard {
    /// End their sessions and disable the user (API keys stop too); a later
    /// sign-in through the provider enables it again.
    Disable,
    /// End their sessions only.
    EndSessions,
}

/// One `[[sso.providers]]` entry, as loaded.
#[derive(Clone)]
pub struct ProviderConfig {
    /// Stable id: in URLs, and in the log with each link.
    pub id: String,
    /// The button's label.
    pub name: String,
    /// The issuer (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// On voters; `None` on a front (it never talks to the provider).
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    /// Trust only this CA for the provider (PEM); `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Ask userinfo too (groups or addresses only sent there).
    pub userinfo: bool,
    pub rules: Rules,
    /// Make a user at a first sign-in; off: only subjects linked already.
    pub create_users: bool,
    pub offboard: Offboard,
    /// Extra authorization parameters (`access_type = "offline"` for Google).
    pub auth_params: Vec<(String, String)>,
    /// For each call to the provider.
    pub timeout: Duration,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("id", &self.id)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "(set)"))
            .finish_non_exhaustive()
    }
}

/// `[sso]`, as loaded.
#[derive(Debug, Clone)]
pub struct SsoConfig {
    pub providers: Vec<ProviderConfig>,
    /// Local passwords may sign in (off: providers only, but for `break_glass`).
    pub password_sign_in: bool,
    /// Usernames that sign in with a password while it is off.
    pub break_glass: Vec<String>,
    /// How often a provider is asked again whether a person is still there.
    pub recheck: Duration,
}

/// Upstream sign-in on one node: its providers and, on a voter, the key
/// that seals refresh tokens.
#[derive(Debug)]
pub struct Sso {
    pub config: SsoConfig,
    providers: Vec<Arc<Provider>>,
    sealer: Option<Arc<Sealer>>,
    /// What the re-check loop remembers between rounds (this node only).
    pub(crate) rechecks: std::sync::Mutex<recheck::Memory>,
}

impl Sso {
    /// The providers of `config`, whose callbacks are under `public_url`.
    pub fn new(config: SsoConfig, public_url: &str, sealer: Option<Arc<Sealer>>) -> Result<Sso, String> {
        let base = public_url.trim_end_matches('/');
        let providers = config
            .providers
            .iter()
            .map(|p| Provider::new(p.clone(), &format!("{base}/login/sso/{}/callback", p.id)).map(Arc::new))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Sso { config, providers, sealer, rechecks: Default::default() })
    }

    pub fn provider(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.config.id == id)
    }

    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// The key that seals refresh tokens (voters).
    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_deref()
    }
}

/// What a sealed refresh token is bound to: its identity.
pub fn seal_context(issuer: &str, subject: &str) -> Vec<u8> {
    format!("upstream-refresh\n{issuer}\n{subject}").into_bytes()
}
