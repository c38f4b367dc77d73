//! Prometheus metrics: what `GET /metrics` reports.
//!
//! Counters and histograms are recorded where things happen (HTTP guard,
//! verify, admin gRPC layer, proposals); Raft and freshness gauges are read
//! from openraft's metrics when scraped. Label values come from fixed sets
//! (routes as declared, RPC method names, decisions, status codes, node ids)
//! so series stay bounded: never a user id, key id or raw path.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use gatehouse_cluster::metrics::latency;
pub use gatehouse_cluster::metrics::OutcomeLabels;

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
pub struct PolicyLabels {
    /// A configured policy's name (a fixed set).
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// A TLS listener of this node (`https`).
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub listener: &'static str,
    /// `reloaded` or `refused` (the files did not load; the old pair stays).
    pub outcome: &'static str,
}

type Timings<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every series this node exports.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Timings<RouteLabels>,
    pub verify_decisions: Family<DecisionLabels, Counter>,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub grpc_duration: Timings<MethodLabels>,
    pub watch_streams: Gauge,
    /// Secrets at rest still sealed under an older key (a rotation under way).
    pub secrets_stale: Gauge,
    pub rate_limited: Family<PolicyLabels, Counter>,
    pub rate_limit_syncs: Family<OutcomeLabels, Counter>,
    /// The nodes a global limit is shared over, as of the last sync.
    pub rate_limit_shares: Gauge,
    pub audit_buffered: Gauge,
    pub audit_dropped: Counter,
    pub audit_sent: Counter,
    /// Strict-limit hits refused from the node's own view, never proposed.
    pub rate_refused_locally: Counter,
    /// Connections open on the HTTP front.
    pub http_connections: Gauge,
    /// Connections the HTTP front accepted (a proxy that keeps its
    /// connections alive makes this grow far slower than the requests).
    pub http_connections_accepted: Counter,
    /// Connections open on the reverse proxy's listener (`[proxy]`),
    /// WebSocket tunnels included.
    pub proxy_connections: Gauge,
    /// Connections the reverse proxy's listener accepted.
    pub proxy_connections_accepted: Counter,
    /// WebSocket tunnels open through the reverse proxy.
    pub proxy_tunnels: Gauge,
    /// Requests with `X-Forwarded-For` from a peer that is not a trusted proxy.
    pub untrusted_forwarded_for: Counter,
    /// Envoy rate-limit descriptors no policy names (not limited).
    pub envoy_unknown_descriptors: Counter,
    /// Audit batches the log took for retries of earlier ones, sent again renumbered.
    pub audit_renumbered: Counter,
    /// When each TLS listener's certificate stops being valid (Unix seconds).
    pub tls_expiry: Family<ListenerLabels, Gauge>,
    /// Certificate reloads that found new files, by outcome.
    pub tls_reloads: Family<ReloadLabels, Counter>,
    /// Open connections between nodes closed because the peer's
    /// certificate stopped passing (denied, expired, its CA gone).
    pub peer_connections_closed: Counter,
    /// Open connections between nodes whose peer's certificate failed the
    /// last check, left to the calls under way on them (closed after a grace).
    pub peer_connections_failing: Gauge,
    /// Cluster secret file reloads that found it changed, by outcome.
    pub secret_reloads: Family<OutcomeLabels, Counter>,
    /// Fronts files found changed, by outcome.
    pub fronts_reloads: Family<OutcomeLabels, Counter>,
    /// Envoy secret files found changed, by outcome.
    pub envoy_secret_reloads: Family<OutcomeLabels, Counter>,
    /// Mails (sign-in links) by outcome: `sent`, `failed`, `dropped`.
    pub mails: Family<OutcomeLabels, Counter>,
}

