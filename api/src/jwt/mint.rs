//! The token a verified caller's request carries on to the app.
//!
//! Signing is kept off most requests: a token is cached per credential
//! (session or key id) and audience, and used while at least half its
//! lifetime is left and nothing it says has changed. What it says is read
//! from the view on every request (the user's name, email and roles, the
//! session's factors, the signing key), so a role change or a rotation
//! mints a new one at once; a revoked session, a revoked key or a disabled
//! user never gets this far (the credential is refused first), so they get
//! none.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::http::front::Front;
use crate::identity::{Principal, Via};
use crate::ApiError;

/// What a token says (RFC 7519 names; `amr` per RFC 8176 where one fits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user id.
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    /// The username.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub email: String,
    pub roles: Vec<String>,
    /// The session id, or the API key id.
    pub sid: String,
    /// How the caller authenticated: `pwd`, `email` (a mailed link), `fed`
    /// (an upstream provider), `hwk` (a passkey), `key` (an API key); then
    /// the second factor: `otp`, `recovery`, `hwk`, `device` (a trusted
    /// browser), and `mfa` when there were two.
    pub amr: Vec<String>,
    /// When the caller signed in (for a key: when it was made).
    pub auth_time: u64,
}

/// The most tokens cached; past it the expired go, then all.
const MAX_CACHED: usize = 100_000;

#[derive(Debug)]
struct Cached {
    stamp: u64,
    token: Arc<str>,
    /// Unix ms (on a front: the voter's clock).
    exp: u64,
}

/// Tokens by (credential id, audience).
#[derive(Debug, Default)]
pub struct Cache {
    tokens: Mutex<HashMap<(String, String), Cached>>,
}

impl Cache {
    /// The token cached for `key`, while it says `stamp` and more than
    /// `half` (ms) of it is left at `now`.
    fn get(&self, key: &(String, String), stamp: u64, now: u64, half: u64) -> Option<(Arc<str>, u64)> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let c = tokens.get(key)?;
        (c.stamp == stamp && now.saturating_add(half) < c.exp).then(|| (c.token.clone(), c.exp))
    }

    fn put(&self, key: (String, String), c: Cached) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= MAX_CACHED {
            let now = gatehouse_cluster::clock::now_ms();
            tokens.retain(|_, c| c.exp > now);
            if tokens.len() >= MAX_CACHED {
                tokens.clear();
            }
        }
        tokens.insert(key, c);
    }

    /// Tokens cached (for the tests and metrics).
    pub fn len(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A token and its expiry (unix ms).
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: Arc<str>,
    pub expires_at: u64,
}

fn amr(p: &Principal, method: &str) -> Vec<String> {
    let mut amr: Vec<&str> = Vec::with_capacity(3);
    if matches!(p.via, Via::ApiKey { .. }) {
        amr.push("key");
    }
    match method {
        "pwd" => amr.push("pwd"),
        "link" => amr.push("email"),
        "sso" => amr.push("fed"),
        "passkey" => amr.push("hwk"),
        _ => {}
    }
    if let Some((factor, _)) = p.factor {
        let second = match factor {
            "totp" => "otp",
            "passkey" => "hwk",
            "device" => "device",
            "recovery" => "recovery",
            _ => "",
        };
        if !second.is_empty() && !amr.contains(&second) {
            amr.push(second);
            // A trusted browser stands in for a factor given earlier; it
            // is no second factor now.
            if amr.len() >= 2 && second != "device" {
                amr.push("mfa");
            }
        }
    }
    amr.into_iter().map(str::to_string).collect()
}

/// The claims for `p` at `now` (unix ms), and the stamp of what they say
/// (everything but the times), read from the view with the key that signs.
fn claims(
    front: &Front,
    p: &Principal,
    aud: &str,
    now: u64,
) -> Result<(Claims, u64, gatehouse_proto::state::SigningKeyRecord), ApiError> {
    let jwt = front.jwt.as_deref().ok_or(ApiError::Internal)?;
    let state = front.node.view().read();
    let key = state.signing_keys().current(now).cloned().ok_or(ApiError::Unavailable { leader: None })?;
    let email = state.user(&p.user_id).map(|u| u.email.clone()).unwrap_or_default();
    let (sid, method, auth_time) = match &p.via {
        Via::Session { session_id } => {
            let s = state.session(session_id);
            let (method, created) = s.map(|s| (s.method, s.created_at)).unwrap_or_default();
            (session_id.clone(), method, created / 1000)
        }
        // A key authenticates every request; its creation is the one
        // time that does not change with each (and so keeps it cached).
        Via::ApiKey { key_id } => {
            let created = state.api_key(key_id).map_or(now, |k| k.created_at);
            (key_id.clone(), String::new(), created / 1000)
        }
    };
    drop(state);
    let claims = Claims {
        iss: jwt.config.issuer.clone(),
        sub: p.user_id.clone(),
        aud: aud.to_string(),
        iat: now / 1000,
        exp: (now + jwt.config.lifetime.as_millis() as u64) / 1000,
        name: p.username.clone(),
        email,
        roles: p.roles.clone(),
        amr: amr(p, &method),
        sid,
        auth_time,
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&claims.sub, &claims.aud, &claims.name, &claims.email, &claims.roles, &claims.sid, &claims.amr).hash(&mut h);
    (claims.auth_time, &key.kid, p.factor.map(|f| f.1)).hash(&mut h);
    Ok((claims, h.finish(), key))
}

