//! In-process cluster harness: real nodes (RocksDB on disk, gRPC on
//! loopback port 0) started through the library entry point.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use gatehouse::config::{Config, Mode};
use gatehouse::Node;
use gatehouse_api::rate_limit::policy::{self as limit, By, On, Policy};
use gatehouse_domain::Payload;
use gatehouse_proto::events::CreateUser;
use tempfile::TempDir;

pub mod forms;
pub mod fronts;
pub mod nginx;
pub mod oidc;
pub mod pki;
pub mod smtp;
pub mod totp;

/// The cluster secret of the nodes whose data lives under `dir`: one per test
/// cluster. A port one test frees is often bound again by the next, and the
/// first test's nodes go on calling it; with one secret for all, a node not yet
/// initialised would take their vote or append and join the wrong cluster.
pub fn secret(dir: &TempDir) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (dir.path(), std::process::id()).hash(&mut h);
    format!("test-cluster-secret-{:016x}-0123456789abcdef", h.finish())
}

/// Polls `cond` until it holds or `timeout` passes (then panics with `what`).
/// A node's gRPC endpoint, as clients dial it.
pub fn endpoint(node: &Node) -> String {
    format!("http://{}", node.advertise_client_addr())
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn config(id: u64, dir: &TempDir) -> Config {
    Config {
        node_id: id,
        mode: Mode::Production,
        data_dir: dir.path().join(format!("node-{id}")),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        cluster_secret: Some(secret(dir).into()),
        // Every test client is 127.0.0.1: the default per-IP limits would
        // couple unrelated tests. Tests about limits turn them on.
        rate_limits: gatehouse_api::rate_limit::LimitsConfig { enabled: false, ..Default::default() },
        // Aggregated refusals are proposed at once, so tests see them.
        audit: gatehouse_api::audit::AuditConfig { aggregate_ms: 100, ..Default::default() },
        ..Config::default()
    }
}

pub struct TestCluster {
    pub dir: TempDir,
    pub nodes: BTreeMap<u64, Node>,
    /// Each node's config, with its first bound gRPC address pinned so a restart keeps it.
    pub configs: BTreeMap<u64, Config>,
    pub admin_key: String,
}

impl TestCluster {
    /// Starts `n` nodes, initialises them as one cluster and creates an admin key.
    pub async fn start(n: u64) -> TestCluster {
        Self::start_with(n, |_| {}).await
    }

    pub async fn start_with(n: u64, tweak: impl Fn(&mut Config)) -> TestCluster {
        Self::start_with_dir(n, |_, c| tweak(c)).await
    }

    /// [`TestCluster::start_with`], the tweak given the cluster's directory.
    pub async fn start_with_dir(n: u64, tweak: impl Fn(&TempDir, &mut Config)) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = BTreeMap::new();
        let mut configs = BTreeMap::new();
        for id in 1..=n {
            let mut c = config(id, &dir);
            tweak(&dir, &mut c);
            let node = Node::start(c.clone()).await.expect("node starts");
            c.grpc_addr = node.grpc_addr();
            c.peer_addr = node.peer_addr();
            configs.insert(id, c);
            nodes.insert(id, node);
        }
        let members: BTreeMap<u64, gatehouse_storage::Member> = nodes
            .iter()
            .map(|(id, n)| (*id, gatehouse_storage::Member::split(n.advertise_addr(), n.advertise_client_addr())))
            .collect();
        assert!(nodes[&1].initialize(members).await.unwrap());
        let mut cluster = TestCluster { dir, nodes, configs, admin_key: String::new() };
        cluster.wait_for_leader().await;
        cluster.admin_key =
            gatehouse::bootstrap::first_admin(cluster.nodes[&1].cluster(), None).await.unwrap().expect("first admin");
        cluster
    }

    /// The cluster secret these nodes share.
    pub fn secret(&self) -> String {
        secret(&self.dir)
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    /// The leader every running node agrees on.
    /// Node `id`'s gRPC endpoint, as clients dial it.
    pub fn endpoint(&self, id: u64) -> String {
        endpoint(self.node(id))
    }

    pub async fn wait_for_leader(&self) -> u64 {
        let mut leader = 0;
        wait_until("a leader all running nodes agree on", Duration::from_secs(10), || {
            let ids: Vec<Option<u64>> =
                self.nodes.values().map(|n| n.cluster().raft().metrics().borrow().current_leader).collect();
            leader = ids[0].unwrap_or(0);
            let agreed = leader != 0 && ids.iter().all(|i| *i == Some(leader)) && self.nodes.contains_key(&leader);
            async move { agreed }
        })
        .await;
        leader
    }

    /// Stops a node gracefully and returns its id.
    pub async fn stop(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("running node");
        node.shutdown().await.unwrap();
    }

    /// Restarts a stopped node from its data directory, on its old address.
    pub async fn restart(&mut self, id: u64) {
        let node = start_on_known_address(self.configs[&id].clone()).await;
        self.nodes.insert(id, node);
    }

    /// Waits until every running node applied `index` (what `--wait all` does).
    pub async fn wait_applied_everywhere(&self, index: u64) {
        wait_until(&format!("index {index} applied on every node"), Duration::from_secs(5), || {
            let all = self.nodes.values().all(|n| n.cluster().view().applied_index() >= index);
            async move { all }
        })
        .await;
    }

    /// Waits until every running node sees `username`.
    pub async fn wait_replicated(&self, username: &str) {
        wait_until(&format!("{username} on every node"), Duration::from_secs(10), || {
            let all = self.nodes.values().all(|n| n.cluster().view().read().user_by_name(username).is_some());
            async move { all }
        })
        .await;
    }

    pub async fn shutdown(self) {
        self.shutdown_keep_data().await;
    }

    /// Stops every node and hands back the data directory.
    pub async fn shutdown_keep_data(self) -> TempDir {
        for (_, n) in self.nodes {
            n.shutdown().await.unwrap();
        }
        self.dir
    }
}

/// Starts a node on addresses it (or a probe) held before.
///
/// Tests run side by side: between a stop and the next start another test's
/// outgoing connection may take the freed port as its ephemeral local port,
/// and until that connection closes the bind fails. A start that fails only
/// for the address in use is retried (nothing is opened before the
/// listeners bind).
pub async fn start_on_known_address(config: Config) -> Node {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Node::start(config.clone()).await {
            Ok(node) => return node,
            Err(e) if address_in_use(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("node {} starts on {}: {e:#}", config.node_id, config.grpc_addr),
        }
    }
}

/// Whether `e` is a bind refused because the address is in use.
fn address_in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse))
}

