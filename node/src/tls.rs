//! The node's TLS listeners' material (the HTTPS front's certificate, this
//! node's peer certificate and the cluster's CA bundle): loaded at start (a
//! file that does not load stops the start with its reason), then checked
//! for new files every
//! [`RELOAD_CHECK`] and at once on SIGHUP. A new pair is used for new
//! connections; a bad one is refused, counted, logged, and the pair in use
//! stays. Each certificate's expiry is a gauge in `/metrics`
//! (`gatehouse_tls_certificate_expiry_timestamp_seconds{listener}`).

use std::sync::Arc;
use std::time::Duration;

use gatehouse_api::metrics::{ListenerLabels, Metrics, ReloadLabels};
use gatehouse_api::Node;
use gatehouse_cluster::periodic::{Periodic, Shutdown};
use gatehouse_tls::peer::Trust;
use gatehouse_tls::Material;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How often the certificate files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// One listener's certificate and key.
#[derive(Clone)]
pub struct Served {
    pub listener: &'static str,
    pub material: Material,
}

/// Keeps `served` current until `stop`: a reload at every [`RELOAD_CHECK`]
/// and on SIGHUP.
pub fn keep_current(served: Vec<Served>, trusts: Vec<Trust>, node: Node, stop: Shutdown) -> Vec<JoinHandle<()>> {
    for s in &served {
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
                                tracing::info!("SIGHUP: reloading TLS certificates");
                                hup.notify_one();
                            }
                            None => return,
                        },
                        _ = stop.wait() => return,
                    }
                }
            })),
            Err(e) => tracing::warn!(error = %e, "no SIGHUP handler; TLS files are still checked periodically"),
        }
    }
    tasks.push(Periodic::every("tls.reload", RELOAD_CHECK, stop).woken_by(hup).run(move || {
        let (served, trusts, node) = (served.clone(), trusts.clone(), node.clone());
        async move {
            for s in &served {
                reload(node.metrics(), s);
            }
            for t in &trusts {
                let outcome = match t.reload() {
                    Ok(false) => continue,
                    Ok(true) => "reloaded",
                    Err(e) => {
                        tracing::error!(error = %e, "new cluster CA bundle refused; the one in use stays");
                        "refused"
                    }
                };
                node.metrics().tls_reloads.get_or_create(&ReloadLabels { listener: "peer-ca", outcome }).inc();
            }
            true
        }
    }));
    tasks
}

fn reload(metrics: &Metrics, s: &Served) {
    let outcome = match s.material.reload() {
        Ok(false) => return,
        Ok(true) => "reloaded",
        Err(e) => {
            tracing::error!(listener = s.listener, error = %e, "new TLS files refused; the certificate in use stays");
            "refused"
        }
    };
    metrics.tls_reloads.get_or_create(&ReloadLabels { listener: s.listener, outcome }).inc();
    expiry(metrics, s);
}

fn expiry(metrics: &Metrics, s: &Served) {
    metrics.tls_expiry.get_or_create(&ListenerLabels { listener: s.listener }).set(s.material.info().not_after);
}
