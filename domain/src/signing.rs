//! Keys that sign the tokens Gatehouse hands to apps (downstream JWTs).
//!
//! Keys live in the log so every voter signs with the same one and a new
//! node gets them by replication; the private half is sealed under the
//! voters' key-encryption key (a front holds none). Which key signs is a
//! function of the records and a time, the same on every node:
//!
//! - the first key signs from the moment it is committed;
//! - a rotation publishes the next key at once and lets it sign from
//!   `current_from` (after a publish delay, so verifiers that cache the
//!   JWKS have fetched it); every older key is kept, published and signing
//!   nothing, until `retire_at` (the longest token lifetime later), when
//!   apply drops it;
//! - one key waits at a time.

use std::collections::BTreeMap;

use gatehouse_proto::events::{ResealedSigningKey, RotateSigningKey};
use gatehouse_proto::state::SigningKeyRecord;

use crate::mutation::{Mutation, Table};
use crate::result::ApplyError;
use crate::state::{put, State};

/// The command version that brought signing keys.
pub const VERSION: u32 = 7;
/// Ed25519 keys (`alg` `EdDSA`).
pub const EDDSA: &str = "EdDSA";
/// RSA keys with PKCS#1 v1.5 and SHA-256 (`alg` `RS256`), for old libraries.
pub const RS256: &str = "RS256";
/// The longest key id.
pub const MAX_KID: usize = 64;
/// The longest publish delay: a week.
pub const MAX_PUBLISH_DELAY_MS: u64 = 7 * 24 * 3_600_000;
/// The longest time an old key stays published after it stops signing: a day.
pub const MAX_RETIRE_AFTER_MS: u64 = 24 * 3_600_000;
/// The largest sealed private key (a 4096-bit RSA key in PKCS#1 DER and its tag).
const MAX_SEALED: usize = 4096;

/// The signing keys by kid.
#[derive(Debug, Default)]
pub struct SigningKeys {
    by_kid: BTreeMap<String, SigningKeyRecord>,
}

impl SigningKeys {
    pub(crate) fn insert(&mut self, r: SigningKeyRecord) {
        self.by_kid.insert(r.kid.clone(), r);
    }

    fn store(&mut self, r: SigningKeyRecord, out: &mut Vec<Mutation>) {
        out.push(put(Table::SigningKeys, &r.kid, &r));
        self.insert(r);
    }

    /// Drops the keys retired by `now`.
    pub(crate) fn prune(&mut self, now: u64, out: &mut Vec<Mutation>) {
        let gone: Vec<String> =
            self.by_kid.values().filter(|k| k.retire_at != 0 && k.retire_at <= now).map(|k| k.kid.clone()).collect();
        for kid in gone {
            self.by_kid.remove(&kid);
            out.push(Mutation::Delete { table: Table::SigningKeys, key: kid.into_bytes() });
        }
    }

    /// The key that signs at `now`: the newest whose time has come and
    /// that is not retired.
    pub fn current(&self, now: u64) -> Option<&SigningKeyRecord> {
        self.by_kid
            .values()
            .filter(|k| k.current_from <= now && (k.retire_at == 0 || k.retire_at > now))
            .max_by_key(|k| (k.current_from, k.created_at))
    }

    /// The key waiting to sign, if one is.
    pub fn waiting(&self, now: u64) -> Option<&SigningKeyRecord> {
        self.by_kid.values().find(|k| k.current_from > now)
    }

    /// Every key a verifier may meet at `now` (retired ones are not), by
    /// the time each signs from.
    pub fn published(&self, now: u64) -> Vec<&SigningKeyRecord> {
        let mut keys: Vec<&SigningKeyRecord> =
            self.by_kid.values().filter(|k| k.retire_at == 0 || k.retire_at > now).collect();
        keys.sort_by_key(|k| (k.current_from, k.created_at));
        keys
    }

    pub fn get(&self, kid: &str) -> Option<&SigningKeyRecord> {
        self.by_kid.get(kid)
    }

