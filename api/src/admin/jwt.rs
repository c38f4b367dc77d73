//! `JwtService`: the keys that sign downstream JWTs: list them, rotate.

use gatehouse_domain::roles::Permission;
use gatehouse_proto::admin::jwt_service_server::{JwtService, JwtServiceServer};
use gatehouse_proto::admin::{JwtKey, ListJwtKeysRequest, ListJwtKeysResponse, RotateJwtKeyRequest};
use gatehouse_proto::state::SigningKeyRecord;
use tonic::{Request, Response, Status};

use super::auth::authorize;
use crate::http::front::Front;
use crate::ApiError;

pub struct Jwt {
    front: Front,
}

pub fn server(front: Front) -> JwtServiceServer<Jwt> {
    JwtServiceServer::new(Jwt { front })
}

fn key_pb(k: &SigningKeyRecord, signing: Option<&str>, now: u64) -> JwtKey {
    let state = if Some(k.kid.as_str()) == signing {
        "signing"
    } else if k.current_from > now {
        "next"
    } else {
        "retiring"
    };
    JwtKey {
        kid: k.kid.clone(),
        alg: k.alg.clone(),
        created_at: k.created_at,
        current_from: k.current_from,
        retire_at: k.retire_at,
        state: state.into(),
    }
}

fn keys(front: &Front) -> Vec<JwtKey> {
    let now = gatehouse_cluster::clock::now_ms();
    let state = front.node.view().read();
    let keys = state.signing_keys();
    let signing = keys.current(now).map(|k| k.kid.as_str());
    keys.published(now).into_iter().map(|k| key_pb(k, signing, now)).collect()
}

#[tonic::async_trait]
impl JwtService for Jwt {
    async fn list_keys(&self, req: Request<ListJwtKeysRequest>) -> Result<Response<ListJwtKeysResponse>, Status> {
        authorize(&self.front.node, req.metadata(), Permission::ClusterRead).await?;
        super::read_your_writes(&self.front.node, false).await?;
        Ok(Response::new(ListJwtKeysResponse { keys: keys(&self.front) }))
    }

    #[tracing::instrument(level = "info", name = "admin.jwt.rotate", skip_all)]
    async fn rotate(&self, req: Request<RotateJwtKeyRequest>) -> Result<Response<JwtKey>, Status> {
        let actor = authorize(&self.front.node, req.metadata(), Permission::ClusterAdmin).await?;
        let cmd = crate::jwt::rotate::new_key(&self.front).await?;
        let result = super::write(&self.front.node, &actor, cmd).await?;
        ApiError::check(&result)?;
        tracing::info!(actor = %actor.username, kid = %result.id, "JWT signing key added");
        let key = keys(&self.front).into_iter().find(|k| k.kid == result.id).ok_or(ApiError::Internal)?;
        Ok(Response::new(key))
    }
}
