//! `KeyService`: create (secret shown once), list and get (never secrets),
//! revoke, rotate.

use gatehouse_domain::roles::Permission;
use gatehouse_domain::{keys as rules, users, Payload};
use gatehouse_proto::admin::key_service_server::{KeyService, KeyServiceServer};
use gatehouse_proto::admin::{
    ApiKey, CreateKeyRequest, CreateKeyResponse, GetKeyRequest, ListKeysRequest, ListKeysResponse, RevokeKeyRequest,
    Revoked, RotateKeyRequest, RotateKeyResponse,
};
use gatehouse_proto::events::{CreateApiKey, RevokeApiKey, RotateApiKey};
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::{check_covers, check_covers_owner, find_user, key_pb, revoked};
use crate::{mint, ApiError, Node};
use gatehouse_cluster::clock::now_ms;
use gatehouse_cluster::Cluster;

/// Longest key lifetime accepted (10 years).
const MAX_TTL_SECONDS: u64 = 10 * 366 * 24 * 3600;

/// Longest grace period of a rotated key (30 days).
const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

pub struct Keys {
    node: Node,
    /// For `wait_all`: which voters applied a revocation.
    cluster: Cluster,
}

pub fn server(node: Node, cluster: Cluster) -> KeyServiceServer<Keys> {
    KeyServiceServer::new(Keys { node, cluster })
}

