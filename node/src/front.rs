//! Starting and stopping a stateless front (`gatehouse front`): the HTTP
//! front over a [`gatehouse_cluster::front::Front`] instead of a voter. No
//! Raft, no RocksDB, no data directory: it copies the view from a voter,
//! follows the committed log, proves its freshness with read indexes, and
//! sends its writes (last use, rate-limit counts, audit batches) to the
//! voters. See docs/fronts.md.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use gatehouse_cluster::front::{Front, FrontAuth, FrontSettings, Voters};
use gatehouse_cluster::periodic::ShutdownSender;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::node::{front as http_front, http_server, last_use_flushes, metrics_server};

/// A running front. Dropping it without [`FrontNode::shutdown`] stops its tasks.
pub struct FrontNode {
    front: Front,
    api: gatehouse_api::Node,
    http_addr: SocketAddr,
    proxy_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    ext_authz_addr: Option<SocketAddr>,
    /// Stops the listeners (first).
    serving: ShutdownSender,
    /// Stops following and the tasks that propose (once the servers are done).
    stop: ShutdownSender,
    servers: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl FrontNode {
    /// Binds the listeners and starts following the voters in `[front]`.
    /// Returns at once: the front answers 503 until it has copied the view
    /// and proven it current (see [`FrontNode::wait_ready`]).
    pub async fn start(config: Config) -> anyhow::Result<FrontNode> {
        config.validate()?;
        let Some(section) = &config.front else {
            anyhow::bail!("a front needs a [front] section (the voters to follow, its secret)");
        };
        let secret = section.read_secret()?;
        let auth = FrontAuth::new(config.node_id, &secret).map_err(anyhow::Error::msg)?;
        let mut watched = crate::reload::Watched::default();
        // Mutual TLS to the voters: this front's certificate must bind it;
        // each voter is taken only as the node it is listed as, and the CA
        // bundle and deny-list are re-read and held to as a node's are.
        let tls = match (&section.cert_file, &section.key_file, &section.ca_file) {
            (Some(cert), Some(key), Some(ca)) => {
                let material = gatehouse_tls::Material::load_front(cert, key, config.node_id).context("[front]")?;
                let trust = gatehouse_tls::peer::Trust::load(ca, &section.deny_serials, section.deny_file.as_deref())
                    .context("[front]")?;
                watched.served.push(crate::reload::Served { listener: "front", material: material.clone() });
                let tls = gatehouse_cluster::peer_tls::PeerTls::new(trust, &material)?;
                watched.peer = Some((tls.clone(), None));
                Some(tls)
            }
            _ => None,
        };
        let voters = Voters::new(&section.voter_list()?, auth, tls.as_ref()).map_err(anyhow::Error::msg)?;
        let sign_in_voters = voters.clone();
        let https = match &config.https {
            Some(h) => {
                let material = gatehouse_tls::Material::load(&h.cert_file, &h.key_file).context("[https]")?;
                Some((gatehouse_tls::server::https(&material, h.http2)?, material))
            }
            None => None,
        };
        let http_listener =
            TcpListener::bind(config.http_addr).await.with_context(|| format!("binding HTTP {}", config.http_addr))?;
        let metrics_listener = match config.metrics_addr {
            Some(a) => Some(TcpListener::bind(a).await.with_context(|| format!("binding metrics {a}"))?),
            None => None,
        };
        let ext_authz_listener = crate::node::bind_ext_authz(&config, &mut watched).await?;
        let ext_authz_addr = match &ext_authz_listener {
            Some(l) => Some(l.listener.local_addr()?),
            None => None,
        };
        let http_addr = http_listener.local_addr()?;
        let proxy_listener = crate::node::bind_proxy(&config).await?;
        let proxy_addr = match &proxy_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };

        let (serving, stop) = (ShutdownSender::new(), ShutdownSender::new());
        let front = Front::new(FrontSettings { id: config.node_id, voters, max_staleness: config.max_staleness() });
        let api = gatehouse_api::Node::new(std::sync::Arc::new(front.clone()));
        let mut tasks = front.start(stop.subscribe());
        tasks.push(gatehouse_api::audit::start_flushes(&api, &config.audit, &stop.subscribe()));
        tasks.push(last_use_flushes(&config, &api, stop.subscribe()));
        let mut pages = config.pages.load(config.mode == crate::config::Mode::Dev)?;
        let sso = crate::node::load_sso(&config, &mut pages, false)?;
        let web =
            http_front(&config, pages, api.clone(), stop.subscribe(), crate::node::Sends::To(sign_in_voters, sso));
        let mut servers = Vec::new();
        let https = https.map(|(server, material)| {
            watched.served.push(crate::reload::Served { listener: "https", material });
            server
        });
        if let Some(listener) = proxy_listener {
            servers.push(crate::node::proxy_server(listener, &web, &config, https.clone(), serving.subscribe())?);
        }
        servers.push(http_server(http_listener, &web, &config, https, serving.subscribe()));
        if let Some(listener) = metrics_listener {
            servers.push(metrics_server(listener, &web, serving.subscribe()));
        }
        if let Some(listener) = ext_authz_listener {
            servers.push(crate::node::envoy_server(listener, &web, serving.subscribe())?);
        }
        if !watched.is_empty() {
            servers.extend(crate::reload::keep_current(watched, api.clone(), serving.subscribe()));
        }
        tracing::info!(front_id = config.node_id, %http_addr, ?metrics_addr, voters = ?section.voters, "front started");
        Ok(FrontNode { front, api, http_addr, proxy_addr, metrics_addr, ext_authz_addr, serving, stop, servers, tasks })
    }

    pub fn id(&self) -> u64 {
        self.api.id()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The reverse proxy's listener (`[proxy]`), if configured.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The Envoy (ext_authz) listener, if configured.
    pub fn ext_authz_addr(&self) -> Option<SocketAddr> {
        self.ext_authz_addr
    }

    /// The replicated state as this front holds it.
    pub fn front(&self) -> &Front {
        &self.front
    }

    /// The front as its transports see it: audit recorder, last-use times, metrics.
    pub fn api(&self) -> &gatehouse_api::Node {
        &self.api
    }

    /// Waits until the front has copied the view and proven it current;
    /// false if that takes longer than `wait`.
    pub async fn wait_ready(&self, wait: Duration) -> bool {
        use gatehouse_cluster::Replica;
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if self.front.is_fresh() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.front.is_fresh()
    }

    /// Graceful stop: stop accepting, let requests finish, make the last
    /// flushes of last use and audit events to the voters, stop following.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!(front_id = self.id(), "front shutting down");
        self.serving.send();
        for s in self.servers {
            let _ = s.await;
        }
        self.stop.send();
        crate::node::stop_tasks(self.tasks).await;
        tracing::info!("front stopped");
        Ok(())
    }
}
