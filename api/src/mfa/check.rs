//! What a voter does with a second factor: checks a code against a user's
//! factors, pays a session that waits for one, enrolls and removes an
//! authenticator, and makes new recovery codes. Every step is audited.
//!
//! A TOTP attempt is counted through the log (`CountFactorAttempt`) before
//! its code is checked, so guesses sent to several nodes at once count as
//! exactly as one at a time, and the lockout after `max_failures` holds on
//! every node; the request also counts against the login endpoint's strict
//! limits by address. Recovery codes are too long to guess and get the
//! owner past a lockout. A right code is only a proof: the
//! command that spends it (opening or paying a session, enrolling) is
//! where the log refuses a code that was spent a moment ago elsewhere.
//!
//! Changes to one's own factors ask for the password again (or, for a
//! person without one, a sign-in within the re-authentication window), and
//! removing a factor or replacing recovery codes asks for a current code
//! as well: a stolen session alone can neither add an attacker's
//! authenticator nor take the owner's away.

use std::net::IpAddr;

use base64::Engine as _;
use gatehouse_domain::factors::{self, is_locked, recovery_left};
use gatehouse_domain::Payload;
use gatehouse_proto::events::factor_proof::Proof;
use gatehouse_proto::events::{
    CountFactorAttempt, EnrollTotp, FactorProof, IssueEnrollTicket, PresentFactor, RemoveFactors, Sealed,
    SetRecoveryCodes,
};
use prost::Message as _;

use super::{recovery, totp};
use crate::audit::{self, Actor};
use crate::http::front::Front;
use crate::identity::{Principal, Via};
use crate::sign_in::own;
use crate::sign_in::Opened;
use crate::{ApiError, Node};
use gatehouse_cluster::clock::now_ms;

/// The longest code a form or request may carry (a recovery code with
/// spaces or dashes).
pub const MAX_CODE: usize = 64;

pub(super) fn audit_factor(node: &Node, action: &str, outcome: &str, actor: &Actor, user_id: &str, detail: &str) {
    let mut e = audit::event(action, outcome, actor, format!("user:{user_id}"));
    e.detail = detail.into();
    node.audit(e);
}

/// Checks `code` as `user_id`'s second factor: the proof to spend, or why
/// not. A TOTP code is six digits: the attempt is counted through the log
/// before the code is looked at (refused once the factor locks). Anything
/// else is tried as a recovery code, which a lockout does not stop.
pub async fn proof(front: &Front, user_id: &str, code: &str, actor: &Actor) -> Result<FactorProof, ApiError> {
    let node = &front.node;
    let record = node.view().read().factors_of(user_id).cloned();
    let Some(r) = record.filter(factors::enrolled) else {
        return Err(ApiError::InvalidSecondFactor);
    };
    let code = code.trim();
    let typed: String = code.chars().filter(|c| *c != ' ').collect();
    if typed.len() == 6 && typed.bytes().all(|b| b.is_ascii_digit()) {
        // A person with passkeys only has no code to type.
        let Some(totp_factor) = r.totp.as_ref() else { return Err(ApiError::InvalidSecondFactor) };
        attempt(front, user_id, actor).await?;
        let sealer = front.mfa.sealer().ok_or(ApiError::Unavailable { leader: None })?;
        let sealed = totp_factor.secret.as_ref().ok_or(ApiError::Internal)?;
        let secret = sealer.open(sealed, &totp::context(user_id)).map_err(|e| {
            tracing::error!(error = %e, "a TOTP secret did not open: is its key in [secrets]?");
            ApiError::Unavailable { leader: None }
        })?;
        let last = node.view().read().factors_of(user_id).and_then(|f| f.totp.as_ref()).map_or(0, |t| t.last_step);
        return match totp::check(&secret, &typed, now_ms() / 1000) {
            Some(step) if step > last => Ok(FactorProof { proof: Some(Proof::TotpStep(step)) }),
            Some(_) => {
                audit_factor(node, "mfa.failure", "denied", actor, user_id, "a used code");
                Err(ApiError::InvalidSecondFactor)
            }
            None => {
                audit_factor(node, "mfa.failure", "denied", actor, user_id, "a wrong code");
                Err(ApiError::InvalidSecondFactor)
            }
        };
    }
    let found = recovery::normalize(code).and_then(|c| {
        let h = recovery::hash(&c);
        r.recovery.iter().any(|x| x.spent_at == 0 && x.sha256 == h).then(|| Proof::RecoverySha256(h.to_vec()))
    });
    match found {
        Some(p) => Ok(FactorProof { proof: Some(p) }),
        None => {
            audit_factor(node, "mfa.failure", "denied", actor, user_id, "not a recovery code");
            Err(ApiError::InvalidSecondFactor)
        }
    }
}

