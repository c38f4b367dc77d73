//! A cluster of real `gatehouse serve` processes, each with its own data
//! directory and free loopback ports, configured through TOML files the way
//! an operator would. The harness holds the cluster secret, so it can ask
//! nodes for their status and propose commands like any member.
//!
//! With TLS ([`ProcCluster::prepare_with`]), each node has a peer listener
//! of its own with mutual TLS (a CA and node certificates made here, as
//! `gatehouse tls` makes them), and the harness dials peers with node 1's
//! certificate, as any member does.
//!
//! Stateless fronts (`gatehouse front`, [`ProcCluster::add_front`]) run
//! beside the voters: each with a secret of its own listed in the voters'
//! fronts file, and with TLS a front certificate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gatehouse_cluster::peers::ControlClient;
use gatehouse_cluster::{ClusterSecret, Peers};
use gatehouse_proto::control::LocalStatusRequest;

/// One node process.
pub struct ProcNode {
    pub id: u64,
    pub http: String,
    /// The admin API (and, without TLS, the peer RPCs too).
    pub grpc: String,
    /// Where peers reach it: `grpc`, or its peer listener with TLS.
    pub peer: String,
    pub config: PathBuf,
    child: Option<Child>,
}

/// One stateless front process.
pub struct ProcFront {
    pub id: u64,
    pub http: String,
    pub config: PathBuf,
    child: Option<Child>,
}

