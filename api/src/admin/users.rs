//! `UserService`: create, get, list, update, enable/disable, set password, delete.

use gatehouse_domain::roles::Permission;
use gatehouse_domain::{users as rules, Payload};
use gatehouse_proto::admin::user_service_server::{UserService, UserServiceServer};
use gatehouse_proto::admin::{
    CreateUserRequest, DeleteUserRequest, DeleteUserResponse, EnrollTicket, GetUserRequest, IssueEnrollTicketRequest,
    ListUsersRequest, ListUsersResponse, ResetFactorsRequest, SetPasswordRequest, SetPasswordResponse,
    SetUserStatusRequest, UpdateUserRequest, User,
};
use gatehouse_proto::events::{
    CreateUser, DeleteUser, RemoveFactors, SetPassword, SetUserStatus, UpdateUser, UserStatus,
};
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::{check_covers, find_user, user_pb};
use crate::identity::Principal;
use crate::passwords::PasswordPool;
use gatehouse_cluster::Cluster;

use crate::{ApiError, Node};

pub struct Users {
    node: Node,
    /// For `wait_all`: which voters applied a change of status.
    cluster: Cluster,
    passwords: PasswordPool,
}

pub fn server(node: Node, cluster: Cluster, passwords: PasswordPool) -> UserServiceServer<Users> {
    UserServiceServer::new(Users { node, cluster, passwords })
}

/// A status by name; `None` for the empty string.
fn parse_status(status: &str) -> Result<Option<UserStatus>, ApiError> {
    match status {
        "" => Ok(None),
        "active" => Ok(Some(UserStatus::Active)),
        "disabled" => Ok(Some(UserStatus::Disabled)),
        _ => Err(ApiError::InvalidArgument("status must be active or disabled".into())),
    }
}

impl Users {
    /// The user after a change was applied (read-your-writes: the proposal
    /// returned once applied here).
    fn current(&self, user_id: &str) -> Result<User, ApiError> {
        let state = self.node.view().read();
        Ok(user_pb(&state, state.user(user_id).ok_or(ApiError::Internal)?))
    }

    /// Resolves `user` (a username or id) to an id ([`authorize`] caught up already).
    fn resolve(&self, user: &str) -> Result<String, ApiError> {
        Ok(find_user(&self.node.view().read(), user)?.user_id.clone())
    }

    /// [`Users::resolve`] for a change: the caller must cover the user's roles.
    fn resolve_for_change(&self, actor: &Principal, user: &str) -> Result<String, ApiError> {
        let state = self.node.view().read();
        let u = find_user(&state, user)?;
        check_covers(&state, actor, &u.roles)?;
        Ok(u.user_id.clone())
    }
}

#[tonic::async_trait]
impl UserService for Users {
    #[tracing::instrument(level = "info", name = "admin.users.create", skip_all, fields(actor))]
    async fn create(&self, req: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::UsersWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        // Without the password: a digest of it in the log would be an unsalted hash.
        crate::admin::call::note_request(&CreateUserRequest { password: String::new(), ..r.clone() });
        let username = r.username.to_ascii_lowercase();
        rules::validate_username(&username).map_err(ApiError::from)?;
        rules::validate_email(&r.email).map_err(ApiError::from)?;
        rules::validate_roles(&self.node.view().read(), &r.roles).map_err(ApiError::from)?;
        check_covers(&self.node.view().read(), &actor, &r.roles)?;
        // The name is taken, unless by this very call's first attempt: a
        // retry with the same idempotency-key answers with that user (below).
        let retried = crate::admin::call::next_idempotent_request_id(&actor)?;
        let taken = {
            let state = self.node.view().read();
            let done_before = retried.is_some_and(|id| state.request_result(&id).is_some());
            !done_before && state.user_by_name(&username).is_some()
        };
        if taken {
            return Err(ApiError::AlreadyExists(format!("username {username:?} is taken")).into());
        }
        // Hashed here, on the proposing node: the log only sees the PHC string.
        let password_hash = if r.password.is_empty() { String::new() } else { self.passwords.hash(r.password).await? };
        let user_id = gatehouse_cluster::ids::new_id();
        let cmd = self.node.command(Payload::CreateUser(CreateUser {
            user_id: user_id.clone(),
            username,
            email: r.email,
            password_hash,
            roles: r.roles,
        }));
        // A retried call (same idempotency-key) answers with the user its
        // first attempt created.
        let user_id = super::write(&self.node, &actor, cmd).await?.id;
        let state = self.node.view().read();
        let user = state.user(&user_id).ok_or(ApiError::Internal)?;
        tracing::info!(user_id = %user_id, "user created");
        Ok(Response::new(user_pb(&state, user)))
    }

