//! Users: who can log in and own API keys.

use gatehouse_proto::events::{
    AssignRole, CreateUser, DeleteUser, RecordLoginFailure, SetPassword, SetUserStatus, UnassignRole, UpdateUser,
    UserStatus,
};
use gatehouse_proto::state::{SourceFailures, UserRecord};

use crate::mutation::{Mutation, Table};
use crate::quote::quote;
use crate::result::ApplyError;
use crate::roles;
use crate::state::{put, State};

/// Most roles one user or key may hold.
pub const MAX_ROLES: usize = 32;

/// A username: 3–64 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
/// Lowercase only, so two usernames never differ by case alone.
pub fn validate_username(name: &str) -> Result<(), ApplyError> {
    let ok = (3..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApplyError::Invalid(
            "username must be 3-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit".into(),
        ))
    }
}

/// An email address: at most 254 printable ASCII characters, one `@` with text on both sides.
pub fn validate_email(email: &str) -> Result<(), ApplyError> {
    let ok = email.len() <= 254
        && email.chars().all(|c| c.is_ascii_graphic())
        && matches!(email.split_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(ApplyError::Invalid("email must be an address like name@example.com".into()))
    }
}

/// A generated id: 32 lowercase hex characters (128 random bits).
pub fn validate_id(kind: &str, id: &str) -> Result<(), ApplyError> {
    if id.len() == 32 && id.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        Ok(())
    } else {
        Err(ApplyError::Invalid(format!("{kind} id must be 32 lowercase hex characters")))
    }
}

/// The log only ever holds password hashes: anything but an argon2id PHC
/// string is refused, so a plaintext password can never be stored by mistake.
pub fn validate_password_hash(hash: &str) -> Result<(), ApplyError> {
    if hash.starts_with("$argon2id$") && hash.len() <= 512 {
        Ok(())
    } else {
        Err(ApplyError::Invalid("password hash must be an argon2id PHC string".into()))
    }
}

/// Roles: each exists, no duplicates, at most [`MAX_ROLES`].
pub fn validate_roles(state: &State, list: &[String]) -> Result<(), ApplyError> {
    if list.len() > MAX_ROLES {
        return Err(ApplyError::Invalid(format!("at most {MAX_ROLES} roles")));
    }
    for (i, r) in list.iter().enumerate() {
        roles::validate_name(r).map_err(ApplyError::Invalid)?;
        if !roles::exists(state, r) {
            return Err(ApplyError::NotFound(format!("role {} does not exist", quote(r))));
        }
        if list[..i].contains(r) {
            return Err(ApplyError::Invalid(format!("role {} listed twice", quote(r))));
        }
    }
    Ok(())
}

pub(crate) fn create(
    state: &mut State,
    now: u64,
    c: &CreateUser,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    validate_id("user", &c.user_id)?;
    validate_username(&c.username)?;
    validate_email(&c.email)?;
    validate_roles(state, &c.roles)?;
    if !c.password_hash.is_empty() {
        validate_password_hash(&c.password_hash)?;
    }
    if state.users.contains_key(&c.user_id) {
        return Err(ApplyError::AlreadyExists("user id already exists".into()));
    }
    if state.usernames.contains_key(&c.username) {
        return Err(ApplyError::AlreadyExists(format!("username {} is taken", quote(&c.username))));
    }
    let user = UserRecord {
        user_id: c.user_id.clone(),
        username: c.username.clone(),
        email: c.email.clone(),
        password_hash: c.password_hash.clone(),
        roles: c.roles.clone(),
        status: UserStatus::Active as i32,
        created_at: now,
        updated_at: now,
        ..Default::default()
    };
    out.push(put(Table::Users, &user.user_id, &user));
    state.usernames.insert(user.username.clone(), user.user_id.clone());
    state.users.insert(user.user_id.clone(), user);
    Ok(c.user_id.clone())
}

/// A stored status as the admin API and the audit log name it.
pub fn status_name(status: i32) -> &'static str {
    match UserStatus::try_from(status) {
        Ok(UserStatus::Disabled) => "disabled",
        _ => "active",
    }
}

fn parse_status(status: i32) -> Result<UserStatus, ApplyError> {
    match UserStatus::try_from(status) {
        Ok(s @ (UserStatus::Active | UserStatus::Disabled)) => Ok(s),
        _ => Err(ApplyError::Invalid("status must be active or disabled".into())),
    }
}

