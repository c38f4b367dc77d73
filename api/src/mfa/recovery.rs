//! Recovery codes: ten one-time codes shown once at enrollment, for when
//! the authenticator is lost. Each holds 79 random bits (16 characters of
//! a 31-letter alphabet without look-alikes, shown in groups of four), so the log
//! keeps only their SHA-256: no offline search of a leaked snapshot finds
//! one.

use gatehouse_domain::factors::MAX_RECOVERY;
use sha2::Digest;

/// No 0/o, 1/l/i: read off paper and typed back (31 characters).
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
const LEN: usize = 16;

/// Fresh codes, as shown (`abcd-efgh-jkmn-pqrs`).
pub fn new_codes() -> Vec<String> {
    let mut rng = rand::rngs::OsRng;
    (0..MAX_RECOVERY)
        .map(|_| {
            let raw: String =
                (0..LEN).map(|_| ALPHABET[rand::Rng::gen_range(&mut rng, 0..ALPHABET.len())] as char).collect();
            raw.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).expect("ASCII")).collect::<Vec<_>>().join("-")
        })
        .collect()
}

/// A code as typed, normalized (case, dashes and spaces ignored); `None`
/// when it cannot be one.
pub fn normalize(typed: &str) -> Option<String> {
    let code: String =
        typed.chars().filter(|c| *c != '-' && !c.is_whitespace()).map(|c| c.to_ascii_lowercase()).collect();
    (code.len() == LEN && code.bytes().all(|b| ALPHABET.contains(&b))).then_some(code)
}

/// What the log keeps of a code.
pub fn hash(code: &str) -> [u8; 32] {
    let normalized = normalize(code).unwrap_or_default();
    sha2::Sha256::digest(normalized.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_well_formed_and_typed_back_loosely() {
        let codes = new_codes();
        assert_eq!(codes.len(), 10);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 10);
        for c in &codes {
            assert_eq!(c.len(), 19);
            let typed = c.to_uppercase().replace('-', " ");
            assert_eq!(hash(&typed), hash(c));
            assert!(normalize(&typed).is_some());
        }
        assert_eq!(normalize("123456"), None);
        assert_eq!(normalize("abcd-efgh-jkmn-pqr0"), None, "0 is not in the alphabet");
    }
}
