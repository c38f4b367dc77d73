//! One sign-in through a provider, from the button to the callback, kept in
//! the browser: a cookie (`__Host-gatehouse_sso`, `HttpOnly`, `SameSite=Lax`
//! so the provider's redirect back carries it) holds 256 random bits, the
//! provider, the time and the return URL. From the secret come the OAuth
//! `state`, the OIDC `nonce` and the PKCE verifier (each an HMAC-SHA-256 of
//! the secret with its own label, so none tells anything of another or of
//! the secret). The provider sees the state, the nonce and the verifier's
//! S256 challenge only.
//!
//! The callback is taken only with the cookie whose state it carries (a
//! callback URL sent to someone else signs nobody in: login CSRF), within
//! [`FLOW_TTL_MS`], for the provider it was started for. The state also
//! covers the provider, the time and the return URL, so none of them can
//! be changed in the cookie. Once completed, the state's hash is spent in
//! the log with the session (`UpstreamSignIn`): a replayed callback fails on
//! every node. No node keeps anything while a flow is under way.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::hmac;
use sha2::{Digest, Sha256};

/// How long a started sign-in may take to come back.
pub const FLOW_TTL_MS: u64 = 10 * 60_000;

/// The flow cookie's name: host-bound when it is `Secure`.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-gatehouse_sso"
    } else {
        "gatehouse_sso"
    }
}

/// The longest flow cookie value taken (a return URL is at most 2 KiB).
pub const MAX_COOKIE: usize = 3200;

/// A sign-in under way.
#[derive(Clone, PartialEq, Eq)]
pub struct Flow {
    pub provider: String,
    /// Unix ms when it was started.
    pub started_at: u64,
    secret: [u8; 32],
    /// Where the browser goes once signed in (checked when started).
    pub return_to: String,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow").field("provider", &self.provider).field("started_at", &self.started_at).finish()
    }
}

/// Why a callback does not belong to this browser's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// No flow cookie, or not one of ours.
    NoFlow,
    /// The state is not this flow's (another browser's callback, or altered).
    State,
    /// The flow was started for another provider.
    Provider,
    /// Started more than [`FLOW_TTL_MS`] ago.
    Expired,
}

impl Flow {
    pub fn new(provider: &str, started_at: u64, return_to: &str) -> Flow {
        Flow { provider: provider.into(), started_at, secret: rand::random(), return_to: return_to.into() }
    }

    fn mac(&self, label: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.secret);
        let mut ctx = hmac::Context::with_key(&key);
        for part in [label, "\0", &self.provider, "\0", &self.started_at.to_string(), "\0", &self.return_to] {
            ctx.update(part.as_bytes());
        }
        B64.encode(ctx.sign().as_ref())
    }

    /// The OAuth `state` (43 characters).
    pub fn state(&self) -> String {
        self.mac("state")
    }

    /// The OIDC `nonce`.
    pub fn nonce(&self) -> String {
        self.mac("nonce")
    }

    /// The PKCE code verifier (43 characters of base64url: RFC 7636's minimum).
    pub fn verifier(&self) -> String {
        self.mac("pkce")
    }

    /// SHA-256 of the state: what the log spends.
    pub fn state_sha256(&self) -> [u8; 32] {
        Sha256::digest(self.state().as_bytes()).into()
    }

    /// When the flow is void.
    pub fn expires_at(&self) -> u64 {
        self.started_at.saturating_add(FLOW_TTL_MS)
    }

    /// The cookie's value: `v1.<provider>.<started>.<secret>.<return URL>`,
    /// the last two base64url.
    pub fn cookie_value(&self) -> String {
        format!("v1.{}.{}.{}.{}", self.provider, self.started_at, B64.encode(self.secret), B64.encode(&self.return_to))
    }

    /// Reads a cookie value; `None` unless it is exactly one of ours.
    pub fn parse(value: &str) -> Option<Flow> {
        if value.len() > MAX_COOKIE {
            return None;
        }
        let mut parts = value.split('.');
        let (Some("v1"), Some(provider), Some(started), Some(secret), Some(rd), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let provider_ok = (1..=32).contains(&provider.len())
            && provider.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !provider_ok || started.is_empty() || !started.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let secret: [u8; 32] = B64.decode(secret).ok()?.try_into().ok()?;
        let return_to = String::from_utf8(B64.decode(rd).ok()?).ok()?;
        Some(Flow { provider: provider.into(), started_at: started.parse().ok()?, secret, return_to })
    }

    /// Whether a callback for `provider` with `state` at `now` is this flow's.
    pub fn check(&self, provider: &str, state: &str, now: u64) -> Result<(), Mismatch> {
        let ours = self.state();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(ours.as_bytes(), state.as_bytes())) {
            return Err(Mismatch::State);
        }
        if self.provider != provider {
            return Err(Mismatch::Provider);
        }
        if now >= self.expires_at() || now.saturating_add(60_000) < self.started_at {
            return Err(Mismatch::Expired);
        }
        Ok(())
    }
}

