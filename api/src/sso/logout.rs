//! OIDC Back-Channel Logout: the provider posts a signed logout token when
//! a person signs out there (or is signed out by an admin), and their
//! sessions end on every node at once (`UpstreamEnd`: every session of
//! the subject, or only those opened in the provider session `sid`).
//!
//! The token is checked against the provider's keys ([`super::provider`]);
//! its `jti` is spent in the same command, so a replayed token, on any
//! node, ends nothing and is refused.

use gatehouse_domain::upstream::TOKEN_USED;
use gatehouse_domain::Payload;
use gatehouse_proto::events::UpstreamEnd;
use sha2::{Digest, Sha256};

use super::provider::{ProviderError, LOGOUT_MAX_AGE_SECS};
use crate::audit::{self, Actor};
use crate::http::front::Front;
use crate::ApiError;
use gatehouse_cluster::clock::now_ms;

/// The longest logout token taken.
pub const MAX_TOKEN: usize = 16 * 1024;

/// Why a logout token ended nothing.
#[derive(Debug)]
pub enum LogoutError {
    /// Not a valid logout token from this provider (audited).
    Invalid,
    /// Used already (audited).
    Replayed,
    /// The provider's keys could not be fetched.
    Unavailable,
    Api(ApiError),
}

/// Ends the sessions a logout token names; how many ended.
#[tracing::instrument(level = "info", name = "sso.backchannel_logout", skip_all, fields(provider, outcome))]
pub async fn back_channel(front: &Front, provider: &str, token: &str, client_ip: &str) -> Result<usize, LogoutError> {
    let node = &front.node;
    let p = front
        .sso
        .as_deref()
        .and_then(|s| s.provider(provider))
        .ok_or_else(|| LogoutError::Api(ApiError::NotFound("no such provider".into())))?;
    tracing::Span::current().record("provider", provider);
    let from = Actor { client_ip: client_ip.to_string(), ..Default::default() };
    let refused = |why: &str| {
        tracing::Span::current().record("outcome", "refused");
        let mut e = audit::event("sso.logout_refused", "denied", &from, format!("provider:{provider}"));
        e.detail = why.to_string();
        node.audit(e);
    };
    if token.is_empty() || token.len() > MAX_TOKEN {
        refused("no logout token, or one too long");
        return Err(LogoutError::Invalid);
    }
    let now = now_ms();
    let logout = match p.verify_logout(token, now / 1000).await {
        Ok(l) => l,
        Err(ProviderError::Invalid(why)) => {
            refused(&format!("logout token refused: {why}"));
            return Err(LogoutError::Invalid);
        }
        Err(e) => {
            tracing::warn!(error = %e, "the provider's keys could not be fetched for a logout token");
            return Err(LogoutError::Unavailable);
        }
    };
    let issuer = p.config.issuer.clone();
    let jti: [u8; 32] = Sha256::digest(format!("{issuer}\n{}", logout.jti).as_bytes()).into();
    // A replay is refused on the node's own view first: no log write.
    front.node.catch_up(std::time::Duration::from_millis(500)).await;
    if gatehouse_domain::upstream::token_spent(&front.node.view().read(), &jti) {
        refused("logout token replayed");
        return Err(LogoutError::Replayed);
    }
    // Kept past the longest a token may be presented.
    let keep_until = now + (LOGOUT_MAX_AGE_SECS + 120) * 1000;
    let cmd = node.command(Payload::UpstreamEnd(UpstreamEnd {
        issuer,
        subject: logout.subject.clone().unwrap_or_default(),
        upstream_sid: logout.sid.clone().unwrap_or_default(),
        token_sha256: jti.to_vec(),
        token_expires_at: keep_until,
        disable_user: false,
    }));
    let result = node.propose_one(cmd).await.and_then(|r| ApiError::check(&r).map(|()| r));
    let result = match result {
        Ok(r) => r,
        Err(ApiError::FailedPrecondition(m)) if m == TOKEN_USED => {
            refused("logout token replayed");
            return Err(LogoutError::Replayed);
        }
        Err(e) => return Err(LogoutError::Api(e)),
    };
    let ended: usize = result.id.parse().unwrap_or(0);
    tracing::Span::current().record("outcome", "ok");
    let mut e = audit::event("sso.backchannel_logout", "ok", &from, format!("provider:{provider}"));
    let subject = logout.subject.as_deref().map_or("-".into(), |s| gatehouse_domain::quote::quote(s).to_string());
    let sid = logout.sid.as_deref().map_or("-".into(), |s| gatehouse_domain::quote::quote(s).to_string());
    e.detail = format!("subject {subject}; sid {sid}; sessions ended {ended}");
    node.audit(e);
    Ok(ended)
}
