//! People who sign in through an upstream OIDC provider (the company's
//! identity provider): their link to a user, the roles the provider's
//! mapping grants, and the one-time values of the flow and of back-channel
//! logout.
//!
//! A user is linked to an upstream identity by the provider's issuer and
//! subject, never by email: an address in an allowed domain, asserted by a
//! provider whose subject belongs to someone else, opens nobody's account.
//! A first sign-in makes the user (when the provider may) or is refused.
//!
//! Roles follow the mapping: at every sign-in and re-check the command
//! carries the roles the mapping grants now. A role the user did not hold
//! before the mapping granted it is remembered as granted; when the mapping
//! stops granting it, it is taken away. A role an admin gave stays (but a
//! mapped role an admin takes away comes back at the next sign-in: the
//! mapping says so). The last active admin keeps `admin` either way.
//!
//! A sign-in spends its flow (the SHA-256 of its `state`) in the same
//! command that opens the session, so a replayed callback, on any node,
//! finds it spent. A logout token's `jti` is spent the same way.

use std::collections::{BTreeSet, HashMap};

use gatehouse_proto::events::{
    CreateSession, CreateUser, Sealed, UpstreamChecked, UpstreamEnd, UpstreamSignIn, UserStatus,
};
use gatehouse_proto::state::{SpentRecord, UpstreamIdentityRecord, UpstreamSessionRef, UserRecord};

use crate::mutation::{Mutation, Table};
use crate::result::ApplyError;
use crate::state::{put, State};
use crate::users::{self, validate_email, validate_id, validate_roles, validate_username, MAX_ROLES};
use crate::{roles, sessions};

/// The longest issuer URL.
pub const MAX_ISSUER: usize = 512;
/// The longest subject (OIDC Core: at most 255 ASCII characters).
pub const MAX_SUBJECT: usize = 255;
/// The longest provider id (config).
pub const MAX_PROVIDER: usize = 32;
/// The longest upstream session id.
pub const MAX_SID: usize = 255;
/// The largest sealed secret (a refresh token is a few hundred bytes).
pub const MAX_SEALED: usize = 8192;
/// The longest a flow or a logout token may be kept as spent.
pub const MAX_SPENT_MS: u64 = 7 * 24 * 3_600_000;
/// Sessions opened through a provider that an identity remembers (with
/// their upstream session ids), newest kept.
pub const MAX_SESSIONS: usize = 32;

/// The refusal of a flow that was spent already.
pub const FLOW_USED: &str = "this sign-in was completed already";
/// The refusal of a subject linked to nobody, when the provider makes no users.
pub const NOT_LINKED: &str = "no user is linked to this upstream identity";
/// The refusal of a logout token whose `jti` was spent already.
pub const TOKEN_USED: &str = "this logout token was used already";
/// The refusal of a first sign-in whose username another user holds.
pub const USERNAME_TAKEN: &str = "the username for this upstream identity is taken";
/// The refusal of a first sign-in whose address another user holds.
pub const EMAIL_TAKEN: &str = "the address of this upstream identity belongs to another user";

/// Upstream identities and spent one-time values, indexed.
#[derive(Debug, Default)]
pub(crate) struct Upstream {
    /// `issuer\nsubject` → record.
    by_key: HashMap<String, UpstreamIdentityRecord>,
    /// user id → its identities' keys.
    by_user: HashMap<String, BTreeSet<String>>,
    spent: HashMap<[u8; 32], u64>,
    /// (drop time, hash), soonest first.
    by_drop: BTreeSet<(u64, [u8; 32])>,
}

/// The key of an identity: issuer and subject, which hold no newline.
pub fn identity_key(issuer: &str, subject: &str) -> String {
    format!("{issuer}\n{subject}")
}

impl Upstream {
    pub(crate) fn insert_identity(&mut self, r: UpstreamIdentityRecord) {
        let key = identity_key(&r.issuer, &r.subject);
        self.by_user.entry(r.user_id.clone()).or_default().insert(key.clone());
        self.by_key.insert(key, r);
    }

    /// Adds a stored spent value; false if its hash is malformed.
    pub(crate) fn insert_spent(&mut self, r: SpentRecord) -> bool {
        let Ok(h) = <[u8; 32]>::try_from(r.sha256.as_slice()) else { return false };
        self.spent.insert(h, r.drop_at);
        self.by_drop.insert((r.drop_at, h));
        true
    }

    pub(crate) fn spend(&mut self, h: [u8; 32], drop_at: u64, out: &mut Vec<Mutation>) {
        let r = SpentRecord { sha256: h.to_vec(), drop_at };
        out.push(Mutation::Put { table: Table::Spent, key: h.to_vec(), value: crate::codec::encode(&r) });
        self.insert_spent(r);
    }

    pub(crate) fn is_spent(&self, h: &[u8; 32]) -> bool {
        self.spent.contains_key(h)
    }

    /// Forgets spent values that can no longer be presented.
    pub(crate) fn prune(&mut self, now: u64, out: &mut Vec<Mutation>) {
        while let Some(&(at, h)) = self.by_drop.first() {
            if at > now {
                break;
            }
            self.by_drop.remove(&(at, h));
            self.spent.remove(&h);
            out.push(Mutation::Delete { table: Table::Spent, key: h.to_vec() });
        }
    }

