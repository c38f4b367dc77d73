//! Rotation without downtime, on a cluster with mutual TLS between nodes:
//! the CA, every node's certificate and the cluster secret are replaced
//! while a writer and a verifier run, and not one of their operations fails.
//! A serial put in the deny file cuts a node off without a restart, open
//! connections included.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pki::Pki;
use common::{base, create_key, http, wait_until, write_user, TestCluster};
use gatehouse::Node;
use gatehouse_api::metrics::{OutcomeLabels, ReloadLabels};
use gatehouse_cluster::Cluster;
use gatehouse_domain::Payload;
use gatehouse_proto::control::LocalStatusRequest;
use gatehouse_tls::issue::new_ca;

/// Every node in this process re-reads its files now (each one's SIGHUP
/// handler is installed at its start).
fn hup() {
    // SAFETY: kill(2) on our own pid with a signal every node handles.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGHUP);
    }
}

fn reloads(node: &Node, listener: &'static str) -> u64 {
    node.api().metrics().tls_reloads.get_or_create(&ReloadLabels { listener, outcome: "reloaded" }).get()
}

fn secret_reloads(node: &Node) -> u64 {
    node.api().metrics().secret_reloads.get_or_create(&OutcomeLabels { outcome: "reloaded" }).get()
}

/// Sends SIGHUP (again every 200 ms) until every node counts `n` reloads by `count`.
async fn reloaded(c: &TestCluster, what: &str, n: u64, count: impl Fn(&Node) -> u64) {
    let mut polls = 0u32;
    wait_until(what, Duration::from_secs(20), || {
        if polls.is_multiple_of(10) {
            hup();
        }
        polls += 1;
        let done = c.nodes.values().all(|node| count(node) >= n);
        async move { done }
    })
    .await;
}