fn no_such_user() -> ApplyError {
    ApplyError::NotFound("no such user".into())
}

fn is_active_admin(u: &UserRecord) -> bool {
    u.status == UserStatus::Active as i32 && u.roles.iter().any(|r| r == roles::ADMIN)
}

/// Refuses a change after which no active user would hold the built-in
/// `admin` role: the cluster would have nobody left to administer it.
fn keep_an_admin(state: &State, user_id: &str, admin_after: bool) -> Result<(), ApplyError> {
    let admin_before = state.users.get(user_id).is_some_and(is_active_admin);
    if !admin_before || admin_after || state.users.values().any(|u| u.user_id != user_id && is_active_admin(u)) {
        return Ok(());
    }
    Err(ApplyError::FailedPrecondition("this would leave the cluster without an active admin".into()))
}

pub(crate) fn set_status(
    state: &mut State,
    now: u64,
    c: &SetUserStatus,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    let status = parse_status(c.status)?;
    let update = UpdateUser { user_id: c.user_id.clone(), status: status as i32, ..Default::default() };
    update_user(state, now, &update, out)
}

/// Email, roles and status in one step; disabling ends the user's sessions.
pub(crate) fn update_user(
    state: &mut State,
    now: u64,
    c: &UpdateUser,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    let user = state.users.get(&c.user_id).ok_or_else(no_such_user)?;
    if c.set_email {
        validate_email(&c.email)?;
    }
    if c.set_roles {
        validate_roles(state, &c.roles)?;
    }
    let status = if c.status == UserStatus::Unspecified as i32 { None } else { Some(parse_status(c.status)?) };
    let active_after = status.map_or(user.status == UserStatus::Active as i32, |s| s == UserStatus::Active);
    let roles_after = if c.set_roles { &c.roles } else { &user.roles };
    keep_an_admin(state, &c.user_id, active_after && roles_after.iter().any(|r| r == roles::ADMIN))?;

    let user = state.users.get_mut(&c.user_id).ok_or_else(no_such_user)?;
    let before = user.clone();
    if c.set_email {
        user.email = c.email.clone();
    }
    if c.set_roles {
        user.roles = c.roles.clone();
    }
    if let Some(s) = status {
        user.status = s as i32;
    }
    if *user != before {
        user.updated_at = now;
        out.push(put(Table::Users, &user.user_id, user));
    }
    // An admin's word on the status is final: a provider's sign-in no
    // longer enables a user its offboarding had disabled.
    if status.is_some() {
        state.upstream.admin_set_status(&c.user_id, out);
    }
    // A disabled user's sessions end with it, and so do its sign-in links;
    // a link mailed to an address the user no longer has is void.
    if status == Some(UserStatus::Disabled) {
        state.sessions.remove_user(&c.user_id, out);
        // ... and its trusted browsers: re-enabled, it signs in afresh.
        crate::devices::forget_user(state, &c.user_id, out);
    }
    if status == Some(UserStatus::Disabled) || (c.set_email && !c.email.eq_ignore_ascii_case(&before.email)) {
        state.links.remove_user(&c.user_id, out);
    }
    Ok(c.user_id.clone())
}

/// Deletes a user with all of its keys and sessions.
pub(crate) fn delete_user(state: &mut State, c: &DeleteUser, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    let user = state.users.get(&c.user_id).ok_or_else(no_such_user)?;
    keep_an_admin(state, &c.user_id, false)?;
    let username = user.username.clone();
    let mut keys: Vec<String> =
        state.keys.values().filter(|k| k.user_id == c.user_id).map(|k| k.key_id.clone()).collect();
    keys.sort();
    for id in keys {
        state.keys.remove(&id);
        out.push(Mutation::Delete { table: Table::ApiKeys, key: id.into_bytes() });
    }
    state.sessions.remove_user(&c.user_id, out);
    state.links.remove_user(&c.user_id, out);
    state.upstream.remove_user(&c.user_id, out);
    state.factors.remove_user(&c.user_id, out);
    state.usernames.remove(&username);
    state.users.remove(&c.user_id);
    out.push(Mutation::Delete { table: Table::Users, key: c.user_id.clone().into_bytes() });
    Ok(c.user_id.clone())
}

