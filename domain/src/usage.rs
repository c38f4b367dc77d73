//! Last use of sessions and API keys, without one log write per request:
//! each node remembers the uses it saw and flushes them every few seconds as
//! one `RecordUse` command. Apply only ever moves a time forward, so flushes
//! from several nodes in any order agree.

use gatehouse_proto::events::RecordUse;

use crate::mutation::Mutation;
use crate::result::ApplyError;
use crate::state::State;

/// Most uses one command may carry.
pub const MAX_USES: usize = 100_000;

pub(crate) fn record(state: &mut State, c: &RecordUse, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    if c.sessions.len() + c.keys.len() > MAX_USES {
        return Err(ApplyError::Invalid("too many uses in one command".into()));
    }
    let mut changed = 0;
    // Credentials revoked since the node saw them are simply gone or left as they are.
    for u in &c.sessions {
        if let Some(m) = state.sessions.used(&u.id, u.at) {
            out.push(m);
            changed += 1;
        }
    }
    for u in &c.keys {
        if let Some(k) = state.keys.get_mut(&u.id) {
            if u.at > k.last_used {
                k.last_used = u.at;
                out.push(crate::keys::put_key(k));
                changed += 1;
            }
        }
    }
    Ok(changed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::tests::create_user_cmd;
    use gatehouse_proto::events::{command::Payload, record_use::Use, Command, CreateApiKey};

    #[test]
    fn uses_only_move_forward_and_unknown_ids_are_ignored() {
        let mut state = State::default();
        let uid = "a".repeat(32);
        state.apply(1, &create_user_cmd(&uid, "ann"), &mut Vec::new());
        let key = Command {
            proposed_at: 1_000,
            payload: Some(Payload::CreateApiKey(CreateApiKey {
                key_id: "0123456789abcdef".into(),
                user_id: uid,
                name: "k".into(),
                secret_sha256: vec![1; 32],
                expires_at: 0,
                roles: vec![],
                roles_exact: false,
            })),
            ..Default::default()
        };
        state.apply(2, &key, &mut Vec::new());
        let used = |at: u64| Command {
            proposed_at: at,
            payload: Some(Payload::RecordUse(RecordUse {
                sessions: vec![Use { id: "f".repeat(32), at }],
                keys: vec![Use { id: "0123456789abcdef".into(), at }, Use { id: "ffffffffffffffff".into(), at }],
            })),
            ..Default::default()
        };
        let mut out = Vec::new();
        state.apply(3, &used(5_000), &mut out);
        assert_eq!(state.api_key("0123456789abcdef").unwrap().last_used, 5_000);
        assert_eq!(out.len(), 1);
        out.clear();
        state.apply(4, &used(4_000), &mut out);
        assert_eq!(state.api_key("0123456789abcdef").unwrap().last_used, 5_000);
        assert!(out.is_empty());
    }
}
