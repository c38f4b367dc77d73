//! Second factors: a user's TOTP authenticator and recovery codes, and
//! what a session owes of them.
//!
//! The proposing voter checks a code (it alone can open the sealed
//! secret); apply spends it. A TOTP code is accepted once per user: the
//! step it matched must be newer than the last one accepted (RFC 6238
//! §5.2), and within [`MAX_STEP_DRIFT`] steps of log time. A recovery code
//! is spent once. Both happen in the command that opens the session or
//! presents the factor, so two nodes presenting the same code at once
//! find one of them refused at apply, on every node alike.
//!
//! A session opened for a user with a second factor, without one, owes it
//! (`factor_due`): it grants nothing (`sessions::verify` refuses it) and
//! lives [`DUE_MS`] at most, until `PresentFactor` pays it and replaces its
//! token. Every way of opening a session (password, sign-in link, upstream
//! provider) goes through `sessions::create`, so none skips the factor.
//!
//! TOTP attempts are counted through the log before the code is checked
//! (`CountFactorAttempt`), so guesses sent to several nodes at once are
//! counted as exactly as one at a time, and the lockout holds on every
//! node. A lockout stops TOTP codes only: recovery codes (79 bits) are
//! not worth guessing, and they are how the owner gets past a lockout
//! someone else caused with their password.

use std::collections::HashMap;

use gatehouse_proto::events::factor_proof::Proof;
use gatehouse_proto::events::{
    CountFactorAttempt, EnrollTotp, FactorProof, IssueEnrollTicket, PresentFactor, RemoveFactors, ResealSecrets,
    Sealed, SetMfaPolicy, SetRecoveryCodes, UserStatus,
};
use gatehouse_proto::state::{FactorsRecord, MfaPolicyRecord, RecoveryCode, TotpFactor};

use crate::mutation::{Mutation, Table};
use crate::result::ApplyError;
use crate::sessions;
use crate::state::{put, State};

/// Seconds per TOTP step (RFC 6238's default, what every authenticator app uses).
pub const STEP_SECS: u64 = 30;
/// How far (in steps) a matched step may be from log time at apply. The
/// voter accepts ±1 step on its own clock; one more covers voters whose
/// clocks differ from the leader's by up to a step.
pub const MAX_STEP_DRIFT: u64 = 2;
/// The most recovery codes a user holds.
pub const MAX_RECOVERY: usize = 10;
/// How long a session waits for its second factor.
pub const DUE_MS: u64 = 5 * 60_000;
/// The largest sealed TOTP secret (20 bytes of secret, the tag, room to spare).
pub const MAX_SEALED: usize = 256;
/// The longest a factor lockout or failure window may be.
pub const MAX_LOCKOUT_MS: u64 = 24 * 3_600_000;

/// The factor names sessions and headers carry.
pub const TOTP: &str = "totp";
pub const RECOVERY: &str = "recovery";
pub use crate::devices::DEVICE;
pub use crate::passkeys::PASSKEY;

/// The refusal of a code whose step was accepted already.
pub const CODE_USED: &str = "this code was used already; wait for the next one";
/// The refusal of a TOTP code while they are locked.
pub const LOCKED: &str = "the second factor is locked after too many wrong codes";
/// The result id of an attempt that locked the factor.
pub const LOCKED_NOW: &str = "locked";
/// The refusal of a recovery code that is not one of the user's unspent ones.
pub const NOT_A_CODE: &str = "not an unspent recovery code of this user";
/// The refusal of a TOTP code from a user with passkeys only.
pub const NOT_TOTP: &str = "this user has no TOTP authenticator";
/// The refusal of a session that owes no factor and must get a new token.
pub const NOT_DUE: &str = "this session owes no second factor";

/// The key of the MFA policy in [`Table::Settings`].
pub const POLICY_KEY: &str = "mfa";
/// The longest an enrollment ticket may live.
pub const MAX_TICKET_MS: u64 = 7 * 24 * 3_600_000;
/// The refusal of a first enrollment without a ticket, for a user whose
/// role requires a second factor.
pub const TICKET_NEEDED: &str =
    "your role requires a second factor: enrolling the first one needs an enrollment ticket";
/// The refusal of removing the factor a role requires.
pub const REQUIRED: &str = "your role requires a second factor: it cannot be removed";

/// Every user's second factors, and which roles require one.
#[derive(Debug, Default)]
pub(crate) struct Factors {
    by_user: HashMap<String, FactorsRecord>,
    /// Passkey credential id → its user.
    by_credential: HashMap<Vec<u8>, String>,
    required_roles: Vec<String>,
}

impl Factors {
    pub(crate) fn insert(&mut self, r: FactorsRecord) {
        for k in &r.passkeys {
            self.by_credential.insert(k.credential_id.clone(), r.user_id.clone());
        }
        if let Some(old) = self.by_user.insert(r.user_id.clone(), r) {
            self.forget_credentials(&old);
        }
    }

    /// Drops `old`'s credentials from the index, unless the record now
    /// stored for its user still holds them.
    fn forget_credentials(&mut self, old: &FactorsRecord) {
        let now = self.by_user.get(&old.user_id);
        for k in &old.passkeys {
            if !now.is_some_and(|r| r.passkeys.iter().any(|n| n.credential_id == k.credential_id)) {
                self.by_credential.remove(&k.credential_id);
            }
        }
    }

    /// The user a passkey credential belongs to.
    pub(crate) fn credential_owner(&self, credential_id: &[u8]) -> Option<&str> {
        self.by_credential.get(credential_id).map(String::as_str)
    }

    pub(crate) fn get(&self, user_id: &str) -> Option<&FactorsRecord> {
        self.by_user.get(user_id)
    }

