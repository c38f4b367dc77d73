//! Channels to other nodes, and the cluster secret every Raft RPC carries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_proto::control::control_service_client::ControlServiceClient;
use gatehouse_proto::raft::raft_service_client::RaftServiceClient;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use gatehouse_storage::NodeId;

use crate::ClusterError;

/// Metadata key of the cluster secret on Raft RPCs.
pub const SECRET_METADATA: &str = "x-gatehouse-cluster-secret";

/// Shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// The shared secret that admits a node to the cluster's Raft RPCs.
/// Compared by SHA-256 digest in constant time; never printed.
#[derive(Clone)]
pub struct ClusterSecret {
    value: MetadataValue<Ascii>,
    digest: [u8; 32],
}

impl ClusterSecret {
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_LEN || !secret.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!("cluster secret must be at least {MIN_SECRET_LEN} printable ASCII characters"));
        }
        let value = secret.parse().map_err(|_| "cluster secret is not valid metadata".to_string())?;
        Ok(ClusterSecret { value, digest: Sha256::digest(secret.as_bytes()).into() })
    }

    /// The secret as outgoing metadata (never logged: `MetadataValue`
    /// prints as the value, so it stays inside requests).
    pub(crate) fn metadata_value(&self) -> MetadataValue<Ascii> {
        self.value.clone()
    }

    /// Whether `presented` is the secret (constant time in its content).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(presented).into();
        d.ct_eq(&self.digest).into()
    }

    /// Checks an incoming request's metadata.
    #[allow(clippy::result_large_err)]
    pub fn check<T>(&self, req: tonic::Request<T>) -> Result<tonic::Request<T>, tonic::Status> {
        match req.metadata().get(SECRET_METADATA) {
            Some(v) if self.matches(v.as_bytes()) => Ok(req),
            _ => {
                static REFUSED: crate::throttle::Throttle = crate::throttle::Throttle::new(1_000);
                if let Some(suppressed) = REFUSED.allow() {
                    tracing::warn!(peer = ?req.remote_addr(), suppressed, "raft rpc refused: missing or wrong cluster secret");
                }
                Err(tonic::Status::unauthenticated("cluster secret required"))
            }
        }
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// Adds the cluster secret to outgoing requests.
#[derive(Clone)]
pub struct AddSecret(MetadataValue<Ascii>);

impl tonic::service::Interceptor for AddSecret {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(SECRET_METADATA, self.0.clone());
        // Forwarded writes, read-index and status calls continue the caller's trace.
        crate::trace::inject_current(req.metadata_mut());
        Ok(req)
    }
}

pub type RaftClient = RaftServiceClient<InterceptedService<Channel, AddSecret>>;
pub type ControlClient = ControlServiceClient<InterceptedService<Channel, AddSecret>>;

/// Largest gRPC message between nodes (AppendEntries batches).
pub const MAX_RAFT_MESSAGE: usize = 64 << 20;
/// HTTP/2 flow-control windows between nodes, both ways: a large entry
/// crosses a link with a long round trip in a few round trips, not dozens.
pub const PEER_STREAM_WINDOW: u32 = 1 << 20;
pub const PEER_CONNECTION_WINDOW: u32 = 4 << 20;

/// One lazily connected channel per peer address, shared by Raft
/// replication, write forwarding and status calls.
#[derive(Clone, Debug)]
pub struct Peers {
    secret: ClusterSecret,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Advertised address → the address actually dialled.
    routes: Arc<HashMap<String, String>>,
    /// Production without TLS: the secret and the log go to loopback only.
    loopback_only: bool,
    /// Mutual TLS to every peer, when configured.
    tls: Option<crate::peer_tls::PeerTls>,
}

/// Whether `host:port` (or a bare host) names this machine: `localhost` or
/// a loopback IP. Anything that must be resolved is not.
pub fn is_loopback_addr(addr: &str) -> bool {
    // `localhost:x@evil.example` is user info and a host to a URL parser.
    if addr.contains(['@', '/', '?', '#']) {
        return false;
    }
    let bare = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return sa.ip().is_loopback();
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h).eq_ignore_ascii_case("localhost")
}

impl Peers {
    pub fn new(secret: ClusterSecret) -> Self {
        Peers { secret, channels: Arc::default(), routes: Arc::default(), loopback_only: false, tls: None }
    }

