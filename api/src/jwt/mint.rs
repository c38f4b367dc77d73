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
    sid: Box<str>,
    aud: Box<str>,
    stamp: u64,
    token: Arc<str>,
    /// Unix ms (on a front: the voter's clock).
    exp: u64,
}

/// Tokens by a hash of (credential id, audience); each entry names both,
/// so a collision is a miss, never another caller's token.
#[derive(Debug, Default)]
pub struct Cache {
    tokens: Mutex<HashMap<u64, Cached>>,
}

fn slot(sid: &str, aud: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (sid, aud).hash(&mut h);
    h.finish()
}

impl Cache {
    /// The token cached for (`sid`, `aud`), while it says `stamp` and more
    /// than `half` (ms) of it is left at `now`.
    fn get(&self, sid: &str, aud: &str, stamp: u64, now: u64, half: u64) -> Option<(Arc<str>, u64)> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let c = tokens.get(&slot(sid, aud))?;
        let fresh = c.stamp == stamp && now.saturating_add(half) < c.exp;
        (fresh && &*c.sid == sid && &*c.aud == aud).then(|| (c.token.clone(), c.exp))
    }

    fn put(&self, c: Cached) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= MAX_CACHED {
            let now = gatehouse_cluster::clock::now_ms();
            tokens.retain(|_, c| c.exp > now);
            if tokens.len() >= MAX_CACHED {
                tokens.clear();
            }
        }
        tokens.insert(slot(&c.sid, &c.aud), c);
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

/// What the view says of a caller beyond its principal.
struct Facts<'a> {
    key: &'a gatehouse_proto::state::SigningKeyRecord,
    email: &'a str,
    /// How the first factor was given ("" for a key or unrecorded).
    method: &'static str,
    /// Unix seconds.
    auth_time: u64,
}

fn sid(p: &Principal) -> &str {
    match &p.via {
        Via::Session { session_id } => session_id,
        Via::ApiKey { key_id } => key_id,
    }
}

fn facts<'a>(state: &'a gatehouse_domain::state::State, p: &Principal, now: u64) -> Result<Facts<'a>, ApiError> {
    let key = state.signing_keys().current(now).ok_or(ApiError::Unavailable { leader: None })?;
    let email = state.user(&p.user_id).map_or("", |u| u.email.as_str());
    let (method, auth_ms) = match &p.via {
        Via::Session { session_id } => state.session_origin(session_id).unwrap_or(("", now)),
        // A key authenticates every request; its creation is the one
        // time that does not change with each (and so keeps it cached).
        Via::ApiKey { key_id } => ("", state.api_key(key_id).map_or(now, |k| k.created_at)),
    };
    Ok(Facts { key, email, method, auth_time: auth_ms / 1000 })
}

/// The stamp of what a token for `p` and `aud` says (everything but its
/// times): a cached token is used only while it is unchanged.
fn stamp(p: &Principal, aud: &str, f: &Facts) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&p.user_id, aud, &p.username, f.email, &p.roles, sid(p), f.method, f.auth_time).hash(&mut h);
    (&f.key.kid, p.factor).hash(&mut h);
    h.finish()
}

fn claims(jwt: &super::Jwt, p: &Principal, aud: &str, f: &Facts, now: u64) -> Claims {
    Claims {
        iss: jwt.config.issuer.clone(),
        sub: p.user_id.clone(),
        aud: aud.to_string(),
        iat: now / 1000,
        exp: (now + jwt.config.lifetime.as_millis() as u64) / 1000,
        name: p.username.clone(),
        email: f.email.to_string(),
        roles: p.roles.clone(),
        amr: amr(p, f.method),
        sid: sid(p).to_string(),
        auth_time: f.auth_time,
    }
}

/// A token for `p` (who presented `credential`) and `aud`: from the cache
/// when it still says the same (no allocation then); signed here on a
/// voter, by a voter for a stateless front, otherwise. 503 while no key
/// signs yet (the leader makes the first one as soon as `[jwt]` is set).
pub async fn token(front: &Front, credential: &str, p: &Principal, aud: &str) -> Result<Minted, ApiError> {
    let jwt = front.jwt.as_deref().ok_or(ApiError::Internal)?;
    let now = gatehouse_cluster::clock::now_ms();
    let half = jwt.config.lifetime.as_millis() as u64 / 2;
    let (stamp, claims, key) = {
        let state = front.node.view().read();
        let f = facts(&state, p, now)?;
        let stamp = stamp(p, aud, &f);
        if let Some((token, expires_at)) = jwt.cache.get(sid(p), aud, stamp, now, half) {
            return Ok(Minted { token, expires_at });
        }
        (stamp, claims(jwt, p, aud, &f, now), f.key.clone())
    };
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
    let (sid, aud) = (claims.sid.into_boxed_str(), claims.aud.into_boxed_str());
    jwt.cache.put(Cached { sid, aud, stamp, token: token.clone(), exp: expires_at });
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
        cache.put(Cached { sid: "s".into(), aud: "app".into(), stamp: 7, token: "t".into(), exp: 61_000 });
        assert!(cache.get("s", "app", 7, 30_999, 30_000).is_some());
        assert!(cache.get("s", "app", 7, 31_000, 30_000).is_none(), "half its life gone");
        assert!(cache.get("s", "app", 8, 2_000, 30_000).is_none(), "something it says changed");
        assert!(cache.get("s", "other", 7, 2_000, 30_000).is_none());
        assert!(cache.get("t", "app", 7, 2_000, 30_000).is_none());
        // A clock far ahead of the signer's: never reused, never a panic.
        assert!(cache.get("s", "app", 7, u64::MAX - 1, 30_000).is_none());
    }
}
