//! `gatehouse-load`: benchmark scenarios against a cluster of real nodes it
//! starts itself. Build in release for figures worth writing down:
//!
//! ```sh
//! cargo build --release --bins
//! target/release/gatehouse-load writes --writers 1,16,64,256 --seconds 10
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse_chaos::cluster::ProcCluster;
use gatehouse_chaos::load;

#[derive(Parser)]
#[command(about = "Gatehouse load generator")]
struct Args {
    /// The gatehouse binary (default: next to this one).
    #[arg(long, global = true)]
    bin: Option<PathBuf>,
    /// Nodes in the cluster.
    #[arg(long, global = true, default_value_t = 3)]
    nodes: u64,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Committed commands per second and commit latency per number of concurrent writers.
    Writes {
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        writers: Vec<usize>,
        /// Seconds per step.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Run the steps again on a cluster with mutual TLS between its
        /// nodes (a new cluster, after the plaintext one is gone), same run.
        #[arg(long)]
        tls: bool,
    },
    /// /auth/verify with an API key and with a session cookie on one node,
    /// beside a bare hyper server answering 200 (the ceiling), same run.
    Verify {
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Over HTTPS keep-alive connections: the fronts serve `[https]`,
        /// the ceiling is bare hyper behind the same rustls configuration.
        #[arg(long)]
        https: bool,
    },
    /// /auth/verify with a session on one node, on a cluster without `[jwt]`
    /// and then on one with it (a new cluster, same run): the token cached
    /// per session, and a token signed for every request (each request a
    /// session not seen before), beside a bare hyper server answering 200.
    Jwt {
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Sessions for the signed-every-request step: more than it makes
        /// requests, so none repeats.
        #[arg(long, default_value_t = 200_000)]
        sessions: usize,
        /// `RS256` instead of Ed25519.
        #[arg(long)]
        rsa: bool,
    },
    /// Requests through Gatehouse's reverse-proxy mode (`[proxy]`, an API
    /// key verified per request) to a bare hyper upstream, beside nginx
    /// `proxy_pass` to the same upstream, two bare hyper proxies (pooled as
    /// Gatehouse's, and one upstream connection per client connection) and
    /// the upstream alone, same run; with each serving process's CPU per
    /// request.
    Proxy {
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// New TLS connections per second on one node's HTTPS front (connect,
    /// handshake, one GET /healthz, close), full handshakes and resumed
    /// ones, each beside bare hyper + rustls doing the same, same run.
    Handshakes {
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Resident memory with many sessions and keys, and the time a restarted node takes to be ready.
    Memory {
        #[arg(long, default_value_t = 1_000_000)]
        sessions: usize,
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Then a stateless front holding the same: its RSS, and the time it
        /// takes to serve after its start and after a restart.
        #[arg(long)]
        front: bool,
    },
    /// Failed logins as fast as `connections` clients can send them, spread
    /// over every node, with the default rate limits: first from one client
    /// address, then from a new address each request (a trusted proxy's
    /// rotating X-Forwarded-For). Each node's RSS and the log's length at
    /// the start, the middle and the end of each phase: growth must not
    /// depend on how long the flood lasts.
    LoginFlood {
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds per phase.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Successful password logins per second (argon2id) spread over every
    /// node, rate limits off, beside bare argon2id verifications of the
    /// same parameters in this process, same run (and beside Keycloak's
    /// published sizing figure, in docs/benchmarks.md).
    PasswordLogin {
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Users to sign in as, in turn.
        #[arg(long, default_value_t = 50)]
        users: usize,
        /// Then, in the same run, people with an authenticator app (enrolled
        /// through the pages) signing in with the password and a code.
        #[arg(long)]
        totp: bool,
        /// How many people with an app: each step of 30 s is accepted once
        /// per person, so a run needs about one per login it makes.
        #[arg(long, default_value_t = 1500)]
        totp_users: usize,
    },
    /// One API key per mode, limited to `limit` per minute and hammered on
    /// /auth/verify through every node: admitted / limit, strict then global.
    RateAccuracy {
        /// The limit L, per 60 s window.
        #[arg(long, default_value_t = 600)]
        limit: u32,
        /// Keep-alive connections per node.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Seconds of load per mode; under the window, so every admission counts against L.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Audit records per second with /auth/verify running beside them,
    /// against verify alone: first audit batches offered to the log at
    /// `rate` (the recorders' traffic), then refused admin calls (one
    /// `rbac.denied` count each, aggregated per caller and period).
    AuditIngest {
        /// Audit events per second offered to the log, shared by the nodes.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Verify connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// The node that serves the verify load.
        #[arg(long, default_value_t = 1)]
        verify_node: u64,
        /// Verify requests per second, paced (0: every connection as fast as it can).
        #[arg(long, default_value_t = 0)]
        verify_rate: u64,
        /// Concurrent refused admin calls per node in the end-to-end phase (0 skips it).
        #[arg(long, default_value_t = 16)]
        callers: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// How soon a revocation is refused everywhere: a key verified in a
    /// tight loop on every voter and every front, revoked, and each one's
    /// time from the revocation's acknowledgement to its first refusal;
    /// p50 / p99 / max per node over `revocations`.
    Revocation {
        #[arg(long, default_value_t = 1_000)]
        revocations: usize,
        #[arg(long, default_value_t = 2)]
        fronts: u64,
    },
    /// /auth/verify on a stateless front and on a voter, beside a bare hyper
    /// server answering 200, same run; then the front's memory and restart.
    FrontVerify {
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// ext_authz Check calls per second (`streams` concurrent) on a front
    /// and on a voter, beside a bare tonic Authorization server answering
    /// OK, same run.
    ExtAuthz {
        #[arg(long, default_value_t = 64)]
        streams: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Internal: the bare tonic Authorization server (prints its port on stdout).
    #[command(hide = true)]
    CheckBaselineServer,
    /// Internal: the bare hyper baseline server (prints its port on stdout);
    /// over TLS with a certificate and key.
    #[command(hide = true)]
    BaselineServer {
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Internal: a bare hyper proxy to `upstream` (prints its port on stdout).
    #[command(hide = true)]
    BaselineProxy {
        upstream: String,
        #[arg(long, value_enum, default_value = "pooled")]
        upstreams: gatehouse_chaos::load_proxy::Upstreams,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Scenario::CheckBaselineServer = &args.scenario {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        return gatehouse_chaos::load_fronts::serve_check_baseline(listener).await;
    }
    if let Scenario::BaselineServer { cert, key } = &args.scenario {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        return match (cert, key) {
            (Some(cert), Some(key)) => {
                gatehouse_chaos::load_tls::serve_baseline(listener, gatehouse_tls::Material::load(cert, key)?).await
            }
            _ => load::serve_baseline(listener).await,
        };
    }
    if let Scenario::BaselineProxy { upstream, upstreams } = &args.scenario {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        return gatehouse_chaos::load_proxy::serve_baseline_proxy(listener, upstream.clone(), *upstreams).await;
    }
    let bin = match args.bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("gatehouse"),
    };
    if let Scenario::Proxy { connections, seconds } = &args.scenario {
        return proxy(&bin, args.nodes, *connections, *seconds, args.json).await;
    }
    if let Scenario::Jwt { connections, seconds, sessions, rsa } = &args.scenario {
        return jwt(&bin, args.nodes, *connections, *seconds, *sessions, *rsa, args.json).await;
    }
    if let Scenario::Writes { writers, seconds, tls } = &args.scenario {
        let mut sets = vec![("plaintext", write_steps(&bin, args.nodes, false, writers, *seconds).await?)];
        if *tls {
            sets.push(("mutual TLS", write_steps(&bin, args.nodes, true, writers, *seconds).await?));
        }
        print_writes(&sets, args.nodes, *seconds, args.json);
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut extra = match &args.scenario {
        Scenario::RateAccuracy { limit, .. } => rate_policies(*limit),
        Scenario::PasswordLogin { totp, .. } => {
            let mut extra = "[rate_limits]\nenabled = false\n".to_string();
            if *totp {
                // TOTP secrets are sealed under a key-encryption key.
                let kek = dir.path().join("kek");
                std::fs::write(&kek, hex::encode(rand::random::<[u8; 32]>()))?;
                extra += &format!("[secrets]\nkeys = [{{ id = \"bench\", file = \"{}\" }}]\n", kek.display());
            }
            extra
        }
        _ => String::new(),
    };
    // HTTPS on every front (node 1's certificate will do for each: it
    // names 127.0.0.1), and mutual TLS between the nodes.
    let https = matches!(args.scenario, Scenario::Verify { https: true, .. } | Scenario::Handshakes { .. });
    if https {
        let d = dir.path().display();
        extra += &format!("\n[https]\ncert_file = \"{d}/node-1.pem\"\nkey_file = \"{d}/node-1.key\"\n");
    }
    let mut cluster = ProcCluster::prepare_with(&bin, dir.path(), args.nodes, &extra, &[], https)?;
    if let Scenario::ExtAuthz { .. } = args.scenario {
        // Envoy's listener on node 1 and on the front, with a secret.
        let secret = dir.path().join("envoy.secret");
        std::fs::write(&secret, ENVOY_SECRET)?;
        let envoy = |port: u16| {
            format!("ext_authz_addr = \"127.0.0.1:{port}\"\next_authz_secret_file = \"{}\"\n", secret.display())
        };
        cluster.append_config(1, &envoy(gatehouse_chaos::cluster::free_port()?))?;
        cluster.front_extra = envoy(gatehouse_chaos::cluster::free_port()?);
    }
    cluster.launch().await?;
    match args.scenario {
        Scenario::Writes { .. } | Scenario::Jwt { .. } | Scenario::Proxy { .. } => unreachable!("handled above"),
        Scenario::Verify { connections, seconds, https } => {
            verify(&cluster, connections, seconds, https, args.json).await?
        }
        Scenario::Handshakes { clients, seconds } => handshakes(&cluster, clients, seconds, args.json).await?,
        Scenario::Memory { sessions, keys, users, front } => {
            memory(cluster, sessions, keys, users, front, args.json).await?
        }
        Scenario::RateAccuracy { limit, connections, seconds } => {
            rate_accuracy(&cluster, limit, connections, seconds, args.json).await?
        }
        Scenario::AuditIngest { rate, connections, verify_node, verify_rate, callers, seconds } => {
            let verify_rate = (verify_rate > 0).then_some(verify_rate as f64);
            let verify = Verifying { node: verify_node, connections, rate: verify_rate };
            audit_ingest(&cluster, rate, verify, callers, seconds, args.json).await?
        }
        Scenario::LoginFlood { connections, seconds } => login_flood(&cluster, connections, seconds, args.json).await?,
        Scenario::PasswordLogin { connections, seconds, users, totp, totp_users } => {
            let totp_users = if totp { totp_users } else { 0 };
            password_login(&cluster, connections, seconds, users, totp_users, args.json).await?
        }
        Scenario::Revocation { revocations, fronts } => revocation(cluster, revocations, fronts, args.json).await?,
        Scenario::FrontVerify { connections, seconds } => {
            front_verify(cluster, connections, seconds, args.json).await?
        }
        Scenario::ExtAuthz { streams, seconds } => ext_authz(cluster, streams, seconds, args.json).await?,
        Scenario::BaselineServer { .. } | Scenario::CheckBaselineServer | Scenario::BaselineProxy { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(())
}

/// The `writes` steps on a cluster of its own (plaintext or with mutual
/// TLS between the nodes), stopped before the function returns.
async fn write_steps(
    bin: &std::path::Path,
    nodes: u64,
    tls: bool,
    writers: &[usize],
    seconds: u64,
) -> anyhow::Result<Vec<load::Figures>> {
    let dir = tempfile::tempdir()?;
    let mut cluster = ProcCluster::prepare_with(bin, dir.path(), nodes, "", &[], tls)?;
    cluster.launch().await?;
    let mut rows = Vec::new();
    for (i, w) in writers.iter().enumerate() {
        rows.push(load::writes(&cluster, *w, Duration::from_secs(seconds), &format!("r{i}")).await?);
    }
    Ok(rows)
}

fn print_writes(sets: &[(&str, Vec<load::Figures>)], nodes: u64, seconds: u64, json: bool) {
    if json {
        let sets: Vec<_> = sets
            .iter()
            .map(|(links, rows)| {
                let rows: Vec<_> = rows.iter().map(|r| r.json()).collect();
                serde_json::json!({ "links": links, "rows": rows })
            })
            .collect();
        println!("{}", serde_json::json!({ "scenario": "writes", "nodes": nodes, "seconds": seconds, "sets": sets }));
        return;
    }
    println!("scenario writes: {nodes} nodes, {seconds} s per step");
    println!(
        "{:<12} {:>8} {:>10} {:>8} {:>12} {:>10} {:>10} {:>16}",
        "links", "writers", "commits", "errors", "commits/s", "p50 ms", "p99 ms", "node CPU µs/op"
    );
    for (links, rows) in sets {
        for r in rows {
            let cpu_per_commit = r.node_cpu_s.unwrap_or(0.0) * 1e6 / r.ok.max(1) as f64;
            println!(
                "{links:<12} {:>8} {:>10} {:>8} {:>12.0} {:>10.2} {:>10.2} {:>16.0}",
                r.concurrency, r.ok, r.errors, r.per_second, r.p50_ms, r.p99_ms, cpu_per_commit
            );
        }
    }
}

/// The bare baseline server as a process of its own (so it does not share
/// this process's runtime with the client); over TLS with node 1's
/// certificate in `tls_dir`. Returns it and its address.
fn baseline(tls_dir: Option<&std::path::Path>) -> anyhow::Result<(load::Killed, String)> {
    let mut args = vec!["baseline-server".into()];
    if let Some(d) = tls_dir {
        args.extend(["--cert".into(), d.join("node-1.pem").into(), "--key".into(), d.join("node-1.key").into()]);
    }
    helper(&args)
}

/// This binary run as one of its internal servers with `args`; it prints
/// the port it listens on. Returns it and its address.
fn helper(args: &[std::ffi::OsString]) -> anyhow::Result<(load::Killed, String)> {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(args).stdout(std::process::Stdio::piped());
    let mut child = load::Killed(cmd.spawn()?);
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().expect("piped")).read_line(&mut line)?;
    Ok((child, format!("127.0.0.1:{}", line.trim())))
}

/// `handshakes`: new TLS connections per second, full and resumed, on node
/// 1's front and on the bare server, each kind beside its ceiling.
async fn handshakes(cluster: &ProcCluster, clients: usize, seconds: u64, json: bool) -> anyhow::Result<()> {
    use gatehouse_chaos::load_tls;
    let ca = cluster.dir.join("ca.pem");
    let (server, bare) = baseline(Some(&cluster.dir))?;
    let http = cluster.nodes[&1].http.clone();
    let d = Duration::from_secs(seconds);
    let mut rows = Vec::new();
    for (kind, resume) in [("full", false), ("resumed", true)] {
        let ceiling = load_tls::handshakes(&bare, "/", load_tls::client(&ca, resume)?, clients, d).await?;
        let node = load_tls::handshakes(&http, "/healthz", load_tls::client(&ca, resume)?, clients, d).await?;
        rows.push((format!("bare hyper + rustls, {kind}"), ceiling.per_second, ceiling));
        let ratio_base = rows.last().map(|r| r.1).unwrap_or(1.0);
        rows.push((format!("gatehouse /healthz, {kind}"), ratio_base, node));
    }
    drop(server);
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(name, base, f)| serde_json::json!({ "name": name, "ratio": f.per_second / base, "figures": f.json() }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "scenario": "handshakes", "clients": clients, "seconds": seconds, "rows": rows })
        );
    } else {
        println!("scenario handshakes: one node's HTTPS front, {clients} clients, {seconds} s each (connect, handshake, one GET, close)");
        println!(
            "{:<32} {:>10} {:>8} {:>12} {:>8} {:>8} {:>8}",
            "", "ok", "errors", "conns/s", "ratio", "p50 ms", "p99 ms"
        );
        for (name, base, f) in rows {
            println!(
                "{name:<32} {:>10} {:>8} {:>12.0} {:>8.2} {:>8.2} {:>8.2}",
                f.ok,
                f.errors,
                f.per_second,
                f.per_second / base,
                f.p50_ms,
                f.p99_ms
            );
        }
    }
    Ok(())
}

/// What a flood phase left behind at one moment: each node's RSS and
/// applied log index.
async fn flood_mark(cluster: &ProcCluster) -> anyhow::Result<Vec<(u64, u64, u64)>> {
    use gatehouse_proto::control::LocalStatusRequest;
    let mut out = Vec::new();
    for &id in cluster.nodes.keys() {
        let applied = cluster.control_client(id)?.local_status(LocalStatusRequest {}).await?.into_inner().applied_index;
        out.push((id, cluster.pid(id).and_then(load::rss_bytes).unwrap_or(0), applied));
    }
    Ok(out)
}

async fn login_flood(cluster: &ProcCluster, connections: usize, seconds: u64, json: bool) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let nodes: Vec<String> = cluster.nodes.values().map(|n| n.http.clone()).collect();
    let mut phases = Vec::new();
    for (phase, rotating) in [("one address", false), ("rotating addresses", true)] {
        let next = Arc::new(AtomicU64::new(0));
        let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
        let half = Duration::from_secs(seconds) / 2;
        let start = flood_mark(cluster).await?;
        let run = |until: tokio::time::Instant| {
            (0..connections)
                .map(|c| {
                    let (nodes, next, statuses) = (nodes.clone(), next.clone(), statuses.clone());
                    tokio::spawn(async move {
                        let http = reqwest::Client::new();
                        while tokio::time::Instant::now() < until {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            // 10.0.0.0/8 holds 16 M addresses: a new one per request.
                            let ip = if rotating {
                                std::net::Ipv4Addr::from(0x0a00_0000 + (i as u32 & 0x00ff_ffff)).to_string()
                            } else {
                                "198.51.100.1".to_string()
                            };
                            let node = &nodes[(i as usize + c) % nodes.len()];
                            let r = http
                                .post(format!("http://{node}/api/v1/login"))
                                .header("x-requested-with", "gatehouse-load")
                                .header("x-forwarded-for", ip)
                                .json(&serde_json::json!({ "username": format!("flood-{}", i % 100), "password": "not the password at all" }))
                                .send()
                                .await;
                            let code = r.map(|r| r.status().as_u16()).unwrap_or(0);
                            *statuses.lock().unwrap().entry(code).or_default() += 1;
                        }
                    })
                })
                .collect::<Vec<_>>()
        };
        for task in run(tokio::time::Instant::now() + half) {
            task.await?;
        }
        let middle = flood_mark(cluster).await?;
        for task in run(tokio::time::Instant::now() + half) {
            task.await?;
        }
        let end = flood_mark(cluster).await?;
        let statuses = statuses.lock().unwrap().clone();
        phases.push((phase, next.load(Ordering::Relaxed), statuses, start, middle, end));
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if json {
        let rows: Vec<_> = phases
            .iter()
            .map(|(phase, requests, statuses, start, middle, end)| {
                let nodes: Vec<_> = start
                    .iter()
                    .zip(middle)
                    .zip(end)
                    .map(|((s, m), e)| {
                        serde_json::json!({ "id": s.0, "rss_bytes": [s.1, m.1, e.1], "applied_index": [s.2, m.2, e.2] })
                    })
                    .collect();
                serde_json::json!({ "phase": phase, "requests": requests, "statuses": statuses, "nodes": nodes })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "scenario": "login-flood", "seconds_per_phase": seconds, "connections": connections, "phases": rows })
        );
    } else {
        println!(
            "scenario login-flood: {} nodes, {connections} connections, {seconds} s per phase (start / middle / end)",
            nodes.len()
        );
        for (phase, requests, statuses, start, middle, end) in phases {
            println!("{phase}: {requests} logins, statuses {statuses:?}");
            for ((s, m), e) in start.iter().zip(&middle).zip(&end) {
                println!(
                    "  node {}: RSS {:.0} / {:.0} / {:.0} MiB; log index {} / {} / {} (+{} first half, +{} second half)",
                    s.0,
                    mib(s.1),
                    mib(m.1),
                    mib(e.1),
                    s.2,
                    m.2,
                    e.2,
                    m.2 - s.2,
                    e.2 - m.2
                );
            }
        }
    }
    Ok(())
}

/// Two policies of `limit` per minute, one per mode, each for one user's keys.
fn rate_policies(limit: u32) -> String {
    let policy = |mode: &str| {
        format!(
            "[[rate_limits.policies]]\nname = \"bench_{mode}\"\nuser = \"rate-{mode}\"\nby = \"key\"\nlimit = {limit}\nwindow_secs = 60\nmode = \"{mode}\"\n"
        )
    };
    format!("[rate_limits]\nenabled = true\n{}{}", policy("strict"), policy("global"))
}

async fn password_login(
    cluster: &ProcCluster,
    connections: usize,
    seconds: u64,
    users: usize,
    totp_users: usize,
    json: bool,
) -> anyhow::Result<()> {
    use gatehouse_proto::admin::user_service_client::UserServiceClient;
    use gatehouse_proto::admin::CreateUserRequest;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let password = "a load generator's passphrase";
    let grpc = admin_channel(&cluster.nodes[&1].grpc)?;
    // Created 16 at a time (each one an argon2id hash on node 1).
    let names: Vec<String> =
        (0..users).map(|i| format!("signer-{i}")).chain((0..totp_users).map(|i| format!("two-step-{i}"))).collect();
    for chunk in names.chunks(16) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|name| {
                let user = CreateUserRequest {
                    username: name.clone(),
                    email: format!("{name}@bench.example"),
                    roles: vec!["viewer".into()],
                    password: password.into(),
                };
                let mut client = UserServiceClient::new(grpc.clone());
                let request = admin_request(cluster, user);
                async move { client.create(request).await }
            })
            .collect();
        for r in futures::future::join_all(calls).await {
            r?;
        }
    }
    let nodes: Vec<String> = cluster.nodes.values().map(|n| n.http.clone()).collect();
    if totp_users > 0 {
        // Second factors are commands of a newer version: the leader raises
        // the cluster to it once every member says it understands it.
        use gatehouse_proto::admin::cluster_service_client::ClusterServiceClient;
        use gatehouse_proto::admin::ClusterStatusRequest;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = ClusterServiceClient::new(grpc.clone())
                .status(admin_request(cluster, ClusterStatusRequest::default()))
                .await?
                .into_inner();
            if status.cluster_version >= gatehouse_domain::version::COMMAND_VERSION {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the cluster version stays {}",
                status.cluster_version
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let two_step: Vec<String> = names[users..].to_vec();
    let people = Arc::new(gatehouse_chaos::load_mfa::enroll_all(&nodes, &two_step, password, 6).await?);
    let d = Duration::from_secs(seconds);

    // Bare argon2id, the nodes' parameters, one worker per core, here.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = gatehouse_api::passwords::PasswordPool::new(cores, 64);
    let phc = pool.hash(password.to_string()).await?;
    let verified = Arc::new(AtomicU64::new(0));
    let until = tokio::time::Instant::now() + d;
    let bare: Vec<_> = (0..cores)
        .map(|_| {
            let (pool, phc, verified) = (pool.clone(), phc.clone(), verified.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    if pool.verify(password.to_string(), Some(phc.clone())).await.unwrap_or(false) {
                        verified.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in bare {
        t.await?;
    }
    let bare_per_s = verified.load(Ordering::Relaxed) as f64 / d.as_secs_f64();

    // Logins through every node's HTTP front: a password alone, then (with
    // people enrolled) a password and a code.
    let alone = logins(&nodes, connections, d, move |i| {
        Some(serde_json::json!({ "username": format!("signer-{}", i % users), "password": password }))
    })
    .await?;
    let with_code = if people.is_empty() {
        None
    } else {
        let people = people.clone();
        let phase = logins(&nodes, connections, d, move |i| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
            // The next person with a step left (every one, at most, once round).
            (0..people.len()).find_map(|k| {
                let p = &people[(i + k) % people.len()];
                let code = p.next_code(now)?;
                Some(serde_json::json!({ "username": p.username, "password": password, "totp": code }))
            })
        })
        .await?;
        Some(phase)
    };
    let per_s = |p: &Phase| p.ok as f64 / d.as_secs_f64();
    let ms = |p: &Phase, q: f64| p.latency.value_at_quantile(q) as f64 / 1000.0;
    if json {
        let mut out = serde_json::json!({
            "scenario": "password-login", "nodes": nodes.len(), "connections": connections, "seconds": seconds,
            "cores": cores, "logins_per_s": per_s(&alone), "failed": alone.failed,
            "p50_ms": ms(&alone, 0.5), "p99_ms": ms(&alone, 0.99),
            "bare_argon2id_verifications_per_s": bare_per_s,
        });
        if let Some(t) = &with_code {
            out["totp_logins_per_s"] = per_s(t).into();
            out["totp_failed"] = t.failed.into();
            out["totp_no_step_left"] = t.skipped.into();
            out["totp_p50_ms"] = ms(t, 0.5).into();
            out["totp_p99_ms"] = ms(t, 0.99).into();
            out["totp_people"] = people.len().into();
        }
        println!("{out}");
    } else {
        println!(
            "scenario password-login: {} nodes, {connections} connections, {seconds} s, {cores} cores",
            nodes.len()
        );
        println!("  bare argon2id verifications (same parameters, {cores} workers): {bare_per_s:.1}/s");
        println!(
            "  password logins: {:.1}/s ({} ok, {} failed), p50 {:.1} ms, p99 {:.1} ms",
            per_s(&alone),
            alone.ok,
            alone.failed,
            ms(&alone, 0.5),
            ms(&alone, 0.99)
        );
        println!(
            "  = {:.0}% of bare argon2id on this machine",
            100.0 * per_s(&alone) / bare_per_s.max(f64::MIN_POSITIVE)
        );
        if let Some(t) = &with_code {
            println!(
                "  password + TOTP logins ({} people): {:.1}/s ({} ok, {} failed, {} waits for a step), \
                 p50 {:.1} ms, p99 {:.1} ms",
                people.len(),
                per_s(t),
                t.ok,
                t.failed,
                t.skipped,
                ms(t, 0.5),
                ms(t, 0.99)
            );
            println!(
                "  = {:.0}% of password logins, same run",
                100.0 * per_s(t) / per_s(&alone).max(f64::MIN_POSITIVE)
            );
        }
    }
    Ok(())
}

/// What one phase of logins measured.
struct Phase {
    latency: hdrhistogram::Histogram<u64>,
    ok: u64,
    failed: u64,
    /// Logins not sent: no person had a step left.
    skipped: u64,
}

/// `POST /api/v1/login` for `d` over `connections`, spread over `nodes`;
/// `body(i)` is the i-th login's body (`None`: none can be sent now).
async fn logins(
    nodes: &[String],
    connections: usize,
    d: Duration,
    body: impl Fn(usize) -> Option<serde_json::Value> + Clone + Send + 'static,
) -> anyhow::Result<Phase> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let next = Arc::new(AtomicU64::new(0));
    let empty = Phase { latency: hdrhistogram::Histogram::<u64>::new(3)?, ok: 0, failed: 0, skipped: 0 };
    let outcome = Arc::new(Mutex::new(empty));
    let until = tokio::time::Instant::now() + d;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (nodes, next, outcome, body) = (nodes.to_vec(), next.clone(), outcome.clone(), body.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while tokio::time::Instant::now() < until {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let node = &nodes[i % nodes.len()];
                    let Some(body) = body(i) else {
                        outcome.lock().unwrap().skipped += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let began = std::time::Instant::now();
                    let r = http
                        .post(format!("http://{node}/api/v1/login"))
                        .header("x-requested-with", "gatehouse-load")
                        .json(&body)
                        .send()
                        .await;
                    let ok = r.is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
                    let mut o = outcome.lock().unwrap();
                    if ok {
                        let _ = o.latency.record(began.elapsed().as_micros() as u64);
                        o.ok += 1;
                    } else {
                        o.failed += 1;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let mut o = outcome.lock().unwrap();
    Ok(std::mem::replace(
        &mut o,
        Phase { latency: hdrhistogram::Histogram::<u64>::new(3)?, ok: 0, failed: 0, skipped: 0 },
    ))
}

/// A new user with `roles` and one API key for it; returns the key.
async fn user_with_key(cluster: &ProcCluster, username: &str, roles: &[&str]) -> anyhow::Result<String> {
    use gatehouse_proto::admin::key_service_client::KeyServiceClient;
    use gatehouse_proto::admin::user_service_client::UserServiceClient;
    use gatehouse_proto::admin::{CreateKeyRequest, CreateUserRequest};
    let grpc = admin_channel(&cluster.nodes[&1].grpc)?;
    let user = CreateUserRequest {
        username: username.into(),
        email: format!("{username}@bench.example"),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        password: String::new(),
    };
    UserServiceClient::new(grpc.clone()).create(admin_request(cluster, user)).await?;
    let key = CreateKeyRequest { user: username.into(), name: "bench".into(), ttl_seconds: 0, roles: vec![] };
    Ok(KeyServiceClient::new(grpc).create(admin_request(cluster, key)).await?.into_inner().secret)
}

async fn rate_accuracy(
    cluster: &ProcCluster,
    limit: u32,
    connections: usize,
    seconds: u64,
    json: bool,
) -> anyhow::Result<()> {
    let d = Duration::from_secs(seconds);
    let mut rows = Vec::new();
    for mode in ["strict", "global"] {
        let key = user_with_key(cluster, &format!("rate-{mode}"), &["viewer"]).await?;
        // Every node at once, each with its own connections.
        let calls: Vec<_> = cluster
            .nodes
            .values()
            .map(|n| {
                let auth = Some(("authorization", format!("Bearer {key}")));
                let http = n.http.clone();
                tokio::spawn(async move { load::http_get(&http, "/auth/verify", auth, connections, None, d).await })
            })
            .collect();
        let mut per_node = Vec::new();
        for call in calls {
            per_node.push(call.await??);
        }
        let admitted: u64 = per_node.iter().map(|f| f.ok).sum();
        let limited: u64 = per_node.iter().map(|f| f.limited).sum();
        let other: u64 = per_node.iter().map(|f| f.errors - f.limited).sum();
        rows.push((mode, admitted, limited, other, admitted as f64 / f64::from(limit)));
    }
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(mode, a, l, o, r)| serde_json::json!({ "mode": mode, "admitted": a, "limited": l, "other": o, "ratio": r }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "scenario": "rate-accuracy", "nodes": cluster.nodes.len(), "limit": limit, "window_secs": 60, "seconds": seconds, "rows": rows })
        );
    } else {
        println!(
            "scenario rate-accuracy: limit {limit} per 60 s, {} nodes x {connections} connections, {seconds} s per mode",
            cluster.nodes.len()
        );
        println!("{:<8} {:>10} {:>10} {:>8} {:>18}", "mode", "admitted", "429", "other", "admitted / limit");
        for (mode, a, l, o, r) in rows {
            println!("{mode:<8} {a:>10} {l:>10} {o:>8} {r:>18.3}");
        }
    }
    Ok(())
}

/// The newest audit record's sequence number (0 when there is none).
async fn audit_head(cluster: &ProcCluster) -> anyhow::Result<u64> {
    use gatehouse_proto::admin::audit_service_client::AuditServiceClient;
    use gatehouse_proto::admin::AuditQueryRequest;
    let grpc = admin_channel(&cluster.nodes[&1].grpc)?;
    let q = AuditQueryRequest { filter: None, page_size: 1, page_token: String::new() };
    let page = AuditServiceClient::new(grpc).query(admin_request(cluster, q)).await?.into_inner();
    Ok(page.records.first().map_or(0, |r| r.seq))
}

/// Records appended while `verify` runs beside a source that has started,
/// and the verify figures: (figures, records, seconds).
async fn beside(
    cluster: &ProcCluster,
    http: &str,
    verify: impl std::future::Future<Output = anyhow::Result<load::Figures>>,
) -> anyhow::Result<(load::Figures, u64, f64)> {
    let before = audit_head(cluster).await?;
    let started = std::time::Instant::now();
    let cpu = load::node_cpu_seconds(cluster);
    let timings = load::NodeTimings::fetch(http, "/auth/verify").await?;
    let mut figures = verify.await?;
    figures.node_cpu_s = Some(load::node_cpu_seconds(cluster) - cpu);
    figures.node_p99_ms = load::NodeTimings::fetch(http, "/auth/verify").await?.quantile_bound_ms_since(&timings, 0.99);
    let records = audit_head(cluster).await? - before;
    Ok((figures, records, started.elapsed().as_secs_f64()))
}

/// Waits (up to 30 s) until the audit head is `expected` records past
/// `from`; the records that made it.
async fn drained(cluster: &ProcCluster, from: u64, expected: u64) -> anyhow::Result<u64> {
    let started = std::time::Instant::now();
    loop {
        let total = audit_head(cluster).await? - from;
        if total >= expected || started.elapsed() > Duration::from_secs(30) {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The verify load beside the audit sources.
struct Verifying {
    node: u64,
    connections: usize,
    /// Paced requests per second; `None`: as fast as the connections go.
    rate: Option<f64>,
}

async fn audit_ingest(
    cluster: &ProcCluster,
    rate: u64,
    v: Verifying,
    callers: usize,
    seconds: u64,
    json: bool,
) -> anyhow::Result<()> {
    use gatehouse_proto::admin::user_service_client::UserServiceClient;
    use gatehouse_proto::admin::GetUserRequest;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let d = Duration::from_secs(seconds);
    let verify_key = user_with_key(cluster, "ingest-verifier", &["viewer"]).await?;
    // A key without roles: every admin call it makes is refused, and each
    // refusal is one rbac.denied audit record.
    let refused_key = user_with_key(cluster, "ingest-denied", &[]).await?;
    let http = cluster.nodes.get(&v.node).context("no such node")?.http.clone();
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let verify = || {
        let auth = Some(("authorization", format!("Bearer {verify_key}")));
        let http = http.clone();
        async move { load::http_get(&http, "/auth/verify", auth, v.connections, v.rate, d).await }
    };
    let (alone, _, _) = beside(cluster, &http, verify()).await?;
    let mut rows = vec![("alone".to_string(), alone, 0.0, String::new())];

    // The log at `rate` events per second, as the recorders send them.
    let from = audit_head(cluster).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (source, measured) = tokio::join!(load::audit_batches(cluster, rate, stop.clone()), async {
        let measured = beside(cluster, &http, verify()).await;
        stop.store(true, Ordering::Relaxed);
        measured
    });
    let acknowledged = source?;
    let (figures, records, secs) = measured?;
    let on_record = drained(cluster, from, acknowledged).await?;
    rows.push((
        format!("batches at {rate}/s"),
        figures,
        records as f64 / secs,
        format!("{on_record} of {acknowledged} acknowledged on record"),
    ));

    // End to end: refused admin calls on every node.
    if callers > 0 {
        let from = audit_head(cluster).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for node in cluster.nodes.values() {
            let channel = admin_channel(&node.grpc)?;
            for _ in 0..callers {
                let (channel, stop, key) = (channel.clone(), stop.clone(), refused_key.clone());
                tasks.push(tokio::spawn(async move {
                    let mut client = UserServiceClient::new(channel);
                    let mut refused = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let mut req = tonic::Request::new(GetUserRequest { user: "ingest-verifier".into() });
                        req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ascii"));
                        if client.get(req).await.is_err_and(|s| s.code() == tonic::Code::PermissionDenied) {
                            refused += 1;
                        }
                    }
                    refused
                }));
            }
        }
        let (figures, records, secs) = beside(cluster, &http, verify()).await?;
        stop.store(true, Ordering::Relaxed);
        let mut refused = 0;
        for t in tasks {
            refused += t.await?;
        }
        // Refusals are aggregated per caller, method and address for
        // `audit.aggregate_ms`: a handful of records stand for all of them.
        let on_record = drained(cluster, from, 1).await?;
        rows.push((
            format!("{callers} refusers/node"),
            figures,
            records as f64 / secs,
            format!("{refused} refusals aggregated into {on_record} records"),
        ));
    }

    let alone_p99 = rows[0].1.p99_ms;
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(name, f, per_second, note)| {
                serde_json::json!({ "source": name, "audit_records_per_second": per_second, "verify": f.json(),
                    "verify_p99_rise": f.p99_ms / alone_p99 - 1.0, "note": note })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "scenario": "audit-ingest", "nodes": cluster.nodes.len(), "leader": leader, "seconds": seconds,
                "verify_node": v.node, "verify_connections": v.connections, "verify_rate": v.rate, "rows": rows })
        );
    } else {
        let pace = v.rate.map_or("as fast as they go".to_string(), |r| format!("paced at {r:.0}/s"));
        println!(
            "scenario audit-ingest: {} nodes (leader {leader}), {seconds} s per row, verify on node {} with {} connections, {pace}",
            cluster.nodes.len(), v.node, v.connections
        );
        println!(
            "{:<22} {:>10} {:>10} {:>8} {:>8} {:>9} {:>13} {:>10}  note",
            "audit source", "records/s", "verify/s", "p50 ms", "p99 ms", "p99 rise", "node p99 ms", "node CPU"
        );
        for (name, f, per_second, note) in &rows {
            let node_p99 = f.node_p99_ms.map_or("-".to_string(), |ms| format!("≤ {ms:.1}"));
            println!(
                "{name:<22} {per_second:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>+8.0}% {node_p99:>13} {:>9.0}%  {note}",
                f.per_second,
                f.p50_ms,
                f.p99_ms,
                (f.p99_ms / alone_p99 - 1.0) * 100.0,
                f.node_cpu_s.unwrap_or(0.0) / seconds as f64 * 100.0,
            );
        }
    }
    Ok(())
}

/// A bearer-authenticated admin channel.
/// A channel to a node's admin API (`grpc_addr`: plaintext on loopback,
/// whether or not the nodes speak TLS to each other).
fn admin_channel(grpc: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?.connect_lazy())
}

fn admin_request<T>(cluster: &ProcCluster, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {}", cluster.admin_key).parse().expect("key is ascii"));
    req
}

async fn login_cookie(
    http: &str,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &[u8]) -> anyhow::Result<String> {
        s.write_all(req).await?;
        let mut resp = Vec::new();
        // A TLS peer may close without close_notify: what arrived counts.
        let _ = s.read_to_end(&mut resp).await;
        Ok(String::from_utf8_lossy(&resp).into_owned())
    }
    let body = serde_json::json!({ "username": username, "password": password }).to_string();
    let req = format!(
        "POST /api/v1/login HTTP/1.1\r\nHost: {http}\r\nX-Requested-With: load\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let s = tokio::net::TcpStream::connect(http).await?;
    let resp = match tls {
        None => exchange(s, req.as_bytes()).await?,
        Some(config) => {
            let ip: std::net::SocketAddr = http.parse()?;
            let name = rustls::pki_types::ServerName::IpAddress(ip.ip().into());
            exchange(tokio_rustls::TlsConnector::from(config.clone()).connect(name, s).await?, req.as_bytes()).await?
        }
    };
    let line = resp
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .ok_or_else(|| anyhow::anyhow!("login failed: {resp}"))?;
    Ok(line.split_once(':').map(|x| x.1).unwrap_or("").trim().split(';').next().unwrap_or("").to_string())
}

async fn verify(
    cluster: &ProcCluster,
    connections: usize,
    seconds: u64,
    https: bool,
    json: bool,
) -> anyhow::Result<()> {
    use gatehouse_proto::admin::key_service_client::KeyServiceClient;
    use gatehouse_proto::admin::user_service_client::UserServiceClient;
    use gatehouse_proto::admin::{CreateKeyRequest, CreateUserRequest};
    let tls = if https { Some(gatehouse_chaos::load_tls::client(&cluster.dir.join("ca.pem"), true)?) } else { None };

    let grpc = admin_channel(&cluster.nodes[&1].grpc)?;
    let password = "load-generator-password";
    UserServiceClient::new(grpc.clone())
        .create(admin_request(
            cluster,
            CreateUserRequest {
                username: "loaduser".into(),
                email: "load@bench.example".into(),
                roles: vec!["viewer".into()],
                password: password.into(),
            },
        ))
        .await?;
    let key = KeyServiceClient::new(grpc)
        .create(admin_request(
            cluster,
            CreateKeyRequest { user: "loaduser".into(), name: "load".into(), ttl_seconds: 0, roles: vec![] },
        ))
        .await?
        .into_inner()
        .secret;
    let http = cluster.nodes[&1].http.clone();
    let cookie = login_cookie(&http, tls.as_ref(), "loaduser", password).await?;

    let (baseline, baseline_addr) = baseline(https.then_some(cluster.dir.as_path()))?;
    let d = Duration::from_secs(seconds);
    let t = tls.as_ref();
    let ceiling = if https { "bare hyper + rustls (ceiling)" } else { "bare hyper (ceiling)" };
    let rows = vec![
        (ceiling, load::http_get_over(t, &baseline_addr, "/", None, connections, None, d).await?),
        (
            "verify-key",
            load::http_get_over(
                t,
                &http,
                "/auth/verify",
                Some(("authorization", format!("Bearer {key}"))),
                connections,
                None,
                d,
            )
            .await?,
        ),
        (
            "verify-session",
            load::http_get_over(t, &http, "/auth/verify", Some(("cookie", cookie)), connections, None, d).await?,
        ),
    ];
    drop(baseline);
    let over = if https { " over HTTPS" } else { "" };
    let title = format!("scenario verify{over}: one node, {connections} connections, {seconds} s each");
    let head =
        json.then(|| serde_json::json!({ "scenario": "verify", "connections": connections, "seconds": seconds }));
    let out = print_beside_ceiling(&rows, &title, "req/s", head);
    if json {
        println!("{out}");
    }
    Ok(())
}

/// The `proxy` scenario: the bare upstream, nginx `proxy_pass` to it, two
/// bare hyper proxies to it (pooled and lean), and node 1's `[proxy]` to
/// it, each with `connections` keep-alive clients and each serving
/// process's CPU.
async fn proxy(bin: &std::path::Path, nodes: u64, connections: usize, seconds: u64, json: bool) -> anyhow::Result<()> {
    let d = Duration::from_secs(seconds);
    let (upstream, upstream_addr) = baseline(None)?;
    let dir = tempfile::tempdir()?;
    let proxy_port = gatehouse_chaos::cluster::free_port()?;
    let mut cluster =
        ProcCluster::prepare_with(bin, dir.path(), nodes, "[rate_limits]\nenabled = false\n", &[], false)?;
    // Node 1 alone proxies.
    let proxy = format!(
        "[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\n[[proxy.upstreams]]\nurl = \"http://{upstream_addr}\"\n"
    );
    cluster.append_config(1, &proxy)?;
    cluster.launch().await?;
    let key = user_with_key(&cluster, "proxied", &["viewer"]).await?;
    let nginx_dir = tempfile::tempdir()?;
    let nginx_port = gatehouse_chaos::cluster::free_port()?;
    let nginx = gatehouse_chaos::load_proxy::nginx(nginx_dir.path(), nginx_port, &upstream_addr).await?;
    let bare_proxy = |upstreams: &str| {
        helper(&["baseline-proxy".into(), upstream_addr.clone().into(), "--upstreams".into(), upstreams.into()])
    };
    let (pooled, pooled_addr) = bare_proxy("pooled")?;
    let (lean, lean_addr) = bare_proxy("per-connection")?;
    let through = format!("127.0.0.1:{proxy_port}");
    let auth = Some(("authorization", format!("Bearer {key}")));
    let node_1 = cluster.pid(1).ok_or_else(|| anyhow::anyhow!("node 1 is not running"))?;
    let nginx_addr = format!("127.0.0.1:{nginx_port}");
    // Each step's CPU is the serving process's alone (nginx's with its
    // workers): on this shared machine a steadier comparison than req/s.
    let steps = [
        ("bare hyper upstream (ceiling)", upstream.0.id(), &upstream_addr, None),
        ("nginx proxy_pass", nginx.0.id(), &nginx_addr, None),
        ("bare hyper proxy, pooled", pooled.0.id(), &pooled_addr, None),
        ("bare hyper proxy, lean", lean.0.id(), &lean_addr, None),
        ("gatehouse [proxy], key verified", node_1, &through, auth),
    ];
    let mut rows = Vec::new();
    for (name, pid, addr, header) in steps {
        let cpu = load::cpu_seconds(&[pid]);
        let mut figures = load::http_get(addr, "/", header, connections, None, d).await?;
        figures.node_cpu_s = Some(load::cpu_seconds(&[pid]) - cpu);
        rows.push((name, figures));
    }
    drop((pooled, lean));
    drop(nginx);
    drop(upstream);
    drop(cluster);
    let title = format!("scenario proxy: node 1 of {nodes}, {connections} connections, {seconds} s each");
    let head = json.then(|| serde_json::json!({ "scenario": "proxy", "connections": connections, "seconds": seconds }));
    let out = print_beside_ceiling(&rows, &title, "req/s", head);
    if json {
        println!("{out}");
    }
    Ok(())
}

/// The `jwt` scenario: two clusters in turn, one without `[jwt]` and one
/// with it, each loaded with `sessions` sessions.
async fn jwt(
    bin: &std::path::Path,
    nodes: u64,
    connections: usize,
    seconds: u64,
    sessions: usize,
    rsa: bool,
    json: bool,
) -> anyhow::Result<()> {
    let d = Duration::from_secs(seconds);
    let (baseline, baseline_addr) = baseline(None)?;
    let mut rows =
        vec![("bare hyper (ceiling)", load::http_get(&baseline_addr, "/", None, connections, None, d).await?)];
    drop(baseline);
    for with_jwt in [false, true] {
        let dir = tempfile::tempdir()?;
        let mut extra = "[rate_limits]\nenabled = false\n".to_string();
        if with_jwt {
            let kek = dir.path().join("kek");
            std::fs::write(&kek, hex::encode(rand::random::<[u8; 32]>()))?;
            let alg = if rsa { "RS256" } else { "EdDSA" };
            extra += &format!(
                "[secrets]\nkeys = [{{ id = \"bench\", file = \"{}\" }}]\n\
                 [jwt]\nissuer = \"https://bench.example\"\naudience = \"apps\"\nalgorithm = \"{alg}\"\n",
                kek.display()
            );
        }
        let mut cluster = ProcCluster::prepare_with(bin, dir.path(), nodes, &extra, &[], false)?;
        cluster.launch().await?;
        let tokens = load::bulk_load(&cluster, 100, 0, sessions.max(1), 2_000).await?;
        let http = cluster.nodes[&1].http.clone();
        let bearer = |t: &String| format!("Bearer {t}");
        // Node 1 has applied the sessions, and with `[jwt]` holds a key.
        let started = std::time::Instant::now();
        loop {
            let probe = load::http_get(
                &http,
                "/auth/verify",
                Some(("authorization", bearer(&tokens[0]))),
                1,
                None,
                Duration::from_millis(200),
            )
            .await?;
            if probe.ok > 0 && probe.errors == 0 {
                break;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "node 1 never verified a bulk session");
        }
        let one = Some(("authorization", bearer(&tokens[0])));
        if with_jwt {
            rows.push((
                "verify + JWT, cached",
                load::http_get(&http, "/auth/verify", one, connections, None, d).await?,
            ));
            let each = std::sync::Arc::new(tokens.iter().map(bearer).collect::<Vec<_>>());
            let signed =
                load::http_get_each(None, &http, "/auth/verify", Some(("authorization", each)), connections, None, d)
                    .await?;
            anyhow::ensure!(
                (signed.ok + signed.errors) as usize <= tokens.len(),
                "more requests than sessions: raise --sessions so every request signs"
            );
            rows.push(("verify + JWT, signed", signed));
        } else {
            rows.push(("verify, no [jwt]", load::http_get(&http, "/auth/verify", one, connections, None, d).await?));
        }
        drop(cluster);
    }
    let alg = if rsa { "RS256" } else { "EdDSA" };
    let title = format!("scenario jwt ({alg}): one node of {nodes}, {connections} connections, {seconds} s each");
    let head = json
        .then(|| serde_json::json!({ "scenario": "jwt", "alg": alg, "connections": connections, "seconds": seconds }));
    let out = print_beside_ceiling(&rows, &title, "req/s", head);
    if json {
        println!("{out}");
    }
    Ok(())
}

async fn memory(
    mut cluster: ProcCluster,
    sessions: usize,
    keys: usize,
    users: usize,
    front: bool,
    json: bool,
) -> anyhow::Result<()> {
    use gatehouse_proto::control::LocalStatusRequest;
    let started = std::time::Instant::now();
    load::bulk_load(&cluster, users, keys, sessions, 2_000).await?;
    let loaded_in = started.elapsed();
    // Every node applied everything.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let target = cluster.control_client(leader)?.local_status(LocalStatusRequest {}).await?.into_inner().applied_index;
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        loop {
            let applied =
                cluster.control_client(id)?.local_status(LocalStatusRequest {}).await?.into_inner().applied_index;
            if applied >= target {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let rss: Vec<(u64, u64)> =
        cluster.nodes.keys().map(|&id| (id, cluster.pid(id).and_then(load::rss_bytes).unwrap_or(0))).collect();
    let victim = *cluster.nodes.keys().find(|&&id| id != leader).expect("a follower");
    cluster.kill(victim);
    cluster.spawn(victim)?;
    let ready_in = cluster.wait_ready(victim, Duration::from_secs(120)).await?;
    let rss_after_restart = cluster.pid(victim).and_then(load::rss_bytes).unwrap_or(0);
    // A front copying the same state: its RSS, its first start and a restart.
    let front = if front {
        let first = start_front(&mut cluster, 101).await?;
        let rss = cluster.fronts[&101].pid().and_then(load::rss_bytes).unwrap_or(0);
        cluster.kill_front(101);
        cluster.spawn_front(101)?;
        let again = cluster.wait_front_ready(101, Duration::from_secs(120)).await?;
        Some((rss, first, again))
    } else {
        None
    };
    if let Some((rss, first, again)) = front {
        if json {
            println!(
                "{}",
                serde_json::json!({ "scenario": "memory-front", "rss_bytes": rss, "first_start_to_serving_seconds": first.as_secs_f64(), "restart_to_serving_seconds": again.as_secs_f64() })
            );
        } else {
            println!(
                "front 101: RSS {:.0} MiB; serving {:.2} s after its start, {:.2} s after a restart (kill -9)",
                rss as f64 / 1048576.0,
                first.as_secs_f64(),
                again.as_secs_f64()
            );
        }
    }
    if json {
        let nodes: Vec<_> = rss.iter().map(|(id, b)| serde_json::json!({ "id": id, "rss_bytes": b })).collect();
        println!(
            "{}",
            serde_json::json!({ "scenario": "memory", "sessions": sessions, "keys": keys, "users": users, "load_seconds": loaded_in.as_secs_f64(),
                "nodes": nodes, "restarted": victim, "ready_after_restart_seconds": ready_in.as_secs_f64(), "rss_after_restart_bytes": rss_after_restart })
        );
    } else {
        println!(
            "scenario memory: {users} users, {keys} keys, {sessions} sessions (loaded in {:.1} s)",
            loaded_in.as_secs_f64()
        );
        for (id, b) in rss {
            println!("node {id}: RSS {:.0} MiB", b as f64 / (1024.0 * 1024.0));
        }
        println!(
            "node {victim} killed (-9) and restarted: ready in {:.2} s, RSS {:.0} MiB",
            ready_in.as_secs_f64(),
            rss_after_restart as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}

/// The Envoy secret of the `ext-authz` scenario.
const ENVOY_SECRET: &str = "gatehouse-load-envoy-secret-0123456789abcdef";

/// Starts front `id` following every voter and waits until it serves;
/// returns how long that took from its start.
async fn start_front(cluster: &mut ProcCluster, id: u64) -> anyhow::Result<Duration> {
    let voters: Vec<(u64, String)> = cluster.nodes.values().map(|n| (n.id, n.peer.clone())).collect();
    cluster.add_front(id, &voters)?;
    cluster.wait_front_ready(id, Duration::from_secs(120)).await
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn revocation(mut cluster: ProcCluster, revocations: usize, fronts: u64, json: bool) -> anyhow::Result<()> {
    for k in 0..fronts {
        start_front(&mut cluster, 101 + k).await?;
    }
    let targets: Vec<(u64, String)> = cluster
        .nodes
        .values()
        .map(|n| (n.id, n.http.clone()))
        .chain(cluster.fronts.values().map(|f| (f.id, f.http.clone())))
        .collect();
    let started = std::time::Instant::now();
    let delays = gatehouse_chaos::load_fronts::revocations(&cluster, &targets, revocations).await?;
    let took = started.elapsed();
    let rows: Vec<(u64, f64, f64, f64)> = delays
        .iter()
        .map(|d| {
            let h = &d.delays;
            (d.id, ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)), ms(h.max()))
        })
        .collect();
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(id, p50, p99, max)| serde_json::json!({ "id": id, "front": *id > 100, "p50_ms": p50, "p99_ms": p99, "max_ms": max }))
            .collect();
        println!("{}", serde_json::json!({ "scenario": "revocation", "revocations": revocations, "rows": rows }));
    } else {
        println!(
            "scenario revocation: {revocations} revocations, {} voters and {fronts} fronts verifying each key in a tight loop ({:.0} s)",
            cluster.nodes.len(),
            took.as_secs_f64()
        );
        println!("{:<10} {:>10} {:>10} {:>10}", "node", "p50 ms", "p99 ms", "max ms");
        for (id, p50, p99, max) in rows {
            let name = if id > 100 { format!("front {id}") } else { format!("voter {id}") };
            println!("{name:<10} {p50:>10.2} {p99:>10.2} {max:>10.2}");
        }
    }
    Ok(())
}

async fn front_verify(mut cluster: ProcCluster, connections: usize, seconds: u64, json: bool) -> anyhow::Result<()> {
    let key = user_with_key(&cluster, "frontuser", &["viewer"]).await?;
    let first_start = start_front(&mut cluster, 101).await?;
    let front = cluster.fronts[&101].http.clone();
    let voter = cluster.nodes[&1].http.clone();
    let (baseline, baseline_addr) = baseline(None)?;
    let d = Duration::from_secs(seconds);
    let header = || Some(("authorization", format!("Bearer {key}")));
    let rows = vec![
        ("bare hyper (ceiling)", load::http_get(&baseline_addr, "/", None, connections, None, d).await?),
        ("verify-key on a front", load::http_get(&front, "/auth/verify", header(), connections, None, d).await?),
        ("verify-key on a voter", load::http_get(&voter, "/auth/verify", header(), connections, None, d).await?),
    ];
    drop(baseline);
    // The front's memory beside a voter's, and a restart to serving.
    let rss = |pid: Option<u32>| pid.and_then(load::rss_bytes).unwrap_or(0);
    let front_rss = rss(cluster.fronts[&101].pid());
    let voter_rss = rss(cluster.pid(1));
    cluster.kill_front(101);
    cluster.spawn_front(101)?;
    let restart = cluster.wait_front_ready(101, Duration::from_secs(120)).await?;
    let title = format!("scenario front-verify: {connections} connections, {seconds} s each");
    let head = json.then(|| {
        serde_json::json!({ "scenario": "front-verify", "connections": connections, "seconds": seconds,
            "front_rss_bytes": front_rss, "voter_rss_bytes": voter_rss,
            "front_first_start_to_serving_seconds": first_start.as_secs_f64(), "front_restart_to_serving_seconds": restart.as_secs_f64() })
    });
    let out = print_beside_ceiling(&rows, &title, "req/s", head);
    if json {
        println!("{out}");
    } else {
        println!(
            "front RSS {:.0} MiB, voter RSS {:.0} MiB; front serving {:.2} s after its first start, {:.2} s after a restart (kill -9)",
            front_rss as f64 / 1048576.0,
            voter_rss as f64 / 1048576.0,
            first_start.as_secs_f64(),
            restart.as_secs_f64()
        );
    }
    Ok(())
}

async fn ext_authz(mut cluster: ProcCluster, streams: usize, seconds: u64, json: bool) -> anyhow::Result<()> {
    use std::io::BufRead;
    let key = user_with_key(&cluster, "envoyuser", &["viewer"]).await?;
    start_front(&mut cluster, 101).await?;
    let addr_of = |config: &std::path::Path| -> anyhow::Result<String> {
        let text = std::fs::read_to_string(config)?;
        let line = text
            .lines()
            .find(|l| l.starts_with("ext_authz_addr"))
            .ok_or_else(|| anyhow::anyhow!("no ext_authz_addr"))?;
        Ok(line.split('"').nth(1).unwrap_or_default().to_string())
    };
    let on_front = addr_of(&cluster.fronts[&101].config)?;
    let on_voter = addr_of(&cluster.nodes[&1].config)?;
    let mut child = load::Killed(
        std::process::Command::new(std::env::current_exe()?)
            .arg("check-baseline-server")
            .stdout(std::process::Stdio::piped())
            .spawn()?,
    );
    let mut port = String::new();
    std::io::BufReader::new(child.0.stdout.take().expect("piped")).read_line(&mut port)?;
    let baseline_addr = format!("127.0.0.1:{}", port.trim());
    let d = Duration::from_secs(seconds);
    let bearer = format!("Bearer {key}");
    use gatehouse_chaos::load_fronts::checks;
    let rows = vec![
        ("bare tonic (ceiling)", checks(&baseline_addr, None, &bearer, streams, d).await?),
        ("Check on a front", checks(&on_front, Some(ENVOY_SECRET), &bearer, streams, d).await?),
        ("Check on a voter", checks(&on_voter, Some(ENVOY_SECRET), &bearer, streams, d).await?),
    ];
    drop(child);
    let title = format!("scenario ext-authz: {streams} concurrent Check streams, {seconds} s each");
    let head = json.then(|| serde_json::json!({ "scenario": "ext-authz", "streams": streams, "seconds": seconds }));
    let out = print_beside_ceiling(&rows, &title, "calls/s", head);
    if json {
        println!("{out}");
    }
    Ok(())
}

/// Prints figures set beside the first row (the ceiling): the JSON rows
/// (`{name, ratio, figures}`), or a table headed `title` whose rate column
/// is `unit`.
fn print_beside_ceiling(
    rows: &[(&str, load::Figures)],
    title: &str,
    unit: &str,
    json: Option<serde_json::Value>,
) -> serde_json::Value {
    let ceiling = rows[0].1.per_second;
    if let Some(mut head) = json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(name, f)| serde_json::json!({ "name": name, "ratio": f.per_second / ceiling, "figures": f.json() }))
            .collect();
        head["rows"] = serde_json::Value::Array(rows);
        return head;
    }
    println!("{title}");
    // CPU per request, where the scenario measured the serving process's.
    let cpu = rows.iter().any(|(_, f)| f.node_cpu_s.is_some());
    let cpu_head = if cpu { format!(" {:>12}", "CPU µs/req") } else { String::new() };
    println!(
        "{:<34} {:>10} {:>8} {:>10} {:>8} {:>8} {:>8}{cpu_head}",
        "", "ok", "errors", unit, "ratio", "p50 ms", "p99 ms"
    );
    for (name, f) in rows {
        let cpu = match f.node_cpu_s {
            Some(s) if cpu => format!(" {:>12.1}", s * 1e6 / f.ok.max(1) as f64),
            _ if cpu => format!(" {:>12}", "-"),
            _ => String::new(),
        };
        println!(
            "{name:<34} {:>10} {:>8} {:>10.0} {:>8.2} {:>8.2} {:>8.2}{cpu}",
            f.ok,
            f.errors,
            f.per_second,
            f.per_second / ceiling,
            f.p50_ms,
            f.p99_ms
        );
    }
    serde_json::Value::Null
}
