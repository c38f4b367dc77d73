//! The node's rate limiter. Strict hits are `RateHit` commands that apply
//! decides; global policies are admitted locally within this node's share
//! of what is left and synced as `RateDeltas` every `sync_interval_ms`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use gatehouse_cluster::clock::now_ms;
use gatehouse_cluster::periodic::{Periodic, Shutdown};
use gatehouse_domain::bounds::{take_within, BATCH_BYTES};
use gatehouse_domain::limits::{self as rules, bucket_ip, Usage};
use gatehouse_domain::Payload;
use gatehouse_proto::events::{command_result::Code, rate_deltas::Delta, RateDeltas, RateHit};

use super::policy::{matching, By, LimitsConfig, Mode, On, Policy, Subject};
use super::quota::Quota;
use crate::http::client_ip;
use crate::{ApiError, Node};

/// Global-policy buckets a node tracks between syncs, all policies together;
/// past it a new bucket is refused (429) until a sync frees room.
pub const MAX_LOCAL_BUCKETS: usize = 200_000;

/// What the limiter knows about a request before its handler runs; handlers
/// find it in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub client_ip: IpAddr,
    /// Policies whose path, forwarded path and network matched.
    matched: u64,
    /// The client is over a failure limit, but presented a 256-bit
    /// credential: it is looked at (a key or session that verifies passes,
    /// so a user behind the same NAT as an attacker keeps working), without
    /// the catch-up an unknown credential costs, and a refusal is 429.
    over_failures: bool,
}

impl RequestLimits {
    /// See the field: resolve without catching up, and answer a refusal with 429.
    pub fn over_failures(&self) -> bool {
        self.over_failures
    }
}

/// This node's part of a global bucket.
#[derive(Debug, Default)]
struct Local {
    /// The sync round `budget` was computed in.
    round: u64,
    budget: u64,
    used: u64,
    /// Admitted here, not yet proposed.
    pending: u64,
    /// Proposed, not yet applied here.
    inflight: u64,
}

/// The login endpoint: its strict policies are counted where logins are
/// checked (on a voter; a stateless front leaves them to the voter).
pub const LOGIN_PATH: &str = "/api/v1/login";

struct Inner {
    node: Node,
    /// On a stateless front: logins are checked, and their strict limits
    /// counted, on the voter it sends them to.
    logins_elsewhere: std::sync::atomic::AtomicBool,
    config: LimitsConfig,
    names: Vec<Arc<str>>,
    locals: Mutex<HashMap<(usize, String), Local>>,
    round: AtomicU64,
}

