//! Channels to other nodes, and the cluster secret every Raft RPC carries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
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

/// Most secrets a secret file may hold: the one sent and those still
/// accepted during a rotation.
pub const MAX_SECRETS: usize = 4;

/// The shared secret that admits a node to the calls between nodes.
///
/// It may hold several: the first is sent with every call, each one is
/// accepted, so the secret can be rotated with no call refused (add the new
/// one as the second line everywhere, then make it the first, then drop the
/// old; see docs/tls.md). Every clone shares the secrets, which
/// [`ClusterSecret::replace`] changes in place when the secret file
/// changes. Compared by SHA-256 digest in constant time; never printed.
#[derive(Clone)]
pub struct ClusterSecret {
    ring: Arc<RwLock<Ring>>,
}

#[derive(PartialEq)]
struct Ring {
    send: MetadataValue<Ascii>,
    accepted: Vec<[u8; 32]>,
}

impl Ring {
    fn parse(text: &str) -> Result<Ring, String> {
        let lines: Vec<(usize, &str)> =
            text.lines().enumerate().map(|(n, l)| (n + 1, l.trim())).filter(|(_, l)| !l.is_empty()).collect();
        if lines.is_empty() {
            return Err("no cluster secret".into());
        }
        if lines.len() > MAX_SECRETS {
            return Err(format!("at most {MAX_SECRETS} cluster secrets (one per line), not {}", lines.len()));
        }
        let multi = lines.len() > 1;
        let mut accepted = Vec::with_capacity(lines.len());
        for (n, secret) in &lines {
            if secret.len() < MIN_SECRET_LEN || !secret.chars().all(|c| c.is_ascii_graphic()) {
                let at = if multi { format!(" (line {n})") } else { String::new() };
                return Err(format!("cluster secret{at} must be at least {MIN_SECRET_LEN} printable ASCII characters"));
            }
            accepted.push(Sha256::digest(secret.as_bytes()).into());
        }
        let mut send: MetadataValue<Ascii> =
            lines[0].1.parse().map_err(|_| "cluster secret is not valid metadata".to_string())?;
        // Kept out of HPACK's table and of any header dump.
        send.set_sensitive(true);
        Ok(Ring { send, accepted })
    }
}

impl ClusterSecret {
    /// The secrets in `text`, one per line (blank lines skipped): the first
    /// is sent, each is accepted. Errors name a line, never a secret.
    pub fn new(text: &str) -> Result<Self, String> {
        Ok(ClusterSecret { ring: Arc::new(RwLock::new(Ring::parse(text)?)) })
    }

    /// Takes the secrets in `text` for every clone: `Ok(true)` if they
    /// changed, `Ok(false)` if they are the ones in use; on an error the
    /// ones in use stay.
    pub fn replace(&self, text: &str) -> Result<bool, String> {
        let fresh = Ring::parse(text)?;
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        if *ring == fresh {
            return Ok(false);
        }
        *ring = fresh;
        Ok(true)
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    /// How many secrets are accepted now.
    pub fn accepted(&self) -> usize {
        self.ring().accepted.len()
    }

    /// The secret sent, as outgoing metadata (never logged: `MetadataValue`
    /// prints as the value, so it stays inside requests).
    pub(crate) fn metadata_value(&self) -> MetadataValue<Ascii> {
        self.ring().send.clone()
    }

    /// Whether `presented` is one of the secrets (constant time in its
    /// content and in which one it is).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(presented).into();
        let mut ok = subtle::Choice::from(0);
        for a in &self.ring().accepted {
            ok |= d.ct_eq(a);
        }
        ok.into()
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

/// Adds the cluster secret to outgoing requests: the one sent at the time
/// of each call (a client kept for hours follows a rotation).
#[derive(Clone)]
pub struct AddSecret(ClusterSecret, Option<crate::lineage::Lineage>);

impl tonic::service::Interceptor for AddSecret {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(SECRET_METADATA, self.0.metadata_value());
        // And which cluster, in which epoch, the call comes from.
        if let Some(lineage) = self.1.as_ref().and_then(|l| l.metadata()) {
            req.metadata_mut().insert(crate::lineage::LINEAGE_METADATA, lineage);
        }
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
    /// This node's lineage, carried by every call (none on a tool's).
    lineage: Option<crate::lineage::Lineage>,
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
        Peers {
            secret,
            channels: Arc::default(),
            routes: Arc::default(),
            loopback_only: false,
            tls: None,
            lineage: None,
        }
    }

    /// Sends this node's lineage with every call, and checks callers' against it.
    pub fn with_lineage(mut self, lineage: crate::lineage::Lineage) -> Self {
        self.lineage = Some(lineage);
        self
    }

    pub fn lineage(&self) -> Option<&crate::lineage::Lineage> {
        self.lineage.as_ref()
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

    /// Forgets every cached channel: the next call to each peer dials anew
    /// (after this node's certificate or the cluster's trust changed, so
    /// new calls go over a handshake made with what is in use now). Calls
    /// already under way finish on the channel they started on.
    pub fn drop_channels(&self) {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).clear();
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
        AddSecret(self.secret.clone(), self.lineage.clone())
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
    fn a_secret_rotates_through_two_accepted_and_every_clone_follows() {
        let (old, new) = ("o".repeat(40), "n".repeat(40));
        let s = ClusterSecret::new(&format!("{old}\n")).unwrap();
        let clone = s.clone();
        // Phase 1: the new one accepted too, the old one still sent.
        assert!(s.replace(&format!("{old}\n{new}\n")).unwrap());
        assert!(!s.replace(&format!("{old}\n\n{new}")).unwrap(), "the same secrets: unchanged");
        assert!(clone.matches(old.as_bytes()) && clone.matches(new.as_bytes()));
        assert_eq!(clone.metadata_value(), old.as_str());
        assert_eq!(clone.accepted(), 2);
        // Phase 2: the new one sent, the old one still accepted.
        assert!(s.replace(&format!("{new}\n{old}")).unwrap());
        assert_eq!(clone.metadata_value(), new.as_str());
        assert!(clone.matches(old.as_bytes()));
        // Phase 3: the old one gone.
        assert!(s.replace(&new).unwrap());
        assert!(!clone.matches(old.as_bytes()) && clone.matches(new.as_bytes()));

        // A bad file is refused, names the line, never the secret; the secret in use stays.
        let e = s.replace(&format!("{new}\nshort-secret")).unwrap_err();
        assert!(e.contains("line 2") && !e.contains("short-secret") && !e.contains(&new), "{e}");
        assert!(s.replace("").is_err());
        assert!(s.replace(&[new.as_str(); 5].join("\n")).unwrap_err().contains("at most 4"));
        assert!(clone.matches(new.as_bytes()) && clone.accepted() == 1);
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
