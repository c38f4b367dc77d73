//! Trusted browsers: a person who presented a second factor may ask that
//! browser to be trusted for a while (`[mfa] trusted_device_days`, off
//! unless set). Its cookie holds a 256-bit device token; the log holds the
//! token's SHA-256 beside the person's factors. A sign-in from that
//! browser then presents the trust as its second factor: the session
//! opens paid, its factor is `device`, and the factor's time is when the
//! trust was given (so a route's `mfa_within` still asks for a fresh one).
//!
//! Trust is the person's and the cluster's, not the cookie's: forgetting a
//! browser (or all of them), an admin's reset, or removing the last factor
//! ends it on every node at once, and it ends by itself when it expires.

use gatehouse_proto::events::{ForgetDevices, PresentFactor};
use gatehouse_proto::state::{FactorsRecord, TrustedDevice};

use crate::factors::{self, Spend};
use crate::mutation::Mutation;
use crate::result::ApplyError;
use crate::state::State;

/// The factor name sessions and headers carry.
pub const DEVICE: &str = "device";
/// The most browsers a person trusts at once (the oldest goes first).
pub const MAX_DEVICES: usize = 10;
/// The longest trust.
pub const MAX_TRUST_MS: u64 = 90 * 24 * 3_600_000;
/// The longest label (a shortened user agent).
pub const MAX_LABEL: usize = 128;

/// The command version that brought trusts (a node must apply them all).
pub const VERSION: u32 = 6;

/// The refusal of a device token that is not a live trust of this person.
pub const NOT_TRUSTED: &str = "this browser is not trusted for this user";

/// The per-field bounds of a trust asked for in `PresentFactor`.
pub fn check_trust(c: &PresentFactor) -> Result<(), ApplyError> {
    if c.trust_device_sha256.is_empty() {
        if c.trust_until != 0 || !c.trust_label.is_empty() {
            return Err(ApplyError::Invalid("a trust names its device".into()));
        }
        return Ok(());
    }
    if c.trust_device_sha256.len() != 32 || c.trust_label.len() > MAX_LABEL {
        return Err(ApplyError::Invalid("a trusted device is a 32-byte hash and a short label".into()));
    }
    Ok(())
}

/// The per-field bounds of `ForgetDevices`.
pub fn check_forget(c: &ForgetDevices) -> Result<(), ApplyError> {
    if !c.device_sha256.is_empty() && c.device_sha256.len() != 32 {
        return Err(ApplyError::Invalid("a device hash is 32 bytes".into()));
    }
    Ok(())
}

/// Checks a trusted device presented by `r`'s person at `now`.
pub(crate) fn check(r: &FactorsRecord, now: u64, sha256: &[u8]) -> Result<Spend, ApplyError> {
    let found = r.devices.iter().position(|d| d.sha256 == sha256 && d.expires_at > now);
    let index = found.ok_or_else(|| ApplyError::FailedPrecondition(NOT_TRUSTED.into()))?;
    Ok(Spend::Device { index, trusted_at: r.devices[index].created_at })
}

/// Spends a checked use: the trust was used now.
pub(crate) fn spend(r: &mut FactorsRecord, now: u64, index: usize) {
    if let Some(d) = r.devices.get_mut(index) {
        d.last_used_at = now;
    }
}

/// Adds the trust `c` asks for (bounds checked) to `r`, dropping expired
/// ones and, past [`MAX_DEVICES`], the oldest.
pub(crate) fn trust(r: &mut FactorsRecord, now: u64, c: &PresentFactor) -> Result<(), ApplyError> {
    if c.trust_device_sha256.is_empty() {
        return Ok(());
    }
    if c.trust_until <= now {
        return Err(ApplyError::Invalid("a trust must end in the future".into()));
    }
    // Clamped, not refused: the proposer's clock may run ahead of log time.
    let expires_at = c.trust_until.min(now + MAX_TRUST_MS);
    r.devices.retain(|d| d.expires_at > now && d.sha256 != c.trust_device_sha256);
    if r.devices.len() >= MAX_DEVICES {
        r.devices.sort_by_key(|d| d.created_at);
        r.devices.drain(..=r.devices.len() - MAX_DEVICES);
    }
    r.devices.push(TrustedDevice {
        sha256: c.trust_device_sha256.clone(),
        label: c.trust_label.chars().filter(|c| !c.is_control()).collect(),
        created_at: now,
        expires_at,
        last_used_at: 0,
    });
    Ok(())
}