    /// Every key as stored (retired ones not yet dropped included).
    pub fn all(&self) -> impl Iterator<Item = &SigningKeyRecord> {
        self.by_kid.values()
    }
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= MAX_KID && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The per-field bounds of [`RotateSigningKey`].
pub fn check_rotate(c: &RotateSigningKey) -> Result<(), ApplyError> {
    if !valid_kid(&c.kid) {
        return Err(ApplyError::Invalid(format!("a key id is 1 to {MAX_KID} characters of A-Z a-z 0-9 - _")));
    }
    match c.alg.as_str() {
        EDDSA if c.public_key.len() == 32 && c.public_exponent.is_empty() => {}
        // 2048 to 4096 bits, an exponent of at most 64 bits.
        RS256
            if (256..=512).contains(&c.public_key.len())
                && c.public_key[0] != 0
                && (1..=8).contains(&c.public_exponent.len()) => {}
        EDDSA | RS256 => return Err(ApplyError::Invalid("the public key does not fit its algorithm".into())),
        _ => return Err(ApplyError::Invalid("a signing key's algorithm is EdDSA or RS256".into())),
    }
    sealed(&c.private_key)?;
    if c.publish_delay_ms > MAX_PUBLISH_DELAY_MS || c.retire_after_ms > MAX_RETIRE_AFTER_MS {
        return Err(ApplyError::Invalid("a publish delay is at most a week, a retirement at most a day".into()));
    }
    Ok(())
}

/// The bounds of one re-sealed private key.
pub fn check_resealed(r: &ResealedSigningKey) -> Result<(), ApplyError> {
    sealed(&r.private_key)?;
    if !valid_kid(&r.kid) || r.previous_nonce.len() > 12 {
        return Err(ApplyError::Invalid("a resealed signing key names a malformed value".into()));
    }
    Ok(())
}

fn sealed(s: &Option<gatehouse_proto::events::Sealed>) -> Result<(), ApplyError> {
    match s {
        Some(s) if !s.key_id.is_empty() && s.key_id.len() <= 64 && s.nonce.len() == 12 => {
            if s.ciphertext.len() <= MAX_SEALED {
                Ok(())
            } else {
                Err(ApplyError::Invalid("a sealed private key is too large".into()))
            }
        }
        _ => Err(ApplyError::Invalid("the sealed private key is missing or malformed".into())),
    }
}

/// Applies [`RotateSigningKey`] at `now`; the result's id is the new kid.
pub(crate) fn rotate(
    state: &mut State,
    now: u64,
    c: &RotateSigningKey,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    let keys = &mut state.signing;
    if keys.get(&c.kid).is_some() {
        return Err(ApplyError::AlreadyExists(format!("a signing key {} exists", c.kid)));
    }
    if let Some(w) = keys.waiting(now) {
        return Err(ApplyError::FailedPrecondition(format!(
            "key {} is waiting to sign (from {}): one key waits at a time",
            w.kid, w.current_from
        )));
    }
    let first = keys.current(now).is_none();
    let current_from = if first { now } else { now + c.publish_delay_ms };
    // Every key still signing or published stops at `current_from` and
    // stays published until the longest token it signed has expired.
    let replaced: Vec<SigningKeyRecord> = keys.by_kid.values().filter(|k| k.retire_at == 0).cloned().collect();
    for mut k in replaced {
        k.retire_at = current_from + c.retire_after_ms;
        keys.store(k, out);
    }
    keys.store(SigningKeyRecord { created_at: now, current_from, ..record_of(c) }, out);
    Ok(c.kid.clone())
}

/// The key a `RotateSigningKey` adds, before apply gives it its times.
pub fn record_of(c: &RotateSigningKey) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: c.kid.clone(),
        alg: c.alg.clone(),
        public_key: c.public_key.clone(),
        public_exponent: c.public_exponent.clone(),
        private_key: c.private_key.clone(),
        created_at: 0,
        current_from: 0,
        retire_at: 0,
    }
}

