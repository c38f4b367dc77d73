//! The node's gRPC listeners, as etcd splits client and peer ports:
//!
//! ```text
//!   grpc_addr (clients) ─► admin services (API key + RBAC), health, reflection
//!                          + Raft and control (cluster secret) when there is no peer listener
//!   peer_addr (peers)   ─► Raft and control (cluster secret), and the admin
//!                          ClusterService for the membership calls a follower
//!                          sends on to the leader (the caller's key, checked there)
//! ```
//!
//! With a peer listener, a firewall or a NetworkPolicy can open `peer_addr`
//! to the voters only. Both listeners share the HTTP/2 limits below and the
//! metrics layer; both run on the Raft runtime, so replication never waits
//! behind the HTTP front.

use std::time::Duration;

use gatehouse_api::admin::failures::FailureGate;
use gatehouse_api::admin::layer::GrpcMetricsLayer;
use gatehouse_cluster::peers::{PEER_CONNECTION_WINDOW, PEER_STREAM_WINDOW};
use gatehouse_cluster::periodic::Shutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::Router;
use tonic::transport::Server;
use tower::layer::util::{Identity, Stack};

/// Streams one gRPC connection may hold open: Raft replication, forwarded
/// writes, read-index probes and admin watches between a pair of nodes fit
/// many times over.
pub const GRPC_MAX_STREAMS: u32 = 256;
/// Largest header list of a gRPC request (metadata: the secret, a key, a
/// trace context, an idempotency key).
pub const GRPC_MAX_HEADER_LIST: u32 = 16 * 1024;

pub type Layered = Stack<GrpcMetricsLayer, Identity>;

/// A server with every listener's limits and the metrics layer.
pub fn builder(api: &gatehouse_api::Node, auth_failures: Option<FailureGate>) -> Server<Layered> {
    // The port is reachable before any secret or key is checked: HTTP/2
    // limits bound what one connection can hold open.
    Server::builder()
        .max_concurrent_streams(GRPC_MAX_STREAMS)
        .http2_max_header_list_size(GRPC_MAX_HEADER_LIST)
        // Rapid reset (CVE-2023-44487): streams a client opens and cancels
        // before they are served count, and too many end the connection;
        // so do too many streams we had to reset.
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(256))
        // Room for a large Raft entry in flight on a link with a long round
        // trip (h2's default 64 KiB window would take 64 round trips for a
        // 4 MiB entry).
        .initial_stream_window_size(Some(PEER_STREAM_WINDOW))
        .initial_connection_window_size(Some(PEER_CONNECTION_WINDOW))
        // A peer that stops answering pings is dropped.
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(GrpcMetricsLayer::new(api.clone(), auth_failures))
}

/// Serves `router` on `listener`, on the Raft runtime `rt`, until `stop`.
pub fn serve(
    rt: &tokio::runtime::Handle,
    listener: TcpListener,
    router: Router<Layered>,
    mut stop: Shutdown,
    what: &'static str,
) -> anyhow::Result<JoinHandle<()>> {
    // Registered with the Raft runtime's reactor, like the connections it accepts.
    let listener = {
        let _rt = rt.enter();
        TcpListener::from_std(listener.into_std()?)?
    };
    Ok(rt.spawn(async move {
        // Small request/response RPCs: without TCP_NODELAY, Nagle and
        // delayed ACKs add ~40 ms stalls to replication and forwarding.
        let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
            if let Ok(s) = &s {
                let _ = s.set_nodelay(true);
            }
            s
        });
        let shutdown = async move { stop.wait().await };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::error!(error = %e, listener = what, "gRPC server failed");
        }
    }))
}
