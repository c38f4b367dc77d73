//! The admin gRPC API: every RPC authenticates an API key and checks RBAC
//! first ([`auth`]), then works through the [`Node`](crate::Node) (cluster
//! operations through its consensus handle). Every call passes [`layer`],
//! which sets up its context ([`call`]: the client, the caller, the
//! idempotency scheme).
//! Reads come from the local view; writes are proposed (forwarded to the
//! leader when needed).

pub mod audit;
pub mod auth;
pub mod backup;
pub mod call;
pub mod cluster;
pub mod events;
pub mod failures;
pub mod jwt;
pub mod keys;
pub mod layer;
pub mod learner;
pub mod roles;
pub mod sessions;
pub mod streams;
pub mod users;

use std::time::Duration;

use gatehouse_domain::State;
use gatehouse_proto::admin::{ApiKey, Revoked, Role, Session, User};
use gatehouse_proto::state::{ApiKeyRecord, RoleRecord, SessionRecord, UserRecord};

use crate::identity::Principal;
use gatehouse_cluster::Cluster;

use crate::{ApiError, Node};

/// Before every admin call's authorization ([`auth::authorize`]): catch up
/// with what the leader had committed when the call arrived, so the caller's
/// key and roles, and a read after a write through another node, are current.
/// (The node was already checked fresh, so on failure the local view is
/// within `max_staleness`.)
/// With `linearizable`, a call that cannot catch up fails with
/// `UNAVAILABLE` instead (the `gatehouse-consistency: linearizable` metadata).
pub async fn read_your_writes(node: &Node, linearizable: bool) -> Result<(), ApiError> {
    if node.catch_up(Duration::from_secs(1)).await {
        return Ok(());
    }
    if linearizable {
        return Err(ApiError::Unavailable { leader: node.leader().map(|l| l.1.client_addr().to_string()) });
    }
    tracing::debug!("admin read served from the local view without catching up");
    Ok(())
}

/// Proposes an admin change as `caller`, audited with before and after.
/// With an `idempotency-key` on the call, a retried call's writes are
/// applied once and answer with the first result (whose `id` is then the
/// first attempt's, not the one this attempt generated).
pub async fn write(
    node: &Node,
    caller: &Principal,
    mut cmd: gatehouse_domain::Command,
) -> Result<gatehouse_domain::CommandResult, ApiError> {
    if let Some(request_id) = crate::admin::call::idempotent_request_id(caller)? {
        cmd.request_id = request_id;
        cmd.request_digest = crate::admin::call::request_digest();
    }
    crate::audit::write(node, &actor(caller), cmd).await
}

/// Refuses a retried call whose first attempt created entity `first` and
/// showed its secret: the secret is stored nowhere, so it cannot be shown
/// again, and handing out this attempt's secret would give a key that does
/// not exist.
pub fn secret_shown_once(what: &str, first: &str, generated: &str) -> Result<(), ApiError> {
    if first == generated {
        return Ok(());
    }
    Err(ApiError::AlreadyExists(format!(
        "this idempotency-key already created {what} {first}; its secret was shown once, to that call"
    )))
}

/// The admin caller as an audit actor (from the gRPC peer's address).
pub fn actor(caller: &Principal) -> crate::audit::Actor {
    crate::audit::Actor::of(caller, crate::admin::call::grpc_peer())
}

/// A user named by username or by id.
pub fn find_user<'a>(state: &'a State, user: &str) -> Result<&'a UserRecord, ApiError> {
    if user.is_empty() || user.len() > 64 {
        return Err(ApiError::InvalidArgument("user must be a username or a user id".into()));
    }
    state
        .user(user)
        .or_else(|| state.user_by_name(&user.to_ascii_lowercase()))
        .ok_or_else(|| ApiError::NotFound(format!("no user {}", gatehouse_domain::quote::quote(user))))
}

/// Refuses unless the caller's roles grant everything `target` grants: no
/// one grants a role, or changes, impersonates or issues keys for a user,
/// above their own permissions.
pub fn check_covers(state: &State, caller: &Principal, target: &[String]) -> Result<(), ApiError> {
    if gatehouse_domain::roles::covers(state, &caller.roles, target) {
        Ok(())
    } else {
        tracing::info!(user = %caller.username, "admin call denied: target holds permissions the caller does not");
        Err(ApiError::PermissionDenied("the target holds permissions you do not hold".into()))
    }
}

/// Refuses unless the caller's roles grant every permission in
/// `permissions`: a custom role holding `roles.write` cannot define a role
/// (or redefine one) above its own holder.
pub fn check_holds(state: &State, caller: &Principal, permissions: &[String]) -> Result<(), ApiError> {
    if gatehouse_domain::roles::holds_all(state, &caller.roles, permissions) {
        Ok(())
    } else {
        tracing::info!(user = %caller.username, "admin call denied: role above the caller's permissions");
        Err(ApiError::PermissionDenied("a role can only hold permissions you hold".into()))
    }
}

/// [`check_covers`] for the user a credential belongs to (revoking it, or
/// issuing a new one); unknown ids pass, for apply to answer `not found`.
pub fn check_covers_owner(state: &State, caller: &Principal, user_id: &str) -> Result<(), ApiError> {
    match state.user(user_id) {
        Some(u) => check_covers(state, caller, &u.roles),
        None => Ok(()),
    }
}

