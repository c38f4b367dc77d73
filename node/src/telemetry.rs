//! Logging and tracing.
//!
//! - Logs: human-readable by default, JSON lines for production
//!   (`log_format = "json"` / `GATEHOUSE_LOG_FORMAT=json`); level by `RUST_LOG`.
//! - Traces: exported over OTLP/gRPC when an endpoint is configured
//!   (`[telemetry] otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`). Spans go
//!   through a bounded batch queue on its own thread: a slow or absent
//!   collector never blocks a request; what does not fit is dropped and
//!   counted (`gatehouse_trace_spans_dropped_total`). The SDK's batch
//!   processor drops silently, so [`Gated`] admits spans in front of it and
//!   [`Counted`] frees their places as the exporter takes them: the SDK's
//!   own queue never fills, and every drop is ours and counted.
//! - W3C trace context is the propagator either way (`gatehouse_cluster::trace`).

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
    OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT,
};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, TelemetryConfig};

/// Flushes exported spans when the node stops.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends what is still queued (bounded by the exporter's timeout).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "flushing traces failed");
            }
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"))
}

/// The collector to export to: the standard variables, then the config.
fn endpoint(cfg: &TelemetryConfig) -> Option<(String, bool)> {
    if let Some(e) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        return Some((e, true));
    }
    cfg.otlp_endpoint.clone().filter(|e| !e.is_empty()).map(|e| (e, false))
}

fn provider(cfg: &TelemetryConfig, node_id: u64) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some((endpoint, from_env)) = endpoint(cfg) else { return Ok(None) };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if !from_env {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = Counted(exporter.build()?);
    let capacity = env(OTEL_BSP_MAX_QUEUE_SIZE).and_then(|v| v.parse().ok()).unwrap_or(OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT);
    let batch = BatchConfigBuilder::default().with_max_queue_size(capacity).build();
    let processor = Gated { inner: BatchSpanProcessor::builder(exporter).with_batch_config(batch).build(), capacity };
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(cfg.service_name.clone());
    }
    let resource = resource.with_attribute(KeyValue::new("service.instance.id", node_id.to_string())).build();
    let mut builder = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource);
    if env("OTEL_TRACES_SAMPLER").is_none() {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))));
    }
    Ok(Some(builder.build()))
}

/// The SDK batch processor behind our admission count: at most `capacity`
/// spans wait, so its queue (as large) never overflows unseen.
#[derive(Debug)]
struct Gated {
    inner: BatchSpanProcessor,
    capacity: usize,
}

impl SpanProcessor for Gated {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if gatehouse_cluster::trace::span_queue().admit(self.capacity) {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, freeing queue places as it takes spans.
#[derive(Debug)]
struct Counted<E>(E);

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        gatehouse_cluster::trace::span_queue().handed_over(batch.len());
        self.0.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Installs logging and, if configured, trace export (once per process;
/// later calls only return a handle that exports nothing).
pub fn init(format: LogFormat, cfg: &TelemetryConfig, node_id: u64) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Colours only on a terminal: piped logs stay plain text for tools.
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![match format {
        LogFormat::Human => fmt.with_filter(filter()).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter()).boxed(),
    }];
    let (provider, failure) = match provider(cfg, node_id) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    if let Some(p) = &provider {
        let tracer = p.tracer("gatehouse");
        layers.push(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(filter()).boxed());
    }
    if tracing_subscriber::registry().with(layers).try_init().is_err() {
        return Telemetry { provider: None };
    }
    if let Some(e) = failure {
        tracing::error!(error = %e, "trace export is off: the OTLP exporter could not be built");
    }
    let exporting = provider.is_some();
    gatehouse_cluster::trace::set_exporting(exporting);
    if exporting {
        // Host and port only: an endpoint URL may carry credentials.
        let endpoint = endpoint(cfg).and_then(|(e, _)| e.parse::<tonic::codegen::http::Uri>().ok());
        let collector =
            endpoint.as_ref().and_then(|u| u.host().map(|h| format!("{h}:{}", u.port_u16().unwrap_or(4317))));
        tracing::info!(collector = collector.as_deref().unwrap_or("?"), "exporting traces over OTLP/gRPC");
    }
    Telemetry { provider }
}