pub(crate) fn assign_role(
    state: &mut State,
    now: u64,
    c: &AssignRole,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    roles::validate_name(&c.role).map_err(ApplyError::Invalid)?;
    if !roles::exists(state, &c.role) {
        return Err(ApplyError::NotFound(format!("role {} does not exist", quote(&c.role))));
    }
    let user = state.users.get_mut(&c.user_id).ok_or_else(no_such_user)?;
    if user.roles.contains(&c.role) {
        return Ok(c.user_id.clone());
    }
    if user.roles.len() >= MAX_ROLES {
        return Err(ApplyError::FailedPrecondition(format!("a user holds at most {MAX_ROLES} roles")));
    }
    user.roles.push(c.role.clone());
    user.updated_at = now;
    out.push(put(Table::Users, &user.user_id, user));
    Ok(c.user_id.clone())
}

/// Takes a role from a user. Keys restricted to that role lose it with the
/// user (see [`crate::keys::verify`]).
pub(crate) fn unassign_role(
    state: &mut State,
    now: u64,
    c: &UnassignRole,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    roles::validate_name(&c.role).map_err(ApplyError::Invalid)?;
    let user = state.users.get(&c.user_id).ok_or_else(no_such_user)?;
    if !user.roles.contains(&c.role) {
        return Err(ApplyError::FailedPrecondition(format!("user does not hold role {}", quote(&c.role))));
    }
    keep_an_admin(state, &c.user_id, c.role != roles::ADMIN && is_active_admin(user))?;
    let user = state.users.get_mut(&c.user_id).ok_or_else(no_such_user)?;
    user.roles.retain(|r| r != &c.role);
    user.updated_at = now;
    out.push(put(Table::Users, &user.user_id, user));
    Ok(c.user_id.clone())
}

pub(crate) fn set_password(
    state: &mut State,
    now: u64,
    c: &SetPassword,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    validate_password_hash(&c.password_hash)?;
    let user = state.users.get_mut(&c.user_id).ok_or_else(no_such_user)?;
    user.password_hash = c.password_hash.clone();
    user.updated_at = now;
    user.failed_logins = 0;
    user.locked_until = 0;
    user.sources.clear();
    out.push(put(Table::Users, &user.user_id, user));
    // A password change ends every session of the user, its unspent
    // sign-in links and its trusted browsers (it often follows a
    // suspected compromise: a planted trust must not outlive it).
    state.sessions.remove_user(&c.user_id, out);
    state.links.remove_user(&c.user_id, out);
    crate::devices::forget_user(state, &c.user_id, out);
    Ok(c.user_id.clone())
}

/// Sources (client address buckets) whose failures a user record keeps;
/// past this, the quietest unlocked source is forgotten first.
pub const MAX_SOURCES: usize = 32;
/// A source's lockout doubles at most this many times (64×).
pub const MAX_BACKOFF_DOUBLINGS: u32 = 6;
/// A source whose last lockout ended this long ago starts from 1× again.
pub const BACKOFF_RESET_MS: u64 = 24 * 3600 * 1000;

