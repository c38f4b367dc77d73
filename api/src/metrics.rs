//! Prometheus metrics: what `GET /metrics` reports.
//!
//! Counters and histograms are recorded where things happen (HTTP guard,
//! verify, admin gRPC layer, proposals); Raft and freshness gauges are read
//! from openraft's metrics when scraped. Label values come from fixed sets
//! (routes as declared, RPC method names, decisions, status codes, node ids)
//! so series stay bounded: never a user id, key id or raw path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: String,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// A configured policy's name (a fixed set).
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

type Timings<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 100 µs to ~13 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every series this node exports.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Timings<RouteLabels>,
    pub verify_decisions: Family<DecisionLabels, Counter>,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub grpc_duration: Timings<MethodLabels>,
    pub proposals: Family<OutcomeLabels, Counter>,
    pub proposal_duration: Histogram,
    pub raft_term: Gauge,
    pub raft_leader: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_snapshot_index: Gauge,
    pub raft_replication_lag: Family<PeerLabels, Gauge>,
    pub raft_leader_changes: Counter,
    pub raft_elections: Counter,
    pub raft_paced_campaigns: Counter,
    pub snapshots_built: Counter,
    pub snapshots_installed: Counter,
    pub snapshot_build_seconds: Counter<f64, AtomicU64>,
    pub fresh: Gauge,
    pub staleness_seconds: Gauge<f64, AtomicU64>,
    pub watch_streams: Gauge,
    pub rate_limited: Family<PolicyLabels, Counter>,
    pub rate_limit_syncs: Family<OutcomeLabels, Counter>,
    pub audit_buffered: Gauge,
    pub audit_dropped: Counter,
    pub audit_sent: Counter,
    /// Strict-limit hits refused from the node's own view, never proposed.
    pub rate_refused_locally: Counter,
    /// Connections open on the HTTP front.
    pub http_connections: Gauge,
    /// Requests with `X-Forwarded-For` from a peer that is not a trusted proxy.
    pub untrusted_forwarded_for: Counter,
    /// Audit batches the log took for retries of earlier ones, sent again renumbered.
    pub audit_renumbered: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("gatehouse"),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            verify_decisions: Family::default(),
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(latency),
            proposals: Family::default(),
            proposal_duration: latency(),
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_snapshot_index: Gauge::default(),
            raft_replication_lag: Family::default(),
            raft_leader_changes: Counter::default(),
            raft_elections: Counter::default(),
            raft_paced_campaigns: Counter::default(),
            snapshots_built: Counter::default(),
            snapshots_installed: Counter::default(),
            snapshot_build_seconds: Counter::default(),
            fresh: Gauge::default(),
            staleness_seconds: Gauge::default(),
            watch_streams: Gauge::default(),
            rate_limited: Family::default(),
            rate_limit_syncs: Family::default(),
            audit_buffered: Gauge::default(),
            audit_dropped: Counter::default(),
            audit_sent: Counter::default(),
            rate_refused_locally: Counter::default(),
            http_connections: Gauge::default(),
            untrusted_forwarded_for: Counter::default(),
            audit_renumbered: Counter::default(),
        };
        let r = &mut m.registry;
        r.register("http_requests", "HTTP requests by route and status", m.http_requests.clone());
        r.register("http_request_duration_seconds", "HTTP request latency by route", m.http_duration.clone());
        r.register("verify_decisions", "/auth/verify decisions by outcome", m.verify_decisions.clone());
        r.register("grpc_requests", "admin and Raft gRPC calls by method and code", m.grpc_requests.clone());
        r.register("grpc_request_duration_seconds", "gRPC call latency by method", m.grpc_duration.clone());
        r.register("proposals", "writes proposed through this node by outcome", m.proposals.clone());
        r.register("proposal_duration_seconds", "propose to applied here", m.proposal_duration.clone());
        r.register("raft_term", "current Raft term", m.raft_term.clone());
        r.register("raft_leader", "id of the leader this node knows (0 = none)", m.raft_leader.clone());
        r.register("raft_is_leader", "1 if this node leads", m.raft_is_leader.clone());
        r.register("raft_commit_index", "highest index known committed", m.raft_commit_index.clone());
        r.register("raft_applied_index", "highest index applied here", m.raft_applied_index.clone());
        r.register("raft_last_log_index", "last index in this node's log", m.raft_last_log_index.clone());
        r.register("raft_snapshot_index", "index of the latest snapshot", m.raft_snapshot_index.clone());
        r.register(
            "raft_replication_lag_entries",
            "entries a follower is behind the leader (leader only)",
            m.raft_replication_lag.clone(),
        );
        r.register("raft_leader_changes", "times this node saw the leader change", m.raft_leader_changes.clone());
        r.register("raft_elections", "terms this node saw begin", m.raft_elections.clone());
        r.register(
            "raft_paced_campaigns",
            "campaigns this node started because its leader fell silent past its lease",
            m.raft_paced_campaigns.clone(),
        );
        r.register("snapshots_built", "snapshots this node built", m.snapshots_built.clone());
        r.register("snapshots_installed", "snapshots this node installed from a leader", m.snapshots_installed.clone());
        r.register("snapshot_build_seconds", "time spent building snapshots", m.snapshot_build_seconds.clone());
        r.register("fresh", "1 while this node may answer (within max_staleness)", m.fresh.clone());
        r.register(
            "staleness_seconds",
            "time since this node last proved it was up to date",
            m.staleness_seconds.clone(),
        );
        r.register("watch_streams", "open admin Watch streams", m.watch_streams.clone());
        r.register("rate_limited", "requests refused with 429, by policy", m.rate_limited.clone());
        r.register("rate_limit_syncs", "global-limit delta syncs by outcome", m.rate_limit_syncs.clone());
        r.register("audit_buffered_events", "audit events waiting on this node", m.audit_buffered.clone());
        r.register("audit_dropped_events", "audit events dropped because the buffer was full", m.audit_dropped.clone());
        r.register("audit_sent_events", "audit events this node committed to the log", m.audit_sent.clone());
        r.register(
            "audit_batches_renumbered",
            "new audit batches numbered below the node's last and sent again",
            m.audit_renumbered.clone(),
        );
        r.register("http_connections", "connections open on the HTTP front", m.http_connections.clone());
        r.register(
            "untrusted_forwarded_for",
            "requests carrying X-Forwarded-For from a peer that is not a trusted proxy (the header is ignored)",
            m.untrusted_forwarded_for.clone(),
        );
        r.register(
            "rate_limit_refused_locally",
            "strict rate-limit hits refused from this node's view without a log write",
            m.rate_refused_locally.clone(),
        );
        let spans = crate::trace::span_queue();
        r.register("trace_spans_dropped", "finished spans dropped: the export queue was full", spans.dropped.clone());
        r.register("trace_spans_sent", "finished spans handed to the OTLP exporter", spans.sent.clone());
        m
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn observe_http(&self, route: &'static str, status: u16, took: Duration) {
        self.http_requests.get_or_create(&HttpLabels { route, status }).inc();
        self.http_duration.get_or_create(&RouteLabels { route }).observe(took.as_secs_f64());
    }

    /// Records a call to `method`, a label made by [`bounded_method`].
    fn observe_grpc_label(&self, method: String, code: tonic::Code, took: Duration) {
        // A path no service answers is a client's invention: one label for all.
        let method = if code == tonic::Code::Unimplemented { "other".to_string() } else { method };
        self.grpc_requests.get_or_create(&GrpcLabels { method: method.clone(), code: code_name(code) }).inc();
        self.grpc_duration.get_or_create(&MethodLabels { method }).observe(took.as_secs_f64());
    }

    pub fn verify_decision(&self, decision: &'static str) {
        self.verify_decisions.get_or_create(&DecisionLabels { decision }).inc();
    }
}

