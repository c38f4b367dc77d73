//! Roles and RBAC. The built-in roles exist on every cluster; custom roles
//! are log commands (`PutRole`, `DeleteRole`) holding a set of permissions.
//! Whether a caller may do something is decided by [`allowed`], here only.

use gatehouse_proto::events::{DeleteRole, PutRole};
use gatehouse_proto::state::RoleRecord;

use crate::mutation::{Mutation, Table};
use crate::result::ApplyError;
use crate::state::{put, State};

/// Full control, including cluster membership.
pub const ADMIN: &str = "admin";
/// Day-to-day operation: users, keys and sessions, no membership changes.
pub const OPERATOR: &str = "operator";
/// Read-only access to the admin API.
pub const VIEWER: &str = "viewer";

pub const BUILT_IN: [&str; 3] = [ADMIN, OPERATOR, VIEWER];

/// Longest role name.
pub const MAX_NAME: usize = 64;

/// A role name: 1–64 characters of `a-z 0-9 _ - .`, starting with a letter.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_NAME).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid role name {}: 1-64 characters of a-z, 0-9, '_', '-', '.', starting with a letter",
            crate::quote::quote(name)
        ))
    }
}

/// Whether a role with this name exists (built-in or custom).
pub fn exists(state: &State, name: &str) -> bool {
    BUILT_IN.contains(&name) || state.roles.contains_key(name)
}

/// Most permissions one custom role may hold.
pub const MAX_PERMISSIONS: usize = 32;

/// What an admin API caller may do. Each RPC family needs one permission;
/// RBAC is decided here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read cluster status.
    ClusterRead,
    /// Change membership, trigger snapshots.
    ClusterAdmin,
    UsersRead,
    UsersWrite,
    KeysRead,
    KeysWrite,
    SessionsRead,
    SessionsWrite,
    RolesRead,
    RolesWrite,
    /// Follow the committed log (`Watch`).
    EventsRead,
    /// Query, export and verify the audit log.
    AuditRead,
}

impl Permission {
    pub const ALL: [Permission; 12] = [
        Permission::ClusterRead,
        Permission::ClusterAdmin,
        Permission::UsersRead,
        Permission::UsersWrite,
        Permission::KeysRead,
        Permission::KeysWrite,
        Permission::SessionsRead,
        Permission::SessionsWrite,
        Permission::RolesRead,
        Permission::RolesWrite,
        Permission::EventsRead,
        Permission::AuditRead,
    ];

    pub fn from_name(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Permission::ClusterRead => "cluster.read",
            Permission::ClusterAdmin => "cluster.admin",
            Permission::UsersRead => "users.read",
            Permission::UsersWrite => "users.write",
            Permission::KeysRead => "keys.read",
            Permission::KeysWrite => "keys.write",
            Permission::SessionsRead => "sessions.read",
            Permission::SessionsWrite => "sessions.write",
            Permission::RolesRead => "roles.read",
            Permission::RolesWrite => "roles.write",
            Permission::EventsRead => "events.read",
            Permission::AuditRead => "audit.read",
        }
    }
}

/// Whether a built-in role grants a permission:
///
/// | permission | admin | operator | viewer |
/// |---|---|---|---|
/// | `cluster.read`, `users.read`, `keys.read`, `sessions.read`, `roles.read` | yes | yes | yes |
/// | `users.write`, `keys.write`, `sessions.write`, `events.read` | yes | yes | no |
/// | `cluster.admin`, `roles.write`, `audit.read` | yes | no | no |
pub fn grants(role: &str, permission: Permission) -> bool {
    use Permission::*;
    match role {
        ADMIN => true,
        OPERATOR => !matches!(permission, ClusterAdmin | RolesWrite | AuditRead),
        VIEWER => matches!(permission, ClusterRead | UsersRead | KeysRead | SessionsRead | RolesRead),
        _ => false,
    }
}

/// Whether any of `roles` (built-in or custom) grants `permission`.
pub fn allowed(state: &State, roles: &[String], permission: Permission) -> bool {
    roles.iter().any(|r| {
        grants(r, permission)
            || state.roles.get(r).is_some_and(|c| c.permissions.iter().any(|p| p == permission.name()))
    })
}

