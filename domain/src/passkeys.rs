//! Passkeys: WebAuthn credentials a user registered, as a second factor
//! and as a sign-in of their own.
//!
//! A passkey is a public key: nothing here is secret, and fronts hold the
//! same records as voters. A voter runs the ceremonies (it alone can seal
//! their state, see `gatehouse_api::mfa::passkey`) and proposes what it
//! verified; apply spends the ceremony's challenge in the spent table until
//! it expires, so one assertion, or one registration, is taken once on
//! every node however many nodes it is sent to. A signature counter that
//! does not move forward (a cloned authenticator, or a replay that slipped
//! past the challenge) is refused.
//!
//! A credential id belongs to one user in the whole cluster: a second
//! registration of it, by anyone, is refused.

use gatehouse_proto::events::{AddPasskey, PasskeyUse, RenamePasskey};
use gatehouse_proto::state::{FactorsRecord, PasskeyFactor};

use crate::factors::{self, Spend};
use crate::mutation::Mutation;
use crate::result::ApplyError;
use crate::state::State;

/// The factor name sessions and headers carry.
pub const PASSKEY: &str = "passkey";
/// The most passkeys a user holds.
pub const MAX_PASSKEYS: usize = 10;
/// The longest credential id (WebAuthn's limit).
pub const MAX_CREDENTIAL_ID: usize = 1023;
/// The largest stored credential (a public key and its flags, as JSON).
pub const MAX_CREDENTIAL: usize = 4096;
/// The longest name of a passkey, in characters.
pub const MAX_NAME: usize = 64;
/// The longest a ceremony's challenge may stay spendable.
pub const MAX_CHALLENGE_MS: u64 = 15 * 60_000;

/// The refusal of a credential that is not one of the user's passkeys.
pub const NOT_A_PASSKEY: &str = "not a passkey of this user";
/// The refusal of a ceremony whose challenge was taken already.
pub const CHALLENGE_USED: &str = "this passkey challenge was used already";
/// The refusal of a signature counter that did not move forward.
pub const COUNTER: &str = "the passkey's signature counter went backwards (a cloned authenticator?)";

fn challenge(sha256: &[u8], expires_at: u64, now: u64) -> Result<[u8; 32], ApplyError> {
    let h: [u8; 32] = sha256.try_into().map_err(|_| ApplyError::Invalid("a challenge hash must be 32 bytes".into()))?;
    if expires_at <= now {
        return Err(ApplyError::FailedPrecondition("the passkey challenge expired; try again".into()));
    }
    if expires_at - now > MAX_CHALLENGE_MS {
        return Err(ApplyError::Invalid("a passkey challenge lives at most 15 minutes".into()));
    }
    Ok(h)
}

/// How long a spent challenge is kept: past its expiry by as long again,
/// so a leader whose clock is behind the last one's still finds it.
fn spent_until(expires_at: u64) -> u64 {
    expires_at.saturating_add(MAX_CHALLENGE_MS)
}

/// Whether `c` may stand in a name people read: no control characters,
/// and none that reorder or hide text (bidi overrides, zero-width).
pub fn printable(c: char) -> bool {
    !c.is_control()
        && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

fn check_name(name: &str) -> Result<(), ApplyError> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME || !name.chars().all(printable) {
        return Err(ApplyError::Invalid(format!("a passkey name is 1 to {MAX_NAME} printable characters")));
    }
    Ok(())
}

/// The per-field bounds of the passkey commands and proofs (see
/// [`crate::bounds`]).
pub fn check_use(p: &PasskeyUse) -> Result<(), ApplyError> {
    if p.credential_id.is_empty() || p.credential_id.len() > MAX_CREDENTIAL_ID || p.challenge_sha256.len() != 32 {
        return Err(ApplyError::Invalid("a passkey use names a malformed credential or challenge".into()));
    }
    Ok(())
}

