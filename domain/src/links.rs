//! Sign-in links ("magic links"): a 256-bit token mailed to a user, stored
//! as its SHA-256, spent once cluster-wide through the log.
//!
//! A link is bound to the browser that asked for it: the log holds the
//! SHA-256 of a secret in that browser's cookie, and a spend must present
//! the same (a forwarded mail signs no stranger in). Spending removes the
//! link and opens a session in the same command, so of two spends on two
//! nodes at the same moment, the log orders one first and the other finds
//! nothing. A refused spend (expired, another browser) leaves the link as
//! it was.
//!
//! A user holds at most `max_live` links made in the last hour or still
//! unexpired (the command carries the limit the voter was configured
//! with): that is the per-address limit on mail, exact across the cluster.
//! Links are kept an hour past their expiry, so a late spend is told
//! "expired", then dropped as log time passes. A user's links end with its
//! sessions (disabled, deleted, password changed, sessions revoked) and
//! when its address changes.

use std::collections::{BTreeSet, HashMap};

use gatehouse_proto::events::{CreateSession, CreateSignInLink, SpendSignInLink, UserStatus};
use gatehouse_proto::state::SignInLinkRecord;

use crate::mutation::{Mutation, Table};
use crate::result::ApplyError;
use crate::state::{put, State};
use crate::users::validate_id;

/// Prefix of link tokens.
pub const TOKEN_PREFIX: &str = "gl_";
/// A whole token: `gl_` + 43 characters of base64url (256 bits).
pub const TOKEN_LEN: usize = 3 + 43;
/// The most links a user may be allowed to hold at once.
pub const MAX_LIVE: u32 = 10;
/// The longest a link may live.
pub const MAX_TTL_MS: u64 = 24 * 3_600_000;
/// How long an expired link is kept to be told apart from an unknown one.
pub const KEPT_AFTER_EXPIRY_MS: u64 = 3_600_000;

/// The refusal of a spend past the link's expiry.
pub const EXPIRED: &str = "sign-in link expired";
/// The refusal of a spend from a browser other than the one that asked.
pub const OTHER_BROWSER: &str = "sign-in link was asked for in another browser";
/// The refusal of a spend of a link that is not (or no longer) there.
pub const UNKNOWN: &str = "no such sign-in link";
/// The refusal of a link for a user who holds as many as allowed.
pub const TOO_MANY: &str = "this user holds as many sign-in links as allowed";
/// How far back links count toward a user's limit.
pub const LIMIT_WINDOW_MS: u64 = 3_600_000;

/// Unspent links and their indexes.
#[derive(Debug, Default)]
pub(crate) struct Links {
    by_token: HashMap<[u8; 32], SignInLinkRecord>,
    by_id: HashMap<String, [u8; 32]>,
    by_user: HashMap<String, BTreeSet<String>>,
    /// (when it is dropped, link id), soonest first.
    by_drop: BTreeSet<(u64, String)>,
}

impl Links {
    /// Adds a stored record; false if its token hash is malformed.
    pub(crate) fn insert(&mut self, r: SignInLinkRecord) -> bool {
        let Ok(token) = <[u8; 32]>::try_from(r.token_sha256.as_slice()) else { return false };
        self.by_id.insert(r.link_id.clone(), token);
        self.by_user.entry(r.user_id.clone()).or_default().insert(r.link_id.clone());
        self.by_drop.insert((r.expires_at.saturating_add(KEPT_AFTER_EXPIRY_MS), r.link_id.clone()));
        self.by_token.insert(token, r);
        true
    }

    fn remove(&mut self, link_id: &str, out: &mut Vec<Mutation>) {
        let Some(token) = self.by_id.remove(link_id) else { return };
        let Some(r) = self.by_token.remove(&token) else { return };
        if let Some(set) = self.by_user.get_mut(&r.user_id) {
            set.remove(link_id);
            if set.is_empty() {
                self.by_user.remove(&r.user_id);
            }
        }
        self.by_drop.remove(&(r.expires_at.saturating_add(KEPT_AFTER_EXPIRY_MS), r.link_id));
        out.push(Mutation::Delete { table: Table::SignInLinks, key: link_id.as_bytes().to_vec() });
    }