/// Moves re-sealed private keys in (a `ResealSecrets` part); how many moved.
pub(crate) fn reseal(state: &mut State, resealed: &[ResealedSigningKey], out: &mut Vec<Mutation>) -> usize {
    let mut moved = 0;
    for r in resealed {
        let Some(mut k) = state.signing.get(&r.kid).cloned() else { continue };
        if k.private_key.as_ref().is_none_or(|s| s.nonce != r.previous_nonce) {
            continue;
        }
        k.private_key = r.private_key.clone();
        state.signing.store(k, out);
        moved += 1;
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_proto::events::{command::Payload, Command, Sealed};
    use prost::Message as _;

    fn sealed(n: u8) -> Option<Sealed> {
        Some(Sealed { key_id: "k1".into(), nonce: vec![n; 12], ciphertext: vec![n; 48] })
    }

    fn rotate(kid: &str) -> RotateSigningKey {
        RotateSigningKey {
            kid: kid.into(),
            alg: EDDSA.into(),
            public_key: vec![7; 32],
            private_key: sealed(1),
            publish_delay_ms: 10_000,
            retire_after_ms: 120_000,
            ..Default::default()
        }
    }

    fn apply(state: &mut State, at: u64, c: RotateSigningKey) -> bool {
        let cmd = Command {
            request_id: format!("r-{}-{at}-{}", c.kid, c.encoded_len()),
            proposed_at: at,
            payload: Some(Payload::RotateSigningKey(c)),
            ..Default::default()
        };
        state.apply(1, &cmd, &mut Vec::new()).code == 0
    }

    fn versioned() -> State {
        State { cluster_version: VERSION, ..Default::default() }
    }

    #[test]
    fn the_first_key_signs_at_once_and_the_next_after_its_delay() {
        let mut s = versioned();
        assert!(apply(&mut s, 1_000, rotate("a")));
        assert_eq!(s.signing.current(1_000).unwrap().kid, "a");
        assert!(apply(&mut s, 5_000, rotate("b")));
        // Published at once, signing only from 15 s.
        assert_eq!(s.signing.published(5_000).iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(s.signing.current(14_999).unwrap().kid, "a");
        assert_eq!(s.signing.current(15_000).unwrap().kid, "b");
        // One key waits at a time.
        assert!(!apply(&mut s, 6_000, rotate("c")));
        // The old key is published until 15 s + 120 s, then dropped by apply.
        assert_eq!(s.signing.get("a").unwrap().retire_at, 135_000);
        assert_eq!(s.signing.published(134_999).len(), 2);
        assert!(apply(&mut s, 135_000, rotate("c")));
        assert!(s.signing.get("a").is_none());
        assert_eq!(s.signing.current(135_000).unwrap().kid, "b");
        assert_eq!(s.signing.get("b").unwrap().retire_at, 145_000 + 120_000);
    }

    #[test]
    fn malformed_keys_change_nothing() {
        let mut s = versioned();
        for bad in [
            RotateSigningKey { kid: String::new(), ..rotate("x") },
            RotateSigningKey { kid: "a b".into(), ..rotate("x") },
            RotateSigningKey { kid: "k".repeat(65), ..rotate("x") },
            RotateSigningKey { alg: "HS256".into(), ..rotate("x") },
            RotateSigningKey { alg: "none".into(), ..rotate("x") },
            RotateSigningKey { public_key: vec![1; 31], ..rotate("x") },
            RotateSigningKey { alg: RS256.into(), ..rotate("x") },
            RotateSigningKey { alg: RS256.into(), public_key: vec![1; 256], ..rotate("x") },
            RotateSigningKey { private_key: None, ..rotate("x") },
            RotateSigningKey {
                private_key: Some(Sealed { key_id: "k".into(), nonce: vec![0; 12], ciphertext: vec![0; 5000] }),
                ..rotate("x")
            },
            RotateSigningKey { publish_delay_ms: MAX_PUBLISH_DELAY_MS + 1, ..rotate("x") },
            RotateSigningKey { retire_after_ms: MAX_RETIRE_AFTER_MS + 1, ..rotate("x") },
        ] {
            assert!(check_rotate(&bad).is_err(), "{bad:?}");
            assert!(!apply(&mut s, 1_000, bad.clone()), "{bad:?}");
        }
        assert!(s.signing.all().next().is_none());
        let rsa = RotateSigningKey {
            alg: RS256.into(),
            public_key: vec![0xc1; 256],
            public_exponent: vec![1, 0, 1],
            ..rotate("r")
        };
        assert!(apply(&mut s, 1_000, rsa));
        // A kid is never reused.
        assert!(!apply(&mut s, 200_000, rotate("r")));
    }

    #[test]
    fn an_older_cluster_refuses_signing_keys() {
        let mut s = State { cluster_version: VERSION - 1, ..Default::default() };
        assert!(!apply(&mut s, 1_000, rotate("a")));
        assert!(s.signing.current(1_000).is_none());
    }

    #[test]
    fn a_reseal_moves_only_the_value_it_opened() {
        let mut s = versioned();
        assert!(apply(&mut s, 1_000, rotate("a")));
        let stale = ResealedSigningKey { kid: "a".into(), previous_nonce: vec![9; 12], private_key: sealed(3) };
        assert_eq!(reseal(&mut s, &[stale], &mut Vec::new()), 0);
        let fresh = ResealedSigningKey { kid: "a".into(), previous_nonce: vec![1; 12], private_key: sealed(3) };
        assert_eq!(reseal(&mut s, &[fresh], &mut Vec::new()), 1);
        assert_eq!(s.signing.get("a").unwrap().private_key, sealed(3));
    }
}
