//! The voters a front talks to: one lazily connected channel each, the
//! front's id and secret on every call, and which voter the front follows
//! now (it moves on to the next when that one fails it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_proto::front::follow_service_client::FollowServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::fronts::{FRONT_ID_METADATA, FRONT_SECRET_METADATA, MIN_FRONT_SECRET_LEN};
use crate::peers::{MAX_RAFT_MESSAGE, PEER_CONNECTION_WINDOW, PEER_STREAM_WINDOW};
use gatehouse_storage::NodeId;

/// Adds the front's id and secret to every call to a voter, and the
/// cluster lineage it follows once a voter named it: a voter of another
/// cluster or epoch then refuses the front, which moves on.
#[derive(Clone)]
pub struct FrontAuth {
    id: MetadataValue<Ascii>,
    secret: MetadataValue<Ascii>,
    lineage: Arc<std::sync::OnceLock<MetadataValue<Ascii>>>,
}

impl FrontAuth {
    /// The credentials of front `id`; errors never show the secret.
    pub fn new(id: NodeId, secret: &str) -> Result<FrontAuth, String> {
        let secret = secret.trim();
        if secret.len() < MIN_FRONT_SECRET_LEN || !secret.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!("a front secret must be at least {MIN_FRONT_SECRET_LEN} printable ASCII characters"));
        }
        let mut secret: MetadataValue<Ascii> = secret.parse().map_err(|_| "the front secret is not valid metadata")?;
        secret.set_sensitive(true);
        Ok(FrontAuth { id: id.to_string().parse().map_err(|_| "front id")?, secret, lineage: Arc::default() })
    }

    /// The lineage of the cluster this front follows, from a voter's
    /// answer: the first one named is kept for the process's life (a front
    /// restarts with a fresh copy of the view). Returns whether `lineage`
    /// is the one kept.
    pub(crate) fn pin(&self, lineage: &str) -> bool {
        let Some(parsed) = crate::lineage::parse(lineage) else { return false };
        let value = crate::lineage::text(&parsed).parse().expect("hex and digits are valid metadata");
        let kept = self.lineage.get_or_init(|| {
            tracing::info!(lineage, "following this cluster lineage");
            value
        });
        kept.as_bytes() == lineage.as_bytes()
    }
}

impl std::fmt::Debug for FrontAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrontAuth(..)")
    }
}

impl tonic::service::Interceptor for FrontAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(FRONT_ID_METADATA, self.id.clone());
        req.metadata_mut().insert(FRONT_SECRET_METADATA, self.secret.clone());
        if let Some(lineage) = self.lineage.get() {
            req.metadata_mut().insert(crate::lineage::LINEAGE_METADATA, lineage.clone());
        }
        req.metadata_mut().insert(crate::version::COMMANDS_METADATA, gatehouse_domain::version::COMMAND_VERSION.into());
        crate::trace::inject_current(req.metadata_mut());
        Ok(req)
    }
}

pub type FollowClient = FollowServiceClient<InterceptedService<Channel, FrontAuth>>;

/// The voters, and the one followed now.
#[derive(Clone, Debug)]
pub struct Voters {
    voters: Arc<Vec<(String, Channel)>>,
    current: Arc<AtomicUsize>,
    auth: FrontAuth,
}

impl Voters {
    /// Channels to every voter in `voters` (its node id, needed with TLS,
    /// and the `host:port` of its peer listener); nothing is dialled until
    /// first used. With `tls` (the front's certificate, the cluster's CA and
    /// deny-list) every channel is mutual TLS, a voter is taken only with the
    /// certificate of the node it is listed as, and open connections are
    /// held to the trust in force ([`PeerTls::recheck`]).
    pub fn new(
        voters: &[(Option<NodeId>, String)],
        auth: FrontAuth,
        tls: Option<&crate::peer_tls::PeerTls>,
    ) -> Result<Voters, String> {
        let addrs: Vec<String> = voters.iter().map(|(_, a)| a.clone()).collect();
        if addrs.is_empty() {
            return Err("a front needs at least one voter address".into());
        }
        let voters = voters
            .iter()
            .map(|(id, a)| {
                let endpoint = Endpoint::from_shared(format!("http://{a}"))
                    .map_err(|_| format!("invalid voter address {}", gatehouse_domain::quote::quote(a)))?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .initial_stream_window_size(PEER_STREAM_WINDOW)
                    .initial_connection_window_size(PEER_CONNECTION_WINDOW)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(3));
                let channel = match (tls, id) {
                    (None, _) => endpoint.connect_lazy(),
                    (Some(tls), Some(id)) => {
                        tls.expect(a, *id);
                        endpoint.connect_with_connector_lazy(tls.connector(a.clone(), a.clone()))
                    }
                    (Some(_), None) => return Err(format!("voter {a}: with TLS, name its node id (`id@host:port`)")),
                };
                Ok((a.clone(), channel))
            })
            .collect::<Result<Vec<_>, String>>()?;
        // Fronts spread over the voters from the start.
        let first = rand::random::<u32>() as usize % voters.len();
        Ok(Voters { voters: Arc::new(voters), current: Arc::new(AtomicUsize::new(first)), auth })
    }

    /// The voter followed now: its position and address.
    pub fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Acquire) % self.voters.len();
        (i, &self.voters[i].0)
    }

    /// Moves on from voter `from` to the next (unless someone already did).
    pub fn move_on(&self, from: usize) {
        let next = (from + 1) % self.voters.len();
        let _ = self.current.compare_exchange(from, next, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn len(&self) -> usize {
        self.voters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.voters.is_empty()
    }

    /// The follow service of voter `i`.
    /// The front's credentials (and the lineage it follows).
    pub(crate) fn auth(&self) -> &FrontAuth {
        &self.auth
    }

    pub fn client(&self, i: usize) -> FollowClient {
        FollowServiceClient::new(self.channel(i))
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE)
    }

    /// The channel to voter `i`, carrying the front's credentials (for the
    /// other services a front calls, such as sign-in).
    pub fn channel(&self, i: usize) -> InterceptedService<Channel, FrontAuth> {
        InterceptedService::new(self.voters[i % self.voters.len()].1.clone(), self.auth.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_front_keeps_the_first_lineage_a_voter_names() {
        let auth = FrontAuth::new(101, &"s".repeat(40)).unwrap();
        let first = format!("{}.1", "a1".repeat(16));
        assert!(!auth.pin("garbage"), "nothing kept from a malformed answer");
        assert!(auth.pin(&first));
        assert!(auth.pin(&first));
        assert!(!auth.pin(&format!("{}.2", "a1".repeat(16))), "another epoch is not followed");
        assert!(!auth.pin(&format!("{}.1", "b2".repeat(16))), "nor another cluster");
        let mut req = tonic::Request::new(());
        req = tonic::service::Interceptor::call(&mut auth.clone(), req).unwrap();
        assert_eq!(req.metadata().get(crate::lineage::LINEAGE_METADATA).unwrap(), first.as_str());
    }
}
