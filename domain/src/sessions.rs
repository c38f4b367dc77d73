//! Sessions: a 256-bit random token in a cookie, stored as its SHA-256, with
//! an absolute expiry and an idle timeout.
//!
//! Last use is tracked per node and flushed in coalesced `RecordUse`
//! commands (see [`crate::usage`]); verification takes the later of the replicated `last_seen` and
//! the node's own, so idle expiry holds cluster-wide without one log write
//! per request. Expired sessions are dropped deterministically as log time
//! passes their absolute expiry.

use std::collections::{BTreeSet, HashMap};

use gatehouse_proto::events::{CreateSession, RevokeSession, RevokeUserSessions, UserStatus};
use gatehouse_proto::state::SessionRecord;

use crate::factors;
use crate::mutation::{Mutation, Table};
use crate::result::ApplyError;
use crate::state::{put, State};
use crate::users::validate_id;

/// Prefix of session tokens.
pub const TOKEN_PREFIX: &str = "gs_";
/// A whole token: `gs_` + 43 characters of base64url (256 bits).
pub const TOKEN_LEN: usize = 3 + 43;
/// Longest user agent kept.
pub const MAX_USER_AGENT: usize = 512;

/// A 128-bit id from its 32-character lowercase hex form.
pub(crate) fn id128(id: &str) -> Option<u128> {
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| u128::from_str_radix(id, 16).ok())
        .flatten()
}

pub(crate) fn hex128(id: u128) -> String {
    format!("{id:032x}")
}

/// The 32-character hex form of an id, on the stack (for lookups on the
/// verification path, which should not allocate).
fn hex128_buf(id: u128) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = DIGITS[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    buf
}

/// A session as the view keeps it: ids as integers, so a million sessions
/// fit comfortably in memory (the protobuf record, with its id strings, is
/// what is stored and listed).
#[derive(Debug, Clone)]
struct Session {
    user: u128,
    token: [u8; 32],
    created_at: u64,
    expires_at: u64,
    idle_timeout_ms: u64,
    last_seen: u64,
    client_ip: Box<str>,
    user_agent: Box<str>,
    /// The second factor is still owed ([`crate::factors`]).
    factor_due: bool,
    /// The latest second factor presented ("" for none) and when.
    factor: &'static str,
    factor_at: u64,
    /// While the factor is due: the expiry it was opened with.
    intended_expires_at: u64,
    /// How the first factor was given ([`METHODS`]; "" unrecorded).
    method: &'static str,
}

/// A factor name as sessions keep it (an unknown one is none).
fn factor_name(name: &str) -> &'static str {
    match name {
        factors::TOTP => factors::TOTP,
        factors::RECOVERY => factors::RECOVERY,
        factors::PASSKEY => factors::PASSKEY,
        factors::DEVICE => factors::DEVICE,
        _ => "",
    }
}

impl Session {
    fn record(&self, id: u128) -> SessionRecord {
        SessionRecord {
            session_id: hex128(id),
            user_id: hex128(self.user),
            token_sha256: self.token.to_vec(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            idle_timeout_ms: self.idle_timeout_ms,
            last_seen: self.last_seen,
            client_ip: self.client_ip.to_string(),
            user_agent: self.user_agent.to_string(),
            factor_due: self.factor_due,
            factor: self.factor.to_string(),
            factor_at: self.factor_at,
            intended_expires_at: self.intended_expires_at,
            method: self.method.to_string(),
        }
    }
}

/// Sessions and their indexes.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_id: HashMap<u128, Session>,
    by_token: HashMap<[u8; 32], u128>,
    by_user: HashMap<u128, BTreeSet<u128>>,
    /// (absolute expiry, session id), soonest first.
    by_expiry: BTreeSet<(u64, u128)>,
}

