//! `gatehouse admin role …`.

use clap::Subcommand;
use gatehouse_proto::admin::role_service_client::RoleServiceClient;
use gatehouse_proto::admin::*;
use serde_json::json;
use std::io::Write;

use super::client::*;
use super::users::print_user;

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// List built-in and custom roles with their permissions.
    List,
    /// Create a custom role.
    Create {
        name: String,
        /// A permission to grant (repeatable), e.g. users.read, keys.write.
        #[arg(long = "permission")]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// A role whose holders may assign this one (repeatable); without
        /// it only holders of roles.write (and of this role) may.
        #[arg(long = "assignable-by", value_name = "ROLE")]
        assignable_by: Vec<String>,
    },
    /// Replace a custom role's permissions, description and assigners.
    Update {
        name: String,
        #[arg(long = "permission")]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long = "assignable-by", value_name = "ROLE")]
        assignable_by: Vec<String>,
    },
    /// Delete a custom role no user or key holds.
    Delete { name: String },
    /// Give a user a role.
    Assign {
        role: String,
        #[arg(long)]
        user: String,
    },
    /// Take a role from a user (keys restricted to it lose it too).
    Unassign {
        role: String,
        #[arg(long)]
        user: String,
    },
    /// Show, or set, which roles require a second factor.
    Mfa {
        /// A role that requires one (repeatable); replaces the list.
        #[arg(long = "require", value_name = "ROLE", conflicts_with = "none")]
        require: Vec<String>,
        /// Require a second factor of no role.
        #[arg(long)]
        none: bool,
    },
}

pub(super) fn role_json(r: &Role) -> serde_json::Value {
    json!({
        "name": r.name,
        "permissions": r.permissions,
        "description": r.description,
        "built_in": r.built_in,
        "assignable_by": r.assignable_by,
    })
}

pub(super) async fn role(
    mut client: RoleServiceClient<Authed>,
    cmd: RoleCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let written = match cmd {
        RoleCommand::List => {
            let roles = client.list(ListRolesRequest {}).await.map_err(rpc_error)?.into_inner().roles;
            if json {
                writeln!(out, "{}", json!({ "roles": roles.iter().map(role_json).collect::<Vec<_>>() }))?;
            } else {
                writeln!(out, "{:<20} {:<8} PERMISSIONS", "ROLE", "KIND")?;
                for r in roles {
                    let kind = if r.built_in { "built-in" } else { "custom" };
                    writeln!(out, "{:<20} {:<8} {}", r.name, kind, r.permissions.join(","))?;
                }
            }
            return Ok(());
        }
        RoleCommand::Create { name, permissions, description, assignable_by } => client
            .create(PutRoleRequest { name, permissions, description, assignable_by })
            .await
            .map_err(rpc_error)?
            .into_inner(),
        RoleCommand::Update { name, permissions, description, assignable_by } => client
            .update(PutRoleRequest { name, permissions, description, assignable_by })
            .await
            .map_err(rpc_error)?
            .into_inner(),
        RoleCommand::Delete { name } => {
            client.delete(DeleteRoleRequest { name: name.clone() }).await.map_err(rpc_error)?;
            if json {
                writeln!(out, "{}", json!({ "deleted": name }))?;
            } else {
                writeln!(out, "deleted role {name}")?;
            }
            return Ok(());
        }
        RoleCommand::Assign { role, user } => {
            let u = client.assign(RoleAssignment { user, role }).await.map_err(rpc_error)?.into_inner();
            return print_user(&u, "updated", json, out);
        }
        RoleCommand::Unassign { role, user } => {
            let u = client.unassign(RoleAssignment { user, role }).await.map_err(rpc_error)?.into_inner();
            return print_user(&u, "updated", json, out);
        }
        RoleCommand::Mfa { require, none } => {
            let policy = if require.is_empty() && !none {
                client.get_mfa_policy(GetMfaPolicyRequest {}).await
            } else {
                client.set_mfa_policy(MfaPolicy { required_roles: require }).await
            };
            let roles = policy.map_err(rpc_error)?.into_inner().required_roles;
            if json {
                writeln!(out, "{}", json!({ "required_roles": roles }))?;
            } else if roles.is_empty() {
                writeln!(out, "no role requires a second factor")?;
            } else {
                writeln!(out, "a second factor is required of: {}", roles.join(", "))?;
            }
            return Ok(());
        }
    };
    if json {
        writeln!(out, "{}", role_json(&written))?;
    } else {
        writeln!(out, "role {}: {}", written.name, written.permissions.join(", "))?;
    }
    Ok(())
}