/// Every gRPC method this node serves, path (`pkg.Service/Method`) →
/// label (`Service/Method`): ours from the compiled descriptors, and the
/// standard health and reflection services.
static METHODS: std::sync::LazyLock<std::collections::HashMap<String, String>> = std::sync::LazyLock::new(|| {
    use prost::Message;
    let mut paths = vec![
        "grpc.health.v1.Health/Check".to_string(),
        "grpc.health.v1.Health/Watch".to_string(),
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_string(),
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_string(),
    ];
    let set = prost_types::FileDescriptorSet::decode(gatehouse_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set compiled into gatehouse-proto");
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!("{}.{}/{}", file.package(), service.name(), method.name()));
            }
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let label = p.rsplit_once('.').map_or(p.as_str(), |(_, m)| m).to_string();
            (p, label)
        })
        .collect()
});

/// A gRPC path as a label: `Service/Method` for a method this node serves,
/// `other` for anything else (a client can send any path, and before the
/// secret or key check, so invented names must not become series).
fn bounded_method(path: &str) -> String {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    METHODS.get(trimmed).cloned().unwrap_or_else(|| "other".into())
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// Turns a running total kept elsewhere (storage's snapshot counters) into
/// counter increments: each scrape adds what grew since the last one.
#[derive(Debug, Default)]
pub struct Seen(AtomicU64);

impl Seen {
    /// Stores `now`; returns by how much it grew since the last call.
    pub fn advance(&self, now: u64) -> u64 {
        let before = self.0.swap(now, Ordering::Relaxed);
        now.saturating_sub(before)
    }
}

/// A tower layer for the gRPC server that counts every call by method and
/// status code and times it (to the response head, for streams).
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    cluster: crate::Cluster,
    auth_failures: Option<std::sync::Arc<crate::admin::failures::FailureGate>>,
}