impl Sessions {
    /// Adds a stored record; false if its ids or token hash are malformed.
    pub(crate) fn insert(&mut self, r: SessionRecord) -> bool {
        let (Some(id), Some(user), Ok(token)) =
            (id128(&r.session_id), id128(&r.user_id), <[u8; 32]>::try_from(r.token_sha256.as_slice()))
        else {
            return false;
        };
        self.by_token.insert(token, id);
        self.by_user.entry(user).or_default().insert(id);
        self.by_expiry.insert((r.expires_at, id));
        let s = Session {
            user,
            token,
            created_at: r.created_at,
            expires_at: r.expires_at,
            idle_timeout_ms: r.idle_timeout_ms,
            last_seen: r.last_seen,
            client_ip: r.client_ip.into(),
            user_agent: r.user_agent.into(),
            factor_due: r.factor_due,
            factor: factor_name(&r.factor),
            factor_at: r.factor_at,
            intended_expires_at: r.intended_expires_at,
            method: METHODS.iter().find(|m| **m == r.method).copied().unwrap_or(""),
        };
        self.by_id.insert(id, s);
        true
    }

    pub(crate) fn remove(&mut self, id: u128, out: &mut Vec<Mutation>) -> bool {
        let Some(s) = self.by_id.remove(&id) else { return false };
        self.by_token.remove(&s.token);
        if let Some(set) = self.by_user.get_mut(&s.user) {
            set.remove(&id);
            if set.is_empty() {
                self.by_user.remove(&s.user);
            }
        }
        self.by_expiry.remove(&(s.expires_at, id));
        out.push(Mutation::Delete { table: Table::Sessions, key: hex128(id).into_bytes() });
        true
    }

    /// Drops every session of a user; returns how many.
    pub(crate) fn remove_user(&mut self, user_id: &str, out: &mut Vec<Mutation>) -> usize {
        let Some(user) = id128(user_id) else { return 0 };
        let ids: Vec<u128> = self.by_user.get(&user).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for id in &ids {
            self.remove(*id, out);
        }
        ids.len()
    }

    /// Drops every session; returns how many.
    pub(crate) fn remove_all(&mut self, out: &mut Vec<Mutation>) -> usize {
        let ids: Vec<u128> = self.by_id.keys().copied().collect();
        let n = ids.len();
        for id in ids {
            self.remove(id, out);
        }
        n
    }

    /// Every session, in no particular order.
    pub(crate) fn all(&self) -> impl Iterator<Item = SessionRecord> + '_ {
        self.by_id.iter().map(|(id, s)| s.record(*id))
    }

    /// Drops sessions whose absolute expiry log time has passed.
    pub(crate) fn prune(&mut self, now: u64, out: &mut Vec<Mutation>) {
        while let Some(&(at, id)) = self.by_expiry.first() {
            if at > now {
                break;
            }
            self.remove(id, out);
        }
    }

    /// Moves a session's last use forward; the mutation if it changed.
    pub(crate) fn used(&mut self, session_id: &str, at: u64) -> Option<Mutation> {
        let id = id128(session_id)?;
        let s = self.by_id.get_mut(&id)?;
        if at <= s.last_seen {
            return None;
        }
        s.last_seen = at;
        Some(put(Table::Sessions, session_id, &s.record(id)))
    }

    /// Whether a session holds this token hash.
    pub(crate) fn token_taken(&self, token: &[u8; 32]) -> bool {
        self.by_token.contains_key(token)
    }

    /// Notes a second factor presented on a session at `now` (`factor`
    /// as of `at`); `token`: a waiting session's new token and expiry.
    pub(crate) fn set_factor(
        &mut self,
        session_id: &str,
        factor: &str,
        at: u64,
        now: u64,
        token: Option<([u8; 32], u64)>,
        out: &mut Vec<Mutation>,
    ) {
        let Some(id) = id128(session_id) else { return };
        let Some(s) = self.by_id.get_mut(&id) else { return };
        s.factor = factor_name(factor);
        s.factor_at = at;
        s.last_seen = s.last_seen.max(now);
        if let Some((token, expires_at)) = token {
            self.by_token.remove(&s.token);
            self.by_token.insert(token, id);
            self.by_expiry.remove(&(s.expires_at, id));
            self.by_expiry.insert((expires_at, id));
            s.token = token;
            s.expires_at = expires_at;
            s.factor_due = false;
            s.intended_expires_at = 0;
        }
        out.push(put(Table::Sessions, session_id, &s.record(id)));
    }

    pub(crate) fn get(&self, session_id: &str) -> Option<SessionRecord> {
        let id = id128(session_id)?;
        self.by_id.get(&id).map(|s| s.record(id))
    }

    /// How a session's first factor was given and when it opened, without
    /// building its record (the JWT path reads it per request).
    pub(crate) fn origin(&self, session_id: &str) -> Option<(&'static str, u64)> {
        let s = self.by_id.get(&id128(session_id)?)?;
        Some((s.method, s.created_at))
    }

    pub(crate) fn contains(&self, session_id: &str) -> bool {
        id128(session_id).is_some_and(|id| self.by_id.contains_key(&id))
    }

    pub(crate) fn of_user(&self, user_id: &str) -> impl Iterator<Item = SessionRecord> + '_ {
        let ids = id128(user_id).and_then(|u| self.by_user.get(&u));
        ids.into_iter().flatten().filter_map(|id| self.by_id.get(id).map(|s| s.record(*id)))
    }
}