impl Metrics {
    /// The node's registry: these series and the replica's (the consensus
    /// layer's on a voter), which `replica_series` registers.
    pub fn new(replica_series: impl FnOnce(&mut Registry)) -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("gatehouse"),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            verify_decisions: Family::default(),
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(latency),
            watch_streams: Gauge::default(),
            secrets_stale: Gauge::default(),
            rate_limited: Family::default(),
            rate_limit_syncs: Family::default(),
            rate_limit_shares: Gauge::default(),
            audit_buffered: Gauge::default(),
            audit_dropped: Counter::default(),
            audit_sent: Counter::default(),
            rate_refused_locally: Counter::default(),
            http_connections: Gauge::default(),
            http_connections_accepted: Counter::default(),
            proxy_connections: Gauge::default(),
            proxy_connections_accepted: Counter::default(),
            proxy_tunnels: Gauge::default(),
            untrusted_forwarded_for: Counter::default(),
            envoy_unknown_descriptors: Counter::default(),
            audit_renumbered: Counter::default(),
            tls_expiry: Family::default(),
            tls_reloads: Family::default(),
            peer_connections_closed: Counter::default(),
            peer_connections_failing: Gauge::default(),
            secret_reloads: Family::default(),
            fronts_reloads: Family::default(),
            envoy_secret_reloads: Family::default(),
            mails: Family::default(),
        };
        let r = &mut m.registry;
        r.register("http_requests", "HTTP requests by route and status", m.http_requests.clone());
        r.register("http_request_duration_seconds", "HTTP request latency by route", m.http_duration.clone());
        r.register("verify_decisions", "/auth/verify decisions by outcome", m.verify_decisions.clone());
        r.register("grpc_requests", "admin and Raft gRPC calls by method and code", m.grpc_requests.clone());
        r.register("grpc_request_duration_seconds", "gRPC call latency by method", m.grpc_duration.clone());
        replica_series(r);
        r.register("watch_streams", "open admin Watch streams", m.watch_streams.clone());
        r.register("rate_limited", "requests refused with 429, by policy", m.rate_limited.clone());
        r.register("rate_limit_syncs", "global-limit delta syncs by outcome", m.rate_limit_syncs.clone());
        r.register(
            "rate_limit_shares",
            "nodes a global limit is shared over (members and listed fronts), as of the last sync",
            m.rate_limit_shares.clone(),
        );
        r.register("audit_buffered_events", "audit events waiting on this node", m.audit_buffered.clone());
        r.register(
            "secrets_stale",
            "secrets at rest still sealed under an older key-encryption key (0: a rotation is done)",
            m.secrets_stale.clone(),
        );
        r.register("audit_dropped_events", "audit events dropped because the buffer was full", m.audit_dropped.clone());
        r.register("audit_sent_events", "audit events this node committed to the log", m.audit_sent.clone());
        r.register(
            "audit_batches_renumbered",
            "new audit batches numbered below the node's last and sent again",
            m.audit_renumbered.clone(),
        );
        r.register("http_connections", "connections open on the HTTP front", m.http_connections.clone());
        r.register(
            "http_connections_accepted",
            "connections the HTTP front accepted",
            m.http_connections_accepted.clone(),
        );
        r.register(
            "proxy_connections",
            "connections open on the reverse proxy's listener, WebSocket tunnels included",
            m.proxy_connections.clone(),
        );
        r.register(
            "proxy_connections_accepted",
            "connections the reverse proxy's listener accepted",
            m.proxy_connections_accepted.clone(),
        );
        r.register("proxy_tunnels", "WebSocket tunnels open through the reverse proxy", m.proxy_tunnels.clone());
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "when the certificate a TLS listener serves stops being valid (Unix time)",
            m.tls_expiry.clone(),
        );
        r.register("tls_reloads", "certificate files found changed, by outcome", m.tls_reloads.clone());
        r.register(
            "tls_peer_connections_closed",
            "open connections between nodes closed because the peer's certificate stopped passing",
            m.peer_connections_closed.clone(),
        );
        r.register(
            "tls_peer_connections_failing",
            "open connections between nodes whose peer's certificate failed the last check (closed after a grace)",
            m.peer_connections_failing.clone(),
        );
        r.register(
            "cluster_secret_reloads",
            "cluster secret files found changed, by outcome",
            m.secret_reloads.clone(),
        );
        r.register("fronts_reloads", "fronts files found changed, by outcome", m.fronts_reloads.clone());
        r.register(
            "envoy_secret_reloads",
            "Envoy secret files found changed, by outcome",
            m.envoy_secret_reloads.clone(),
        );
        r.register(
            "envoy_unknown_descriptors",
            "Envoy rate-limit descriptors no policy names (not limited): a key drifting from the configuration",
            m.envoy_unknown_descriptors.clone(),
        );
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
        r.register(
            "mails",
            "mails by outcome: sent, failed (refused or undeliverable after retries), dropped (queue full)",
            m.mails.clone(),
        );
        let spans = gatehouse_cluster::trace::span_queue();
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
    pub(crate) fn observe_grpc_label(&self, method: String, code: tonic::Code, took: Duration) {
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
        // Envoy's, on `ext_authz_addr`.
        "envoy.service.auth.v3.Authorization/Check".to_string(),
        "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit".to_string(),
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
pub(crate) fn bounded_method(path: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_stay_bounded() {
        assert_eq!(bounded_method("/gatehouse.admin.v1.UserService/Get"), "UserService/Get");
        assert_eq!(bounded_method("/grpc.health.v1.Health/Check"), "Health/Check");
        assert_eq!(bounded_method("/gatehouse.raft.v1.RaftService/AppendEntries"), "RaftService/AppendEntries");
        assert_eq!(bounded_method("/gatehouse.control.v1.ControlService/Propose"), "ControlService/Propose");
        assert_eq!(bounded_method("/gatehouse.front.v1.FollowService/Follow"), "FollowService/Follow");
        assert_eq!(bounded_method("/envoy.service.auth.v3.Authorization/Check"), "Authorization/Check");
        // Names under our own packages that no service has are not methods.
        for hostile in [
            "/evil.Service/x",
            "/gatehouse.admin.v1.UserService/Get/extra",
            "/gatehouse.admin.v1.X/<script>",
            "/gatehouse.raft.v1.RaftService/Invented",
            "/gatehouse.raft.v1.RaftService/Propose",
            "/gatehouse.admin.v1.UserService/get",
            "",
        ] {
            assert_eq!(bounded_method(hostile), "other", "{hostile}");
        }
    }

    #[test]
    fn invented_methods_share_one_series() {
        let m = Metrics::new(|_| {});
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
        let m = Metrics::new(|_| {});
        m.observe_http("/auth/verify", 200, Duration::from_millis(1));
        m.verify_decision("allow");
        let text = m.encode();
        assert!(text.contains("gatehouse_http_requests_total{route=\"/auth/verify\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("gatehouse_verify_decisions_total{decision=\"allow\"} 1"), "{text}");
    }
}
