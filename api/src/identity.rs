//! Who is calling: one resolution of a presented credential (API key or
//! session token) against the local view, shared by every transport.
//!
//! Read your writes: a well-formed credential this node does not know may
//! have been issued a moment ago through another node. Before refusing it,
//! the node asks the leader for its commit index (coalesced: one request in
//! flight serves every caller that arrived before it) and waits, briefly,
//! until it has applied that far; then it looks again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use gatehouse_domain::keys::{self, KeyRejected};
use gatehouse_domain::sessions::{self, SessionRejected};
use gatehouse_domain::Payload;
use gatehouse_proto::events::{record_use::Use, RecordUse};

use crate::{ApiError, Node};
use gatehouse_cluster::clock::now_ms;

/// How a caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    ApiKey { key_id: String },
    Session { session_id: String },
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub roles: Vec<String>,
    pub via: Via,
    /// The latest second factor presented on the caller's session: its name
    /// (`totp`, `recovery`) and unix ms. `None` for an API key or a session
    /// without one.
    pub factor: Option<(&'static str, u64)>,
}

/// The token of an `Authorization` value (HTTP header or gRPC metadata):
/// `Bearer <token>` (the scheme in either case), surrounding spaces trimmed.
/// The one place either transport reads one.
pub fn bearer(authorization: &str) -> Option<&str> {
    let token = authorization.strip_prefix("Bearer ").or_else(|| authorization.strip_prefix("bearer "))?;
    Some(token.trim())
}

/// Whether a bearer token is Gatehouse's own (an API key or a session
/// token, by its prefix): what the proxy and Envoy keep from an upstream.
pub fn is_gatehouse_token(token: &str) -> bool {
    token.starts_with(keys::KEY_PREFIX) || token.starts_with(gatehouse_domain::sessions::TOKEN_PREFIX)
}

/// Longest credential looked at; anything longer is refused unread.
pub const MAX_CREDENTIAL_LEN: usize = 256;

/// Uses of sessions and API keys this node saw and has not flushed to the
/// log yet (see `gatehouse_domain::usage`).
#[derive(Debug, Default)]
pub struct LastUse {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    sessions: HashMap<String, u64>,
    keys: HashMap<String, u64>,
}

fn bump(map: &mut HashMap<String, u64>, id: &str, at: u64) {
    match map.get_mut(id) {
        Some(t) => *t = (*t).max(at),
        None => {
            map.insert(id.to_string(), at);
        }
    }
}

impl LastUse {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn session_used(&self, session_id: &str, at: u64) {
        bump(&mut self.lock().sessions, session_id, at);
    }

    pub fn key_used(&self, key_id: &str, at: u64) {
        bump(&mut self.lock().keys, key_id, at);
    }

    /// This node's latest unflushed use of a key (0 if none).
    pub fn key(&self, key_id: &str) -> u64 {
        self.lock().keys.get(key_id).copied().unwrap_or(0)
    }

    /// This node's latest unflushed use of a session (0 if none).
    pub fn session(&self, session_id: &str) -> u64 {
        self.lock().sessions.get(session_id).copied().unwrap_or(0)
    }

    /// Proposes the uses seen since the last flush, in commands within
    /// `gatehouse_domain::bounds::BATCH_BYTES` and `usage::MAX_USES`.
    /// Failed flushes are put back.
    pub async fn flush(&self, node: &Node) {
        use gatehouse_domain::bounds::{take_within, BATCH_BYTES};
        let seen = std::mem::take(&mut *self.lock());
        let uses = |m: HashMap<String, u64>| m.into_iter().map(|(id, at)| Use { id, at }).collect::<Vec<_>>();
        let (mut sessions, mut keys) = (uses(seen.sessions), uses(seen.keys));
        const HALF: usize = gatehouse_domain::usage::MAX_USES / 2;
        while !sessions.is_empty() || !keys.is_empty() {
            let batch = RecordUse {
                sessions: take_within(&mut sessions, BATCH_BYTES / 2, HALF),
                keys: take_within(&mut keys, BATCH_BYTES / 2, HALF),
            };
            let cmd = node.command(Payload::RecordUse(batch.clone()));
            if let Err(e) = node.propose(vec![cmd]).await {
                tracing::warn!(error = %e, uses = batch.sessions.len() + batch.keys.len(), "flushing last-use times failed; will retry");
                for u in batch.sessions {
                    self.session_used(&u.id, u.at);
                }
                for u in batch.keys {
                    self.key_used(&u.id, u.at);
                }
            }
        }
    }
}