    fn store(&mut self, r: UpstreamIdentityRecord, out: &mut Vec<Mutation>) {
        let key = identity_key(&r.issuer, &r.subject);
        out.push(put(Table::UpstreamIdentities, &key, &r));
        self.insert_identity(r);
    }

    /// Drops a deleted user's links to upstream identities.
    pub(crate) fn remove_user(&mut self, user_id: &str, out: &mut Vec<Mutation>) {
        for key in self.by_user.remove(user_id).unwrap_or_default() {
            self.by_key.remove(&key);
            out.push(Mutation::Delete { table: Table::UpstreamIdentities, key: key.into_bytes() });
        }
    }

    /// An admin set the user's status: the provider no longer decides it
    /// (a sign-in through it enables only a user its own offboarding disabled).
    pub(crate) fn admin_set_status(&mut self, user_id: &str, out: &mut Vec<Mutation>) {
        let keys: Vec<String> = self.by_user.get(user_id).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        for key in keys {
            if let Some(mut r) = self.by_key.get(&key).cloned().filter(|r| r.disabled_user) {
                r.disabled_user = false;
                self.store(r, out);
            }
        }
    }

    pub(crate) fn get(&self, issuer: &str, subject: &str) -> Option<&UpstreamIdentityRecord> {
        self.by_key.get(&identity_key(issuer, subject))
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &UpstreamIdentityRecord> {
        self.by_key.values()
    }

    pub(crate) fn of_user<'a>(&'a self, user_id: &str) -> impl Iterator<Item = &'a UpstreamIdentityRecord> + 'a {
        let keys = self.by_user.get(user_id).into_iter().flatten();
        keys.filter_map(|k| self.by_key.get(k))
    }
}

fn short(what: &str, value: &str, max: usize) -> Result<(), ApplyError> {
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(ApplyError::Invalid(format!("{what} must be at most {max} bytes, without control characters")));
    }
    Ok(())
}

fn sealed(s: &Option<Sealed>) -> Result<(), ApplyError> {
    match s {
        Some(s) if s.key_id.len() > 64 || s.nonce.len() != 12 || s.ciphertext.len() > MAX_SEALED => {
            Err(ApplyError::Invalid("a sealed secret is malformed".into()))
        }
        _ => Ok(()),
    }
}

fn role_list(list: &[String]) -> Result<(), ApplyError> {
    if list.len() > MAX_ROLES {
        return Err(ApplyError::Invalid(format!("at most {MAX_ROLES} roles")));
    }
    list.iter().try_for_each(|r| short("role", r, roles::MAX_NAME))
}

/// The per-field bounds of the upstream commands (see [`crate::bounds`]).
pub fn check_sign_in(c: &UpstreamSignIn) -> Result<(), ApplyError> {
    short("provider", &c.provider, MAX_PROVIDER)?;
    short("issuer", &c.issuer, MAX_ISSUER)?;
    short("subject", &c.subject, MAX_SUBJECT)?;
    short("upstream session id", &c.upstream_sid, MAX_SID)?;
    short("username", &c.username, 64)?;
    short("email", &c.email, 254)?;
    role_list(&c.mapped_roles)?;
    sealed(&c.refresh_token)
}

/// The per-field bounds of [`UpstreamChecked`].
pub fn check_checked(c: &UpstreamChecked) -> Result<(), ApplyError> {
    short("issuer", &c.issuer, MAX_ISSUER)?;
    short("subject", &c.subject, MAX_SUBJECT)?;
    role_list(&c.mapped_roles)?;
    sealed(&c.refresh_token)
}

/// The per-field bounds of one resealed refresh token.
pub fn check_resealed(t: &gatehouse_proto::events::ResealedToken) -> Result<(), ApplyError> {
    short("issuer", &t.issuer, MAX_ISSUER)?;
    short("subject", &t.subject, MAX_SUBJECT)?;
    if t.refresh_token.is_none() || t.previous_nonce.len() > 12 {
        return Err(ApplyError::Invalid("a resealed token is malformed".into()));
    }
    sealed(&t.refresh_token)
}

/// Moves refresh tokens to their new sealing, each only while it is still
/// the one the proposer opened; how many moved.
pub(crate) fn reseal(
    state: &mut State,
    tokens: &[gatehouse_proto::events::ResealedToken],
    out: &mut Vec<Mutation>,
) -> usize {
    let mut moved = 0;
    for t in tokens {
        let Some(mut identity) = state.upstream.get(&t.issuer, &t.subject).cloned() else { continue };
        if identity.refresh_token.as_ref().is_none_or(|s| s.nonce != t.previous_nonce) {
            continue;
        }
        identity.refresh_token = t.refresh_token.clone();
        state.upstream.store(identity, out);
        moved += 1;
    }
    moved
}