    pub(crate) fn load_policy(&mut self, r: MfaPolicyRecord) {
        self.required_roles = r.required_roles;
    }

    pub(crate) fn required_roles(&self) -> &[String] {
        &self.required_roles
    }

    /// Whether `user_id` has a factor to present.
    pub(crate) fn enrolled(&self, user_id: &str) -> bool {
        self.by_user.get(user_id).is_some_and(enrolled)
    }

    pub(crate) fn remove_user(&mut self, user_id: &str, out: &mut Vec<Mutation>) {
        if let Some(old) = self.by_user.remove(user_id) {
            self.forget_credentials(&old);
            out.push(Mutation::Delete { table: Table::Factors, key: user_id.as_bytes().to_vec() });
        }
    }

    pub(crate) fn store(&mut self, r: FactorsRecord, out: &mut Vec<Mutation>) {
        out.push(put(Table::Factors, &r.user_id, &r));
        self.insert(r);
    }
}

/// Whether a record holds a factor (recovery codes alone are none: they
/// stand in for one).
pub fn enrolled(r: &FactorsRecord) -> bool {
    r.totp.is_some() || !r.passkeys.is_empty()
}

/// Whether a role `user_id` holds requires a second factor.
pub fn required(state: &State, user_id: &str) -> bool {
    let roles = &state.factors.required_roles;
    !roles.is_empty() && state.users.get(user_id).is_some_and(|u| u.roles.iter().any(|r| roles.contains(r)))
}

/// Whether the factor is locked at `now`.
pub fn is_locked(r: &FactorsRecord, now: u64) -> bool {
    r.locked_until > now
}

/// Unspent recovery codes.
pub fn recovery_left(r: &FactorsRecord) -> usize {
    r.recovery.iter().filter(|c| c.spent_at == 0).count()
}

/// The TOTP step of unix time `ms`.
pub fn step_at(ms: u64) -> u64 {
    ms / 1000 / STEP_SECS
}

/// A proof checked against the state, ready to be spent.
#[derive(Debug, Clone)]
pub(crate) enum Spend {
    Totp(u64),
    Recovery(usize),
    /// The passkey at `index`, its new counter, and the challenge spent
    /// until `drop_at`.
    Passkey {
        index: usize,
        counter: u32,
        challenge: [u8; 32],
        drop_at: u64,
    },
    /// The trusted browser at `index`, trusted at `trusted_at`.
    Device {
        index: usize,
        trusted_at: u64,
    },
}

impl Spend {
    pub(crate) fn factor(&self) -> &'static str {
        match self {
            Spend::Totp(_) => TOTP,
            Spend::Recovery(_) => RECOVERY,
            Spend::Passkey { .. } => PASSKEY,
            Spend::Device { .. } => crate::devices::DEVICE,
        }
    }

    /// When the factor was presented: now, or for a trusted browser when
    /// the trust was given.
    pub(crate) fn at(&self, now: u64) -> u64 {
        match self {
            Spend::Device { trusted_at, .. } => *trusted_at,
            _ => now,
        }
    }
}

fn totp_step(now: u64, step: u64) -> Result<(), ApplyError> {
    if step.abs_diff(step_at(now)) > MAX_STEP_DRIFT {
        return Err(ApplyError::FailedPrecondition("the code's time step is too far from now".into()));
    }
    Ok(())
}

fn hash32(bytes: &[u8]) -> Result<[u8; 32], ApplyError> {
    bytes.try_into().map_err(|_| ApplyError::Invalid("a recovery code hash must be 32 bytes".into()))
}

/// Checks `proof` for `user_id` at `now` without writing.
pub(crate) fn check_proof(state: &State, now: u64, user_id: &str, proof: &FactorProof) -> Result<Spend, ApplyError> {
    let proof = proof.proof.as_ref().ok_or_else(|| ApplyError::Invalid("a factor proof is empty".into()))?;
    let r = state.factors.get(user_id).filter(|r| enrolled(r));
    let r = r.ok_or_else(|| ApplyError::FailedPrecondition("this user has no second factor".into()))?;
    match proof {
        Proof::Passkey(p) => crate::passkeys::check(state, now, r, p),
        Proof::TrustedDeviceSha256(h) => crate::devices::check(r, now, h),
        Proof::TotpStep(step) => {
            if is_locked(r, now) {
                return Err(ApplyError::FailedPrecondition(LOCKED.into()));
            }
            let totp = r.totp.as_ref().ok_or_else(|| ApplyError::FailedPrecondition(NOT_TOTP.into()))?;
            totp_step(now, *step)?;
            if *step <= totp.last_step {
                return Err(ApplyError::FailedPrecondition(CODE_USED.into()));
            }
            Ok(Spend::Totp(*step))
        }
        Proof::RecoverySha256(h) => {
            let h = hash32(h)?;
            let found = r.recovery.iter().position(|c| c.spent_at == 0 && c.sha256 == h);
            found.map(Spend::Recovery).ok_or_else(|| ApplyError::FailedPrecondition(NOT_A_CODE.into()))
        }
    }
}

/// Spends a checked proof: the step or the code is used, the failures end.
pub(crate) fn spend(state: &mut State, now: u64, user_id: &str, spend: &Spend, out: &mut Vec<Mutation>) {
    let Some(mut r) = state.factors.get(user_id).cloned() else { return };
    match spend {
        Spend::Totp(step) => {
            if let Some(t) = &mut r.totp {
                t.last_step = *step;
                t.last_used_at = now;
            }
        }
        Spend::Recovery(i) => r.recovery[*i].spent_at = now,
        Spend::Passkey { index, counter, challenge, drop_at } => {
            crate::passkeys::spend(&mut r, now, *index, *counter);
            state.upstream.spend(*challenge, *drop_at, out);
        }
        Spend::Device { index, .. } => crate::devices::spend(&mut r, now, *index),
    }
    r.failures = 0;
    r.failures_since = 0;
    state.factors.store(r, out);
}

