//! Starting and stopping one node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use std::time::Duration;

use gatehouse_api::http::{Front, FrontConfig, FrontParts, Lockout};
use gatehouse_api::passwords::PasswordPool;
use gatehouse_api::sign_in::SignIn;
use gatehouse_cluster::periodic::{Periodic, Shutdown, ShutdownSender};
use gatehouse_cluster::raft::network::Network;
use gatehouse_cluster::{Cluster, ClusterSecret, Peers};
use gatehouse_storage::types::Raft;
use gatehouse_storage::Member;
use openraft::SnapshotPolicy;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{Config, Mode};

/// A running node. Dropping it without [`Node::shutdown`] aborts its servers.
pub struct Node {
    cluster: Cluster,
    /// The same node as its transports see it (recorder, last use, metrics).
    api: gatehouse_api::Node,
    http_addr: SocketAddr,
    proxy_addr: Option<SocketAddr>,
    grpc_addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    ext_authz_addr: Option<SocketAddr>,
    advertise_addr: String,
    advertise_client_addr: String,
    /// Stops the listeners and open streams (first).
    serving: ShutdownSender,
    /// Stops the consensus loops and the tasks that propose (once the servers are done).
    stop: ShutdownSender,
    servers: Vec<JoinHandle<()>>,
    /// The periodic tasks that propose (last-use flush, audit flush and retention).
    tasks: Vec<JoinHandle<()>>,
    storage: gatehouse_storage::Storage,
    bootstrap_key: Option<String>,
    raft_rt: RaftRuntime,
}

/// The runtime Raft runs on: openraft's core, replication and state machine
/// tasks, the gRPC server (Raft RPCs and the admin API share its port) and
/// the loops that propose (batcher, audit flush, rate-limit sync, last use).
/// The process's main runtime then only answers HTTP, so a request never
/// waits behind a worker that is decoding a 150 KB `AppendEntries`.
struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl RaftRuntime {
    /// Threads: two, the size of the machine this is tuned for; Raft's work
    /// is mostly waiting on the network and the storage threads.
    const THREADS: usize = 2;

    fn new() -> anyhow::Result<RaftRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(Self::THREADS)
            .thread_name("gatehouse-raft")
            .enable_all()
            .build()
            .context("starting the Raft runtime")?;
        Ok(RaftRuntime(Some(rt)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until shutdown").handle()
    }

    /// Waits (up to 5 s) for its tasks to end; the storage they hold is
    /// closed when they do.
    async fn shutdown(mut self) {
        if let Some(rt) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(5))).await;
        }
    }
}

impl Drop for RaftRuntime {
    /// A node dropped without `shutdown` (tests, errors): stop its tasks
    /// without blocking the async context it is dropped in.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Node {
    /// Opens the store, starts Raft and both listeners, and initialises the
    /// cluster when configured to (dev mode always does, once).
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        config.validate()?;
        if config.front.is_some() {
            anyhow::bail!("this configuration has a [front] section: start it with `gatehouse front`");
        }
        crate::data_dir::prepare(&config.data_dir)?;
        let mut pages = config.pages.load(config.mode == Mode::Dev)?;
        let sso = load_sso(&config, &mut pages, true)?;
        let mail = config.mail.as_ref().map(|m| m.load(config.mode == Mode::Dev)).transpose()?;
        let secret = match config.read_cluster_secret()? {
            Some(s) => s,
            None if config.mode == Mode::Dev => dev_secret(&config.data_dir)?,
            None => anyhow::bail!("a cluster secret is required"),
        };
        let secret = ClusterSecret::new(&secret).map_err(anyhow::Error::msg)?;
        // Files re-read without a restart; any that does not load stops
        // the start before anything opens.
        let mut watched = crate::reload::Watched::default();
        if let Some(path) = &config.cluster_secret_file {
            watched.secret = Some(crate::reload::SecretFile { path: path.clone(), secret: secret.clone() });
        }
        let https = match &config.https {
            Some(h) => {
                let material = gatehouse_tls::Material::load(&h.cert_file, &h.key_file).context("[https]")?;
                watched.served.push(crate::reload::Served { listener: "https", material: material.clone() });
                Some(gatehouse_tls::server::https(&material, h.http2)?)
            }
            None => None,
        };
        // Mutual TLS between nodes: this node's certificate must bind its id.
        let cluster_tls = match &config.cluster_tls {
            Some(t) => {
                let material = gatehouse_tls::Material::load_node(&t.cert_file, &t.key_file, config.node_id)
                    .context("[cluster_tls]")?;
                let trust = gatehouse_tls::peer::Trust::load(&t.ca_file, &t.deny_serials, t.deny_file.as_deref())
                    .context("[cluster_tls]")?;
                watched.served.push(crate::reload::Served { listener: "peer", material: material.clone() });
                let server = trust.server_config(&material)?;
                Some((gatehouse_cluster::peer_tls::PeerTls::new(trust, &material)?, server))
            }
            None => None,
        };