    async fn get(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        authorize(&self.node, req.metadata(), Permission::UsersRead).await?;
        let user_id = self.resolve(&req.get_ref().user)?;
        Ok(Response::new(self.current(&user_id)?))
    }

    async fn list(&self, req: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        authorize(&self.node, req.metadata(), Permission::UsersRead).await?;
        let r = req.into_inner();
        let status = parse_status(&r.status)?;
        if !r.role.is_empty() {
            gatehouse_domain::roles::validate_name(&r.role).map_err(ApiError::InvalidArgument)?;
        }
        let state = self.node.view().read();
        let users: Vec<(String, User)> = state
            .users()
            .filter(|u| r.role.is_empty() || u.roles.contains(&r.role))
            .filter(|u| status.is_none_or(|s| u.status == s as i32))
            .map(|u| (u.username.clone(), user_pb(&state, u)))
            .collect();
        drop(state);
        let (users, next_page_token) = super::page(users, r.page_size, &r.page_token)?;
        Ok(Response::new(ListUsersResponse { users, next_page_token }))
    }

    #[tracing::instrument(level = "info", name = "admin.users.update", skip_all, fields(actor, user_id))]
    async fn update(&self, req: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::UsersWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        if !r.email.is_empty() {
            rules::validate_email(&r.email).map_err(ApiError::from)?;
        }
        let status = parse_status(&r.status)?;
        if r.email.is_empty() && !r.set_roles && status.is_none() {
            return Err(ApiError::InvalidArgument("nothing to update: give an email, roles or a status".into()).into());
        }
        let user_id = self.resolve_for_change(&actor, &r.user)?;
        tracing::Span::current().record("user_id", user_id.as_str());
        if r.set_roles {
            let state = self.node.view().read();
            rules::validate_roles(&state, &r.roles).map_err(ApiError::from)?;
            check_covers(&state, &actor, &r.roles)?;
        }
        let cmd = self.node.command(Payload::UpdateUser(UpdateUser {
            user_id: user_id.clone(),
            set_email: !r.email.is_empty(),
            email: r.email,
            set_roles: r.set_roles,
            roles: r.roles,
            status: status.map_or(UserStatus::Unspecified as i32, |s| s as i32),
        }));
        super::write(&self.node, &actor, cmd).await?;
        tracing::info!("user updated");
        Ok(Response::new(self.current(&user_id)?))
    }

