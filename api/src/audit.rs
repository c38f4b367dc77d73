//! Recording security events into the replicated audit log.
//!
//! Handlers call [`Cluster::audit`] (or [`Cluster::audit_count`]); it never
//! waits and never fails. Events wait in a bounded buffer and a background
//! task proposes them every `flush_ms` as `AppendAudit` commands. While the
//! log cannot take them the buffer keeps them; once it is full new events
//! are dropped and counted, and the count travels with the next batch, so
//! the audit log itself says that something is missing. Frequent events
//! (rate-limit refusals, forward-auth denials) are aggregated per flush into
//! one event with a count.
//!
//! The leader also enforces retention: it verifies the chain up to the
//! first record younger than the cutoff and proposes a `PruneAudit`
//! through the last older one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use gatehouse_domain::audit::MAX_EVENTS;
use gatehouse_domain::bounds::{take_within, BATCH_BYTES};
use gatehouse_domain::{Payload, State};
use gatehouse_proto::events::{AppendAudit, AuditEvent, Command, PruneAudit};
use gatehouse_storage::AuditLog;
use serde::{Deserialize, Serialize};

use crate::cluster::now_ms;
use crate::{ApiError, Cluster};

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events a node keeps while the log cannot take them.
    pub buffer_events: usize,
    /// How often a node proposes what it buffered.
    pub flush_ms: u64,
    /// How long refusals and denials are counted before their aggregated
    /// records are proposed: a flood writes one record per bucket per
    /// period, however many requests it sends.
    pub aggregate_ms: u64,
    /// Records older than this are pruned by the leader.
    pub retention_days: u64,
    /// How often the leader looks for records past retention.
    pub prune_check_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            buffer_events: 100_000,
            flush_ms: 100,
            aggregate_ms: 10_000,
            retention_days: 90,
            prune_check_secs: 3600,
        }
    }
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=10_000_000).contains(&self.buffer_events) {
            return Err("audit.buffer_events must be 100..=10000000".into());
        }
        if !(10..=60_000).contains(&self.flush_ms) {
            return Err("audit.flush_ms must be 10..=60000".into());
        }
        if !(self.flush_ms..=300_000).contains(&self.aggregate_ms) {
            return Err("audit.aggregate_ms must be flush_ms..=300000".into());
        }
        if !(1..=36_500).contains(&self.retention_days) {
            return Err("audit.retention_days must be 1..=36500".into());
        }
        if self.prune_check_secs == 0 {
            return Err("audit.prune_check_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// Who did something: filled from an authenticated caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub user_id: String,
    pub key_id: String,
    pub session_id: String,
    pub client_ip: String,
}

impl Actor {
    pub fn of(p: &crate::identity::Principal, client_ip: String) -> Actor {
        let (key_id, session_id) = match &p.via {
            crate::identity::Via::ApiKey { key_id } => (key_id.clone(), String::new()),
            crate::identity::Via::Session { session_id } => (String::new(), session_id.clone()),
        };
        Actor { user_id: p.user_id.clone(), key_id, session_id, client_ip }
    }
}

/// (action, resource, client address bucket, actor user id).
type Counted = (&'static str, String, String, String);
/// (count, first seen, last seen).
type Seen = (u64, u64, u64);

#[derive(Default)]
struct Buffer {
    events: Vec<AuditEvent>,
    /// Refusals and denials seen since the last flush.
    counted: HashMap<Counted, Seen>,
    dropped: u64,
    /// A batch that failed to commit, retried as is (same batch number, so
    /// it is appended once even if only the answer was lost).
    retry: Option<Command>,
    /// The number of the last batch made here.
    last_batch: u64,
    /// When the oldest count in `counted` was taken (0: none).
    counted_since: u64,
}

/// The node's audit buffer, held by the [`Cluster`]: recording never waits
/// and never fails.
pub struct Recorder {
    node_id: u64,
    capacity: AtomicUsize,
    /// `AuditConfig::aggregate_ms`.
    aggregate_ms: std::sync::atomic::AtomicU64,
    buffer: Mutex<Buffer>,
    wake: std::sync::Arc<tokio::sync::Notify>,
}

/// What the gRPC layer knows about the call being served: the client's
/// address, the caller once authentication named one (so a refusal
/// anywhere in the handler is audited with its actor), and the client's
/// `idempotency-key`, if it sent one.
#[derive(Debug, Default)]
pub struct GrpcCall {
    pub peer: String,
    caller: Mutex<Option<Actor>>,
    idempotency_key: Option<String>,
    writes: AtomicUsize,
    /// The listener's count of failed authentications per address (none
    /// when rate limits are off).
    pub auth_failures: Option<std::sync::Arc<crate::admin::failures::FailureGate>>,
    /// The gRPC method's path, for the request digest.
    pub method: String,
    /// SHA-256 of the method and the request message, once the handler
    /// noted it ([`note_request`]).
    digest: Mutex<Vec<u8>>,
}

/// Longest accepted `idempotency-key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 64;

impl GrpcCall {
    pub fn new(peer: String, idempotency_key: Option<String>) -> Self {
        GrpcCall {
            peer,
            caller: Mutex::new(None),
            idempotency_key,
            writes: AtomicUsize::new(0),
            auth_failures: None,
            method: String::new(),
            digest: Mutex::new(Vec::new()),
        }
    }

    /// The authenticated caller, if any.
    pub fn caller(&self) -> Option<Actor> {
        self.caller.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

tokio::task_local! {
    /// The admin gRPC call being served (set by the gRPC layer).
    pub static GRPC_CALL: std::sync::Arc<GrpcCall>;
}

/// The address of the admin call's client, if known.
pub fn grpc_peer() -> String {
    GRPC_CALL.try_with(|c| c.peer.clone()).unwrap_or_default()
}

/// Notes the admin call's request message: its writes carry the digest of
/// the method and the message, so an `idempotency-key` reused for another
/// request is refused instead of answered with the first one's result.
pub fn note_request<M: prost::Message>(request: &M) {
    let _ = GRPC_CALL.try_with(|c| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(c.method.as_bytes());
        h.update([0u8]);
        h.update(request.encode_to_vec());
        *c.digest.lock().unwrap_or_else(|e| e.into_inner()) = h.finalize().to_vec();
    });
}

/// The digest [`note_request`] noted for the call being served (empty: none).
pub fn request_digest() -> Vec<u8> {
    GRPC_CALL.try_with(|c| c.digest.lock().unwrap_or_else(|e| e.into_inner()).clone()).unwrap_or_default()
}

/// The request id for the next write of the admin call being served, when
/// its client sent an `idempotency-key`: scoped to the caller's API key (no
/// one can replay or read another caller's results) and numbered per write
/// within the call, so a retried call repeats the same ids and each of its
/// writes is applied once (`gatehouse_domain::requests`). `None` without a key.
pub fn idempotent_request_id(caller: &crate::identity::Principal) -> Result<Option<String>, ApiError> {
    request_id_of_write(caller, true)
}

/// The request id [`idempotent_request_id`] will give the call's next
/// write, without taking it: to ask whether a retried call's write was
/// already applied before checks that its own first attempt would fail.
pub fn next_idempotent_request_id(caller: &crate::identity::Principal) -> Result<Option<String>, ApiError> {
    request_id_of_write(caller, false)
}

fn request_id_of_write(caller: &crate::identity::Principal, take: bool) -> Result<Option<String>, ApiError> {
    let number =
        |c: &GrpcCall| if take { c.writes.fetch_add(1, Ordering::Relaxed) } else { c.writes.load(Ordering::Relaxed) };
    let Ok(Some((key, n))) = GRPC_CALL.try_with(|c| c.idempotency_key.clone().map(|k| (k, number(c)))) else {
        return Ok(None);
    };
    let valid = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if !valid {
        return Err(ApiError::InvalidArgument(format!(
            "idempotency-key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} characters of A-Z a-z 0-9 - _ . :"
        )));
    }
    let crate::identity::Via::ApiKey { key_id } = &caller.via else { return Ok(None) };
    Ok(Some(format!("idem:{key_id}:{key}:{n}")))
}

/// Notes the authenticated caller of the gRPC call being served.
pub fn note_grpc_caller(p: &crate::identity::Principal) {
    let _ = GRPC_CALL.try_with(|c| {
        *c.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(Actor::of(p, c.peer.clone()));
    });
}

impl Recorder {
    pub fn new(node_id: u64) -> Recorder {
        Recorder {
            node_id,
            capacity: AtomicUsize::new(AuditConfig::default().buffer_events),
            aggregate_ms: std::sync::atomic::AtomicU64::new(AuditConfig::default().aggregate_ms),
            buffer: Mutex::new(Buffer::default()),
            wake: Default::default(),
        }
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn full(&self, len: usize) -> bool {
        len >= self.capacity.load(Ordering::Relaxed)
    }

    /// Buffers one event, stamping time, node and trace where missing, and
    /// clipped to what a batch takes ([`clip`]).
    pub fn record(&self, metrics: &crate::metrics::Metrics, mut e: AuditEvent) {
        if e.at == 0 {
            e.at = now_ms();
        }
        clip(&mut e);
        e.node_id = self.node_id;
        if e.trace_id.is_empty() {
            e.trace_id = current_trace_id();
        }
        let mut b = self.buffer();
        if self.full(b.events.len()) {
            b.dropped += 1;
            metrics.audit_dropped.inc();
            return;
        }
        b.events.push(e);
        metrics.audit_buffered.set(b.events.len() as i64);
        if b.events.len() >= MAX_EVENTS / 2 {
            self.wake.notify_one();
        }
    }

    /// Counts a frequent event (a refusal, a denial): one record per
    /// (action, resource, client address bucket, actor) per flush, with the
    /// count and when it was first and last seen. An IPv6 client is counted
    /// by its /64, so rotating addresses inside it makes no more records.
    pub fn count(
        &self,
        metrics: &crate::metrics::Metrics,
        action: &'static str,
        resource: String,
        client_ip: String,
        actor_user_id: String,
    ) {
        let client = client_ip.parse().map_or(client_ip, |ip| crate::limits::bucket_ip(ip).to_string());
        let key = (action, resource, client, actor_user_id);
        let mut b = self.buffer();
        if !b.counted.contains_key(&key) && self.full(b.counted.len()) {
            b.dropped += 1;
            metrics.audit_dropped.inc();
            return;
        }
        let now = now_ms();
        if b.counted.is_empty() {
            b.counted_since = now;
        }
        let seen = b.counted.entry(key).or_insert((0, now, now));
        seen.0 += 1;
        seen.2 = now;
    }

    /// What is buffered, as the payload of one command; or the command to retry.
    /// Counted events join it once their period is over, or with `all`.
    fn take(&self, metrics: &crate::metrics::Metrics, all: bool) -> Option<Result<Command, AppendAudit>> {
        let mut b = self.buffer();
        if let Some(retry) = b.retry.take() {
            return Some(Ok(retry));
        }
        let period = self.aggregate_ms.load(Ordering::Relaxed);
        let due = !b.counted.is_empty() && (all || now_ms().saturating_sub(b.counted_since) >= period);
        let counted = if due { std::mem::take(&mut b.counted) } else { HashMap::new() };
        for ((action, resource, client_ip, actor_user_id), (count, first, last)) in counted {
            let outcome = if action == "ratelimit.hit" { "limited" } else { "denied" };
            b.events.push(AuditEvent {
                at: first,
                action: action.into(),
                outcome: outcome.into(),
                client_ip,
                actor_user_id,
                resource,
                node_id: self.node_id,
                detail: format!("count={count} first={first} last={last}"),
                ..Default::default()
            });
        }
        if b.events.is_empty() && b.dropped == 0 {
            return None;
        }
        // One command's worth: the rest goes with the next flush, at once.
        let events = take_within(&mut b.events, BATCH_BYTES, MAX_EVENTS);
        let dropped = std::mem::take(&mut b.dropped);
        metrics.audit_buffered.set(b.events.len() as i64);
        Some(Err(AppendAudit { events, dropped, batch: 0 }))
    }

    /// The next batch number: above every batch this node made, in this
    /// process (`last_batch`) or before it (`applied`, the last one the log
    /// took from this node), and from the clock in microseconds, so a
    /// restart whose view is still catching up does not reuse a number.
    fn next_batch(&self, applied: u64) -> u64 {
        let mut b = self.buffer();
        let clock = now_ms().saturating_mul(1000);
        b.last_batch = clock.max(b.last_batch + 1).max(applied + 1);
        b.last_batch
    }
}

impl Cluster {
    /// Records an audit event.
    pub fn audit(&self, e: AuditEvent) {
        self.recorder().record(self.metrics(), e);
    }

    /// Counts a frequent audit event (aggregated per flush).
    pub fn audit_count(&self, action: &'static str, resource: String, client_ip: String) {
        self.recorder().count(self.metrics(), action, resource, client_ip, String::new());
    }

    /// [`Cluster::audit_count`] of something `actor_user_id` was refused.
    pub fn audit_count_by(&self, action: &'static str, resource: String, client_ip: String, actor_user_id: String) {
        self.recorder().count(self.metrics(), action, resource, client_ip, actor_user_id);
    }

    /// A request refused by rate-limit `policy` (aggregated).
    pub fn audit_rate_limited(&self, policy: &str, client_ip: IpAddr) {
        self.audit_count("ratelimit.hit", format!("policy:{policy}"), client_ip.to_string());
    }
}

/// An event by `actor` on `resource`.
pub fn event(action: &str, outcome: &str, actor: &Actor, resource: String) -> AuditEvent {
    AuditEvent {
        at: now_ms(),
        action: action.into(),
        outcome: outcome.into(),
        actor_user_id: actor.user_id.clone(),
        actor_key_id: actor.key_id.clone(),
        actor_session_id: actor.session_id.clone(),
        client_ip: actor.client_ip.clone(),
        resource,
        ..Default::default()
    }
}

/// Starts the flush task and the leader's retention task; both end when
/// `stop` turns true (neither keeps the node or its store alive).
pub fn start(cluster: Cluster, log: AuditLog, config: AuditConfig, stop: tokio::sync::watch::Receiver<bool>) {
    cluster.recorder().capacity.store(config.buffer_events, Ordering::Relaxed);
    cluster.recorder().aggregate_ms.store(config.aggregate_ms, Ordering::Relaxed);
    let wake = cluster.recorder().wake.clone();
    let weak = cluster.downgrade();
    tokio::spawn(flush_loop(weak.clone(), wake, Duration::from_millis(config.flush_ms), stop.clone()));
    tokio::spawn(prune_loop(weak, log, config, stop));
}

/// Proposes buffered events until the buffer is empty or a write fails.
pub async fn flush(cluster: &Cluster) {
    flush_with(cluster, false).await;
}

/// [`flush`], counted events included whatever their period (at shutdown).
pub async fn flush_all(cluster: &Cluster) {
    flush_with(cluster, true).await;
}

async fn flush_with(cluster: &Cluster, all: bool) {
    let metrics = cluster.metrics();
    let number = |mut append: AppendAudit| {
        let chain = cluster.view().read().audit_chain();
        let applied = gatehouse_domain::audit::last_batch(&chain, cluster.id()).unwrap_or(0);
        append.batch = cluster.recorder().next_batch(applied);
        cluster.command(Payload::AppendAudit(append))
    };
    while let Some(next) = cluster.recorder().take(metrics, all) {
        // A batch made now (not a retry) that the log calls a duplicate was
        // numbered too low (a clock stepped back while the view lagged): it
        // is renumbered from what the log holds and sent again, not lost.
        let fresh = next.is_err();
        let mut cmd = next.unwrap_or_else(number);
        let n = match &cmd.payload {
            Some(Payload::AppendAudit(a)) => a.events.len() as u64,
            _ => 0,
        };
        let mut result = cluster.propose(vec![cmd.clone()]).await;
        if fresh && result.as_ref().is_ok_and(|a| a.results.first().is_some_and(|r| r.id == "duplicate")) {
            metrics.audit_renumbered.inc();
            if let Some(Payload::AppendAudit(a)) = cmd.payload.take() {
                cmd = number(a);
                result = cluster.propose(vec![cmd.clone()]).await;
            }
        }
        match result {
            Ok(applied) if applied.results.first().is_some_and(|r| r.code == 0) => {
                metrics.audit_sent.inc_by(n);
            }
            // Refused by apply (events built here always fit): not retried.
            Ok(applied) => tracing::error!(result = ?applied.results.first(), "audit batch refused"),
            // Over a bound (events are clipped to fit, so this is a bug):
            // retrying the same batch would hold every later one back.
            Err(ApiError::InvalidArgument(e)) => {
                tracing::error!(error = %e, events = n, "audit batch over its bounds; dropped");
                metrics.audit_dropped.inc_by(n);
                cluster.recorder().buffer().dropped += n;
            }
            Err(e) => {
                tracing::warn!(error = %e, events = n, "audit batch not committed; keeping it");
                cluster.recorder().buffer().retry = Some(cmd);
                return;
            }
        }
    }
}

/// Makes `e` fit an audit batch (`gatehouse_domain::audit::MAX_EVENT_BYTES`,
/// a non-empty action): long fields are cut to 2 KiB each (on a character
/// boundary, marked `…`), so a large before/after snapshot is kept in part
/// rather than the whole batch refused.
pub fn clip(e: &mut AuditEvent) {
    const FIELD: usize = 2048;
    if e.action.is_empty() {
        e.action = "unknown".into();
    }
    if prost::Message::encoded_len(e) <= gatehouse_domain::audit::MAX_EVENT_BYTES {
        return;
    }
    let cut = |s: &mut String| {
        if s.len() > FIELD {
            let mut end = FIELD;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
    };
    for field in [
        &mut e.action,
        &mut e.outcome,
        &mut e.actor_user_id,
        &mut e.actor_key_id,
        &mut e.actor_session_id,
        &mut e.client_ip,
        &mut e.request_id,
        &mut e.trace_id,
        &mut e.resource,
        &mut e.before,
        &mut e.after,
        &mut e.detail,
    ] {
        cut(field);
    }
}

/// The current trace's id, when traces are exported.
fn current_trace_id() -> String {
    let tp = crate::trace::current_traceparent();
    tp.split('-').nth(1).unwrap_or_default().to_string()
}

async fn flush_loop(
    weak: crate::cluster::WeakCluster,
    wake: std::sync::Arc<tokio::sync::Notify>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::timeout(every, wake.notified()) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(cluster) = weak.upgrade() else { return };
        flush(&cluster).await;
    }
}

/// On the leader: prune what is past retention, after verifying it.
async fn prune_loop(
    weak: crate::cluster::WeakCluster,
    log: AuditLog,
    config: AuditConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(config.prune_check_secs));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(cluster) = weak.upgrade() else { return };
        if let Err(e) = prune(&cluster, &log, config.retention_days).await {
            tracing::warn!(error = %e, "audit retention check failed");
        }
    }
}

/// Proposes a prune through the last record older than `retention_days`,
/// if this node leads and the chain up to there verifies.
pub async fn prune(cluster: &Cluster, log: &AuditLog, retention_days: u64) -> Result<Option<u64>, crate::ApiError> {
    if cluster.leader().map(|(id, _)| id) != Some(cluster.id()) {
        return Ok(None);
    }
    let cutoff = now_ms().saturating_sub(retention_days * 86_400_000);
    let log = log.clone();
    let old = move |r: &gatehouse_proto::state::AuditRecord| r.event.as_ref().is_some_and(|e| e.at < cutoff);
    let (report, last) = tokio::task::spawn_blocking(move || log.verify_while(old))
        .await
        .map_err(|_| crate::ApiError::Internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "reading the audit log failed");
            crate::ApiError::Internal
        })?;
    if let Some(broken) = report.broken {
        tracing::error!(seq = broken.seq(), problem = %broken, "audit chain broken; not pruning");
        return Ok(None);
    }
    let Some((through_seq, through_hash)) = last else { return Ok(None) };
    cluster.propose_one(cluster.command(Payload::PruneAudit(PruneAudit { through_seq, through_hash }))).await?;
    tracing::info!(through_seq, "audit records past retention pruned");
    Ok(Some(through_seq))
}

