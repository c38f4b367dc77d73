//! Our own verifier of the tokens we mint, against a JWKS: what the tests
//! use beside PyJWT, and the reference for what an app's verifier must
//! refuse (a Rust app may call it; there is no CLI for it).
//!
//! The algorithm comes from the key, never from the token: a key published
//! as Ed25519 verifies only EdDSA, an RSA key only RS256. So `alg: none`,
//! and a token "signed" with HS256 using a public key as the secret (key
//! confusion), are refused before any signature is looked at. `iss`,
//! `aud` and `exp` are required and checked (with 5 s of leeway).

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::mint::Claims;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token names no key, or a key the JWKS does not publish")]
    UnknownKey,
    #[error("the token's algorithm is not its key's")]
    WrongAlgorithm,
    #[error("the token is expired")]
    Expired,
    #[error("the token is for another audience or issuer")]
    WrongAudience,
    #[error("the signature does not verify")]
    BadSignature,
}

/// The keys of one JWKS, each with the one algorithm it verifies.
pub struct Verifier {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&String> = self.keys.keys().collect();
        f.debug_struct("Verifier").field("kids", &kids).field("issuer", &self.issuer).finish()
    }
}

impl Verifier {
    /// A verifier of tokens from `issuer` for `audience`, with the keys of
    /// `jwks` (JSON). Keys that are not Ed25519 or RSA signing keys are skipped.
    pub fn new(jwks: &[u8], issuer: &str, audience: &str) -> Result<Verifier, String> {
        let set: JwkSet = serde_json::from_slice(jwks).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let alg = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            keys.insert(kid, (alg, key));
        }
        Ok(Verifier { keys, issuer: issuer.to_string(), audience: audience.to_string() })
    }

    /// The claims of `token`, if it verifies.
    pub fn verify(&self, token: &str) -> Result<Claims, Refused> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refused::Malformed)?;
        let kid = header.kid.as_deref().ok_or(Refused::UnknownKey)?;
        let (alg, key) = self.keys.get(kid).ok_or(Refused::UnknownKey)?;
        if header.alg != *alg {
            return Err(Refused::WrongAlgorithm);
        }
        let mut v = Validation::new(*alg);
        v.leeway = 5;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, key, &v).map(|d| d.claims).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature | K::ImmatureSignature => Refused::Expired,
                K::InvalidAudience | K::InvalidIssuer => Refused::WrongAudience,
                K::InvalidSignature => Refused::BadSignature,
                _ => Refused::Malformed,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::{self, Alg, Signers};
    use super::super::mint::{sign, Claims};
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    use gatehouse_proto::state::SigningKeyRecord;

    fn key(alg: Alg, sealer: &crate::seal::Sealer) -> SigningKeyRecord {
        let c = keys::generate(alg, sealer, std::time::Duration::ZERO, std::time::Duration::ZERO).unwrap();
        gatehouse_domain::signing::record_of(&c)
    }

    fn claims(exp_in: i64) -> Claims {
        let now = gatehouse_cluster::clock::now_ms() / 1000;
        Claims {
            iss: "https://auth.example".into(),
            sub: "u1".into(),
            aud: "app".into(),
            iat: now,
            exp: (now as i64 + exp_in) as u64,
            name: "ann".into(),
            email: String::new(),
            roles: vec!["admin".into()],
            sid: "s1".into(),
            amr: vec!["pwd".into()],
            auth_time: now,
        }
    }

    #[test]
    fn forged_confused_expired_and_misaddressed_tokens_are_refused() {
        let sealer = crate::seal::Sealer::new(vec![("k".into(), [9; 32])]).unwrap();
        let (ed, rsa, other) = (key(Alg::EdDSA, &sealer), key(Alg::RS256, &sealer), key(Alg::EdDSA, &sealer));
        let jwks = serde_json::json!({ "keys": [keys::jwk(&ed), keys::jwk(&rsa)] }).to_string();
        let v = Verifier::new(jwks.as_bytes(), "https://auth.example", "app").unwrap();
        let signers = Signers::default();
        for k in [&ed, &rsa] {
            let t = sign(&signers.get(k, &sealer).unwrap(), &claims(60)).unwrap();
            assert_eq!(v.verify(&t).unwrap().sub, "u1");
        }
        let ed_signer = signers.get(&ed, &sealer).unwrap();
        assert_eq!(v.verify(&sign(&ed_signer, &claims(-60)).unwrap()), Err(Refused::Expired));
        let wrong_aud = Claims { aud: "billing".into(), ..claims(60) };
        assert_eq!(v.verify(&sign(&ed_signer, &wrong_aud).unwrap()), Err(Refused::WrongAudience));
        let wrong_iss = Claims { iss: "https://evil.example".into(), ..claims(60) };
        assert_eq!(v.verify(&sign(&ed_signer, &wrong_iss).unwrap()), Err(Refused::WrongAudience));
        // A key the JWKS does not publish, and one claiming a published kid.
        let stranger = signers.get(&other, &sealer).unwrap();
        assert_eq!(v.verify(&sign(&stranger, &claims(60)).unwrap()), Err(Refused::UnknownKey));
        let impostor = keys::Signer { kid: ed.kid.clone(), alg: Algorithm::EdDSA, key: stranger.key.clone() };
        assert_eq!(v.verify(&sign(&impostor, &claims(60)).unwrap()), Err(Refused::BadSignature));
        // alg none: header and payload, no signature.
        let body = B64.encode(serde_json::to_vec(&claims(60)).unwrap());
        let none = format!("{}.{body}.", B64.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, ed.kid)));
        assert!(v.verify(&none).is_err());
        // Key confusion: HS256 with the published public key as the secret.
        for (k, public) in [(&ed, ed.public_key.clone()), (&rsa, rsa.public_key.clone())] {
            let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
            h.kid = Some(k.kid.clone());
            let forged =
                jsonwebtoken::encode(&h, &claims(60), &jsonwebtoken::EncodingKey::from_secret(&public).unwrap())
                    .unwrap();
            assert_eq!(v.verify(&forged), Err(Refused::WrongAlgorithm));
        }
        // An RSA key does not verify an EdDSA header and back.
        let cross = keys::Signer { kid: rsa.kid.clone(), alg: Algorithm::EdDSA, key: ed_signer.key.clone() };
        assert_eq!(v.verify(&sign(&cross, &claims(60)).unwrap()), Err(Refused::WrongAlgorithm));
        // Altered claims.
        let t = sign(&ed_signer, &claims(60)).unwrap();
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        parts[1] = B64.encode(serde_json::to_vec(&Claims { roles: vec!["root".into()], ..claims(60) }).unwrap());
        assert_eq!(v.verify(&parts.join(".")), Err(Refused::BadSignature));
        for junk in ["", "a.b", "a.b.c", "...."] {
            assert!(v.verify(junk).is_err(), "{junk}");
        }
    }
}