/// Counts a TOTP attempt through the log before its code is checked; a
/// lockout (now or already) refuses it. An attempt that cannot be counted
/// is not checked.
async fn attempt(front: &Front, user_id: &str, actor: &Actor) -> Result<(), ApiError> {
    let node = &front.node;
    let c = &front.mfa.config;
    let cmd = node.command(Payload::CountFactorAttempt(CountFactorAttempt {
        user_id: user_id.to_string(),
        threshold: c.max_failures,
        window_ms: c.failure_window.as_millis() as u64,
        lockout_ms: c.lockout.as_millis() as u64,
    }));
    match node.propose_one(cmd).await {
        Ok(r) if r.id == factors::LOCKED_NOW => {
            audit_factor(node, "mfa.locked", "ok", actor, user_id, "");
            Err(ApiError::SecondFactorLocked)
        }
        Ok(_) => Ok(()),
        Err(ApiError::FailedPrecondition(m)) if m == factors::LOCKED => {
            audit_factor(node, "mfa.failure", "denied", actor, user_id, "locked");
            Err(ApiError::SecondFactorLocked)
        }
        Err(ApiError::NotFound(_)) => Err(ApiError::InvalidSecondFactor),
        Err(e) => {
            tracing::warn!(error = %e, "counting a second-factor attempt failed");
            Err(e)
        }
    }
}

/// The factor a proof stands for, as audit details say it.
fn factor_of(p: &FactorProof) -> &'static str {
    match p.proof {
        Some(Proof::RecoverySha256(_)) => factors::RECOVERY,
        Some(Proof::Passkey(_)) => factors::PASSKEY,
        _ => factors::TOTP,
    }
}

/// A second factor as a person presents it: a code typed (TOTP or
/// recovery), or a passkey's answer to the ceremony its page offered.
#[derive(Clone)]
pub enum Presented {
    Code(String),
    Passkey { ceremony: String, response: String },
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Presented::Code(_) => "Presented::Code",
            Presented::Passkey { .. } => "Presented::Passkey",
        })
    }
}

impl Presented {
    /// Puts it into a front's request to a voter.
    pub fn write_to(&self, request: &mut gatehouse_proto::front::OwnFactorRequest) {
        match self {
            Presented::Code(code) => request.code = code.clone(),
            Presented::Passkey { ceremony, response } => {
                request.passkey_ceremony = ceremony.clone();
                request.passkey_response = response.clone();
            }
        }
    }

    /// What a front's request presents: a passkey's answer when it has
    /// one, else the code.
    pub fn of(code: String, ceremony: String, response: String) -> Presented {
        if response.is_empty() {
            Presented::Code(code)
        } else {
            Presented::Passkey { ceremony, response }
        }
    }

    /// Nothing was entered.
    pub fn is_empty(&self) -> bool {
        match self {
            Presented::Code(c) => c.trim().is_empty(),
            Presented::Passkey { response, .. } => response.is_empty(),
        }
    }
}