/// A record as an audit snapshot: what an operator needs to see changed,
/// never a password hash, key secret hash or session token hash.
fn snapshot(state: &State, kind: &str, id: &str) -> String {
    let v = match kind {
        "user" => state.user(id).map(|u| {
            serde_json::json!({ "id": u.user_id, "username": u.username, "email": u.email, "roles": u.roles,
                "status": crate::admin::status_name(u.status), "locked_until": u.locked_until })
        }),
        "key" => state.api_key(id).map(|k| {
            serde_json::json!({ "id": k.key_id, "user_id": k.user_id, "name": k.name, "roles": k.roles,
                "expires_at": k.expires_at, "revoked_at": k.revoked_at })
        }),
        "session" => state.session(id).map(|s| {
            serde_json::json!({ "id": s.session_id, "user_id": s.user_id, "expires_at": s.expires_at,
                "client_ip": s.client_ip })
        }),
        "role" => state
            .role(id)
            .map(|r| serde_json::json!({ "name": r.name, "permissions": r.permissions, "description": r.description })),
        // Revoking sessions in bulk: how many were live (ids only, no tokens).
        "user_sessions" => {
            let (mut count, mut ids) = (0, Vec::new());
            for s in state.sessions_of(id) {
                count += 1;
                if ids.len() < 100 {
                    ids.push(s.session_id);
                }
            }
            Some(serde_json::json!({ "user_id": id, "sessions": count, "first_session_ids": ids }))
        }
        "sessions" => Some(serde_json::json!({ "sessions": state.sessions().count() })),
        _ => None,
    };
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// What an admin command does, as an audit action and the resource it acts on.
fn subject(payload: &Payload) -> Option<(&'static str, &'static str, String)> {
    Some(match payload {
        Payload::CreateUser(c) => ("user.create", "user", c.user_id.clone()),
        Payload::SetUserStatus(c) => ("user.set_status", "user", c.user_id.clone()),
        Payload::SetPassword(c) => ("user.set_password", "user", c.user_id.clone()),
        Payload::UpdateUser(c) => ("user.update", "user", c.user_id.clone()),
        Payload::DeleteUser(c) => ("user.delete", "user", c.user_id.clone()),
        Payload::AssignRole(c) => ("role.assign", "user", c.user_id.clone()),
        Payload::UnassignRole(c) => ("role.unassign", "user", c.user_id.clone()),
        Payload::CreateApiKey(c) => ("key.create", "key", c.key_id.clone()),
        Payload::RevokeApiKey(c) => ("key.revoke", "key", c.key_id.clone()),
        Payload::RotateApiKey(c) => ("key.rotate", "key", c.old_key_id.clone()),
        Payload::RevokeSession(c) => ("session.revoke", "session", c.session_id.clone()),
        Payload::RevokeUserSessions(c) => ("session.revoke_user", "user_sessions", c.user_id.clone()),
        Payload::RevokeAllSessions(_) => ("session.revoke_all", "sessions", "*".into()),
        Payload::PutRole(c) if c.create => ("role.create", "role", c.name.clone()),
        Payload::PutRole(c) => ("role.update", "role", c.name.clone()),
        Payload::DeleteRole(c) => ("role.delete", "role", c.name.clone()),
        _ => return None,
    })
}

/// Proposes an admin change and audits it: actor, resource, and the
/// resource before and after (secrets removed), with the outcome.
pub async fn write(
    cluster: &Cluster,
    actor: &Actor,
    cmd: Command,
) -> Result<gatehouse_proto::events::CommandResult, crate::ApiError> {
    let Some((action, kind, id)) = cmd.payload.as_ref().and_then(subject) else {
        return cluster.propose_one(cmd).await;
    };
    let request_id = cmd.request_id.clone();
    let new_key = match &cmd.payload {
        Some(Payload::RotateApiKey(r)) => r.new_key.as_ref().map(|k| format!("new_key={}", k.key_id)),
        _ => None,
    };
    let before = snapshot(&cluster.view().read(), kind, &id);
    let result = cluster.propose_one(cmd).await;
    let after = snapshot(&cluster.view().read(), kind, &id);
    let outcome = match &result {
        Ok(_) => "ok",
        Err(crate::ApiError::PermissionDenied(_)) => "denied",
        Err(_) => "failed",
    };
    // A user's sessions are a resource of that user.
    let resource = if kind == "user_sessions" { format!("user:{id}") } else { format!("{kind}:{id}") };
    let mut e = event(action, outcome, actor, resource);
    e.request_id = request_id;
    e.before = before;
    e.after = after;
    e.detail = match &result {
        Err(err) => err.to_string(),
        Ok(_) => new_key.unwrap_or_default(),
    };
    cluster.audit(e);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_one_record_per_bucket_with_count_and_first_and_last_seen() {
        let r = Recorder::new(3);
        let m = crate::metrics::Metrics::new();
        // One client rotating through its /64, and one other address.
        for i in 0..500 {
            r.count(&m, "ratelimit.hit", "policy:login".into(), format!("2001:db8:1:2::{i:x}"), String::new());
        }
        r.count(&m, "ratelimit.hit", "policy:login".into(), "192.0.2.7".into(), String::new());
        r.count(&m, "rbac.denied", "rpc:UserService/Create".into(), "192.0.2.7".into(), "u1".into());
        r.count(&m, "rbac.denied", "rpc:UserService/Create".into(), "192.0.2.7".into(), "u2".into());
        assert!(r.take(&m, false).is_none(), "counted for aggregate_ms first");
        let Some(Err(batch)) = r.take(&m, true) else { panic!("a batch") };
        assert_eq!(batch.events.len(), 4, "{:?}", batch.events);
        let rotating = batch.events.iter().find(|e| e.client_ip == "2001:db8:1:2::").unwrap();
        assert!(rotating.detail.starts_with("count=500 first="), "{}", rotating.detail);
        assert!(rotating.detail.contains(" last="));
        assert_eq!(batch.events.iter().filter(|e| e.action == "rbac.denied").count(), 2, "one per caller");
    }

    #[test]
    fn an_event_over_the_batch_bound_is_clipped_to_fit() {
        let mut e = AuditEvent { before: "b".repeat(40_000), after: "é".repeat(20_000), ..Default::default() };
        clip(&mut e);
        assert!(prost::Message::encoded_len(&e) <= gatehouse_domain::audit::MAX_EVENT_BYTES);
        assert_eq!(e.action, "unknown");
        assert!(e.before.ends_with('…') && e.after.ends_with('…'));
        let batch = AppendAudit { events: vec![e], dropped: 0, batch: 1 };
        assert_eq!(gatehouse_domain::audit::check_batch(&batch), Ok(()));
        let mut small = AuditEvent { action: "a".into(), detail: "d".repeat(100), ..Default::default() };
        clip(&mut small);
        assert_eq!(small.detail.len(), 100, "events that fit are left alone");
    }
}
