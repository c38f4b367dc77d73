//! Mutual TLS between nodes, as consensus uses it: dialling a peer (a TLS
//! connector per channel, naming the member's id when the address is a
//! member's), and admitting a call (who the certificate says called, and
//! whether that node is a member now).
//!
//! The certificate checks themselves (the CA, a bound id, the deny-list)
//! are `gatehouse_tls::peer`'s; here is what they mean for the cluster:
//!
//! - a call is admitted only from a node of the current membership (a
//!   removed node is refused at once, its certificate still valid), or from
//!   any node of the cluster's CA while this node has no membership yet (a
//!   new node being added learns the leader from its first append);
//! - a Raft message's claimed sender must be the certificate's node (a
//!   stolen node-2 certificate cannot vote or append as node 3): checked
//!   by the Raft service with [`PeerNode`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gatehouse_storage::types::Membership;
use gatehouse_storage::NodeId;
use gatehouse_tls::peer::{server_name, Trust};
use tonic::{Request, Status};

use crate::Cluster;

/// How long dialling a peer may take, TCP and TLS handshake together.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_500);

/// The node a call came from, as its certificate says (an extension of
/// every admitted request on a mutual-TLS listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNode(pub NodeId);

/// This node's side of mutual TLS between nodes.
#[derive(Clone, Debug)]
pub struct PeerTls {
    trust: Trust,
    /// This node's certificate (presented on every connection, both ways).
    material: gatehouse_tls::Material,
    client: Arc<rustls::ClientConfig>,
    /// Member addresses → ids, from the latest membership.
    ids: Arc<RwLock<HashMap<String, NodeId>>>,
    /// Connections open to and from peers, rechecked as the trust changes.
    live: crate::live::Live,
}

impl PeerTls {
    /// `material` is presented to peers; `trust` decides whom to believe.
    pub fn new(trust: Trust, material: &gatehouse_tls::Material) -> Result<PeerTls, gatehouse_tls::TlsError> {
        Ok(PeerTls {
            client: trust.client_config(material)?,
            live: crate::live::Live::new(trust.clone()),
            trust,
            material: material.clone(),
            ids: Arc::default(),
        })
    }

    /// The open connections to and from peers (the peer listener registers
    /// those it accepts).
    pub fn live(&self) -> &crate::live::Live {
        &self.live
    }

    /// Holds every open connection to the trust in force (run at each
    /// reload tick; see [`crate::live`]).
    pub fn recheck(&self) -> crate::live::Rechecked {
        self.live.recheck()
    }

    /// When this node's certificate (the one in use) stops being valid.
    pub fn not_after(&self) -> i64 {
        self.material.info().not_after
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Remembers which id each member's address belongs to; returns the
    /// addresses whose id changed (their connections were made for another node).
    pub(crate) fn learn(&self, membership: &Membership) -> Vec<String> {
        let fresh: HashMap<String, NodeId> = membership.nodes().map(|(id, m)| (m.addr.clone(), *id)).collect();
        let mut ids = self.ids.write().unwrap_or_else(|p| p.into_inner());
        let changed =
            ids.iter().filter(|(a, id)| fresh.get(*a).is_some_and(|f| f != *id)).map(|(a, _)| a.clone()).collect();
        *ids = fresh;
        changed
    }

    /// Records that `addr` is node `id`'s (a Raft connection to a member,
    /// a learner being probed); returns whether it was another's before.
    pub(crate) fn expect(&self, addr: &str, id: NodeId) -> bool {
        let previous = self.ids.write().unwrap_or_else(|p| p.into_inner()).insert(addr.to_string(), id);
        previous.is_some_and(|p| p != id)
    }

    /// A connector for the channel to `addr`, dialled at `dial`: TCP, then
    /// TLS naming the id `addr` belongs to, so only that node's certificate
    /// is taken. An address of no known node is not dialled.
    pub(crate) fn connector(
        &self,
        addr: String,
        dial: String,
    ) -> impl tower::Service<
        http::Uri,
        Response = hyper_util::rt::TokioIo<
            crate::live::Guarded<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        >,
        Error = std::io::Error,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        let tls = self.clone();
        tower::service_fn(move |_uri: http::Uri| {
            let (tls, addr, dial) = (tls.clone(), addr.clone(), dial.clone());
            async move {
                let id = tls.ids.read().unwrap_or_else(|p| p.into_inner()).get(&addr).copied();
                let Some(id) = id else {
                    return Err(std::io::Error::other(format!("no node is known at {addr}")));
                };
                let connect = async {
                    let tcp = tokio::net::TcpStream::connect(&dial).await?;
                    tcp.set_nodelay(true)?;
                    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
                    connector.connect(server_name(id), tcp).await
                };
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect).await.map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting to a peer timed out")
                })??;
                let certs = stream.get_ref().1.peer_certificates().unwrap_or_default().to_vec();
                Ok(hyper_util::rt::TokioIo::new(tls.live.dialled(stream, &certs, id)))
            }
        })
    }
}