pub(crate) fn active_user(state: &State, user_id: &str) -> Result<(), ApplyError> {
    let user = state.users.get(user_id).ok_or_else(|| ApplyError::NotFound("no such user".into()))?;
    if user.status != UserStatus::Active as i32 {
        return Err(ApplyError::FailedPrecondition("user is disabled".into()));
    }
    Ok(())
}

pub(crate) fn recovery_codes(list: &[Vec<u8>]) -> Result<Vec<RecoveryCode>, ApplyError> {
    if list.len() > MAX_RECOVERY {
        return Err(ApplyError::Invalid(format!("at most {MAX_RECOVERY} recovery codes")));
    }
    let mut codes = Vec::with_capacity(list.len());
    for h in list {
        let h = hash32(h)?;
        if codes.iter().any(|c: &RecoveryCode| c.sha256 == h) {
            return Err(ApplyError::Invalid("a recovery code is listed twice".into()));
        }
        codes.push(RecoveryCode { sha256: h.to_vec(), spent_at: 0 });
    }
    Ok(codes)
}

fn sealed(s: &Option<Sealed>) -> Result<&Sealed, ApplyError> {
    match s {
        Some(s)
            if !s.key_id.is_empty()
                && s.key_id.len() <= 64
                && s.nonce.len() == 12
                && s.ciphertext.len() <= MAX_SEALED =>
        {
            Ok(s)
        }
        _ => Err(ApplyError::Invalid("the sealed secret is missing or malformed".into())),
    }
}

/// The per-field bounds of the factor commands (see [`crate::bounds`]).
pub fn check_enroll(c: &EnrollTotp) -> Result<(), ApplyError> {
    if let Some(s) = &c.secret {
        if s.key_id.len() > 64 || s.ciphertext.len() > MAX_SEALED || s.nonce.len() > 12 {
            return Err(ApplyError::Invalid("the sealed secret is malformed".into()));
        }
    }
    recovery_codes(&c.recovery_sha256).map(drop)
}

/// The per-field bounds of a proof.
pub fn check_proof_fields(p: &Option<FactorProof>) -> Result<(), ApplyError> {
    match p.as_ref().and_then(|p| p.proof.as_ref()) {
        Some(Proof::RecoverySha256(h)) if h.len() > 32 => {
            Err(ApplyError::Invalid("recovery code hash too long".into()))
        }
        Some(Proof::Passkey(p)) => crate::passkeys::check_use(p),
        Some(Proof::TrustedDeviceSha256(h)) if h.len() != 32 => {
            Err(ApplyError::Invalid("a device hash must be 32 bytes".into()))
        }
        _ => Ok(()),
    }
}

/// Applies [`PresentFactor`]; the result's id is the session.
pub(crate) fn present(
    state: &mut State,
    now: u64,
    c: &PresentFactor,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    let s = state.sessions.get(&c.session_id).filter(|s| s.user_id == c.user_id);
    let s = s.ok_or_else(|| ApplyError::NotFound("no such session".into()))?;
    active_user(state, &c.user_id)?;
    let proof = c.proof.as_ref().ok_or_else(|| ApplyError::Invalid("a factor proof is missing".into()))?;
    if matches!(proof.proof, Some(Proof::TrustedDeviceSha256(_))) {
        return Err(ApplyError::Invalid("a trusted browser opens a session; it pays none".into()));
    }
    let spent = check_proof(state, now, &c.user_id, proof)?;
    // A trust asked for with the factor (only at a sign-in's second step):
    // checked before anything is written.
    crate::devices::check_trust(c)?;
    if !c.trust_device_sha256.is_empty() && !s.factor_due {
        return Err(ApplyError::Invalid("a browser is trusted at a sign-in's second step only".into()));
    }
    if !c.trust_device_sha256.is_empty() {
        let mut probe = state.factors.get(&c.user_id).cloned().unwrap_or_default();
        crate::devices::trust(&mut probe, now, c)?;
    }
    let token = if s.factor_due {
        let token: [u8; 32] = c
            .new_token_sha256
            .as_slice()
            .try_into()
            .map_err(|_| ApplyError::Invalid("a session that owes a factor gets a new token hash".into()))?;
        if c.expires_at <= now {
            return Err(ApplyError::Invalid("expiry must be in the future".into()));
        }
        if state.sessions.token_taken(&token) {
            return Err(ApplyError::AlreadyExists("session token already exists".into()));
        }
        // Never past the expiry it was opened with (a provider's session
        // that nothing re-checks is capped short on purpose).
        let intended = if s.intended_expires_at == 0 { c.expires_at } else { s.intended_expires_at };
        Some((token, c.expires_at.min(intended)))
    } else {
        if !c.new_token_sha256.is_empty() {
            return Err(ApplyError::Invalid(NOT_DUE.into()));
        }
        None
    };
    spend(state, now, &c.user_id, &spent, out);
    if !c.trust_device_sha256.is_empty() {
        let mut r = state.factors.get(&c.user_id).cloned().unwrap_or_default();
        crate::devices::trust(&mut r, now, c)?;
        state.factors.store(r, out);
    }
    state.sessions.set_factor(&c.session_id, spent.factor(), now, now, token, out);
    Ok(c.session_id.clone())
}

