//! Logging and tracing.
//!
//! - Logs: human-readable by default, JSON lines for production
//!   (`log_format = "json"` / `GATEHOUSE_LOG_FORMAT=json`); level by `RUST_LOG`.
//! - Traces: exported over OTLP/gRPC when an endpoint is configured
//!   (`[telemetry] otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`). Spans go
//!   through a bounded batch queue on its own thread: a slow or absent
//!   collector never blocks a request; what does not fit is dropped.
//! - W3C trace context is the propagator either way (`gatehouse_api::trace`).

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
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
    let exporter = exporter.build()?;
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(cfg.service_name.clone());
    }
    let resource = resource.with_attribute(KeyValue::new("service.instance.id", node_id.to_string())).build();
    let mut builder = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource);
    if env("OTEL_TRACES_SAMPLER").is_none() {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))));
    }
    Ok(Some(builder.build()))
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
    gatehouse_api::trace::set_exporting(exporting);
    if exporting {
        // Host and port only: an endpoint URL may carry credentials.
        let endpoint = endpoint(cfg).and_then(|(e, _)| e.parse::<tonic::codegen::http::Uri>().ok());
        let collector =
            endpoint.as_ref().and_then(|u| u.host().map(|h| format!("{h}:{}", u.port_u16().unwrap_or(4317))));
        tracing::info!(collector = collector.as_deref().unwrap_or("?"), "exporting traces over OTLP/gRPC");
    }
    Telemetry { provider }
}