/// The proof of `presented` by `user_id` on session `session_id`.
async fn proof_of(
    front: &Front,
    user_id: &str,
    session_id: &str,
    presented: &Presented,
    actor: &Actor,
) -> Result<FactorProof, ApiError> {
    match presented {
        Presented::Code(code) => proof(front, user_id, code, actor).await,
        Presented::Passkey { ceremony, response } => {
            super::passkey::proof(front, user_id, session_id, ceremony, response, actor)
                .map_err(|_| ApiError::InvalidSecondFactor)
        }
    }
}

/// Pays the second factor a session waits for (`token`: its waiting
/// token): the session gets a new token, returned for the cookie, and
/// grants access from now. Returns once this node has applied it. The
/// login endpoint's limits are the caller's to count (the HTTP layer on
/// a voter, `SignInService` for a front's).
pub async fn present(
    front: &Front,
    token: &str,
    presented: &Presented,
    ip: IpAddr,
    trust: Option<&super::devices::Trust>,
) -> Result<Opened, ApiError> {
    let node = &front.node;
    node.catch_up(std::time::Duration::from_millis(500)).await;
    let waiting = gatehouse_domain::sessions::verify_due(&node.view().read(), token, now_ms());
    let Ok(id) = waiting else { return Err(ApiError::Unauthenticated) };
    let actor = Actor {
        user_id: id.user_id.clone(),
        session_id: id.session_id.clone(),
        client_ip: ip.to_string(),
        ..Default::default()
    };
    let proof = proof_of(front, &id.user_id, &id.session_id, presented, &actor).await?;
    let factor = factor_of(&proof);
    let minted = crate::mint::new_session_token();
    let expires_at = now_ms() + front.config.session_ttl.as_millis() as u64;
    // A trust asked for, for as long as this voter allows (none: none).
    let trust = trust.filter(|_| super::devices::offered(front, &id.user_id)).zip(front.mfa.config.trusted_device);
    let cmd = node.command(Payload::PresentFactor(PresentFactor {
        session_id: id.session_id.clone(),
        user_id: id.user_id.clone(),
        proof: Some(proof),
        new_token_sha256: minted.token_sha256.to_vec(),
        expires_at,
        trust_device_sha256: trust.map(|(t, _)| t.sha256.to_vec()).unwrap_or_default(),
        trust_until: trust.map_or(0, |(_, ttl)| now_ms() + ttl.as_millis() as u64),
        trust_label: trust.map(|(t, _)| t.label.clone()).unwrap_or_default(),
    }));
    let request_id = cmd.request_id.clone();
    let applied = node.propose(vec![cmd]).await?;
    if let Err(e) = applied.results.iter().try_for_each(ApiError::check) {
        // Spent a moment ago through another node, or locked meanwhile.
        audit_factor(node, "mfa.failure", "denied", &actor, &id.user_id, &e.to_string());
        return Err(refusal(e));
    }
    let mut e = audit::event("login.success", "ok", &actor, format!("session:{}", id.session_id));
    e.request_id = request_id;
    e.detail = format!("second factor: {factor}{}", if trust.is_some() { "; browser trusted" } else { "" });
    node.audit(e);
    Ok(Opened {
        user_id: id.user_id,
        username: id.username,
        roles: id.roles,
        session_id: id.session_id,
        token: minted.token,
        expires_at,
        log_index: applied.log_index,
        factor_due: false,
    })
}

/// The session `token` names, when it waits for its second factor, as the
/// caller it stands for (for ending it: the second step's "cancel").
pub fn waiting_principal(node: &Node, token: &str) -> Option<Principal> {
    let id = gatehouse_domain::sessions::verify_due(&node.view().read(), token, now_ms()).ok()?;
    Some(Principal {
        user_id: id.user_id,
        username: id.username,
        roles: id.roles,
        via: Via::Session { session_id: id.session_id },
        factor: None,
    })
}

