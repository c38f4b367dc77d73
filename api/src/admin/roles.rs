//! `RoleService`: list built-in and custom roles; create, update and delete
//! custom roles (sets of permissions).

use gatehouse_domain::roles::{self, Permission};
use gatehouse_domain::Payload;
use gatehouse_proto::admin::role_service_server::{RoleService, RoleServiceServer};
use gatehouse_proto::admin::{
    DeleteRoleRequest, DeleteRoleResponse, GetMfaPolicyRequest, ListRolesRequest, ListRolesResponse, MfaPolicy,
    PutRoleRequest, Role, RoleAssignment, User,
};
use gatehouse_proto::events::{AssignRole, DeleteRole, PutRole, SetMfaPolicy, UnassignRole};
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::{check_covers, check_holds, find_user, role_pb, user_pb};
use crate::{ApiError, Node};

pub struct Roles {
    node: Node,
}

pub fn server(node: Node) -> RoleServiceServer<Roles> {
    RoleServiceServer::new(Roles { node })
}

impl Roles {
    async fn put(&self, req: Request<PutRoleRequest>, create: bool) -> Result<Response<Role>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::RolesWrite).await?;
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        let name = r.name.clone();
        let put = PutRole {
            name: r.name,
            permissions: r.permissions,
            description: r.description,
            create,
            assignable_by: r.assignable_by,
        };
        // Bounded before anything reaches the log (apply checks again).
        roles::validate_definition(&put).map_err(ApiError::from)?;
        {
            let state = self.node.view().read();
            check_holds(&state, &actor, &put.permissions)?;
            if let Some(existing) = state.role(&name) {
                check_holds(&state, &actor, &existing.permissions)?;
            }
        }
        let cmd = self.node.command(Payload::PutRole(put));
        super::write(&self.node, &actor, cmd).await?;
        tracing::info!(actor = %actor.username, role = %name, create, "role written");
        let state = self.node.view().read();
        Ok(Response::new(role_pb(state.role(&name).ok_or(ApiError::Internal)?)))
    }

    /// Gives (`assign`) or takes a role from a user.
    async fn assignment(&self, req: Request<RoleAssignment>, assign: bool) -> Result<Response<User>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::UsersWrite).await?;
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        roles::validate_name(&r.role).map_err(ApiError::InvalidArgument)?;
        let user_id = {
            let state = self.node.view().read();
            let user = find_user(&state, &r.user)?;
            check_covers(&state, &actor, &user.roles)?;
            check_covers(&state, &actor, std::slice::from_ref(&r.role))?;
            user.user_id.clone()
        };
        let payload = if assign {
            Payload::AssignRole(AssignRole { user_id: user_id.clone(), role: r.role.clone() })
        } else {
            Payload::UnassignRole(UnassignRole { user_id: user_id.clone(), role: r.role.clone() })
        };
        super::write(&self.node, &actor, self.node.command(payload)).await?;
        tracing::info!(actor = %actor.username, user_id = %user_id, role = %r.role, assign, "role assignment changed");
        let state = self.node.view().read();
        Ok(Response::new(user_pb(&state, state.user(&user_id).ok_or(ApiError::Internal)?)))
    }
}

#[tonic::async_trait]
impl RoleService for Roles {
    async fn list(&self, req: Request<ListRolesRequest>) -> Result<Response<ListRolesResponse>, Status> {
        authorize(&self.node, req.metadata(), Permission::RolesRead).await?;
        let built_in = roles::BUILT_IN.iter().map(|name| Role {
            name: name.to_string(),
            permissions: Permission::ALL
                .iter()
                .filter(|p| roles::grants(name, **p))
                .map(|p| p.name().to_string())
                .collect(),
            description: "built-in".into(),
            built_in: true,
            // Assigned by their permissions alone (see `roles::covers`).
            assignable_by: vec![],
        });
        let state = self.node.view().read();
        let mut custom: Vec<Role> = state.roles().map(role_pb).collect();
        custom.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListRolesResponse { roles: built_in.chain(custom).collect() }))
    }

    #[tracing::instrument(level = "info", name = "admin.roles.create", skip_all)]
    async fn create(&self, req: Request<PutRoleRequest>) -> Result<Response<Role>, Status> {
        self.put(req, true).await
    }

    #[tracing::instrument(level = "info", name = "admin.roles.update", skip_all)]
    async fn update(&self, req: Request<PutRoleRequest>) -> Result<Response<Role>, Status> {
        self.put(req, false).await
    }

    #[tracing::instrument(level = "info", name = "admin.roles.delete", skip_all)]
    async fn delete(&self, req: Request<DeleteRoleRequest>) -> Result<Response<DeleteRoleResponse>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::RolesWrite).await?;
        crate::admin::call::note_request(req.get_ref());
        let name = req.into_inner().name;
        super::write(&self.node, &actor, self.node.command(Payload::DeleteRole(DeleteRole { name: name.clone() })))
            .await?;
        tracing::info!(actor = %actor.username, role = %name, "role deleted");
        Ok(Response::new(DeleteRoleResponse {}))
    }

    #[tracing::instrument(level = "info", name = "admin.roles.assign", skip_all)]
    async fn assign(&self, req: Request<RoleAssignment>) -> Result<Response<User>, Status> {
        self.assignment(req, true).await
    }

    async fn get_mfa_policy(&self, req: Request<GetMfaPolicyRequest>) -> Result<Response<MfaPolicy>, Status> {
        authorize(&self.node, req.metadata(), Permission::RolesRead).await?;
        let required_roles = self.node.view().read().mfa_required_roles().to_vec();
        Ok(Response::new(MfaPolicy { required_roles }))
    }

    /// The caller must cover every role it adds or removes: nobody changes
    /// what is asked of holders of a role above their own.
    #[tracing::instrument(level = "info", name = "admin.roles.set_mfa_policy", skip_all)]
    async fn set_mfa_policy(&self, req: Request<MfaPolicy>) -> Result<Response<MfaPolicy>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::RolesWrite).await?;
        let r = req.into_inner();
        crate::admin::call::note_request(&r);
        for role in &r.required_roles {
            roles::validate_name(role).map_err(ApiError::InvalidArgument)?;
        }
        let expected_roles = {
            let state = self.node.view().read();
            let before = state.mfa_required_roles();
            let changed: Vec<String> = r
                .required_roles
                .iter()
                .filter(|x| !before.contains(x))
                .chain(before.iter().filter(|x| !r.required_roles.contains(x)))
                .cloned()
                .collect();
            check_covers(&state, &actor, &changed)?;
            before.to_vec()
        };
        // Applied only over the list checked here (a concurrent change is
        // refused, not overwritten).
        let cmd =
            self.node.command(Payload::SetMfaPolicy(SetMfaPolicy { required_roles: r.required_roles, expected_roles }));
        super::write(&self.node, &actor, cmd).await?;
        let required_roles = self.node.view().read().mfa_required_roles().to_vec();
        tracing::info!(actor = %actor.username, roles = ?required_roles, "MFA policy set");
        Ok(Response::new(MfaPolicy { required_roles }))
    }

    #[tracing::instrument(level = "info", name = "admin.roles.unassign", skip_all)]
    async fn unassign(&self, req: Request<RoleAssignment>) -> Result<Response<User>, Status> {
        self.assignment(req, false).await
    }
}