/// The per-field bounds of [`UpstreamEnd`].
pub fn check_end(c: &UpstreamEnd) -> Result<(), ApplyError> {
    short("issuer", &c.issuer, MAX_ISSUER)?;
    short("subject", &c.subject, MAX_SUBJECT)?;
    short("upstream session id", &c.upstream_sid, MAX_SID)?;
    if c.token_sha256.len() > 32 {
        return Err(ApplyError::Invalid("token hash must be 32 bytes".into()));
    }
    Ok(())
}

fn nonempty(what: &str, value: &str) -> Result<(), ApplyError> {
    if value.is_empty() {
        return Err(ApplyError::Invalid(format!("{what} is missing")));
    }
    Ok(())
}

fn hash32(what: &str, bytes: &[u8]) -> Result<[u8; 32], ApplyError> {
    bytes.try_into().map_err(|_| ApplyError::Invalid(format!("{what} hash must be 32 bytes")))
}

/// `user`'s roles after the mapping grants `mapped`, and the roles granted
/// only by it: returns (roles, granted). `keep_admin`: this user must keep
/// `admin` (the last active admin).
fn remap(user: &UserRecord, granted: &[String], mapped: &[String], keep_admin: bool) -> (Vec<String>, Vec<String>) {
    let mut roles = user.roles.clone();
    let mut still = Vec::new();
    for r in granted {
        if mapped.contains(r) || (keep_admin && r == roles::ADMIN) {
            if roles.contains(r) {
                still.push(r.clone());
            }
        } else {
            roles.retain(|x| x != r);
        }
    }
    for r in mapped {
        if !roles.contains(r) {
            roles.push(r.clone());
            still.push(r.clone());
        }
    }
    (roles, still)
}

/// Whether a user other than `user_id` holds `email` (in any letter case).
fn email_taken(state: &State, user_id: &str, email: &str) -> bool {
    state.users.values().any(|u| u.user_id != user_id && u.email.eq_ignore_ascii_case(email))
}

/// Whether taking `admin` from `user_id` would leave no active admin.
fn last_admin(state: &State, user_id: &str) -> bool {
    let active_admin =
        |u: &UserRecord| u.status == UserStatus::Active as i32 && u.roles.iter().any(|r| r == roles::ADMIN);
    state.users.get(user_id).is_some_and(active_admin)
        && !state.users.values().any(|u| u.user_id != user_id && active_admin(u))
}

/// Writes `user_id`'s roles as the mapping leaves them; the roles granted
/// only by it. Checked first, so a refusal changes nothing.
fn apply_mapping(
    state: &mut State,
    now: u64,
    user_id: &str,
    granted: &[String],
    mapped: &[String],
    out: &mut Vec<Mutation>,
) -> Result<Vec<String>, ApplyError> {
    let user = state.users.get(user_id).ok_or_else(|| ApplyError::NotFound("no such user".into()))?;
    let (roles, still) = remap(user, granted, mapped, last_admin(state, user_id));
    if roles.len() > MAX_ROLES {
        return Err(ApplyError::FailedPrecondition(format!("a user holds at most {MAX_ROLES} roles")));
    }
    let user = state.users.get_mut(user_id).expect("looked up above");
    if user.roles != roles {
        user.roles = roles;
        user.updated_at = now;
        out.push(put(Table::Users, &user.user_id, user));
    }
    Ok(still)
}