impl GrpcMetricsLayer {
    /// The layer; `auth_failures` counts failed admin authentications per
    /// address (see [`crate::admin::failures`]).
    pub fn new(cluster: crate::Cluster, auth_failures: Option<crate::admin::failures::FailureGate>) -> Self {
        GrpcMetricsLayer { cluster, auth_failures: auth_failures.map(std::sync::Arc::new) }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner, cluster: self.cluster.clone(), auth_failures: self.auth_failures.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    cluster: crate::Cluster,
    auth_failures: Option<std::sync::Arc<crate::admin::failures::FailureGate>>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let method = bounded_method(req.uri().path());
        let started = std::time::Instant::now();
        let span = if crate::trace::exporting() {
            let span = tracing::info_span!(
                "grpc.request",
                otel.kind = "server",
                rpc.method = %method,
                rpc.grpc.status_code = tracing::field::Empty,
                node_id = self.cluster.id(),
            );
            crate::trace::continue_trace(&span, req.headers());
            span
        } else {
            tracing::Span::none()
        };
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let idempotency_key =
            req.headers().get("idempotency-key").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let mut call = crate::audit::GrpcCall::new(peer, idempotency_key);
        call.auth_failures = self.auth_failures.clone();
        call.method = req.uri().path().to_string();
        let ctx = std::sync::Arc::new(call);
        let call = crate::audit::GRPC_CALL.sync_scope(ctx.clone(), || span.in_scope(|| self.inner.call(req)));
        let call = crate::audit::GRPC_CALL.scope(ctx.clone(), call);
        let cluster = self.cluster.clone();
        let record = span.clone();
        Box::pin(
            async move {
                let mut resp = call.await;
                // Errors are sent "trailers-only", so their status is in the head;
                // a head without one is a call that succeeded (or a stream that started).
                let code = match &resp {
                    Ok(r) => r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(tonic::Code::Ok, tonic::Code::from),
                    Err(_) => tonic::Code::Unknown,
                };
                record.record("rpc.grpc.status_code", code as i32);
                if let (tonic::Code::Unavailable, Ok(r)) = (code, &mut resp) {
                    name_the_leader(&cluster, r.headers_mut());
                }
                if code == tonic::Code::PermissionDenied {
                    // RBAC refusals are audited wherever in the handler they
                    // happened, aggregated per caller, method and address.
                    let who = ctx.caller().map(|a| a.user_id).unwrap_or_default();
                    cluster.audit_count_by("rbac.denied", format!("rpc:{method}"), ctx.peer.clone(), who);
                }
                cluster.metrics().observe_grpc_label(method, code, started.elapsed());
                resp
            }
            .instrument(span),
        )
    }
}

/// Every `UNAVAILABLE` answer names the leader, when this node knows one
/// that is not itself, so a client can go there (unless the handler already
/// named one, for example the leader a forwarded write last heard of).
fn name_the_leader(cluster: &crate::Cluster, headers: &mut http::HeaderMap) {
    if headers.contains_key(crate::error::LEADER_METADATA) {
        return;
    }
    if let Some((id, addr)) = cluster.leader() {
        if id != cluster.id() {
            if let Ok(v) = http::HeaderValue::from_str(&addr) {
                headers.insert(crate::error::LEADER_METADATA, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_stay_bounded() {
        assert_eq!(bounded_method("/gatehouse.admin.v1.UserService/Get"), "UserService/Get");
        assert_eq!(bounded_method("/grpc.health.v1.Health/Check"), "Health/Check");
        assert_eq!(bounded_method("/gatehouse.raft.v1.RaftService/AppendEntries"), "RaftService/AppendEntries");
        // Names under our own packages that no service has are not methods.
        for hostile in [
            "/evil.Service/x",
            "/gatehouse.admin.v1.UserService/Get/extra",
            "/gatehouse.admin.v1.X/<script>",
            "/gatehouse.raft.v1.RaftService/Invented",
            "/gatehouse.admin.v1.UserService/get",
            "",
        ] {
            assert_eq!(bounded_method(hostile), "other", "{hostile}");
        }
    }

    #[test]
    fn invented_methods_share_one_series() {
        let m = Metrics::new();
        for i in 0..50 {
            let made_up = bounded_method(&format!("/gatehouse.raft.v1.R4nd0m{i}/X"));
            m.observe_grpc_label(made_up, tonic::Code::Unimplemented, Duration::from_millis(1));
        }
        let text = m.encode();
        assert_eq!(text.matches("gatehouse_grpc_requests_total{").count(), 1, "{text}");
        assert!(text.contains("method=\"other\""), "{text}");
    }

    #[test]
    fn encodes_registered_series() {
        let m = Metrics::new();
        m.observe_http("/auth/verify", 200, Duration::from_millis(1));
        m.verify_decision("allow");
        let text = m.encode();
        assert!(text.contains("gatehouse_http_requests_total{route=\"/auth/verify\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("gatehouse_verify_decisions_total{decision=\"allow\"} 1"), "{text}");
    }
}