/// Applies [`EnrollTotp`].
pub(crate) fn enroll_totp(
    state: &mut State,
    now: u64,
    c: &EnrollTotp,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    active_user(state, &c.user_id)?;
    let secret = sealed(&c.secret)?.clone();
    totp_step(now, c.step)?;
    let codes = recovery_codes(&c.recovery_sha256)?;
    let mut r = state
        .factors
        .get(&c.user_id)
        .cloned()
        .unwrap_or_else(|| FactorsRecord { user_id: c.user_id.clone(), ..Default::default() });
    if r.totp.is_some() {
        return Err(ApplyError::AlreadyExists("a TOTP authenticator is enrolled already; remove it first".into()));
    }
    let first = !enrolled(&r);
    if codes.is_empty() && recovery_left(&r) == 0 {
        return Err(ApplyError::Invalid("a first factor comes with recovery codes".into()));
    }
    // A first factor for a user whose role requires one: only with a
    // ticket (the proof beyond the password).
    let ticket = required(state, &c.user_id) && !enrolled(&r);
    if ticket {
        let valid = r.enroll_ticket_expires_at > now
            && !c.ticket_sha256.is_empty()
            && r.enroll_ticket_sha256 == c.ticket_sha256;
        if !valid {
            return Err(ApplyError::FailedPrecondition(TICKET_NEEDED.into()));
        }
    }
    let session = match c.session_id.as_str() {
        "" => None,
        id => {
            let s = state.sessions.get(id).filter(|s| s.user_id == c.user_id);
            Some(s.ok_or_else(|| ApplyError::NotFound("no such session".into()))?)
        }
    };
    // A waiting session is paid with a new token; a full one is marked.
    let token = match &session {
        Some(s) if s.factor_due => {
            let token: [u8; 32] = c
                .new_token_sha256
                .as_slice()
                .try_into()
                .map_err(|_| ApplyError::Invalid("a session that owes a factor gets a new token hash".into()))?;
            if c.expires_at <= now {
                return Err(ApplyError::Invalid("expiry must be in the future".into()));
            }
            if state.sessions.token_taken(&token) {
                return Err(ApplyError::AlreadyExists("session token already exists".into()));
            }
            let intended = if s.intended_expires_at == 0 { c.expires_at } else { s.intended_expires_at };
            Some((token, c.expires_at.min(intended)))
        }
        _ if !c.new_token_sha256.is_empty() => return Err(ApplyError::Invalid(NOT_DUE.into())),
        _ => None,
    };
    r.totp = Some(TotpFactor { secret: Some(secret), enrolled_at: now, last_step: c.step, last_used_at: now });
    if !codes.is_empty() {
        r.recovery = codes;
    }
    r.failures = 0;
    r.failures_since = 0;
    r.locked_until = 0;
    if ticket {
        r.enroll_ticket_sha256.clear();
        r.enroll_ticket_expires_at = 0;
    }
    state.factors.store(r, out);
    // The session that enrolled a first factor (or paid its wait with it)
    // has it fresh; adding one beside another presents nothing.
    if let Some(s) = session.filter(|s| first || s.factor_due) {
        state.sessions.set_factor(&s.session_id, TOTP, now, now, token, out);
    }
    Ok(c.user_id.clone())
}

/// Applies [`SetRecoveryCodes`].
pub(crate) fn set_recovery(
    state: &mut State,
    c: &SetRecoveryCodes,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    active_user(state, &c.user_id)?;
    let codes = recovery_codes(&c.recovery_sha256)?;
    if codes.is_empty() {
        return Err(ApplyError::Invalid("new recovery codes are missing".into()));
    }
    let mut r = state.factors.get(&c.user_id).filter(|r| enrolled(r)).cloned();
    let r = r.as_mut().ok_or_else(|| ApplyError::FailedPrecondition("this user has no second factor".into()))?;
    r.recovery = codes;
    state.factors.store(r.clone(), out);
    Ok(c.user_id.clone())
}

/// Applies [`RemoveFactors`]: sessions still owing a factor end with it.
pub(crate) fn remove(state: &mut State, c: &RemoveFactors, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    if !state.users.contains_key(&c.user_id) {
        return Err(ApplyError::NotFound("no such user".into()));
    }
    let Some(mut r) = state.factors.get(&c.user_id).cloned() else {
        return Err(ApplyError::NotFound("this user has no second factor".into()));
    };
    match c.kind.as_str() {
        "" => {
            state.factors.remove_user(&c.user_id, out);
            // A reset follows a lost (or stolen) device: the sessions that
            // presented it end too.
            state.sessions.remove_user(&c.user_id, out);
        }
        TOTP | PASSKEY => {
            if c.kind == TOTP {
                if r.passkeys.is_empty() && required(state, &c.user_id) {
                    return Err(ApplyError::FailedPrecondition(REQUIRED.into()));
                }
                if r.totp.take().is_none() {
                    return Err(ApplyError::NotFound("this user has no TOTP authenticator".into()));
                }
            } else {
                crate::passkeys::remove(state, &mut r, &c.credential_id)?;
            }
            // Recovery codes stand in for a factor, and trusted browsers
            // carry one: with none left, they go.
            if !enrolled(&r) {
                r.recovery.clear();
            }
            crate::devices::keep_only_with_a_factor(&mut r);
            state.factors.store(r, out);
        }
        other => return Err(ApplyError::Invalid(format!("no factor kind {}", crate::quote::quote(other)))),
    }
    let due: Vec<String> = state.sessions.of_user(&c.user_id).filter(|s| s.factor_due).map(|s| s.session_id).collect();
    for id in due {
        if let Some(id) = sessions::id128(&id) {
            state.sessions.remove(id, out);
        }
    }
    Ok(c.user_id.clone())
}

/// The most values one `ResealSecrets` moves.
pub const MAX_RESEALED: usize = 256;