/// Applies [`UpstreamSignIn`]; the result's id is the user signed in.
pub(crate) fn sign_in(
    state: &mut State,
    now: u64,
    c: &UpstreamSignIn,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    nonempty("provider", &c.provider)?;
    nonempty("issuer", &c.issuer)?;
    nonempty("subject", &c.subject)?;
    let flow = hash32("flow", &c.flow_sha256)?;
    if c.flow_expires_at <= now || c.flow_expires_at - now > MAX_SPENT_MS {
        return Err(ApplyError::Invalid("the flow's expiry must be within a week from now".into()));
    }
    let session = c.session.as_ref().ok_or_else(|| ApplyError::Invalid("a sign-in opens a session".into()))?;
    if state.upstream.is_spent(&flow) {
        return Err(ApplyError::FailedPrecondition(FLOW_USED.into()));
    }
    validate_roles(state, &c.mapped_roles)?;
    if !c.email.is_empty() {
        validate_email(&c.email)?;
    }
    sessions::check_new(state, now, session)?;

    // The linked user, or the one to make; every check before any write.
    let linked = state.upstream.get(&c.issuer, &c.subject).cloned();
    let user_id = match &linked {
        Some(l) => {
            let user = state.users.get(&l.user_id).ok_or_else(|| ApplyError::NotFound("no such user".into()))?;
            if user.status != UserStatus::Active as i32 && !l.disabled_user {
                return Err(ApplyError::FailedPrecondition("user is disabled".into()));
            }
            l.user_id.clone()
        }
        None => {
            if c.new_user_id.is_empty() {
                return Err(ApplyError::NotFound(NOT_LINKED.into()));
            }
            validate_id("user", &c.new_user_id)?;
            validate_username(&c.username)?;
            if state.usernames.contains_key(&c.username) {
                return Err(ApplyError::AlreadyExists(USERNAME_TAKEN.into()));
            }
            if state.users.contains_key(&c.new_user_id) {
                return Err(ApplyError::AlreadyExists("user id already exists".into()));
            }
            // Addresses are never how accounts are found, and a second
            // account with someone's address would make theirs ambiguous.
            if email_taken(state, &c.new_user_id, &c.email) {
                return Err(ApplyError::AlreadyExists(EMAIL_TAKEN.into()));
            }
            c.new_user_id.clone()
        }
    };
    let grown = state.users.get(&user_id).map_or(0, |u| u.roles.len()) + c.mapped_roles.len();
    if grown > MAX_ROLES && linked.is_none() {
        return Err(ApplyError::FailedPrecondition(format!("a user holds at most {MAX_ROLES} roles")));
    }

    if linked.is_none() {
        let create = CreateUser {
            user_id: user_id.clone(),
            username: c.username.clone(),
            email: c.email.clone(),
            ..Default::default()
        };
        users::create(state, now, &create, out)?;
    }
    let mut identity = linked.unwrap_or_else(|| UpstreamIdentityRecord {
        issuer: c.issuer.clone(),
        subject: c.subject.clone(),
        user_id: user_id.clone(),
        linked_at: now,
        ..Default::default()
    });
    let granted = apply_mapping(state, now, &user_id, &identity.granted_roles, &c.mapped_roles, out)?;
    // A new address another user holds is not taken over (the old one stays).
    let held = state.users.get(&user_id).map(|u| u.email.clone()).unwrap_or_default();
    let new_email =
        !c.email.is_empty() && !c.email.eq_ignore_ascii_case(&held) && !email_taken(state, &user_id, &c.email);
    let user = state.users.get_mut(&user_id).expect("made or found above");
    let mut changed = false;
    if identity.disabled_user && user.status != UserStatus::Active as i32 {
        // The provider lets the person in again: so do we.
        user.status = UserStatus::Active as i32;
        changed = true;
    }
    if new_email {
        user.email = c.email.clone();
        changed = true;
    }
    if changed {
        user.updated_at = now;
        out.push(put(Table::Users, &user.user_id, user));
    }
    if new_email {
        state.links.remove_user(&user_id, out);
    }
    // A provider is a first factor here: a user with a second one owes it.
    let opened = CreateSession { user_id: user_id.clone(), factor: None, method: "sso".into(), ..session.clone() };
    sessions::create(state, now, &opened, out)?;
    state.upstream.spend(flow, c.flow_expires_at, out);

    identity.provider = c.provider.clone();
    identity.signed_in_at = now;
    identity.checked_at = now;
    identity.granted_roles = granted;
    // A sign-in without a refresh token keeps the one held: older
    // sessions are still asked about with it.
    if c.refresh_token.is_some() {
        identity.refresh_token = c.refresh_token.clone();
    }
    identity.ended = false;
    identity.disabled_user = false;
    identity.sessions.retain(|s| state.sessions.contains(&s.session_id));
    identity
        .sessions
        .push(UpstreamSessionRef { session_id: session.session_id.clone(), upstream_sid: c.upstream_sid.clone() });
    // Past the remembered few, the oldest sessions end: none escapes a
    // logout of its provider session.
    let excess = identity.sessions.len().saturating_sub(MAX_SESSIONS);
    for old in identity.sessions.drain(..excess) {
        if let Some(id) = sessions::id128(&old.session_id) {
            state.sessions.remove(id, out);
        }
    }
    state.upstream.store(identity, out);
    Ok(user_id)
}

/// Applies [`UpstreamChecked`]: the mapping again, the new refresh token.
pub(crate) fn checked(
    state: &mut State,
    now: u64,
    c: &UpstreamChecked,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    let mut identity =
        state.upstream.get(&c.issuer, &c.subject).cloned().ok_or_else(|| ApplyError::NotFound(NOT_LINKED.into()))?;
    if identity.ended {
        return Err(ApplyError::FailedPrecondition("the provider ended this identity's sessions".into()));
    }
    let active = state.users.get(&identity.user_id).is_some_and(|u| u.status == UserStatus::Active as i32);
    if !active {
        return Err(ApplyError::FailedPrecondition("user is disabled".into()));
    }
    if !c.keep_roles {
        validate_roles(state, &c.mapped_roles)?;
        identity.granted_roles =
            apply_mapping(state, now, &identity.user_id, &identity.granted_roles, &c.mapped_roles, out)?;
    }
    identity.checked_at = now;
    if c.refresh_token.is_some() {
        identity.refresh_token = c.refresh_token.clone();
    }
    let user_id = identity.user_id.clone();
    state.upstream.store(identity, out);
    Ok(user_id)
}