impl ProcFront {
    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

pub struct ProcCluster {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub nodes: BTreeMap<u64, ProcNode>,
    pub fronts: BTreeMap<u64, ProcFront>,
    pub peers: Peers,
    /// The bootstrap admin API key.
    pub admin_key: String,
    /// Appended to every node's TOML (e.g. a `[telemetry]` table).
    pub extra_config: String,
    /// Set in every node's environment.
    pub env: Vec<(String, String)>,
    /// Mutual TLS between the nodes.
    pub tls: bool,
    /// Top-level TOML for every front [`ProcCluster::add_front`] starts
    /// (e.g. `ext_authz_addr`), written before its `[front]` table.
    pub front_extra: String,
}

/// Node ports come from below Linux's ephemeral range (32768–60999 by
/// default). The kernel hands out ephemeral ports to every `bind(0)` (the
/// link proxies) and every outgoing connection, so a port picked there and
/// released could be taken before its node binds it; below it, nothing else
/// here takes it. Each port is handed out once per process and checked free.
pub fn free_port() -> anyhow::Result<u16> {
    use rand::Rng;
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..10_000 {
        let port = rand::thread_rng().gen_range(20_000..32_000);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port below the ephemeral range")
}

impl ProcCluster {
    /// Starts `n` nodes under `dir` and waits until they agree on a leader.
    pub async fn start(bin: &Path, dir: &Path, n: u64) -> anyhow::Result<ProcCluster> {
        Self::start_with(bin, dir, n, "", &[]).await
    }

    /// [`ProcCluster::start`] with extra TOML for every node (appended last,
    /// so it may open tables) and extra environment variables.
    pub async fn start_with(
        bin: &Path,
        dir: &Path,
        n: u64,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ProcCluster> {
        let mut cluster = Self::prepare(bin, dir, n, extra_config, env)?;
        cluster.launch().await?;
        Ok(cluster)
    }

    /// Picks ports and writes every node's configuration, without starting
    /// anything: a caller may add to the files (see [`ProcCluster::append_config`])
    /// before [`ProcCluster::launch`].
    pub fn prepare(
        bin: &Path,
        dir: &Path,
        n: u64,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ProcCluster> {
        Self::prepare_with(bin, dir, n, extra_config, env, false)
    }

    /// [`ProcCluster::prepare`], with mutual TLS between the nodes when `tls`.
    pub fn prepare_with(
        bin: &Path,
        dir: &Path,
        n: u64,
        extra_config: &str,
        env: &[(&str, &str)],
        tls: bool,
    ) -> anyhow::Result<ProcCluster> {
        std::fs::create_dir_all(dir)?;
        let secret = gatehouse_cluster::ids::new_id() + &gatehouse_cluster::ids::new_id();
        let secret_file = dir.join("cluster-secret");
        std::fs::write(&secret_file, &secret)?;
        let key_file = dir.join("admin.key");
        // The fronts the voters serve: none until `add_front`.
        std::fs::write(dir.join("fronts.txt"), "")?;
        let mut nodes = BTreeMap::new();
        let ca = if tls { Some(write_ca(dir)?) } else { None };
        for id in 1..=n {
            nodes.insert(id, new_node(dir, id, ca.as_ref())?);
        }
        let members: Vec<String> = nodes
            .values()
            .map(|n| format!("{{ id = {}, addr = \"{}\", client_addr = \"{}\" }}", n.id, n.peer, n.grpc))
            .collect();
        for node in nodes.values() {
            let mut toml = node_toml(dir, node, &secret_file);
            if node.id == 1 {
                toml += &format!(
                    "initialize = true\ninitial_members = [{}]\nbootstrap_admin_key_file = \"{}\"\n",
                    members.join(", "),
                    key_file.display()
                );
            }
            toml += extra_config;
            toml += &tls_toml(dir, node.id, tls);
            std::fs::write(&node.config, toml)?;
        }
        let mut peers = Peers::new(ClusterSecret::new(&secret).map_err(anyhow::Error::msg)?);
        if tls {
            // The harness speaks to peers as node 1 does.
            let trust = gatehouse_tls::peer::Trust::load(&dir.join("ca.pem"), &[], None)?;
            let material = gatehouse_tls::Material::load(&dir.join("node-1.pem"), &dir.join("node-1.key"))?;
            peers = peers.with_tls(gatehouse_cluster::peer_tls::PeerTls::new(trust, &material)?);
            for node in nodes.values() {
                peers.expect(&node.peer, node.id);
            }
        }
        Ok(ProcCluster {
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            nodes,
            fronts: BTreeMap::new(),
            peers,
            admin_key: String::new(),
            extra_config: extra_config.to_string(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            tls,
            front_extra: String::new(),
        })
    }

    /// Appends TOML to node `id`'s configuration (read at its next start).
    pub fn append_config(&self, id: u64, toml: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.nodes[&id].config)?;
        f.write_all(toml.as_bytes())?;
        Ok(())
    }

    /// Starts every prepared node and waits for the bootstrap key and a leader.
    pub async fn launch(&mut self) -> anyhow::Result<()> {
        let key_file = self.dir.join("admin.key");
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.spawn(id)?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !key_file.exists() || std::fs::read_to_string(&key_file)?.trim().is_empty() {
            if Instant::now() > deadline {
                bail!("no bootstrap key after 60 s; see {}/node-*.log", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.admin_key = std::fs::read_to_string(&key_file)?.trim().to_string();
        self.wait_for_leader(Duration::from_secs(30)).await?;
        Ok(())
    }

    /// Prepares and starts a new node `id` that is not a member yet (add it
    /// with `cluster add-learner`).
    pub fn add_node(&mut self, id: u64) -> anyhow::Result<&ProcNode> {
        anyhow::ensure!(!self.nodes.contains_key(&id) && !self.fronts.contains_key(&id), "id {id} is taken");
        let ca = if self.tls { Some(read_ca(&self.dir)?) } else { None };
        let node = new_node(&self.dir, id, ca.as_ref())?;
        self.peers.expect(&node.peer, id);
        let toml = node_toml(&self.dir, &node, &self.dir.join("cluster-secret"))
            + &self.extra_config
            + &tls_toml(&self.dir, id, self.tls);
        std::fs::write(&node.config, toml)?;
        self.nodes.insert(id, node);
        self.spawn(id)?;
        Ok(&self.nodes[&id])
    }

    /// Starts (or restarts) node `id`'s process.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("node-{id}.log")))?;
        let child = Command::new(&self.bin)
            .args(["serve", "--config"])
            .arg(&node.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Prepares and starts stateless front `id`, following the voters at
    /// `voters` (each voter's id and its peer address, or a proxy in front
    /// of it): its secret, its line in the voters' fronts file (each voter
    /// is told to re-read it at once), and with TLS its certificate.
    pub fn add_front(&mut self, id: u64, voters: &[(u64, String)]) -> anyhow::Result<()> {
        anyhow::ensure!(!self.fronts.contains_key(&id) && !self.nodes.contains_key(&id), "id {id} is taken");
        let secret = gatehouse_cluster::ids::new_id() + &gatehouse_cluster::ids::new_id();
        let secret_file = self.dir.join(format!("front-{id}.secret"));
        write_private(&secret_file, &secret)?;
        // The whole file replaced at once: a voter never reads half a line.
        let fronts_file = self.dir.join("fronts.txt");
        let mut lines = std::fs::read_to_string(&fronts_file)?;
        lines += &(gatehouse_cluster::fronts::line_for(id, &secret) + "\n");
        let aside = self.dir.join("fronts.txt.new");
        std::fs::write(&aside, lines)?;
        std::fs::rename(&aside, &fronts_file)?;
        for node in self.nodes.keys().copied().collect::<Vec<_>>() {
            if self.running(node) {
                self.signal(node, "HUP")?;
            }
        }
        let http = format!("127.0.0.1:{}", free_port()?);
        let list: Vec<String> = voters.iter().map(|(voter, addr)| format!("\"{voter}@{addr}\"")).collect();
        let mut toml = format!(
            "node_id = {id}\nhttp_addr = \"{http}\"\nmetrics_on_front = true\n{}\n[front]\nvoters = [{}]\nsecret_file = \"{}\"\n",
            self.front_extra,
            list.join(", "),
            secret_file.display()
        );
        if self.tls {
            let issued = gatehouse_tls::issue::front_certificate(&read_ca(&self.dir)?, id, 30)?;
            let (cert, key) = (self.dir.join(format!("front-{id}.pem")), self.dir.join(format!("front-{id}.key")));
            std::fs::write(&cert, &issued.cert_pem)?;
            write_private(&key, issued.key_pem.expose())?;
            toml += &format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
                cert.display(),
                key.display(),
                self.dir.join("ca.pem").display()
            );
        }
        let config = self.dir.join(format!("front-{id}.toml"));
        std::fs::write(&config, toml)?;
        self.fronts.insert(id, ProcFront { id, http, config, child: None });
        self.spawn_front(id)
    }

    /// Starts (or restarts) front `id`'s process.
    pub fn spawn_front(&mut self, id: u64) -> anyhow::Result<()> {
        let front = self.fronts.get_mut(&id).context("no such front")?;
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("front-{id}.log")))?;
        let child = Command::new(&self.bin)
            .args(["front", "--config"])
            .arg(&front.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        front.child = Some(child);
        Ok(())
    }

    /// kill -9 of front `id`.
    pub fn kill_front(&mut self, id: u64) {
        if let Some(mut c) = self.fronts.get_mut(&id).and_then(|f| f.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until front `id` answers `/readyz` with 200; returns how long it took.
    pub async fn wait_front_ready(&self, id: u64, timeout: Duration) -> anyhow::Result<Duration> {
        ready(&self.fronts[&id].http, timeout).await.with_context(|| format!("front {id}"))
    }

    /// The process id of a running node.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(|c| c.id())
    }

    /// Waits until node `id` answers `/readyz` with 200; returns how long it took.
    pub async fn wait_ready(&self, id: u64, timeout: Duration) -> anyhow::Result<Duration> {
        ready(&self.nodes[&id].http, timeout).await.with_context(|| format!("node {id}"))
    }

    /// Whether node `id`'s process was started and not killed or stopped here.
    pub fn running(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.child.is_some())
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, …) to node `id`'s process.
    pub fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(id).context("node is not running")?;
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// A graceful stop (SIGTERM); waits up to `timeout` for the exit, then kills.
    pub async fn terminate(&mut self, id: u64, timeout: Duration) -> anyhow::Result<()> {
        self.signal(id, "TERM")?;
        let deadline = Instant::now() + timeout;
        let child = self.nodes.get_mut(&id).and_then(|n| n.child.as_mut()).context("node is not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.nodes.get_mut(&id).expect("exists").child = None;
                anyhow::ensure!(status.success(), "node {id} exited with {status} after SIGTERM");
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill(id);
                bail!("node {id} did not stop within {timeout:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The control service of node `id` (status, digests, forwarded writes).
    pub fn control_client(&self, id: u64) -> anyhow::Result<ControlClient> {
        Ok(self.peers.control_client(&self.nodes[&id].peer)?)
    }

    /// The leader all running nodes agree on.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for (id, node) in &self.nodes {
                if node.child.is_none() {
                    continue;
                }
                let leader = match self.control_client(*id)?.local_status(LocalStatusRequest {}).await {
                    Ok(s) => s.into_inner().leader_id,
                    Err(_) => 0,
                };
                seen.push(leader);
            }
            if let Some(&l) = seen.first() {
                if l != 0 && seen.iter().all(|&x| x == l) {
                    return Ok(l);
                }
            }
            if Instant::now() > deadline {
                bail!("no agreed leader within {timeout:?} (saw {seen:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until the HTTP front at `addr` answers `/readyz` with 200; returns how long it took.
async fn ready(addr: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let req = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).await.is_ok() {
                let mut buf = vec![0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    if buf[..n].starts_with(b"HTTP/1.1 200") {
                        return Ok(started.elapsed());
                    }
                }
            }
        }
        if started.elapsed() > timeout {
            bail!("not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node on free ports; with a CA, a peer listener of its own and its
/// certificate (`node-<id>.pem`, `.key` in `dir`).
fn new_node(dir: &Path, id: u64, ca: Option<&gatehouse_tls::issue::Issued>) -> anyhow::Result<ProcNode> {
    let (http, grpc) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    let peer = match ca {
        Some(ca) => {
            let issued = gatehouse_tls::issue::node_certificate(ca, id, &[], &["127.0.0.1".parse()?], 30)?;
            std::fs::write(dir.join(format!("node-{id}.pem")), &issued.cert_pem)?;
            std::fs::write(dir.join(format!("node-{id}.key")), issued.key_pem.expose())?;
            format!("127.0.0.1:{}", free_port()?)
        }
        None => grpc.clone(),
    };
    Ok(ProcNode { id, http, grpc, peer, config: dir.join(format!("node-{id}.toml")), child: None })
}

/// Writes `text` to a new file readable by this user only (0600).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A CA for the run's node certificates (`ca.pem`, `ca.key` in `dir`).
fn write_ca(dir: &Path) -> anyhow::Result<gatehouse_tls::issue::Issued> {
    let ca = gatehouse_tls::issue::new_ca("chaos run CA", 30)?;
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
    std::fs::write(dir.join("ca.key"), ca.key_pem.expose())?;
    Ok(ca)
}

fn read_ca(dir: &Path) -> anyhow::Result<gatehouse_tls::issue::Issued> {
    Ok(gatehouse_tls::issue::ca_from_pem(
        &std::fs::read_to_string(dir.join("ca.pem"))?,
        &std::fs::read_to_string(dir.join("ca.key"))?,
    )?)
}

/// A node's configuration file (without the bootstrap part).
fn node_toml(dir: &Path, node: &ProcNode, secret_file: &Path) -> String {
    let peer = if node.peer != node.grpc { format!("peer_addr = \"{}\"\n", node.peer) } else { String::new() };
    format!(
        // The harness scrapes each node's front for `/metrics`.
        "node_id = {}\ndata_dir = \"{}\"\nhttp_addr = \"{}\"\ngrpc_addr = \"{}\"\n{peer}cluster_secret_file = \"{}\"\nmetrics_on_front = true\nfronts_file = \"{}\"\n",
        node.id,
        dir.join(format!("node-{}", node.id)).display(),
        node.http,
        node.grpc,
        secret_file.display(),
        dir.join("fronts.txt").display()
    )
}

/// The `[cluster_tls]` table of node `id`, or nothing without TLS.
fn tls_toml(dir: &Path, id: u64, tls: bool) -> String {
    if !tls {
        return String::new();
    }
    let d = dir.display();
    format!("\n[cluster_tls]\nca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/node-{id}.pem\"\nkey_file = \"{d}/node-{id}.key\"\n")
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.fronts.keys().copied().collect();
        for id in ids {
            self.kill_front(id);
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}