/// The checks of a new session that need no user: ids, sizes, expiry, and
/// that neither its id nor its token is taken. (A command that makes the
/// user and its session in one step checks these before it writes.)
pub(crate) fn check_new(state: &State, now: u64, c: &CreateSession) -> Result<(), ApplyError> {
    validate_id("session", &c.session_id)?;
    if c.token_sha256.len() != 32 {
        return Err(ApplyError::Invalid("token hash must be 32 bytes".into()));
    }
    if c.expires_at <= now {
        return Err(ApplyError::Invalid("expiry must be in the future".into()));
    }
    if c.client_ip.len() > 64 || c.user_agent.len() > MAX_USER_AGENT {
        return Err(ApplyError::Invalid("client ip or user agent too long".into()));
    }
    if state.sessions.contains(&c.session_id) {
        return Err(ApplyError::AlreadyExists("session id already exists".into()));
    }
    let hash: [u8; 32] = c.token_sha256.as_slice().try_into().expect("length checked");
    if state.sessions.by_token.contains_key(&hash) {
        return Err(ApplyError::AlreadyExists("session token already exists".into()));
    }
    Ok(())
}

pub(crate) fn create(
    state: &mut State,
    now: u64,
    c: &CreateSession,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    check_new(state, now, c)?;
    // Checked (and kept) only once every node does: older builds ignore the field.
    let recorded = state.cluster_version() >= crate::signing::VERSION;
    if recorded && !METHODS.contains(&c.method.as_str()) {
        return Err(ApplyError::Invalid("a session's method is pwd, passkey, link or sso".into()));
    }
    if id128(&c.user_id).is_none() {
        return Err(ApplyError::Invalid("user id must be 32 lowercase hex characters".into()));
    }
    let user = state.users.get(&c.user_id).ok_or_else(|| ApplyError::NotFound("no such user".into()))?;
    if user.status != UserStatus::Active as i32 {
        return Err(ApplyError::FailedPrecondition("user is disabled".into()));
    }
    // A second factor checked with the first is spent here; a user who
    // has one and did not present it gets a session that owes it.
    let spent = match &c.factor {
        Some(proof) => Some(factors::check_proof(state, now, &c.user_id, proof)?),
        None => None,
    };
    // ... and so does one whose role requires a factor it has not enrolled
    // (it can pay only by enrolling, with a ticket).
    let due = spent.is_none() && (state.factors.enrolled(&c.user_id) || factors::required(state, &c.user_id));
    if let Some(spent) = &spent {
        factors::spend(state, now, &c.user_id, spent, out);
    }
    let (factor, factor_at) = spent.map(|s| (s.factor().to_string(), s.at(now))).unwrap_or_default();
    let method = if recorded { c.method.clone() } else { String::new() };
    let user = state.users.get_mut(&c.user_id).expect("looked up above");
    // A successful login ends the run of failures, the account's and its
    // address's (back-off included).
    let source = c.client_ip.parse().ok().map(|ip| crate::limits::bucket_ip(ip).to_string());
    let from_source = |s: &gatehouse_proto::state::SourceFailures| Some(&s.source) == source.as_ref();
    if user.failed_logins != 0 || user.sources.iter().any(from_source) {
        user.failed_logins = 0;
        user.failures_since = 0;
        user.sources.retain(|s| !from_source(s));
        out.push(put(Table::Users, &user.user_id, user));
    }
    let s = SessionRecord {
        session_id: c.session_id.clone(),
        user_id: c.user_id.clone(),
        token_sha256: c.token_sha256.clone(),
        created_at: now,
        expires_at: if due { c.expires_at.min(now + factors::DUE_MS) } else { c.expires_at },
        idle_timeout_ms: c.idle_timeout_ms,
        last_seen: now,
        client_ip: c.client_ip.clone(),
        user_agent: c.user_agent.clone(),
        factor_due: due,
        factor,
        factor_at,
        intended_expires_at: if due { c.expires_at } else { 0 },
        method,
    };
    out.push(put(Table::Sessions, &s.session_id, &s));
    state.sessions.insert(s);
    Ok(c.session_id.clone())
}