/// Applies [`UpstreamEnd`]; the result's id is how many sessions ended.
pub(crate) fn end(state: &mut State, now: u64, c: &UpstreamEnd, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    nonempty("issuer", &c.issuer)?;
    if c.subject.is_empty() && c.upstream_sid.is_empty() {
        return Err(ApplyError::Invalid("a subject or an upstream session id is needed".into()));
    }
    let token = if c.token_sha256.is_empty() {
        None
    } else {
        if c.token_expires_at <= now || c.token_expires_at - now > MAX_SPENT_MS {
            return Err(ApplyError::Invalid("the token's expiry must be within a week from now".into()));
        }
        Some(hash32("token", &c.token_sha256)?)
    };
    if token.is_some_and(|t| state.upstream.is_spent(&t)) {
        return Err(ApplyError::FailedPrecondition(TOKEN_USED.into()));
    }
    let matches_sid = |i: &UpstreamIdentityRecord| {
        c.upstream_sid.is_empty() || i.sessions.iter().any(|s| s.upstream_sid == c.upstream_sid)
    };
    let mut found: Vec<UpstreamIdentityRecord> = if c.subject.is_empty() {
        let mut all: Vec<_> =
            state.upstream.all().filter(|i| i.issuer == c.issuer && matches_sid(i)).cloned().collect();
        all.sort_by(|a, b| a.subject.cmp(&b.subject));
        all
    } else {
        state.upstream.get(&c.issuer, &c.subject).filter(|i| matches_sid(i)).cloned().into_iter().collect()
    };
    let mut ended = 0usize;
    for identity in &mut found {
        if c.upstream_sid.is_empty() {
            ended += state.sessions.remove_user(&identity.user_id, out);
            state.links.remove_user(&identity.user_id, out);
            identity.sessions.clear();
            identity.ended = true;
            identity.refresh_token = None;
            let may_disable = c.disable_user && !last_admin(state, &identity.user_id);
            if let Some(user) = state.users.get_mut(&identity.user_id).filter(|_| may_disable) {
                if user.status == UserStatus::Active as i32 {
                    user.status = UserStatus::Disabled as i32;
                    user.updated_at = now;
                    out.push(put(Table::Users, &user.user_id, user));
                    identity.disabled_user = true;
                }
            }
        } else {
            let (gone, kept): (Vec<_>, Vec<_>) =
                identity.sessions.drain(..).partition(|s| s.upstream_sid == c.upstream_sid);
            identity.sessions = kept;
            for s in gone {
                let removed = sessions::id128(&s.session_id).is_some_and(|id| state.sessions.remove(id, out));
                ended += usize::from(removed);
            }
        }
        state.upstream.store(identity.clone(), out);
    }
    if let Some(t) = token {
        state.upstream.spend(t, c.token_expires_at, out);
    }
    Ok(ended.to_string())
}

/// The identities whose provider should be asked again: a refresh token
/// is held, the user is active (with a session or not: its API keys count
/// too), and the last word is `interval_ms` old; the longest waiting first.
pub fn due(state: &State, now: u64, interval_ms: u64) -> Vec<UpstreamIdentityRecord> {
    let active = |i: &&UpstreamIdentityRecord| {
        state.users.get(&i.user_id).is_some_and(|u| u.status == UserStatus::Active as i32)
    };
    let mut due: Vec<_> = state
        .upstream
        .all()
        .filter(|i| !i.ended && i.refresh_token.is_some())
        .filter(|i| i.checked_at.saturating_add(interval_ms) <= now)
        .filter(active)
        .cloned()
        .collect();
    due.sort_by_key(|i| i.checked_at);
    due
}

/// Whether a logout token with this `jti` hash was used already.
pub fn token_spent(state: &State, token_sha256: &[u8; 32]) -> bool {
    state.upstream.is_spent(token_sha256)
}

