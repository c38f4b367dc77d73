//! API keys: `gk_<key id>_<secret>`, stored as the SHA-256 of the secret.

use gatehouse_proto::events::{CreateApiKey, RevokeApiKey, RotateApiKey, UserStatus};
use gatehouse_proto::state::ApiKeyRecord;

use crate::mutation::{Mutation, Table};
use crate::result::ApplyError;
use crate::state::{put, State};
use crate::users::validate_roles;

/// A key id: 16 lowercase hex characters (64 random bits, public).
pub fn validate_key_id(id: &str) -> Result<(), ApplyError> {
    if id.len() == 16 && id.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        Ok(())
    } else {
        Err(ApplyError::Invalid("key id must be 16 lowercase hex characters".into()))
    }
}

/// A key name: 1–64 printable characters.
fn validate_name(name: &str) -> Result<(), ApplyError> {
    if (1..=64).contains(&name.chars().count()) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ApplyError::Invalid("key name must be 1-64 printable characters".into()))
    }
}

/// A key record as stored: format 2 when its role list is exact, so a build
/// that predates the flag refuses it rather than widen it (see `codec`).
pub(crate) fn put_key(key: &ApiKeyRecord) -> Mutation {
    if key.roles_exact {
        let value = crate::codec::encode_as(crate::codec::FORMAT_V2, key);
        Mutation::Put { table: Table::ApiKeys, key: key.key_id.as_bytes().to_vec(), value }
    } else {
        put(Table::ApiKeys, &key.key_id, key)
    }
}

pub(crate) fn create(
    state: &mut State,
    now: u64,
    c: &CreateApiKey,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    validate_key_id(&c.key_id)?;
    validate_name(&c.name)?;
    validate_roles(state, &c.roles)?;
    if c.secret_sha256.len() != 32 {
        return Err(ApplyError::Invalid("secret hash must be 32 bytes".into()));
    }
    if c.expires_at != 0 && c.expires_at <= now {
        return Err(ApplyError::Invalid("expiry must be in the future".into()));
    }
    let user = state.users.get(&c.user_id).ok_or_else(|| ApplyError::NotFound("no such user".into()))?;
    if user.status != UserStatus::Active as i32 {
        return Err(ApplyError::FailedPrecondition("user is disabled".into()));
    }
    if let Some(r) = c.roles.iter().find(|r| !user.roles.contains(r)) {
        return Err(ApplyError::FailedPrecondition(format!("user does not hold role {}", crate::quote::quote(r))));
    }
    if state.keys.contains_key(&c.key_id) {
        return Err(ApplyError::AlreadyExists("key id already exists".into()));
    }
    let key = ApiKeyRecord {
        key_id: c.key_id.clone(),
        user_id: c.user_id.clone(),
        name: c.name.clone(),
        secret_sha256: c.secret_sha256.clone(),
        expires_at: c.expires_at,
        roles: c.roles.clone(),
        created_at: now,
        revoked_at: 0,
        last_used: 0,
        roles_exact: c.roles_exact,
    };
    out.push(put_key(&key));
    state.keys.insert(key.key_id.clone(), key);
    Ok(c.key_id.clone())
}

pub(crate) fn revoke(
    state: &mut State,
    now: u64,
    c: &RevokeApiKey,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    let key = state.keys.get_mut(&c.key_id).ok_or_else(|| ApplyError::NotFound("no such key".into()))?;
    if key.revoked_at != 0 {
        return Err(ApplyError::FailedPrecondition("key already revoked".into()));
    }
    key.revoked_at = now;
    out.push(put_key(key));
    Ok(c.key_id.clone())
}

