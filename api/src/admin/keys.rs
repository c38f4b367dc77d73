//! `KeyService`: create (secret shown once), list (never secrets), revoke.

use gatehouse_domain::roles::Permission;
use gatehouse_domain::{keys as rules, users, Payload};
use gatehouse_proto::admin::key_service_server::{KeyService, KeyServiceServer};
use gatehouse_proto::admin::{
    CreateKeyRequest, CreateKeyResponse, ListKeysRequest, ListKeysResponse, RevokeKeyRequest, Revoked,
};
use gatehouse_proto::events::{CreateApiKey, RevokeApiKey};
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::{find_user, key_pb, revoked};
use crate::cluster::now_ms;
use crate::{credentials, ApiError, Cluster};

/// Longest key lifetime accepted (10 years).
const MAX_TTL_SECONDS: u64 = 10 * 366 * 24 * 3600;

pub struct Keys {
    cluster: Cluster,
}

pub fn server(cluster: Cluster) -> KeyServiceServer<Keys> {
    KeyServiceServer::new(Keys { cluster })
}

#[tonic::async_trait]
impl KeyService for Keys {
    #[tracing::instrument(level = "info", name = "admin.keys.create", skip_all, fields(actor, key_id))]
    async fn create(&self, req: Request<CreateKeyRequest>) -> Result<Response<CreateKeyResponse>, Status> {
        let actor = authorize(&self.cluster, req.metadata(), Permission::KeysWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        if r.ttl_seconds > MAX_TTL_SECONDS {
            return Err(ApiError::InvalidArgument("ttl is longer than 10 years".into()).into());
        }
        if r.name.is_empty() || r.name.chars().count() > 64 || r.name.chars().any(char::is_control) {
            return Err(ApiError::InvalidArgument("key name must be 1-64 printable characters".into()).into());
        }
        super::read_your_writes(&self.cluster).await;
        users::validate_roles(&self.cluster.view().read(), &r.roles)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let user_id = find_user(&self.cluster.view().read(), &r.user)?.user_id.clone();
        let key = credentials::new_api_key();
        tracing::Span::current().record("key_id", key.key_id.as_str());
        let expires_at = if r.ttl_seconds == 0 { 0 } else { now_ms() + r.ttl_seconds * 1000 };
        let cmd = self.cluster.command(Payload::CreateApiKey(CreateApiKey {
            key_id: key.key_id.clone(),
            user_id,
            name: r.name,
            secret_sha256: key.secret_sha256.to_vec(),
            expires_at,
            roles: r.roles,
        }));
        self.cluster.propose_one(cmd).await?;
        let state = self.cluster.view().read();
        let rec = state.api_key(&key.key_id).ok_or(ApiError::Internal)?;
        tracing::info!("api key created");
        Ok(Response::new(CreateKeyResponse { key: Some(key_pb(&state, rec)), secret: key.key }))
    }

    async fn list(&self, req: Request<ListKeysRequest>) -> Result<Response<ListKeysResponse>, Status> {
        authorize(&self.cluster, req.metadata(), Permission::KeysRead).await?;
        super::read_your_writes(&self.cluster).await;
        let r = req.into_inner();
        let state = self.cluster.view().read();
        let user_id = if r.user.is_empty() { None } else { Some(find_user(&state, &r.user)?.user_id.clone()) };
        let mut keys: Vec<_> = state
            .api_keys()
            .filter(|k| user_id.as_ref().is_none_or(|u| &k.user_id == u))
            .filter(|k| r.include_revoked || k.revoked_at == 0)
            .map(|k| key_pb(&state, k))
            .collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.created_at));
        Ok(Response::new(ListKeysResponse { keys }))
    }

    #[tracing::instrument(level = "info", name = "admin.keys.revoke", skip_all, fields(actor, key_id = %req.get_ref().id))]
    async fn revoke(&self, req: Request<RevokeKeyRequest>) -> Result<Response<Revoked>, Status> {
        let actor = authorize(&self.cluster, req.metadata(), Permission::KeysWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        rules::validate_key_id(&r.id).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let cmd = self.cluster.command(Payload::RevokeApiKey(RevokeApiKey { key_id: r.id }));
        let result = self.cluster.propose_one(cmd).await?;
        Ok(Response::new(revoked(&self.cluster, 1, result.log_index, r.wait_all).await))
    }
}
