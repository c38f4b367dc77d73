//! The node's audit recorder: a bounded buffer of events waiting for the
//! log, frequent refusals counted per bucket and flushed as one event with a
//! count, and events clipped to what a batch takes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use gatehouse_cluster::clock::now_ms;
use gatehouse_domain::audit::MAX_EVENTS;
use gatehouse_domain::bounds::{take_within, BATCH_BYTES};
use gatehouse_proto::events::{AppendAudit, AuditEvent, Command};

use super::AuditConfig;

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

/// The node's audit buffer, held by its [`crate::Node`]: recording never waits
/// and never fails.
pub struct Recorder {
    node_id: u64,
    capacity: AtomicUsize,
    /// `AuditConfig::aggregate_ms`.
    aggregate_ms: std::sync::atomic::AtomicU64,
    buffer: Mutex<Buffer>,
    wake: std::sync::Arc<tokio::sync::Notify>,
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

    /// Takes the node's `[audit]` settings.
    pub(super) fn configure(&self, config: &AuditConfig) {
        self.capacity.store(config.buffer_events, Ordering::Relaxed);
        self.aggregate_ms.store(config.aggregate_ms, Ordering::Relaxed);
    }

    /// Notified when the buffer should be flushed before its period.
    pub(super) fn wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// A batch of `n` events the log refused for good: counted as dropped,
    /// so the next batch says so.
    pub(super) fn dropped(&self, n: u64) {
        self.buffer().dropped += n;
    }

    /// A batch that did not commit, sent again as it is by the next flush.
    pub(super) fn retry_later(&self, cmd: Command) {
        self.buffer().retry = Some(cmd);
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
        let client = client_ip.parse().map_or(client_ip, |ip| gatehouse_domain::limits::bucket_ip(ip).to_string());
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
    pub(super) fn take(&self, metrics: &crate::metrics::Metrics, all: bool) -> Option<Result<Command, AppendAudit>> {
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
    pub(super) fn next_batch(&self, applied: u64) -> u64 {
        let mut b = self.buffer();
        let clock = now_ms().saturating_mul(1000);
        b.last_batch = clock.max(b.last_batch + 1).max(applied + 1);
        b.last_batch
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
    let tp = gatehouse_cluster::trace::current_traceparent();
    tp.split('-').nth(1).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_one_record_per_bucket_with_count_and_first_and_last_seen() {
        let r = Recorder::new(3);
        let m = crate::metrics::Metrics::new(|_| {});
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