    /// Drops links an hour past their expiry.
    pub(crate) fn prune(&mut self, now: u64, out: &mut Vec<Mutation>) {
        while let Some((at, id)) = self.by_drop.first().cloned() {
            if at > now {
                break;
            }
            self.remove(&id, out);
        }
    }

    /// How many of `user_id`'s links count toward its limit at `now`:
    /// made in the last hour, or not yet expired.
    pub(crate) fn counted(&self, user_id: &str, now: u64) -> usize {
        let ids = self.by_user.get(user_id).into_iter().flatten();
        ids.filter_map(|id| self.by_id.get(id).and_then(|t| self.by_token.get(t)))
            .filter(|r| r.expires_at > now || r.created_at + LIMIT_WINDOW_MS > now)
            .count()
    }

    /// The link with this token hash, if stored.
    pub(crate) fn get(&self, token_sha256: &[u8; 32]) -> Option<&SignInLinkRecord> {
        self.by_token.get(token_sha256)
    }

    /// Drops every link of a user.
    pub(crate) fn remove_user(&mut self, user_id: &str, out: &mut Vec<Mutation>) {
        let ids: Vec<String> = self.by_user.get(user_id).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        for id in ids {
            self.remove(&id, out);
        }
    }

    /// Drops every link.
    pub(crate) fn remove_all(&mut self, out: &mut Vec<Mutation>) {
        let mut ids: Vec<String> = self.by_id.keys().cloned().collect();
        ids.sort();
        for id in ids {
            self.remove(&id, out);
        }
    }

    /// How many links are stored.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_token.len()
    }
}

fn hash32(what: &str, bytes: &[u8]) -> Result<[u8; 32], ApplyError> {
    bytes.try_into().map_err(|_| ApplyError::Invalid(format!("{what} hash must be 32 bytes")))
}

pub(crate) fn create(
    state: &mut State,
    now: u64,
    c: &CreateSignInLink,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    validate_id("link", &c.link_id)?;
    validate_id("user", &c.user_id)?;
    let token = hash32("token", &c.token_sha256)?;
    hash32("browser", &c.browser_sha256)?;
    if c.expires_at <= now || c.expires_at - now > MAX_TTL_MS {
        return Err(ApplyError::Invalid("a sign-in link must expire within 24 hours from now".into()));
    }
    if c.max_live == 0 || c.max_live > MAX_LIVE {
        return Err(ApplyError::Invalid(format!("max_live must be 1 to {MAX_LIVE}")));
    }
    let user = state.users.get(&c.user_id).ok_or_else(|| ApplyError::NotFound("no such user".into()))?;
    if user.status != UserStatus::Active as i32 {
        return Err(ApplyError::FailedPrecondition("user is disabled".into()));
    }
    if state.links.by_id.contains_key(&c.link_id) || state.links.by_token.contains_key(&token) {
        return Err(ApplyError::AlreadyExists("sign-in link already exists".into()));
    }
    if state.links.counted(&c.user_id, now) >= c.max_live as usize {
        return Err(ApplyError::Limited(TOO_MANY.into()));
    }
    let r = SignInLinkRecord {
        link_id: c.link_id.clone(),
        user_id: c.user_id.clone(),
        token_sha256: c.token_sha256.clone(),
        browser_sha256: c.browser_sha256.clone(),
        created_at: now,
        expires_at: c.expires_at,
    };
    out.push(put(Table::SignInLinks, &r.link_id, &r));
    state.links.insert(r);
    Ok(c.link_id.clone())
}

/// Spends a link and opens its session; the result id is the session's.
pub(crate) fn spend(
    state: &mut State,
    now: u64,
    c: &SpendSignInLink,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    let token = hash32("token", &c.token_sha256)?;
    hash32("browser", &c.browser_sha256)?;
    let session = c.session.as_ref().ok_or_else(|| ApplyError::Invalid("a spend opens a session".into()))?;
    let link = check_spend(state, &token, &c.browser_sha256, now)?;
    let link_id = link.link_id.clone();
    // A link is a first factor: a user with a second one owes it.
    let opened =
        CreateSession { user_id: link.user_id.clone(), factor: None, method: "link".into(), ..session.clone() };
    let session_id = crate::sessions::create(state, now, &opened, out)?;
    state.links.remove(&link_id, out);
    Ok(session_id)
}

