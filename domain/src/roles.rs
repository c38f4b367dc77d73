//! Roles. The built-in ones exist on every cluster; custom roles come later
//! as commands of their own.

/// Full control, including cluster membership.
pub const ADMIN: &str = "admin";
/// Day-to-day operation: users, keys and sessions, no membership changes.
pub const OPERATOR: &str = "operator";
/// Read-only access to the admin API.
pub const VIEWER: &str = "viewer";

pub const BUILT_IN: [&str; 3] = [ADMIN, OPERATOR, VIEWER];

/// A role name: 1–64 characters of `a-z 0-9 _ - .`, starting with a letter.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid role name {name:?}: 1-64 characters of a-z, 0-9, '_', '-', '.', starting with a letter"))
    }
}

/// Whether a role with this name exists.
pub fn exists(name: &str) -> bool {
    BUILT_IN.contains(&name)
}

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
}

impl Permission {
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
        }
    }
}

/// Whether a built-in role grants a permission:
///
/// | permission | admin | operator | viewer |
/// |---|---|---|---|
/// | `cluster.read`, `users.read`, `keys.read`, `sessions.read` | yes | yes | yes |
/// | `users.write`, `keys.write`, `sessions.write` | yes | yes | no |
/// | `cluster.admin` | yes | no | no |
pub fn grants(role: &str, permission: Permission) -> bool {
    use Permission::*;
    match role {
        ADMIN => true,
        OPERATOR => !matches!(permission, ClusterAdmin),
        VIEWER => matches!(permission, ClusterRead | UsersRead | KeysRead | SessionsRead),
        _ => false,
    }
}

/// Whether any of `roles` grants `permission`.
pub fn allowed(roles: &[String], permission: Permission) -> bool {
    roles.iter().any(|r| grants(r, permission))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admins_change_the_cluster() {
        let r = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(allowed(&r(&["admin"]), Permission::ClusterAdmin));
        assert!(!allowed(&r(&["operator", "viewer"]), Permission::ClusterAdmin));
        assert!(allowed(&r(&["viewer"]), Permission::ClusterRead));
        assert!(!allowed(&r(&[]), Permission::ClusterRead));
        assert!(!allowed(&r(&["unknown"]), Permission::ClusterRead));
        assert!(allowed(&r(&["operator"]), Permission::KeysWrite));
        assert!(!allowed(&r(&["viewer"]), Permission::KeysWrite));
        assert!(allowed(&r(&["viewer"]), Permission::SessionsRead));
    }
}
