//! `[mfa]`: second factors. TOTP authenticators are offered on the
//! "my account" page when the voters hold `[secrets]` keys (the secrets
//! are sealed with them); a code is checked on a voter, spent once
//! through the log, and wrong ones lock the factor for a while.
//! `[mfa.passkeys]` turns passkeys (WebAuthn) on: the relying party's
//! domain and the origins of the pages that run the ceremonies.

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaSettings {
    /// The name authenticator apps show beside the code (default: the
    /// pages' brand name).
    pub issuer: Option<String>,
    /// Wrong codes within `failure_window_secs` that lock the factor.
    pub max_failures: u32,
    pub failure_window_secs: u64,
    /// How long a locked factor stays locked (on every node).
    pub lockout_secs: u64,
    /// Passkeys (off without this section).
    pub passkeys: Option<PasskeySettings>,
    /// Days a person may trust a browser to skip the second step (0: off,
    /// at most 90).
    pub trusted_device_days: u32,
}

/// `[mfa.passkeys]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeySettings {
    /// The relying party id: the domain passkeys are made for (they work
    /// on it and its subdomains; it cannot change without new passkeys).
    pub rp_id: String,
    /// The origins of the sign-in pages (`https://auth.example.com`;
    /// `http://localhost:PORT` for development), each on `rp_id`.
    pub origins: Vec<String>,
}

impl Default for MfaSettings {
    fn default() -> Self {
        MfaSettings {
            issuer: None,
            max_failures: 5,
            failure_window_secs: 300,
            lockout_secs: 900,
            passkeys: None,
            trusted_device_days: 0,
        }
    }
}

impl MfaSettings {
    /// The settings as the voters run them; `brand`: the pages' name.
    pub fn load(&self, brand: Option<&str>) -> Result<gatehouse_api::mfa::MfaConfig, ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !(1..=100).contains(&self.max_failures) {
            return bad("mfa.max_failures must be 1 to 100");
        }
        if !(1..=86_400).contains(&self.failure_window_secs) || !(1..=86_400).contains(&self.lockout_secs) {
            return bad("mfa.failure_window_secs and mfa.lockout_secs must be 1 to 86400");
        }
        let issuer = self.issuer.as_deref().or(brand).unwrap_or("Gatehouse").trim().to_string();
        if issuer.is_empty() || issuer.len() > 64 || issuer.chars().any(|c| c.is_control() || c == ':') {
            return bad("mfa.issuer must be 1 to 64 characters, without ':' or control characters");
        }
        let passkeys = match &self.passkeys {
            Some(p) => Some(std::sync::Arc::new(
                gatehouse_api::mfa::passkey::Passkeys::new(&p.rp_id, &issuer, &p.origins)
                    .map_err(|e| ConfigError::Invalid(format!("mfa.passkeys: {e}")))?,
            )),
            None => None,
        };
        if self.trusted_device_days > 90 {
            return bad("mfa.trusted_device_days must be 0 (off) to 90");
        }
        let days = u64::from(self.trusted_device_days);
        Ok(gatehouse_api::mfa::MfaConfig {
            trusted_device: (days > 0).then(|| std::time::Duration::from_secs(days * 86_400)),
            passkeys,
            issuer,
            max_failures: self.max_failures,
            failure_window: std::time::Duration::from_secs(self.failure_window_secs),
            lockout: std::time::Duration::from_secs(self.lockout_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_the_issuer() {
        let ok = MfaSettings::default().load(Some("Acme")).unwrap();
        assert_eq!(ok.issuer, "Acme");
        assert_eq!(MfaSettings::default().load(None).unwrap().issuer, "Gatehouse");
        let passkeys =
            PasskeySettings { rp_id: "example.com".into(), origins: vec!["https://auth.example.com".into()] };
        let on = MfaSettings { passkeys: Some(passkeys), ..Default::default() }.load(None).unwrap();
        assert_eq!(on.passkeys.unwrap().rp_id(), "example.com");
        for bad in [
            MfaSettings { max_failures: 0, ..Default::default() },
            MfaSettings { lockout_secs: 0, ..Default::default() },
            MfaSettings { failure_window_secs: 100_000, ..Default::default() },
            MfaSettings { issuer: Some("a:b".into()), ..Default::default() },
            MfaSettings { issuer: Some(" ".into()), ..Default::default() },
            MfaSettings { trusted_device_days: 91, ..Default::default() },
            MfaSettings {
                passkeys: Some(PasskeySettings {
                    rp_id: "example.com".into(),
                    origins: vec!["http://example.com".into()],
                }),
                ..Default::default()
            },
        ] {
            assert!(bad.load(None).is_err(), "{bad:?}");
        }
    }
}