#[tonic::async_trait]
impl KeyService for Keys {
    #[tracing::instrument(level = "info", name = "admin.keys.create", skip_all, fields(actor, key_id))]
    async fn create(&self, req: Request<CreateKeyRequest>) -> Result<Response<CreateKeyResponse>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::KeysWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        if r.ttl_seconds > MAX_TTL_SECONDS {
            return Err(ApiError::InvalidArgument("ttl is longer than 10 years".into()).into());
        }
        if r.name.is_empty() || r.name.chars().count() > 64 || r.name.chars().any(char::is_control) {
            return Err(ApiError::InvalidArgument("key name must be 1-64 printable characters".into()).into());
        }
        users::validate_roles(&self.node.view().read(), &r.roles).map_err(ApiError::from)?;
        let (user_id, roles) = {
            let state = self.node.view().read();
            let user = find_user(&state, &r.user)?;
            // A key speaks for its user: issuing one is acting as that user.
            // Its roles are fixed now (the user's, unless restricted), so a
            // key handed out today does not gain what its user gains later.
            let roles = if r.roles.is_empty() { user.roles.clone() } else { r.roles };
            // The owner as well as the roles: a key restricted to `viewer`
            // still acts as its user (`/api/v1/me`, their sessions), so an
            // operator must not mint one for an admin.
            check_covers(&state, &actor, &user.roles)?;
            check_covers(&state, &actor, &roles)?;
            (user.user_id.clone(), roles)
        };
        let key = mint::new_api_key();
        tracing::Span::current().record("key_id", key.key_id.as_str());
        let expires_at = if r.ttl_seconds == 0 { 0 } else { now_ms() + r.ttl_seconds * 1000 };
        let cmd = self.node.command(Payload::CreateApiKey(CreateApiKey {
            key_id: key.key_id.clone(),
            user_id,
            name: r.name,
            secret_sha256: key.secret_sha256.to_vec(),
            expires_at,
            // Exactly these roles, whatever the user is given later.
            roles,
            roles_exact: true,
        }));
        let result = super::write(&self.node, &actor, cmd).await?;
        super::secret_shown_once("key", &result.id, &key.key_id)?;
        let state = self.node.view().read();
        let rec = state.api_key(&key.key_id).ok_or(ApiError::Internal)?;
        tracing::info!("api key created");
        Ok(Response::new(CreateKeyResponse { key: Some(key_pb(&state, rec)), secret: key.key }))
    }

    async fn list(&self, req: Request<ListKeysRequest>) -> Result<Response<ListKeysResponse>, Status> {
        authorize(&self.node, req.metadata(), Permission::KeysRead).await?;
        let r = req.into_inner();
        let state = self.node.view().read();
        let user_id = if r.user.is_empty() { None } else { Some(find_user(&state, &r.user)?.user_id.clone()) };
        let keys: Vec<(String, ApiKey)> = state
            .api_keys()
            .filter(|k| user_id.as_ref().is_none_or(|u| &k.user_id == u))
            .filter(|k| r.include_revoked || k.revoked_at == 0)
            .map(|k| (super::newest_first(k.created_at, &k.key_id), key_pb(&state, k)))
            .collect();
        drop(state);
        let (keys, next_page_token) = super::page(keys, r.page_size, &r.page_token)?;
        Ok(Response::new(ListKeysResponse { keys, next_page_token }))
    }

    async fn get(&self, req: Request<GetKeyRequest>) -> Result<Response<ApiKey>, Status> {
        authorize(&self.node, req.metadata(), Permission::KeysRead).await?;
        let id = &req.get_ref().id;
        rules::validate_key_id(id).map_err(ApiError::from)?;
        let state = self.node.view().read();
        let key = state.api_key(id).ok_or_else(|| ApiError::NotFound(format!("no key {id}")))?;
        Ok(Response::new(key_pb(&state, key)))
    }

    #[tracing::instrument(level = "info", name = "admin.keys.rotate", skip_all, fields(actor, key_id = %gatehouse_domain::quote::quote(&req.get_ref().id), new_key_id))]
    async fn rotate(&self, req: Request<RotateKeyRequest>) -> Result<Response<RotateKeyResponse>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::KeysWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        rules::validate_key_id(&r.id).map_err(ApiError::from)?;
        if r.grace_seconds > MAX_GRACE_SECONDS {
            return Err(ApiError::InvalidArgument("grace period is longer than 30 days".into()).into());
        }
        let old = self
            .node
            .view()
            .read()
            .api_key(&r.id)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("no key {}", r.id)))?;
        check_covers_owner(&self.node.view().read(), &actor, &old.user_id)?;
        // A key from before exact role lists whose list is empty followed its
        // user; its successor holds what that meant today, and no more later.
        let exact_roles = if old.roles_exact || !old.roles.is_empty() {
            old.roles.clone()
        } else {
            self.node.view().read().user(&old.user_id).map(|u| u.roles.clone()).unwrap_or_default()
        };
        let key = mint::new_api_key();
        tracing::Span::current().record("new_key_id", key.key_id.as_str());
        let now = now_ms();
        let cmd = self.node.command(Payload::RotateApiKey(RotateApiKey {
            old_key_id: r.id.clone(),
            // The new key keeps what the old one was: user, name, roles and
            // the same remaining lifetime it was issued with.
            new_key: Some(CreateApiKey {
                key_id: key.key_id.clone(),
                user_id: old.user_id.clone(),
                name: old.name.clone(),
                secret_sha256: key.secret_sha256.to_vec(),
                expires_at: if old.expires_at == 0 { 0 } else { now + old.expires_at.saturating_sub(old.created_at) },
                roles: exact_roles,
                roles_exact: true,
            }),
            old_expires_at: if r.grace_seconds == 0 { 0 } else { now + r.grace_seconds * 1000 },
        }));
        let result = super::write(&self.node, &actor, cmd).await?;
        super::secret_shown_once("key", &result.id, &key.key_id)?;
        let state = self.node.view().read();
        let new = state.api_key(&key.key_id).ok_or(ApiError::Internal)?;
        let old = state.api_key(&r.id).ok_or(ApiError::Internal)?;
        tracing::info!(grace_seconds = r.grace_seconds, "api key rotated");
        Ok(Response::new(RotateKeyResponse {
            key: Some(key_pb(&state, new)),
            secret: key.key,
            old_key: Some(key_pb(&state, old)),
        }))
    }

    #[tracing::instrument(level = "info", name = "admin.keys.revoke", skip_all, fields(actor, key_id = %gatehouse_domain::quote::quote(&req.get_ref().id)))]
    async fn revoke(&self, req: Request<RevokeKeyRequest>) -> Result<Response<Revoked>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::KeysWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        rules::validate_key_id(&r.id).map_err(ApiError::from)?;
        {
            let state = self.node.view().read();
            if let Some(key) = state.api_key(&r.id) {
                check_covers_owner(&state, &actor, &key.user_id)?;
            }
        }
        let cmd = self.node.command(Payload::RevokeApiKey(RevokeApiKey { key_id: r.id }));
        let result = super::write(&self.node, &actor, cmd).await?;
        Ok(Response::new(revoked(&self.cluster, 1, result.log_index, r.wait_all).await))
    }
}