/// Whether the flow with this `state` hash was completed already.
pub fn flow_spent(state: &State, flow_sha256: &[u8; 32]) -> bool {
    state.upstream.is_spent(flow_sha256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_proto::events::{
        command::Payload, command_result::Code, Command, CommandResult, PutRole, SetUserStatus,
    };

    const ISS: &str = "https://idp.example.com";
    const T0: u64 = 1_000_000;

    fn cmd(at: u64, payload: Payload) -> Command {
        Command { proposed_at: at, payload: Some(payload), ..Default::default() }
    }

    fn run(state: &mut State, c: Command) -> (CommandResult, Vec<Mutation>) {
        let mut out = Vec::new();
        let r = state.apply(1, &c, &mut out);
        (r, out)
    }

    fn ok(state: &mut State, c: Command) -> String {
        let (r, _) = run(state, c);
        assert_eq!(r.code, Code::Ok as i32, "{}", r.message);
        r.id
    }

    fn sign_in(sub: &str, flow: u8, session: u8, user: &str, roles: &[&str], at: u64) -> Command {
        cmd(
            at,
            Payload::UpstreamSignIn(UpstreamSignIn {
                provider: "corp".into(),
                issuer: ISS.into(),
                subject: sub.into(),
                flow_sha256: vec![flow; 32],
                flow_expires_at: at + 600_000,
                new_user_id: user.into(),
                username: format!("ann-{sub}"),
                email: format!("{sub}@example.com"),
                mapped_roles: roles.iter().map(|r| r.to_string()).collect(),
                session: Some(CreateSession {
                    session_id: format!("{session:032x}"),
                    token_sha256: vec![session; 32],
                    expires_at: at + 3_600_000,
                    ..Default::default()
                }),
                refresh_token: Some(Sealed { key_id: "k1".into(), nonce: vec![0; 12], ciphertext: vec![1; 40] }),
                upstream_sid: format!("sid-{session}"),
            }),
        )
    }

    fn create_user_cmd(id: &str, name: &str, roles: &[&str]) -> Command {
        let create = CreateUser {
            user_id: id.into(),
            username: name.into(),
            email: format!("{name}@example.com"),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        cmd(T0, Payload::CreateUser(create))
    }

    fn user_id(n: u8) -> String {
        format!("{n:032x}")
    }

    fn new_state() -> State {
        let mut s = State::default();
        let version = gatehouse_proto::events::SetClusterVersion { version: crate::version::COMMAND_VERSION };
        ok(&mut s, cmd(1_000, Payload::SetClusterVersion(version)));
        s
    }

    fn with_admin() -> State {
        let mut s = new_state();
        ok(&mut s, create_user_cmd("ffffffffffffffffffffffffffffffff", "root", &["admin"]));
        s
    }

    #[test]
    fn a_first_sign_in_makes_the_user_and_a_second_finds_it() {
        let mut s = with_admin();
        assert_eq!(ok(&mut s, sign_in("s1", 1, 1, &user_id(1), &["viewer"], T0)), user_id(1));
        let u = s.user(&user_id(1)).unwrap();
        assert_eq!((u.username.as_str(), u.roles.clone()), ("ann-s1", vec!["viewer".to_string()]));
        assert!(u.password_hash.is_empty());
        // The next sign-in names another new id: the link wins.
        assert_eq!(ok(&mut s, sign_in("s1", 2, 2, &user_id(9), &["viewer"], T0 + 1)), user_id(1));
        assert!(s.user(&user_id(9)).is_none());
        assert_eq!(s.sessions_of(&user_id(1)).count(), 2);
    }

    #[test]
    fn a_flow_is_spent_once_and_a_refusal_changes_nothing() {
        let mut s = with_admin();
        ok(&mut s, sign_in("s1", 1, 1, &user_id(1), &[], T0));
        let (r, out) = run(&mut s, sign_in("s1", 1, 2, &user_id(1), &[], T0 + 1));
        assert_eq!((r.code, r.message.as_str()), (Code::FailedPrecondition as i32, FLOW_USED));
        assert!(out.iter().all(|m| matches!(m, Mutation::Put { table: Table::Requests, .. })), "{out:?}");
        assert_eq!(s.sessions_of(&user_id(1)).count(), 1);
        // Once the flow could no longer be presented, its record goes.
        let (_, out) = run(&mut s, sign_in("s1", 3, 3, &user_id(1), &[], T0 + 600_001));
        assert!(out.iter().any(|m| matches!(m, Mutation::Delete { table: Table::Spent, .. })));
    }

    #[test]
    fn an_unlinked_subject_never_takes_an_account_by_email_or_name() {
        let mut s = with_admin();
        ok(&mut s, create_user_cmd(&user_id(5), "ann-s2", &[]));
        // Same username as an existing local user: refused, not linked.
        let (r, _) = run(&mut s, sign_in("s2", 1, 1, &user_id(6), &[], T0));
        assert_eq!((r.code, r.message.as_str()), (Code::AlreadyExists as i32, USERNAME_TAKEN));
        assert!(s.sessions_of(&user_id(5)).next().is_none() && s.user(&user_id(6)).is_none());
        // A provider that makes no users: refused.
        let (r, _) = run(&mut s, sign_in("s3", 2, 2, "", &[], T0));
        assert_eq!((r.code, r.message.as_str()), (Code::NotFound as i32, NOT_LINKED));
    }

    #[test]
    fn roles_follow_the_mapping_and_admin_grants_stay() {
        let mut s = with_admin();
        let dev =
            PutRole { name: "dev".into(), permissions: vec!["users.read".into()], create: true, ..Default::default() };
        ok(&mut s, cmd(T0, Payload::PutRole(dev)));
        ok(&mut s, sign_in("s1", 1, 1, &user_id(1), &["viewer", "dev"], T0));
        // An admin gives `operator` by hand.
        ok(
            &mut s,
            cmd(
                T0,
                Payload::AssignRole(gatehouse_proto::events::AssignRole {
                    user_id: user_id(1),
                    role: "operator".into(),
                }),
            ),
        );
        // The group that gave `dev` is gone.
        ok(&mut s, sign_in("s1", 2, 2, &user_id(1), &["viewer"], T0 + 1));
        let roles = &s.user(&user_id(1)).unwrap().roles;
        assert_eq!(roles, &vec!["viewer".to_string(), "operator".to_string()]);
        // A re-check with no groups at all takes `viewer` too, not `operator`.
        let checked = UpstreamChecked { issuer: ISS.into(), subject: "s1".into(), ..Default::default() };
        ok(&mut s, cmd(T0 + 2, Payload::UpstreamChecked(checked)));
        assert_eq!(s.user(&user_id(1)).unwrap().roles, vec!["operator".to_string()]);
        // A role the user held before the mapping granted it stays when the mapping drops it.
        ok(&mut s, sign_in("s1", 3, 3, &user_id(1), &["operator"], T0 + 3));
        ok(&mut s, sign_in("s1", 4, 4, &user_id(1), &[], T0 + 4));
        assert_eq!(s.user(&user_id(1)).unwrap().roles, vec!["operator".to_string()]);
    }

    #[test]
    fn the_last_admin_keeps_admin_when_the_mapping_drops_it() {
        let mut s = new_state();
        ok(&mut s, sign_in("s1", 1, 1, &user_id(1), &["admin"], T0));
        ok(&mut s, sign_in("s1", 2, 2, &user_id(1), &[], T0 + 1));
        assert_eq!(s.user(&user_id(1)).unwrap().roles, vec!["admin".to_string()]);
        ok(&mut s, create_user_cmd(&user_id(2), "root", &["admin"]));
        ok(&mut s, sign_in("s1", 3, 3, &user_id(1), &[], T0 + 2));
        assert!(s.user(&user_id(1)).unwrap().roles.is_empty());
    }

    #[test]
    fn an_end_by_subject_ends_every_session_and_offboards() {
        let mut s = with_admin();
        ok(&mut s, sign_in("s1", 1, 1, &user_id(1), &[], T0));
        ok(&mut s, sign_in("s1", 2, 2, &user_id(1), &[], T0));
        let end = UpstreamEnd { issuer: ISS.into(), subject: "s1".into(), disable_user: true, ..Default::default() };
        assert_eq!(ok(&mut s, cmd(T0 + 1, Payload::UpstreamEnd(end))), "2");
        assert_eq!(s.sessions_of(&user_id(1)).count(), 0);
        assert_eq!(s.user(&user_id(1)).unwrap().status, UserStatus::Disabled as i32);
        assert!(due(&s, T0 + 10_000_000, 1).is_empty());
        // Let in again by the provider: enabled again.
        ok(&mut s, sign_in("s1", 3, 3, &user_id(1), &[], T0 + 2));
        assert_eq!(s.user(&user_id(1)).unwrap().status, UserStatus::Active as i32);
        // Disabled by an admin: the provider does not overrule that.
        ok(&mut s, cmd(T0 + 3, Payload::SetUserStatus(SetUserStatus { user_id: user_id(1), status: 2 })));
        let (r, _) = run(&mut s, sign_in("s1", 4, 4, &user_id(1), &[], T0 + 4));
        assert_eq!(r.code, Code::FailedPrecondition as i32);
        // Nor when the admin disables it again after the provider did.
        ok(&mut s, cmd(T0 + 5, Payload::SetUserStatus(SetUserStatus { user_id: user_id(1), status: 1 })));
        let end = UpstreamEnd { issuer: ISS.into(), subject: "s1".into(), disable_user: true, ..Default::default() };
        ok(&mut s, cmd(T0 + 6, Payload::UpstreamEnd(end)));
        assert!(s.upstream.get(ISS, "s1").unwrap().disabled_user);
        ok(&mut s, cmd(T0 + 7, Payload::SetUserStatus(SetUserStatus { user_id: user_id(1), status: 2 })));
        let (r, _) = run(&mut s, sign_in("s1", 6, 6, &user_id(1), &[], T0 + 8));
        assert_eq!(r.code, Code::FailedPrecondition as i32, "the admin's disable holds");
    }

    #[test]
    fn a_logout_by_sid_ends_only_that_session_and_its_token_once() {
        let mut s = with_admin();
        ok(&mut s, sign_in("s1", 1, 1, &user_id(1), &[], T0));
        ok(&mut s, sign_in("s1", 2, 2, &user_id(1), &[], T0));
        let end = UpstreamEnd {
            issuer: ISS.into(),
            upstream_sid: "sid-1".into(),
            token_sha256: vec![9; 32],
            token_expires_at: T0 + 60_000,
            ..Default::default()
        };
        assert_eq!(ok(&mut s, cmd(T0 + 1, Payload::UpstreamEnd(end.clone()))), "1");
        assert!(s.session(&format!("{:032x}", 1)).is_none() && s.session(&format!("{:032x}", 2)).is_some());
        let (r, _) = run(&mut s, cmd(T0 + 2, Payload::UpstreamEnd(end)));
        assert_eq!((r.code, r.message.as_str()), (Code::FailedPrecondition as i32, TOKEN_USED));
        assert_eq!(s.user(&user_id(1)).unwrap().status, UserStatus::Active as i32);
    }

    #[test]
    fn re_checks_are_due_for_identities_with_a_token_and_a_session() {
        let mut s = with_admin();
        ok(&mut s, sign_in("s1", 1, 1, &user_id(1), &[], T0));
        assert!(due(&s, T0 + 59_999, 60_000).is_empty());
        assert_eq!(due(&s, T0 + 60_000, 60_000).len(), 1);
        let checked = UpstreamChecked { issuer: ISS.into(), subject: "s1".into(), ..Default::default() };
        ok(&mut s, cmd(T0 + 60_000, Payload::UpstreamChecked(checked)));
        assert!(due(&s, T0 + 60_001, 60_000).is_empty());
        // The token is kept when a re-check brings none.
        assert!(s.upstream.get(ISS, "s1").unwrap().refresh_token.is_some());
        // Without a session the person is still asked about (their keys count).
        let revoke = gatehouse_proto::events::RevokeUserSessions { user_id: user_id(1) };
        ok(&mut s, cmd(T0, Payload::RevokeUserSessions(revoke)));
        assert_eq!(due(&s, T0 + 1_000_000, 60_000).len(), 1);
        // A sign-in without a refresh token keeps the one held.
        let mut no_token = sign_in("s1", 5, 5, &user_id(1), &[], T0 + 1_000_001);
        if let Some(Payload::UpstreamSignIn(c)) = &mut no_token.payload {
            c.refresh_token = None;
        }
        ok(&mut s, no_token);
        assert!(s.upstream.get(ISS, "s1").unwrap().refresh_token.is_some());
        // A disabled user is not asked about.
        ok(&mut s, cmd(T0, Payload::SetUserStatus(SetUserStatus { user_id: user_id(1), status: 2 })));
        assert!(due(&s, T0 + 9_000_000, 60_000).is_empty());
    }

    #[test]
    fn an_address_another_user_holds_is_never_taken() {
        let mut s = with_admin();
        ok(&mut s, create_user_cmd(&user_id(5), "bob", &[]));
        // A first sign-in with bob's address (any case), another username.
        let mut theirs = sign_in("s9", 1, 1, &user_id(6), &[], T0);
        if let Some(Payload::UpstreamSignIn(c)) = &mut theirs.payload {
            c.email = "BOB@example.com".into();
        }
        let (r, _) = run(&mut s, theirs);
        assert_eq!((r.code, r.message.as_str()), (Code::AlreadyExists as i32, EMAIL_TAKEN));
        assert!(s.user(&user_id(6)).is_none());
        // A linked user whose provider now says bob's address keeps its own.
        ok(&mut s, sign_in("s1", 2, 2, &user_id(1), &[], T0));
        let mut moved = sign_in("s1", 3, 3, &user_id(1), &[], T0 + 1);
        if let Some(Payload::UpstreamSignIn(c)) = &mut moved.payload {
            c.email = "bob@example.com".into();
        }
        ok(&mut s, moved);
        assert_eq!(s.user(&user_id(1)).unwrap().email, "s1@example.com");
    }

    #[test]
    fn a_check_without_claims_keeps_the_roles() {
        let mut s = with_admin();
        ok(&mut s, sign_in("s1", 1, 1, &user_id(1), &["viewer"], T0));
        // An admin takes the mapped role away; a check that brought no
        // claims does not bring it back.
        let unassign = gatehouse_proto::events::UnassignRole { user_id: user_id(1), role: "viewer".into() };
        ok(&mut s, cmd(T0, Payload::UnassignRole(unassign)));
        let checked =
            UpstreamChecked { issuer: ISS.into(), subject: "s1".into(), keep_roles: true, ..Default::default() };
        ok(&mut s, cmd(T0 + 1, Payload::UpstreamChecked(checked)));
        assert!(s.user(&user_id(1)).unwrap().roles.is_empty());
    }

    #[test]
    fn the_oldest_sessions_past_the_remembered_few_end() {
        let mut s = with_admin();
        for n in 0..(MAX_SESSIONS as u8 + 2) {
            ok(&mut s, sign_in("s1", n + 1, n + 1, &user_id(1), &[], T0 + n as u64));
        }
        assert_eq!(s.sessions_of(&user_id(1)).count(), MAX_SESSIONS);
        assert!(s.session(&format!("{:032x}", 1)).is_none() && s.session(&format!("{:032x}", 2)).is_none());
    }

    #[test]
    fn a_deleted_user_takes_its_links_along() {
        let mut s = with_admin();
        ok(&mut s, sign_in("s1", 1, 1, &user_id(1), &[], T0));
        ok(&mut s, cmd(T0, Payload::DeleteUser(gatehouse_proto::events::DeleteUser { user_id: user_id(1) })));
        assert!(s.upstream.get(ISS, "s1").is_none());
        // The subject signs in again: a new user.
        assert_eq!(ok(&mut s, sign_in("s1", 2, 2, &user_id(2), &[], T0 + 1)), user_id(2));
    }

    #[test]
    fn records_survive_a_reload() {
        let mut s = with_admin();
        let mut out = Vec::new();
        s.apply(1, &sign_in("s1", 1, 1, &user_id(1), &["viewer"], T0), &mut out);
        let mut loaded = new_state();
        for m in &out {
            if let Mutation::Put { table, value, .. } = m {
                if matches!(table, Table::UpstreamIdentities | Table::Spent) {
                    loaded.load(*table, value).unwrap();
                }
            }
        }
        assert_eq!(loaded.upstream.get(ISS, "s1"), s.upstream.get(ISS, "s1"));
        assert!(flow_spent(&loaded, &[1; 32]));
    }
}