/// A TOTP secret offered for enrollment: shown to the person, and sealed
/// (for this session only) into the form that confirms it.
pub struct Enrolling {
    /// The secret in base32, for typing into an app.
    pub secret: String,
    pub uri: String,
    /// The QR code of `uri`, inline SVG.
    pub qr_svg: String,
    /// The sealed secret, for the confirming form (base64url).
    pub sealed: String,
}

impl std::fmt::Debug for Enrolling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolling").finish_non_exhaustive()
    }
}

/// The longest sealed enrollment value a form may carry.
pub const MAX_SEALED_FORM: usize = 512;
/// How long an enrollment form may be confirmed after it was shown.
pub const ENROLL_FORM_TTL_MS: u64 = 15 * 60_000;

fn session_of(p: &Principal) -> Result<&str, ApiError> {
    match &p.via {
        Via::Session { session_id } => Ok(session_id),
        Via::ApiKey { .. } => Err(ApiError::PermissionDenied("this needs a signed-in session, not an API key".into())),
    }
}

/// A new secret for `p` to enroll (nothing is written yet).
pub fn enrolling(front: &Front, p: &Principal) -> Result<Enrolling, ApiError> {
    let session_id = session_of(p)?;
    let sealer = front.mfa.sealer().ok_or_else(|| {
        ApiError::FailedPrecondition("authenticator apps are not available here: the voters hold no [secrets]".into())
    })?;
    let account = front.node.view().read().user(&p.user_id).map(|u| u.username.clone()).unwrap_or_default();
    let secret = totp::new_secret();
    let uri = totp::uri(&secret, &front.mfa.config.issuer, &account).ok_or(ApiError::Internal)?;
    let qr_svg = totp::qr_svg(&uri).ok_or(ApiError::Internal)?;
    // The secret and when it was offered: a form older than
    // [`ENROLL_FORM_TTL_MS`] is refused.
    let offered = [&secret[..], &now_ms().to_be_bytes()].concat();
    let sealed = sealer.seal(&offered, &totp::enrolling_context(&p.user_id, session_id));
    let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed.encode_to_vec());
    Ok(Enrolling { secret: totp::base32(&secret), uri, qr_svg, sealed })
}

/// Enrolls the secret `sealed` (from [`enrolling`], for this session)
/// once `code` proves the app has it; the recovery codes, shown once.
pub async fn enroll(
    front: &Front,
    p: &Principal,
    sealed: &str,
    code: &str,
    password: String,
    ip: IpAddr,
) -> Result<(Vec<String>, u64), ApiError> {
    let session_id = session_of(p)?.to_string();
    let sealer = front.mfa.sealer().ok_or(ApiError::Unavailable { leader: None })?;
    own::reauth(front, p, password, ip).await?;
    // A person who has a factor (a passkey) adds another only with it
    // fresh: the password alone adds no authenticator beside theirs.
    let (first, codes_left) = {
        let state = front.node.view().read();
        (!state.has_factor(&p.user_id), state.factors_of(&p.user_id).map_or(0, recovery_left))
    };
    if !first {
        fresh_factor(front, p, "", own::window(front), ip).await?;
    }
    let Some(secret) = offered_secret(front, p, sealed)? else {
        return Err(ApiError::InvalidArgument(
            "this enrollment form is not for this session or expired; start again".into(),
        ));
    };
    let actor = Actor::of(p, ip.to_string());
    let Some(step) = totp::check(&secret, code.trim(), now_ms() / 1000) else {
        audit_factor(&front.node, "mfa.enroll", "denied", &actor, &p.user_id, "a wrong code");
        return Err(ApiError::InvalidSecondFactor);
    };
    // Recovery codes come with a first factor (or when none are left);
    // a second one leaves the person's codes as they are.
    let codes = if first || codes_left == 0 { recovery::new_codes() } else { Vec::new() };
    let cmd = front.node.command(Payload::EnrollTotp(EnrollTotp {
        user_id: p.user_id.clone(),
        secret: Some(sealer.seal(&secret, &totp::context(&p.user_id))),
        step,
        recovery_sha256: codes.iter().map(|c| recovery::hash(c).to_vec()).collect(),
        session_id,
        ..Default::default()
    }));
    let applied = audit::write(&front.node, &actor, cmd).await?;
    Ok((codes, applied.log_index))
}