/// The node's rate limiter; cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl Limiter {
    /// Starts the limiter and, if any policy is global, its sync task
    /// (every `sync_interval_ms` until the node shuts down).
    pub fn start(node: Node, config: LimitsConfig, shutdown: Shutdown) -> Limiter {
        let names = config.policies.iter().map(|p| Arc::from(p.name.as_str())).collect();
        let limiter = Limiter {
            inner: Arc::new(Inner {
                node,
                logins_elsewhere: std::sync::atomic::AtomicBool::new(false),
                names,
                locals: Mutex::new(HashMap::new()),
                round: AtomicU64::new(1),
                config,
            }),
        };
        if limiter.inner.config.enabled && limiter.inner.config.policies.iter().any(|p| p.mode == Mode::Global) {
            let weak = Arc::downgrade(&limiter.inner);
            let every = Duration::from_millis(limiter.inner.config.sync_interval_ms);
            Periodic::every("rate_limit.sync", every, shutdown).starting_now().run(move || {
                let inner = weak.upgrade();
                async move {
                    let Some(inner) = inner else { return false };
                    Limiter { inner }.sync().await;
                    true
                }
            });
        }
        limiter
    }

    /// Leaves the strict limits of logins to the voters (a stateless front:
    /// each attempt is counted once, where it is checked).
    pub fn logins_checked_elsewhere(self) -> Limiter {
        self.inner.logins_elsewhere.store(true, Ordering::Relaxed);
        self
    }

    /// Whether logins' strict limits are counted on the voters, not here.
    pub fn logins_elsewhere(&self) -> bool {
        self.inner.logins_elsewhere.load(Ordering::Relaxed)
    }

    /// The configured policies.
    pub fn policies_config(&self) -> &[Policy] {
        &self.inner.config.policies
    }

    /// On a voter, a login a front sent on, from `ip` (the front's word):
    /// the strict request limits of the login endpoint, counted here.
    pub async fn login_attempt(&self, ip: IpAddr) -> Result<Option<Quota>, ApiError> {
        if !self.enabled() {
            return Ok(None);
        }
        let empty = HeaderMap::new();
        let matched = matching(self.policies(), &Subject { ip, path: LOGIN_PATH, headers: &empty }).unwrap_or(0);
        let mut quota = None;
        for (i, p) in self.policies().iter().enumerate() {
            if matched & (1 << i) == 0 || p.needs_caller() || p.mode != Mode::Strict {
                continue;
            }
            // A password is never looked at over a failure limit.
            let q = match p.on {
                On::Failure => self.check_full(i, p, ip)?,
                On::Request => self.strict(i, p, ip, None).await?,
            };
            if let Some(q) = q {
                quota = Some(q.tighter(quota));
            }
        }
        Ok(quota)
    }

    /// On a voter, a login a front sent on was refused: counted on the
    /// failure policies of `ip`.
    pub async fn login_refused(&self, ip: IpAddr) -> Result<Option<Quota>, ApiError> {
        if !self.enabled() {
            return Ok(None);
        }
        let empty = HeaderMap::new();
        let matched = matching(self.policies(), &Subject { ip, path: LOGIN_PATH, headers: &empty }).unwrap_or(0);
        self.refused(&RequestLimits { client_ip: ip, matched, over_failures: false }).await
    }

    pub fn enabled(&self) -> bool {
        self.inner.config.enabled && !self.inner.config.policies.is_empty()
    }

    /// Whether `peer` is a trusted proxy (its `X-Forwarded-For` is believed).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        client_ip::is_trusted(client_ip::canonical(peer), &self.inner.config.trusted_proxies)
    }

    /// The client's address: the peer, or what trusted proxies say it is.
    pub fn client_ip(&self, peer: Option<&SocketAddr>, headers: &HeaderMap) -> IpAddr {
        client_ip::resolve(peer, headers, &self.inner.config.trusted_proxies)
    }

    fn policies(&self) -> &[Policy] {
        &self.inner.config.policies
    }

    /// The bucket of policy `p` for this client and caller.
    fn bucket(p: &Policy, ip: IpAddr, caller: Option<(&str, Option<&str>)>) -> Option<String> {
        Some(match p.by {
            By::Ip => format!("ip:{}", bucket_ip(ip)),
            By::Key => format!("key:{}", caller?.1?),
            By::User => format!("user:{}", caller?.0),
            By::Policy => "all".to_string(),
            // Asked for with its bucket ([`Limiter::descriptor_hit`]).
            By::Descriptor => return None,
        })
    }

    /// The bucket of an Envoy descriptor's values: a digest, so that any
    /// value a client can put in a descriptor makes a short, fixed-size key.
    /// An address (`remote_address`, or any value that parses as an IP) is
    /// taken as Gatehouse's per-IP limits take it: an IPv6 client by its
    /// /64, so rotating addresses inside it makes no new bucket.
    pub fn descriptor_bucket(
        entries: &[envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry],
    ) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for e in entries {
            let value = match e.value.parse::<IpAddr>() {
                Ok(ip) => bucket_ip(ip).to_string(),
                Err(_) => e.value.clone(),
            };
            h.update((value.len() as u64).to_be_bytes());
            h.update(value.as_bytes());
        }
        format!("d:{}", hex::encode(&h.finalize()[..16]))
    }

    /// The Envoy policy of `domain` whose keys are `keys`, and its index.
    pub fn envoy_policy(&self, domain: &str, keys: &[&str]) -> Option<(usize, &Policy)> {
        self.policies().iter().enumerate().find(|(_, p)| {
            p.envoy
                .as_ref()
                .is_some_and(|e| e.domain == domain && e.keys.iter().map(String::as_str).eq(keys.iter().copied()))
        })
    }

    /// One request counted on Envoy policy `i`, in `bucket`.
    pub async fn descriptor_hit(&self, i: usize, bucket: String) -> Result<Option<Quota>, ApiError> {
        let p = &self.policies()[i];
        match p.mode {
            Mode::Strict => self.strict_in(i, p, bucket).await,
            Mode::Global => self.global_in(i, p, bucket),
        }
    }

    /// Before the handler: refuses clients over a failure limit (unless
    /// `credential` says the request carries a 256-bit key or session to
    /// look at), admits the request on every matching policy that needs no
    /// caller.
    pub async fn before(&self, s: &Subject<'_>, credential: bool) -> (RequestLimits, Result<Option<Quota>, ApiError>) {
        let Ok(matched) = matching(self.policies(), s) else {
            let refused = ApiError::PermissionDenied("the forwarded request is ambiguous".into());
            return (RequestLimits { client_ip: s.ip, matched: 0, over_failures: false }, Err(refused));
        };
        let mut ctx = RequestLimits { client_ip: s.ip, matched, over_failures: false };
        let mut quota = None;
        let elsewhere = self.logins_elsewhere() && s.path == LOGIN_PATH;
        for (i, p) in self.policies().iter().enumerate() {
            if matched & (1 << i) == 0 || p.needs_caller() {
                continue;
            }
            // Counted on the voter that checks the login.
            if elsewhere && p.mode == Mode::Strict && p.on == On::Request {
                continue;
            }
            let result = match p.on {
                On::Failure => self.check_full(i, p, s.ip),
                On::Request => self.admit(i, p, s.ip, None).await,
            };
            match result {
                Ok(Some(q)) => quota = Some(q.tighter(quota)),
                Ok(None) => {}
                Err(_) if p.on == On::Failure && credential => ctx.over_failures = true,
                Err(l) => return (ctx, Err(l)),
            }
        }
        (ctx, Ok(quota))
    }

    /// The refusal of a client over a failure limit (429 and its quota).
    pub(super) fn failure_refusal(&self, ctx: &RequestLimits) -> ApiError {
        for (i, p) in self.policies().iter().enumerate() {
            if ctx.matched & (1 << i) != 0 && p.on == On::Failure {
                if let Err(e) = self.check_full(i, p, ctx.client_ip) {
                    return e;
                }
            }
        }
        // The bucket emptied meanwhile: still a refused credential.
        ApiError::Unauthenticated
    }

    /// Once the caller is known: admits on the policies that needed it.
    pub async fn caller_known(
        &self,
        ctx: &RequestLimits,
        user_id: &str,
        username: &str,
        key_id: Option<&str>,
    ) -> Result<Option<Quota>, ApiError> {
        let mut quota = None;
        for (i, p) in self.policies().iter().enumerate() {
            if ctx.matched & (1 << i) == 0 || !p.needs_caller() {
                continue;
            }
            if p.key_id.as_deref().is_some_and(|k| Some(k) != key_id)
                || p.user.as_deref().is_some_and(|u| u != username)
            {
                continue;
            }
            if let Some(q) = self.admit(i, p, ctx.client_ip, Some((user_id, key_id))).await? {
                quota = Some(q.tighter(quota));
            }
        }
        Ok(quota)
    }

    /// A presented credential was refused: counted on failure policies.
    pub async fn refused(&self, ctx: &RequestLimits) -> Result<Option<Quota>, ApiError> {
        let mut quota = None;
        for (i, p) in self.policies().iter().enumerate() {
            if ctx.matched & (1 << i) == 0 || p.on != On::Failure {
                continue;
            }
            if let Some(q) = self.strict(i, p, ctx.client_ip, None).await? {
                quota = Some(q.tighter(quota));
            }
        }
        Ok(quota)
    }

    fn quota(&self, i: usize, p: &Policy, used: u64, resets_at: u64, now: u64) -> Quota {
        let reset_ms = if used == 0 { p.window_ms() } else { resets_at.saturating_sub(now) };
        Quota {
            policy: self.inner.names[i].clone(),
            limit: p.limit,
            remaining: u64::from(p.limit).saturating_sub(used),
            reset_secs: reset_ms.div_ceil(1000),
        }
    }

    fn usage(&self, p: &Policy, bucket: &str, now: u64) -> Usage {
        let state = self.inner.node.view().read();
        state.limits().get(&p.name, bucket).map_or(Usage { count: 0, resets_at: now }, |r| rules::usage(r, now))
    }

    /// A failure policy: refuses once its bucket is full, counts nothing.
    fn check_full(&self, i: usize, p: &Policy, ip: IpAddr) -> Result<Option<Quota>, ApiError> {
        // Nothing failed lately anywhere: no bucket name to build.
        if !self.inner.node.view().read().limits().has_policy(&p.name) {
            return Ok(None);
        }
        let bucket = Self::bucket(p, ip, None).expect("failure policies need no caller");
        let now = now_ms();
        let u = self.usage(p, &bucket, now);
        let q = self.quota(i, p, u.count, u.resets_at, now);
        if u.count >= u64::from(p.limit) {
            return Err(self.limited(q));
        }
        Ok(Some(q))
    }

    fn limited(&self, q: Quota) -> ApiError {
        let metrics = self.inner.node.metrics();
        metrics.rate_limited.get_or_create(&crate::metrics::PolicyLabels { policy: q.policy.to_string() }).inc();
        ApiError::RateLimited(q)
    }

    async fn admit(
        &self,
        i: usize,
        p: &Policy,
        ip: IpAddr,
        caller: Option<(&str, Option<&str>)>,
    ) -> Result<Option<Quota>, ApiError> {
        match p.mode {
            Mode::Strict => self.strict(i, p, ip, caller).await,
            Mode::Global => self.global(i, p, ip, caller),
        }
    }

    /// One `RateHit` through the log: apply decides.
    async fn strict(
        &self,
        i: usize,
        p: &Policy,
        ip: IpAddr,
        caller: Option<(&str, Option<&str>)>,
    ) -> Result<Option<Quota>, ApiError> {
        let Some(bucket) = Self::bucket(p, ip, caller) else { return Ok(None) };
        self.strict_in(i, p, bucket).await
    }

    /// [`Limiter::strict`] in a bucket already named.
    async fn strict_in(&self, i: usize, p: &Policy, bucket: String) -> Result<Option<Quota>, ApiError> {
        // Already full in this node's view: refused here, proposing nothing,
        // so a client flooding past its limit cannot grow the log (or every
        // node's memory) with hits apply would only refuse. The view may lag
        // the log, never lead it, so this refuses nothing the log would admit;
        // the exact count still comes from apply.
        let now = now_ms();
        let u = self.usage(p, &bucket, now);
        // A new bucket of a policy at its bucket cap is refused by apply
        // (fail closed): refused here too, so a flood from ever new
        // addresses stops writing once the cap is reached.
        let capped = self.inner.node.view().read().limits().full_for(&p.name, &bucket);
        if u.count >= u64::from(p.limit) || capped {
            self.inner.node.metrics().rate_refused_locally.inc();
            let mut q = self.quota(i, p, u.count, u.resets_at, now);
            q.remaining = 0;
            return Err(self.limited(q));
        }
        let c = &self.inner.node;
        let cmd = c.command(Payload::RateHit(RateHit {
            policy: p.name.clone(),
            bucket: bucket.clone(),
            limit: p.limit,
            window_ms: p.window_ms(),
        }));
        // Fail closed: a hit the log cannot take admits nothing (503, not
        // 429: no limit was reached).
        let result = c.propose(vec![cmd]).await.inspect_err(|e| {
            tracing::warn!(policy = %p.name, error = %e, "strict rate-limit hit could not be recorded");
        })?;
        let result = result.results.into_iter().next().ok_or(ApiError::Internal)?;
        let now = now_ms();
        let u = self.usage(p, &bucket, now);
        let mut q = self.quota(i, p, u.count, u.resets_at, now);
        if result.code == Code::Limited as i32 {
            q.remaining = 0;
            return Err(self.limited(q));
        }
        ApiError::check(&result)?;
        // What apply saw at the hit, not what later hits left.
        q.remaining = result.remaining;
        Ok(Some(q))
    }

    /// Admits locally within this node's share of what is left.
    fn global(
        &self,
        i: usize,
        p: &Policy,
        ip: IpAddr,
        caller: Option<(&str, Option<&str>)>,
    ) -> Result<Option<Quota>, ApiError> {
        let Some(bucket) = Self::bucket(p, ip, caller) else { return Ok(None) };
        self.global_in(i, p, bucket)
    }

    /// [`Limiter::global`] in a bucket already named.
    fn global_in(&self, i: usize, p: &Policy, bucket: String) -> Result<Option<Quota>, ApiError> {
        let now = now_ms();
        let committed = self.usage(p, &bucket, now);
        let limit = u64::from(p.limit);
        let round = self.inner.round.load(Ordering::Relaxed);
        let mut locals = self.inner.locals.lock().unwrap_or_else(|e| e.into_inner());
        let key = (i, bucket);
        if locals.len() >= MAX_LOCAL_BUCKETS && !locals.contains_key(&key) {
            // Bounded between syncs (a flood from ever new addresses, or no
            // quorum to sync to): a new bucket waits for a sync to free room.
            drop(locals);
            let mut q = self.quota(i, p, limit, now + p.window_ms(), now);
            q.reset_secs = self.inner.config.sync_interval_ms.div_ceil(1000);
            return Err(self.limited(q));
        }
        let l = locals.entry(key).or_default();
        if l.round != round {
            l.round = round;
            l.used = 0;
            // The nodes that admit now (a front's count comes from its
            // voter, with the fronts that voter lists).
            let nodes = self.inner.node.members() as u64;
            l.budget = round_budget(limit, committed.count, nodes, l.pending + l.inflight);
        }
        let count = committed.count + l.pending + l.inflight;
        let admitted = admits(l.used, l.budget, count, limit);
        if admitted {
            l.used += 1;
            l.pending += 1;
        }
        drop(locals);
        let resets_at = if committed.count == 0 { now + p.window_ms() } else { committed.resets_at };
        let used = if admitted { count + 1 } else { count };
        let mut q = self.quota(i, p, used, resets_at, now);
        if admitted {
            Ok(Some(q))
        } else {
            // Refused while the cluster still has room: this node's share is
            // spent until the next sync.
            if used < limit {
                q.reset_secs = q.reset_secs.min(self.inner.config.sync_interval_ms.div_ceil(1000));
            }
            Err(self.limited(q))
        }
    }

    /// One sync: proposes this node's admissions since the last one and
    /// starts a new round of shares.
    async fn sync(&self) {
        let c = &self.inner.node;
        c.metrics().rate_limit_shares.set(i64::try_from(c.members()).unwrap_or(i64::MAX));
        let mut sent = Vec::new();
        let mut deltas: Vec<Delta> = {
            let mut locals = self.inner.locals.lock().unwrap_or_else(|e| e.into_inner());
            let round = self.inner.round.fetch_add(1, Ordering::Relaxed);
            locals.retain(|_, l| l.pending + l.inflight > 0 || l.round == round);
            locals
                .iter_mut()
                .filter(|(_, l)| l.pending > 0)
                .map(|((i, bucket), l)| {
                    let p = &self.inner.config.policies[*i];
                    let count = l.pending.min(u64::from(rules::MAX_LIMIT));
                    l.pending -= count;
                    l.inflight += count;
                    sent.push(((*i, bucket.clone()), count));
                    Delta {
                        policy: p.name.clone(),
                        bucket: bucket.clone(),
                        count: count as u32,
                        window_ms: p.window_ms(),
                    }
                })
                .collect()
        };
        // Up to MAX_LOCAL_BUCKETS deltas: as many commands as it takes to
        // keep each within its bounds.
        let mut sent = sent.into_iter();
        while !deltas.is_empty() {
            let part = take_within(&mut deltas, BATCH_BYTES, rules::MAX_DELTAS);
            let part_sent: Vec<_> = sent.by_ref().take(part.len()).collect();
            let result = c.propose(vec![c.command(Payload::RateDeltas(RateDeltas { deltas: part }))]).await;
            let ok = result.as_ref().is_ok_and(|a| a.results.first().is_some_and(|r| r.code == Code::Ok as i32));
            let outcome = if ok { "ok" } else { "failed" };
            c.metrics().rate_limit_syncs.get_or_create(&crate::metrics::OutcomeLabels { outcome }).inc();
            if !ok {
                tracing::warn!(error = ?result.err(), "rate-limit sync failed; retrying with the next one");
            }
            let mut locals = self.inner.locals.lock().unwrap_or_else(|e| e.into_inner());
            for (key, count) in part_sent {
                if let Some(l) = locals.get_mut(&key) {
                    l.inflight -= count;
                    if !ok {
                        l.pending += count;
                    }
                }
            }
        }
    }
}

