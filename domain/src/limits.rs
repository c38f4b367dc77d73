//! Rate-limit counts, replicated so a limit holds on every node at once.
//!
//! Two kinds of bucket, both sliding (no fixed window that allows a double
//! burst at its edge):
//! - **strict**: every hit is a `RateHit` command; apply keeps the times of
//!   the admitted hits (at most `limit` of them) and refuses a hit when the
//!   last `window_ms` already hold `limit`. Exact cluster-wide.
//! - **global**: nodes admit locally and sync `RateDeltas`; apply adds them
//!   to slots of 1/60 of the window. The count of a window is the sum of the
//!   slots that overlap it (so it errs towards counting a little too much).
//!
//! A bucket whose window has passed is dropped deterministically as log time
//! moves past it, like an expired session.
//!
//! A policy keeps at most [`MAX_BUCKETS`] buckets, whatever a flood from many
//! addresses (an IPv6 /48 holds 65,536 /64s) or a proxy's rotating
//! `X-Forwarded-For` brings. At the cap a strict policy refuses a hit for a
//! new bucket (fail closed: the exact limit cannot be kept for it), and a
//! global policy forgets the bucket whose window ends first to count the new
//! one. Both are decided by apply, so every node does the same.

use std::collections::{BTreeSet, HashMap};

use gatehouse_proto::events::{RateDeltas, RateHit};
use gatehouse_proto::state::{rate_record::Slot, RateRecord};

use crate::mutation::{Mutation, Table};
use crate::result::ApplyError;
use crate::state::{put, State};

/// Longest policy name and bucket.
pub const MAX_NAME: usize = 64;
pub const MAX_BUCKET: usize = 160;
/// Bounds of a policy's limit and window.
pub const MAX_LIMIT: u32 = 1_000_000;
pub const MAX_STRICT_LIMIT: u32 = 10_000;
pub const MIN_WINDOW_MS: u64 = 1_000;
pub const MAX_WINDOW_MS: u64 = 86_400_000;
/// Most deltas in one command.
pub const MAX_DELTAS: usize = 100_000;
/// Slots per window for global buckets.
pub const SLOTS: u64 = 60;
/// Buckets one policy keeps at most (see the module doc for the cap's rule).
#[cfg(not(test))]
pub const MAX_BUCKETS: usize = 100_000;
/// Small in unit tests, so the cap is reached in a few hundred commands.
#[cfg(test)]
pub const MAX_BUCKETS: usize = 100;

/// A client address as limits, lockouts and audit counts see it: IPv4 as
/// is, IPv6 by its /64 (the block one subscriber usually holds).
pub fn bucket_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// What a bucket allows at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Hits counted in the window ending now.
    pub count: u64,
    /// When the oldest counted hit leaves the window (unix ms; `now` if none).
    pub resets_at: u64,
}

/// Every bucket, by policy and bucket name, with an expiry index.
#[derive(Debug, Default)]
pub struct Limits {
    buckets: HashMap<String, HashMap<String, RateRecord>>,
    /// (when the bucket's last hit leaves its window, policy, bucket).
    by_expiry: BTreeSet<(u64, String, String)>,
    /// The same, per policy, to find the bucket a full global policy forgets.
    policy_expiry: HashMap<String, BTreeSet<(u64, String)>>,
}

fn slot_len(window_ms: u64) -> u64 {
    (window_ms / SLOTS).max(1)
}

/// When everything the record counts has left its window.
fn expiry(r: &RateRecord) -> u64 {
    let last_hit = r.hits.last().copied().unwrap_or(0);
    let last_slot = r.slots.last().map_or(0, |s| s.start + slot_len(r.window_ms));
    last_hit.max(last_slot) + r.window_ms
}

fn storage_key(policy: &str, bucket: &str) -> String {
    format!("{policy}\u{0}{bucket}")
}