/// The per-field bounds of `ResealSecrets`.
pub fn check_reseal(c: &ResealSecrets) -> Result<(), ApplyError> {
    if c.totp.len() + c.tokens.len() + c.signing_keys.len() > MAX_RESEALED {
        return Err(ApplyError::Invalid(format!("at most {MAX_RESEALED} values in one reseal")));
    }
    for t in &c.totp {
        sealed(&t.secret)?;
        if t.user_id.len() > 64 || t.previous_nonce.len() > 12 {
            return Err(ApplyError::Invalid("a resealed secret names a malformed value".into()));
        }
    }
    c.tokens.iter().try_for_each(crate::upstream::check_resealed)?;
    c.signing_keys.iter().try_for_each(crate::signing::check_resealed)
}

/// Applies [`ResealSecrets`]: each value still the one the proposer opened
/// moves to its new sealing; the result's id is how many moved.
/// (Its bounds, [`check_reseal`], are checked before apply gets here.)
pub(crate) fn reseal(state: &mut State, c: &ResealSecrets, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    let mut moved = 0;
    for t in &c.totp {
        let Some(mut r) = state.factors.get(&t.user_id).cloned() else { continue };
        let Some(totp) = r.totp.as_mut() else { continue };
        if totp.secret.as_ref().is_none_or(|s| s.nonce != t.previous_nonce) {
            continue;
        }
        totp.secret = t.secret.clone();
        state.factors.store(r, out);
        moved += 1;
    }
    moved += crate::upstream::reseal(state, &c.tokens, out);
    moved += crate::signing::reseal(state, &c.signing_keys, out);
    Ok(moved.to_string())
}

/// Applies [`SetMfaPolicy`].
pub(crate) fn set_policy(state: &mut State, c: &SetMfaPolicy, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    crate::users::validate_roles(state, &c.required_roles)?;
    let mut expected = c.expected_roles.clone();
    expected.sort();
    expected.dedup();
    if expected != state.factors.required_roles {
        return Err(ApplyError::FailedPrecondition(
            "the MFA policy changed since it was read; read it again and retry".into(),
        ));
    }
    let mut roles = c.required_roles.clone();
    roles.sort();
    roles.dedup();
    let r = MfaPolicyRecord { required_roles: roles };
    out.push(put(Table::Settings, POLICY_KEY, &r));
    state.factors.load_policy(r);
    Ok(String::new())
}

/// Applies [`IssueEnrollTicket`].
pub(crate) fn issue_ticket(
    state: &mut State,
    now: u64,
    c: &IssueEnrollTicket,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    active_user(state, &c.user_id)?;
    hash32(&c.ticket_sha256).map_err(|_| ApplyError::Invalid("a ticket hash must be 32 bytes".into()))?;
    if c.expires_at <= now || c.expires_at - now > MAX_TICKET_MS {
        return Err(ApplyError::Invalid("a ticket expires within a week".into()));
    }
    let mut r = state
        .factors
        .get(&c.user_id)
        .cloned()
        .unwrap_or_else(|| FactorsRecord { user_id: c.user_id.clone(), ..Default::default() });
    r.enroll_ticket_sha256 = c.ticket_sha256.clone();
    r.enroll_ticket_expires_at = c.expires_at;
    state.factors.store(r, out);
    Ok(c.user_id.clone())
}