/// Counts a failed login. Every node applies the same rule because the
/// proposer stamps the policy into the command.
///
/// With a `source`: at `threshold` failures within `window_ms` that source
/// is locked out of the account for `lockout_ms`, doubled for each lockout
/// in a row (up to 64×); the account as a whole locks only at
/// `user_threshold` failures from all sources together, so an attacker who
/// guesses from one address cannot lock the user out everywhere. Without a
/// source (older proposers): `threshold` locks the account.
pub(crate) fn record_login_failure(
    state: &mut State,
    now: u64,
    c: &RecordLoginFailure,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    if c.threshold == 0 || c.window_ms == 0 || c.lockout_ms == 0 {
        return Err(ApplyError::Invalid("lockout policy values must be positive".into()));
    }
    if c.source.len() > 64 || (!c.source.is_empty() && c.user_threshold < c.threshold) {
        return Err(ApplyError::Invalid("a source needs a user threshold at least the source's".into()));
    }
    let user = state.users.get_mut(&c.user_id).ok_or_else(no_such_user)?;
    let user_threshold = if c.source.is_empty() { c.threshold } else { c.user_threshold };
    if user.failures_since == 0 || user.failures_since.saturating_add(c.window_ms) <= now {
        user.failed_logins = 0;
        user.failures_since = now;
    }
    user.failed_logins += 1;
    if user.failed_logins >= user_threshold {
        user.locked_until = now.saturating_add(c.lockout_ms);
        user.failed_logins = 0;
        user.failures_since = 0;
    }
    let mut locked_until = user.locked_until;
    if !c.source.is_empty() {
        let i = match user.sources.iter().position(|s| s.source == c.source) {
            Some(i) => i,
            None => {
                if user.sources.len() >= MAX_SOURCES {
                    // Forget the quietest source that is not locked (or, all
                    // locked, the one whose lock ends first).
                    let victim = (0..user.sources.len())
                        .min_by_key(|&i| {
                            let s = &user.sources[i];
                            (s.locked_until > now, s.locked_until, s.since)
                        })
                        .expect("the list is full");
                    user.sources.remove(victim);
                }
                user.sources.push(SourceFailures { source: c.source.clone(), ..Default::default() });
                user.sources.len() - 1
            }
        };
        let s = &mut user.sources[i];
        if s.locked_until > now {
            // Already locked out: failures proposed before the lock reached
            // every view must not lock it again and double the back-off.
            out.push(put(Table::Users, &user.user_id, user));
            return Ok(user.locked_until.max(user.sources[i].locked_until).to_string());
        }
        if s.locked_until != 0 && s.locked_until.saturating_add(BACKOFF_RESET_MS) <= now {
            s.lockouts = 0;
        }
        if s.since == 0 || s.since.saturating_add(c.window_ms) <= now {
            s.failures = 0;
            s.since = now;
        }
        s.failures += 1;
        if s.failures >= c.threshold {
            let factor = 1u64 << s.lockouts.min(MAX_BACKOFF_DOUBLINGS);
            s.locked_until = now.saturating_add(c.lockout_ms.saturating_mul(factor));
            s.lockouts += 1;
            s.failures = 0;
            s.since = 0;
        }
        locked_until = locked_until.max(s.locked_until);
    }
    out.push(put(Table::Users, &user.user_id, user));
    Ok(locked_until.to_string())
}

/// Whether the user is locked out at `now` as a whole.
pub fn is_locked(user: &UserRecord, now: u64) -> bool {
    user.locked_until > now
}

