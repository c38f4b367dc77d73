//! `UserService`: create, list, enable/disable.

use gatehouse_domain::roles::Permission;
use gatehouse_domain::{users as rules, ApplyError, Payload};
use gatehouse_proto::admin::user_service_server::{UserService, UserServiceServer};
use gatehouse_proto::admin::{CreateUserRequest, ListUsersRequest, ListUsersResponse, SetUserStatusRequest, User};
use gatehouse_proto::events::{CreateUser, SetUserStatus, UserStatus};
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::{find_user, status_name, user_pb};
use crate::passwords::PasswordPool;
use crate::{credentials, ApiError, Cluster};

pub struct Users {
    cluster: Cluster,
    passwords: PasswordPool,
}

pub fn server(cluster: Cluster, passwords: PasswordPool) -> UserServiceServer<Users> {
    UserServiceServer::new(Users { cluster, passwords })
}

fn invalid(e: ApplyError) -> ApiError {
    ApiError::InvalidArgument(e.to_string())
}

#[tonic::async_trait]
impl UserService for Users {
    #[tracing::instrument(level = "info", name = "admin.users.create", skip_all, fields(actor))]
    async fn create(&self, req: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        let actor = authorize(&self.cluster, req.metadata(), Permission::UsersWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        let username = r.username.to_ascii_lowercase();
        rules::validate_username(&username).map_err(invalid)?;
        rules::validate_email(&r.email).map_err(invalid)?;
        super::read_your_writes(&self.cluster).await;
        rules::validate_roles(&self.cluster.view().read(), &r.roles).map_err(|e| match e {
            ApplyError::NotFound(m) => ApiError::NotFound(m),
            e => invalid(e),
        })?;
        if self.cluster.view().read().user_by_name(&username).is_some() {
            return Err(ApiError::AlreadyExists(format!("username {username:?} is taken")).into());
        }
        // Hashed here, on the proposing node: the log only sees the PHC string.
        let password_hash = if r.password.is_empty() { String::new() } else { self.passwords.hash(r.password).await? };
        let user_id = credentials::new_id();
        let cmd = self.cluster.command(Payload::CreateUser(CreateUser {
            user_id: user_id.clone(),
            username,
            email: r.email,
            password_hash,
            roles: r.roles,
        }));
        self.cluster.propose_one(cmd).await?;
        let state = self.cluster.view().read();
        let user = state.user(&user_id).ok_or(ApiError::Internal)?;
        tracing::info!(user_id = %user_id, "user created");
        Ok(Response::new(user_pb(user)))
    }

    async fn list(&self, req: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        authorize(&self.cluster, req.metadata(), Permission::UsersRead).await?;
        super::read_your_writes(&self.cluster).await;
        let r = req.into_inner();
        if !r.status.is_empty() && r.status != "active" && r.status != "disabled" {
            return Err(ApiError::InvalidArgument("status must be active or disabled".into()).into());
        }
        let state = self.cluster.view().read();
        let mut users: Vec<User> = state
            .users()
            .filter(|u| r.role.is_empty() || u.roles.contains(&r.role))
            .filter(|u| r.status.is_empty() || status_name(u.status) == r.status)
            .map(user_pb)
            .collect();
        users.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(Response::new(ListUsersResponse { users }))
    }

    #[tracing::instrument(level = "info", name = "admin.users.set_status", skip_all, fields(actor))]
    async fn set_status(&self, req: Request<SetUserStatusRequest>) -> Result<Response<User>, Status> {
        let actor = authorize(&self.cluster, req.metadata(), Permission::UsersWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        let status = match r.status.as_str() {
            "active" => UserStatus::Active,
            "disabled" => UserStatus::Disabled,
            _ => return Err(ApiError::InvalidArgument("status must be active or disabled".into()).into()),
        };
        super::read_your_writes(&self.cluster).await;
        let user_id = find_user(&self.cluster.view().read(), &r.user)?.user_id.clone();
        let cmd = self
            .cluster
            .command(Payload::SetUserStatus(SetUserStatus { user_id: user_id.clone(), status: status as i32 }));
        self.cluster.propose_one(cmd).await?;
        let state = self.cluster.view().read();
        Ok(Response::new(user_pb(state.user(&user_id).ok_or(ApiError::Internal)?)))
    }
}