pub fn user_pb(state: &State, u: &UserRecord) -> User {
    let factors = state.factors_of(&u.user_id);
    User {
        second_factors: factors
            .and_then(|f| f.totp.as_ref())
            .map(|_| gatehouse_domain::factors::TOTP)
            .into_iter()
            .chain(factors.into_iter().flat_map(|f| f.passkeys.iter().map(|_| gatehouse_domain::factors::PASSKEY)))
            .map(String::from)
            .collect(),
        recovery_codes_left: factors.map_or(0, gatehouse_domain::factors::recovery_left) as u32,
        id: u.user_id.clone(),
        username: u.username.clone(),
        email: u.email.clone(),
        roles: u.roles.clone(),
        status: gatehouse_domain::users::status_name(u.status).into(),
        created_at: u.created_at,
        updated_at: u.updated_at,
        locked_until: u.locked_until,
    }
}

pub fn key_pb(state: &State, k: &ApiKeyRecord) -> ApiKey {
    ApiKey {
        id: k.key_id.clone(),
        user_id: k.user_id.clone(),
        username: state.user(&k.user_id).map(|u| u.username.clone()).unwrap_or_default(),
        name: k.name.clone(),
        roles: k.roles.clone(),
        created_at: k.created_at,
        expires_at: k.expires_at,
        revoked_at: k.revoked_at,
        last_used: k.last_used,
    }
}

pub fn role_pb(r: &RoleRecord) -> Role {
    Role {
        name: r.name.clone(),
        permissions: r.permissions.clone(),
        description: r.description.clone(),
        built_in: false,
        assignable_by: r.assignable_by.clone(),
    }
}

pub fn session_pb(state: &State, s: &SessionRecord) -> Session {
    Session {
        id: s.session_id.clone(),
        user_id: s.user_id.clone(),
        username: state.user(&s.user_id).map(|u| u.username.clone()).unwrap_or_default(),
        created_at: s.created_at,
        expires_at: s.expires_at,
        last_seen: s.last_seen,
        client_ip: s.client_ip.clone(),
        user_agent: s.user_agent.clone(),
    }
}

/// Page size of a list when the caller names none, and the largest allowed.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// One page of a list. `items` carry a unique sort key each; the page holds
/// up to `page_size` of them in key order, after the key in `token`. The next
/// token is the last key returned (base64url), so pages stay consistent
/// while records are added or removed between calls.
pub fn page<T>(mut items: Vec<(String, T)>, page_size: u32, token: &str) -> Result<(Vec<T>, String), ApiError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let size = match page_size as usize {
        0 => DEFAULT_PAGE,
        n if n > MAX_PAGE => {
            return Err(ApiError::InvalidArgument(format!("page_size must be at most {MAX_PAGE}")));
        }
        n => n,
    };
    let after = if token.is_empty() {
        None
    } else {
        let key = (token.len() <= 1024)
            .then(|| b64.decode(token).ok())
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::InvalidArgument("page_token is not one this API issued".into()))?;
        Some(key)
    };
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let start = after.map_or(0, |a| items.partition_point(|(k, _)| k.as_str() <= a.as_str()));
    let more = items.len() - start > size;
    let mut last = String::new();
    let page = items
        .into_iter()
        .skip(start)
        .take(size)
        .map(|(k, t)| {
            last = k;
            t
        })
        .collect();
    let next = if more { b64.encode(last) } else { String::new() };
    Ok((page, next))
}

/// A sort key that lists newer records first, ties broken by id.
pub fn newest_first(created_at: u64, id: &str) -> String {
    format!("{:020}{id}", u64::MAX - created_at)
}

/// How long `wait_all` waits for every voter.
pub(crate) const WAIT_ALL: Duration = Duration::from_secs(5);

/// Completes a revocation answer; with `wait_all`, only once every
/// reachable voter reports it applied `log_index`.
pub async fn revoked(cluster: &Cluster, count: u32, log_index: u64, wait_all: bool) -> Revoked {
    let (applied_on, unreachable) =
        if wait_all { cluster.applied_on_voters(log_index, WAIT_ALL).await } else { (Vec::new(), Vec::new()) };
    Revoked { count, log_index, applied_on, unreachable }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<(String, usize)> {
        (0..n).map(|i| (format!("k{i:03}"), i)).rev().collect()
    }

    #[test]
    fn pages_walk_every_item_once_in_order() {
        let (mut seen, mut token) = (Vec::new(), String::new());
        loop {
            let (page, next) = page(items(25), 10, &token).unwrap();
            assert!(page.len() <= 10);
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, (0..25).collect::<Vec<_>>());
        // Exactly one page: no next token.
        assert_eq!(page(items(10), 10, "").unwrap().1, "");
        assert_eq!(page(items(150), 0, "").unwrap().0.len(), DEFAULT_PAGE);
    }

    #[test]
    fn hostile_tokens_and_sizes_are_refused() {
        for token in ["%%%", &"A".repeat(2000), "_w"] {
            assert!(matches!(page(items(3), 10, token), Err(ApiError::InvalidArgument(_))), "{token}");
        }
        assert!(matches!(page(items(3), 1001, ""), Err(ApiError::InvalidArgument(_))));
    }
}