    /// Dials every peer over mutual TLS.
    pub fn with_tls(mut self, tls: crate::peer_tls::PeerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn tls(&self) -> Option<&crate::peer_tls::PeerTls> {
        self.tls.as_ref()
    }

    /// Over TLS: which node each member's address is, from `membership`;
    /// a channel made for another node at an address is dropped.
    pub fn learn(&self, membership: &gatehouse_storage::types::Membership) {
        if let Some(tls) = &self.tls {
            let changed = tls.learn(membership);
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            for addr in changed {
                channels.remove(&addr);
            }
        }
    }

    /// Over TLS: `addr` is node `id`'s, and only its certificate is taken
    /// there (a channel made for another node there is dropped).
    pub fn expect(&self, addr: &str, id: NodeId) {
        if let Some(tls) = &self.tls {
            if tls.expect(addr, id) {
                self.channels.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
            }
        }
    }

    /// Refuses to dial anything off loopback: every Raft RPC carries the
    /// cluster secret and log entries in plaintext (production mode sets
    /// this until cluster TLS exists).
    pub fn loopback_only(mut self, on: bool) -> Self {
        self.loopback_only = on;
        self
    }

    /// Whether this node may send the cluster secret to `addr` (and the
    /// route it is dialled through); the refusal says why.
    pub fn check_dialable(&self, addr: &str) -> Result<(), ClusterError> {
        let dial = self.routes.get(addr).map_or(addr, String::as_str);
        if self.loopback_only && !(is_loopback_addr(addr) && is_loopback_addr(dial)) {
            return Err(ClusterError::FailedPrecondition(
                "production mode sends cluster traffic (the secret, the log) to loopback addresses only: \
                 plaintext off loopback is refused"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Dials each advertised address in `routes` through its route instead
    /// (a tunnel, a sidecar, a fault-injecting proxy).
    pub fn with_routes(mut self, routes: impl IntoIterator<Item = (String, String)>) -> Self {
        self.routes = Arc::new(routes.into_iter().collect());
        self
    }

    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// The channel to `addr` (`host:port`), created on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, ClusterError> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self.connect_lazy(addr)?;
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// A channel to `addr` that connects on first use (over TLS when configured).
    fn connect_lazy(&self, addr: &str) -> Result<Channel, ClusterError> {
        let endpoint = self.endpoint(addr)?;
        Ok(match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => {
                let dial = self.routes.get(addr).map_or(addr, String::as_str);
                endpoint.connect_with_connector_lazy(tls.connector(addr.to_string(), dial.to_string()))
            }
        })
    }

    /// How `addr` is dialled (through its route, if it has one).
    fn endpoint(&self, addr: &str) -> Result<Endpoint, ClusterError> {
        self.check_dialable(addr)?;
        let dial = self.routes.get(addr).map_or(addr, String::as_str);
        Ok(Endpoint::from_shared(format!("http://{dial}"))
            .map_err(|_| {
                ClusterError::InvalidArgument(format!("invalid node address {}", gatehouse_domain::quote::quote(addr)))
            })?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .initial_stream_window_size(PEER_STREAM_WINDOW)
            .initial_connection_window_size(PEER_CONNECTION_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5)))
    }

    /// The Raft service of the node at `addr` (vote, append, snapshots).
    pub fn raft_client(&self, addr: &str) -> Result<RaftClient, ClusterError> {
        Ok(RaftServiceClient::with_interceptor(self.channel(addr)?, self.add_secret())
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE))
    }

    /// The control service of the node at `addr` (forwarded writes, read
    /// index, status, election pacing, state digests).
    pub fn control_client(&self, addr: &str) -> Result<ControlClient, ClusterError> {
        Ok(self.control_client_on(self.channel(addr)?))
    }

    /// A control client on a channel of its own, not kept: for addresses
    /// that are not members yet (a learner about to be added).
    pub fn control_client_once(&self, addr: &str) -> Result<ControlClient, ClusterError> {
        Ok(self.control_client_on(self.connect_lazy(addr)?))
    }

    fn control_client_on(&self, ch: Channel) -> ControlClient {
        ControlServiceClient::with_interceptor(ch, self.add_secret())
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE)
    }

    fn add_secret(&self) -> AddSecret {
        AddSecret(self.secret.metadata_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_checks() {
        assert!(ClusterSecret::new("short").is_err());
        assert!(ClusterSecret::new(&"é".repeat(40)).is_err());
        let s = ClusterSecret::new(&"s".repeat(40)).unwrap();
        assert!(s.matches("s".repeat(40).as_bytes()));
        assert!(!s.matches("s".repeat(39).as_bytes()));
        assert!(!s.matches(b""));
        assert_eq!(format!("{s:?}"), "ClusterSecret(..)");
    }

    #[test]
    fn loopback_addresses() {
        for a in ["127.0.0.1:9090", "127.3.2.1:1", "[::1]:9090", "localhost:9090", "LOCALHOST", "::1", "127.0.0.1"] {
            assert!(is_loopback_addr(a), "{a}");
        }
        for a in [
            "10.0.0.5:9090",
            "[::]:1",
            "0.0.0.0:9090",
            "node-2:9090",
            "localhost.evil.example:1",
            "[fe80::1]:1",
            "localhost:x@evil.example",
            "127.0.0.1:1@evil.example",
        ] {
            assert!(!is_loopback_addr(a), "{a}");
        }
    }

    #[tokio::test]
    async fn production_never_dials_off_loopback() {
        let peers = Peers::new(ClusterSecret::new(&"s".repeat(40)).unwrap())
            .with_routes([("127.0.0.1:7001".to_string(), "10.0.0.9:7001".to_string())])
            .loopback_only(true);
        assert!(peers.channel("127.0.0.1:7002").is_ok());
        for refused in ["10.0.0.5:7000", "node-2:7000", "127.0.0.1:7001"] {
            assert!(matches!(peers.channel(refused), Err(ClusterError::FailedPrecondition(_))), "{refused}");
            assert!(peers.raft_client(refused).is_err(), "{refused}");
            assert!(peers.control_client_once(refused).is_err(), "{refused}");
        }
        let open = Peers::new(ClusterSecret::new(&"s".repeat(40)).unwrap());
        assert!(open.channel("10.0.0.5:7000").is_ok());
    }
}