/// A token for `p` (who presented `credential`) and `aud`: from the cache
/// when it still says the same; signed here on a voter, by a voter for a
/// stateless front, otherwise. 503 while no key signs yet (the leader
/// makes the first one as soon as `[jwt]` is set).
pub async fn token(front: &Front, credential: &str, p: &Principal, aud: &str) -> Result<Minted, ApiError> {
    let jwt = front.jwt.as_deref().ok_or(ApiError::Internal)?;
    let now = gatehouse_cluster::clock::now_ms();
    let (claims, stamp, key) = claims(front, p, aud, now)?;
    let cache_key = (claims.sid.clone(), claims.aud.clone());
    let half = jwt.config.lifetime.as_millis() as u64 / 2;
    if let Some((token, expires_at)) = jwt.cache.get(&cache_key, stamp, now, half) {
        return Ok(Minted { token, expires_at });
    }
    let (token, expires_at): (Arc<str>, u64) = match (&front.sign_in, front.mfa.sealer()) {
        (crate::sign_in::SignIn::Voters(voters), _) => {
            let r = voters.mint_token(credential, aud).await.map_err(|e| unsigned(&e))?;
            // A voter behind this front's view signs what it still holds:
            // such a token is not handed on (the next request asks again).
            if !says(&r.token, &claims) {
                return Err(ApiError::Unavailable { leader: None });
            }
            (r.token.into(), r.expires_at)
        }
        (_, Some(sealer)) => {
            let signer = jwt.signers.get(&key, sealer)?;
            (sign(&signer, &claims)?.into(), claims.exp * 1000)
        }
        (_, None) => return Err(ApiError::Unavailable { leader: None }),
    };
    jwt.cache.put(cache_key, Cached { stamp, token: token.clone(), exp: expires_at });
    Ok(Minted { token, expires_at })
}

/// A voter's refusal to sign for a front, as the front answers it: a
/// request the rules refuse stays refused; anything else (no `[jwt]` on
/// the voter, no key yet) is 503 and said in the log.
fn unsigned(e: &ApiError) -> ApiError {
    match e {
        ApiError::PermissionDenied(_) | ApiError::Unauthenticated => e.clone(),
        e => {
            static WARNED: gatehouse_cluster::throttle::Throttle = gatehouse_cluster::throttle::Throttle::new(60_000);
            if let Some(suppressed) = WARNED.allow() {
                tracing::warn!(error = %e, suppressed, "a voter signed no token for this front: is [jwt] set on every voter?");
            }
            ApiError::Unavailable { leader: None }
        }
    }
}

/// Whether a token a voter signed says what `want` says of the caller
/// (its times and key aside).
fn says(token: &str, want: &Claims) -> bool {
    use base64::Engine as _;
    let Some(body) = token.split('.').nth(1) else { return false };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body) else { return false };
    let Ok(got) = serde_json::from_slice::<Claims>(&bytes) else { return false };
    (&got.sub, &got.aud, &got.name, &got.email, &got.roles, &got.sid, &got.amr)
        == (&want.sub, &want.aud, &want.name, &want.email, &want.roles, &want.sid, &want.amr)
}

/// `claims` signed with `signer` (its kid in the header).
pub fn sign(signer: &super::keys::Signer, claims: &Claims) -> Result<String, ApiError> {
    let mut header = jsonwebtoken::Header::new(signer.alg);
    header.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&header, claims, &signer.key).map_err(|e| {
        tracing::error!(kid = %signer.kid, error = %e, "signing a JWT failed");
        ApiError::Internal
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(via: Via, factor: Option<(&'static str, u64)>) -> Principal {
        Principal { user_id: "u".into(), username: "ann".into(), roles: vec![], via, factor }
    }

    #[test]
    fn amr_says_how_the_caller_authenticated() {
        let s = || Via::Session { session_id: "s".into() };
        assert_eq!(amr(&principal(s(), None), "pwd"), ["pwd"]);
        assert_eq!(amr(&principal(s(), Some(("totp", 1))), "pwd"), ["pwd", "otp", "mfa"]);
        assert_eq!(amr(&principal(s(), Some(("passkey", 1))), "passkey"), ["hwk"]);
        assert_eq!(amr(&principal(s(), Some(("totp", 1))), "sso"), ["fed", "otp", "mfa"]);
        assert_eq!(amr(&principal(s(), None), "link"), ["email"]);
        // A trusted browser is a factor given earlier, not a second one now.
        assert_eq!(amr(&principal(s(), Some(("device", 1))), "pwd"), ["pwd", "device"]);
        // A session from before methods were recorded says only its factor.
        assert_eq!(amr(&principal(s(), Some(("totp", 1))), ""), ["otp"]);
        assert_eq!(amr(&principal(Via::ApiKey { key_id: "k".into() }, None), ""), ["key"]);
    }

    #[test]
    fn a_cached_token_is_used_for_half_its_life_and_only_while_it_says_the_same() {
        let cache = Cache::default();
        let key = ("s".to_string(), "app".to_string());
        cache.put(key.clone(), Cached { stamp: 7, token: "t".into(), exp: 61_000 });
        assert!(cache.get(&key, 7, 30_999, 30_000).is_some());
        assert!(cache.get(&key, 7, 31_000, 30_000).is_none(), "half its life gone");
        assert!(cache.get(&key, 8, 2_000, 30_000).is_none(), "something it says changed");
        assert!(cache.get(&("s".into(), "other".into()), 7, 2_000, 30_000).is_none());
        // A clock far ahead of the signer's: never reused, never a panic.
        assert!(cache.get(&key, 7, u64::MAX - 1, 30_000).is_none());
    }
}
