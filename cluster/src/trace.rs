//! W3C trace context across nodes.
//!
//! An incoming `traceparent` (HTTP header or gRPC metadata) becomes the
//! parent of the request's span; calls to other nodes carry the current
//! context on; a command stamps its proposer's `traceparent`, so its apply on
//! every node links to the request that caused it.
//!
//! All of it is off unless the node exports traces ([`set_exporting`]): the
//! verification path then creates no extra span at all.
//!
//! Finished spans wait for the exporter in a bounded queue; [`span_queue`]
//! counts what it admits, hands over and drops, for `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::LazyLock;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::Context;
use prometheus_client::metrics::counter::Counter;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Turns request spans and context propagation on (telemetry start-up).
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The spans between the tracer and the OTLP exporter, for the whole process
/// (the exporter is per process, like the tracer).
#[derive(Debug, Default)]
pub struct SpanQueue {
    waiting: AtomicUsize,
    /// Spans refused because `capacity` were already waiting.
    pub dropped: Counter,
    /// Spans handed to the exporter.
    pub sent: Counter,
}

impl SpanQueue {
    /// Takes a finished span in if fewer than `capacity` wait; otherwise
    /// counts it as dropped. Never blocks.
    pub fn admit(&self, capacity: usize) -> bool {
        let admitted =
            self.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| (w < capacity).then_some(w + 1)).is_ok();
        if !admitted {
            self.dropped.inc();
        }
        admitted
    }

    /// `n` admitted spans left the queue for the exporter.
    pub fn handed_over(&self, n: usize) {
        let _ = self.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| Some(w.saturating_sub(n)));
        self.sent.inc_by(n as u64);
    }

    /// Spans admitted and not yet handed over.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// This process's span queue accounting.
pub fn span_queue() -> &'static SpanQueue {
    static QUEUE: LazyLock<SpanQueue> = LazyLock::new(SpanQueue::default);
    &QUEUE
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(value))
        {
            self.0.insert(k, v);
        }
    }
}

/// The remote parent a request names in its headers (empty if none or malformed).
pub fn parent_from(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)))
}

/// Continues `span` from the request's `traceparent`, if it sent one.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let _ = span.set_parent(parent_from(headers));
    }
}

/// Adds the current span's context to an outgoing call to another node.
pub fn inject_current(meta: &mut tonic::metadata::MetadataMap) {
    if exporting() {
        let cx = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Metadata(meta)));
    }
}

/// The current span's `traceparent`, for a command's envelope ("" when not
/// exporting or not in a sampled trace).
pub fn current_traceparent() -> String {
    if !exporting() {
        return String::new();
    }
    let cx = tracing::Span::current().context();
    let mut map = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    map.remove("traceparent").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_queue_drops_beyond_capacity_and_frees_what_it_hands_over() {
        let q = SpanQueue::default();
        assert!(q.admit(2) && q.admit(2));
        assert!(!q.admit(2), "a third span does not fit");
        assert_eq!((q.waiting(), q.dropped.get()), (2, 1));
        q.handed_over(2);
        assert_eq!((q.waiting(), q.sent.get()), (0, 2));
        assert!(q.admit(2), "handed-over spans free their places");
    }
}
