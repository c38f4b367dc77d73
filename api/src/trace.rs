//! W3C trace context across nodes.
//!
//! An incoming `traceparent` (HTTP header or gRPC metadata) becomes the
//! parent of the request's span; calls to other nodes carry the current
//! context on; a command stamps its proposer's `traceparent`, so its apply on
//! every node links to the request that caused it.
//!
//! All of it is off unless the node exports traces ([`set_exporting`]): the
//! verification path then creates no extra span at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Turns request spans and context propagation on (telemetry start-up).
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
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
