//! A cluster across hosts: three real node processes, each in a network
//! namespace of its own with its own address on a bridge, mutual TLS
//! between them, HTTPS on their fronts and TLS on their admin APIs, reached
//! from the host as a client would. Writes, reads, a leader killed and
//! rejoined, `/auth/verify` over HTTPS on every host.
//!
//! Namespaces and links are named for this process (`ghns-<pid>-<n>`,
//! `ghbr-<pid>`, `ghv-<pid>-<n>`); those of a run that died are swept first
//! (CI reuses the machine). Needs root and `ip` (iproute2), as CI has.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the process that named a namespace or link (`<prefix><pid>[-n]`) is gone.
fn orphaned(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else { return false };
    let pid = rest.split(['-', '@', ' ']).next().unwrap_or("");
    pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Hosts on one bridge: namespace `n` has address `10.213.<x>.<n>`, the
/// host side of the bridge `.254`.
struct Hosts {
    pid: u32,
    subnet: String,
    count: u8,
}

impl Hosts {
    /// Removes what earlier runs that died left behind.
    fn sweep() {
        for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if orphaned(name, "ghns-") {
                let _ = ip(&["netns", "del", name]);
            }
        }
        for line in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
            let name = line.split(": ").nth(1).unwrap_or("").split('@').next().unwrap_or("");
            if orphaned(name, "ghbr-") || orphaned(name, "ghv-") {
                let _ = ip(&["link", "del", name]);
            }
        }
    }

    fn create(count: u8) -> anyhow::Result<Hosts> {
        anyhow::ensure!(unsafe { libc::geteuid() } == 0, "this test makes network namespaces: run it as root");
        Self::sweep();
        let pid = std::process::id();
        // A /24 no interface here uses yet (another run may hold one).
        let used = ip(&["-o", "addr", "show"])?;
        let third = (0..250)
            .map(|i| (pid + i) % 250)
            .find(|x| !used.contains(&format!(" 10.213.{x}.")))
            .context("no free 10.213.x.0/24 subnet")?;
        let hosts = Hosts { pid, subnet: format!("10.213.{third}"), count };
        let bridge = hosts.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}.254/24", hosts.subnet), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for n in 1..=count {
            let (ns, veth) = (hosts.ns(n), format!("ghv-{pid}-{n}"));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", hosts.addr(n)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    fn bridge(&self) -> String {
        format!("ghbr-{}", self.pid)
    }

    fn ns(&self, n: u8) -> String {
        format!("ghns-{}-{n}", self.pid)
    }

    fn addr(&self, n: u8) -> String {
        format!("{}.{n}", self.subnet)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in 1..=self.count {
            let _ = ip(&["netns", "del", &self.ns(n)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// The three nodes' processes, killed when dropped.
struct Nodes {
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Nodes {
    fn spawn(&mut self, hosts: &Hosts, n: u8) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("node-{n}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &hosts.ns(n), BIN, "serve", "--config"])
            .arg(self.dir.join(format!("node-{n}.toml")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.children[n as usize - 1] = Some(child);
        Ok(())
    }

    fn kill(&mut self, n: u8) {
        if let Some(mut c) = self.children[n as usize - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.join(format!("node-{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!("--- node {n}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in 1..=3 {
            self.kill(n);
        }
    }
}

fn run(args: &[&str], token: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if let Some(t) = token {
        cmd.env("GATEHOUSE_TOKEN", t);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("gatehouse {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn node_config(hosts: &Hosts, dir: &Path, n: u8) -> String {
    let (a, d) = (hosts.addr(n), dir.display());
    let mut toml = format!(
        "node_id = {n}\nmode = \"production\"\ndata_dir = \"{d}/node-{n}\"\n\
         http_addr = \"{a}:8443\"\ngrpc_addr = \"{a}:9090\"\npeer_addr = \"{a}:9443\"\n\
         cluster_secret_file = \"{d}/cluster-secret\"\n"
    );
    if n == 1 {
        let members: Vec<String> = (1..=3)
            .map(|m| format!("{{ id = {m}, addr = \"{0}:9443\", client_addr = \"{0}:9090\" }}", hosts.addr(m)))
            .collect();
        toml += &format!(
            "initialize = true\ninitial_members = [{}]\nbootstrap_admin_key_file = \"{d}/admin.key\"\n",
            members.join(", ")
        );
    }
    let pair = format!("cert_file = \"{d}/node-{n}.pem\"\nkey_file = \"{d}/node-{n}.key\"\n");
    toml += &format!("[https]\n{pair}\n[cluster_tls]\nca_file = \"{d}/ca.pem\"\n{pair}\n[admin_tls]\n{pair}");
    toml
}

async fn wait_for<T>(what: &str, nodes: &Nodes, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", nodes.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_across_three_hosts_over_mutual_tls_writes_fails_over_and_verifies_over_https() {
    let hosts = Hosts::create(3).expect("network namespaces");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Certificates for a first cluster, as the quick start makes them.
    let d = dir.to_str().unwrap();
    run(&["tls", "init-ca", "--out", d], None).unwrap();
    for n in 1..=3u8 {
        run(&["tls", "issue", "--node-id", &n.to_string(), "--ip", &hosts.addr(n), "--ca-dir", d, "--out", d], None)
            .unwrap();
    }
    std::fs::write(dir.join("cluster-secret"), gatehouse_cluster::ids::new_id() + &gatehouse_cluster::ids::new_id())
        .unwrap();
    for n in 1..=3u8 {
        std::fs::write(dir.join(format!("node-{n}.toml")), node_config(&hosts, dir, n)).unwrap();
    }
    let mut nodes = Nodes { dir: dir.to_path_buf(), children: (0..3).map(|_| None).collect() };
    for n in 1..=3 {
        nodes.spawn(&hosts, n).unwrap();
    }

    let ca = dir.join("ca.pem");
    let key_file = dir.join("admin.key");
    let token = wait_for("the first admin key", &nodes, async || {
        std::fs::read_to_string(&key_file).ok().map(|k| k.trim().to_string()).filter(|k| !k.is_empty())
    })
    .await;
    // The admin API of host `n`, over TLS, verified against the CA.
    let admin = |n: u8, args: &[&str]| {
        let endpoint = format!("https://{}:9090", hosts.addr(n));
        let mut all = vec!["admin", "--endpoint", &endpoint, "--ca-file", ca.to_str().unwrap(), "--json"];
        all.extend_from_slice(args);
        run(&all, Some(&token)).map(|out| serde_json::from_str::<serde_json::Value>(&out).unwrap())
    };
    let leader_seen_by = |n: u8| {
        admin(n, &["cluster", "status"]).ok().and_then(|s| {
            let reachable = s["nodes"].as_array()?.iter().filter(|n| n["reachable"] == true).count();
            s["leader"].as_u64().filter(|_| reachable >= 2)
        })
    };
    let leader = wait_for("a leader seen from host 2", &nodes, async || leader_seen_by(2)).await as u8;

    // A user and a key, written through a follower's host.
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    admin(follower, &["user", "create", "ada", "--email", "ada@example.com", "--role", "viewer"]).unwrap();
    let key = admin(follower, &["key", "create", "--user", "ada", "--name", "hosts"]).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let verify = |n: u8, key: String| {
        let (https, url) = (https.clone(), format!("https://{}:8443/auth/verify", hosts.addr(n)));
        async move { https.get(url).bearer_auth(key).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    for n in 1..=3 {
        wait_for("the key verifies over HTTPS on every host", &nodes, async || {
            (verify(n, key.clone()).await == 200).then_some(())
        })
        .await;
    }
    // Plaintext to a host's front is not served.
    let plain = reqwest::get(format!("http://{}:8443/healthz", hosts.addr(1))).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // The leader's host loses its node: the other two elect one and take writes.
    nodes.kill(leader);
    let other = (1..=3).find(|n| *n != leader).unwrap();
    let next = wait_for("a new leader", &nodes, async || leader_seen_by(other).filter(|l| *l as u8 != leader)).await;
    let after = admin(next as u8, &["key", "create", "--user", "ada", "--name", "after-failover"]).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    for n in (1..=3).filter(|n| *n != leader) {
        wait_for("the new key verifies on the surviving hosts", &nodes, async || {
            (verify(n, after.clone()).await == 200).then_some(())
        })
        .await;
    }
    // It comes back on its host and catches up.
    nodes.spawn(&hosts, leader).unwrap();
    wait_for("the rejoined host verifies the key written while it was down", &nodes, async || {
        (verify(leader, after.clone()).await == 200).then_some(())
    })
    .await;
    let status = admin(leader, &["cluster", "status"]).unwrap();
    for n in status["nodes"].as_array().unwrap() {
        let id = n["id"].as_u64().unwrap() as u8;
        assert_eq!(n["addr"], format!("{}:9443", hosts.addr(id)), "{status}");
        assert!(n["peer_cert_not_after"].as_i64().is_some(), "{status}");
    }
    drop(nodes);
    drop(hosts);
}