/// A node's budget for one round of a global policy: its share of what the
/// cluster has left (`limit − committed`, split over `nodes`, rounded up so
/// a small remainder is not lost), less what it admitted that the log has
/// not counted yet (`unsynced`).
pub(crate) fn round_budget(limit: u64, committed: u64, nodes: u64, unsynced: u64) -> u64 {
    limit.saturating_sub(committed).div_ceil(nodes.max(1)).saturating_sub(unsynced)
}

/// Whether one more request is admitted: within this round's budget, and
/// under the limit as this node counts it (`count`: committed plus its own
/// unsynced admissions).
pub(crate) fn admits(used: u64, budget: u64, count: u64, limit: u64) -> bool {
    used < budget && count < limit
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node admits all it may in one round, from the same committed
    /// count: what the cluster admits.
    fn admitted_in_a_round(limit: u64, committed: u64, nodes: u64) -> u64 {
        (0..nodes)
            .map(|_| {
                let budget = round_budget(limit, committed, nodes, 0);
                let mut used = 0;
                while admits(used, budget, committed + used, limit) {
                    used += 1;
                }
                used
            })
            .sum()
    }

    #[test]
    fn global_shares_split_what_is_left_and_overshoot_by_less_than_a_node_each() {
        assert_eq!(round_budget(100, 0, 3, 0), 34, "rounded up");
        assert_eq!(round_budget(100, 90, 3, 0), 4);
        assert_eq!(round_budget(100, 100, 3, 0), 0, "nothing left");
        assert_eq!(round_budget(100, 130, 3, 0), 0, "over (a partition healed)");
        assert_eq!(round_budget(100, 0, 3, 30), 4, "less what is admitted but not synced");
        assert_eq!(round_budget(100, 0, 3, 50), 0);
        assert_eq!(round_budget(10, 0, 0, 0), 10, "no members known: one");
        for nodes in 1..=7 {
            for limit in [1u64, 2, 5, 10, 100, 1000] {
                for committed in [0, limit / 2, limit.saturating_sub(1), limit] {
                    let left = limit - committed;
                    let admitted = admitted_in_a_round(limit, committed, nodes);
                    // Each node rounds its share up: at most one extra each.
                    assert!(admitted < left + nodes, "{nodes} nodes, limit {limit}, {committed} used: {admitted}");
                    assert!(admitted >= left.min(nodes * left.div_ceil(nodes)), "nothing left unused");
                    if nodes == 1 {
                        assert_eq!(admitted, left, "one node is exact");
                    }
                }
            }
        }
    }

    #[test]
    fn a_node_stops_at_the_limit_it_counts_whatever_its_budget() {
        assert!(admits(0, 5, 9, 10));
        assert!(!admits(0, 5, 10, 10), "the limit as this node counts it");
        assert!(!admits(5, 5, 3, 10), "the round's budget is spent");
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(bucket_ip(a), bucket_ip(b));
        assert_eq!(bucket_ip(a).to_string(), "2001:db8:1:2::");
        assert_ne!(bucket_ip(a), bucket_ip("2001:db8:1:3::1".parse().unwrap()));
    }
}
