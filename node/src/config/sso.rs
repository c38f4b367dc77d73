//! `[sso]` (signing in through upstream OIDC providers) and `[secrets]`
//! (the key-encryption keys that seal secrets at rest): docs/sso.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[sso]`: upstream identity providers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsoSettings {
    /// Local passwords sign in. Off: only the providers, and the
    /// `break_glass_users` (on `/login?local=1`).
    pub password_sign_in: bool,
    /// Usernames that keep signing in with a password while it is off.
    pub break_glass_users: Vec<String>,
    /// How often each provider is asked again whether a person with a
    /// session is still there (5 s to 24 h).
    pub recheck_secs: u64,
    pub providers: Vec<ProviderSettings>,
}

impl Default for SsoSettings {
    fn default() -> Self {
        SsoSettings { password_sign_in: true, break_glass_users: Vec::new(), recheck_secs: 300, providers: Vec::new() }
    }
}

/// `offboard`: what a refused re-check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffboardSetting {
    /// End the sessions and disable the user (keys stop too).
    Disable,
    /// End the sessions only.
    Sessions,
}

/// `[[sso.providers]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// 1–32 characters of `a-z 0-9 -`: in the callback URL and the log.
    pub id: String,
    /// The button's label ("Sign in with …").
    pub name: String,
    /// The issuer URL; discovery reads `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// The client secret's file (voters; a front never talks to the provider).
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// A CA (PEM) to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Also ask the userinfo endpoint (groups or addresses sent only there).
    #[serde(default)]
    pub userinfo: bool,
    /// Only addresses in these domains sign in (exact). Empty: any.
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// Google: the `hd` claim must be this domain.
    pub hosted_domain: Option<String>,
    /// Only people in one of these groups sign in. Empty: any.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Take addresses the provider does not mark verified (Entra ID).
    #[serde(default)]
    pub trust_unverified_email: bool,
    /// Make a user at a first sign-in (else only linked subjects sign in).
    #[serde(default = "yes")]
    pub create_users: bool,
    /// Let anyone with an account at the provider in (no domain, `hd` or
    /// group rule): refused unless set, for providers anyone can join.
    #[serde(default)]
    pub allow_any_account: bool,
    /// Roles everyone signing in through this provider gets.
    #[serde(default)]
    pub default_roles: Vec<String>,
    /// Group → roles. Roles only the mapping granted go with the group.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    #[serde(default = "disable")]
    pub offboard: OffboardSetting,
    /// Extra authorization parameters (Google: `access_type = "offline"`).
    #[serde(default)]
    pub auth_params: BTreeMap<String, String>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_username_claim() -> String {
    "email".into()
}
fn yes() -> bool {
    true
}
fn disable() -> OffboardSetting {
    OffboardSetting::Disable
}
fn default_timeout() -> u64 {
    10
}

/// The most providers one deployment configures.
const MAX_PROVIDERS: usize = 16;

impl SsoSettings {
    /// The providers as the node runs them. `voter`: client secrets are
    /// read (a front needs none); `dev`: an `http://` issuer off loopback
    /// is taken.
    pub fn load(&self, voter: bool, dev: bool) -> Result<Option<gatehouse_api::sso::SsoConfig>, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !self.password_sign_in && self.providers.is_empty() {
            return bad("sso.password_sign_in = false needs at least one [[sso.providers]]".into());
        }
        if self.providers.is_empty() {
            return Ok(None);
        }
        if self.providers.len() > MAX_PROVIDERS {
            return bad(format!("at most {MAX_PROVIDERS} [[sso.providers]]"));
        }
        if !(5..=86_400).contains(&self.recheck_secs) {
            return bad("sso.recheck_secs must be 5 to 86400".into());
        }
        for u in &self.break_glass_users {
            if gatehouse_domain::users::validate_username(u).is_err() {
                return bad(format!("sso.break_glass_users: {u:?} is not a username"));
            }
        }
        let mut providers = Vec::new();
        for p in &self.providers {
            if providers.iter().any(|q: &gatehouse_api::sso::ProviderConfig| q.id == p.id) {
                return bad(format!("sso.providers: id {:?} is listed twice", p.id));
            }
            // One issuer, one provider: identities are keyed by issuer.
            if providers.iter().any(|q: &gatehouse_api::sso::ProviderConfig| q.issuer == p.issuer) {
                return bad(format!("sso.providers: issuer {:?} is listed twice", p.issuer));
            }
            providers.push(p.load(voter, dev)?);
        }
        Ok(Some(gatehouse_api::sso::SsoConfig {
            providers,
            password_sign_in: self.password_sign_in,
            break_glass: self.break_glass_users.clone(),
            recheck: Duration::from_secs(self.recheck_secs),
        }))
    }
}

