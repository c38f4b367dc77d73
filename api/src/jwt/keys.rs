//! Signing keys: made on the node that proposes them, kept in the log with
//! the private half sealed under the voters' `[secrets]` key (bound to its
//! kid), opened once per key where tokens are signed, and published as a
//! JWKS (`GET /.well-known/jwks.json`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use gatehouse_domain::signing::{EDDSA, RS256};
use gatehouse_proto::events::RotateSigningKey;
use gatehouse_proto::state::SigningKeyRecord;
use jsonwebtoken::{Algorithm, EncodingKey};

use crate::http::front::Front;
use crate::seal::Sealer;
use crate::ApiError;

/// The algorithm of new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// Ed25519: small, fast, constant-time; the default.
    EdDSA,
    /// RSA 2048 with PKCS#1 v1.5 and SHA-256, for libraries without EdDSA.
    RS256,
}

impl Alg {
    pub fn parse(s: &str) -> Result<Alg, String> {
        match s {
            EDDSA => Ok(Alg::EdDSA),
            RS256 => Ok(Alg::RS256),
            _ => Err(format!("jwt.algorithm {s:?} must be \"EdDSA\" or \"RS256\"")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::EdDSA => EDDSA,
            Alg::RS256 => RS256,
        }
    }
}

/// What a private key is sealed for: its kid, so a sealed key copied onto
/// another record does not open there.
pub fn context(kid: &str) -> Vec<u8> {
    format!("jwt-signing-key\0{kid}").into_bytes()
}

/// PKCS#8 v1 for an Ed25519 seed (RFC 8410): a fixed prefix, then the seed.
fn ed25519_pkcs8(seed: &[u8]) -> Vec<u8> {
    const PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    [&PREFIX[..], seed].concat()
}

/// A new key as the command that adds it: a random kid, the public half,
/// the private half sealed.
pub fn generate(
    alg: Alg,
    sealer: &Sealer,
    publish_delay: std::time::Duration,
    retire_after: std::time::Duration,
) -> Result<RotateSigningKey, ApiError> {
    let kid = hex::encode(rand::random::<[u8; 12]>());
    let (public_key, public_exponent, private) = match alg {
        Alg::EdDSA => {
            let seed: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(rand::random());
            let pair =
                ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed[..]).map_err(|_| ApiError::Internal)?;
            let public = ring::signature::KeyPair::public_key(&pair).as_ref().to_vec();
            (public, Vec::new(), zeroize::Zeroizing::new(seed.to_vec()))
        }
        Alg::RS256 => {
            let rsa = openssl::rsa::Rsa::generate(2048).map_err(|e| {
                tracing::error!(error = %e, "making an RSA key failed");
                ApiError::Internal
            })?;
            let der = zeroize::Zeroizing::new(rsa.private_key_to_der().map_err(|_| ApiError::Internal)?);
            (rsa.n().to_vec(), rsa.e().to_vec(), der)
        }
    };
    Ok(RotateSigningKey {
        private_key: Some(sealer.seal(&private, &context(&kid))),
        kid,
        alg: alg.name().into(),
        public_key,
        public_exponent,
        publish_delay_ms: publish_delay.as_millis() as u64,
        retire_after_ms: retire_after.as_millis() as u64,
    })
}

/// An opened private key.
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    pub(crate) key: EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// The keys this node opened, by kid (each opened once; a few hundred
/// bytes each, one per rotation the process lived through).
#[derive(Debug, Default)]
pub struct Signers {
    opened: Mutex<HashMap<String, Arc<Signer>>>,
}