/// Opens an enrollment form's sealed secret for `p`'s session, when it is
/// fresh; `None` for any other form.
fn offered_secret(front: &Front, p: &Principal, sealed: &str) -> Result<Option<Vec<u8>>, ApiError> {
    let session_id = session_of(p)?;
    let sealer = front.mfa.sealer().ok_or(ApiError::Unavailable { leader: None })?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sealed.as_bytes())
        .ok()
        .filter(|b| b.len() <= MAX_SEALED_FORM)
        .and_then(|b| Sealed::decode(b.as_slice()).ok());
    let opened = bytes.and_then(|s| sealer.open(&s, &totp::enrolling_context(&p.user_id, session_id)).ok());
    let fresh = |o: &Vec<u8>| {
        let at = o.get(totp::SECRET_BYTES..).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
        at.is_some_and(|at| now_ms().saturating_sub(at) <= ENROLL_FORM_TTL_MS)
    };
    Ok(opened.filter(fresh).map(|o| o[..totp::SECRET_BYTES].to_vec()))
}

/// The longest enrollment ticket a form may carry.
pub const MAX_TICKET: usize = 64;

/// Enrolls a first factor from a session that waits for it (a user whose
/// role requires one and who has none): the sealed secret offered to that
/// session, a code from the app, and the enrollment ticket an admin issued.
/// The session gets a new token and access; the recovery codes, once.
pub async fn enroll_waiting(
    front: &Front,
    token: &str,
    sealed: &str,
    code: &str,
    ticket: &str,
    ip: IpAddr,
) -> Result<(Opened, Vec<String>), ApiError> {
    let node = &front.node;
    let p = waiting_principal(node, token).ok_or(ApiError::Unauthenticated)?;
    let actor = Actor::of(&p, ip.to_string());
    // The ticket is checked here first: a wrong one costs no log write.
    let hash = recovery::hash(ticket);
    let held =
        node.view().read().factors_of(&p.user_id).map(|f| (f.enroll_ticket_sha256.clone(), f.enroll_ticket_expires_at));
    let ticket_ok = held.is_some_and(|(h, until)| {
        until > now_ms() && !h.is_empty() && bool::from(subtle::ConstantTimeEq::ct_eq(h.as_slice(), hash.as_slice()))
    });
    if !ticket_ok {
        audit_factor(node, "mfa.enroll", "denied", &actor, &p.user_id, "no valid enrollment ticket");
        return Err(ApiError::InvalidSecondFactor);
    }
    let Some(secret) = offered_secret(front, &p, sealed)? else {
        return Err(ApiError::InvalidArgument(
            "this enrollment form is not for this session or expired; start again".into(),
        ));
    };
    let Some(step) = totp::check(&secret, code.trim(), now_ms() / 1000) else {
        audit_factor(node, "mfa.enroll", "denied", &actor, &p.user_id, "a wrong code");
        return Err(ApiError::InvalidSecondFactor);
    };
    let sealer = front.mfa.sealer().ok_or(ApiError::Unavailable { leader: None })?;
    let codes = recovery::new_codes();
    let minted = crate::mint::new_session_token();
    let expires_at = now_ms() + front.config.session_ttl.as_millis() as u64;
    let session_id = session_of(&p)?.to_string();
    let cmd = node.command(Payload::EnrollTotp(EnrollTotp {
        user_id: p.user_id.clone(),
        secret: Some(sealer.seal(&secret, &totp::context(&p.user_id))),
        step,
        recovery_sha256: codes.iter().map(|c| recovery::hash(c).to_vec()).collect(),
        session_id: session_id.clone(),
        new_token_sha256: minted.token_sha256.to_vec(),
        expires_at,
        ticket_sha256: recovery::hash(ticket).to_vec(),
    }));
    let applied = match audit::write(node, &actor, cmd).await {
        Ok(a) => a,
        Err(ApiError::FailedPrecondition(m)) if m == factors::TICKET_NEEDED => {
            return Err(ApiError::InvalidSecondFactor);
        }
        Err(e) => return Err(e),
    };
    let expires_at = node.view().read().session(&session_id).map_or(expires_at, |s| s.expires_at);
    let opened = Opened {
        user_id: p.user_id,
        username: p.username,
        roles: p.roles,
        session_id,
        token: minted.token,
        expires_at,
        log_index: applied.log_index,
        factor_due: false,
    };
    Ok((opened, codes))
}

