//! What a node re-reads without a restart: its TLS listeners' certificates
//! (the HTTPS front's, its peer and admin certificates), the cluster's CA
//! bundle and deny file, the admin client CA bundle, the cluster secret
//! file, and the fronts file (the stateless fronts a voter serves). All are loaded at
//! start (a file that does not load stops the start with its reason), then
//! checked for changes every [`RELOAD_CHECK`] and at once on SIGHUP. A
//! changed file that loads is used from then on (new connections get a new
//! certificate; a new secret list is sent and accepted at once); one that
//! does not is refused, counted, logged, and what is in use stays.
//!
//! Each tick also holds the open connections between nodes to the trust in
//! force ([`gatehouse_cluster::live`]): a peer whose certificate was denied,
//! expired, or whose CA left the bundle is cut off within one tick.
//! Each certificate's expiry is a gauge in `/metrics`
//! (`gatehouse_tls_certificate_expiry_timestamp_seconds{listener}`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_api::metrics::{ListenerLabels, Metrics, OutcomeLabels, ReloadLabels};
use gatehouse_api::Node;
use gatehouse_cluster::peer_tls::PeerTls;
use gatehouse_cluster::periodic::{Periodic, Shutdown};
use gatehouse_cluster::{ClusterSecret, Peers};
use gatehouse_tls::Material;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How often the files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// One listener's certificate and key.
#[derive(Clone)]
pub struct Served {
    pub listener: &'static str,
    pub material: Material,
}

/// A secret (the cluster's, Envoy's) and the file it is read from.
#[derive(Clone)]
pub struct SecretFile {
    pub path: PathBuf,
    pub secret: ClusterSecret,
}

/// The fronts a voter serves and the file they are read from.
#[derive(Clone)]
pub struct FrontsFile {
    pub path: PathBuf,
    pub fronts: gatehouse_cluster::fronts::Fronts,
}

/// Everything [`keep_current`] re-reads.
#[derive(Clone, Default)]
pub struct Watched {
    pub served: Vec<Served>,
    /// Mutual TLS between nodes: the CA bundle and deny file, and the open
    /// connections held to them; the channels that move to new connections
    /// when this node's peer certificate or the trust changes.
    /// (A front's voters reconnect by themselves: no `Peers` there.)
    pub peer: Option<(PeerTls, Option<Peers>)>,
    pub secret: Option<SecretFile>,
    /// The CA bundle admin callers' certificates must chain to.
    pub admin_clients: Option<gatehouse_tls::server::AdminClients>,
    /// The stateless fronts this voter serves.
    pub fronts: Option<FrontsFile>,
    /// The secret Envoy's calls carry.
    pub envoy_secret: Option<SecretFile>,
}

impl Watched {
    pub fn is_empty(&self) -> bool {
        self.served.is_empty()
            && self.peer.is_none()
            && self.secret.is_none()
            && self.admin_clients.is_none()
            && self.fronts.is_none()
            && self.envoy_secret.is_none()
    }
}

/// Keeps `watched` current until `stop`: a reload at every [`RELOAD_CHECK`]
/// and on SIGHUP.
pub fn keep_current(watched: Watched, node: Node, stop: Shutdown) -> Vec<JoinHandle<()>> {
    for s in &watched.served {
        expiry(node.metrics(), s);
    }
    let hup = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    #[cfg(unix)]
    {
        let (hup, mut stop) = (hup.clone(), stop.clone());
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut signals) => tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        got = signals.recv() => match got {
                            Some(()) => {
                                tracing::info!("SIGHUP: reloading certificates, CA bundle, deny file and secret");
                                hup.notify_one();
                            }
                            None => return,
                        },
                        _ = stop.wait() => return,
                    }
                }
            })),
            Err(e) => tracing::warn!(error = %e, "no SIGHUP handler; the files are still checked periodically"),
        }
    }
    tasks.push(Periodic::every("reload", RELOAD_CHECK, stop).woken_by(hup).run(move || {
        let (watched, node) = (watched.clone(), node.clone());
        async move {
            reload(&watched, node.metrics());
            true
        }
    }));
    tasks
}