fn domain(what: &str, d: &str) -> Result<String, ConfigError> {
    let d = d.trim().to_ascii_lowercase();
    let label_ok = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if d.len() > 253 || !d.contains('.') || !d.split('.').all(label_ok) {
        return Err(ConfigError::Invalid(format!("{what}: {d:?} is not a domain like example.com")));
    }
    Ok(d)
}

impl ProviderSettings {
    fn load(&self, voter: bool, dev: bool) -> Result<gatehouse_api::sso::ProviderConfig, ConfigError> {
        let id = &self.id;
        let bad = |m: String| ConfigError::Invalid(format!("sso.providers {id:?}: {m}"));
        let id_ok = (1..=32).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(ConfigError::Invalid(format!(
                "sso.providers: id {id:?} must be 1 to 32 characters of a-z 0-9 -"
            )));
        }
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(bad("name must be 1 to 64 printable characters".into()));
        }
        let issuer = url::Url::parse(&self.issuer).map_err(|_| bad("issuer must be a URL".into()))?;
        let loopback = match issuer.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        let scheme_ok = issuer.scheme() == "https" || (issuer.scheme() == "http" && (dev || loopback));
        if !scheme_ok || issuer.query().is_some() || issuer.fragment().is_some() || !issuer.username().is_empty() {
            return Err(bad("issuer must be https://… (http:// only to loopback or in dev mode), no query".into()));
        }
        if self.client_id.is_empty() || self.client_id.len() > 256 || self.client_id.chars().any(char::is_control) {
            return Err(bad("client_id must be 1 to 256 printable characters".into()));
        }
        let client_secret = match (&self.client_secret_file, voter) {
            (Some(path), true) => {
                let s = super::read_secret_file(path)?.trim().to_string();
                if s.is_empty() {
                    return Err(bad("client_secret_file is empty".into()));
                }
                Some(s)
            }
            (None, true) => return Err(bad("client_secret_file is needed: the voters trade codes for tokens".into())),
            (_, false) => None,
        };
        let mut scopes = self.scopes.clone();
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        if scopes.iter().any(|s| {
            s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        }) {
            return Err(bad("scopes must be printable words".into()));
        }
        let ca_pem = match &self.ca_file {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?),
        };
        let allowed_domains = self
            .allowed_email_domains
            .iter()
            .map(|d| domain(&format!("sso.providers {id:?}: allowed_email_domains"), d))
            .collect::<Result<Vec<_>, _>>()?;
        let hosted_domain = self
            .hosted_domain
            .as_deref()
            .map(|d| domain(&format!("sso.providers {id:?}: hosted_domain"), d))
            .transpose()?;
        let role_ok = |r: &String| gatehouse_domain::roles::validate_name(r).is_ok();
        for (group, roles) in &self.roles {
            if group.is_empty() || group.len() > 256 {
                return Err(bad("a group in roles must be 1 to 256 characters".into()));
            }
            if let Some(r) = roles.iter().find(|r| !role_ok(r)) {
                return Err(bad(format!("roles: {r:?} is not a role name")));
            }
        }
        if let Some(r) = self.default_roles.iter().find(|r| !role_ok(r)) {
            return Err(bad(format!("default_roles: {r:?} is not a role name")));
        }
        for claim in [&self.groups_claim, &self.username_claim] {
            if claim.is_empty() || claim.len() > 64 {
                return Err(bad("groups_claim and username_claim must be 1 to 64 characters".into()));
            }
        }
        if !(1..=60).contains(&self.timeout_secs) {
            return Err(bad("timeout_secs must be 1 to 60".into()));
        }
        let reserved = [
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "response_mode",
            "request",
            "request_uri",
            "claims",
        ];
        if let Some(k) = self.auth_params.keys().find(|k| reserved.contains(&k.as_str())) {
            return Err(bad(format!("auth_params may not set {k:?}")));
        }
        let ruled = !allowed_domains.is_empty() || hosted_domain.is_some() || !self.allowed_groups.is_empty();
        if self.create_users && !ruled && !self.allow_any_account {
            return Err(bad(
                "create_users lets in anyone with an account at the provider: set allowed_email_domains, \
                 hosted_domain or allowed_groups (or allow_any_account = true)"
                    .into(),
            ));
        }
        if issuer.host_str() == Some("accounts.google.com") && hosted_domain.is_none() && !self.allow_any_account {
            return Err(bad(
                "Google signs in any Google account, consumer ones on a company address too: set hosted_domain".into(),
            ));
        }
        if self.trust_unverified_email && self.allowed_groups.is_empty() {
            return Err(bad(
                "trust_unverified_email needs allowed_groups: an address nobody verified says nothing of who may sign in"
                    .into(),
            ));
        }
        Ok(gatehouse_api::sso::ProviderConfig {
            id: id.clone(),
            name: name.to_string(),
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            client_secret,
            scopes,
            ca_pem,
            userinfo: self.userinfo,
            rules: gatehouse_api::sso::Rules {
                allowed_domains,
                hosted_domain,
                allowed_groups: self.allowed_groups.clone(),
                groups_claim: self.groups_claim.clone(),
                username_claim: self.username_claim.clone(),
                trust_unverified_email: self.trust_unverified_email,
                roles: self
                    .roles
                    .iter()
                    .map(|(group, roles)| gatehouse_api::sso::RoleMapping {
                        group: group.clone(),
                        roles: roles.clone(),
                    })
                    .collect(),
                default_roles: self.default_roles.clone(),
            },
            create_users: self.create_users,
            offboard: match self.offboard {
                OffboardSetting::Disable => gatehouse_api::sso::Offboard::Disable,
                OffboardSetting::Sessions => gatehouse_api::sso::Offboard::EndSessions,
            },
            auth_params: self.auth_params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            timeout: Duration::from_secs(self.timeout_secs),
        })
    }
}

