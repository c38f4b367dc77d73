//! What a voter accepts from a stateless front, beyond the kind of command
//! (`gatehouse_cluster::follow` admits only last use, rate-limit hits and
//! counts, and audit batches): their contents, checked against this voter's
//! own settings, so that a stolen front's secret cannot reset or inflate a
//! limit, keep a session alive forever, or pass its records off as another
//! node's.
//!
//! - `RateHit`: a strict policy of this voter's `[rate_limits]`, with its
//!   limit and window, and a bucket of the policy's kind (an address, a key
//!   id, a user id, or `all`).
//! - `RateDeltas`: each a global policy of this voter's, with its window,
//!   a well-formed bucket, and a count no larger than the policy's limit.
//! - `RecordUse`: no use dated more than [`CLOCK_SKEW_MS`] ahead of this
//!   voter's clock (an idle timeout must not be pushed past its end).
//! - `AppendAudit`: each event is stamped with the front's id as its node,
//!   and dated no later than this voter's clock allows.
//!
//! Fronts therefore run with the same `[rate_limits]` policies as the voters.

use std::net::IpAddr;

use gatehouse_cluster::clock::now_ms;
use gatehouse_domain::{Command, Payload};

use crate::rate_limit::policy::{By, Mode, Policy};

/// How far ahead of this voter's clock a front's timestamps may be.
pub const CLOCK_SKEW_MS: u64 = 60_000;

/// Checks (and for audit batches, stamps) one command a front proposes.
pub fn check(policies: &[Policy], front: u64, cmd: &mut Command) -> Result<(), String> {
    let now = now_ms();
    match &mut cmd.payload {
        Some(Payload::RateHit(h)) => {
            let p = policy(policies, &h.policy, Mode::Strict)?;
            if h.limit != p.limit || h.window_ms != p.window_secs * 1000 {
                return Err(format!("rate-limit hit for {} with another limit or window", p.name));
            }
            bucket_of(p, &h.bucket)
        }
        Some(Payload::RateDeltas(d)) => d.deltas.iter().try_for_each(|delta| {
            let p = policy(policies, &delta.policy, Mode::Global)?;
            if delta.window_ms != p.window_secs * 1000 || delta.count > p.limit {
                return Err(format!("rate-limit count for {} with another window or over its limit", p.name));
            }
            bucket_of(p, &delta.bucket)
        }),
        Some(Payload::RecordUse(u)) => {
            if u.sessions.iter().chain(&u.keys).any(|x| x.at > now + CLOCK_SKEW_MS) {
                return Err("a use dated in the future".into());
            }
            Ok(())
        }
        Some(Payload::AppendAudit(a)) => {
            for e in &mut a.events {
                e.node_id = front;
                e.at = e.at.min(now + CLOCK_SKEW_MS);
            }
            Ok(())
        }
        _ => Err("not a command a front makes".into()),
    }
}

fn policy<'a>(policies: &'a [Policy], name: &str, mode: Mode) -> Result<&'a Policy, String> {
    match policies.iter().find(|p| p.name == name) {
        Some(p) if p.mode == mode => Ok(p),
        _ => Err(format!("no {mode:?} rate-limit policy {} on this voter", gatehouse_domain::quote::quote(name))),
    }
}

/// Whether `bucket` is one policy `p` makes.
fn bucket_of(p: &Policy, bucket: &str) -> Result<(), String> {
    let ok = match p.by {
        By::Ip => bucket.strip_prefix("ip:").and_then(|a| a.parse::<IpAddr>().ok()).is_some(),
        By::Key => bucket.strip_prefix("key:").is_some_and(|k| gatehouse_domain::keys::validate_key_id(k).is_ok()),
        By::User => {
            bucket.strip_prefix("user:").is_some_and(|u| gatehouse_domain::users::validate_id("user", u).is_ok())
        }
        By::Policy => bucket == "all",
        By::Descriptor => {
            bucket.strip_prefix("d:").is_some_and(|d| d.len() == 32 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("a malformed bucket for {}", p.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_proto::events::{
        rate_deltas::Delta, record_use::Use, AppendAudit, AuditEvent, RateDeltas, RateHit, RecordUse,
    };

    fn limiter() -> Vec<Policy> {
        Policy::defaults()
    }

    fn cmd(payload: Payload) -> Command {
        Command { payload: Some(payload), ..Default::default() }
    }

    #[test]
    fn a_hit_must_be_one_of_this_voter_s_strict_policies_as_configured() {
        let l = limiter();
        let hit = |policy: &str, bucket: &str, limit, window_ms| {
            cmd(Payload::RateHit(RateHit { policy: policy.into(), bucket: bucket.into(), limit, window_ms }))
        };
        assert!(check(&l, 7, &mut hit("login", "ip:192.0.2.1", 5, 60_000)).is_ok());
        // Attack: a shorter window would drop every hit counted so far.
        assert!(check(&l, 7, &mut hit("login", "ip:192.0.2.1", 5, 1_000)).is_err());
        assert!(check(&l, 7, &mut hit("login", "ip:192.0.2.1", 10_000, 60_000)).is_err());
        assert!(check(&l, 7, &mut hit("made-up", "ip:192.0.2.1", 5, 60_000)).is_err());
        assert!(check(&l, 7, &mut hit("api", "ip:192.0.2.1", 100, 60_000)).is_err(), "a global policy");
        assert!(check(&l, 7, &mut hit("login", "anything at all", 5, 60_000)).is_err());
    }

    #[test]
    fn counts_must_fit_their_global_policy() {
        let l = limiter();
        let deltas = |count, window_ms| {
            cmd(Payload::RateDeltas(RateDeltas {
                deltas: vec![Delta { policy: "api".into(), bucket: "ip:2001:db8::".into(), count, window_ms }],
            }))
        };
        assert!(check(&l, 7, &mut deltas(3, 60_000)).is_ok());
        assert!(check(&l, 7, &mut deltas(1_000_000, 60_000)).is_err(), "a lockout by inflation");
        assert!(check(&l, 7, &mut deltas(3, 1_000)).is_err());
    }

    #[test]
    fn uses_in_the_future_are_refused_and_audit_events_are_the_front_s() {
        let l = limiter();
        let now = now_ms();
        let used = |at| cmd(Payload::RecordUse(RecordUse { sessions: vec![Use { id: "s".into(), at }], keys: vec![] }));
        assert!(check(&l, 7, &mut used(now)).is_ok());
        assert!(check(&l, 7, &mut used(u64::MAX)).is_err());
        let mut audit = cmd(Payload::AppendAudit(AppendAudit {
            events: vec![AuditEvent { node_id: 1, at: u64::MAX, action: "key.revoke".into(), ..Default::default() }],
            ..Default::default()
        }));
        check(&l, 7, &mut audit).unwrap();
        let Some(Payload::AppendAudit(a)) = audit.payload else { unreachable!() };
        assert_eq!(a.events[0].node_id, 7, "recorded as the front's");
        assert!(a.events[0].at <= now + CLOCK_SKEW_MS);
    }
}