/// Applies [`ForgetDevices`].
pub(crate) fn forget(state: &mut State, c: &ForgetDevices, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    check_forget(c)?;
    let mut r = state.factors.get(&c.user_id).cloned().unwrap_or_default();
    let before = r.devices.len();
    if c.device_sha256.is_empty() {
        r.devices.clear();
    } else {
        r.devices.retain(|d| d.sha256 != c.device_sha256);
    }
    if r.devices.len() == before {
        return Err(ApplyError::NotFound("no such trusted browser".into()));
    }
    state.factors.store(r, out);
    // Forgetting every browser ends the sessions trusts opened, too.
    if c.device_sha256.is_empty() {
        let opened: Vec<String> =
            state.sessions.of_user(&c.user_id).filter(|s| s.factor == DEVICE).map(|s| s.session_id).collect();
        for id in opened {
            if let Some(id) = crate::sessions::id128(&id) {
                state.sessions.remove(id, out);
            }
        }
    }
    Ok(c.user_id.clone())
}

/// Ends every trust of `user_id` (a password change, a disabled account).
pub(crate) fn forget_user(state: &mut State, user_id: &str, out: &mut Vec<Mutation>) {
    if let Some(mut r) = state.factors.get(user_id).filter(|r| !r.devices.is_empty()).cloned() {
        r.devices.clear();
        state.factors.store(r, out);
    }
}

/// Live trusts in `r` at `now`.
pub fn trusted(r: &FactorsRecord, now: u64) -> usize {
    r.devices.iter().filter(|d| d.expires_at > now).count()
}