/// A writer (through every node in turn, so most writes are forwarded over
/// a peer link) and a verifier (on every node, so followers prove their
/// freshness over peer links), counting what failed.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    /// The step of the rotation under way, named in each failure.
    step: Arc<Mutex<&'static str>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(c: &TestCluster, key: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done: Arc<AtomicU64> = Arc::default();
        let failed: Arc<Mutex<Vec<String>>> = Arc::default();
        let step = Arc::new(Mutex::new("start"));
        let mut tasks = Vec::new();
        let nodes: Vec<Cluster> = c.nodes.values().map(|n| n.cluster().clone()).collect();
        {
            let (stop, done, failed, nodes) = (stop.clone(), Arc::clone(&done), Arc::clone(&failed), nodes.clone());
            let step = step.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let node = &nodes[(i % 3) as usize];
                    let user = Payload::CreateUser(gatehouse_proto::events::CreateUser {
                        user_id: gatehouse_cluster::ids::new_id(),
                        username: format!("load-{i}"),
                        email: format!("load-{i}@example.com"),
                        password_hash: String::new(),
                        roles: vec!["viewer".into()],
                    });
                    match node.propose_one(node.command(user)).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            let step = *step.lock().unwrap();
                            failed.lock().unwrap().push(format!("{step}: write via node {}: {e}", node.id()));
                            0
                        }
                    };
                    i += 1;
                }
            }));
        }
        {
            let (stop, done, failed, step) = (stop.clone(), Arc::clone(&done), Arc::clone(&failed), step.clone());
            let urls: Vec<String> = c.nodes.values().map(|n| format!("{}/auth/verify", base(n))).collect();
            tasks.push(tokio::spawn(async move {
                let client = http();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let url = &urls[i % 3];
                    match client.get(url).bearer_auth(&key).send().await {
                        Ok(r) if r.status() == 200 => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failed.lock().unwrap().push(format!(
                            "{}: verify at {url}: {}",
                            step.lock().unwrap(),
                            r.status()
                        )),
                        Err(e) => {
                            failed.lock().unwrap().push(format!("{}: verify at {url}: {e}", step.lock().unwrap()))
                        }
                    }
                    i += 1;
                }
            }));
        }
        Load { stop, done, failed, step, tasks }
    }

    fn step(&self, name: &'static str) {
        *self.step.lock().unwrap() = name;
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Lets at least `n` more operations through.
    async fn runs(&self, n: u64) {
        let target = self.done() + n;
        wait_until("the load makes progress", Duration::from_secs(20), || {
            let ok = self.done() >= target;
            async move { ok }
        })
        .await;
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.done.load(Ordering::Relaxed), self.failed.lock().unwrap().clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ca_every_certificate_and_the_secret_rotate_under_load_with_no_failed_operation() {
    let pki = Pki::new();
    let secret_file = |cfg: &gatehouse::config::Config| cfg.data_dir.with_extension("secret");
    let c = TestCluster::start_with(3, |cfg| {
        cfg.peer_addr = Some("127.0.0.1:0".parse().unwrap());
        cfg.cluster_tls = Some(pki.config(cfg.node_id, &[]));
        // The secret from a file of each node's own, which it re-reads.
        let secret = cfg.cluster_secret.take().unwrap();
        std::fs::create_dir_all(cfg.data_dir.parent().unwrap()).unwrap();
        std::fs::write(secret_file(cfg), secret.expose()).unwrap();
        cfg.cluster_secret_file = Some(secret_file(cfg));
    })
    .await;
    let key = create_key(c.node(1), "rotation-reader", &["viewer"]).await;
    let load = Load::start(&c, key);
    load.runs(50).await;

    // The CA: the new one joins the bundle, every node gets a certificate
    // from it, then the old one leaves the bundle.
    let next_ca = new_ca("next cluster CA", 30).unwrap();
    load.step("both CAs trusted");
    Pki::replace(&pki.path("ca.pem"), &format!("{}{}", pki.ca.cert_pem, next_ca.cert_pem));
    reloaded(&c, "every node trusts both CAs", 1, |n| reloads(n, "peer-ca")).await;
    load.runs(50).await;
    load.step("new certificates");
    let issued: Vec<_> = (1..=3).map(|id| pki.reissue(&next_ca, id)).collect();
    reloaded(&c, "every node serves its new certificate", 1, |n| reloads(n, "peer")).await;
    load.runs(50).await;
    load.step("old CA dropped");
    Pki::replace(&pki.path("ca.pem"), &next_ca.cert_pem);
    reloaded(&c, "every node trusts the new CA only", 2, |n| reloads(n, "peer-ca")).await;
    load.runs(50).await;
    // No connection made with an old certificate stays open: each node
    // moved its calls (Raft's too) to new ones, and any left was closed
    // once the calls under way on it had time.
    reloaded(&c, "no connection of the old CA is left open", 1, |n| {
        let failing = n.api().metrics().peer_connections_failing.get();
        u64::from(failing == 0 && reloads(n, "peer-ca") >= 2)
    })
    .await;
    load.runs(50).await;

    // The secret: the new one accepted everywhere, then sent, then the old one dropped.
    let old = c.secret();
    let new = format!("{old}-rotated");
    let files: Vec<_> = c.configs.values().map(secret_file).collect();
    for (phase, text) in [format!("{old}\n{new}\n"), format!("{new}\n{old}\n"), format!("{new}\n")].iter().enumerate() {
        load.step(["secret: both accepted", "secret: new sent", "secret: old dropped"][phase]);
        for f in &files {
            Pki::replace(f, text);
        }
        reloaded(&c, "every node reads the secret file", phase as u64 + 1, secret_reloads).await;
        load.runs(50).await;
    }

    let (done, failed) = load.stop().await;
    assert!(failed.is_empty(), "{} of {} operations failed: {:?}", failed.len(), done + failed.len() as u64, failed);

    // After it all: each node's certificate is the new CA's, the old secret
    // and a certificate of the old CA are refused, the new ones admitted.
    let status: serde_json::Value = serde_json::from_str(
        &common::admin_cli(&c.endpoint(1), &c.admin_key, &["--json", "cluster", "status"]).await.unwrap(),
    )
    .unwrap();
    for (n, cert) in status["nodes"].as_array().unwrap().iter().zip(&issued) {
        let not_after = gatehouse_tls::identity::parse(&cert.cert_der).unwrap().not_after;
        assert_eq!(n["peer_cert_not_after"].as_i64(), Some(not_after));
    }
    let leader = c.wait_for_leader().await;
    let addr = c.node(leader).advertise_addr().to_string();
    let ask = |secret: String, cert: &'static str| {
        let (pki, addr) = (&pki, addr.clone());
        async move {
            pki.peers(&secret, cert, &pki.path("ca.pem"), &addr, leader)
                .control_client(&addr)
                .unwrap()
                .local_status(LocalStatusRequest {})
                .await
        }
    };
    assert_eq!(ask(new.clone(), "node-2").await.unwrap().into_inner().node_id, leader);
    assert_eq!(ask(old, "node-2").await.unwrap_err().code(), tonic::Code::Unauthenticated);
    // A node-2 certificate of the old CA, valid for days yet: refused.
    let old_ca_cert = gatehouse_tls::issue::node_certificate(&pki.ca, 2, &[], &[], 30).unwrap();
    Pki::write(pki.dir.path(), "old-ca-2", &old_ca_cert);
    assert!(ask(new, "old-ca-2").await.is_err());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_serial_in_the_deny_file_cuts_a_node_off_without_a_restart() {
    let pki = Pki::new();
    let deny_file = pki.path("denied");
    std::fs::write(&deny_file, "# stolen certificates, one serial per line\n").unwrap();
    let c = TestCluster::start_with(3, |cfg| {
        cfg.peer_addr = Some("127.0.0.1:0".parse().unwrap());
        cfg.cluster_tls = Some(gatehouse::config::ClusterTlsConfig {
            deny_file: Some(deny_file.clone()),
            ..pki.config(cfg.node_id, &[])
        });
        cfg.max_staleness_ms = 2_000;
    })
    .await;
    let key = create_key(c.node(1), "reader", &["viewer"]).await;
    write_user(c.node(1), "before-the-theft").await;
    c.wait_replicated("before-the-theft").await;
    let ask_as_three = |leader: u64| {
        let addr = c.node(leader).advertise_addr().to_string();
        let peers = pki.peers(&c.secret(), "node-3", &pki.path("ca.pem"), &addr, leader);
        async move { peers.control_client(&addr).unwrap().local_status(LocalStatusRequest {}).await }
    };
    assert!(ask_as_three(1).await.is_ok(), "node 3's certificate is admitted before the theft");
    // Node 3's certificate is stolen: its serial goes in the deny file.
    let cert = gatehouse_tls::pem::certificates(&pki.path("node-3.pem")).unwrap();
    let serial = gatehouse_tls::identity::parse(&cert[0]).unwrap().serial;
    Pki::replace(&deny_file, &format!("{serial}  # node-3, stolen\n"));
    reloaded(&c, "every node reads the deny file", 1, |n| reloads(n, "peer-ca")).await;

    // Its open connections are closed, and it cannot open new ones: it goes
    // stale and refuses to answer for the cluster; the others carry on.
    wait_until("node 3 is cut off", Duration::from_secs(20), || {
        let closed = c.node(1).api().metrics().peer_connections_closed.get()
            + c.node(2).api().metrics().peer_connections_closed.get();
        let (url, key) = (format!("{}/auth/verify", base(c.node(3))), key.clone());
        async move { closed > 0 && http().get(url).bearer_auth(key).send().await.unwrap().status() == 503 }
    })
    .await;
    let leader = {
        let mut leader = 0;
        wait_until("nodes 1 and 2 agree on a leader of theirs", Duration::from_secs(20), || {
            let l1 = c.node(1).cluster().raft().metrics().borrow().current_leader;
            let l2 = c.node(2).cluster().raft().metrics().borrow().current_leader;
            leader = l1.unwrap_or(0);
            async move { l1 == l2 && matches!(l1, Some(1 | 2)) }
        })
        .await;
        leader
    };
    write_user(c.node(leader), "after-the-theft").await;
    // Refused in the handshake (with TLS 1.3 the server's refusal of a
    // client certificate arrives as the connection closing), never by a
    // service that read the call.
    let refused = ask_as_three(leader).await.unwrap_err();
    let transport = std::error::Error::source(&refused).is_some_and(|e| e.is::<tonic::transport::Error>());
    assert!(transport, "refused by a service, not in the handshake: {refused:?}");
    assert!(c.node(3).cluster().view().read().user_by_name("after-the-theft").is_none());

    // Taken off the list (the certificate was found, say): it rejoins.
    Pki::replace(&deny_file, "");
    reloaded(&c, "every node reads the emptied deny file", 2, |n| reloads(n, "peer-ca")).await;
    c.wait_replicated("after-the-theft").await;
    c.shutdown().await;
}