/// Every permission `roles` grant together, as a bit set over [`Permission::ALL`].
fn mask(state: &State, roles: &[String]) -> u32 {
    Permission::ALL.iter().enumerate().filter(|(_, p)| allowed(state, roles, **p)).fold(0, |m, (i, _)| m | (1 << i))
}

/// Whether a caller holding `caller` may act on someone holding `target`
/// (grant those roles, change or impersonate that user): only if `target`
/// grants nothing `caller` does not, and the caller may assign each custom
/// role of `target` by name ([`may_assign`]). An operator can therefore not
/// make anyone an admin, nor issue a key for an admin, nor hand out a
/// permission-less custom role that route rules guard a panel with.
pub fn covers(state: &State, caller: &[String], target: &[String]) -> bool {
    let (c, t) = (mask(state, caller), mask(state, target));
    t & !c == 0 && target.iter().all(|r| may_assign(state, caller, r))
}

/// Whether `caller` may assign role `name` by name: a built-in role by its
/// permissions alone; a custom role only to those who hold `roles.write`,
/// hold the role, or hold a role it lists in `assignable_by`. Unknown names
/// are left to apply to refuse.
pub fn may_assign(state: &State, caller: &[String], name: &str) -> bool {
    let Some(role) = state.roles.get(name) else { return true };
    allowed(state, caller, Permission::RolesWrite) || caller.iter().any(|c| c == name || role.assignable_by.contains(c))
}

/// Most roles one custom role may name in `assignable_by`.
pub const MAX_ASSIGNERS: usize = 16;

fn validate_assigners(state: &State, name: &str, list: &[String]) -> Result<(), ApplyError> {
    if list.len() > MAX_ASSIGNERS {
        return Err(ApplyError::Invalid(format!("at most {MAX_ASSIGNERS} roles in assignable_by")));
    }
    for (i, r) in list.iter().enumerate() {
        validate_name(r).map_err(ApplyError::Invalid)?;
        if r != name && !exists(state, r) {
            return Err(ApplyError::NotFound(format!("role {} does not exist", crate::quote::quote(r))));
        }
        if list[..i].contains(r) {
            return Err(ApplyError::Invalid(format!("role {} listed twice", crate::quote::quote(r))));
        }
    }
    Ok(())
}

/// Whether `roles` together grant every permission named in `permissions`.
/// Unknown names are left to apply to refuse (as invalid).
pub fn holds_all(state: &State, roles: &[String], permissions: &[String]) -> bool {
    permissions.iter().all(|p| Permission::from_name(p).is_none_or(|p| allowed(state, roles, p)))
}

fn validate_permissions(list: &[String]) -> Result<(), ApplyError> {
    if list.len() > MAX_PERMISSIONS {
        return Err(ApplyError::Invalid(format!("at most {MAX_PERMISSIONS} permissions")));
    }
    for (i, p) in list.iter().enumerate() {
        if Permission::from_name(p).is_none() {
            return Err(ApplyError::Invalid(format!("unknown permission {}", crate::quote::quote(p))));
        }
        if list[..i].contains(p) {
            return Err(ApplyError::Invalid(format!("permission {} listed twice", crate::quote::quote(p))));
        }
    }
    Ok(())
}

/// The bounds of a role definition that need no state: checked by the
/// proposer, so an oversized definition (millions of permissions inside the
/// gRPC message limit) never reaches the log, and by apply again.
pub fn validate_definition(c: &PutRole) -> Result<(), ApplyError> {
    validate_name(&c.name).map_err(ApplyError::Invalid)?;
    if c.assignable_by.len() > MAX_ASSIGNERS {
        return Err(ApplyError::Invalid(format!("at most {MAX_ASSIGNERS} roles in assignable_by")));
    }
    validate_permissions(&c.permissions)?;
    if c.description.chars().count() > 256 || c.description.chars().any(char::is_control) {
        return Err(ApplyError::Invalid("description must be at most 256 printable characters".into()));
    }
    Ok(())
}

