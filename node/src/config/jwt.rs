//! `[jwt]`: a signed token for the app with every allowed request
//! (docs/jwt.md). Voters sign; a stateless front asks a voter, so a
//! voter needs `[secrets]` (the private keys are sealed with it) and a
//! front needs its voters to have `[jwt]` too.

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// `iss`: the URL apps know this cluster by (`https://auth.example.com`).
    pub issuer: String,
    /// `aud` when the matching route rule names none.
    pub audience: String,
    /// How long a token is valid: `"60s"` by default, 10 s to 1 h.
    #[serde(default = "default_lifetime")]
    pub lifetime: String,
    /// `"EdDSA"` (Ed25519, the default) or `"RS256"` for libraries without EdDSA.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// `"Authorization"` (the token as `Bearer <jwt>`, the default) or a
    /// header of its own (the bare token).
    #[serde(default = "default_header")]
    pub header: String,
    /// How long a new key is published before it signs (`"10m"` by default,
    /// 0 to 7 days): longer than any app caches the JWKS.
    #[serde(default = "default_publish_delay")]
    pub publish_delay: String,
}

fn default_lifetime() -> String {
    "60s".into()
}
fn default_algorithm() -> String {
    "EdDSA".into()
}
fn default_header() -> String {
    "Authorization".into()
}
fn default_publish_delay() -> String {
    "10m".into()
}

impl JwtSettings {
    /// The settings as a node runs them.
    pub fn load(&self) -> Result<gatehouse_api::jwt::JwtConfig, ConfigError> {
        use std::time::Duration;
        let bad = |m: String| ConfigError::Invalid(m);
        url::Url::parse(&self.issuer)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some())
            .ok_or_else(|| bad(format!("jwt.issuer {:?} must be an http(s) URL", self.issuer)))?;
        if self.audience.is_empty() || self.audience.len() > 256 || self.audience.chars().any(char::is_control) {
            return Err(bad("jwt.audience must be 1 to 256 characters without control characters".into()));
        }
        let lifetime = humantime::parse_duration(&self.lifetime)
            .ok()
            .filter(|d| *d >= Duration::from_secs(10) && *d <= Duration::from_secs(3600))
            .ok_or_else(|| bad(format!("jwt.lifetime {:?} must be a duration from 10s to 1h", self.lifetime)))?;
        let publish_delay = humantime::parse_duration(&self.publish_delay)
            .ok()
            .filter(|d| d.as_millis() as u64 <= gatehouse_domain::signing::MAX_PUBLISH_DELAY_MS)
            .ok_or_else(|| bad(format!("jwt.publish_delay {:?} must be a duration up to 7d", self.publish_delay)))?;
        let algorithm = gatehouse_api::jwt::keys::Alg::parse(&self.algorithm).map_err(bad)?;
        let header = axum::http::HeaderName::from_bytes(self.header.as_bytes())
            .map_err(|_| bad(format!("jwt.header {:?} is not a header name", self.header)))?;
        // Headers a proxy or the client owns, that Gatehouse answers with
        // itself, or that a browser would act on.
        let taken = [
            "cookie",
            "set-cookie",
            "host",
            "content-length",
            "content-type",
            "transfer-encoding",
            "connection",
            "upgrade",
            "te",
            "trailer",
            "location",
            "www-authenticate",
            "proxy-authorization",
            "x-auth-user",
            "x-auth-user-id",
            "x-auth-roles",
            "x-auth-mfa",
            "x-auth-mfa-age",
        ];
        let name = header.as_str();
        if taken.contains(&name) || name.starts_with("x-forwarded-") || name.starts_with("x-ratelimit-") {
            return Err(bad(format!("jwt.header {:?} is not one a token may go in", self.header)));
        }
        Ok(gatehouse_api::jwt::JwtConfig {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            lifetime,
            algorithm,
            header,
            publish_delay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> JwtSettings {
        JwtSettings {
            issuer: "https://auth.example.com".into(),
            audience: "apps".into(),
            lifetime: default_lifetime(),
            algorithm: default_algorithm(),
            header: default_header(),
            publish_delay: default_publish_delay(),
        }
    }

    #[test]
    fn settings_are_checked_at_start_up() {
        let ok = settings().load().unwrap();
        assert_eq!(ok.lifetime.as_secs(), 60);
        assert_eq!(ok.header, axum::http::header::AUTHORIZATION);
        assert_eq!(ok.jwks_max_age(), 300);
        let short = JwtSettings { publish_delay: "2m".into(), ..settings() }.load().unwrap();
        assert_eq!(short.jwks_max_age(), 60, "half the publish delay");
        assert!(JwtSettings { header: "X-Auth-JWT".into(), algorithm: "RS256".into(), ..settings() }.load().is_ok());
        for bad in [
            JwtSettings { issuer: "auth.example.com".into(), ..settings() },
            JwtSettings { issuer: "ftp://auth.example.com".into(), ..settings() },
            JwtSettings { audience: String::new(), ..settings() },
            JwtSettings { lifetime: "5s".into(), ..settings() },
            JwtSettings { lifetime: "2h".into(), ..settings() },
            JwtSettings { lifetime: "soon".into(), ..settings() },
            JwtSettings { publish_delay: "8d".into(), ..settings() },
            JwtSettings { algorithm: "HS256".into(), ..settings() },
            JwtSettings { algorithm: "none".into(), ..settings() },
            JwtSettings { header: "bad header".into(), ..settings() },
            JwtSettings { header: "Cookie".into(), ..settings() },
            JwtSettings { header: "X-Forwarded-User".into(), ..settings() },
            JwtSettings { header: "X-Auth-Roles".into(), ..settings() },
            JwtSettings { header: "Set-Cookie".into(), ..settings() },
            JwtSettings { header: "Location".into(), ..settings() },
        ] {
            assert!(bad.load().is_err(), "{bad:?}");
        }
    }
}