/// Whether the link with `token` could be spent by `browser` at `now`: the
/// checks of apply, which a node also makes on its own view before it
/// proposes (a forged or stale token costs no log write).
pub fn check_spend<'a>(
    state: &'a State,
    token: &[u8; 32],
    browser_sha256: &[u8],
    now: u64,
) -> Result<&'a SignInLinkRecord, ApplyError> {
    let link = state.links.get(token).ok_or_else(|| ApplyError::NotFound(UNKNOWN.into()))?;
    if link.expires_at <= now {
        return Err(ApplyError::FailedPrecondition(EXPIRED.into()));
    }
    if link.browser_sha256 != browser_sha256 {
        return Err(ApplyError::FailedPrecondition(OTHER_BROWSER.into()));
    }
    Ok(link)
}

/// Whether `user_id` may be given one more link at `now` (apply's limit,
/// checked on a node's own view before proposing).
pub fn may_ask(state: &State, user_id: &str, max_live: u32, now: u64) -> bool {
    state.links.counted(user_id, now) < max_live as usize
}

/// Splits out a well-formed link token; `None` unless the form is exact.
pub fn parse_token(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    (token.len() == TOKEN_LEN && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::token_hash;
    use crate::users::tests::create_user_cmd;
    use gatehouse_proto::events::{command::Payload, command_result::Code, Command, CommandResult, SetUserStatus};

    const USER: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const TOKEN: &str = "gl_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";
    const BROWSER: [u8; 32] = [7; 32];
    const TTL: u64 = 15 * 60_000;

    fn cmd(at: u64, payload: Payload) -> Command {
        Command { proposed_at: at, payload: Some(payload), ..Default::default() }
    }

    fn link(n: u8, token: &str, at: u64) -> Command {
        cmd(
            at,
            Payload::CreateSignInLink(CreateSignInLink {
                link_id: format!("{n:032x}"),
                user_id: USER.into(),
                token_sha256: token_hash(token).to_vec(),
                browser_sha256: BROWSER.to_vec(),
                expires_at: at + TTL,
                max_live: 3,
            }),
        )
    }

    fn spend(token: &str, browser: [u8; 32], session: u8, at: u64) -> Command {
        cmd(
            at,
            Payload::SpendSignInLink(SpendSignInLink {
                token_sha256: token_hash(token).to_vec(),
                browser_sha256: browser.to_vec(),
                session: Some(CreateSession {
                    session_id: format!("{session:032x}"),
                    token_sha256: [session; 32].to_vec(),
                    expires_at: at + 3_600_000,
                    client_ip: "192.0.2.1".into(),
                    ..Default::default()
                }),
            }),
        )
    }

    /// A cluster at this build's version, with ann.
    fn state() -> State {
        let mut s = State::default();
        let version = gatehouse_proto::events::SetClusterVersion { version: crate::version::COMMAND_VERSION };
        s.apply(1, &cmd(1_000, Payload::SetClusterVersion(version)), &mut Vec::new());
        assert_eq!(s.apply(1, &create_user_cmd(USER, "ann"), &mut Vec::new()).code, Code::Ok as i32);
        s
    }

    fn refused(r: &CommandResult, code: Code, msg: &str) {
        assert_eq!((r.code, r.message.as_str()), (code as i32, msg), "{r:?}");
    }

    #[test]
    fn a_link_opens_one_session_once() {
        let mut s = state();
        let mut out = Vec::new();
        assert_eq!(s.apply(2, &link(1, TOKEN, 1_000), &mut out).code, Code::Ok as i32);
        assert!(out.iter().any(|m| matches!(m, Mutation::Put { table: Table::SignInLinks, .. })));
        let mut out = Vec::new();
        let r = s.apply(3, &spend(TOKEN, BROWSER, 5, 2_000), &mut out);
        assert_eq!((r.code, r.id.as_str()), (Code::Ok as i32, format!("{:032x}", 5).as_str()));
        let opened = s.session(&r.id).unwrap();
        assert_eq!(opened.user_id, USER, "the link's user, whatever the command said");
        assert!(out.iter().any(|m| matches!(m, Mutation::Delete { table: Table::SignInLinks, .. })));
        assert_eq!(s.links.len(), 0);
        // The same link again, from the same browser: nothing left to spend.
        refused(&s.apply(4, &spend(TOKEN, BROWSER, 6, 2_001), &mut Vec::new()), Code::NotFound, UNKNOWN);
        assert!(s.session(&format!("{:032x}", 6)).is_none());
    }

    #[test]
    fn another_browser_or_a_late_spend_is_refused_and_leaves_the_link() {
        let mut s = state();
        s.apply(2, &link(1, TOKEN, 1_000), &mut Vec::new());
        let mut out = Vec::new();
        refused(&s.apply(3, &spend(TOKEN, [8; 32], 5, 2_000), &mut out), Code::FailedPrecondition, OTHER_BROWSER);
        assert!(out.iter().all(|m| !matches!(m, Mutation::Delete { table: Table::SignInLinks, .. })));
        assert_eq!(s.links.len(), 1, "a stranger's attempt does not spend the owner's link");
        let late = 1_000 + TTL;
        refused(&s.apply(4, &spend(TOKEN, BROWSER, 5, late), &mut Vec::new()), Code::FailedPrecondition, EXPIRED);
        // An hour on, it is gone.
        let gone = late + KEPT_AFTER_EXPIRY_MS;
        refused(&s.apply(5, &spend(TOKEN, BROWSER, 5, gone), &mut Vec::new()), Code::NotFound, UNKNOWN);
        assert_eq!(s.links.len(), 0);
    }

    #[test]
    fn a_user_holds_at_most_max_live_unexpired_links() {
        let mut s = state();
        let tokens: Vec<String> = (0..5).map(|i| format!("gl_{}{i}", "x".repeat(42))).collect();
        for (i, t) in tokens.iter().take(3).enumerate() {
            assert_eq!(s.apply(2 + i as u64, &link(i as u8 + 1, t, 1_000), &mut Vec::new()).code, Code::Ok as i32);
        }
        let r = s.apply(9, &link(4, &tokens[3], 1_001), &mut Vec::new());
        assert_eq!(r.code, Code::Limited as i32, "{r:?}");
        // Spending one frees a place; expiry alone does not for an hour.
        s.apply(10, &spend(&tokens[0], BROWSER, 9, 1_002), &mut Vec::new());
        assert_eq!(s.apply(11, &link(4, &tokens[3], 1_003), &mut Vec::new()).code, Code::Ok as i32);
        assert!(!may_ask(&s, USER, 3, 1_003 + TTL));
        let r = s.apply(12, &link(5, &tokens[4], 1_003 + TTL), &mut Vec::new());
        assert_eq!((r.code, r.message.as_str()), (Code::Limited as i32, TOO_MANY));
        let later = 1_003 + LIMIT_WINDOW_MS;
        assert!(may_ask(&s, USER, 3, later));
        assert_eq!(s.apply(13, &link(5, &tokens[4], later), &mut Vec::new()).code, Code::Ok as i32);
    }

    #[test]
    fn malformed_links_and_disabled_users_are_refused() {
        let mut s = state();
        let mut bad = |f: &dyn Fn(&mut CreateSignInLink)| {
            let mut c = link(1, TOKEN, 1_000);
            let Some(Payload::CreateSignInLink(l)) = &mut c.payload else { unreachable!() };
            f(l);
            let r = s.apply(2, &c, &mut Vec::new());
            assert_ne!(r.code, Code::Ok as i32, "{r:?}");
        };
        bad(&|l| l.token_sha256.pop().map(drop).unwrap_or(()));
        bad(&|l| l.browser_sha256.clear());
        bad(&|l| l.expires_at = 1_000);
        bad(&|l| l.expires_at = 1_000 + MAX_TTL_MS + 1);
        bad(&|l| l.max_live = 0);
        bad(&|l| l.max_live = MAX_LIVE + 1);
        bad(&|l| l.user_id = "b".repeat(32));
        bad(&|l| l.link_id = "X".into());
        let disable = SetUserStatus { user_id: USER.into(), status: UserStatus::Disabled as i32 };
        s.apply(3, &cmd(1_000, Payload::SetUserStatus(disable)), &mut Vec::new());
        let r = s.apply(4, &link(1, TOKEN, 1_000), &mut Vec::new());
        assert_eq!(r.code, Code::FailedPrecondition as i32, "{r:?}");
    }

    #[test]
    fn a_link_of_a_user_disabled_since_opens_nothing() {
        let mut s = state();
        s.apply(2, &link(1, TOKEN, 1_000), &mut Vec::new());
        let disable = SetUserStatus { user_id: USER.into(), status: UserStatus::Disabled as i32 };
        s.apply(3, &cmd(1_100, Payload::SetUserStatus(disable)), &mut Vec::new());
        let r = s.apply(4, &spend(TOKEN, BROWSER, 5, 1_200), &mut Vec::new());
        // Disabling ends the user's links with its sessions.
        assert_eq!((r.code, r.message.as_str()), (Code::NotFound as i32, UNKNOWN), "{r:?}");
        assert!(s.session(&format!("{:032x}", 5)).is_none());
    }

    #[test]
    fn a_users_links_end_with_its_sessions_and_its_address() {
        use gatehouse_proto::events::{DeleteUser, RevokeUserSessions, SetPassword, UpdateUser};
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        let ends: Vec<Payload> = vec![
            Payload::SetPassword(SetPassword { user_id: USER.into(), password_hash: phc.into() }),
            Payload::RevokeUserSessions(RevokeUserSessions { user_id: USER.into() }),
            Payload::UpdateUser(UpdateUser {
                user_id: USER.into(),
                set_email: true,
                email: "new@example.org".into(),
                ..Default::default()
            }),
            Payload::SetUserStatus(SetUserStatus { user_id: USER.into(), status: UserStatus::Disabled as i32 }),
            Payload::RevokeAllSessions(Default::default()),
            Payload::DeleteUser(DeleteUser { user_id: USER.into() }),
        ];
        for end in ends {
            let mut s = state();
            s.apply(2, &link(1, TOKEN, 1_000), &mut Vec::new());
            let shown = format!("{end:?}");
            let mut out = Vec::new();
            let r = s.apply(3, &cmd(1_100, end), &mut out);
            assert_eq!(r.code, Code::Ok as i32, "{shown}: {r:?}");
            assert_eq!(s.links.len(), 0, "{shown}");
            assert!(out.iter().any(|m| matches!(m, Mutation::Delete { table: Table::SignInLinks, .. })), "{shown}");
        }
        // The same address in other letters keeps the link.
        let mut s = state();
        s.apply(2, &link(1, TOKEN, 1_000), &mut Vec::new());
        let same =
            UpdateUser { user_id: USER.into(), set_email: true, email: "ANN@example.com".into(), ..Default::default() };
        s.apply(3, &cmd(1_100, Payload::UpdateUser(same)), &mut Vec::new());
        assert_eq!(s.links.len(), 1);
    }

    #[test]
    fn links_survive_a_reload() {
        let mut s = state();
        let mut out = Vec::new();
        s.apply(2, &link(1, TOKEN, 1_000), &mut out);
        let Some(Mutation::Put { value, .. }) =
            out.iter().find(|m| matches!(m, Mutation::Put { table: Table::SignInLinks, .. }))
        else {
            panic!("stored")
        };
        let mut loaded = state();
        loaded.load(Table::SignInLinks, value).unwrap();
        assert_eq!(loaded.apply(3, &spend(TOKEN, BROWSER, 5, 2_000), &mut Vec::new()).code, Code::Ok as i32);
    }

    #[test]
    fn tokens_are_parsed_exactly() {
        assert_eq!(parse_token(TOKEN), Some(TOKEN));
        for bad in [
            "gl_short",
            "gs_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ",
            "gl_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP!",
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }
}
