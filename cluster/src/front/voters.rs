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

/// Adds the front's id and secret to every call to a voter.
#[derive(Clone)]
pub struct FrontAuth {
    id: MetadataValue<Ascii>,
    secret: MetadataValue<Ascii>,
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
        Ok(FrontAuth { id: id.to_string().parse().map_err(|_| "front id")?, secret })
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
        crate::trace::inject_current(req.metadata_mut());
        Ok(req)
    }
}

pub type FollowClient = FollowServiceClient<InterceptedService<Channel, FrontAuth>>;

/// How long dialling a voter may take, TCP and TLS handshake together.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_500);

/// Dials `addr` over TLS with `config` (the voter's certificate is checked
/// by its verifier: any node of the cluster's CA).
fn connector(
    addr: String,
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_uri: http::Uri| {
        let (addr, config) = (addr.clone(), config.clone());
        async move {
            let connect = async {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                // The name is not what is checked (a voter is dialled by
                // address); the certificate must be a node's of the CA.
                let name = rustls::pki_types::ServerName::try_from("gatehouse-voter").expect("a valid name");
                tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
            };
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting to a voter timed out"))??;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// The voters, and the one followed now.
#[derive(Clone, Debug)]
pub struct Voters {
    voters: Arc<Vec<(String, Channel)>>,
    current: Arc<AtomicUsize>,
    auth: FrontAuth,
}

impl Voters {
    /// Channels to every address in `addrs` (`host:port` of each voter's
    /// peer listener); nothing is dialled until first used. With `tls` (the
    /// front's certificate, the cluster's CA: `Trust::front_client_config`)
    /// every channel is mutual TLS, and a voter is taken only with a node
    /// certificate of that CA.
    pub fn new(addrs: &[String], auth: FrontAuth, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Voters, String> {
        if addrs.is_empty() {
            return Err("a front needs at least one voter address".into());
        }
        let voters = addrs
            .iter()
            .map(|a| {
                let endpoint = Endpoint::from_shared(format!("http://{a}"))
                    .map_err(|_| format!("invalid voter address {}", gatehouse_domain::quote::quote(a)))?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .initial_stream_window_size(PEER_STREAM_WINDOW)
                    .initial_connection_window_size(PEER_CONNECTION_WINDOW)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(3));
                let channel = match &tls {
                    None => endpoint.connect_lazy(),
                    Some(config) => endpoint.connect_with_connector_lazy(connector(a.clone(), config.clone())),
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
