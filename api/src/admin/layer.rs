//! The layer every gRPC call passes (admin and Raft): it sets up the call's
//! context ([`super::call`]), counts and times the call, audits RBAC
//! refusals, and names the leader on `UNAVAILABLE`.

/// A tower layer for the gRPC server that counts every call by method and
/// status code and times it (to the response head, for streams).
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    node: crate::Node,
    auth_failures: Option<std::sync::Arc<super::failures::FailureGate>>,
}

impl GrpcMetricsLayer {
    /// The layer; `auth_failures` counts failed admin authentications per
    /// address (see [`crate::admin::failures`]).
    pub fn new(node: crate::Node, auth_failures: Option<super::failures::FailureGate>) -> Self {
        GrpcMetricsLayer { node, auth_failures: auth_failures.map(std::sync::Arc::new) }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner, node: self.node.clone(), auth_failures: self.auth_failures.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    node: crate::Node,
    auth_failures: Option<std::sync::Arc<super::failures::FailureGate>>,
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
        let method = crate::metrics::bounded_method(req.uri().path());
        let started = std::time::Instant::now();
        let span = if gatehouse_cluster::trace::exporting() {
            let span = tracing::info_span!(
                "grpc.request",
                otel.kind = "server",
                rpc.method = %method,
                rpc.grpc.status_code = tracing::field::Empty,
                node_id = self.node.id(),
            );
            gatehouse_cluster::trace::continue_trace(&span, req.headers());
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
        let mut call = super::call::GrpcCall::new(peer, idempotency_key);
        call.auth_failures = self.auth_failures.clone();
        call.method = req.uri().path().to_string();
        let ctx = std::sync::Arc::new(call);
        let call = super::call::GRPC_CALL.sync_scope(ctx.clone(), || span.in_scope(|| self.inner.call(req)));
        let call = super::call::GRPC_CALL.scope(ctx.clone(), call);
        let node = self.node.clone();
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
                    name_the_leader(&node, r.headers_mut());
                }
                if code == tonic::Code::PermissionDenied {
                    // RBAC refusals are audited wherever in the handler they
                    // happened, aggregated per caller, method and address.
                    let who = ctx.caller().map(|a| a.user_id).unwrap_or_default();
                    node.audit_count_by("rbac.denied", format!("rpc:{method}"), ctx.peer.clone(), who);
                }
                node.metrics().observe_grpc_label(method, code, started.elapsed());
                resp
            }
            .instrument(span),
        )
    }
}

/// Every `UNAVAILABLE` answer names the leader, when this node knows one
/// that is not itself, so a client can go there (unless the handler already
/// named one, for example the leader a forwarded write last heard of).
fn name_the_leader(node: &crate::Node, headers: &mut http::HeaderMap) {
    if headers.contains_key(gatehouse_cluster::error::LEADER_METADATA) {
        return;
    }
    if let Some((id, leader)) = node.leader() {
        if id != node.id() {
            if let Ok(v) = http::HeaderValue::from_str(leader.client_addr()) {
                headers.insert(gatehouse_cluster::error::LEADER_METADATA, v);
            }
        }
    }
}