/// Creates `new_key` for the old key's user; the old key then ends at
/// `old_expires_at` (a grace period, never later than its own expiry) or at
/// once. Either both happen or neither.
pub(crate) fn rotate(
    state: &mut State,
    now: u64,
    c: &RotateApiKey,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    let new = c.new_key.as_ref().ok_or_else(|| ApplyError::Invalid("rotation without a new key".into()))?;
    let old = state.keys.get(&c.old_key_id).ok_or_else(|| ApplyError::NotFound("no such key".into()))?;
    if old.revoked_at != 0 {
        return Err(ApplyError::FailedPrecondition("key already revoked".into()));
    }
    if old.expires_at != 0 && old.expires_at <= now {
        return Err(ApplyError::FailedPrecondition("key already expired".into()));
    }
    if new.user_id != old.user_id {
        return Err(ApplyError::Invalid("the new key must belong to the old key's user".into()));
    }
    if c.old_expires_at != 0 && c.old_expires_at <= now {
        return Err(ApplyError::Invalid("grace period must end in the future".into()));
    }
    // The last step that can fail; what follows cannot.
    create(state, now, new, out)?;
    let old = state.keys.get_mut(&c.old_key_id).ok_or_else(|| ApplyError::NotFound("no such key".into()))?;
    if c.old_expires_at == 0 {
        old.revoked_at = now;
    } else if old.expires_at == 0 || c.old_expires_at < old.expires_at {
        old.expires_at = c.old_expires_at;
    }
    out.push(put_key(old));
    Ok(new.key_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::tests::create_user_cmd;
    use gatehouse_proto::events::{command::Payload, command_result::Code, Command};

    fn key_cmd(key_id: &str, user_id: &str, request_id: &str) -> Command {
        Command {
            proposed_at: 2_000,
            request_id: request_id.into(),
            payload: Some(Payload::CreateApiKey(CreateApiKey {
                key_id: key_id.into(),
                user_id: user_id.into(),
                name: "ci".into(),
                secret_sha256: vec![7; 32],
                expires_at: 0,
                roles: vec![],
                roles_exact: false,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn key_lifecycle_and_exactly_once_retries() {
        let mut state = State::default();
        let uid = "c".repeat(32);
        state.apply(1, &create_user_cmd(&uid, "carol"), &mut Vec::new());

        let first = state.apply(2, &key_cmd("0123456789abcdef", &uid, "req-1"), &mut Vec::new());
        assert_eq!(first.code, Code::Ok as i32);
        // The retry is not applied again: same result, same log index, no writes.
        let mut out = Vec::new();
        let retry = state.apply(3, &key_cmd("0123456789abcdef", &uid, "req-1"), &mut out);
        assert_eq!(retry, first);
        assert!(out.is_empty());
        // Without the request id it is a second attempt, refused.
        let again = state.apply(4, &key_cmd("0123456789abcdef", &uid, ""), &mut Vec::new());
        assert_eq!(again.code, Code::AlreadyExists as i32);

        let revoke = Command {
            proposed_at: 3_000,
            payload: Some(Payload::RevokeApiKey(RevokeApiKey { key_id: "0123456789abcdef".into() })),
            ..Default::default()
        };
        assert_eq!(state.apply(5, &revoke, &mut Vec::new()).code, Code::Ok as i32);
        assert_eq!(state.api_key("0123456789abcdef").unwrap().revoked_at, 3_000);
        assert_eq!(state.apply(6, &revoke, &mut Vec::new()).code, Code::FailedPrecondition as i32);
    }

    #[test]
    fn rotation_creates_the_new_key_and_ends_the_old_one_atomically() {
        let mut state = State::default();
        let uid = "c".repeat(32);
        state.apply(1, &create_user_cmd(&uid, "carl"), &mut Vec::new());
        state.apply(2, &key_cmd("aaaaaaaaaaaaaaaa", &uid, ""), &mut Vec::new());
        let new_key = |id: &str| match key_cmd(id, &uid, "").payload {
            Some(Payload::CreateApiKey(k)) => k,
            _ => unreachable!(),
        };
        let rotate = |old: &str, new: &str, grace_end: u64| Command {
            proposed_at: 10_000,
            payload: Some(Payload::RotateApiKey(RotateApiKey {
                old_key_id: old.into(),
                new_key: Some(new_key(new)),
                old_expires_at: grace_end,
            })),
            ..Default::default()
        };
        // With a grace period the old key keeps working until it ends.
        let r = state.apply(3, &rotate("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", 70_000), &mut Vec::new());
        assert_eq!((r.code, r.id.as_str()), (Code::Ok as i32, "bbbbbbbbbbbbbbbb"));
        let old = state.api_key("aaaaaaaaaaaaaaaa").unwrap();
        assert_eq!((old.expires_at, old.revoked_at), (70_000, 0));
        assert!(state.api_key("bbbbbbbbbbbbbbbb").is_some());

        // Without one it is revoked at once.
        let r = state.apply(4, &rotate("bbbbbbbbbbbbbbbb", "cccccccccccccccc", 0), &mut Vec::new());
        assert_eq!(r.code, Code::Ok as i32);
        assert_eq!(state.api_key("bbbbbbbbbbbbbbbb").unwrap().revoked_at, 10_000);

        // Refusals change nothing: revoked, unknown, clashing new id, past grace end, another user.
        let mut out = Vec::new();
        for (cmd, code) in [
            (rotate("bbbbbbbbbbbbbbbb", "dddddddddddddddd", 0), Code::FailedPrecondition),
            (rotate("0123456789abcdef", "dddddddddddddddd", 0), Code::NotFound),
            (rotate("cccccccccccccccc", "aaaaaaaaaaaaaaaa", 0), Code::AlreadyExists),
            (rotate("cccccccccccccccc", "dddddddddddddddd", 9_000), Code::Invalid),
        ] {
            assert_eq!(state.apply(5, &cmd, &mut out).code, code as i32);
        }
        let mut other = rotate("cccccccccccccccc", "dddddddddddddddd", 0);
        if let Some(Payload::RotateApiKey(r)) = &mut other.payload {
            r.new_key.as_mut().unwrap().user_id = "e".repeat(32);
        }
        assert_eq!(state.apply(6, &other, &mut out).code, Code::Invalid as i32);
        assert!(out.iter().all(|m| matches!(m, Mutation::Put { table: Table::Requests, .. })));
        assert!(state.api_key("dddddddddddddddd").is_none());
        assert_eq!(state.api_key("cccccccccccccccc").unwrap().revoked_at, 0);
    }

    #[test]
    fn refuses_orphan_keys_and_bad_ids() {
        let mut state = State::default();
        let r = state.apply(1, &key_cmd("0123456789abcdef", &"d".repeat(32), ""), &mut Vec::new());
        assert_eq!(r.code, Code::NotFound as i32);
        let r = state.apply(1, &key_cmd("XYZ", &"d".repeat(32), ""), &mut Vec::new());
        assert_eq!(r.code, Code::Invalid as i32);
        assert_eq!(state.api_keys().count(), 0);
    }

    #[test]
    fn request_ids_are_forgotten_after_the_ttl_deterministically() {
        let mut state = State::default();
        let uid = "e".repeat(32);
        state.apply(1, &create_user_cmd(&uid, "erin"), &mut Vec::new());
        state.apply(2, &key_cmd("0123456789abcdef", &uid, "req-9"), &mut Vec::new());
        assert!(state.request_result("req-9").is_some());
        let mut later = create_user_cmd(&"f".repeat(32), "frank");
        later.proposed_at = 2_000 + crate::requests::REQUEST_TTL_MS + 1;
        let mut out = Vec::new();
        state.apply(3, &later, &mut out);
        assert!(state.request_result("req-9").is_none());
        assert!(out.contains(&Mutation::Delete { table: Table::Requests, key: b"req-9".to_vec() }));
    }
}

/// Prefix of every API key, so leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "gk_";
/// Length of the secret part: 256 bits, base64url without padding.
pub const SECRET_LEN: usize = 43;
/// Length of a whole key: `gk_` + 16 + `_` + 43.
pub const KEY_LEN: usize = 3 + 16 + 1 + SECRET_LEN;

/// The full key shown once to its owner.
pub fn format_key(key_id: &str, secret: &str) -> String {
    format!("{KEY_PREFIX}{key_id}_{secret}")
}

/// Splits `gk_<key id>_<secret>` into its parts; `None` unless the form is exact.
pub fn parse_key(token: &str) -> Option<(&str, &str)> {
    if token.len() != KEY_LEN {
        return None;
    }
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    let b64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    (validate_key_id(key_id).is_ok() && secret.len() == SECRET_LEN && secret.chars().all(b64url))
        .then_some((key_id, secret))
}

/// The stored form of a secret.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// Why a key was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejected {
    #[error("malformed key")]
    Malformed,
    #[error("unknown key")]
    Unknown,
    #[error("key revoked")]
    Revoked,
    #[error("key expired")]
    Expired,
    #[error("user disabled")]
    UserDisabled,
}

/// Who a valid key speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    pub key_id: String,
    pub user_id: String,
    pub username: String,
    /// The key's roles: those of its own list that its user still holds
    /// (for keys issued before `roles_exact`, an empty list is all of the
    /// user's).
    pub roles: Vec<String>,
}

/// Checks a presented key against the state at time `now` (unix ms).
/// The secret is compared by hash in constant time.
pub fn verify(state: &State, token: &str, now: u64) -> Result<KeyIdentity, KeyRejected> {
    use subtle::ConstantTimeEq;
    let (key_id, secret) = parse_key(token).ok_or(KeyRejected::Malformed)?;
    let key = state.api_key(key_id).ok_or(KeyRejected::Unknown)?;
    if !bool::from(secret_hash(secret).ct_eq(key.secret_sha256.as_slice())) {
        return Err(KeyRejected::Unknown);
    }
    if key.revoked_at != 0 {
        return Err(KeyRejected::Revoked);
    }
    if key.expires_at != 0 && key.expires_at <= now {
        return Err(KeyRejected::Expired);
    }
    let user = state.user(&key.user_id).ok_or(KeyRejected::Unknown)?;
    if user.status != UserStatus::Active as i32 {
        return Err(KeyRejected::UserDisabled);
    }
    // A key holds those of its roles that its user still holds; only a
    // legacy record's empty list follows the user (issue 15: a pre-minted
    // key of a role-less user must not become an admin key later).
    let roles = if key.roles.is_empty() && !key.roles_exact {
        user.roles.clone()
    } else {
        key.roles.iter().filter(|r| user.roles.contains(r)).cloned().collect()
    };
    Ok(KeyIdentity {
        key_id: key.key_id.clone(),
        user_id: user.user_id.clone(),
        username: user.username.clone(),
        roles,
    })
}

#[cfg(test)]
mod verify_tests {
    use super::*;
    use crate::users::tests::create_user_cmd;
    use gatehouse_proto::events::{command::Payload, Command, SetUserStatus};

    const SECRET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

    fn state_with_key(expires_at: u64) -> (State, String) {
        let mut state = State::default();
        let uid = "a".repeat(32);
        state.apply(1, &create_user_cmd(&uid, "ann"), &mut Vec::new());
        let cmd = Command {
            proposed_at: 1_000,
            payload: Some(Payload::CreateApiKey(CreateApiKey {
                key_id: "00112233aabbccdd".into(),
                user_id: uid,
                name: "k".into(),
                secret_sha256: secret_hash(SECRET).to_vec(),
                expires_at,
                roles: vec![],
                roles_exact: false,
            })),
            ..Default::default()
        };
        state.apply(2, &cmd, &mut Vec::new());
        (state, format_key("00112233aabbccdd", SECRET))
    }

    #[test]
    fn accepts_the_key_and_rejects_forgeries() {
        let (state, key) = state_with_key(0);
        let id = verify(&state, &key, 5_000).unwrap();
        assert_eq!(id.username, "ann");
        assert_eq!(id.roles, vec!["viewer".to_string()]);

        let mut forged = key.clone();
        forged.replace_range(key.len() - 1.., "R");
        assert_eq!(verify(&state, &forged, 5_000), Err(KeyRejected::Unknown));
        assert_eq!(verify(&state, &key[..key.len() - 1], 5_000), Err(KeyRejected::Malformed));
        assert_eq!(verify(&state, &format!("{key}x"), 5_000), Err(KeyRejected::Malformed));
        assert_eq!(verify(&state, "", 5_000), Err(KeyRejected::Malformed));
        assert_eq!(verify(&state, &key.replace("gk_", "xx_"), 5_000), Err(KeyRejected::Malformed));
        let other = format_key("ffffffffffffffff", SECRET);
        assert_eq!(verify(&state, &other, 5_000), Err(KeyRejected::Unknown));
    }

    #[test]
    fn expiry_and_disabled_users() {
        let (state, key) = state_with_key(10_000);
        assert!(verify(&state, &key, 9_999).is_ok());
        assert_eq!(verify(&state, &key, 10_000), Err(KeyRejected::Expired));

        let (mut state, key) = state_with_key(0);
        let disable = Command {
            proposed_at: 3_000,
            payload: Some(Payload::SetUserStatus(SetUserStatus {
                user_id: "a".repeat(32),
                status: UserStatus::Disabled as i32,
            })),
            ..Default::default()
        };
        state.apply(3, &disable, &mut Vec::new());
        assert_eq!(verify(&state, &key, 5_000), Err(KeyRejected::UserDisabled));
    }

    #[test]
    fn a_restricted_key_loses_a_role_its_user_loses() {
        use gatehouse_proto::events::{AssignRole, UnassignRole};
        let mut state = State::default();
        let uid = "a".repeat(32);
        state.apply(1, &create_user_cmd(&uid, "ann"), &mut Vec::new());
        let role = |p| Command { proposed_at: 1_500, payload: Some(p), ..Default::default() };
        state.apply(
            2,
            &role(Payload::AssignRole(AssignRole { user_id: uid.clone(), role: "operator".into() })),
            &mut Vec::new(),
        );
        let key = CreateApiKey {
            key_id: "00112233aabbccdd".into(),
            user_id: uid.clone(),
            name: "k".into(),
            secret_sha256: secret_hash(SECRET).to_vec(),
            expires_at: 0,
            roles: vec!["operator".into()],
            roles_exact: true,
        };
        state.apply(3, &role(Payload::CreateApiKey(key)), &mut Vec::new());
        let token = format_key("00112233aabbccdd", SECRET);
        assert_eq!(verify(&state, &token, 2_000).unwrap().roles, vec!["operator".to_string()]);
        state.apply(
            4,
            &role(Payload::UnassignRole(UnassignRole { user_id: uid, role: "operator".into() })),
            &mut Vec::new(),
        );
        // Not "all of the user's roles" either: the key keeps none.
        assert_eq!(verify(&state, &token, 2_000).unwrap().roles, Vec::<String>::new());
    }

    /// A key pre-minted for a role-less service user holds no role, whatever
    /// the user is given later; only a record from before `roles_exact`
    /// keeps its old "follow the user" meaning.
    #[test]
    fn an_exact_empty_role_list_never_grows_with_its_user() {
        use gatehouse_proto::events::{AssignRole, UnassignRole};
        let mut state = State::default();
        let uid = "a".repeat(32);
        let at = |p| Command { proposed_at: 1_500, payload: Some(p), ..Default::default() };
        state.apply(1, &create_user_cmd(&uid, "svc"), &mut Vec::new());
        state.apply(
            2,
            &at(Payload::UnassignRole(UnassignRole { user_id: uid.clone(), role: "viewer".into() })),
            &mut Vec::new(),
        );
        let mut out = Vec::new();
        for (i, (id, exact)) in [("00112233aabbccdd", true), ("1111111111111111", false)].into_iter().enumerate() {
            let key = CreateApiKey {
                key_id: id.into(),
                user_id: uid.clone(),
                name: "k".into(),
                secret_sha256: secret_hash(SECRET).to_vec(),
                expires_at: 0,
                roles: vec![],
                roles_exact: exact,
            };
            state.apply(3 + i as u64, &at(Payload::CreateApiKey(key)), &mut out);
        }
        // Stored as format 2 exactly when the list is exact.
        let formats: Vec<u8> = out
            .iter()
            .filter_map(|m| match m {
                Mutation::Put { table: Table::ApiKeys, value, .. } => Some(value[0]),
                _ => None,
            })
            .collect();
        assert_eq!(formats, [crate::codec::FORMAT_V2, crate::codec::FORMAT_V1]);
        state.apply(5, &at(Payload::AssignRole(AssignRole { user_id: uid, role: "admin".into() })), &mut Vec::new());
        let exact = format_key("00112233aabbccdd", SECRET);
        assert_eq!(verify(&state, &exact, 2_000).unwrap().roles, Vec::<String>::new());
        let legacy = format_key("1111111111111111", SECRET);
        assert_eq!(verify(&state, &legacy, 2_000).unwrap().roles, vec!["admin".to_string()]);
        // A last-use flush rewrites the record without losing its format.
        let mut out = Vec::new();
        let touch = gatehouse_proto::events::RecordUse {
            keys: vec![gatehouse_proto::events::record_use::Use { id: "00112233aabbccdd".into(), at: 1_400 }],
            ..Default::default()
        };
        state.apply(6, &at(Payload::RecordUse(touch)), &mut out);
        assert!(matches!(&out[..], [Mutation::Put { value, .. }] if value[0] == crate::codec::FORMAT_V2), "{out:?}");
    }
}