    #[tracing::instrument(level = "info", name = "admin.users.set_password", skip_all, fields(actor, user_id))]
    async fn set_password(&self, req: Request<SetPasswordRequest>) -> Result<Response<SetPasswordResponse>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::UsersWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        // Without the password: a digest of it in the log would be an unsalted hash.
        crate::admin::call::note_request(&SetPasswordRequest { password: String::new(), ..r.clone() });
        crate::passwords::check_policy(&r.password)?;
        let user_id = self.resolve_for_change(&actor, &r.user)?;
        tracing::Span::current().record("user_id", user_id.as_str());
        let sessions = self.node.view().read().sessions_of(&user_id).count() as u32;
        let password_hash = self.passwords.hash(r.password).await?;
        let cmd = self.node.command(Payload::SetPassword(SetPassword { user_id: user_id.clone(), password_hash }));
        super::write(&self.node, &actor, cmd).await?;
        tracing::info!(sessions_revoked = sessions, "password set");
        Ok(Response::new(SetPasswordResponse { user: Some(self.current(&user_id)?), sessions_revoked: sessions }))
    }

    #[tracing::instrument(level = "info", name = "admin.users.delete", skip_all, fields(actor, user_id))]
    async fn delete(&self, req: Request<DeleteUserRequest>) -> Result<Response<DeleteUserResponse>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::UsersWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        crate::admin::call::note_request(req.get_ref());
        let user_id = self.resolve_for_change(&actor, &req.get_ref().user)?;
        tracing::Span::current().record("user_id", user_id.as_str());
        let (keys, sessions) = {
            let state = self.node.view().read();
            (
                state.api_keys().filter(|k| k.user_id == user_id).count() as u32,
                state.sessions_of(&user_id).count() as u32,
            )
        };
        let cmd = self.node.command(Payload::DeleteUser(DeleteUser { user_id: user_id.clone() }));
        super::write(&self.node, &actor, cmd).await?;
        tracing::info!(keys_deleted = keys, sessions_revoked = sessions, "user deleted");
        Ok(Response::new(DeleteUserResponse { user_id, keys_deleted: keys, sessions_revoked: sessions }))
    }

    /// Needs `users.write` over the user (the caller covers its roles);
    /// audited as `mfa.reset` with the factors before and after.
    #[tracing::instrument(level = "info", name = "admin.users.reset_factors", skip_all, fields(actor, user_id))]
    async fn reset_factors(&self, req: Request<ResetFactorsRequest>) -> Result<Response<User>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::UsersWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        crate::admin::call::note_request(req.get_ref());
        let user_id = self.resolve_for_change(&actor, &req.get_ref().user)?;
        tracing::Span::current().record("user_id", user_id.as_str());
        let cmd =
            self.node.command(Payload::RemoveFactors(RemoveFactors { user_id: user_id.clone(), ..Default::default() }));
        super::write(&self.node, &actor, cmd).await?;
        tracing::info!("second factors reset");
        Ok(Response::new(self.current(&user_id)?))
    }

    /// Needs `users.write` over the user; audited as `mfa.ticket` (the
    /// ticket itself is in no log and no record: only its SHA-256).
    #[tracing::instrument(level = "info", name = "admin.users.issue_enroll_ticket", skip_all, fields(actor, user_id))]
    async fn issue_enroll_ticket(
        &self,
        req: Request<IssueEnrollTicketRequest>,
    ) -> Result<Response<EnrollTicket>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::UsersWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        let hours = match r.valid_hours {
            0 => 72,
            h @ 1..=168 => h,
            _ => return Err(ApiError::InvalidArgument("valid_hours must be 1 to 168".into()).into()),
        };
        let user_id = self.resolve_for_change(&actor, &r.user)?;
        tracing::Span::current().record("user_id", user_id.as_str());
        let ttl = u64::from(hours) * 3_600_000;
        let who = crate::audit::Actor::of(&actor, String::new());
        let (ticket, expires_at) = crate::mfa::check::issue_ticket(&self.node, &who, &user_id, ttl).await?;
        Ok(Response::new(EnrollTicket { user_id, ticket, expires_at }))
    }

    #[tracing::instrument(level = "info", name = "admin.users.set_status", skip_all, fields(actor))]
    async fn set_status(&self, req: Request<SetUserStatusRequest>) -> Result<Response<User>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::UsersWrite).await?;
        tracing::Span::current().record("actor", actor.username.as_str());
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        let status = parse_status(&r.status)?
            .ok_or_else(|| ApiError::InvalidArgument("status must be active or disabled".into()))?;
        let user_id = self.resolve_for_change(&actor, &r.user)?;
        let cmd = self
            .node
            .command(Payload::SetUserStatus(SetUserStatus { user_id: user_id.clone(), status: status as i32 }));
        let result = super::write(&self.node, &actor, cmd).await?;
        if r.wait_all {
            self.cluster.applied_on_voters(result.log_index, super::WAIT_ALL).await;
        }
        Ok(Response::new(self.current(&user_id)?))
    }
}
