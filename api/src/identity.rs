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
use gatehouse_proto::events::{touch_sessions::Touch, TouchSessions};

use crate::cluster::now_ms;
use crate::{ApiError, Cluster};

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
}

/// Longest credential looked at; anything longer is refused unread.
pub const MAX_CREDENTIAL_LEN: usize = 256;

/// Session uses this node saw and has not flushed to the log yet.
#[derive(Debug, Default)]
pub struct SessionSeen {
    seen: Mutex<HashMap<String, u64>>,
}

impl SessionSeen {
    pub fn record(&self, session_id: &str, at: u64) {
        let mut m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(session_id) {
            Some(t) => *t = (*t).max(at),
            None => {
                m.insert(session_id.to_string(), at);
            }
        }
    }

    pub fn get(&self, session_id: &str) -> u64 {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(session_id).copied().unwrap_or(0)
    }

    fn take(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Proposes the uses seen since the last flush as `TouchSessions`
    /// commands, one per 10,000 sessions. Failed flushes are put back.
    pub async fn flush(&self, cluster: &Cluster) {
        let seen = self.take();
        if seen.is_empty() {
            return;
        }
        let touches: Vec<Touch> =
            seen.iter().map(|(id, at)| Touch { session_id: id.clone(), last_seen: *at }).collect();
        for chunk in touches.chunks(10_000) {
            let cmd = cluster.command(Payload::TouchSessions(TouchSessions { touches: chunk.to_vec() }));
            if let Err(e) = cluster.propose(vec![cmd]).await {
                tracing::warn!(error = %e, sessions = chunk.len(), "flushing session last-use failed; will retry");
                for t in chunk {
                    self.record(&t.session_id, t.last_seen);
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

fn check(cluster: &Cluster, seen: &SessionSeen, token: &str, now: u64) -> Result<Principal, Refused> {
    let state = cluster.view().read();
    if token.starts_with(keys::KEY_PREFIX) {
        return match keys::verify(&state, token, now) {
            Ok(id) => Ok(Principal {
                user_id: id.user_id,
                username: id.username,
                roles: id.roles,
                via: Via::ApiKey { key_id: id.key_id },
            }),
            Err(KeyRejected::Unknown) => Err(Refused::Unknown),
            Err(KeyRejected::UserDisabled) => Err(Refused::Disabled),
            Err(_) => Err(Refused::Invalid),
        };
    }
    if token.starts_with(sessions::TOKEN_PREFIX) {
        return match sessions::verify(&state, token, now, |sid| seen.get(sid)) {
            Ok(id) => Ok(Principal {
                user_id: id.user_id,
                username: id.username,
                roles: id.roles,
                via: Via::Session { session_id: id.session_id },
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
pub async fn resolve(cluster: &Cluster, seen: &SessionSeen, token: &str) -> Result<Principal, ApiError> {
    if token.is_empty() || token.len() > MAX_CREDENTIAL_LEN {
        return Err(ApiError::Unauthenticated);
    }
    let mut result = check(cluster, seen, token, now_ms());
    if result == Err(Refused::Unknown) && cluster.catch_up(Duration::from_millis(500)).await {
        result = check(cluster, seen, token, now_ms());
    }
    match result {
        Ok(p) => {
            if let Via::Session { session_id } = &p.via {
                seen.record(session_id, now_ms());
            }
            Ok(p)
        }
        Err(Refused::Disabled) => Err(ApiError::PermissionDenied("user is disabled".into())),
        Err(_) => Err(ApiError::Unauthenticated),
    }
}