/// A new enrollment ticket for `user_id` (shown once to the admin who
/// asked), valid `ttl_ms`.
pub async fn issue_ticket(node: &Node, actor: &Actor, user_id: &str, ttl_ms: u64) -> Result<(String, u64), ApiError> {
    let ticket = recovery::new_codes().swap_remove(0);
    let expires_at = now_ms() + ttl_ms;
    let cmd = node.command(Payload::IssueEnrollTicket(IssueEnrollTicket {
        user_id: user_id.to_string(),
        ticket_sha256: recovery::hash(&ticket).to_vec(),
        expires_at,
    }));
    audit::write(node, actor, cmd).await?;
    Ok((ticket, expires_at))
}

/// The checks before `p` changes factors they have: the password again
/// (or a recent sign-in), and a current code.
async fn confirm_factor(
    front: &Front,
    p: &Principal,
    code: &str,
    password: String,
    ip: IpAddr,
) -> Result<(), ApiError> {
    session_of(p)?;
    if !own::has_password(front, p) {
        // A password check counts against the login limits itself.
        front.limits.login_attempt(ip).await?;
    }
    own::reauth(front, p, password, ip).await?;
    let actor = Actor::of(p, ip.to_string());
    let proof = match proof(front, &p.user_id, code, &actor).await {
        Ok(proof) => proof,
        Err(e) => {
            if e == ApiError::InvalidSecondFactor {
                front.limits.login_refused(ip).await?;
            }
            return Err(e);
        }
    };
    step_up(front, p, proof, &actor).await.map(drop)
}

/// A sensitive change by `p` (a key made) needs a fresh second factor
/// when `p` has one: presented within `window`, or `code` now (spent as a
/// step-up). Nothing is asked of a person without a factor.
pub async fn fresh_factor(
    front: &Front,
    p: &Principal,
    code: &str,
    window: std::time::Duration,
    ip: IpAddr,
) -> Result<(), ApiError> {
    let (has, required) = {
        let state = front.node.view().read();
        (state.has_factor(&p.user_id), state.factor_required(&p.user_id))
    };
    if !has && !required {
        return Ok(());
    }
    let fresh = p.factor.is_some_and(|(_, at)| now_ms().saturating_sub(at) <= window.as_millis() as u64);
    if fresh {
        return Ok(());
    }
    if code.trim().is_empty() {
        return Err(ApiError::SecondFactorRequired);
    }
    let actor = Actor::of(p, ip.to_string());
    let proof = match proof(front, &p.user_id, code, &actor).await {
        Ok(proof) => proof,
        Err(e) => {
            if e == ApiError::InvalidSecondFactor {
                front.limits.login_refused(ip).await?;
            }
            return Err(e);
        }
    };
    step_up(front, p, proof, &actor).await.map(drop)
}