/// `[secrets]`: the key-encryption keys that seal secrets at rest
/// (AES-256-GCM). The first seals new values; the others still open old
/// ones (a rotation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSettings {
    pub keys: Vec<KeySettings>,
    /// How often the leader moves secrets under an older key to the first
    /// one (a rotation), in seconds.
    pub reseal_secs: u64,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        SecretsSettings { keys: Vec::new(), reseal_secs: 60 }
    }
}

/// One key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// Stored with every value it seals.
    pub id: String,
    /// 32 bytes as 64 hex digits or base64 (`openssl rand -hex 32`).
    pub file: PathBuf,
}

impl SecretsSettings {
    /// The sealer, or `None` without keys.
    pub fn load(&self) -> Result<Option<Arc<gatehouse_api::seal::Sealer>>, ConfigError> {
        if !(1..=86_400).contains(&self.reseal_secs) {
            return Err(ConfigError::Invalid("secrets.reseal_secs must be 1 to 86400".into()));
        }
        if self.keys.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        for k in &self.keys {
            let text = super::read_secret_file(&k.file)?;
            let key = gatehouse_api::seal::Sealer::read_key(&text)
                .map_err(|e| ConfigError::Invalid(format!("secrets.keys {:?}: {}: {e}", k.id, k.file.display())))?;
            keys.push((k.id.clone(), key));
        }
        gatehouse_api::seal::Sealer::new(keys)
            .map(|s| Some(Arc::new(s)))
            .map_err(|e| ConfigError::Invalid(format!("secrets.keys: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(id: &str, issuer: &str) -> ProviderSettings {
        ProviderSettings {
            id: id.into(),
            name: "Corp".into(),
            issuer: issuer.into(),
            client_id: "gatehouse".into(),
            client_secret_file: None,
            scopes: default_scopes(),
            ca_file: None,
            userinfo: false,
            allowed_email_domains: vec!["example.com".into()],
            hosted_domain: None,
            allowed_groups: vec![],
            groups_claim: default_groups_claim(),
            username_claim: default_username_claim(),
            trust_unverified_email: false,
            create_users: true,
            allow_any_account: false,
            default_roles: vec![],
            roles: BTreeMap::new(),
            offboard: OffboardSetting::Disable,
            auth_params: BTreeMap::new(),
            timeout_secs: 10,
        }
    }

    fn load(providers: Vec<ProviderSettings>) -> Result<(), String> {
        let s = SsoSettings { providers, ..Default::default() };
        s.load(false, false).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn providers_anyone_could_join_are_refused_unless_said() {
        assert!(load(vec![provider("corp", "https://idp.example.com")]).is_ok());
        let open = ProviderSettings { allowed_email_domains: vec![], ..provider("corp", "https://idp.example.com") };
        assert!(load(vec![open.clone()]).unwrap_err().contains("allow_any_account"));
        assert!(load(vec![ProviderSettings { allow_any_account: true, ..open.clone() }]).is_ok());
        assert!(load(vec![ProviderSettings { create_users: false, ..open }]).is_ok());
        let google = provider("google", "https://accounts.google.com");
        assert!(load(vec![google.clone()]).unwrap_err().contains("hosted_domain"));
        assert!(load(vec![ProviderSettings { hosted_domain: Some("example.com".into()), ..google }]).is_ok());
        let trusting =
            ProviderSettings { trust_unverified_email: true, ..provider("entra", "https://login.example.com") };
        assert!(load(vec![trusting.clone()]).unwrap_err().contains("allowed_groups"));
        assert!(load(vec![ProviderSettings { allowed_groups: vec!["g".into()], ..trusting }]).is_ok());
    }

    #[test]
    fn issuers_ids_and_parameters_are_checked() {
        let a = provider("a", "https://idp.example.com");
        assert!(load(vec![a.clone(), provider("b", "https://idp.example.com")]).unwrap_err().contains("issuer"));
        assert!(load(vec![a.clone(), provider("a", "https://other.example.com")]).unwrap_err().contains("twice"));
        assert!(load(vec![provider("a", "http://idp.example.com")]).is_err(), "plain http off loopback");
        assert!(load(vec![provider("a", "http://127.0.0.1:8080")]).is_ok(), "plain http on loopback");
        assert!(load(vec![provider("A b", "https://idp.example.com")]).is_err());
        for reserved in ["redirect_uri", "response_mode", "request_uri", "claims", "nonce"] {
            let p = ProviderSettings { auth_params: [(reserved.to_string(), "x".to_string())].into(), ..a.clone() };
            assert!(load(vec![p]).unwrap_err().contains("auth_params"), "{reserved}");
        }
        // A voter needs the client secret; a front does not.
        let s = SsoSettings { providers: vec![a], ..Default::default() };
        assert!(s.load(true, false).unwrap_err().to_string().contains("client_secret_file"));
        let off = SsoSettings { password_sign_in: false, ..Default::default() };
        assert!(off.load(false, false).is_err(), "providers-only needs a provider");
    }
}