pub fn check_add(c: &AddPasskey) -> Result<(), ApplyError> {
    if c.credential_id.is_empty() || c.credential_id.len() > MAX_CREDENTIAL_ID {
        return Err(ApplyError::Invalid("a credential id is 1 to 1023 bytes".into()));
    }
    if c.credential.is_empty() || c.credential.len() > MAX_CREDENTIAL {
        return Err(ApplyError::Invalid(format!("a stored credential is at most {MAX_CREDENTIAL} bytes")));
    }
    if c.challenge_sha256.len() != 32 {
        return Err(ApplyError::Invalid("a challenge hash must be 32 bytes".into()));
    }
    if c.recovery_sha256.len() > factors::MAX_RECOVERY || c.recovery_sha256.iter().any(|h| h.len() != 32) {
        return Err(ApplyError::Invalid("malformed recovery code hashes".into()));
    }
    check_name(&c.name)
}

pub fn check_rename(c: &RenamePasskey) -> Result<(), ApplyError> {
    if c.credential_id.is_empty() || c.credential_id.len() > MAX_CREDENTIAL_ID {
        return Err(ApplyError::Invalid("a credential id is 1 to 1023 bytes".into()));
    }
    check_name(&c.name)
}

/// Checks a passkey use by `user_id` at `now` without writing: the
/// credential is theirs, the challenge unspent and live, the counter
/// forward.
pub(crate) fn check(state: &State, now: u64, r: &FactorsRecord, p: &PasskeyUse) -> Result<Spend, ApplyError> {
    check_use(p)?;
    let index = r.passkeys.iter().position(|k| k.credential_id == p.credential_id);
    let index = index.ok_or_else(|| ApplyError::FailedPrecondition(NOT_A_PASSKEY.into()))?;
    let h = challenge(&p.challenge_sha256, p.challenge_expires_at, now)?;
    if state.upstream.is_spent(&h) {
        return Err(ApplyError::FailedPrecondition(CHALLENGE_USED.into()));
    }
    let stored = r.passkeys[index].counter;
    if (p.counter != 0 || stored != 0) && p.counter <= stored {
        return Err(ApplyError::FailedPrecondition(COUNTER.into()));
    }
    Ok(Spend::Passkey { index, counter: p.counter, challenge: h, drop_at: spent_until(p.challenge_expires_at) })
}

/// Spends a checked use on the record (the spent challenge is written by
/// the caller, beside it).
pub(crate) fn spend(r: &mut FactorsRecord, now: u64, index: usize, counter: u32) {
    if let Some(k) = r.passkeys.get_mut(index) {
        k.counter = counter;
        k.last_used_at = now;
    }
}

/// Applies [`AddPasskey`].
pub(crate) fn add(state: &mut State, now: u64, c: &AddPasskey, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    check_add(c)?;
    factors::active_user(state, &c.user_id)?;
    let h = challenge(&c.challenge_sha256, c.challenge_expires_at, now)?;
    if state.upstream.is_spent(&h) {
        return Err(ApplyError::FailedPrecondition(CHALLENGE_USED.into()));
    }
    if state.factors.credential_owner(&c.credential_id).is_some() {
        return Err(ApplyError::AlreadyExists("this passkey is registered already".into()));
    }
    let mut r = state
        .factors
        .get(&c.user_id)
        .cloned()
        .unwrap_or_else(|| FactorsRecord { user_id: c.user_id.clone(), ..Default::default() });
    if r.passkeys.len() >= MAX_PASSKEYS {
        return Err(ApplyError::FailedPrecondition(format!("at most {MAX_PASSKEYS} passkeys; remove one first")));
    }
    // A first factor for a user whose role requires one comes with a
    // ticket: from "my account" such a user has a factor already.
    if !factors::enrolled(&r) && factors::required(state, &c.user_id) {
        return Err(ApplyError::FailedPrecondition(factors::TICKET_NEEDED.into()));
    }
    let codes = factors::recovery_codes(&c.recovery_sha256)?;
    if !factors::enrolled(&r) && codes.is_empty() && factors::recovery_left(&r) == 0 {
        return Err(ApplyError::Invalid("a first factor comes with recovery codes".into()));
    }
    let session = match c.session_id.as_str() {
        "" => None,
        id => {
            let s = state.sessions.get(id).filter(|s| s.user_id == c.user_id && !s.factor_due);
            Some(s.ok_or_else(|| ApplyError::NotFound("no such session".into()))?.session_id)
        }
    };
    // A first factor makes the session that added it fresh; one added
    // beside another presents nothing (it was asked for the other).
    let first = !factors::enrolled(&r);
    r.passkeys.push(PasskeyFactor {
        credential_id: c.credential_id.clone(),
        name: c.name.clone(),
        credential: c.credential.clone(),
        created_at: now,
        last_used_at: 0,
        counter: 0,
    });
    if !codes.is_empty() {
        r.recovery = codes;
    }
    state.upstream.spend(h, spent_until(c.challenge_expires_at), out);
    state.factors.store(r, out);
    if let Some(id) = session.filter(|_| first) {
        state.sessions.set_factor(&id, PASSKEY, now, now, None, out);
    }
    Ok(c.user_id.clone())
}