/// Applies [`CountFactorAttempt`]: the attempt may go on to its check,
/// unless it is one past `threshold` (the result id is then
/// [`LOCKED_NOW`]: the factor just locked, and this attempt is refused
/// too). Refused while locked.
pub(crate) fn count_attempt(
    state: &mut State,
    now: u64,
    c: &CountFactorAttempt,
    out: &mut Vec<Mutation>,
) -> Result<String, ApplyError> {
    if c.threshold == 0 || c.threshold > 100 || c.window_ms > MAX_LOCKOUT_MS || c.lockout_ms > MAX_LOCKOUT_MS {
        return Err(ApplyError::Invalid("threshold 1 to 100, window and lockout at most a day".into()));
    }
    let r = state.factors.get(&c.user_id).filter(|r| enrolled(r));
    let mut r = r.cloned().ok_or_else(|| ApplyError::NotFound("this user has no second factor".into()))?;
    if is_locked(&r, now) {
        return Err(ApplyError::FailedPrecondition(LOCKED.into()));
    }
    if r.failures == 0 || now.saturating_sub(r.failures_since) > c.window_ms {
        r.failures = 0;
        r.failures_since = now;
    }
    r.failures += 1;
    let locked = r.failures > c.threshold;
    if locked {
        r.locked_until = now + c.lockout_ms;
        r.failures = 0;
        r.failures_since = 0;
    }
    state.factors.store(r, out);
    Ok(if locked { LOCKED_NOW.into() } else { String::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::tests::create_user_cmd;
    use gatehouse_proto::events::command_result::Code;
    use gatehouse_proto::events::{command::Payload, Command, CreateSession};

    const UID: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const NOW: u64 = 1_700_000_000_000;

    fn cmd(at: u64, p: Payload) -> Command {
        Command { proposed_at: at, payload: Some(p), ..Default::default() }
    }

    fn code(n: u8) -> Vec<u8> {
        vec![n; 32]
    }

    fn enroll(step: u64) -> Payload {
        Payload::EnrollTotp(EnrollTotp {
            user_id: UID.into(),
            secret: Some(Sealed { key_id: "k1".into(), nonce: vec![0; 12], ciphertext: vec![1; 36] }),
            step,
            recovery_sha256: (1..=10).map(code).collect(),
            ..Default::default()
        })
    }

    fn session(sid: char, token: u8, factor: Option<Proof>) -> Payload {
        Payload::CreateSession(CreateSession {
            session_id: sid.to_string().repeat(32),
            user_id: UID.into(),
            token_sha256: vec![token; 32],
            expires_at: NOW + 3_600_000,
            idle_timeout_ms: 0,
            client_ip: "192.0.2.1".into(),
            user_agent: String::new(),
            factor: factor.map(|p| FactorProof { proof: Some(p) }),
            method: String::new(),
        })
    }

    fn enrolled_state() -> State {
        let mut state = State::default();
        let version = gatehouse_proto::events::SetClusterVersion { version: crate::version::COMMAND_VERSION };
        state.apply(1, &cmd(1_000, Payload::SetClusterVersion(version)), &mut Vec::new());
        state.apply(1, &create_user_cmd(UID, "ann"), &mut Vec::new());
        let r = state.apply(2, &cmd(NOW, enroll(step_at(NOW))), &mut Vec::new());
        assert_eq!(r.code, Code::Ok as i32, "{r:?}");
        state
    }

    #[test]
    fn a_session_without_the_factor_owes_it_grants_nothing_and_lives_briefly() {
        let mut state = enrolled_state();
        let token = "gs_".to_string() + &"a".repeat(43);
        let mut waiting = session('1', 1, None);
        if let Payload::CreateSession(c) = &mut waiting {
            c.token_sha256 = sessions::token_hash(&token).to_vec();
        }
        let r = state.apply(3, &cmd(NOW, waiting), &mut Vec::new());
        assert_eq!(r.code, Code::Ok as i32, "{r:?}");
        let s = state.session(&"1".repeat(32)).unwrap();
        assert!(s.factor_due);
        assert_eq!(s.expires_at, NOW + DUE_MS, "a waiting session lives only as long as the wait");
        assert_eq!(sessions::verify(&state, &token, NOW + 1, |_| 0), Err(sessions::SessionRejected::FactorDue));
        assert_eq!(sessions::verify_due(&state, &token, NOW + 1).unwrap().user_id, UID);
    }

    #[test]
    fn a_step_is_accepted_once_and_only_near_log_time() {
        let mut state = enrolled_state();
        let now = NOW + 60_000;
        let step = step_at(now);
        let ok = state.apply(3, &cmd(now, session('1', 1, Some(Proof::TotpStep(step)))), &mut Vec::new());
        assert_eq!(ok.code, Code::Ok as i32, "{ok:?}");
        let s = state.session(&"1".repeat(32)).unwrap();
        assert!(!s.factor_due);
        assert_eq!((s.factor.as_str(), s.factor_at), (TOTP, now));
        // The same step again (another node, another session): refused.
        let again = state.apply(4, &cmd(now, session('2', 2, Some(Proof::TotpStep(step)))), &mut Vec::new());
        assert_eq!(again.code, Code::FailedPrecondition as i32);
        assert!(again.message.contains("used already"), "{again:?}");
        // An older step is refused too, and so is one far from log time.
        let older = state.apply(5, &cmd(now, session('2', 2, Some(Proof::TotpStep(step - 1)))), &mut Vec::new());
        assert_eq!(older.code, Code::FailedPrecondition as i32);
        let far = state.apply(6, &cmd(now, session('2', 2, Some(Proof::TotpStep(step + 3)))), &mut Vec::new());
        assert_eq!(far.code, Code::FailedPrecondition as i32);
        assert!(state.session(&"2".repeat(32)).is_none(), "refused sessions are not opened");
        // The enrolling code's step was spent as well.
        let mut state = enrolled_state();
        let r = state.apply(3, &cmd(NOW, session('3', 3, Some(Proof::TotpStep(step_at(NOW))))), &mut Vec::new());
        assert_eq!(r.code, Code::FailedPrecondition as i32);
    }

    #[test]
    fn a_recovery_code_is_spent_once() {
        let mut state = enrolled_state();
        let p = || Some(Proof::RecoverySha256(code(4)));
        assert_eq!(state.apply(3, &cmd(NOW, session('1', 1, p())), &mut Vec::new()).code, Code::Ok as i32);
        assert_eq!(state.session(&"1".repeat(32)).unwrap().factor, RECOVERY);
        let again = state.apply(4, &cmd(NOW, session('2', 2, p())), &mut Vec::new());
        assert_eq!(again.code, Code::FailedPrecondition as i32);
        let unknown =
            state.apply(5, &cmd(NOW, session('2', 2, Some(Proof::RecoverySha256(code(99))))), &mut Vec::new());
        assert_eq!(unknown.code, Code::FailedPrecondition as i32);
        assert_eq!(recovery_left(state.factors.get(UID).unwrap()), 9);
    }

    #[test]
    fn presenting_the_factor_gives_a_waiting_session_a_new_token() {
        let mut state = enrolled_state();
        state.apply(3, &cmd(NOW, session('1', 1, None)), &mut Vec::new());
        let now = NOW + 30_000;
        let present = |token: Vec<u8>, step: u64| {
            Payload::PresentFactor(PresentFactor {
                session_id: "1".repeat(32),
                user_id: UID.into(),
                proof: Some(FactorProof { proof: Some(Proof::TotpStep(step)) }),
                new_token_sha256: token,
                expires_at: now + 3_600_000,
                ..Default::default()
            })
        };
        // Without a new token: refused, nothing spent.
        let r = state.apply(4, &cmd(now, present(vec![], step_at(now))), &mut Vec::new());
        assert_eq!(r.code, Code::Invalid as i32);
        let r = state.apply(5, &cmd(now, present(vec![7; 32], step_at(now))), &mut Vec::new());
        assert_eq!(r.code, Code::Ok as i32, "{r:?}");
        let s = state.session(&"1".repeat(32)).unwrap();
        assert!(!s.factor_due);
        assert_eq!(s.token_sha256, vec![7; 32]);
        assert_eq!(s.expires_at, NOW + 3_600_000, "never past the expiry it was opened with");
        // A step-up on it: no new token.
        let later = now + 60_000;
        let up = Payload::PresentFactor(PresentFactor {
            session_id: "1".repeat(32),
            user_id: UID.into(),
            proof: Some(FactorProof { proof: Some(Proof::TotpStep(step_at(later))) }),
            ..Default::default()
        });
        assert_eq!(state.apply(6, &cmd(later, up), &mut Vec::new()).code, Code::Ok as i32);
        assert_eq!(state.session(&"1".repeat(32)).unwrap().factor_at, later);
    }

    #[test]
    fn attempts_past_the_threshold_lock_totp_but_not_recovery_codes() {
        let mut state = enrolled_state();
        let attempt = Payload::CountFactorAttempt(CountFactorAttempt {
            user_id: UID.into(),
            threshold: 3,
            window_ms: 60_000,
            lockout_ms: 600_000,
        });
        for i in 0..3 {
            let r = state.apply(3 + i, &cmd(NOW + i, attempt.clone()), &mut Vec::new());
            assert_eq!((r.code, r.id.as_str()), (Code::Ok as i32, ""), "attempt {i} may be checked");
        }
        let fourth = state.apply(6, &cmd(NOW + 3, attempt.clone()), &mut Vec::new());
        assert_eq!((fourth.code, fourth.id.as_str()), (Code::Ok as i32, LOCKED_NOW), "one past the threshold locks");
        let fifth = state.apply(7, &cmd(NOW + 4, attempt.clone()), &mut Vec::new());
        assert_eq!(fifth.code, Code::FailedPrecondition as i32, "refused while locked");
        assert!(is_locked(state.factors.get(UID).unwrap(), NOW + 10));
        let now = NOW + 30_000;
        let r = state.apply(9, &cmd(now, session('1', 1, Some(Proof::TotpStep(step_at(now))))), &mut Vec::new());
        assert_eq!(r.code, Code::FailedPrecondition as i32);
        assert!(r.message.contains("locked"));
        // A recovery code gets the owner past a lockout someone else caused.
        let r = state.apply(10, &cmd(now, session('1', 1, Some(Proof::RecoverySha256(code(1))))), &mut Vec::new());
        assert_eq!(r.code, Code::Ok as i32, "{r:?}");
        // A code that works ends the count; the lock runs out on its own.
        let later = NOW + 700_000;
        let r = state.apply(11, &cmd(later, attempt.clone()), &mut Vec::new());
        assert_eq!((r.code, r.id.as_str()), (Code::Ok as i32, ""));
    }

    #[test]
    fn paying_the_factor_never_extends_the_expiry_the_session_was_opened_with() {
        let mut state = enrolled_state();
        let mut short = session('1', 1, None);
        if let Payload::CreateSession(c) = &mut short {
            c.expires_at = NOW + 60_000;
        }
        state.apply(3, &cmd(NOW, short), &mut Vec::new());
        let now = NOW + 30_000;
        let present = Payload::PresentFactor(PresentFactor {
            session_id: "1".repeat(32),
            user_id: UID.into(),
            proof: Some(FactorProof { proof: Some(Proof::TotpStep(step_at(now) + 1)) }),
            new_token_sha256: vec![7; 32],
            expires_at: now + 3_600_000,
            ..Default::default()
        });
        assert_eq!(state.apply(4, &cmd(now, present), &mut Vec::new()).code, Code::Ok as i32);
        assert_eq!(state.session(&"1".repeat(32)).unwrap().expires_at, NOW + 60_000);
    }

    #[test]
    fn removing_the_factor_ends_waiting_sessions_and_enrolling_twice_is_refused() {
        let mut state = enrolled_state();
        let twice = state.apply(3, &cmd(NOW + 30_000, enroll(step_at(NOW + 30_000))), &mut Vec::new());
        assert_eq!(twice.code, Code::AlreadyExists as i32);
        state.apply(4, &cmd(NOW, session('1', 1, None)), &mut Vec::new());
        let rm = Payload::RemoveFactors(RemoveFactors { user_id: UID.into(), kind: TOTP.into(), ..Default::default() });
        assert_eq!(state.apply(5, &cmd(NOW, rm.clone()), &mut Vec::new()).code, Code::Ok as i32);
        assert!(state.session(&"1".repeat(32)).is_none());
        assert!(!state.factors.enrolled(UID));
        assert_eq!(state.apply(6, &cmd(NOW, rm), &mut Vec::new()).code, Code::NotFound as i32);
        // Without a factor, a session owes none.
        state.apply(7, &cmd(NOW, session('2', 2, None)), &mut Vec::new());
        assert!(!state.session(&"2".repeat(32)).unwrap().factor_due);
    }

    fn policy(roles: &[&str], expected: &[&str]) -> Payload {
        let list = |l: &[&str]| l.iter().map(|r| r.to_string()).collect();
        Payload::SetMfaPolicy(SetMfaPolicy { required_roles: list(roles), expected_roles: list(expected) })
    }

    #[test]
    fn a_role_that_requires_a_factor_needs_a_ticket_to_enroll_the_first_one() {
        let mut state = State::default();
        let version = gatehouse_proto::events::SetClusterVersion { version: crate::version::COMMAND_VERSION };
        state.apply(1, &cmd(1_000, Payload::SetClusterVersion(version)), &mut Vec::new());
        state.apply(2, &create_user_cmd(UID, "ann"), &mut Vec::new());
        // A full session from before the policy.
        let token = "gs_".to_string() + &"b".repeat(43);
        let mut before = session('9', 9, None);
        if let Payload::CreateSession(c) = &mut before {
            c.token_sha256 = sessions::token_hash(&token).to_vec();
        }
        assert_eq!(state.apply(3, &cmd(NOW, before), &mut Vec::new()).code, Code::Ok as i32);
        assert!(sessions::verify(&state, &token, NOW + 1, |_| 0).is_ok());
        let unknown = state.apply(4, &cmd(NOW, policy(&["nosuchrole"], &[])), &mut Vec::new());
        assert_eq!(unknown.code, Code::NotFound as i32, "{unknown:?}");
        let stale = state.apply(5, &cmd(NOW, policy(&["viewer"], &["admin"])), &mut Vec::new());
        assert_eq!(stale.code, Code::FailedPrecondition as i32, "proposed over a list that is not the one in force");
        assert_eq!(state.apply(5, &cmd(NOW, policy(&["viewer"], &[])), &mut Vec::new()).code, Code::Ok as i32);
        // At once: the session without a factor no longer serves.
        assert_eq!(sessions::verify(&state, &token, NOW + 2, |_| 0), Err(sessions::SessionRejected::FactorDue));
        // A new session waits, and only an enrollment with a ticket pays it.
        state.apply(6, &cmd(NOW, session('1', 1, None)), &mut Vec::new());
        assert!(state.session(&"1".repeat(32)).unwrap().factor_due);
        let pay = |ticket: Vec<u8>| {
            let Payload::EnrollTotp(mut e) = enroll(step_at(NOW)) else { unreachable!() };
            e.session_id = "1".repeat(32);
            e.new_token_sha256 = vec![8; 32];
            e.expires_at = NOW + 3_600_000;
            e.ticket_sha256 = ticket;
            Payload::EnrollTotp(e)
        };
        let r = state.apply(7, &cmd(NOW, pay(vec![])), &mut Vec::new());
        assert_eq!(r.code, Code::FailedPrecondition as i32, "no ticket: {r:?}");
        let ticket = Payload::IssueEnrollTicket(IssueEnrollTicket {
            user_id: UID.into(),
            ticket_sha256: vec![5; 32],
            expires_at: NOW + 100_000,
        });
        assert_eq!(state.apply(8, &cmd(NOW, ticket), &mut Vec::new()).code, Code::Ok as i32);
        let r = state.apply(9, &cmd(NOW, pay(vec![6; 32])), &mut Vec::new());
        assert_eq!(r.code, Code::FailedPrecondition as i32, "another ticket");
        let r = state.apply(10, &cmd(NOW + 150_000, pay(vec![5; 32])), &mut Vec::new());
        assert_eq!(r.code, Code::FailedPrecondition as i32, "an expired ticket");
        assert!(!state.factors.enrolled(UID));
        let r = state.apply(11, &cmd(NOW, pay(vec![5; 32])), &mut Vec::new());
        assert_eq!(r.code, Code::Ok as i32, "{r:?}");
        let s = state.session(&"1".repeat(32)).unwrap();
        assert!(!s.factor_due && s.factor == TOTP && s.token_sha256 == vec![8; 32]);
        assert!(state.factors.get(UID).unwrap().enroll_ticket_sha256.is_empty(), "the ticket is spent");
        // The factor a role requires is not removed by its holder (an admin's reset is).
        let own =
            Payload::RemoveFactors(RemoveFactors { user_id: UID.into(), kind: TOTP.into(), ..Default::default() });
        assert_eq!(state.apply(12, &cmd(NOW, own), &mut Vec::new()).code, Code::FailedPrecondition as i32);
        let reset = Payload::RemoveFactors(RemoveFactors { user_id: UID.into(), ..Default::default() });
        assert_eq!(state.apply(13, &cmd(NOW, reset), &mut Vec::new()).code, Code::Ok as i32);
        assert_eq!(state.sessions_of(UID).count(), 0, "an admin's reset ends every session of the user");
        // Lifting the policy.
        assert_eq!(state.apply(14, &cmd(NOW, policy(&[], &["viewer"])), &mut Vec::new()).code, Code::Ok as i32);
        assert!(state.mfa_required_roles().is_empty());
    }

    #[test]
    fn a_reseal_replaces_only_the_value_it_opened() {
        let mut state = enrolled_state();
        let old = state.factors.get(UID).unwrap().totp.clone().unwrap().secret.unwrap();
        let new = Sealed { key_id: "k2".into(), nonce: vec![9; 12], ciphertext: vec![2; 36] };
        let reseal = |previous: Vec<u8>| {
            Payload::ResealSecrets(ResealSecrets {
                totp: vec![gatehouse_proto::events::ResealedTotp {
                    user_id: UID.into(),
                    previous_nonce: previous,
                    secret: Some(new.clone()),
                }],
                tokens: vec![],
                signing_keys: vec![],
            })
        };
        let r = state.apply(3, &cmd(NOW, reseal(vec![7; 12])), &mut Vec::new());
        assert_eq!((r.code, r.id.as_str()), (Code::Ok as i32, "0"), "another value: left as it is");
        assert_eq!(state.factors.get(UID).unwrap().totp.as_ref().unwrap().secret.as_ref(), Some(&old));
        let r = state.apply(4, &cmd(NOW, reseal(old.nonce.clone())), &mut Vec::new());
        assert_eq!((r.code, r.id.as_str()), (Code::Ok as i32, "1"));
        let t = state.factors.get(UID).unwrap().totp.clone().unwrap();
        assert_eq!(t.secret, Some(new));
        assert_eq!(t.last_step, step_at(NOW), "nothing else changes");
    }
}