        // The stateless fronts this voter serves.
        let fronts = match &config.fronts_file {
            Some(path) => {
                let text = crate::config::read_secret_file(path)?;
                let fronts = gatehouse_cluster::fronts::Fronts::new(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                watched.fronts = Some(crate::reload::FrontsFile { path: path.clone(), fronts: fronts.clone() });
                Some(fronts)
            }
            None => None,
        };
        let admin_tls = match &config.admin_tls {
            Some(a) => {
                let material = gatehouse_tls::Material::load(&a.cert_file, &a.key_file).context("[admin_tls]")?;
                let clients = match &a.client_ca_file {
                    Some(f) => {
                        let clients = gatehouse_tls::server::AdminClients::load(f, a.require_client_cert)
                            .context("[admin_tls]")?;
                        watched.admin_clients = Some(clients.clone());
                        Some(clients)
                    }
                    None => None,
                };
                watched.served.push(crate::reload::Served { listener: "admin", material: material.clone() });
                Some(gatehouse_tls::server::admin(&material, clients.as_ref())?)
            }
            None => None,
        };

        let grpc_listener =
            TcpListener::bind(config.grpc_addr).await.with_context(|| format!("binding gRPC {}", config.grpc_addr))?;
        let peer_listener = match config.peer_addr {
            Some(a) => Some(TcpListener::bind(a).await.with_context(|| format!("binding the peer listener {a}"))?),
            None => None,
        };
        let peer_addr = match &peer_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let http_listener =
            TcpListener::bind(config.http_addr).await.with_context(|| format!("binding HTTP {}", config.http_addr))?;
        let proxy_listener = bind_proxy(&config).await?;
        let proxy_addr = match &proxy_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let metrics_listener = match config.metrics_addr {
            Some(a) => Some(TcpListener::bind(a).await.with_context(|| format!("binding metrics {a}"))?),
            None => None,
        };
        let ext_authz_listener = bind_ext_authz(&config, &mut watched).await?;
        let ext_authz_addr = match &ext_authz_listener {
            Some(l) => Some(l.listener.local_addr()?),
            None => None,
        };
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        // Where peers reach this node, and where clients do.
        let advertise_addr =
            config.advertise_addr.clone().unwrap_or_else(|| peer_addr.unwrap_or(grpc_addr).to_string());
        let advertise_client_addr = config.advertise_client_addr.clone().unwrap_or_else(|| grpc_addr.to_string());

        let (log_store, state_machine) = gatehouse_storage::open(&config.data_dir).context("opening storage")?;
        let storage = log_store.storage();
        let log_reader = log_store.reader();
        let view = state_machine.view();
        let raft_config = openraft::Config {
            cluster_name: "gatehouse".into(),
            heartbeat_interval: config.raft.heartbeat_ms,
            election_timeout_min: config.raft.election_timeout_min_ms,
            election_timeout_max: config.raft.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.raft.snapshot_every),
            max_in_snapshot_log_to_keep: config.raft.keep_behind_snapshot,
            // Streaming a large snapshot may take a while on a slow disk.
            install_snapshot_timeout: 60_000,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate()?);
        // Production without mutual TLS sends cluster traffic to loopback only.
        let lineage = gatehouse_cluster::lineage::Lineage::load(&storage).context("reading the cluster lineage")?;
        let mut peers = Peers::new(secret)
            .with_lineage(lineage)
            .with_routes(config.peer_routes.clone())
            .loopback_only(config.mode == Mode::Production && cluster_tls.is_none());
        let peer_server_tls = match cluster_tls {
            Some((client, server)) => {
                let live = Some(client.live().clone());
                peers = peers.with_tls(client.clone());
                watched.peer = Some((client, Some(peers.clone())));
                Some(crate::grpc::ListenerTls { config: server, live })
            }
            None => None,
        };
        // Raft and everything that feeds it run on a runtime of their own:
        // decoding and encoding replication traffic never holds a worker
        // that answers requests (see `RaftRuntime`).
        let raft_rt = RaftRuntime::new()?;
        let network = Network::new(peers.clone());
        let id = config.node_id;
        let raft =
            raft_rt.handle().spawn(async move { Raft::new(id, raft_config, network, log_store, state_machine).await });
        let raft = raft.await.context("starting Raft")??;
        check_own_address(&raft, id, &advertise_addr)?;
        // Two phases: the servers drain first, then the tasks that propose
        // stop (their last flushes then see every request that finished).
        let (serving, stop) = (ShutdownSender::new(), ShutdownSender::new());
        let audit_log = gatehouse_storage::AuditLog::new(storage.clone());
        let (cluster, api, front, tasks) = {
            // Their background loops (batcher, audit flush, limit sync) go there too.
            let _raft_rt = raft_rt.handle().enter();
            let cluster =
                Cluster::new(config.node_id, raft.clone(), view, peers, config.max_staleness(), stop.subscribe());
            let api = gatehouse_api::Node::new(std::sync::Arc::new(cluster.clone()));
            let audit_tasks =
                gatehouse_api::audit::start(&api, audit_log.clone(), config.audit.clone(), &stop.subscribe());
            let mailer = match mail {
                Some(m) => Some(gatehouse_api::mail::Mailer::start(m, api.metrics().mails.clone())?),
                None => None,
            };
            let front = front(&config, pages, api.clone(), stop.subscribe(), Sends::Here(mailer, sso));
            let touches = last_use_flushes(&config, &api, stop.subscribe());
            let recheck = gatehouse_api::sso::recheck::start(front.clone(), stop.subscribe());
            let every = Duration::from_secs(config.secrets.reseal_secs);
            let reseal = gatehouse_api::reseal::start(front.clone(), every, stop.subscribe());
            let first_key =
                gatehouse_api::jwt::rotate::start_first_key(front.clone(), Duration::from_secs(1), stop.subscribe());
            let tasks = [touches].into_iter().chain(recheck).chain(reseal).chain(first_key).chain(audit_tasks);
            (cluster, api, front, tasks)
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(gatehouse_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building gRPC reflection")?;
        let streams = gatehouse_api::admin::streams::Streams::default();
        let auth_failures = || {
            config.rate_limits.enabled.then(|| {
                gatehouse_api::admin::failures::FailureGate::new(config.rate_limits.admin_auth_failures_per_minute)
            })
        };
        let follow_service = fronts.clone().map(|fronts| {
            let stopping = serving.subscribe();
            // A front's writes, checked against this voter's own settings.
            let policies = Arc::new(front.limits.policies_config().to_vec());
            let gate: gatehouse_cluster::follow::FrontGate =
                Arc::new(move |id, cmd| gatehouse_api::front_writes::check(&policies, id, cmd));
            let (c, s, l) = (cluster.clone(), storage.clone(), log_reader.clone());
            gatehouse_cluster::follow::server(c, s, l, fronts, stopping, gate)
        });
        let sign_in_service =
            fronts.map(|fronts| gatehouse_api::sign_in::service::server(front.clone(), fronts, cluster.clone()));
        let raft_service = gatehouse_cluster::raft::service::server(cluster.clone());
        let control_service = gatehouse_cluster::control::server(cluster.clone(), storage.clone());
        let cluster_admin = gatehouse_api::admin::cluster::server(api.clone(), cluster.clone(), storage.clone());
        let client_router = crate::grpc::builder(&api, auth_failures())
            .add_service(health_service)
            .add_service(reflection)
            .add_service(gatehouse_api::admin::events::server(
                api.clone(),
                log_reader,
                serving.subscribe(),
                streams.clone(),
            ))
            .add_service(cluster_admin.clone())
            .add_service(gatehouse_api::admin::users::server(api.clone(), cluster.clone(), front.passwords.clone()))
            .add_service(gatehouse_api::admin::keys::server(api.clone(), cluster.clone()))
            .add_service(gatehouse_api::admin::sessions::server(api.clone(), cluster.clone()))
            .add_service(gatehouse_api::admin::roles::server(api.clone()))
            .add_service(gatehouse_api::admin::jwt::server(front.clone()))
            .add_service(gatehouse_api::admin::audit::server(api.clone(), audit_log, streams));
        let mut grpc = Vec::new();
        match peer_listener {
            // Peers on a port of their own.
            Some(listener) => {
                // Membership calls sent on by a follower: a node of the
                // cluster (the secret, a member's certificate) carrying the
                // caller's key, which the service checks as on the client port.
                let gate = cluster.clone();
                let forwarded_admin =
                    tonic::service::interceptor::InterceptedService::new(cluster_admin, move |r| gate.admit_control(r));
                let peer_router = crate::grpc::builder(&api, auth_failures())
                    .add_service(raft_service)
                    .add_service(control_service)
                    .add_service(forwarded_admin)
                    .add_optional_service(follow_service)
                    .add_optional_service(sign_in_service);
                let rt = raft_rt.handle();
                let stop = serving.subscribe();
                grpc.push(crate::grpc::serve(rt, listener, peer_router, stop, "peer", peer_server_tls)?);
                grpc.push(crate::grpc::serve(
                    rt,
                    grpc_listener,
                    client_router,
                    serving.subscribe(),
                    "client",
                    admin_tls.map(|config| crate::grpc::ListenerTls { config, live: None }),
                )?);
            }
            None => {
                let router = client_router
                    .add_service(raft_service)
                    .add_service(control_service)
                    .add_optional_service(follow_service)
                    .add_optional_service(sign_in_service);
                let rt = raft_rt.handle();
                grpc.push(crate::grpc::serve(rt, grpc_listener, router, serving.subscribe(), "client", None)?);
            }
        }
        let mut servers = Vec::new();
        if let Some(listener) = proxy_listener {
            servers.push(proxy_server(listener, &front, &config, https.clone(), serving.subscribe())?);
        }
        servers.push(http_server(http_listener, &front, &config, https, serving.subscribe()));
        if !watched.is_empty() {
            servers.extend(crate::reload::keep_current(watched, api.clone(), serving.subscribe()));
        }
        if let Some(listener) = metrics_listener {
            servers.push(metrics_server(listener, &front, serving.subscribe()));
        }
        if let Some(listener) = ext_authz_listener {
            servers.push(envoy_server(listener, &front, serving.subscribe())?);
        }
        let readiness = raft_rt.handle().spawn(report_health(cluster.clone(), health, serving.subscribe()));
        tracing::info!(node_id = config.node_id, %grpc_addr, %http_addr, ?metrics_addr, advertise = %advertise_addr, "node started");

        let mut node = Node {
            cluster,
            api,
            http_addr,
            proxy_addr,
            grpc_addr,
            peer_addr,
            metrics_addr,
            ext_authz_addr,
            advertise_addr,
            advertise_client_addr,
            serving,
            stop,
            servers: servers.into_iter().chain(grpc).chain([readiness]).collect(),
            tasks: tasks.collect(),
            storage,
            bootstrap_key: None,
            raft_rt,
        };
        if config.initialize {
            let members = if config.mode == Mode::Dev && config.initial_members.is_empty() {
                BTreeMap::from([(
                    config.node_id,
                    Member::split(node.advertise_addr.clone(), node.advertise_client_addr.clone()),
                )])
            } else {
                config.initial_members.iter().map(|m| (m.id, m.member())).collect()
            };
            let key_file = config.bootstrap_admin_key_file.as_deref();
            // First start; or a restart after a crash between writing the
            // key file and proposing its admin (the file is there, no user is).
            let unfinished = key_file.is_some_and(Path::exists) && node.cluster.view().read().users().next().is_none();
            if node.initialize(members).await? || unfinished {
                node.bootstrap_key = crate::bootstrap::first_admin(&node.cluster, key_file).await?;
            }
        }
        crate::recovery::resume(&node.api, &config.data_dir, node.stop.subscribe());
        crate::forced_recovery::audit_on_start(&node.api, &config.data_dir, node.stop.subscribe());
        crate::restore::audit_on_start(&node.api, &config.data_dir, node.stop.subscribe());
        Ok(node)
    }

    /// Initialises a new cluster with these members (id → addresses).
    /// Returns false if this node's store was already initialised.
    pub async fn initialize(&self, members: BTreeMap<u64, impl Into<Member>>) -> anyhow::Result<bool> {
        let raft = self.cluster.raft();
        if raft.is_initialized().await? {
            return Ok(false);
        }
        let nodes: BTreeMap<u64, Member> = members.into_iter().map(|(id, m)| (id, m.into())).collect();
        // The new cluster's id, stored before any call carries it.
        if let Some(lineage) = self.cluster.peers().lineage() {
            lineage.mint().context("storing the new cluster's lineage")?;
        }
        raft.initialize(nodes).await.context("initialising the cluster")?;
        tracing::info!(node_id = self.cluster.id(), "cluster initialised");
        Ok(true)
    }

    pub fn id(&self) -> u64 {
        self.cluster.id()
    }

    /// The consensus handle (Raft, the view, proposing).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The node as its transports see it: audit recorder, last-use times, metrics.
    pub fn api(&self) -> &gatehouse_api::Node {
        &self.api
    }

    /// This node's audit records (read-only).
    pub fn audit_log(&self) -> gatehouse_storage::AuditLog {
        gatehouse_storage::AuditLog::new(self.storage.clone())
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The reverse proxy's listener (`[proxy]`), if configured.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy_addr
    }

    /// The separate metrics listener, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The Envoy (ext_authz) listener, if configured.
    pub fn ext_authz_addr(&self) -> Option<SocketAddr> {
        self.ext_authz_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The address other nodes reach this one at.
    pub fn advertise_addr(&self) -> &str {
        &self.advertise_addr
    }

    /// The peer listener's bound address, when peers have a port of their own.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The address clients reach this node's admin API at.
    pub fn advertise_client_addr(&self) -> &str {
        &self.advertise_client_addr
    }

    /// The first admin API key, if this start created it (dev mode prints it once).
    pub fn take_bootstrap_key(&mut self) -> Option<String> {
        self.bootstrap_key.take()
    }

    /// Graceful stop: stop accepting, let in-flight requests finish, stop
    /// Raft, sync the WAL.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!(node_id = self.id(), "shutting down");
        self.serving.send();
        for s in self.servers {
            let _ = s.await;
        }
        // Every request has finished: the tasks' last flushes take what it recorded.
        self.stop.send();
        stop_tasks(self.tasks).await;
        if let Err(e) = self.cluster.raft().shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.storage.sync().context("syncing storage")?;
        self.raft_rt.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long the tasks that propose get to finish their last step on the way
/// out (a last flush, a retention check under way).
const TASKS_STOP: Duration = Duration::from_secs(5);

/// Waits for `tasks` (told to stop) for up to [`TASKS_STOP`] together, then
/// aborts those still running.
pub(crate) async fn stop_tasks(tasks: Vec<JoinHandle<()>>) {
    let deadline = tokio::time::Instant::now() + TASKS_STOP;
    for mut t in tasks {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            tracing::warn!("a background task did not stop in time; aborted");
            t.abort();
        }
    }
}

/// Where a front's sign-ins are decided.
pub(crate) enum Sends {
    /// Here, on a voter, with its mailer for sign-in links (`[mail]`) and
    /// its upstream providers (`[sso]`).
    Here(Option<gatehouse_api::mail::Mailer>, Option<Arc<gatehouse_api::sso::Sso>>),
    /// On these voters, for a stateless front (its providers only name
    /// the buttons and routes).
    To(gatehouse_cluster::front::Voters, Option<Arc<gatehouse_api::sso::Sso>>),
}

/// The HTTP front's settings and shared parts.
pub(crate) fn front(
    config: &Config,
    pages: Option<gatehouse_api::pages::PagesConfig>,
    node: gatehouse_api::Node,
    shutdown: Shutdown,
    sends: Sends,
) -> Front {
    let id = &config.identity;
    let fc = FrontConfig {
        secure_cookies: config.mode != Mode::Dev,
        cookie_name: gatehouse_api::http::caller::cookie_name(
            &id.cookie_name,
            config.mode != Mode::Dev,
            id.cookie_domain.as_deref(),
        ),
        cookie_domain: id.cookie_domain.clone(),
        session_ttl: Duration::from_secs(id.session_ttl_secs),
        session_idle: Duration::from_secs(id.session_idle_secs),
        metrics_on_front: config.metrics_on_front(),
        lockout: Lockout {
            threshold: id.lockout_threshold,
            user_threshold: id.lockout_user_threshold,
            window: Duration::from_secs(id.lockout_window_secs),
            duration: Duration::from_secs(id.lockout_secs),
        },
        routes: id.routes.clone(),
        hsts: config.https.as_ref().and_then(|h| h.hsts_header()),
        pages: pages.map(Arc::new),
        bind_sessions: id.bind_sessions,
        password_users: (!config.sso.password_sign_in).then(|| config.sso.break_glass_users.clone()),
        // Checked by `Config::validate`, as every start does first.
        cors: gatehouse_api::http::cors::Cors::new(&id.cors_origins, config.mode == Mode::Dev).unwrap_or_default(),
    };
    let passwords = PasswordPool::new(id.password_workers, id.password_queue);
    let limits = gatehouse_api::rate_limit::Limiter::start(node.clone(), config.rate_limits.clone(), shutdown);
    let (sign_in, limits, mailer, sso) = match sends {
        Sends::To(v, sso) => (
            SignIn::Voters(gatehouse_api::sign_in::forward::VoterSignIn::new(v)),
            limits.logins_checked_elsewhere(),
            None,
            sso,
        ),
        Sends::Here(mailer, sso) => (SignIn::Here(passwords.clone()), limits, mailer, sso),
    };
    // The sealer (TOTP secrets) only where codes are checked: a voter.
    let sealer = if matches!(sign_in, SignIn::Here(_)) { config.secrets.load().ok().flatten() } else { None };
    let brand = fc.pages.as_ref().map(|p| p.brand.product_name.clone());
    // Checked by `Config::validate`, as every start does first.
    let mfa = config.mfa.load(brand.as_deref()).unwrap_or_default();
    let mfa = Arc::new(gatehouse_api::mfa::Mfa::new(mfa, sealer));
    // Checked by `Config::validate`, as every start does first.
    let jwt = config.jwt.as_ref().and_then(|j| j.load().ok()).map(|j| Arc::new(gatehouse_api::jwt::Jwt::new(j)));
    Front::new(FrontParts { limits, node, config: Arc::new(fc), passwords, sign_in, mailer, sso, mfa, jwt })
}

/// The upstream providers (`[sso]`; on a voter with `[secrets]` and the
/// client secrets), with their buttons and the password form's fate
/// written into the pages.
pub(crate) fn load_sso(
    config: &Config,
    pages: &mut Option<gatehouse_api::pages::PagesConfig>,
    voter: bool,
) -> anyhow::Result<Option<Arc<gatehouse_api::sso::Sso>>> {
    let Some(sso) = config.sso.load(voter, config.mode == Mode::Dev)? else { return Ok(None) };
    let sealer = if voter { config.secrets.load()? } else { None };
    let Some(pages) = pages.as_mut() else { anyhow::bail!("[sso] needs the pages") };
    let public_url = pages.public_url.clone().context("[sso] needs pages.public_url")?;
    pages.providers = sso.providers.iter().map(|p| (p.id.clone(), p.name.clone())).collect();
    pages.password_form = sso.password_sign_in;
    let sso = gatehouse_api::sso::Sso::new(sso, &public_url, sealer).map_err(anyhow::Error::msg)?;
    Ok(Some(Arc::new(sso)))
}

/// Flushes the last-use times of sessions and keys this node saw
/// (coalesced per node, see identity.rs) every `touch_flush_ms`; on the way
/// out, a last flush is best effort: last-use times are advisory, and peers
/// may already be gone.
pub(crate) fn last_use_flushes(config: &Config, api: &gatehouse_api::Node, stop: Shutdown) -> JoinHandle<()> {
    let every = Duration::from_millis(config.identity.touch_flush_ms.max(100));
    let (step, last) = (api.clone(), api.clone());
    Periodic::every("last_use.flush", every, stop).starting_now().run_then(
        move || {
            let node = step.clone();
            async move {
                node.last_use().flush(&node).await;
                true
            }
        },
        Duration::from_secs(1),
        move || async move { last.last_use().flush(&last).await },
    )
}

/// Serves the HTTP front on `listener` (HTTPS with `https`) until `stop`,
/// then drains for up to 5 s.
pub(crate) fn http_server(
    listener: TcpListener,
    front: &Front,
    config: &Config,
    https: Option<Arc<rustls::ServerConfig>>,
    mut stop: Shutdown,
) -> JoinHandle<()> {
    let app = gatehouse_api::http::router(front.clone());
    let limits = config.http.clone();
    let metrics = front.node.metrics();
    let connections = gatehouse_api::http::serve::Connections {
        open: metrics.http_connections.clone(),
        accepted: metrics.http_connections_accepted.clone(),
    };
    tokio::spawn(async move {
        let shutdown = async move {
            stop.wait().await;
        };
        let drain = Duration::from_secs(5);
        gatehouse_api::http::serve::serve(listener, app, limits, https, connections, shutdown, drain).await;
    })
}

/// The reverse proxy's listener (`[proxy] listen`), when configured.
pub(crate) async fn bind_proxy(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    let Some(p) = &config.proxy else { return Ok(None) };
    Ok(Some(TcpListener::bind(p.listen).await.with_context(|| format!("binding the proxy {}", p.listen))?))
}

/// Serves reverse-proxy mode on `listener` (HTTPS with `https`), with the
/// front's limits but no whole-request timeout: an upload or a stream may
/// last as long as it moves (`[proxy] idle_timeout` and
/// `first_byte_timeout` bound it instead).
pub(crate) fn proxy_server(
    listener: TcpListener,
    front: &Front,
    config: &Config,
    https: Option<Arc<rustls::ServerConfig>>,
    mut stop: Shutdown,
) -> anyhow::Result<JoinHandle<()>> {
    let settings = config.proxy.as_ref().context("[proxy]")?.load()?;
    let idle = settings.idle_timeout;
    let proxy =
        gatehouse_api::proxy::Proxy::new(front.clone(), settings, https.is_some()).map_err(anyhow::Error::msg)?;
    let app = gatehouse_api::proxy::router(proxy);
    let stall_ms = Some(idle.as_millis() as u64);
    let limits = gatehouse_api::http::serve::ServeLimits {
        request_timeout_ms: 30 * 86_400_000,
        stall_ms,
        strict_framing: true,
        ..config.http.clone()
    };
    let metrics = front.node.metrics();
    let connections = gatehouse_api::http::serve::Connections {
        open: metrics.proxy_connections.clone(),
        accepted: metrics.proxy_connections_accepted.clone(),
    };
    Ok(tokio::spawn(async move {
        let shutdown = async move {
            stop.wait().await;
        };
        let drain = Duration::from_secs(5);
        gatehouse_api::http::serve::serve(listener, app, limits, https, connections, shutdown, drain).await;
    }))
}

/// The Envoy listener, when configured, and the secret its calls carry
/// (watched for changes in `watched`).
pub(crate) struct EnvoyListener {
    pub listener: TcpListener,
    pub secret: Option<ClusterSecret>,
}

/// Binds the Envoy listener and reads its secret, when configured.
pub(crate) async fn bind_ext_authz(
    config: &Config,
    watched: &mut crate::reload::Watched,
) -> anyhow::Result<Option<EnvoyListener>> {
    let Some(a) = config.ext_authz_addr else { return Ok(None) };
    let secret = match &config.ext_authz_secret_file {
        Some(path) => {
            let text = crate::config::read_secret_file(path)?;
            let secret = ClusterSecret::new(&text)
                .map_err(|e| anyhow::anyhow!("ext_authz_secret_file {}: {e}", path.display()))?;
            watched.envoy_secret = Some(crate::reload::SecretFile { path: path.clone(), secret: secret.clone() });
            Some(secret)
        }
        None => None,
    };
    let listener = TcpListener::bind(a).await.with_context(|| format!("binding ext_authz {a}"))?;
    Ok(Some(EnvoyListener { listener, secret }))
}

/// Serves Envoy's ext_authz and rate limit service on `listener` until
/// `stop`: on the runtime that answers HTTP, as `/auth/verify` is (ext_authz
/// runs the same router).
pub(crate) fn envoy_server(envoy: EnvoyListener, front: &Front, stop: Shutdown) -> anyhow::Result<JoinHandle<()>> {
    use tonic::service::interceptor::InterceptedService;
    let (a, b) = (envoy.secret.clone(), envoy.secret);
    let check = InterceptedService::new(gatehouse_api::envoy::ext_authz::server(front.clone()), move |r| {
        gatehouse_api::envoy::admit(a.as_ref(), r)
    });
    let limits = InterceptedService::new(gatehouse_api::envoy::rls::server(front), move |r| {
        gatehouse_api::envoy::admit(b.as_ref(), r)
    });
    let router = crate::grpc::builder(&front.node, None).add_service(check).add_service(limits);
    crate::grpc::serve(&tokio::runtime::Handle::current(), envoy.listener, router, stop, "ext_authz", None)
}

/// Serves `GET /metrics` on a listener of its own until `stop`.
pub(crate) fn metrics_server(listener: TcpListener, front: &Front, mut stop: Shutdown) -> JoinHandle<()> {
    let app = gatehouse_api::http::metrics_router(front.clone());
    tokio::spawn(async move {
        let shutdown = async move {
            stop.wait().await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    })
}

/// Starts a node and runs it until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let node = Node::start(config).await?;
    shutdown.await;
    node.shutdown().await
}

/// Refuses to start where the membership records this node at another
/// peer address: the other members would keep dialling the old one and
/// never reach it (turning on `peer_addr` for a member, say). A node alone
/// in its cluster is only warned: nobody dials it.
fn check_own_address(raft: &Raft, id: u64, advertised: &str) -> anyhow::Result<()> {
    let m = raft.metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    let Some(recorded) = membership.get_node(&id) else { return Ok(()) };
    if recorded.addr == advertised {
        return Ok(());
    }
    if membership.nodes().count() == 1 {
        tracing::warn!(recorded = %recorded.addr, advertised, "this node is recorded at another address");
        return Ok(());
    }
    anyhow::bail!(
        "node {id} is a member at {}, but advertises {advertised}: the other members would never reach it. \
         Start it with advertise_addr = \"{}\" (and the listener that serves it), or remove node {id} from the \
         cluster, empty its data directory and add it again at the new address (docs/tls.md)",
        recorded.addr,
        recorded.addr
    )
}

/// The dev node's cluster secret: made once, kept in the data directory (0600).
fn dev_secret(dir: &std::path::Path) -> anyhow::Result<String> {
    let path = dir.join("cluster-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_string());
    }
    std::fs::create_dir_all(dir)?;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let secret = hex::encode(b);
    crate::bootstrap::write_private(&path, &secret)?;
    Ok(secret)
}

/// Services named in the gRPC health service, besides the whole server ("").
const HEALTH_SERVICES: [&str; 8] = [
    "",
    "gatehouse.admin.v1.ClusterService",
    "gatehouse.admin.v1.UserService",
    "gatehouse.admin.v1.KeyService",
    "gatehouse.admin.v1.SessionService",
    "gatehouse.admin.v1.RoleService",
    "gatehouse.admin.v1.EventService",
    "gatehouse.admin.v1.AuditService",
];

/// Keeps the standard gRPC health service in step with readiness (the same
/// rule as `/readyz`: a proof of freshness within `max_staleness`), so
/// `grpc-health-probe` and load balancers see what the node can do.
async fn report_health(cluster: Cluster, health: tonic_health::server::HealthReporter, mut stop: Shutdown) {
    use tonic_health::ServingStatus;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait() => break,
        }
        let ready = cluster.is_fresh();
        if last != Some(ready) {
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            for name in HEALTH_SERVICES {
                health.set_service_status(name, status).await;
            }
            tracing::info!(ready, "gRPC health status changed");
            last = Some(ready);
        }
    }
    for name in HEALTH_SERVICES {
        health.set_service_status(name, ServingStatus::NotServing).await;
    }
}
