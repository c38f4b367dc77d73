//! `gatehouse-load`: benchmark scenarios against a cluster of real nodes it
//! starts itself. Build in release for figures worth writing down:
//!
//! ```sh
//! cargo build --release --bins
//! target/release/gatehouse-load writes --writers 1,16,64,256 --seconds 10
//! ```

use std::path::PathBuf;
use std::time::Duration;

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
    },
    /// /auth/verify with an API key and with a session cookie on one node,
    /// beside a bare hyper server answering 200 (the ceiling), same run.
    Verify {
        #[arg(long, default_value_t = 64)]
        connections: usize,
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
    /// Audit events per second (RBAC refusals, one event each, on every
    /// node) with /auth/verify running beside them, against verify alone.
    AuditIngest {
        /// Verify connections on node 1.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Concurrent refused admin calls per node.
        #[arg(long, default_value_t = 16)]
        callers: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Internal: the bare hyper baseline server (prints its port on stdout).
    #[command(hide = true)]
    BaselineServer,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Scenario::BaselineServer = args.scenario {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        return load::serve_baseline(listener).await;
    }
    let bin = match args.bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("gatehouse"),
    };
    let dir = tempfile::tempdir()?;
    let extra = match &args.scenario {
        Scenario::RateAccuracy { limit, .. } => rate_policies(*limit),
        _ => String::new(),
    };
    let cluster = ProcCluster::start_with(&bin, dir.path(), args.nodes, &extra, &[]).await?;
    match args.scenario {
        Scenario::Writes { writers, seconds } => {
            let mut rows = Vec::new();
            for (i, w) in writers.iter().enumerate() {
                rows.push(load::writes(&cluster, *w, Duration::from_secs(seconds), &format!("r{i}")).await?);
            }
            if args.json {
                let rows: Vec<_> = rows.iter().map(|r| r.json()).collect();
                println!(
                    "{}",
                    serde_json::json!({ "scenario": "writes", "nodes": args.nodes, "seconds": seconds, "rows": rows })
                );
            } else {
                println!("scenario writes: {} nodes, {seconds} s per step", args.nodes);
                println!(
                    "{:>8} {:>10} {:>8} {:>12} {:>10} {:>10}",
                    "writers", "commits", "errors", "commits/s", "p50 ms", "p99 ms"
                );
                for r in rows {
                    println!(
                        "{:>8} {:>10} {:>8} {:>12.0} {:>10.2} {:>10.2}",
                        r.concurrency, r.ok, r.errors, r.per_second, r.p50_ms, r.p99_ms
                    );
                }
            }
        }
        Scenario::Verify { connections, seconds } => verify(&cluster, connections, seconds, args.json).await?,
        Scenario::Memory { sessions, keys, users } => memory(cluster, sessions, keys, users, args.json).await?,
        Scenario::RateAccuracy { limit, connections, seconds } => {
            rate_accuracy(&cluster, limit, connections, seconds, args.json).await?
        }
        Scenario::AuditIngest { connections, callers, seconds } => {
            audit_ingest(&cluster, connections, callers, seconds, args.json).await?
        }
        Scenario::BaselineServer => unreachable!("handled above"),
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

/// A new user with `roles` and one API key for it; returns the key.
async fn user_with_key(cluster: &ProcCluster, username: &str, roles: &[&str]) -> anyhow::Result<String> {
    use gatehouse_proto::admin::key_service_client::KeyServiceClient;
    use gatehouse_proto::admin::user_service_client::UserServiceClient;
    use gatehouse_proto::admin::{CreateKeyRequest, CreateUserRequest};
    let grpc = cluster.peers.channel(&cluster.nodes[&1].grpc)?;
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
                tokio::spawn(async move { load::http_get(&http, "/auth/verify", auth, connections, d).await })
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
    let grpc = cluster.peers.channel(&cluster.nodes[&1].grpc)?;
    let q = AuditQueryRequest { filter: None, page_size: 1, page_token: String::new() };
    let page = AuditServiceClient::new(grpc).query(admin_request(cluster, q)).await?.into_inner();
    Ok(page.records.first().map_or(0, |r| r.seq))
}

async fn audit_ingest(
    cluster: &ProcCluster,
    connections: usize,
    callers: usize,
    seconds: u64,
    json: bool,
) -> anyhow::Result<()> {
    use gatehouse_proto::admin::user_service_client::UserServiceClient;
    use gatehouse_proto::admin::GetUserRequest;
    let d = Duration::from_secs(seconds);
    let verify_key = user_with_key(cluster, "ingest-verifier", &["viewer"]).await?;
    // A key without roles: every admin call it makes is refused, and each
    // refusal is one rbac.denied audit record.
    let refused_key = user_with_key(cluster, "ingest-denied", &[]).await?;
    let http = cluster.nodes[&1].http.clone();
    let auth = || Some(("authorization", format!("Bearer {verify_key}")));

    let alone = load::http_get(&http, "/auth/verify", auth(), connections, d).await?;

    let before = audit_head(cluster).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers_tasks = Vec::new();
    for node in cluster.nodes.values() {
        let channel = cluster.peers.channel(&node.grpc)?;
        for _ in 0..callers {
            let (channel, stop, key) = (channel.clone(), stop.clone(), refused_key.clone());
            callers_tasks.push(tokio::spawn(async move {
                let mut client = UserServiceClient::new(channel);
                let mut refused = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
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
    let started = std::time::Instant::now();
    let beside = load::http_get(&http, "/auth/verify", auth(), connections, d).await?;
    let during = audit_head(cluster).await? - before;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for t in callers_tasks {
        refused += t.await?;
    }
    // Every refusal becomes a record: wait for the buffers to drain.
    let drained = std::time::Instant::now();
    let mut total = audit_head(cluster).await? - before;
    while total < refused && drained.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        total = audit_head(cluster).await? - before;
    }
    let per_second = during as f64 / elapsed;
    let p99_rise = beside.p99_ms / alone.p99_ms - 1.0;
    if json {
        println!(
            "{}",
            serde_json::json!({ "scenario": "audit-ingest", "nodes": cluster.nodes.len(), "seconds": seconds,
                "audit_records_per_second": per_second, "refused_calls": refused, "records_appended": total,
                "verify_alone": alone.json(), "verify_beside": beside.json(), "verify_p99_rise": p99_rise })
        );
    } else {
        println!(
            "scenario audit-ingest: {} nodes, {callers} refused-call clients per node, verify on node 1 with {connections} connections, {seconds} s",
            cluster.nodes.len()
        );
        println!(
            "audit records appended: {per_second:.0}/s while loaded ({during} in {elapsed:.1} s); {total} of {refused} refusals on record after draining"
        );
        println!("{:<16} {:>10} {:>8} {:>8}", "verify", "req/s", "p50 ms", "p99 ms");
        for (name, f) in [("alone", &alone), ("beside audit", &beside)] {
            println!("{name:<16} {:>10.0} {:>8.2} {:>8.2}", f.per_second, f.p50_ms, f.p99_ms);
        }
        println!("verify p99 rise: {:+.0}%", p99_rise * 100.0);
    }
    Ok(())
}

/// A bearer-authenticated admin channel.
fn admin_request<T>(cluster: &ProcCluster, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {}", cluster.admin_key).parse().expect("key is ascii"));
    req
}

async fn login_cookie(http: &str, username: &str, password: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::json!({ "username": username, "password": password }).to_string();
    let req = format!(
        "POST /api/v1/login HTTP/1.1\r\nHost: {http}\r\nX-Requested-With: load\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(req.as_bytes()).await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let line = resp
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .ok_or_else(|| anyhow::anyhow!("login failed: {resp}"))?;
    Ok(line.split_once(':').map(|x| x.1).unwrap_or("").trim().split(';').next().unwrap_or("").to_string())
}

async fn verify(cluster: &ProcCluster, connections: usize, seconds: u64, json: bool) -> anyhow::Result<()> {
    use gatehouse_proto::admin::key_service_client::KeyServiceClient;
    use gatehouse_proto::admin::user_service_client::UserServiceClient;
    use gatehouse_proto::admin::{CreateKeyRequest, CreateUserRequest};
    use std::io::BufRead;

    let grpc = cluster.peers.channel(&cluster.nodes[&1].grpc)?;
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
    let cookie = login_cookie(&http, "loaduser", password).await?;

    let exe = std::env::current_exe()?;
    let mut baseline =
        std::process::Command::new(exe).arg("baseline-server").stdout(std::process::Stdio::piped()).spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(baseline.stdout.take().expect("piped")).read_line(&mut line)?;
    let baseline_addr = format!("127.0.0.1:{}", line.trim());
    let d = Duration::from_secs(seconds);
    let rows = vec![
        ("bare hyper (ceiling)", load::http_get(&baseline_addr, "/", None, connections, d).await?),
        (
            "verify-key",
            load::http_get(&http, "/auth/verify", Some(("authorization", format!("Bearer {key}"))), connections, d)
                .await?,
        ),
        ("verify-session", load::http_get(&http, "/auth/verify", Some(("cookie", cookie)), connections, d).await?),
    ];
    let _ = baseline.kill();
    let ceiling = rows[0].1.per_second;
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(name, f)| serde_json::json!({ "name": name, "ratio": f.per_second / ceiling, "figures": f.json() }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "scenario": "verify", "connections": connections, "seconds": seconds, "rows": rows })
        );
    } else {
        println!("scenario verify: one node, {connections} connections, {seconds} s each");
        println!(
            "{:<22} {:>10} {:>8} {:>10} {:>8} {:>8} {:>8}",
            "", "ok", "errors", "req/s", "ratio", "p50 ms", "p99 ms"
        );
        for (name, f) in rows {
            println!(
                "{name:<22} {:>10} {:>8} {:>10.0} {:>8.2} {:>8.2} {:>8.2}",
                f.ok,
                f.errors,
                f.per_second,
                f.per_second / ceiling,
                f.p50_ms,
                f.p99_ms
            );
        }
    }
    Ok(())
}

async fn memory(
    mut cluster: ProcCluster,
    sessions: usize,
    keys: usize,
    users: usize,
    json: bool,
) -> anyhow::Result<()> {
    use gatehouse_proto::raft::LocalStatusRequest;
    let started = std::time::Instant::now();
    load::bulk_load(&cluster, users, keys, sessions, 2_000).await?;
    let loaded_in = started.elapsed();
    // Every node applied everything.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let target = cluster.raft_client(leader)?.local_status(LocalStatusRequest {}).await?.into_inner().applied_index;
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        loop {
            let applied =
                cluster.raft_client(id)?.local_status(LocalStatusRequest {}).await?.into_inner().applied_index;
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
