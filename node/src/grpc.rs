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

use std::sync::Arc;
use std::time::Duration;

use gatehouse_api::admin::failures::FailureGate;
use gatehouse_api::admin::layer::GrpcMetricsLayer;
use gatehouse_cluster::live::{Guarded, Live};
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

/// How long a peer has to finish its TLS handshake (a node dialling gives
/// up after 1.5 s: a slower handshake serves nobody).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// TLS handshakes under way at once on one listener; more connections wait
/// in the kernel's backlog.
const MAX_HANDSHAKES: usize = 128;
/// Handshakes under way at once from one address: one host cannot take the
/// slots its peers need.
const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;

/// Handshakes under way per source address; a guard gives its place back.
#[derive(Clone, Default)]
struct PerAddress(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

struct Place(PerAddress, std::net::IpAddr);

impl PerAddress {
    fn take(&self, ip: std::net::IpAddr) -> Option<Place> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Place(self.clone(), ip))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut map = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// TLS on a gRPC listener: its configuration, and on the peer listener
/// the open connections its peers' certificates are rechecked in.
pub struct ListenerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub live: Option<Live>,
}

/// Serves `router` on `listener`, on the Raft runtime `rt`, until `stop`;
/// over TLS with `tls` (mutual TLS on the peer listener).
pub fn serve(
    rt: &tokio::runtime::Handle,
    listener: TcpListener,
    router: Router<Layered>,
    mut stop: Shutdown,
    what: &'static str,
    tls: Option<ListenerTls>,
) -> anyhow::Result<JoinHandle<()>> {
    // Registered with the Raft runtime's reactor, like the connections it accepts.
    let listener = {
        let _rt = rt.enter();
        TcpListener::from_std(listener.into_std()?)?
    };
    let Some(tls) = tls else {
        return Ok(rt.spawn(async move {
            // Small request/response RPCs: without TCP_NODELAY, Nagle and
            // delayed ACKs add ~40 ms stalls to replication and forwarding.
            let incoming =
                tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
                    if let Ok(s) = &s {
                        let _ = s.set_nodelay(true);
                    }
                    s
                });
            let shutdown = async move { stop.wait().await };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
                tracing::error!(error = %e, listener = what, "gRPC server failed");
            }
        }));
    };
    let (handshaken, incoming) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    let live = tls.live;
    let mut accepting = stop.clone();
    // Handshakes run beside each other: one slow or hostile peer never
    // holds up the next connection.
    rt.spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let per_address = PerAddress::default();
        loop {
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s.expect("never closed"),
                _ = accepting.wait() => return,
            };
            let (tcp, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, listener = what, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = accepting.wait() => return,
            };
            let Some(place) = per_address.take(peer.ip()) else {
                static CROWDED: gatehouse_cluster::throttle::Throttle =
                    gatehouse_cluster::throttle::Throttle::new(1_000);
                if let Some(suppressed) = CROWDED.allow() {
                    tracing::warn!(%peer, listener = what, suppressed, "too many TLS handshakes from one address");
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, handshaken, live) = (acceptor.clone(), handshaken.clone(), live.clone());
            tokio::spawn(async move {
                let (_slot, _place) = (slot, place);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let stream = match &live {
                            Some(live) => {
                                let certs = stream.get_ref().1.peer_certificates().unwrap_or_default().to_vec();
                                live.accepted(stream, &certs)
                            }
                            None => Guarded::plain(stream),
                        };
                        let _ = handshaken.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(e)) => {
                        static FAILED: gatehouse_cluster::throttle::Throttle =
                            gatehouse_cluster::throttle::Throttle::new(1_000);
                        if let Some(suppressed) = FAILED.allow() {
                            tracing::warn!(%peer, error = %e, listener = what, suppressed, "TLS handshake refused");
                        }
                    }
                    Err(_) => tracing::debug!(%peer, listener = what, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(rt.spawn(async move {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming);
        let shutdown = async move { stop.wait().await };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::error!(error = %e, listener = what, "gRPC server failed");
        }
    }))
}
