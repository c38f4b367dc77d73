//! The admin gRPC API: every RPC authenticates an API key and checks RBAC
//! first ([`auth`]), then works through the [`Cluster`](crate::Cluster).
//! Reads come from the local view; writes are proposed (forwarded to the
//! leader when needed).

pub mod auth;
pub mod cluster;
pub mod keys;
pub mod roles;
pub mod sessions;
pub mod users;

use std::time::{Duration, Instant};

use gatehouse_domain::State;
use gatehouse_proto::admin::{ApiKey, Revoked, Role, Session, User};
use gatehouse_proto::events::UserStatus;
use gatehouse_proto::raft::LocalStatusRequest;
use gatehouse_proto::state::{ApiKeyRecord, RoleRecord, SessionRecord, UserRecord};

use crate::{ApiError, Cluster};

/// Before an admin read: catch up with what the leader had committed when
/// the call arrived, so a read after a write through another node sees it.
/// (The caller was already checked fresh, so on failure the local view is
/// within `max_staleness`.)
pub async fn read_your_writes(cluster: &Cluster) {
    if !cluster.catch_up(Duration::from_secs(1)).await {
        tracing::debug!("admin read served from the local view without catching up");
    }
}

/// A user named by username or by id.
pub fn find_user<'a>(state: &'a State, user: &str) -> Result<&'a UserRecord, ApiError> {
    if user.is_empty() || user.len() > 64 {
        return Err(ApiError::InvalidArgument("user must be a username or a user id".into()));
    }
    state
        .user(user)
        .or_else(|| state.user_by_name(&user.to_ascii_lowercase()))
        .ok_or_else(|| ApiError::NotFound(format!("no user {user:?}")))
}

pub fn status_name(status: i32) -> &'static str {
    match UserStatus::try_from(status) {
        Ok(UserStatus::Disabled) => "disabled",
        _ => "active",
    }
}

pub fn user_pb(u: &UserRecord) -> User {
    User {
        id: u.user_id.clone(),
        username: u.username.clone(),
        email: u.email.clone(),
        roles: u.roles.clone(),
        status: status_name(u.status).into(),
        created_at: u.created_at,
        updated_at: u.updated_at,
        locked_until: u.locked_until,
    }
}

pub fn key_pb(state: &State, k: &ApiKeyRecord) -> ApiKey {
    ApiKey {
        id: k.key_id.clone(),
        user_id: k.user_id.clone(),
        username: state.user(&k.user_id).map(|u| u.username.clone()).unwrap_or_default(),
        name: k.name.clone(),
        roles: k.roles.clone(),
        created_at: k.created_at,
        expires_at: k.expires_at,
        revoked_at: k.revoked_at,
        last_used: k.last_used,
    }
}

pub fn role_pb(r: &RoleRecord) -> Role {
    Role {
        name: r.name.clone(),
        permissions: r.permissions.clone(),
        description: r.description.clone(),
        built_in: false,
    }
}

pub fn session_pb(state: &State, s: &SessionRecord) -> Session {
    Session {
        id: s.session_id.clone(),
        user_id: s.user_id.clone(),
        username: state.user(&s.user_id).map(|u| u.username.clone()).unwrap_or_default(),
        created_at: s.created_at,
        expires_at: s.expires_at,
        last_seen: s.last_seen,
        client_ip: s.client_ip.clone(),
        user_agent: s.user_agent.clone(),
    }
}

/// How long `wait_all` waits for every voter.
const WAIT_ALL: Duration = Duration::from_secs(5);

/// Completes a revocation answer; with `wait_all`, only once every
/// reachable voter reports it applied `log_index`.
pub async fn revoked(cluster: &Cluster, count: u32, log_index: u64, wait_all: bool) -> Revoked {
    let mut out = Revoked { count, log_index, applied_on: Vec::new(), unreachable: Vec::new() };
    if !wait_all {
        return out;
    }
    let membership = cluster.raft().metrics().borrow().membership_config.membership().clone();
    let deadline = Instant::now() + WAIT_ALL;
    for id in membership.voter_ids() {
        let addr = membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
        let applied = loop {
            let index = if id == cluster.id() {
                Some(cluster.view().applied_index())
            } else {
                let call = async {
                    let mut client = cluster.peers().raft_client(&addr).ok()?;
                    let mut req = tonic::Request::new(LocalStatusRequest {});
                    req.set_timeout(Duration::from_millis(500));
                    client.local_status(req).await.ok().map(|r| r.into_inner().applied_index)
                };
                call.await
            };
            match index {
                Some(i) if i >= log_index => break true,
                None => break false,
                Some(_) if Instant::now() >= deadline => break false,
                Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        if applied {
            out.applied_on.push(id);
        } else {
            out.unreachable.push(id);
        }
    }
    out
}