/// The record's usage at `now`.
pub fn usage(r: &RateRecord, now: u64) -> Usage {
    let since = now.saturating_sub(r.window_ms);
    let mut count = 0;
    let mut oldest = None;
    for &t in r.hits.iter().filter(|&&t| t > since) {
        count += 1;
        oldest.get_or_insert(t + r.window_ms);
    }
    let len = slot_len(r.window_ms);
    for s in r.slots.iter().filter(|s| s.start + len > since) {
        count += s.count;
        oldest.get_or_insert(s.start + len + r.window_ms);
    }
    Usage { count, resets_at: oldest.unwrap_or(now).max(now) }
}

/// Drops what has left the window at `now`.
fn trim(r: &mut RateRecord, now: u64) {
    let since = now.saturating_sub(r.window_ms);
    r.hits.retain(|&t| t > since);
    let len = slot_len(r.window_ms);
    r.slots.retain(|s| s.start + len > since);
}

fn validate(policy: &str, bucket: &str, window_ms: u64) -> Result<(), ApplyError> {
    let name_ok = |s: &str, max: usize| !s.is_empty() && s.len() <= max && !s.contains('\0');
    if !name_ok(policy, MAX_NAME) || !name_ok(bucket, MAX_BUCKET) {
        return Err(ApplyError::Invalid("invalid rate-limit policy or bucket".into()));
    }
    if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) {
        return Err(ApplyError::Invalid("rate-limit window out of range".into()));
    }
    Ok(())
}

impl Limits {
    pub fn get(&self, policy: &str, bucket: &str) -> Option<&RateRecord> {
        self.buckets.get(policy)?.get(bucket)
    }

    /// Whether `policy` has any bucket (a cheap test before building a bucket name).
    pub fn has_policy(&self, policy: &str) -> bool {
        self.buckets.get(policy).is_some_and(|b| !b.is_empty())
    }

    pub fn len(&self) -> usize {
        self.by_expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_expiry.is_empty()
    }

    pub(crate) fn load(&mut self, r: RateRecord) {
        self.index(expiry(&r), &r.policy, &r.bucket);
        self.buckets.entry(r.policy.clone()).or_default().insert(r.bucket.clone(), r);
    }

    fn index(&mut self, at: u64, policy: &str, bucket: &str) {
        self.by_expiry.insert((at, policy.to_string(), bucket.to_string()));
        self.policy_expiry.entry(policy.to_string()).or_default().insert((at, bucket.to_string()));
    }

    fn unindex(&mut self, at: u64, policy: &str, bucket: &str) {
        self.by_expiry.remove(&(at, policy.to_string(), bucket.to_string()));
        if let Some(set) = self.policy_expiry.get_mut(policy) {
            set.remove(&(at, bucket.to_string()));
            if set.is_empty() {
                self.policy_expiry.remove(policy);
            }
        }
    }

    /// Buckets `policy` keeps now.
    pub fn buckets_of(&self, policy: &str) -> usize {
        self.buckets.get(policy).map_or(0, HashMap::len)
    }

    /// Whether `bucket` is new to a policy that is at [`MAX_BUCKETS`].
    pub fn full_for(&self, policy: &str, bucket: &str) -> bool {
        self.buckets.get(policy).is_some_and(|b| b.len() >= MAX_BUCKETS && !b.contains_key(bucket))
    }

    /// Forgets the bucket of `policy` whose window ends first.
    fn evict_oldest(&mut self, policy: &str, out: &mut Vec<Mutation>) {
        let Some((at, bucket)) = self.policy_expiry.get(policy).and_then(|s| s.first().cloned()) else { return };
        self.unindex(at, policy, &bucket);
        if let Some(b) = self.buckets.get_mut(policy) {
            b.remove(&bucket);
        }
        out.push(Mutation::Delete { table: Table::Limits, key: storage_key(policy, &bucket).into_bytes() });
    }