impl Cluster {
    /// Admits a call between nodes: the cluster secret, and on a mutual-TLS
    /// listener a member's certificate (see the module's rules). The
    /// caller's node is then a [`PeerNode`] extension of the request.
    #[allow(clippy::result_large_err)]
    pub fn admit<T>(&self, req: Request<T>) -> Result<Request<T>, Status> {
        self.admit_as(req, false)
    }

    /// [`Cluster::admit`] for the control services, which operators' tools
    /// holding the secret call too: a call without a lineage is taken (one
    /// with another lineage is not).
    #[allow(clippy::result_large_err)]
    pub fn admit_control<T>(&self, req: Request<T>) -> Result<Request<T>, Status> {
        self.admit_as(req, true)
    }

    /// The caller's lineage is looked at last: a node without one takes
    /// only the lineage of a caller that passed every other check.
    #[allow(clippy::result_large_err)]
    fn admit_as<T>(&self, req: Request<T>, tools: bool) -> Result<Request<T>, Status> {
        let req = self.authenticated(req)?;
        if let Some(lineage) = self.inner.peers.lineage() {
            lineage.check(&req, tools)?;
        }
        Ok(req)
    }

    #[allow(clippy::result_large_err)]
    fn authenticated<T>(&self, req: Request<T>) -> Result<Request<T>, Status> {
        let mut req = self.inner.peers.secret().check(req)?;
        let Some(tls) = self.inner.peers.tls() else { return Ok(req) };
        let refuse = |why: String| {
            static REFUSED: crate::throttle::Throttle = crate::throttle::Throttle::new(1_000);
            if let Some(suppressed) = REFUSED.allow() {
                tracing::warn!(peer = ?req.remote_addr(), why = %why, suppressed, "peer refused");
            }
            Status::permission_denied("this node does not accept calls from that peer")
        };
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let certs = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs());
        let Some(certs) = certs else {
            return Err(refuse("no client certificate".into()));
        };
        let id = match certs.first().map(|c| tls.trust.peer_id(c)) {
            Some(Ok(id)) => id,
            Some(Err(why)) => return Err(refuse(why)),
            None => return Err(refuse("no client certificate".into())),
        };
        let member = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            membership.get_node(&id).is_some() || membership.nodes().next().is_none()
        };
        if !member {
            return Err(refuse(format!("node {id} is not a member")));
        }
        req.extensions_mut().insert(PeerNode(id));
        Ok(req)
    }
}

/// Refuses a Raft message whose claimed sender is not the node the
/// certificate names (no certificate: a listener without TLS, nothing to check).
#[allow(clippy::result_large_err)]
pub(crate) fn claims<T>(req: &Request<T>, claimed: Option<NodeId>) -> Result<(), Status> {
    match req.extensions().get::<PeerNode>() {
        Some(PeerNode(id)) if claimed != Some(*id) => {
            tracing::warn!(certificate = id, claimed = ?claimed, "a peer claimed another node's id");
            Err(Status::permission_denied("the message's sender is not the certificate's node"))
        }
        _ => Ok(()),
    }
}
