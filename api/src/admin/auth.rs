//! Admin API authentication: `authorization: Bearer gk_…` metadata, checked
//! against the local view, then RBAC.

use gatehouse_domain::keys::{self, KeyIdentity};
use gatehouse_domain::roles::{self, Permission};
use tonic::metadata::MetadataMap;

use crate::cluster::now_ms;
use crate::{ApiError, Cluster};

/// The bearer token of a request, if it has a well-formed one.
pub fn bearer(meta: &MetadataMap) -> Option<&str> {
    let v = meta.get("authorization")?.to_str().ok()?;
    let token = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?;
    Some(token.trim())
}

/// Authenticates the caller and checks that one of its roles grants
/// `permission`. Refused with `stale` when this node cannot prove it is up to
/// date (a revoked key must not slip through a lagging node).
pub fn authorize(cluster: &Cluster, meta: &MetadataMap, permission: Permission) -> Result<KeyIdentity, ApiError> {
    if !cluster.is_fresh() {
        return Err(ApiError::Stale);
    }
    authorize_stale(cluster, meta, permission)
}

/// [`authorize`] without the freshness check, for read-only diagnostics
/// (cluster status) that must keep working on a node cut off from the leader.
pub fn authorize_stale(cluster: &Cluster, meta: &MetadataMap, permission: Permission) -> Result<KeyIdentity, ApiError> {
    let token = bearer(meta).ok_or(ApiError::Unauthenticated)?;
    let state = cluster.view().read();
    let identity = keys::verify(&state, token, now_ms()).map_err(|e| {
        tracing::info!(reason = %e, "admin call refused");
        ApiError::Unauthenticated
    })?;
    if !roles::allowed(&state, &identity.roles, permission) {
        tracing::info!(user = %identity.username, key_id = %identity.key_id, permission = permission.name(), "admin call denied");
        return Err(ApiError::PermissionDenied(format!("requires permission {}", permission.name())));
    }
    Ok(identity)
}