/// How a session's first factor may be given (empty: not recorded).
pub const METHODS: [&str; 5] = ["", "pwd", "passkey", "link", "sso"];

pub(crate) fn revoke(state: &mut State, c: &RevokeSession, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    let removed = id128(&c.session_id).is_some_and(|id| state.sessions.remove(id, out));
    if !removed {
        return Err(ApplyError::NotFound("no such session".into()));
    }
    Ok(c.session_id.clone())
}

pub(crate) fn revoke_user(
    state: &mut State,
    c: &RevokeUserSessions,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    if !state.users.contains_key(&c.user_id) {
        return Err(ApplyError::NotFound("no such user".into()));
    }
    let n = state.sessions.remove_user(&c.user_id, out);
    state.links.remove_user(&c.user_id, out);
    Ok(n.to_string())
}

/// Emergency: ends every session in the cluster; the result id is the count.
pub(crate) fn revoke_all(state: &mut State, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    state.links.remove_all(out);
    Ok(state.sessions.remove_all(out).to_string())
}

/// Splits out a well-formed session token; `None` unless the form is exact.
pub fn parse_token(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    (token.len() == TOKEN_LEN && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .then_some(token)
}

/// The stored form of a session token.
pub fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Why a session was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionRejected {
    #[error("malformed session token")]
    Malformed,
    #[error("unknown session")]
    Unknown,
    #[error("session expired")]
    Expired,
    #[error("session idle too long")]
    Idle,
    #[error("user disabled")]
    UserDisabled,
    #[error("the session still owes its second factor")]
    FactorDue,
}

/// Who a valid session speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionIdentity {
    pub session_id: String,
    pub user_id: String,
    pub username: String,
    pub roles: Vec<String>,
    /// The latest second factor presented on the session ("" for none) and when.
    pub factor: &'static str,
    pub factor_at: u64,
}

/// Checks a presented session token at `now`; `local_seen` is this node's
/// own latest use of the session not yet flushed to the log (0 if none).
pub fn verify(
    state: &State,
    token: &str,
    now: u64,
    local_seen: impl Fn(&str) -> u64,
) -> Result<SessionIdentity, SessionRejected> {
    check(state, token, now, local_seen, false)
}

/// Checks a presented token of a session that still owes its second
/// factor (the one thing such a token is good for: presenting it).
pub fn verify_due(state: &State, token: &str, now: u64) -> Result<SessionIdentity, SessionRejected> {
    check(state, token, now, |_| 0, true)
}