pub(crate) fn put_role(
    state: &mut State,
    now: u64,
    c: &PutRole,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    validate_definition(c)?;
    validate_assigners(state, &c.name, &c.assignable_by)?;
    if BUILT_IN.contains(&c.name.as_str()) {
        return Err(ApplyError::FailedPrecondition(format!("{:?} is a built-in role", c.name)));
    }
    let existing = state.roles.get(&c.name);
    let created_at = match (existing, c.create) {
        (Some(_), true) => return Err(ApplyError::AlreadyExists(format!("role {:?} exists", c.name))),
        (None, false) => return Err(ApplyError::NotFound(format!("no role {:?}", c.name))),
        (Some(r), false) => r.created_at,
        (None, true) => now,
    };
    let role = RoleRecord {
        name: c.name.clone(),
        permissions: c.permissions.clone(),
        description: c.description.clone(),
        created_at,
        updated_at: now,
        assignable_by: c.assignable_by.clone(),
    };
    out.push(put(Table::Roles, &role.name, &role));
    state.roles.insert(role.name.clone(), role);
    Ok(c.name.clone())
}

pub(crate) fn delete_role(state: &mut State, c: &DeleteRole, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    if BUILT_IN.contains(&c.name.as_str()) {
        return Err(ApplyError::FailedPrecondition(format!("{:?} is a built-in role", c.name)));
    }
    if !state.roles.contains_key(&c.name) {
        return Err(ApplyError::NotFound(format!("no role {:?}", c.name)));
    }
    let users = state.users.values().filter(|u| u.roles.contains(&c.name)).count();
    let keys = state.keys.values().filter(|k| k.revoked_at == 0 && k.roles.contains(&c.name)).count();
    if users + keys > 0 {
        return Err(ApplyError::FailedPrecondition(format!(
            "role {:?} is held by {users} users and {keys} keys",
            c.name
        )));
    }
    state.roles.remove(&c.name);
    out.push(Mutation::Delete { table: Table::Roles, key: c.name.clone().into_bytes() });
    Ok(c.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::users::tests::create_user_cmd;
    use gatehouse_proto::events::{command::Payload, command_result::Code, Command};

    fn r(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_admins_change_the_cluster() {
        let s = State::default();
        assert!(allowed(&s, &r(&["admin"]), Permission::ClusterAdmin));
        assert!(!allowed(&s, &r(&["operator", "viewer"]), Permission::ClusterAdmin));
        assert!(allowed(&s, &r(&["viewer"]), Permission::ClusterRead));
        assert!(!allowed(&s, &r(&[]), Permission::ClusterRead));
        assert!(!allowed(&s, &r(&["unknown"]), Permission::ClusterRead));
        assert!(allowed(&s, &r(&["operator"]), Permission::KeysWrite));
        assert!(!allowed(&s, &r(&["viewer"]), Permission::KeysWrite));
        assert!(allowed(&s, &r(&["viewer"]), Permission::SessionsRead));
        assert!(!allowed(&s, &r(&["operator"]), Permission::RolesWrite));
    }

    fn put(name: &str, perms: &[&str], create: bool) -> Command {
        Command {
            proposed_at: 1_000,
            payload: Some(Payload::PutRole(PutRole {
                name: name.into(),
                permissions: r(perms),
                description: "d".into(),
                create,
                assignable_by: vec![],
            })),
            ..Default::default()
        }
    }

    fn delete(name: &str) -> Command {
        Command {
            proposed_at: 2_000,
            payload: Some(Payload::DeleteRole(DeleteRole { name: name.into() })),
            ..Default::default()
        }
    }

    /// A custom role without permissions (a route rule's `ops-panel`) is
    /// not anyone's to hand out just because it grants nothing: only holders
    /// of roles.write, of the role, or of a role it names may assign it.
    #[test]
    fn custom_roles_are_assigned_only_by_those_they_name() {
        let mut s = State::default();
        s.apply(1, &put("panel-leads", &[], true), &mut Vec::new());
        s.apply(2, &put("ops-panel", &[], true), &mut Vec::new());
        let mut named = put("deploy-panel", &[], true);
        if let Some(Payload::PutRole(p)) = &mut named.payload {
            p.assignable_by = r(&["panel-leads", "operator"]);
        }
        assert_eq!(s.apply(3, &named, &mut Vec::new()).code, 0);
        let op = r(&[OPERATOR]);
        assert!(!covers(&s, &op, &r(&["ops-panel"])), "grants nothing, still not the operator's to give");
        assert!(covers(&s, &op, &r(&["deploy-panel"])), "named by the role");
        assert!(covers(&s, &r(&["panel-leads"]), &r(&["deploy-panel"])));
        assert!(covers(&s, &r(&["ops-panel"]), &r(&["ops-panel"])), "its holders");
        assert!(covers(&s, &r(&[ADMIN]), &r(&["ops-panel"])), "roles.write");
        // Built-in roles keep the permission rule alone.
        assert!(covers(&s, &op, &r(&[VIEWER])));
        // Unknown or repeated assigners are refused at apply.
        for bad in [r(&["no-such-role"]), r(&["operator", "operator"]), r(&["Bad Name"])] {
            let mut cmd = put("x-panel", &[], true);
            if let Some(Payload::PutRole(p)) = &mut cmd.payload {
                p.assignable_by = bad.clone();
            }
            assert_ne!(s.apply(9, &cmd, &mut Vec::new()).code, 0, "{bad:?}");
        }
        assert!(!s.roles.contains_key("x-panel"));
    }

    #[test]
    fn custom_roles_grant_exactly_their_permissions() {
        let mut s = State::default();
        assert_eq!(
            s.apply(1, &put("auditor", &["users.read", "keys.read"], true), &mut Vec::new()).code,
            Code::Ok as i32
        );
        assert!(allowed(&s, &r(&["auditor"]), Permission::KeysRead));
        assert!(!allowed(&s, &r(&["auditor"]), Permission::KeysWrite));
        assert_eq!(s.apply(2, &put("auditor", &["keys.write"], false), &mut Vec::new()).code, Code::Ok as i32);
        assert!(allowed(&s, &r(&["auditor"]), Permission::KeysWrite));
        assert!(!allowed(&s, &r(&["auditor"]), Permission::KeysRead));
        assert_eq!(s.role("auditor").unwrap().created_at, 1_000);
    }

    #[test]
    fn role_commands_refuse_bad_input_and_roles_in_use() {
        let mut s = State::default();
        for (cmd, code) in [
            (put("admin", &[], true), Code::FailedPrecondition),
            (put("Bad Name", &[], true), Code::Invalid),
            (put("ok", &["root.everything"], true), Code::Invalid),
            (put("ok", &["users.read", "users.read"], true), Code::Invalid),
            (put("missing", &[], false), Code::NotFound),
            (delete("viewer"), Code::FailedPrecondition),
            (delete("missing"), Code::NotFound),
        ] {
            assert_eq!(s.apply(1, &cmd, &mut Vec::new()).code, code as i32, "{cmd:?}");
        }
        assert_eq!(s.roles().count(), 0);
        s.apply(2, &put("deployer", &["keys.write"], true), &mut Vec::new());
        assert_eq!(s.apply(3, &put("deployer", &[], true), &mut Vec::new()).code, Code::AlreadyExists as i32);
        let mut user = create_user_cmd(&"a".repeat(32), "dora");
        if let Some(Payload::CreateUser(c)) = &mut user.payload {
            c.roles = r(&["deployer"]);
        }
        assert_eq!(s.apply(4, &user, &mut Vec::new()).code, Code::Ok as i32, "users may hold custom roles");
        assert_eq!(s.apply(5, &delete("deployer"), &mut Vec::new()).code, Code::FailedPrecondition as i32);
        assert!(s.role("deployer").is_some());
    }

    #[test]
    fn nobody_acts_above_their_own_permissions() {
        let state = State::default();
        let r = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(covers(&state, &r(&[ADMIN]), &r(&[OPERATOR, VIEWER])));
        assert!(covers(&state, &r(&[OPERATOR]), &r(&[VIEWER])));
        assert!(covers(&state, &r(&[OPERATOR]), &r(&[])));
        assert!(!covers(&state, &r(&[OPERATOR]), &r(&[ADMIN])));
        assert!(!covers(&state, &r(&[VIEWER]), &r(&[OPERATOR])));
        assert!(!covers(&state, &r(&[]), &r(&[VIEWER])));
        assert!(holds_all(&state, &r(&[OPERATOR]), &r(&["users.write", "keys.read"])));
        assert!(!holds_all(&state, &r(&[OPERATOR]), &r(&["users.write", "roles.write"])));
        assert!(holds_all(&state, &r(&[VIEWER]), &r(&["no.such"])), "left to apply to refuse");
    }
}