/// What one file's reload came to, for the counters: nothing (unchanged),
/// `reloaded`, or `refused` (logged as what is named by `what`, with the
/// reason; what is in use stays).
fn outcome<E: std::fmt::Display>(result: Result<bool, E>, what: &str) -> Option<&'static str> {
    match result {
        Ok(false) => None,
        Ok(true) => Some("reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "new {what} refused; the one in use stays");
            Some("refused")
        }
    }
}

/// One pass over everything watched.
pub fn reload(watched: &Watched, metrics: &Metrics) {
    let mut peer_changed = false;
    for s in &watched.served {
        let changed = reload_served(metrics, s);
        peer_changed |= changed && s.listener == "peer";
    }
    let tls_counted = |listener, outcome: Option<&'static str>| {
        if let Some(outcome) = outcome {
            metrics.tls_reloads.get_or_create(&ReloadLabels { listener, outcome }).inc();
        }
        outcome
    };
    if let Some((peer, peers)) = &watched.peer {
        let trust = tls_counted("peer-ca", outcome(peer.trust().reload(), "cluster CA bundle or deny file"));
        // Every tick, not only after a change: certificates expire too.
        let rechecked = peer.recheck();
        metrics.peer_connections_closed.inc_by(rechecked.closed as u64);
        metrics.peer_connections_failing.set(rechecked.doomed as i64);
        // New calls to peers go over new handshakes, made with what is in
        // use now; connections about to be closed are left to the calls
        // already under way on them.
        if peer_changed || trust == Some("reloaded") || rechecked.doomed > 0 {
            if let Some(peers) = peers {
                peers.drop_channels();
            }
        }
    }
    if let Some(clients) = &watched.admin_clients {
        tls_counted("admin-ca", outcome(clients.reload(), "admin client CA bundle"));
    }
    for (s, what, counter) in [
        (&watched.secret, "cluster secret file", &metrics.secret_reloads),
        (&watched.envoy_secret, "Envoy secret file", &metrics.envoy_secret_reloads),
    ] {
        let Some(s) = s else { continue };
        let read = crate::config::read_secret_file(&s.path).map_err(|e| e.to_string());
        let secret = outcome(read.and_then(|text| s.secret.replace(&text)), what);
        if secret == Some("reloaded") {
            tracing::info!(file = %s.path.display(), accepted = s.secret.accepted(), "{what} reloaded");
        }
        if let Some(outcome) = secret {
            counter.get_or_create(&OutcomeLabels { outcome }).inc();
        }
    }
    if let Some(f) = &watched.fronts {
        let read = crate::config::read_secret_file(&f.path).map_err(|e| e.to_string());
        let fronts = outcome(read.and_then(|text| f.fronts.replace(&text)), "fronts file");
        if fronts == Some("reloaded") {
            tracing::info!(file = %f.path.display(), fronts = f.fronts.len(), "fronts file reloaded");
        }
        if let Some(outcome) = fronts {
            metrics.fronts_reloads.get_or_create(&OutcomeLabels { outcome }).inc();
        }
    }
}

/// Reloads one listener's pair; whether a new one is in use.
fn reload_served(metrics: &Metrics, s: &Served) -> bool {
    let what = format!("certificate and key of the {} listener", s.listener);
    let Some(outcome) = outcome(s.material.reload(), &what) else { return false };
    metrics.tls_reloads.get_or_create(&ReloadLabels { listener: s.listener, outcome }).inc();
    expiry(metrics, s);
    outcome == "reloaded"
}

fn expiry(metrics: &Metrics, s: &Served) {
    metrics.tls_expiry.get_or_create(&ListenerLabels { listener: s.listener }).set(s.material.info().not_after);
}