fn check(
    state: &State,
    token: &str,
    now: u64,
    local_seen: impl Fn(&str) -> u64,
    due: bool,
) -> Result<SessionIdentity, SessionRejected> {
    let token = parse_token(token).ok_or(SessionRejected::Malformed)?;
    let sessions = &state.sessions;
    let id = *sessions.by_token.get(&token_hash(token)).ok_or(SessionRejected::Unknown)?;
    let s = sessions.by_id.get(&id).ok_or(SessionRejected::Unknown)?;
    if s.expires_at <= now {
        return Err(SessionRejected::Expired);
    }
    if s.factor_due != due {
        return Err(if due { SessionRejected::Unknown } else { SessionRejected::FactorDue });
    }
    let session_id = hex128(id);
    if s.idle_timeout_ms != 0 {
        let seen = s.last_seen.max(local_seen(&session_id));
        if now.saturating_sub(seen) > s.idle_timeout_ms {
            return Err(SessionRejected::Idle);
        }
    }
    let user_id = hex128_buf(s.user);
    let user_id = std::str::from_utf8(&user_id).expect("hex digits are ASCII");
    let user = state.user(user_id).ok_or(SessionRejected::Unknown)?;
    if user.status != UserStatus::Active as i32 {
        return Err(SessionRejected::UserDisabled);
    }
    // A role that requires a second factor takes effect at once: a session
    // without one no longer serves its holder.
    if !due && s.factor.is_empty() && factors::required(state, user_id) {
        return Err(SessionRejected::FactorDue);
    }
    Ok(SessionIdentity {
        session_id,
        user_id: user.user_id.clone(),
        username: user.username.clone(),
        roles: user.roles.clone(),
        factor: s.factor,
        factor_at: s.factor_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::tests::create_user_cmd;
    use gatehouse_proto::events::{
        command::Payload, command_result::Code, record_use::Use, Command, RecordUse, SetPassword, SetUserStatus,
    };

    const TOKEN: &str = "gs_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

    fn session_cmd(sid: &str, uid: &str, token: &str, at: u64) -> Command {
        Command {
            proposed_at: at,
            payload: Some(Payload::CreateSession(CreateSession {
                session_id: sid.into(),
                user_id: uid.into(),
                token_sha256: token_hash(token).to_vec(),
                expires_at: at + 10_000,
                idle_timeout_ms: 1_000,
                client_ip: "127.0.0.1".into(),
                user_agent: "test".into(),
                factor: None,
                method: String::new(),
            })),
            ..Default::default()
        }
    }

    fn state_with_session() -> State {
        let mut state = State::default();
        state.apply(1, &create_user_cmd(&"a".repeat(32), "ann"), &mut Vec::new());
        let r = state.apply(2, &session_cmd(&"5".repeat(32), &"a".repeat(32), TOKEN, 1_000), &mut Vec::new());
        assert_eq!(r.code, Code::Ok as i32, "{r:?}");
        state
    }

    #[test]
    fn ids_round_trip_through_both_hex_forms() {
        for id in [0u128, 1, u128::MAX, 0x0123_4567_89ab_cdef_0011_2233_4455_6677] {
            assert_eq!(std::str::from_utf8(&hex128_buf(id)).unwrap(), hex128(id));
            assert_eq!(id128(&hex128(id)), Some(id));
        }
        assert_eq!(id128("ABCDEF0123456789abcdef0123456789"), None, "uppercase is not an id");
    }

    #[test]
    fn verify_expiry_and_idle_timeout() {
        let state = state_with_session();
        let none = |_: &str| 0;
        assert_eq!(verify(&state, TOKEN, 1_500, none).unwrap().username, "ann");
        assert_eq!(verify(&state, TOKEN, 2_001, none), Err(SessionRejected::Idle));
        // A use this node saw but has not flushed yet keeps it alive.
        assert!(verify(&state, TOKEN, 2_001, |_| 1_900).is_ok());
        assert_eq!(verify(&state, TOKEN, 11_000, |_| 10_999), Err(SessionRejected::Expired));
        assert_eq!(verify(&state, "gs_short", 1_500, none), Err(SessionRejected::Malformed));
        let other = "gs_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq";
        assert_eq!(verify(&state, other, 1_500, none), Err(SessionRejected::Unknown));
    }

    #[test]
    fn touches_advance_last_seen_only_forward() {
        let mut state = state_with_session();
        let sid = "5".repeat(32);
        let touch = |at: u64| Command {
            proposed_at: at,
            payload: Some(Payload::RecordUse(RecordUse { sessions: vec![Use { id: sid.clone(), at }], keys: vec![] })),
            ..Default::default()
        };
        state.apply(3, &touch(1_800), &mut Vec::new());
        assert!(verify(&state, TOKEN, 2_700, |_| 0).is_ok());
        let mut out = Vec::new();
        state.apply(4, &touch(1_500), &mut out);
        assert!(out.is_empty(), "an older touch changes nothing");
    }

    #[test]
    fn password_change_and_disabling_revoke_every_session() {
        let mut state = state_with_session();
        let uid = "a".repeat(32);
        let second = "gs_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";
        state.apply(3, &session_cmd(&"6".repeat(32), &uid, second, 1_000), &mut Vec::new());
        assert_eq!(state.sessions_of(&uid).count(), 2);
        let set_pw = Command {
            proposed_at: 1_100,
            payload: Some(Payload::SetPassword(SetPassword {
                user_id: uid.clone(),
                password_hash: "$argon2id$v=19$x".into(),
            })),
            ..Default::default()
        };
        assert_eq!(state.apply(4, &set_pw, &mut Vec::new()).code, Code::Ok as i32);
        assert_eq!(state.sessions_of(&uid).count(), 0);
        assert_eq!(verify(&state, TOKEN, 1_200, |_| 0), Err(SessionRejected::Unknown));

        state.apply(5, &session_cmd(&"7".repeat(32), &uid, TOKEN, 1_200), &mut Vec::new());
        let disable = Command {
            proposed_at: 1_300,
            payload: Some(Payload::SetUserStatus(SetUserStatus {
                user_id: uid.clone(),
                status: UserStatus::Disabled as i32,
            })),
            ..Default::default()
        };
        state.apply(6, &disable, &mut Vec::new());
        assert_eq!(state.sessions_of(&uid).count(), 0);
        // No new session for a disabled user.
        let r = state.apply(7, &session_cmd(&"8".repeat(32), &uid, second, 1_400), &mut Vec::new());
        assert_eq!(r.code, Code::FailedPrecondition as i32);
    }

    #[test]
    fn expired_sessions_are_pruned_as_log_time_passes() {
        let mut state = state_with_session();
        let mut later = create_user_cmd(&"b".repeat(32), "bob");
        later.proposed_at = 20_000;
        let mut out = Vec::new();
        state.apply(3, &later, &mut out);
        assert!(state.session(&"5".repeat(32)).is_none());
        assert!(out.contains(&Mutation::Delete { table: Table::Sessions, key: "5".repeat(32).into_bytes() }));
    }

    #[test]
    fn refuses_bad_sessions() {
        let mut state = state_with_session();
        let uid = "a".repeat(32);
        // Same token again, unknown user, expired at birth.
        let dup = state.apply(3, &session_cmd(&"9".repeat(32), &uid, TOKEN, 1_000), &mut Vec::new());
        assert_eq!(dup.code, Code::AlreadyExists as i32);
        let orphan = state.apply(4, &session_cmd(&"9".repeat(32), &"c".repeat(32), "gs_x", 1_000), &mut Vec::new());
        assert_eq!(orphan.code, Code::NotFound as i32);
        let mut born_dead = session_cmd(&"9".repeat(32), &uid, "gs_y", 1_000);
        if let Some(Payload::CreateSession(c)) = &mut born_dead.payload {
            c.expires_at = 900;
        }
        assert_eq!(state.apply(5, &born_dead, &mut Vec::new()).code, Code::Invalid as i32);
        assert_eq!(state.sessions_of(&uid).count(), 1);
    }
}
