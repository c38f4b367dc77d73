//! Trusted browsers (`[mfa] trusted_device_days`): after a second factor,
//! a person may ask the browser to be trusted; its cookie then holds a
//! device token (`gd_`, 256 bits) whose SHA-256 the log keeps beside their
//! factors (`gatehouse_domain::devices`). A password sign-in from that
//! browser presents the trust as its second factor. The token is minted
//! where the page is served (a front too: it sends the voter only the
//! hash), and never logged.

use axum::http::{HeaderMap, HeaderValue};
use gatehouse_domain::Payload;
use gatehouse_proto::events::factor_proof::Proof;
use gatehouse_proto::events::{FactorProof, ForgetDevices};

use crate::audit::{self, Actor};
use crate::http::front::Front;
use crate::identity::Principal;
use crate::ApiError;
use gatehouse_cluster::clock::now_ms;

/// A trusted-device token's prefix.
pub const TOKEN_PREFIX: &str = "gd_";
/// The longest device token a cookie or request may carry.
pub const MAX_TOKEN: usize = 64;

/// A trust asked for with a second factor: the token's hash and a label.
#[derive(Clone)]
pub struct Trust {
    pub sha256: [u8; 32],
    pub label: String,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").field("label", &self.label).finish_non_exhaustive()
    }
}

/// The device cookie's name.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-gatehouse_device"
    } else {
        "gatehouse_device"
    }
}

/// A new device token for the cookie, and the trust to ask for with it
/// (`user_agent` labels it).
pub fn mint(user_agent: &str) -> (String, Trust) {
    let t = crate::mint::new_token(TOKEN_PREFIX);
    let label = label(user_agent);
    (t.token, Trust { sha256: t.token_sha256, label })
}

/// A label for a trusted browser: its user agent without control
/// characters, within the log's bound in bytes.
pub fn label(user_agent: &str) -> String {
    let mut out = String::new();
    for c in user_agent.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > gatehouse_domain::devices::MAX_LABEL {
            break;
        }
        out.push(c);
    }
    out
}

/// The cookie that keeps `token` for `max_age_secs`.
pub fn cookie(front: &Front, token: &str, max_age_secs: u64) -> HeaderValue {
    let secure = front.config.secure_cookies;
    let flags = if secure { "; Secure" } else { "" };
    let c =
        format!("{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{flags}", cookie_name(secure));
    HeaderValue::from_str(&c).expect("device tokens are header-safe")
}

/// The device token this browser's cookie holds, if well-formed.
pub fn token(front: &Front, headers: &HeaderMap) -> Option<String> {
    let t = crate::http::caller::cookie(headers, cookie_name(front.config.secure_cookies))?;
    (t.len() <= MAX_TOKEN && t.starts_with(TOKEN_PREFIX)).then_some(t)
}

/// Whether `user_id` may have a browser trusted here: trust is on, and
/// their role does not require a second factor (such a role asks for one
/// at every sign-in), and every node applies trusts (command version 6).
pub fn offered(front: &Front, user_id: &str) -> bool {
    let state = front.node.view().read();
    front.mfa.config.trusted_device.is_some()
        && !state.factor_required(user_id)
        && state.cluster_version() >= gatehouse_domain::devices::VERSION
}

/// The proof a device token gives for `user_id`, when it is a live trust
/// of theirs under this node's settings (turned off, or shortened, trusts
/// given before count for no longer than the setting says). Checked again
/// at apply.
pub fn proof(front: &Front, user_id: &str, token: &str) -> Option<FactorProof> {
    let ttl = front.mfa.config.trusted_device?.as_millis() as u64;
    if !offered(front, user_id) {
        return None;
    }
    let h = gatehouse_domain::sessions::token_hash(token);
    let state = front.node.view().read();
    let now = now_ms();
    let live = state
        .factors_of(user_id)?
        .devices
        .iter()
        .any(|d| d.sha256 == h && d.expires_at > now && d.created_at.saturating_add(ttl) > now);
    live.then(|| FactorProof { proof: Some(Proof::TrustedDeviceSha256(h.to_vec())) })
}

/// How many browsers `user_id` trusts now.
pub fn trusted(front: &Front, user_id: &str) -> usize {
    let state = front.node.view().read();
    state.factors_of(user_id).map_or(0, |r| gatehouse_domain::devices::trusted(r, now_ms()))
}

/// Forgets every browser `p` trusts (audited). Returns the log index.
pub async fn forget_all(front: &Front, p: &Principal, actor: &Actor) -> Result<u64, ApiError> {
    let cmd = front
        .node
        .command(Payload::ForgetDevices(ForgetDevices { user_id: p.user_id.clone(), device_sha256: Vec::new() }));
    Ok(audit::write(&front.node, actor, cmd).await?.log_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_new_each_time_and_its_trust_hides_it() {
        let (a, ta) = mint("Mozilla/5.0\n(X11)");
        let (b, _) = mint("");
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() <= MAX_TOKEN);
        assert_eq!(ta.sha256, gatehouse_domain::sessions::token_hash(&a));
        assert_eq!(ta.label, "Mozilla/5.0(X11)");
        // Bounded in bytes, whole characters only.
        let long = label(&"é".repeat(200));
        assert!(long.len() <= gatehouse_domain::devices::MAX_LABEL && long.chars().all(|c| c == 'é'));
        assert!(!format!("{ta:?}").contains(&hex::encode(ta.sha256)));
    }
}