/// A command creating a user with a fresh id.
pub fn create_user(node: &Node, username: &str) -> gatehouse_domain::Command {
    node.cluster().command(Payload::CreateUser(CreateUser {
        user_id: gatehouse_cluster::ids::new_id(),
        username: username.into(),
        email: format!("{username}@example.com"),
        password_hash: String::new(),
        roles: vec!["viewer".into()],
    }))
}

/// Appends `batches` audit batches of 100 records with `action` and an 8 KiB
/// detail each (800 KiB a batch, under a batch's 1 MiB limit) through
/// `node`: a log and an audit log of some size, quickly.
pub async fn append_large_audit(node: &Node, batches: usize, action: &str) {
    use gatehouse_proto::events::{AppendAudit, AuditEvent};
    let cluster = node.cluster();
    for _ in 0..batches {
        let events = (0..100)
            .map(|i| AuditEvent {
                at: gatehouse_cluster::clock::now_ms() + i,
                action: action.into(),
                outcome: "ok".into(),
                detail: "d".repeat(8 * 1024),
                ..Default::default()
            })
            .collect();
        let cmd = cluster.command(Payload::AppendAudit(AppendAudit { events, dropped: 0, batch: 0 }));
        cluster.propose_one(cmd).await.expect("an audit batch is appended");
    }
}

/// Creates a user through `node` and returns once acknowledged.
pub async fn write_user(node: &Node, username: &str) {
    node.cluster().propose_one(create_user(node, username)).await.expect("write acknowledged");
}

