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
    let cluster = ProcCluster::start(&bin, dir.path(), args.nodes).await?;
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
        Scenario::BaselineServer => unreachable!("handled above"),
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