/// Why a credential was refused, before mapping to a transport status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Unknown,
    Invalid,
    Disabled,
}

fn check(node: &Node, token: &str, now: u64) -> Result<Principal, Refused> {
    let seen = node.last_use();
    let state = node.view().read();
    if token.starts_with(keys::KEY_PREFIX) {
        return match keys::verify(&state, token, now) {
            Ok(id) => Ok(Principal {
                user_id: id.user_id,
                username: id.username,
                roles: id.roles,
                via: Via::ApiKey { key_id: id.key_id },
                factor: None,
            }),
            Err(KeyRejected::Unknown) => Err(Refused::Unknown),
            Err(KeyRejected::UserDisabled) => Err(Refused::Disabled),
            Err(_) => Err(Refused::Invalid),
        };
    }
    if token.starts_with(sessions::TOKEN_PREFIX) {
        return match sessions::verify(&state, token, now, |sid| seen.session(sid)) {
            Ok(id) => Ok(Principal {
                user_id: id.user_id,
                username: id.username,
                roles: id.roles,
                via: Via::Session { session_id: id.session_id },
                factor: (!id.factor.is_empty()).then_some((id.factor, id.factor_at)),
            }),
            Err(SessionRejected::Unknown) => Err(Refused::Unknown),
            Err(SessionRejected::UserDisabled) => Err(Refused::Disabled),
            Err(_) => Err(Refused::Invalid),
        };
    }
    Err(Refused::Invalid)
}

/// Resolves a presented credential. `unauthenticated` for anything unknown,
/// expired, revoked or malformed (one answer for all, nothing to probe);
/// `permission_denied` for a disabled user.
pub async fn resolve(node: &Node, token: &str) -> Result<Principal, ApiError> {
    resolve_with(node, token, true).await
}

/// Whether `token` still resolves against this node's view, as [`resolve`]
/// answers but without a catch-up and without recording a use: for a
/// credential checked again while it is not presented again (a WebSocket
/// tunnel's), which must not keep its session alive by being checked.
pub fn still_valid(node: &Node, token: &str) -> Result<Principal, ApiError> {
    if token.is_empty() || token.len() > MAX_CREDENTIAL_LEN {
        return Err(ApiError::Unauthenticated);
    }
    match check(node, token, now_ms()) {
        Ok(p) => Ok(p),
        Err(Refused::Disabled) => Err(ApiError::PermissionDenied("user is disabled".into())),
        Err(_) => Err(ApiError::Unauthenticated),
    }
}

/// [`resolve`]; without `catch_up` an unknown credential is refused from the
/// local view at once (for a client over a failure limit, whose unknown
/// credentials must not each cost a round trip to the leader).
pub async fn resolve_with(node: &Node, token: &str, catch_up: bool) -> Result<Principal, ApiError> {
    if token.is_empty() || token.len() > MAX_CREDENTIAL_LEN {
        return Err(ApiError::Unauthenticated);
    }
    let mut now = now_ms();
    let mut result = check(node, token, now);
    if catch_up && result == Err(Refused::Unknown) && node.catch_up(Duration::from_millis(500)).await {
        now = now_ms();
        result = check(node, token, now);
    }
    match result {
        Ok(p) => {
            match &p.via {
                Via::Session { session_id } => node.last_use().session_used(session_id, now),
                Via::ApiKey { key_id } => node.last_use().key_used(key_id, now),
            }
            Ok(p)
        }
        Err(Refused::Disabled) => Err(ApiError::PermissionDenied("user is disabled".into())),
        Err(_) => Err(ApiError::Unauthenticated),
    }
}