    /// Drops buckets whose window has passed at log time `now`.
    pub(crate) fn prune(&mut self, now: u64, out: &mut Vec<Mutation>) {
        while let Some((at, _, _)) = self.by_expiry.first() {
            if *at > now {
                break;
            }
            let (at, policy, bucket) = self.by_expiry.first().cloned().expect("checked above");
            self.unindex(at, &policy, &bucket);
            if let Some(b) = self.buckets.get_mut(&policy) {
                b.remove(&bucket);
                if b.is_empty() {
                    self.buckets.remove(&policy);
                }
            }
            out.push(Mutation::Delete { table: Table::Limits, key: storage_key(&policy, &bucket).into_bytes() });
        }
    }

    /// Changes one bucket through `f` and stores it, keeping the expiry index.
    fn update(
        &mut self,
        policy: &str,
        bucket: &str,
        window_ms: u64,
        out: &mut Vec<Mutation>,
        f: impl FnOnce(&mut RateRecord),
    ) {
        let r = self.buckets.entry(policy.to_string()).or_default().entry(bucket.to_string()).or_insert_with(|| {
            RateRecord { policy: policy.to_string(), bucket: bucket.to_string(), window_ms, ..Default::default() }
        });
        let old = (!r.hits.is_empty() || !r.slots.is_empty()).then(|| expiry(r));
        // A policy whose window changed starts counting in its new shape.
        if r.window_ms != window_ms {
            r.window_ms = window_ms;
            r.slots.clear();
        }
        f(r);
        let new = expiry(r);
        out.push(put(Table::Limits, &storage_key(policy, bucket), r));
        if let Some(old) = old {
            self.unindex(old, policy, bucket);
        }
        self.index(new, policy, bucket);
    }
}

/// A strict hit: admitted (with what its bucket has left) or refused.
pub(crate) fn hit(state: &mut State, now: u64, c: &RateHit, out: &mut Vec<Mutation>) -> Result<u64, ApplyError> {
    validate(&c.policy, &c.bucket, c.window_ms)?;
    if c.limit == 0 || c.limit > MAX_STRICT_LIMIT {
        return Err(ApplyError::Invalid("strict rate limit out of range".into()));
    }
    let used = state.limits.get(&c.policy, &c.bucket).map_or(0, |r| usage(r, now).count);
    if used >= u64::from(c.limit) {
        return Err(ApplyError::Limited(format!("rate limit {} reached", c.policy)));
    }
    if state.limits.full_for(&c.policy, &c.bucket) {
        // Fail closed: forgetting another bucket would forget its hits.
        return Err(ApplyError::Limited(format!("rate limit {} holds as many buckets as it may", c.policy)));
    }
    state.limits.update(&c.policy, &c.bucket, c.window_ms, out, |r| {
        trim(r, now);
        // Hits stay in order even if proposers' clocks disagree.
        let at = r.hits.last().map_or(now, |&last| last.max(now));
        r.hits.push(at);
    });
    Ok(u64::from(c.limit) - used - 1)
}

