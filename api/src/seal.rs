//! Secrets at rest: values the voters must keep but never store in
//! plaintext (an upstream provider's refresh tokens), sealed with
//! AES-256-GCM under a key-encryption key from a file (`[secrets]`).
//!
//! Every sealed value names its key (`key_id`), so a new key can take over
//! new writes while values under the old one still open. The value is
//! bound to what it belongs to (`context`, the AEAD's associated data): a
//! sealed token copied onto another record does not open there.

use std::collections::HashMap;

use gatehouse_proto::events::Sealed;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no key-encryption key {0:?} is configured ([secrets])")]
    UnknownKey(String),
    #[error("a sealed value did not open: altered, or sealed for another record")]
    Corrupt,
}

/// The key-encryption keys: the first seals, all open.
pub struct Sealer {
    current: String,
    keys: HashMap<String, LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Sealer").field("current", &self.current).field("keys", &ids).finish()
    }
}

/// The longest key id.
pub const MAX_KEY_ID: usize = 64;

impl Sealer {
    /// `keys` in order of preference: the first seals new values. Each is
    /// `(id, 32 bytes)`.
    pub fn new(keys: Vec<(String, [u8; 32])>) -> Result<Sealer, String> {
        let Some((current, _)) = keys.first() else { return Err("at least one key is needed".into()) };
        let current = current.clone();
        let mut map = HashMap::new();
        for (id, bytes) in keys {
            let id_ok = !id.is_empty()
                && id.len() <= MAX_KEY_ID
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !id_ok {
                return Err(format!("key id {id:?} must be 1 to {MAX_KEY_ID} characters of A-Z a-z 0-9 . _ -"));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "an AES-256 key is 32 bytes".to_string())?;
            if map.insert(id.clone(), LessSafeKey::new(key)).is_some() {
                return Err(format!("key id {id:?} is listed twice"));
            }
        }
        Ok(Sealer { current, keys: map })
    }

    /// Reads a key file: 32 bytes as 64 hex digits or as base64 (44
    /// characters), surrounding whitespace ignored.
    pub fn read_key(text: &str) -> Result<[u8; 32], String> {
        use base64::Engine as _;
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| "a key file holds 32 bytes as 64 hex digits or base64".to_string())?
        };
        bytes.try_into().map_err(|_| "a key file holds 32 bytes as 64 hex digits or base64".to_string())
    }

    /// The key new values are sealed under.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// Seals `plaintext` for `context` under the current key.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Sealed {
        let key = &self.keys[&self.current];
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut data = plaintext.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut data)
            .expect("AES-GCM seals any length a command can hold");
        Sealed { key_id: self.current.clone(), nonce: nonce.to_vec(), ciphertext: data }
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = self.keys.get(&sealed.key_id).ok_or_else(|| SealError::UnknownKey(sealed.key_id.clone()))?;
        let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| SealError::Corrupt)?;
        let mut data = sealed.ciphertext.clone();
        let plain = key.open_in_place(nonce, Aad::from(context), &mut data).map_err(|_| SealError::Corrupt)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(vec![("new".into(), [2; 32]), ("old".into(), [1; 32])]).unwrap()
    }

    #[test]
    fn a_value_opens_only_for_its_context_and_unaltered() {
        let s = sealer();
        let sealed = s.seal(b"refresh-token", b"ctx-a");
        assert_eq!(sealed.key_id, "new");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"refresh"), "no plaintext in the sealed value");
        assert_eq!(s.open(&sealed, b"ctx-a").unwrap(), b"refresh-token");
        assert_eq!(s.open(&sealed, b"ctx-b"), Err(SealError::Corrupt));
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert_eq!(s.open(&altered, b"ctx-a"), Err(SealError::Corrupt));
        let mut short_nonce = sealed;
        short_nonce.nonce.pop();
        assert_eq!(s.open(&short_nonce, b"ctx-a"), Err(SealError::Corrupt));
    }

    #[test]
    fn values_under_an_older_key_still_open() {
        let old = Sealer::new(vec![("old".into(), [1; 32])]).unwrap();
        let sealed = old.seal(b"x", b"c");
        assert_eq!(sealer().open(&sealed, b"c").unwrap(), b"x");
        let gone = Sealer::new(vec![("new".into(), [2; 32])]).unwrap();
        assert_eq!(gone.open(&sealed, b"c"), Err(SealError::UnknownKey("old".into())));
    }

    #[test]
    fn key_files_and_ids_are_read_strictly() {
        assert_eq!(Sealer::read_key(&format!("{}\n", "ab".repeat(32))).unwrap(), [0xab; 32]);
        assert_eq!(Sealer::read_key("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap(), [1; 32]);
        for bad in ["", "abc", &"ab".repeat(31), "not base64 at all!"] {
            assert!(Sealer::read_key(bad).is_err(), "{bad}");
        }
        assert!(Sealer::new(vec![]).is_err());
        assert!(Sealer::new(vec![("bad id".into(), [0; 32])]).is_err());
        assert!(Sealer::new(vec![("a".into(), [0; 32]), ("a".into(), [1; 32])]).is_err());
        assert!(!format!("{:?}", sealer()).contains("[2"), "no key bytes in Debug");
    }
}