/// Creates a user holding `roles` and an API key for it; returns the key.
pub async fn create_key(node: &Node, username: &str, roles: &[&str]) -> String {
    use gatehouse_proto::events::CreateApiKey;
    let user_id = gatehouse_cluster::ids::new_id();
    let key = gatehouse_api::mint::new_api_key();
    let c = node.cluster();
    let user = c.command(Payload::CreateUser(CreateUser {
        user_id: user_id.clone(),
        username: username.into(),
        email: format!("{username}@example.com"),
        password_hash: String::new(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }));
    let api_key = c.command(Payload::CreateApiKey(CreateApiKey {
        key_id: key.key_id.clone(),
        user_id,
        name: "test".into(),
        secret_sha256: key.secret_sha256.to_vec(),
        expires_at: 0,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        roles_exact: true,
    }));
    let applied = c.propose(vec![user, api_key]).await.expect("acknowledged");
    for r in &applied.results {
        gatehouse_api::ApiError::check(r).expect("applied");
    }
    key.key
}

/// Runs `gatehouse admin …` in-process against `endpoint`; returns stdout or the error.
pub async fn admin_cli(endpoint: &str, token: &str, args: &[&str]) -> Result<String, String> {
    use clap::Parser;
    let mut argv = vec!["gatehouse", "admin", "--endpoint", endpoint, "--token", token];
    argv.extend_from_slice(args);
    let cli = gatehouse::cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let gatehouse::cli::Command::Admin(a) = cli.command else { unreachable!() };
    let mut out = Vec::new();
    gatehouse::cli::admin(*a, &mut out).await.map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8(out).unwrap())
}

/// Creates a user with a password (argon2id, hashed here as the proposing
/// node would) and returns the user id.
pub async fn create_user_with_password(node: &Node, username: &str, password: &str, roles: &[&str]) -> String {
    let hash = gatehouse_api::passwords::PasswordPool::new(1, 4).hash(password.to_string()).await.unwrap();
    let user_id = gatehouse_cluster::ids::new_id();
    let cmd = node.cluster().command(Payload::CreateUser(CreateUser {
        user_id: user_id.clone(),
        username: username.into(),
        email: format!("{username}@example.com"),
        password_hash: hash,
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }));
    node.cluster().propose_one(cmd).await.expect("user created");
    user_id
}

/// Whether node 1's audit log holds an event `action` whose detail contains `detail`.
pub async fn audited(c: &TestCluster, action: &str, detail: &str) -> bool {
    let mut found = false;
    c.node(1)
        .audit_log()
        .scan(u64::MAX, true, |r| {
            found |= r.event.as_ref().is_some_and(|e| e.action == action && e.detail.contains(detail));
            !found
        })
        .unwrap();
    found
}

pub fn base(node: &Node) -> String {
    format!("http://{}", node.http_addr())
}

/// `POST /api/v1/login` on `node`, with the CSRF header a browser's script sends.
pub async fn login(node: &Node, username: &str, password: &str) -> reqwest::Response {
    login_at(&base(node), username, password).await
}

/// [`login`] on the HTTP front at `base` (a voter's or a stateless front's).
pub async fn login_at(base: &str, username: &str, password: &str) -> reqwest::Response {
    http()
        .post(format!("{base}/api/v1/login"))
        .header("x-requested-with", "test")
        .json(&serde_json::json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Every file under `dir`.
pub fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Sends raw bytes as a gRPC message, to test what a server's decoder makes
/// of them (`tonic::client::Grpc::unary(req, path, RawCodec)`).
#[derive(Debug, Default, Clone)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// A rate-limit policy counting every request, per `by`, over a minute.
pub fn policy(name: &str, by: By, limit: u32, mode: limit::Mode) -> Policy {
    Policy {
        name: name.into(),
        path_prefix: None,
        forwarded_path_prefix: None,
        forwarded_host: None,
        forwarded_ignore_case: false,
        key_id: None,
        user: None,
        client_network: None,
        by,
        on: On::Request,
        limit,
        window_secs: 60,
        mode,
        envoy: None,
        fail_open: false,
    }
}

/// Verifies `key` at every one of `urls` at once, round after round, until
/// none has admitted anything for ten global-limit sync rounds (every node
/// has seen every other node's deltas by then); returns how many were
/// admitted. Anything but 200 or 429 fails the test.
pub async fn verify_until_limited(urls: &[String], key: &str) -> u32 {
    let mut admitted = 0u32;
    let mut last_admitted = tokio::time::Instant::now();
    let deadline = last_admitted + Duration::from_secs(20);
    while last_admitted.elapsed() < Duration::from_millis(500) {
        assert!(tokio::time::Instant::now() < deadline, "the limit was never reached");
        let calls =
            urls.iter().map(|url| async move { http().get(url).bearer_auth(key).send().await.unwrap().status() });
        for status in futures::future::join_all(calls).await {
            match status {
                reqwest::StatusCode::OK => {
                    admitted += 1;
                    last_admitted = tokio::time::Instant::now();
                }
                reqwest::StatusCode::TOO_MANY_REQUESTS => {}
                s => panic!("unexpected {s}"),
            }
        }
    }
    admitted
}