/// Whether `r` may carry trusts: only beside a factor.
pub(crate) fn keep_only_with_a_factor(r: &mut FactorsRecord) {
    if !factors::enrolled(r) {
        r.devices.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::tests::create_user_cmd;
    use gatehouse_proto::events::command_result::Code;
    use gatehouse_proto::events::factor_proof::Proof;
    use gatehouse_proto::events::{
        command::Payload, Command, CreateSession, EnrollTotp, FactorProof, RemoveFactors, Sealed, SetClusterVersion,
    };

    const ANN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const NOW: u64 = 1_700_000_000_000;
    const DAY: u64 = 24 * 3_600_000;

    fn cmd(at: u64, p: Payload) -> Command {
        Command { proposed_at: at, payload: Some(p), ..Default::default() }
    }

    fn session(sid: char, factor: Option<Proof>) -> Payload {
        Payload::CreateSession(CreateSession {
            session_id: sid.to_string().repeat(32),
            user_id: ANN.into(),
            token_sha256: vec![sid as u8; 32],
            expires_at: NOW + 100 * DAY,
            factor: factor.map(|p| FactorProof { proof: Some(p) }),
            ..Default::default()
        })
    }

    /// Ann with an app, a waiting session paid with a recovery code that
    /// trusts device `d` for a day.
    fn trusted_state(d: u8) -> State {
        let mut state = State::default();
        let version = SetClusterVersion { version: crate::version::COMMAND_VERSION };
        state.apply(1, &cmd(1_000, Payload::SetClusterVersion(version)), &mut Vec::new());
        state.apply(2, &create_user_cmd(ANN, "ann"), &mut Vec::new());
        let enroll = EnrollTotp {
            user_id: ANN.into(),
            secret: Some(Sealed { key_id: "k1".into(), nonce: vec![0; 12], ciphertext: vec![1; 36] }),
            step: factors::step_at(NOW),
            recovery_sha256: (1..=10).map(|n| vec![n; 32]).collect(),
            ..Default::default()
        };
        assert_eq!(state.apply(3, &cmd(NOW, Payload::EnrollTotp(enroll)), &mut Vec::new()).code, Code::Ok as i32);
        assert_eq!(state.apply(4, &cmd(NOW, session('1', None)), &mut Vec::new()).code, Code::Ok as i32);
        let pay = PresentFactor {
            session_id: "1".repeat(32),
            user_id: ANN.into(),
            proof: Some(FactorProof { proof: Some(Proof::RecoverySha256(vec![1; 32])) }),
            new_token_sha256: vec![9; 32],
            expires_at: NOW + DAY,
            trust_device_sha256: vec![d; 32],
            trust_until: NOW + DAY,
            trust_label: "Firefox".into(),
        };
        let r = state.apply(5, &cmd(NOW, Payload::PresentFactor(pay)), &mut Vec::new());
        assert_eq!(r.code, Code::Ok as i32, "{r:?}");
        state
    }

    #[test]
    fn a_trusted_browser_opens_a_paid_session_until_it_expires() {
        let mut state = trusted_state(7);
        let later = NOW + 3_600_000;
        let device = |d: u8| Some(Proof::TrustedDeviceSha256(vec![d; 32]));
        assert_eq!(state.apply(6, &cmd(later, session('2', device(7))), &mut Vec::new()).code, Code::Ok as i32);
        let s = state.session(&"2".repeat(32)).unwrap();
        assert!(!s.factor_due);
        // Its factor dates from when the trust was given.
        assert_eq!((s.factor.as_str(), s.factor_at), (DEVICE, NOW));
        // Another browser, or this one past its trust: the session waits.
        let other = state.apply(7, &cmd(later, session('3', device(8))), &mut Vec::new());
        assert_eq!(other.code, Code::FailedPrecondition as i32);
        let expired = state.apply(8, &cmd(NOW + DAY, session('4', device(7))), &mut Vec::new());
        assert_eq!(expired.code, Code::FailedPrecondition as i32);
    }

    #[test]
    fn forgetting_a_reset_or_the_last_factor_ends_the_trust() {
        let mut state = trusted_state(7);
        let device = || Some(Proof::TrustedDeviceSha256(vec![7; 32]));
        let forget = |d: Vec<u8>| Payload::ForgetDevices(ForgetDevices { user_id: ANN.into(), device_sha256: d });
        assert_eq!(state.apply(6, &cmd(NOW, forget(vec![8; 32])), &mut Vec::new()).code, Code::NotFound as i32);
        assert_eq!(state.apply(7, &cmd(NOW, forget(Vec::new())), &mut Vec::new()).code, Code::Ok as i32);
        assert_eq!(
            state.apply(8, &cmd(NOW, session('2', device())), &mut Vec::new()).code,
            Code::FailedPrecondition as i32
        );
        // Forgetting every browser ends the sessions they opened.
        let mut state = trusted_state(7);
        assert_eq!(state.apply(6, &cmd(NOW, session('2', device())), &mut Vec::new()).code, Code::Ok as i32);
        assert_eq!(state.apply(7, &cmd(NOW, forget(Vec::new())), &mut Vec::new()).code, Code::Ok as i32);
        assert!(state.session(&"2".repeat(32)).is_none());
        // A password change ends them as well.
        let mut state = trusted_state(7);
        let set = gatehouse_proto::events::SetPassword {
            user_id: ANN.into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        };
        assert_eq!(state.apply(6, &cmd(NOW, Payload::SetPassword(set)), &mut Vec::new()).code, Code::Ok as i32);
        assert!(state.factors.get(ANN).unwrap().devices.is_empty());
        // Trusted again; removing the app (the last factor) ends it.
        let mut state = trusted_state(7);
        let remove = RemoveFactors { user_id: ANN.into(), kind: factors::TOTP.into(), ..Default::default() };
        assert_eq!(state.apply(6, &cmd(NOW, Payload::RemoveFactors(remove)), &mut Vec::new()).code, Code::Ok as i32);
        assert!(state.factors.get(ANN).unwrap().devices.is_empty());
    }

    #[test]
    fn trusts_are_bounded_in_time_and_number() {
        let mut r = FactorsRecord::default();
        let ask = |d: u8, until: u64| PresentFactor {
            trust_device_sha256: vec![d; 32],
            trust_until: until,
            trust_label: "x\ny".into(),
            ..Default::default()
        };
        // Past the longest trust: clamped (a clock ahead of log time).
        trust(&mut r, NOW, &ask(1, NOW + MAX_TRUST_MS + 5)).unwrap();
        assert_eq!(r.devices[0].expires_at, NOW + MAX_TRUST_MS);
        assert!(trust(&mut r, NOW, &ask(1, NOW)).is_err());
        for d in 0..12u8 {
            trust(&mut r, NOW + d as u64, &ask(d, NOW + DAY)).unwrap();
        }
        assert_eq!(r.devices.len(), MAX_DEVICES);
        assert!(r.devices.iter().all(|d| d.sha256[0] >= 2), "the oldest went first");
        assert_eq!(r.devices[0].label, "xy");
        let bad = PresentFactor { trust_until: NOW, ..Default::default() };
        assert!(check_trust(&bad).is_err());
    }
}