/// A step-up: `code` checked and spent on `p`'s session, whose second
/// factor is fresh from now. The login endpoint's limits are the caller's.
pub async fn step_up_with(front: &Front, p: &Principal, presented: &Presented, ip: IpAddr) -> Result<u64, ApiError> {
    let session_id = session_of(p)?;
    let actor = Actor::of(p, ip.to_string());
    let proof = proof_of(front, &p.user_id, session_id, presented, &actor).await?;
    step_up(front, p, proof, &actor).await
}

/// Spends `proof` on `p`'s session (a step-up: its factor is fresh from
/// now), so the code is used once here as anywhere.
async fn step_up(front: &Front, p: &Principal, proof: FactorProof, actor: &Actor) -> Result<u64, ApiError> {
    let factor = factor_of(&proof);
    let cmd = front.node.command(Payload::PresentFactor(PresentFactor {
        session_id: session_of(p)?.to_string(),
        user_id: p.user_id.clone(),
        proof: Some(proof),
        ..Default::default()
    }));
    let applied = front.node.propose(vec![cmd]).await?;
    if let Err(e) = applied.results.iter().try_for_each(ApiError::check) {
        audit_factor(&front.node, "mfa.failure", "denied", actor, &p.user_id, &e.to_string());
        return Err(refusal(e));
    }
    audit_factor(&front.node, "mfa.step_up", "ok", actor, &p.user_id, factor);
    Ok(applied.log_index)
}

/// A refused spend as the person is told it.
fn refusal(e: ApiError) -> ApiError {
    match e {
        ApiError::FailedPrecondition(m) if m == factors::LOCKED => ApiError::SecondFactorLocked,
        ApiError::FailedPrecondition(_) => ApiError::InvalidSecondFactor,
        e => e,
    }
}

/// Removes `p`'s authenticator (with its recovery codes).
pub async fn remove_totp(
    front: &Front,
    p: &Principal,
    code: &str,
    password: String,
    ip: IpAddr,
) -> Result<u64, ApiError> {
    confirm_factor(front, p, code, password, ip).await?;
    let cmd = front.node.command(Payload::RemoveFactors(RemoveFactors {
        user_id: p.user_id.clone(),
        kind: factors::TOTP.into(),
        ..Default::default()
    }));
    Ok(audit::write(&front.node, &Actor::of(p, ip.to_string()), cmd).await?.log_index)
}

/// New recovery codes for `p`, replacing the old ones; shown once.
pub async fn new_recovery_codes(
    front: &Front,
    p: &Principal,
    code: &str,
    password: String,
    ip: IpAddr,
) -> Result<(Vec<String>, u64), ApiError> {
    confirm_factor(front, p, code, password, ip).await?;
    let codes = recovery::new_codes();
    let cmd = front.node.command(Payload::SetRecoveryCodes(SetRecoveryCodes {
        user_id: p.user_id.clone(),
        recovery_sha256: codes.iter().map(|c| recovery::hash(c).to_vec()).collect(),
    }));
    let applied = audit::write(&front.node, &Actor::of(p, ip.to_string()), cmd).await?;
    Ok((codes, applied.log_index))
}

/// What "my account" shows of a person's factors.
#[derive(Debug, Clone, Default)]
pub struct FactorsView {
    pub totp_enrolled_at: Option<u64>,
    pub totp_last_used_at: u64,
    pub recovery_left: usize,
    pub locked_until: u64,
}

/// `user_id`'s factors as "my account" shows them.
pub fn view_of(node: &Node, user_id: &str) -> FactorsView {
    let state = node.view().read();
    let Some(r) = state.factors_of(user_id) else { return FactorsView::default() };
    FactorsView {
        totp_enrolled_at: r.totp.as_ref().map(|t| t.enrolled_at),
        totp_last_used_at: r.totp.as_ref().map_or(0, |t| t.last_used_at),
        recovery_left: recovery_left(r),
        locked_until: if is_locked(r, now_ms()) { r.locked_until } else { 0 },
    }
}
