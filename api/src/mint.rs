//! Minting credentials: API keys and session tokens, made by the proposing
//! node before it proposes (apply never draws randomness). Only their
//! hashes leave this module towards the log.

use base64::Engine;
use gatehouse_cluster::ids::random_hex;
use gatehouse_domain::{keys, sessions};
use rand::RngCore;

/// A new API key: its public id, the full key to show once, and the hash to store.
pub struct NewKey {
    pub key_id: String,
    pub key: String,
    pub secret_sha256: [u8; 32],
}

impl NewKey {
    /// A key made earlier (read back from a private file), to propose again.
    pub fn parse(token: &str) -> Option<NewKey> {
        let (key_id, secret) = keys::parse_key(token)?;
        Some(NewKey { key: token.to_string(), secret_sha256: keys::secret_hash(secret), key_id: key_id.to_string() })
    }
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// A new API key: `gk_<key id>_<256-bit secret, base64url>`.
pub fn new_api_key() -> NewKey {
    let key_id = random_hex(8);
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    NewKey { key: keys::format_key(&key_id, &secret), secret_sha256: keys::secret_hash(&secret), key_id }
}

/// A new session token, to hand to the browser once, and the hash to store.
pub struct NewSession {
    pub token: String,
    pub token_sha256: [u8; 32],
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession").finish_non_exhaustive()
    }
}

/// A new session token: the `gs_` prefix and 256 random bits as base64url.
pub fn new_session_token() -> NewSession {
    random_token(sessions::TOKEN_PREFIX)
}

/// A new sign-in link token (`gl_`, 256 bits), for the mail only; the
/// same shape and hash as a session token.
pub fn new_link_token() -> NewSession {
    random_token(gatehouse_domain::links::TOKEN_PREFIX)
}

/// A new 256-bit token with `prefix` (a trusted browser's `gd_`), hashed
/// as sessions are.
pub fn new_token(prefix: &str) -> NewSession {
    random_token(prefix)
}

fn random_token(prefix: &str) -> NewSession {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
    NewSession { token_sha256: sessions::token_hash(&token), token }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_parse_and_hash() {
        let k = new_api_key();
        let (id, secret) = keys::parse_key(&k.key).expect("well-formed");
        assert_eq!(id, k.key_id);
        assert_eq!(keys::secret_hash(secret), k.secret_sha256);
        assert!(!format!("{k:?}").contains(secret));
        assert_ne!(new_api_key().key, k.key);
    }

    #[test]
    fn new_session_tokens_are_well_formed_and_only_hashed_in_debug() {
        let s = new_session_token();
        assert!(s.token.starts_with(sessions::TOKEN_PREFIX));
        assert_eq!(s.token.len(), sessions::TOKEN_PREFIX.len() + 43, "256 bits of base64url");
        assert_eq!(sessions::token_hash(&s.token), s.token_sha256);
        let l = new_link_token();
        assert_eq!(gatehouse_domain::links::parse_token(&l.token), Some(l.token.as_str()));
        assert!(!format!("{s:?}").contains(&s.token));
        assert_ne!(new_session_token().token, s.token);
    }
}
