//! `SessionService`: list a user's sessions, get one, revoke one, all of a
//! user's, or (in an emergency) every session in the cluster.

use gatehouse_domain::roles::Permission;
use gatehouse_domain::{users, Payload};
use gatehouse_proto::admin::session_service_server::{SessionService, SessionServiceServer};
use gatehouse_proto::admin::{
    GetSessionRequest, ListSessionsRequest, ListSessionsResponse, RevokeEverySessionRequest, RevokeSessionRequest,
    RevokeUserSessionsRequest, Revoked, Session,
};
use gatehouse_proto::events::{RevokeAllSessions, RevokeSession, RevokeUserSessions};
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::{check_covers, check_covers_owner, find_user, revoked, session_pb};
use gatehouse_cluster::Cluster;

use crate::{ApiError, Node};

pub struct Sessions {
    node: Node,
    /// For `wait_all`: which voters applied a revocation.
    cluster: Cluster,
}

pub fn server(node: Node, cluster: Cluster) -> SessionServiceServer<Sessions> {
    SessionServiceServer::new(Sessions { node, cluster })
}

#[tonic::async_trait]
impl SessionService for Sessions {
    async fn list(&self, req: Request<ListSessionsRequest>) -> Result<Response<ListSessionsResponse>, Status> {
        authorize(&self.node, req.metadata(), Permission::SessionsRead).await?;
        let r = req.into_inner();
        let state = self.node.view().read();
        let user = find_user(&state, &r.user)?;
        let sessions: Vec<(String, Session)> = state
            .sessions_of(&user.user_id)
            .map(|s| (super::newest_first(s.created_at, &s.session_id), session_pb(&state, &s)))
            .collect();
        drop(state);
        let (sessions, next_page_token) = super::page(sessions, r.page_size, &r.page_token)?;
        Ok(Response::new(ListSessionsResponse { sessions, next_page_token }))
    }

    async fn get(&self, req: Request<GetSessionRequest>) -> Result<Response<Session>, Status> {
        authorize(&self.node, req.metadata(), Permission::SessionsRead).await?;
        let id = &req.get_ref().id;
        users::validate_id("session", id).map_err(ApiError::from)?;
        let state = self.node.view().read();
        let session = state.session(id).ok_or_else(|| ApiError::NotFound(format!("no session {id}")))?;
        Ok(Response::new(session_pb(&state, &session)))
    }

    #[tracing::instrument(level = "info", name = "admin.sessions.revoke", skip_all, fields(actor, session_id = %gatehouse_domain::quote::quote(&req.get_ref().id)))]
    async fn revoke(&self, req: Request<RevokeSessionRequest>) -> Result<Response<Revoked>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::SessionsWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        users::validate_id("session", &r.id).map_err(ApiError::from)?;
        {
            let state = self.node.view().read();
            if let Some(session) = state.session(&r.id) {
                check_covers_owner(&state, &actor, &session.user_id)?;
            }
        }
        let cmd = self.node.command(Payload::RevokeSession(RevokeSession { session_id: r.id }));
        let result = super::write(&self.node, &actor, cmd).await?;
        Ok(Response::new(revoked(&self.cluster, 1, result.log_index, r.wait_all).await))
    }

    #[tracing::instrument(level = "info", name = "admin.sessions.revoke_all", skip_all, fields(actor))]
    async fn revoke_all(&self, req: Request<RevokeUserSessionsRequest>) -> Result<Response<Revoked>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::SessionsWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        let user_id = {
            let state = self.node.view().read();
            let user = find_user(&state, &r.user)?;
            check_covers(&state, &actor, &user.roles)?;
            user.user_id.clone()
        };
        let cmd = self.node.command(Payload::RevokeUserSessions(RevokeUserSessions { user_id }));
        let result = super::write(&self.node, &actor, cmd).await?;
        // The command's result id carries how many sessions it ended.
        let count = result.id.parse().unwrap_or(0);
        Ok(Response::new(revoked(&self.cluster, count, result.log_index, r.wait_all).await))
    }

    #[tracing::instrument(level = "warn", name = "admin.sessions.revoke_everything", skip_all, fields(actor))]
    async fn revoke_everything(&self, req: Request<RevokeEverySessionRequest>) -> Result<Response<Revoked>, Status> {
        // Signing out everyone (admins included) is a cluster-wide act, not
        // day-to-day session work: `cluster.admin`, not `sessions.write`.
        let actor = authorize(&self.node, req.metadata(), Permission::ClusterAdmin).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        if !r.confirm {
            return Err(ApiError::InvalidArgument("revoking every session needs confirm = true".into()).into());
        }
        let result =
            super::write(&self.node, &actor, self.node.command(Payload::RevokeAllSessions(RevokeAllSessions {})))
                .await?;
        let count = result.id.parse().unwrap_or(0);
        tracing::warn!(sessions = count, "every session in the cluster revoked");
        Ok(Response::new(revoked(&self.cluster, count, result.log_index, r.wait_all).await))
    }
}
