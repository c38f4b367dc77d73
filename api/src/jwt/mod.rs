//! Signed identity for apps: short-lived JWTs that say who a verified
//! request is from, so an app behind any proxy checks a signature instead
//! of trusting `X-Auth-User` blindly (`[jwt]`, docs/jwt.md).
//!
//! # Layout
//! - [`keys`]: signing keys: made (Ed25519, or RSA for old libraries),
//!   sealed into the log, opened once per key on a voter; the JWKS.
//! - [`mint`]: the claims of a verified caller and the token cache (per
//!   credential, audience and state of the user, so a role change, a
//!   disable or a revocation shows in the next token at once).
//! - [`verify`]: our own verifier (what the tests use beside PyJWT): the
//!   algorithm comes from the key, never the token.
//! - [`rotate`]: `gatehouse admin jwt rotate` and the leader's first key.
//!
//! Private keys never leave the voters: a stateless front asks a voter for
//! each token it has not cached (`SignInService.MintToken`), so a stolen
//! front can hand on tokens only for credentials it is shown, as it can
//! already answer `/auth/verify` for them.

pub mod keys;
pub mod mint;
pub mod rotate;
pub mod verify;

use std::time::Duration;

use axum::http::HeaderName;

/// The longest token lifetime `[jwt] lifetime` takes.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// `[jwt]` as a node runs it.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `iss`: the URL apps know this cluster by.
    pub issuer: String,
    /// `aud` when the matching route rule names none.
    pub audience: String,
    /// How long a token is valid (10 s to 1 h; 60 s by default).
    pub lifetime: Duration,
    /// The algorithm of keys made from now on.
    pub algorithm: keys::Alg,
    /// Where the token goes: `Authorization` (as `Bearer <jwt>`) or a header of its own (the bare token).
    pub header: HeaderName,
    /// How long a new key is published before it signs.
    pub publish_delay: Duration,
}

impl JwtConfig {
    /// The value of [`JwtConfig::header`] for `token`.
    pub fn header_value(&self, token: &str) -> Option<axum::http::HeaderValue> {
        let v = if self.header == axum::http::header::AUTHORIZATION {
            axum::http::HeaderValue::from_str(&format!("Bearer {token}"))
        } else {
            axum::http::HeaderValue::from_str(token)
        };
        v.ok()
    }

    /// How long an old key stays published after it stops signing: the
    /// longest lifetime any node may give a token (whatever this node's
    /// own), and a minute for clocks and caches.
    pub fn retire_after(&self) -> Duration {
        MAX_LIFETIME + Duration::from_secs(60)
    }

    /// How long apps may cache the JWKS: five minutes, or half the publish
    /// delay when that is shorter (a new key must be seen before it signs).
    pub fn jwks_max_age(&self) -> u64 {
        (self.publish_delay.as_secs() / 2).min(300)
    }
}

/// A node's JWT minting: the settings, the opened keys and the token cache.
#[derive(Debug)]
pub struct Jwt {
    pub config: JwtConfig,
    pub(crate) signers: keys::Signers,
    pub(crate) cache: mint::Cache,
}

impl Jwt {
    pub fn new(config: JwtConfig) -> Jwt {
        Jwt { config, signers: keys::Signers::default(), cache: mint::Cache::default() }
    }
}