impl Signers {
    /// `record`'s private key, opened with `sealer` the first time.
    pub fn get(&self, record: &SigningKeyRecord, sealer: &Sealer) -> Result<Arc<Signer>, ApiError> {
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = opened.get(&record.kid) {
            return Ok(s.clone());
        }
        let sealed = record.private_key.as_ref().ok_or(ApiError::Internal)?;
        let private = zeroize::Zeroizing::new(sealer.open(sealed, &context(&record.kid)).map_err(|e| {
            static SAID: gatehouse_cluster::throttle::Throttle = gatehouse_cluster::throttle::Throttle::new(60_000);
            if let Some(suppressed) = SAID.allow() {
                tracing::error!(kid = %record.kid, error = %e, suppressed, "a JWT signing key did not open: check [secrets]");
            }
            ApiError::Unavailable { leader: None }
        })?);
        let (alg, key) = match record.alg.as_str() {
            EDDSA if private.len() == 32 => {
                (Algorithm::EdDSA, EncodingKey::from_ed_der(&zeroize::Zeroizing::new(ed25519_pkcs8(&private))))
            }
            RS256 => (Algorithm::RS256, EncodingKey::from_rsa_der(&private)),
            _ => return Err(ApiError::Internal),
        };
        let signer = Arc::new(Signer { kid: record.kid.clone(), alg, key });
        opened.insert(record.kid.clone(), signer.clone());
        Ok(signer)
    }
}

/// One published key as a JWK (RFC 7517; OKP for Ed25519, RFC 8037).
pub fn jwk(k: &SigningKeyRecord) -> serde_json::Value {
    match k.alg.as_str() {
        RS256 => serde_json::json!({
            "kty": "RSA", "use": "sig", "alg": RS256, "kid": k.kid,
            "n": B64.encode(&k.public_key), "e": B64.encode(&k.public_exponent),
        }),
        _ => serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": EDDSA, "kid": k.kid,
            "x": B64.encode(&k.public_key),
        }),
    }
}

/// The JWKS body: every key a verifier may meet now (the one signing, the
/// one about to, and older ones until their tokens have expired).
pub fn jwks(state: &gatehouse_domain::state::State, now: u64) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = state.signing_keys().published(now).into_iter().map(jwk).collect();
    serde_json::json!({ "keys": keys })
}

/// `GET /.well-known/jwks.json`: public, cacheable for five minutes or half
/// the publish delay, whichever is shorter (a new key is published a
/// publish delay before it signs, so a cache that obeys never misses it).
pub async fn jwks_handler(State(front): State<Front>) -> Response {
    let Some(jwt) = front.jwt.as_deref() else {
        return ApiError::NotFound("no such endpoint".into()).into_response();
    };
    let body = jwks(&front.node.view().read(), gatehouse_cluster::clock::now_ms());
    let cache = format!("public, max-age={}", jwt.config.jwks_max_age());
    let cache = axum::http::HeaderValue::from_str(&cache).unwrap_or(axum::http::HeaderValue::from_static("no-store"));
    let content_type = axum::http::HeaderValue::from_static("application/jwk-set+json");
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, cache)], body.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(vec![("k1".into(), [3; 32])]).unwrap()
    }

    fn record(c: &RotateSigningKey) -> SigningKeyRecord {
        gatehouse_domain::signing::record_of(c)
    }

    #[test]
    fn a_new_key_is_sealed_for_its_kid_and_passes_apply_bounds() {
        let s = sealer();
        for alg in [Alg::EdDSA, Alg::RS256] {
            let c =
                generate(alg, &s, std::time::Duration::from_secs(600), std::time::Duration::from_secs(120)).unwrap();
            gatehouse_domain::signing::check_rotate(&c).unwrap();
            let sealed = c.private_key.clone().unwrap();
            assert!(s.open(&sealed, &context(&c.kid)).is_ok());
            assert!(s.open(&sealed, &context("another")).is_err(), "bound to its kid");
            let signer = Signers::default().get(&record(&c), &s).unwrap();
            assert!(!format!("{signer:?}").contains("key:"), "no key in Debug");
            let jwk = jwk(&record(&c));
            assert_eq!(jwk["kid"], c.kid.as_str());
            assert_eq!(jwk["alg"], alg.name());
            assert!(jwk.get("d").is_none() && jwk.get("p").is_none(), "no private part");
        }
        assert!(Alg::parse("HS256").is_err() && Alg::parse("none").is_err());
    }
}
