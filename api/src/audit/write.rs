//! An audited admin write: the change proposed, and an event with its actor,
//! resource, outcome and the resource before and after (secrets removed).

use gatehouse_domain::{Payload, State};
use gatehouse_proto::events::Command;

use super::{event, Actor};
use crate::Node;

/// A record as an audit snapshot: what an operator needs to see changed,
/// never a password hash, key secret hash or session token hash.
fn snapshot(state: &State, kind: &str, id: &str) -> String {
    let v = match kind {
        "user" => state.user(id).map(|u| {
            serde_json::json!({ "id": u.user_id, "username": u.username, "email": u.email, "roles": u.roles,
                "status": gatehouse_domain::users::status_name(u.status), "locked_until": u.locked_until })
        }),
        "key" => state.api_key(id).map(|k| {
            serde_json::json!({ "id": k.key_id, "user_id": k.user_id, "name": k.name, "roles": k.roles,
                "expires_at": k.expires_at, "revoked_at": k.revoked_at })
        }),
        "session" => state.session(id).map(|s| {
            serde_json::json!({ "id": s.session_id, "user_id": s.user_id, "expires_at": s.expires_at,
                "client_ip": s.client_ip })
        }),
        "role" => state
            .role(id)
            .map(|r| serde_json::json!({ "name": r.name, "permissions": r.permissions, "description": r.description })),
        // Revoking sessions in bulk: how many were live (ids only, no tokens).
        "user_sessions" => {
            let (mut count, mut ids) = (0, Vec::new());
            for s in state.sessions_of(id) {
                count += 1;
                if ids.len() < 100 {
                    ids.push(s.session_id);
                }
            }
            Some(serde_json::json!({ "user_id": id, "sessions": count, "first_session_ids": ids }))
        }
        "sessions" => Some(serde_json::json!({ "sessions": state.sessions().count() })),
        "mfa_policy" => Some(serde_json::json!({ "required_roles": state.mfa_required_roles() })),
        // The published signing keys: ids and times, never a key.
        "signing_keys" => {
            let keys = state.signing_keys().all().map(|k| {
                serde_json::json!({ "kid": k.kid, "alg": k.alg, "current_from": k.current_from, "retire_at": k.retire_at })
            });
            Some(serde_json::json!({ "keys": keys.collect::<Vec<_>>() }))
        }
        // A user's second factors: what they are, never a secret or a hash.
        "factors" => Some(match state.factors_of(id) {
            Some(f) => serde_json::json!({ "user_id": id,
                "totp_enrolled_at": f.totp.as_ref().map(|t| t.enrolled_at),
                "recovery_codes_left": gatehouse_domain::factors::recovery_left(f),
                "passkeys": f.passkeys.iter().map(|k| &k.name).collect::<Vec<_>>(),
                "trusted_browsers": f.devices.len(),
                "locked_until": f.locked_until }),
            None => serde_json::json!({ "user_id": id, "totp_enrolled_at": null, "recovery_codes_left": 0 }),
        }),
        _ => None,
    };
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// What an admin command does, as an audit action and the resource it acts on.
fn subject(payload: &Payload) -> Option<(&'static str, &'static str, String)> {
    Some(match payload {
        Payload::CreateUser(c) => ("user.create", "user", c.user_id.clone()),
        Payload::SetUserStatus(c) => ("user.set_status", "user", c.user_id.clone()),
        Payload::SetPassword(c) => ("user.set_password", "user", c.user_id.clone()),
        Payload::UpdateUser(c) => ("user.update", "user", c.user_id.clone()),
        Payload::DeleteUser(c) => ("user.delete", "user", c.user_id.clone()),
        Payload::AssignRole(c) => ("role.assign", "user", c.user_id.clone()),
        Payload::UnassignRole(c) => ("role.unassign", "user", c.user_id.clone()),
        Payload::CreateApiKey(c) => ("key.create", "key", c.key_id.clone()),
        Payload::RevokeApiKey(c) => ("key.revoke", "key", c.key_id.clone()),
        Payload::RotateApiKey(c) => ("key.rotate", "key", c.old_key_id.clone()),
        Payload::RevokeSession(c) => ("session.revoke", "session", c.session_id.clone()),
        Payload::RevokeUserSessions(c) => ("session.revoke_user", "user_sessions", c.user_id.clone()),
        Payload::RevokeAllSessions(_) => ("session.revoke_all", "sessions", "*".into()),
        Payload::PutRole(c) if c.create => ("role.create", "role", c.name.clone()),
        Payload::PutRole(c) => ("role.update", "role", c.name.clone()),
        Payload::DeleteRole(c) => ("role.delete", "role", c.name.clone()),
        Payload::EnrollTotp(c) => ("mfa.enroll", "factors", c.user_id.clone()),
        Payload::AddPasskey(c) => ("mfa.enroll", "factors", c.user_id.clone()),
        Payload::RenamePasskey(c) => ("mfa.rename", "factors", c.user_id.clone()),
        Payload::ForgetDevices(c) => ("mfa.forget_devices", "factors", c.user_id.clone()),
        Payload::IssueEnrollTicket(c) => ("mfa.ticket", "factors", c.user_id.clone()),
        Payload::SetMfaPolicy(_) => ("mfa.policy", "mfa_policy", "*".into()),
        Payload::RotateSigningKey(c) => ("jwt.rotate", "signing_keys", c.kid.clone()),
        Payload::SetRecoveryCodes(c) => ("mfa.recovery_codes", "factors", c.user_id.clone()),
        Payload::RemoveFactors(c) if c.kind.is_empty() => ("mfa.reset", "factors", c.user_id.clone()),
        Payload::RemoveFactors(c) => ("mfa.remove", "factors", c.user_id.clone()),
        _ => return None,
    })
}

/// Proposes an admin change and audits it: actor, resource, and the
/// resource before and after (secrets removed), with the outcome.
pub async fn write(
    node: &Node,
    actor: &Actor,
    cmd: Command,
) -> Result<gatehouse_proto::events::CommandResult, crate::ApiError> {
    let Some((action, kind, id)) = cmd.payload.as_ref().and_then(subject) else {
        return node.propose_one(cmd).await;
    };
    let request_id = cmd.request_id.clone();
    let new_key = match &cmd.payload {
        Some(Payload::RotateApiKey(r)) => r.new_key.as_ref().map(|k| format!("new_key={}", k.key_id)),
        _ => None,
    };
    let before = snapshot(&node.view().read(), kind, &id);
    let result = node.propose_one(cmd).await;
    let after = snapshot(&node.view().read(), kind, &id);
    let outcome = match &result {
        Ok(_) => "ok",
        Err(crate::ApiError::PermissionDenied(_)) => "denied",
        Err(_) => "failed",
    };
    // A user's sessions are a resource of that user.
    let resource =
        if matches!(kind, "user_sessions" | "factors") { format!("user:{id}") } else { format!("{kind}:{id}") };
    let mut e = event(action, outcome, actor, resource);
    e.request_id = request_id;
    e.before = before;
    e.after = after;
    e.detail = match &result {
        Err(err) => err.to_string(),
        Ok(_) => new_key.unwrap_or_default(),
    };
    node.audit(e);
    result
}