/// Applies [`RenamePasskey`].
pub(crate) fn rename(state: &mut State, c: &RenamePasskey, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    check_rename(c)?;
    let mut r = state.factors.get(&c.user_id).cloned().unwrap_or_default();
    let k = r.passkeys.iter_mut().find(|k| k.credential_id == c.credential_id);
    let k = k.ok_or_else(|| ApplyError::NotFound(NOT_A_PASSKEY.into()))?;
    k.name = c.name.clone();
    state.factors.store(r, out);
    Ok(c.user_id.clone())
}

/// Removes one passkey from `r` (the caller stores it): refused when it is
/// the last factor of a user whose role requires one.
pub(crate) fn remove(state: &State, r: &mut FactorsRecord, credential_id: &[u8]) -> Result<(), ApplyError> {
    let index = r.passkeys.iter().position(|k| k.credential_id == credential_id);
    let index = index.ok_or_else(|| ApplyError::NotFound(NOT_A_PASSKEY.into()))?;
    let others = r.totp.is_some() || r.passkeys.len() > 1;
    if !others && factors::required(state, &r.user_id) {
        return Err(ApplyError::FailedPrecondition(factors::REQUIRED.into()));
    }
    r.passkeys.remove(index);
    Ok(())
}

/// The user whose passkey `credential_id` is, if any (for a sign-in by
/// passkey alone, where the browser names the credential).
pub fn owner<'a>(state: &'a State, credential_id: &[u8]) -> Option<&'a str> {
    state.factors.credential_owner(credential_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::tests::create_user_cmd;
    use gatehouse_proto::events::command_result::Code;
    use gatehouse_proto::events::factor_proof::Proof;
    use gatehouse_proto::events::{
        command::Payload, Command, CreateSession, FactorProof, RemoveFactors, SetClusterVersion, SetMfaPolicy,
    };

    const ANN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const BOB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const NOW: u64 = 1_700_000_000_000;

    fn cmd(p: Payload) -> Command {
        Command { proposed_at: NOW, payload: Some(p), ..Default::default() }
    }

    fn add(user: &str, cred: u8, challenge: u8) -> Payload {
        Payload::AddPasskey(AddPasskey {
            user_id: user.into(),
            credential_id: vec![cred; 16],
            name: "laptop".into(),
            credential: b"{\"cred\":{}}".to_vec(),
            challenge_sha256: vec![challenge; 32],
            challenge_expires_at: NOW + 60_000,
            recovery_sha256: (1..=10).map(|n| vec![n; 32]).collect(),
            session_id: String::new(),
        })
    }

    fn sign_in(user: &str, sid: char, cred: u8, counter: u32, challenge: u8) -> Payload {
        let use_ = PasskeyUse {
            credential_id: vec![cred; 16],
            counter,
            challenge_sha256: vec![challenge; 32],
            challenge_expires_at: NOW + 60_000,
        };
        Payload::CreateSession(CreateSession {
            session_id: sid.to_string().repeat(32),
            user_id: user.into(),
            token_sha256: vec![sid as u8; 32],
            expires_at: NOW + 3_600_000,
            factor: Some(FactorProof { proof: Some(Proof::Passkey(use_)) }),
            ..Default::default()
        })
    }

    fn state() -> State {
        let mut state = State::default();
        let version = SetClusterVersion { version: crate::version::COMMAND_VERSION };
        state.apply(1, &cmd(Payload::SetClusterVersion(version)), &mut Vec::new());
        state.apply(2, &create_user_cmd(ANN, "ann"), &mut Vec::new());
        state.apply(3, &create_user_cmd(BOB, "bob"), &mut Vec::new());
        let r = state.apply(4, &cmd(add(ANN, 1, 1)), &mut Vec::new());
        assert_eq!(r.code, Code::Ok as i32, "{r:?}");
        state
    }

    fn code(state: &mut State, p: Payload) -> (i32, String) {
        let r = state.apply(10, &cmd(p), &mut Vec::new());
        (r.code, r.message)
    }

    #[test]
    fn a_registration_is_taken_once_and_a_credential_belongs_to_one_user() {
        let mut state = state();
        assert_eq!(owner(&state, &[1; 16]), Some(ANN));
        assert!(crate::factors::enrolled(state.factors.get(ANN).unwrap()));
        // The same registration again (its challenge spent), or the same
        // credential for another user: refused, nothing changes.
        assert_eq!(code(&mut state, add(ANN, 2, 1)).0, Code::FailedPrecondition as i32);
        assert_eq!(code(&mut state, add(BOB, 1, 2)).0, Code::AlreadyExists as i32);
        assert!(state.factors.get(BOB).is_none());
        assert_eq!(state.factors.get(ANN).unwrap().passkeys.len(), 1);
    }

    #[test]
    fn an_assertion_is_taken_once_with_a_counter_that_moves_forward() {
        let mut state = state();
        assert_eq!(code(&mut state, sign_in(ANN, '1', 1, 5, 7)).0, Code::Ok as i32);
        let s = state.session(&"1".repeat(32)).unwrap();
        assert!(!s.factor_due);
        assert_eq!(s.factor, PASSKEY);
        assert_eq!(state.factors.get(ANN).unwrap().passkeys[0].counter, 5);
        // The same challenge again, from any node: refused.
        let (c, m) = code(&mut state, sign_in(ANN, '2', 1, 6, 7));
        assert_eq!(c, Code::FailedPrecondition as i32);
        assert_eq!(m, CHALLENGE_USED);
        // A counter that did not move forward: refused.
        let (c, m) = code(&mut state, sign_in(ANN, '3', 1, 5, 8));
        assert_eq!((c, m.as_str()), (Code::FailedPrecondition as i32, COUNTER));
        // Another user's credential: not theirs.
        let (c, m) = code(&mut state, sign_in(BOB, '4', 1, 9, 9));
        assert_eq!(c, Code::FailedPrecondition as i32, "{m}");
        assert!(state.session(&"4".repeat(32)).is_none() && state.session(&"3".repeat(32)).is_none());
    }

    #[test]
    fn a_factor_added_beside_another_presents_nothing_and_keeps_the_codes() {
        let mut state = state();
        assert_eq!(code(&mut state, sign_in(ANN, '1', 1, 1, 3)).0, Code::Ok as i32);
        let sid = "1".repeat(32);
        let at = state.session(&sid).unwrap().factor_at;
        // A second passkey from that session, later: the session's factor
        // stays the one it presented.
        let mut second = add(ANN, 2, 4);
        if let Payload::AddPasskey(c) = &mut second {
            c.session_id = sid.clone();
            c.recovery_sha256.clear();
        }
        let later = Command { proposed_at: NOW + 30_000, payload: Some(second), ..Default::default() };
        assert_eq!(state.apply(11, &later, &mut Vec::new()).code, Code::Ok as i32);
        assert_eq!(state.session(&sid).unwrap().factor_at, at);
        // An authenticator app beside them: the same, and the recovery
        // codes the first passkey came with stay.
        let step = crate::factors::step_at(NOW + 30_000);
        let totp = gatehouse_proto::events::EnrollTotp {
            user_id: ANN.into(),
            secret: Some(gatehouse_proto::events::Sealed {
                key_id: "k1".into(),
                nonce: vec![0; 12],
                ciphertext: vec![1; 36],
            }),
            step,
            session_id: sid.clone(),
            ..Default::default()
        };
        let later =
            Command { proposed_at: NOW + 30_000, payload: Some(Payload::EnrollTotp(totp)), ..Default::default() };
        let r = state.apply(12, &later, &mut Vec::new());
        assert_eq!(r.code, Code::Ok as i32, "{r:?}");
        assert_eq!(state.session(&sid).unwrap().factor_at, at);
        assert_eq!(crate::factors::recovery_left(state.factors.get(ANN).unwrap()), 10);
    }

    #[test]
    fn names_that_hide_or_reorder_text_are_refused() {
        for bad in ["a\u{202e}b", "a\u{200b}", "\u{2066}x", "\u{feff}"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("Ann's YubiKey 5C – blue").is_ok());
    }

    #[test]
    fn an_expired_or_overlong_challenge_is_refused() {
        let mut state = state();
        let mut expired = sign_in(ANN, '1', 1, 0, 3);
        if let Payload::CreateSession(c) = &mut expired {
            if let Some(Proof::Passkey(p)) = c.factor.as_mut().and_then(|f| f.proof.as_mut()) {
                p.challenge_expires_at = NOW;
            }
        }
        assert_eq!(code(&mut state, expired).0, Code::FailedPrecondition as i32);
        let mut long = add(ANN, 2, 4);
        if let Payload::AddPasskey(c) = &mut long {
            c.challenge_expires_at = NOW + MAX_CHALLENGE_MS + 1;
        }
        assert_eq!(code(&mut state, long).0, Code::Invalid as i32);
    }

    #[test]
    fn the_last_factor_of_a_required_role_stays_and_renames_are_checked() {
        let mut state = state();
        let policy = SetMfaPolicy { required_roles: vec!["viewer".into()], expected_roles: vec![] };
        assert_eq!(code(&mut state, Payload::SetMfaPolicy(policy)).0, Code::Ok as i32);
        let remove = |cred: u8| {
            Payload::RemoveFactors(RemoveFactors {
                user_id: ANN.into(),
                kind: PASSKEY.into(),
                credential_id: vec![cred; 16],
            })
        };
        assert_eq!(code(&mut state, remove(1)).1, crate::factors::REQUIRED);
        // Bob has none and his role requires one: his first needs a ticket.
        assert_eq!(code(&mut state, add(BOB, 3, 5)).1, crate::factors::TICKET_NEEDED);
        // With a second passkey the first may go; recovery codes stay.
        assert_eq!(code(&mut state, add(ANN, 2, 6)).0, Code::Ok as i32);
        assert_eq!(code(&mut state, remove(1)).0, Code::Ok as i32);
        assert_eq!(owner(&state, &[1; 16]), None, "the index forgets a removed credential");
        assert_eq!(crate::factors::recovery_left(state.factors.get(ANN).unwrap()), 10);
        assert_eq!(code(&mut state, remove(9)).0, Code::NotFound as i32);
        let rename = |name: &str| {
            Payload::RenamePasskey(RenamePasskey { user_id: ANN.into(), credential_id: vec![2; 16], name: name.into() })
        };
        assert_eq!(code(&mut state, rename("a\nb")).0, Code::Invalid as i32);
        assert_eq!(code(&mut state, rename(&"x".repeat(65))).0, Code::Invalid as i32);
        assert_eq!(code(&mut state, rename("phone")).0, Code::Ok as i32);
        assert_eq!(state.factors.get(ANN).unwrap().passkeys[0].name, "phone");
    }
}