/// The S256 challenge of a PKCE verifier.
pub fn challenge(verifier: &str) -> String {
    B64.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000_000;

    #[test]
    fn a_flow_round_trips_through_its_cookie() {
        let f = Flow::new("corp", T, "https://app.example.com/x?y=1");
        let back = Flow::parse(&f.cookie_value()).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.state(), f.state());
        assert_eq!(f.state().len(), 43);
        assert_eq!(f.verifier().len(), 43);
        // Three values, none the same, none the secret.
        let secret = B64.encode(f.secret);
        let values = [f.state(), f.nonce(), f.verifier()];
        assert!(values.iter().all(|v| *v != secret));
        assert!(values[0] != values[1] && values[1] != values[2] && values[0] != values[2]);
        assert_eq!(f.check("corp", &f.state(), T + 1), Ok(()));
    }

    #[test]
    fn a_callback_from_another_flow_or_altered_cookie_is_refused() {
        let f = Flow::new("corp", T, "/a");
        let other = Flow::new("corp", T, "/a");
        assert_eq!(f.check("corp", &other.state(), T), Err(Mismatch::State));
        assert_eq!(f.check("corp", "", T), Err(Mismatch::State));
        assert_eq!(f.check("gitlab", &f.state(), T), Err(Mismatch::Provider));
        assert_eq!(f.check("corp", &f.state(), T + FLOW_TTL_MS), Err(Mismatch::Expired));
        // Changing the return URL, the time or the provider in the cookie
        // changes the state it expects.
        let mut evil = f.clone();
        evil.return_to = "https://evil.example".into();
        assert_eq!(evil.check("corp", &f.state(), T), Err(Mismatch::State));
        let mut later = f.clone();
        later.started_at = T + 3_600_000;
        assert_eq!(later.check("corp", &f.state(), T + 3_600_001), Err(Mismatch::State));
        let mut renamed = f.clone();
        renamed.provider = "gitlab".into();
        assert_eq!(renamed.check("gitlab", &f.state(), T), Err(Mismatch::State));
    }

    #[test]
    fn malformed_cookies_are_no_flow() {
        let good = Flow::new("corp", T, "/").cookie_value();
        let long = format!("v1.corp.1.{}.{}", B64.encode([0u8; 32]), "A".repeat(MAX_COOKIE));
        for bad in [
            "",
            "v2.corp.1.x.y",
            "v1.Corp.1.AAAA.",
            "v1.corp.x.AAAA.",
            &good.replacen("v1.", "v1.x.", 1),
            &format!("{good}.extra"),
            &format!("v1.corp.1.{}.", B64.encode([0u8; 31])),
            &long,
        ] {
            assert!(Flow::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_challenge_is_rfc_7636_s256() {
        // RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
