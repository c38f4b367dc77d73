//! Cluster-wide rate limits on the HTTP front.
//!
//! A [`Policy`] matches requests (Gatehouse's own path, the forwarded path
//! of `/auth/verify`, a key, a user, a client network), counts them in one
//! bucket per client IP, key, user or policy, and admits at most `limit`
//! per sliding `window_secs`:
//!
//! - **strict**: each hit is a `RateHit` command; apply decides, so the
//!   count is exact across the cluster. For rare, security-critical events
//!   (logins, credential failures).
//! - **global**: each node admits locally within its share of what is left
//!   (`⌈(limit − committed) / nodes⌉` per sync round) and proposes its
//!   admissions as `RateDeltas` every `sync_interval_ms`. Over-admission is
//!   bounded; see `docs/rate-limits-and-audit.md`.
//!
//! Policies that count `on = "failure"` (strict only) count credentials that
//! were presented and refused (401 to a request with an `Authorization`
//! header, or to a login); once full, the client gets 429 before any
//! credential of theirs is looked at.
//!
//! The client IP is the socket peer, or the first untrusted address of
//! `X-Forwarded-For` when the peer is a trusted proxy. IPv6 clients share a
//! bucket per /64, the block one subscriber usually holds.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_domain::bounds::{take_within, BATCH_BYTES};
use gatehouse_domain::limits::{self as rules, Usage};
use gatehouse_domain::Payload;
use gatehouse_proto::events::{command_result::Code, rate_deltas::Delta, RateDeltas, RateHit};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cluster::now_ms;
use crate::http::forwarded;
use crate::{ApiError, Cluster};

/// Most policies (their matches are kept in a 64-bit mask per request).
pub const MAX_POLICIES: usize = 64;
/// Global-policy buckets a node tracks between syncs, all policies together;
/// past it a new bucket is refused (429) until a sync frees room.
pub const MAX_LOCAL_BUCKETS: usize = 200_000;

/// How a policy counts across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Strict,
    Global,
}

/// What a policy's buckets are per.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    #[default]
    Ip,
    Key,
    User,
    /// One bucket for everything the policy matches.
    Policy,
}

/// What a policy counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// Every matching request.
    #[default]
    Request,
    /// Presented credentials that were refused (strict only).
    Failure,
}

/// One rate-limit policy (`[[rate_limits.policies]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    /// Gatehouse's own request path (segment prefix), e.g. `/api/v1/login`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// On `/auth/verify`: the protected request's `X-Forwarded-Uri` prefix.
    #[serde(default)]
    pub forwarded_path_prefix: Option<String>,
    /// On `/auth/verify`: the protected request's `X-Forwarded-Host`
    /// (normalised: lower case, no port).
    #[serde(default)]
    pub forwarded_host: Option<String>,
    /// Match `forwarded_path_prefix` in any letter case.
    #[serde(default)]
    pub forwarded_ignore_case: bool,
    /// Only this API key id.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Only this username.
    #[serde(default)]
    pub user: Option<String>,
    /// Only clients in this network.
    #[serde(default)]
    pub client_network: Option<IpNet>,
    #[serde(default)]
    pub by: By,
    #[serde(default)]
    pub on: On,
    pub limit: u32,
    pub window_secs: u64,
    pub mode: Mode,
}

impl Policy {
    fn new(name: &str, path: Option<&str>, on: On, limit: u32, mode: Mode) -> Policy {
        Policy {
            name: name.into(),
            path_prefix: path.map(str::to_string),
            forwarded_path_prefix: None,
            forwarded_host: None,
            forwarded_ignore_case: false,
            key_id: None,
            user: None,
            client_network: None,
            by: By::Ip,
            on,
            limit,
            window_secs: 60,
            mode,
        }
    }

    /// The defaults: logins 5/min per IP and credential failures 10/min per
    /// IP (both strict), Gatehouse's API 100/min per IP (global).
    pub fn defaults() -> Vec<Policy> {
        vec![
            Policy::new("login", Some("/api/v1/login"), On::Request, 5, Mode::Strict),
            Policy::new("credential_failures", None, On::Failure, 10, Mode::Strict),
            Policy::new("api", Some("/api/"), On::Request, 100, Mode::Global),
        ]
    }

