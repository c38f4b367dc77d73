//! Admin API authentication: `authorization: Bearer gk_…` metadata,
//! resolved like every credential (with read-your-writes), then RBAC.

use gatehouse_domain::keys;
use gatehouse_domain::roles::{self, Permission};
use tonic::metadata::MetadataMap;

use crate::identity::{self, Principal};
use crate::{ApiError, Node};

/// The bearer token of a call, if it has a well-formed one.
fn bearer(meta: &MetadataMap) -> Option<&str> {
    identity::bearer(meta.get("authorization")?.to_str().ok()?)
}

/// Authenticates the caller's API key and checks that one of its roles
/// grants `permission`. Refused with `stale` when this node cannot prove it
/// is up to date (a revoked key must not slip through a lagging node), and
/// with `UNAVAILABLE` when the call asks for `gatehouse-consistency:
/// linearizable` and this node cannot reach what the leader has committed.
pub async fn authorize(node: &Node, meta: &MetadataMap, permission: Permission) -> Result<Principal, ApiError> {
    if !node.ensure_fresh().await {
        return Err(ApiError::Stale);
    }
    // Admin calls are rare and change what others may do: decide them on
    // everything committed when the call arrived, so a key revoked or a role
    // taken away through another node a moment ago no longer counts here.
    // (On failure the local view is still within `max_staleness`.)
    let linearizable = match meta.get("gatehouse-consistency").map(|v| v.as_bytes()) {
        None | Some(b"default") => false,
        Some(b"linearizable") => true,
        // A mistyped level must not quietly weaken the read the caller asked for.
        Some(_) => {
            return Err(ApiError::InvalidArgument("gatehouse-consistency must be linearizable or default".into()))
        }
    };
    super::read_your_writes(node, linearizable).await?;
    check(node, meta, permission).await
}

/// [`authorize`] without the freshness check and the catch-up, for read-only
/// diagnostics (cluster status) that must answer at once on a node cut off
/// from the leader. The key is still resolved like every credential
/// ([`identity::resolve`]).
pub async fn authorize_stale(node: &Node, meta: &MetadataMap, permission: Permission) -> Result<Principal, ApiError> {
    check(node, meta, permission).await
}

/// The key in `meta`, resolved, and RBAC. Failed authentications count
/// against the client's address ([`super::failures`]).
async fn check(node: &Node, meta: &MetadataMap, permission: Permission) -> Result<Principal, ApiError> {
    let gate = crate::admin::call::GRPC_CALL.try_with(|c| c.auth_failures.clone()).ok().flatten();
    let peer = crate::admin::call::grpc_peer();
    let over = gate.as_ref().and_then(|g| g.full(&peer));
    let resolved = match bearer(meta) {
        // The admin API takes API keys, not browser sessions.
        Some(token) if token.starts_with(keys::KEY_PREFIX) => identity::resolve_with(node, token, over.is_none()).await,
        _ => Err(ApiError::Unauthenticated),
    };
    let caller = match resolved {
        Ok(caller) => caller,
        Err(e) => {
            static REFUSED: gatehouse_cluster::throttle::Throttle = gatehouse_cluster::throttle::Throttle::new(1_000);
            if let Some(suppressed) = REFUSED.allow() {
                tracing::info!(reason = %e.code(), suppressed, "admin call refused");
            }
            if let Some(q) = over {
                return Err(ApiError::RateLimited(q));
            }
            if let (ApiError::Unauthenticated, Some(g)) = (&e, &gate) {
                g.failed(&peer);
            }
            return Err(e);
        }
    };
    crate::admin::call::note_grpc_caller(&caller);
    if !roles::allowed(&node.view().read(), &caller.roles, permission) {
        tracing::info!(user = %caller.username, permission = permission.name(), "admin call denied");
        return Err(ApiError::PermissionDenied(format!("requires permission {}", permission.name())));
    }
    Ok(caller)
}