/// Global deltas from one node: added to the slot `now` falls in.
pub(crate) fn add(state: &mut State, now: u64, c: &RateDeltas, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    if c.deltas.len() > MAX_DELTAS {
        return Err(ApplyError::Invalid("too many rate-limit deltas in one command".into()));
    }
    for d in &c.deltas {
        validate(&d.policy, &d.bucket, d.window_ms)?;
        if d.count == 0 || d.count > MAX_LIMIT {
            return Err(ApplyError::Invalid("rate-limit delta out of range".into()));
        }
    }
    for d in &c.deltas {
        if state.limits.full_for(&d.policy, &d.bucket) {
            state.limits.evict_oldest(&d.policy, out);
        }
        state.limits.update(&d.policy, &d.bucket, d.window_ms, out, |r| {
            trim(r, now);
            let len = slot_len(r.window_ms);
            let start = now / len * len;
            match r.slots.last_mut() {
                Some(s) if s.start >= start => s.count += u64::from(d.count),
                _ => r.slots.push(Slot { start, count: u64::from(d.count) }),
            }
        });
    }
    Ok(c.deltas.len().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_proto::events::{command::Payload, rate_deltas::Delta, Command};

    fn hit_cmd(at: u64, bucket: &str) -> Command {
        Command {
            proposed_at: at,
            payload: Some(Payload::RateHit(RateHit {
                policy: "login".into(),
                bucket: bucket.into(),
                limit: 3,
                window_ms: 60_000,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn strict_hits_slide_and_never_exceed_the_limit() {
        let mut s = State::default();
        let mut out = Vec::new();
        let codes: Vec<String> = [1_000, 2_000, 3_000, 4_000]
            .into_iter()
            .enumerate()
            .map(|(i, at)| {
                let r = s.apply(i as u64 + 1, &hit_cmd(at, "ip:10.0.0.1"), &mut out);
                format!("{}:{}", r.code, r.remaining)
            })
            .collect();
        assert_eq!(codes, ["0:2", "0:1", "0:0", "5:0"]);
        // Another bucket is independent.
        assert_eq!(s.apply(5, &hit_cmd(4_000, "ip:10.0.0.2"), &mut out).remaining, 2);
        let u = usage(s.limits.get("login", "ip:10.0.0.1").unwrap(), 30_000);
        assert_eq!(u, Usage { count: 3, resets_at: 61_000 });
        // One minute after the first hit, exactly one hit is free again: no
        // fixed window that would free all three at once.
        assert_eq!(s.apply(6, &hit_cmd(60_999, "ip:10.0.0.1"), &mut out).code, 5);
        assert_eq!(s.apply(7, &hit_cmd(61_000, "ip:10.0.0.1"), &mut out).remaining, 0);
        assert_eq!(s.apply(8, &hit_cmd(61_001, "ip:10.0.0.1"), &mut out).code, 5);
    }

    /// A flood of hits must not grow every node by an idempotency record
    /// each (kept 24 h): hits, deltas and use times keep none.
    #[test]
    fn internal_commands_keep_no_idempotency_record() {
        use gatehouse_proto::events::{record_use::Use, RateDeltas, RecordUse};
        let mut s = State::default();
        let mut out = Vec::new();
        let with_id = |mut c: Command, id: &str| {
            c.request_id = id.into();
            c
        };
        let deltas = Command {
            proposed_at: 1_000,
            payload: Some(Payload::RateDeltas(RateDeltas {
                deltas: vec![Delta { policy: "api".into(), bucket: "ip:10.0.0.1".into(), count: 2, window_ms: 60_000 }],
            })),
            ..Default::default()
        };
        let used = Command {
            proposed_at: 1_000,
            payload: Some(Payload::RecordUse(RecordUse {
                keys: vec![Use { id: "k".into(), at: 5 }],
                sessions: vec![],
            })),
            ..Default::default()
        };
        for (i, cmd) in [with_id(hit_cmd(1_000, "ip:10.0.0.1"), "h1"), with_id(deltas, "d1"), with_id(used, "u1")]
            .into_iter()
            .enumerate()
        {
            s.apply(i as u64 + 1, &cmd, &mut out);
        }
        assert!(!out.iter().any(|m| matches!(m, Mutation::Put { table: Table::Requests, .. })), "{out:?}");
        assert!(s.requests.get("h1").is_none() && s.requests.get("d1").is_none());
    }

    /// A flood from ever new addresses cannot grow a policy past its cap:
    /// strict fails closed for new buckets, global forgets the oldest.
    #[test]
    fn a_policy_keeps_at_most_max_buckets() {
        let mut s = State::default();
        let mut out = Vec::new();
        for i in 0..MAX_BUCKETS as u64 + 50 {
            let r = s.apply(i + 1, &hit_cmd(1_000 + i, &format!("ip:10.0.{}.{}", i / 200, i % 200)), &mut out);
            if i < MAX_BUCKETS as u64 {
                assert_eq!(r.code, 0, "{i}");
            } else {
                assert_eq!(r.code, 5, "a new bucket past the cap is refused");
            }
        }
        assert_eq!(s.limits.buckets_of("login"), MAX_BUCKETS);
        // A bucket already kept still counts.
        assert_eq!(s.apply(9_000, &hit_cmd(2_000, "ip:10.0.0.0"), &mut out).code, 0);
        let delta = |at: u64, bucket: String| Command {
            proposed_at: at,
            payload: Some(Payload::RateDeltas(RateDeltas {
                deltas: vec![Delta { policy: "api".into(), bucket, count: 1, window_ms: 60_000 }],
            })),
            ..Default::default()
        };
        for i in 0..MAX_BUCKETS as u64 + 50 {
            assert_eq!(s.apply(10_000 + i, &delta(1_000 + i, format!("ip:{i}")), &mut out).code, 0);
        }
        assert_eq!(s.limits.buckets_of("api"), MAX_BUCKETS);
        assert!(s.limits.get("api", "ip:0").is_none(), "the oldest went");
        assert!(s.limits.get("api", &format!("ip:{}", MAX_BUCKETS + 49)).is_some());
        // The indexes agree with the buckets: everything expires in the end.
        s.apply(99_999, &hit_cmd(10_000_000, "ip:x"), &mut out);
        assert_eq!(s.limits.len(), 1);
    }

    #[test]
    fn expired_buckets_are_dropped_as_log_time_passes() {
        let mut s = State::default();
        let mut out = Vec::new();
        s.apply(1, &hit_cmd(1_000, "ip:a"), &mut out);
        s.apply(2, &hit_cmd(50_000, "ip:b"), &mut out);
        assert_eq!(s.limits.len(), 2);
        out.clear();
        s.apply(3, &hit_cmd(61_001, "ip:c"), &mut out);
        assert!(s.limits.get("login", "ip:a").is_none());
        assert!(out.iter().any(|m| matches!(m, Mutation::Delete { table: Table::Limits, .. })));
        assert_eq!(s.limits.len(), 2);
    }

    #[test]
    fn global_deltas_add_up_in_sliding_slots() {
        let mut s = State::default();
        let mut out = Vec::new();
        let deltas = |at: u64, count: u32| Command {
            proposed_at: at,
            payload: Some(Payload::RateDeltas(RateDeltas {
                deltas: vec![Delta { policy: "api".into(), bucket: "ip:x".into(), count, window_ms: 60_000 }],
            })),
            ..Default::default()
        };
        s.apply(1, &deltas(10_500, 40), &mut out);
        s.apply(2, &deltas(10_900, 2), &mut out);
        s.apply(3, &deltas(30_000, 50), &mut out);
        let r = s.limits.get("api", "ip:x").unwrap();
        assert_eq!(r.slots.len(), 2);
        assert_eq!(usage(r, 40_000).count, 92);
        assert_eq!(usage(r, 40_000).resets_at, 71_000);
        // The first slot leaves the window 60 s after it ends.
        assert_eq!(usage(r, 71_000).count, 50);
    }

    #[test]
    fn hostile_commands_change_nothing() {
        let mut s = State::default();
        let bad = [
            RateHit { policy: "".into(), bucket: "b".into(), limit: 1, window_ms: 60_000 },
            RateHit { policy: "p".into(), bucket: "b\0c".into(), limit: 1, window_ms: 60_000 },
            RateHit { policy: "p".into(), bucket: "x".repeat(MAX_BUCKET + 1), limit: 1, window_ms: 60_000 },
            RateHit { policy: "p".into(), bucket: "b".into(), limit: 0, window_ms: 60_000 },
            RateHit { policy: "p".into(), bucket: "b".into(), limit: MAX_STRICT_LIMIT + 1, window_ms: 60_000 },
            RateHit { policy: "p".into(), bucket: "b".into(), limit: 1, window_ms: 10 },
        ];
        for (i, h) in bad.into_iter().enumerate() {
            let mut out = Vec::new();
            let cmd = Command { proposed_at: 1_000, payload: Some(Payload::RateHit(h)), ..Default::default() };
            assert_eq!(s.apply(i as u64 + 1, &cmd, &mut out).code, 1);
            assert!(out.is_empty());
        }
        assert!(s.limits.is_empty());
    }
}