    /// Whether the policy can only be decided once the caller is known.
    fn needs_caller(&self) -> bool {
        self.key_id.is_some() || self.user.is_some() || matches!(self.by, By::Key | By::User)
    }

    fn window_ms(&self) -> u64 {
        self.window_secs * 1000
    }
}

/// `[rate_limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// On by default; off only by saying so.
    pub enabled: bool,
    /// How often a node syncs its global-limit admissions.
    pub sync_interval_ms: u64,
    /// Peers whose `X-Forwarded-For` is believed (default: loopback).
    pub trusted_proxies: Vec<IpNet>,
    /// Failed admin-API authentications per client address per minute
    /// before that address is refused (`RESOURCE_EXHAUSTED`) on this node.
    pub admin_auth_failures_per_minute: u32,
    pub policies: Vec<Policy>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            enabled: true,
            sync_interval_ms: 50,
            trusted_proxies: vec!["127.0.0.0/8".parse().expect("valid"), "::1/128".parse().expect("valid")],
            admin_auth_failures_per_minute: 30,
            policies: Policy::defaults(),
        }
    }
}

impl LimitsConfig {
    /// Refuses policies that could not work as written.
    pub fn validate(&self) -> Result<(), String> {
        if !(10..=10_000).contains(&self.sync_interval_ms) {
            return Err("rate_limits.sync_interval_ms must be 10..=10000".into());
        }
        if !(1..=100_000).contains(&self.admin_auth_failures_per_minute) {
            return Err("rate_limits.admin_auth_failures_per_minute must be 1..=100000".into());
        }
        if self.policies.len() > MAX_POLICIES {
            return Err(format!("at most {MAX_POLICIES} rate-limit policies"));
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.policies {
            let name_ok = !p.name.is_empty()
                && p.name.len() <= rules::MAX_NAME
                && p.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(format!("rate-limit policy name {:?}: use a-z, 0-9, _ and -", p.name));
            }
            if !names.insert(&p.name) {
                return Err(format!("rate-limit policy {} is defined twice", p.name));
            }
            let max = if p.mode == Mode::Strict { rules::MAX_STRICT_LIMIT } else { rules::MAX_LIMIT };
            if p.limit == 0 || p.limit > max {
                return Err(format!("rate-limit policy {}: limit must be 1..={max}", p.name));
            }
            if !(rules::MIN_WINDOW_MS..=rules::MAX_WINDOW_MS).contains(&p.window_ms()) {
                return Err(format!("rate-limit policy {}: window_secs must be 1..=86400", p.name));
            }
            if p.on == On::Failure && (p.mode != Mode::Strict || p.needs_caller()) {
                return Err(format!("rate-limit policy {}: failures are counted strictly, per IP or policy", p.name));
            }
            for prefix in [&p.path_prefix, &p.forwarded_path_prefix].into_iter().flatten() {
                if forwarded::plain_path(prefix).as_deref() != Some(prefix.as_str()) {
                    return Err(format!("rate-limit policy {}: path prefixes are plain absolute paths", p.name));
                }
            }
            if let Some(h) = &p.forwarded_host {
                if forwarded::normalise_host(h).as_deref() != Some(h.as_str()) || h.contains(':') {
                    return Err(format!(
                        "rate-limit policy {}: forwarded_host is a lower-case host without port",
                        p.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The mask of policies whose request-side filters match.
///
/// Policies keyed by the forwarded request read it with the route
/// rules' parser ([`forwarded`]); one they cannot read one way is
/// refused, never matched as `/` or `""` (a limit must not be dodged by
/// spelling).
fn matching(policies: &[Policy], s: &Subject<'_>) -> Result<u64, forwarded::Ambiguous> {
    let on_verify = s.path == "/auth/verify";
    let mut mask = 0;
    for (i, p) in policies.iter().enumerate() {
        let path_ok = p.path_prefix.as_deref().is_none_or(|pre| forwarded::under(s.path, pre, false));
        let fwd_ok = if p.forwarded_path_prefix.is_none() && p.forwarded_host.is_none() {
            true
        } else if !on_verify {
            false
        } else {
            let path_ok = match &p.forwarded_path_prefix {
                Some(pre) => forwarded::under(&forwarded::path(s.headers)?, pre, p.forwarded_ignore_case),
                None => true,
            };
            let host_ok = match &p.forwarded_host {
                Some(h) => forwarded::host(s.headers)? == *h,
                None => true,
            };
            path_ok && host_ok
        };
        let net_ok = p.client_network.is_none_or(|n| n.contains(&s.ip));
        if path_ok && fwd_ok && net_ok {
            mask |= 1 << i;
        }
    }
    Ok(mask)
}

/// What the response's `X-RateLimit-*` headers say: the tightest policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub policy: Arc<str>,
    pub limit: u32,
    pub remaining: u64,
    /// Seconds until the count next goes down.
    pub reset_secs: u64,
}

impl Quota {
    fn tighter(self, other: Option<Quota>) -> Quota {
        match other {
            Some(o)
                if (o.remaining, std::cmp::Reverse(o.reset_secs))
                    < (self.remaining, std::cmp::Reverse(self.reset_secs)) =>
            {
                o
            }
            _ => self,
        }
    }

    /// Adds the headers to a response.
    pub fn write(&self, h: &mut HeaderMap) {
        h.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(self.reset_secs));
    }
}

/// A refusal ([`ApiError::RateLimited`]): 429 with the quota headers,
/// `Retry-After` and the policy named. The quota also goes into the
/// response's extensions, for the layer to audit.
pub(crate) fn limited_response(q: Quota) -> Response {
    let body = serde_json::json!({ "error": {
        "code": "rate_limited",
        "message": format!("rate limit {} reached; retry in {} s", q.policy, q.reset_secs.max(1)),
        "policy": &*q.policy,
    }});
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    q.write(resp.headers_mut());
    resp.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(q.reset_secs.max(1)));
    resp.extensions_mut().insert(q);
    resp
}

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

/// A request as policies see it.
pub struct Subject<'a> {
    pub ip: IpAddr,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
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

struct Inner {
    cluster: Cluster,
    config: LimitsConfig,
    names: Vec<Arc<str>>,
    locals: Mutex<HashMap<(usize, String), Local>>,
    round: AtomicU64,
    members: AtomicU64,
}

/// The node's rate limiter; cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl Limiter {
    /// Starts the limiter and, if any policy is global, its sync task.
    pub fn start(cluster: Cluster, config: LimitsConfig) -> Limiter {
        let names = config.policies.iter().map(|p| Arc::from(p.name.as_str())).collect();
        let limiter = Limiter {
            inner: Arc::new(Inner {
                cluster,
                names,
                locals: Mutex::new(HashMap::new()),
                round: AtomicU64::new(1),
                members: AtomicU64::new(1),
                config,
            }),
        };
        if limiter.inner.config.enabled && limiter.inner.config.policies.iter().any(|p| p.mode == Mode::Global) {
            tokio::spawn(sync_loop(Arc::downgrade(&limiter.inner)));
        }
        limiter
    }

    pub fn enabled(&self) -> bool {
        self.inner.config.enabled && !self.inner.config.policies.is_empty()
    }

    /// Whether `peer` is a trusted proxy (its `X-Forwarded-For` is believed).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        crate::http::client_ip::is_trusted(crate::http::client_ip::canonical(peer), &self.inner.config.trusted_proxies)
    }

    /// The client's address: the peer, or what trusted proxies say it is.
    pub fn client_ip(&self, peer: Option<&SocketAddr>, headers: &HeaderMap) -> IpAddr {
        crate::http::client_ip::resolve(peer, headers, &self.inner.config.trusted_proxies)
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
        })
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
        for (i, p) in self.policies().iter().enumerate() {
            if matched & (1 << i) == 0 || p.needs_caller() {
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
    fn failure_refusal(&self, ctx: &RequestLimits) -> ApiError {
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
        let state = self.inner.cluster.view().read();
        state.limits().get(&p.name, bucket).map_or(Usage { count: 0, resets_at: now }, |r| rules::usage(r, now))
    }

    /// A failure policy: refuses once its bucket is full, counts nothing.
    fn check_full(&self, i: usize, p: &Policy, ip: IpAddr) -> Result<Option<Quota>, ApiError> {
        // Nothing failed lately anywhere: no bucket name to build.
        if !self.inner.cluster.view().read().limits().has_policy(&p.name) {
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
        let metrics = self.inner.cluster.metrics();
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
        let capped = self.inner.cluster.view().read().limits().full_for(&p.name, &bucket);
        if u.count >= u64::from(p.limit) || capped {
            self.inner.cluster.metrics().rate_refused_locally.inc();
            let mut q = self.quota(i, p, u.count, u.resets_at, now);
            q.remaining = 0;
            return Err(self.limited(q));
        }
        let c = &self.inner.cluster;
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
        q.remaining = result.id.parse().unwrap_or(q.remaining);
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
        let now = now_ms();
        let committed = self.usage(p, &bucket, now);
        let limit = u64::from(p.limit);
        let round = self.inner.round.load(Ordering::Relaxed);
        let nodes = self.inner.members.load(Ordering::Relaxed).max(1);
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
        let c = &self.inner.cluster;
        let members = c.raft().metrics().borrow().membership_config.membership().nodes().count() as u64;
        self.inner.members.store(members.max(1), Ordering::Relaxed);
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

async fn sync_loop(weak: Weak<Inner>) {
    let interval = match weak.upgrade() {
        Some(inner) => Duration::from_millis(inner.config.sync_interval_ms),
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        Limiter { inner }.sync().await;
    }
}

pub(crate) use rules::bucket_ip;

/// The HTTP layer: admits before the handler, counts refused credentials
/// after it, and writes the tightest quota into the response.
pub async fn layer(
    axum::extract::State(front): axum::extract::State<crate::http::Front>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limiter = &front.limits;
    let path = req.uri().path();
    // Probes and scrapes are never limited.
    if !limiter.enabled() || matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return next.run(req).await;
    }
    // Resolved once, by `http::client_ip::layer` (outside this one).
    let ip = match req.extensions().get::<crate::http::client_ip::ClientIp>() {
        Some(c) => c.0,
        None => {
            let peer = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
            limiter.client_ip(peer.as_ref(), req.headers())
        }
    };
    // Refused credentials count when they were sent on purpose: a bearer
    // token or a login. A browser's stale session cookie is not an attack.
    let presents = req.headers().contains_key(axum::http::header::AUTHORIZATION) || path == "/api/v1/login";
    // A 256-bit key or session is looked at even over a failure limit (it
    // cannot be guessed); a password never is: a guess must not learn from
    // a different answer whether it was right.
    let credential = path != "/api/v1/login"
        && (req.headers().contains_key(axum::http::header::AUTHORIZATION)
            || req.headers().contains_key(axum::http::header::COOKIE));
    let (ctx, before) = limiter.before(&Subject { ip, path, headers: req.headers() }, credential).await;
    let quota = match before {
        Ok(q) => q,
        Err(e) => return refusal(&front, e, ip),
    };
    req.extensions_mut().insert(ctx);
    let mut resp = next.run(req).await;
    let from_handler = resp.extensions_mut().remove::<Quota>();
    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
        // The handler's refusal (a policy by key or user) carries its own headers.
        if let Some(q) = from_handler {
            front.cluster.audit_rate_limited(&q.policy, ip);
        }
        return resp;
    }
    let mut quota = match (quota, from_handler) {
        (Some(a), b) => Some(a.tighter(b)),
        (None, b) => b,
    };
    if ctx.over_failures && resp.status() == StatusCode::UNAUTHORIZED {
        // Over the limit and not verified: the failure limit's answer, and
        // nothing more counted (the bucket is full).
        return refusal(&front, limiter.failure_refusal(&ctx), ip);
    }
    if presents && resp.status() == StatusCode::UNAUTHORIZED {
        match limiter.refused(&ctx).await {
            Ok(q) => quota = q.map(|q| q.tighter(quota.take())),
            Err(e) => return refusal(&front, e, ip),
        }
    }
    if let Some(q) = quota {
        q.write(resp.headers_mut());
    }
    resp
}

/// A handler's check once it knows the caller (policies by key or user).
pub async fn caller_known(
    front: &crate::http::Front,
    ctx: Option<&RequestLimits>,
    user_id: &str,
    username: &str,
    key_id: Option<&str>,
) -> Result<Option<Quota>, ApiError> {
    match ctx {
        Some(ctx) => front.limits.caller_known(ctx, user_id, username, key_id).await,
        None => Ok(None),
    }
}

/// The answer to a request the limiter refused; a 429 is audited.
fn refusal(front: &crate::http::Front, e: ApiError, ip: IpAddr) -> Response {
    if let ApiError::RateLimited(q) = &e {
        front.cluster.audit_rate_limited(&q.policy, ip);
    }
    e.into_response()
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

    #[test]
    fn forwarded_policies_read_the_request_as_route_rules_do() {
        let mut p = Policy::new("deploy", None, On::Request, 5, Mode::Strict);
        p.forwarded_path_prefix = Some("/deploy".into());
        p.forwarded_host = Some("ci.example".into());
        let mut other = Policy::new("login", Some("/api/v1/login"), On::Request, 5, Mode::Strict);
        other.forwarded_ignore_case = true;
        let policies = [p, other];
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let check = |host: &[u8], uri: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-host", HeaderValue::from_bytes(host).unwrap());
            h.insert("x-forwarded-uri", HeaderValue::from_bytes(uri).unwrap());
            matching(&policies, &Subject { ip, path: "/auth/verify", headers: &h })
        };
        assert_eq!(check(b"ci.example", b"/deploy/x"), Ok(0b01));
        assert_eq!(check(b"CI.example.:443", b"/deploy?x"), Ok(0b01), "hosts are normalised");
        assert_eq!(check(b"ci.example", b"/deployx"), Ok(0));
        assert_eq!(check(b"ci.example", b"/DEPLOY"), Ok(0), "case-sensitive unless asked");
        // Spellings that would dodge the limit are refused, not let through as `/`.
        for (host, uri) in [
            (&b"ci.example"[..], &b"/deploy/x?\xff"[..]),
            (b"ci.example", b"/deploy;x/run"),
            (b"ci.example", b"//deploy"),
            (b"ci.example,app.example", b"/deploy"),
            (b"c\xc3\xaf.example", b"/deploy"),
        ] {
            assert_eq!(check(host, uri), Err(forwarded::Ambiguous), "{}", String::from_utf8_lossy(uri));
        }
        // Off `/auth/verify` forwarded policies do not apply, and the headers are not read.
        let h = HeaderMap::new();
        assert_eq!(matching(&policies, &Subject { ip, path: "/api/v1/login", headers: &h }), Ok(0b10));
        let mut ignoring = policies[0].clone();
        ignoring.forwarded_ignore_case = true;
        ignoring.forwarded_host = None;
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-uri", HeaderValue::from_static("/DePloy/x"));
        assert_eq!(matching(&[ignoring], &Subject { ip, path: "/auth/verify", headers: &h }), Ok(1));
    }

    #[test]
    fn policies_that_cannot_work_are_refused() {
        assert!(LimitsConfig::default().validate().is_ok());
        let bad = |f: fn(&mut Policy)| {
            let mut c = LimitsConfig::default();
            f(&mut c.policies[0]);
            c.validate().unwrap_err()
        };
        assert!(bad(|p| p.name = "Bad Name".into()).contains("name"));
        assert!(bad(|p| p.name = "api".into()).contains("twice"));
        assert!(bad(|p| p.limit = 0).contains("limit"));
        assert!(bad(|p| p.window_secs = 0).contains("window"));
        assert!(bad(|p| p.path_prefix = Some("api".into())).contains("plain absolute paths"));
        assert!(bad(|p| p.forwarded_path_prefix = Some("/ops;x".into())).contains("plain absolute paths"));
        assert!(bad(|p| p.forwarded_host = Some("Admin.example:443".into())).contains("forwarded_host"));
        assert!(bad(|p| {
            p.on = On::Failure;
            p.by = By::Key;
        })
        .contains("failures"));
    }

    #[test]
    fn the_tightest_quota_wins() {
        let q = |remaining, reset_secs| Quota { policy: "p".into(), limit: 10, remaining, reset_secs };
        assert_eq!(q(5, 10).tighter(Some(q(3, 1))), q(3, 1));
        assert_eq!(q(3, 10).tighter(Some(q(3, 1))), q(3, 10));
        assert_eq!(q(3, 10).tighter(None), q(3, 10));
    }
}