/// Whether a login from `source` is locked out at `now`: the account as a
/// whole, or that source for that account.
pub fn is_locked_from(user: &UserRecord, source: &str, now: u64) -> bool {
    is_locked(user, now) || user.sources.iter().any(|s| s.source == source && s.locked_until > now)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gatehouse_proto::events::{command::Payload, command_result::Code, Command};

    pub(crate) fn create_user_cmd(id: &str, name: &str) -> Command {
        Command {
            proposed_at: 1_000,
            payload: Some(Payload::CreateUser(CreateUser {
                user_id: id.into(),
                username: name.into(),
                email: format!("{name}@example.com"),
                password_hash: String::new(),
                roles: vec!["viewer".into()],
            })),
            ..Default::default()
        }
    }

    #[test]
    fn creates_a_user_and_refuses_a_taken_name_without_changing_state() {
        let mut state = State::default();
        let mut out = Vec::new();
        let r = state.apply(1, &create_user_cmd(&"a".repeat(32), "alice"), &mut out);
        assert_eq!(r.code, Code::Ok as i32);
        assert_eq!(out.len(), 1);
        assert_eq!(state.user_by_name("alice").unwrap().user_id, "a".repeat(32));

        out.clear();
        let r = state.apply(2, &create_user_cmd(&"b".repeat(32), "alice"), &mut out);
        assert_eq!(r.code, Code::AlreadyExists as i32);
        assert!(out.is_empty());
        assert!(state.user(&"b".repeat(32)).is_none());
    }

    #[test]
    fn refuses_hostile_input() {
        let mut state = State::default();
        for (id, name) in [
            ("a".repeat(32), "Al"),
            ("a".repeat(32), "ALICE"),
            ("a".repeat(32), "al ice"),
            ("a".repeat(32), "ålice"),
            ("a".repeat(32), &"x".repeat(65)),
            ("xyz".to_string(), "alice"),
            ("A".repeat(32), "alice"),
        ] {
            let r = state.apply(1, &create_user_cmd(&id, name), &mut Vec::new());
            assert_eq!(r.code, Code::Invalid as i32, "{id} {name}");
        }
        let mut cmd = create_user_cmd(&"a".repeat(32), "alice");
        if let Some(Payload::CreateUser(c)) = &mut cmd.payload {
            c.password_hash = "hunter2hunter2".into();
        }
        assert_eq!(state.apply(1, &cmd, &mut Vec::new()).code, Code::Invalid as i32);
        if let Some(Payload::CreateUser(c)) = &mut cmd.payload {
            c.password_hash = String::new();
            c.roles = vec!["root".into()];
        }
        assert_eq!(state.apply(1, &cmd, &mut Vec::new()).code, Code::NotFound as i32);
        assert_eq!(state.users().count(), 0);
    }

    #[test]
    fn failures_lock_the_account_for_the_lockout_period() {
        let mut state = State::default();
        let uid = "a".repeat(32);
        state.apply(1, &create_user_cmd(&uid, "alice"), &mut Vec::new());
        let fail = |at: u64| Command {
            proposed_at: at,
            payload: Some(Payload::RecordLoginFailure(RecordLoginFailure {
                user_id: uid.clone(),
                threshold: 3,
                window_ms: 1_000,
                lockout_ms: 5_000,
                ..Default::default()
            })),
            ..Default::default()
        };
        state.apply(2, &fail(10_000), &mut Vec::new());
        state.apply(3, &fail(10_100), &mut Vec::new());
        assert!(!is_locked(state.user(&uid).unwrap(), 10_200));
        // The window restarts after 1 s: two old failures do not count.
        state.apply(4, &fail(11_500), &mut Vec::new());
        assert!(!is_locked(state.user(&uid).unwrap(), 11_600));
        state.apply(5, &fail(11_600), &mut Vec::new());
        state.apply(6, &fail(11_700), &mut Vec::new());
        assert!(is_locked(state.user(&uid).unwrap(), 11_800));
        assert!(!is_locked(state.user(&uid).unwrap(), 16_700));
        let bad = Command {
            proposed_at: 1,
            payload: Some(Payload::RecordLoginFailure(RecordLoginFailure {
                user_id: uid.clone(),
                threshold: 0,
                window_ms: 1,
                lockout_ms: 1,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(state.apply(7, &bad, &mut Vec::new()).code, Code::Invalid as i32);
    }

    /// One attacker's address locks itself out, with longer lockouts each
    /// time; the user, from anywhere else, keeps logging in until the much
    /// higher per-user ceiling.
    #[test]
    fn failures_lock_a_source_out_progressively_and_the_user_only_at_the_ceiling() {
        let mut state = State::default();
        let uid = "a".repeat(32);
        state.apply(1, &create_user_cmd(&uid, "alice"), &mut Vec::new());
        let fail = |at: u64, source: &str| Command {
            proposed_at: at,
            payload: Some(Payload::RecordLoginFailure(RecordLoginFailure {
                user_id: uid.clone(),
                threshold: 3,
                window_ms: 1_000,
                lockout_ms: 5_000,
                source: source.into(),
                user_threshold: 8,
            })),
            ..Default::default()
        };
        let mut index = 2;
        let mut apply = |state: &mut State, at: u64, source: &str| {
            index += 1;
            state.apply(index, &fail(at, source), &mut Vec::new())
        };
        for at in [10_000, 10_100, 10_200] {
            apply(&mut state, at, "192.0.2.66");
        }
        // Failures proposed before the lock reached every view do not lock again.
        for at in [10_250, 10_260, 10_270] {
            apply(&mut state, at, "192.0.2.66");
        }
        let u = state.user(&uid).unwrap().clone();
        assert!(is_locked_from(&u, "192.0.2.66", 10_300), "the guessing address");
        assert!(!is_locked_from(&u, "198.51.100.7", 10_300), "the user elsewhere");
        assert!(!is_locked_from(&u, "192.0.2.66", 15_200), "1x: 5 s, not doubled by the late failures");
        // The next lockout in a row lasts twice as long, then four times.
        for at in [15_300, 15_400, 15_500] {
            apply(&mut state, at, "192.0.2.66");
        }
        let u = state.user(&uid).unwrap().clone();
        assert!(is_locked_from(&u, "192.0.2.66", 25_400) && !is_locked_from(&u, "192.0.2.66", 25_500));
        // Failures from everywhere together reach the per-user ceiling (8).
        for at in [30_000, 30_010] {
            apply(&mut state, at, "203.0.113.1");
        }
        assert!(!is_locked(state.user(&uid).unwrap(), 30_020));
        for (i, at) in [30_020, 30_030, 30_040, 30_050, 30_060, 30_070].into_iter().enumerate() {
            apply(&mut state, at, &format!("203.0.113.{}", 10 + i));
        }
        assert!(is_locked(state.user(&uid).unwrap(), 30_100), "the ceiling locks the account");
        // A login from an address clears that address's count and back-off.
        state.apply(
            500,
            &Command {
                proposed_at: 40_000,
                payload: Some(Payload::CreateSession(gatehouse_proto::events::CreateSession {
                    session_id: "b".repeat(32),
                    user_id: uid.clone(),
                    token_sha256: vec![1; 32],
                    expires_at: 1_000_000,
                    idle_timeout_ms: 0,
                    client_ip: "192.0.2.66".into(),
                    user_agent: String::new(),
                    factor: None,
                    method: String::new(),
                })),
                ..Default::default()
            },
            &mut Vec::new(),
        );
        assert!(!state.user(&uid).unwrap().sources.iter().any(|s| s.source == "192.0.2.66"));
        // The list of sources stays bounded.
        for i in 0..100u64 {
            apply(&mut state, 100_000 + i, &format!("10.0.{}.{}", i / 250, i % 250));
        }
        assert_eq!(state.user(&uid).unwrap().sources.len(), MAX_SOURCES);
        // A password change forgets them.
        let bad = fail(1, "x");
        if let Some(Payload::RecordLoginFailure(mut c)) = bad.payload {
            c.user_threshold = 1;
            let cmd = Command { proposed_at: 1, payload: Some(Payload::RecordLoginFailure(c)), ..Default::default() };
            assert_eq!(state.apply(999, &cmd, &mut Vec::new()).code, Code::Invalid as i32, "ceiling below threshold");
        }
    }

    #[test]
    fn email_validation() {
        assert!(validate_email("a@b").is_ok());
        for bad in ["", "ab", "@b", "a@", "a b@c", "a@b@c", "é@x.org"] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }

    fn cmd(at: u64, payload: Payload) -> Command {
        Command { proposed_at: at, payload: Some(payload), ..Default::default() }
    }

    fn admin_and_viewer() -> (State, String, String) {
        let mut state = State::default();
        let (admin, viewer) = ("a".repeat(32), "b".repeat(32));
        let mut c = create_user_cmd(&admin, "root");
        if let Some(Payload::CreateUser(u)) = &mut c.payload {
            u.roles = vec![roles::ADMIN.into()];
        }
        state.apply(1, &c, &mut Vec::new());
        state.apply(2, &create_user_cmd(&viewer, "vic"), &mut Vec::new());
        (state, admin, viewer)
    }

    #[test]
    fn update_changes_only_what_is_set_and_refuses_atomically() {
        let (mut state, _, vic) = admin_and_viewer();
        let update = |email: Option<&str>, roles: Option<Vec<&str>>, status: UserStatus| UpdateUser {
            user_id: vic.clone(),
            set_email: email.is_some(),
            email: email.unwrap_or_default().into(),
            set_roles: roles.is_some(),
            roles: roles.unwrap_or_default().into_iter().map(String::from).collect(),
            status: status as i32,
        };
        let r = state.apply(
            3,
            &cmd(5_000, Payload::UpdateUser(update(Some("v@x.org"), None, UserStatus::Unspecified))),
            &mut Vec::new(),
        );
        assert_eq!(r.code, Code::Ok as i32);
        let u = state.user(&vic).unwrap();
        assert_eq!((u.email.as_str(), u.roles.clone(), u.updated_at), ("v@x.org", vec!["viewer".to_string()], 5_000));

        // One bad field refuses the whole update.
        let before = state.user(&vic).unwrap().clone();
        let mut out = Vec::new();
        for bad in [
            update(Some("nope"), Some(vec!["operator"]), UserStatus::Unspecified),
            update(None, Some(vec!["operator", "nosuch"]), UserStatus::Unspecified),
            UpdateUser { status: 99, ..update(Some("w@x.org"), None, UserStatus::Unspecified) },
        ] {
            assert_ne!(state.apply(4, &cmd(6_000, Payload::UpdateUser(bad)), &mut out).code, Code::Ok as i32);
        }
        assert!(out.is_empty());
        assert_eq!(state.user(&vic).unwrap(), &before);

        let r = state.apply(
            5,
            &cmd(7_000, Payload::UpdateUser(update(None, Some(vec!["operator"]), UserStatus::Disabled))),
            &mut Vec::new(),
        );
        assert_eq!(r.code, Code::Ok as i32);
        let u = state.user(&vic).unwrap();
        assert_eq!((u.roles.clone(), u.status), (vec!["operator".to_string()], UserStatus::Disabled as i32));
    }

    #[test]
    fn the_last_active_admin_cannot_be_removed_disabled_or_demoted() {
        let (mut state, root, vic) = admin_and_viewer();
        let refused = [
            Payload::DeleteUser(DeleteUser { user_id: root.clone() }),
            Payload::UnassignRole(UnassignRole { user_id: root.clone(), role: roles::ADMIN.into() }),
            Payload::SetUserStatus(SetUserStatus { user_id: root.clone(), status: UserStatus::Disabled as i32 }),
            Payload::UpdateUser(UpdateUser { user_id: root.clone(), set_roles: true, ..Default::default() }),
        ];
        for p in refused.clone() {
            let r = state.apply(3, &cmd(5_000, p), &mut Vec::new());
            assert_eq!(r.code, Code::FailedPrecondition as i32, "{}", r.message);
        }
        // With a second admin, the first can go.
        let grant = Payload::AssignRole(AssignRole { user_id: vic.clone(), role: roles::ADMIN.into() });
        assert_eq!(state.apply(4, &cmd(5_000, grant.clone()), &mut Vec::new()).code, Code::Ok as i32);
        // Assigning twice is a no-op.
        let mut out = Vec::new();
        assert_eq!(state.apply(5, &cmd(5_000, grant), &mut out).code, Code::Ok as i32);
        assert!(out.iter().all(|m| matches!(m, Mutation::Put { table: Table::Requests, .. })), "{out:?}");
        assert_eq!(state.user(&vic).unwrap().roles, vec!["viewer".to_string(), "admin".to_string()]);
        let r = state.apply(6, &cmd(5_000, refused[1].clone()), &mut Vec::new());
        assert_eq!(r.code, Code::Ok as i32);
        assert_eq!(state.user(&root).unwrap().roles, Vec::<String>::new());
        let r = state.apply(
            7,
            &cmd(5_000, Payload::UnassignRole(UnassignRole { user_id: root.clone(), role: "admin".into() })),
            &mut Vec::new(),
        );
        assert_eq!(r.code, Code::FailedPrecondition as i32, "not held any more");
    }

    #[test]
    fn delete_removes_the_user_with_its_keys_and_sessions() {
        use gatehouse_proto::events::{CreateApiKey, CreateSession};
        let (mut state, _, vic) = admin_and_viewer();
        let key = CreateApiKey {
            key_id: "00112233aabbccdd".into(),
            user_id: vic.clone(),
            name: "k".into(),
            secret_sha256: vec![1; 32],
            expires_at: 0,
            roles: vec![],
            roles_exact: false,
        };
        assert_eq!(state.apply(3, &cmd(2_000, Payload::CreateApiKey(key)), &mut Vec::new()).code, Code::Ok as i32);
        let session = CreateSession {
            session_id: "c".repeat(32),
            user_id: vic.clone(),
            token_sha256: vec![2; 32],
            expires_at: 100_000,
            ..Default::default()
        };
        assert_eq!(state.apply(4, &cmd(2_000, Payload::CreateSession(session)), &mut Vec::new()).code, Code::Ok as i32);

        let mut out = Vec::new();
        let r = state.apply(5, &cmd(3_000, Payload::DeleteUser(DeleteUser { user_id: vic.clone() })), &mut out);
        assert_eq!(r.code, Code::Ok as i32);
        assert!(state.user(&vic).is_none() && state.user_by_name("vic").is_none());
        assert!(state.api_key("00112233aabbccdd").is_none());
        assert_eq!(state.sessions_of(&vic).count(), 0);
        let deletes = out.iter().filter(|m| matches!(m, Mutation::Delete { .. })).count();
        assert_eq!(deletes, 3, "user, key and session records: {out:?}");
        // The name is free again; the id is unknown now.
        assert_eq!(state.apply(6, &create_user_cmd(&"d".repeat(32), "vic"), &mut Vec::new()).code, Code::Ok as i32);
        let r = state.apply(7, &cmd(3_000, Payload::DeleteUser(DeleteUser { user_id: vic })), &mut Vec::new());
        assert_eq!(r.code, Code::NotFound as i32);
    }
}
