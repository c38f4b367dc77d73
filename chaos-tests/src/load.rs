//! Benchmark scenarios. Each reports throughput and latency percentiles from
//! an HDR histogram, measured by the client.

use std::time::{Duration, Instant};

use gatehouse_domain::{Command, CommandBatch, Payload};
use gatehouse_proto::events::CreateUser;
use gatehouse_proto::raft::ProposeRequest;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

use crate::cluster::ProcCluster;

/// One measured step of a scenario.
#[derive(Debug, Clone)]
pub struct Figures {
    pub concurrency: usize,
    pub ok: u64,
    pub errors: u64,
    /// Of the errors, answers 429 (rate limited).
    pub limited: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Figures {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "concurrency": self.concurrency, "ok": self.ok, "errors": self.errors, "limited": self.limited,
            "per_second": self.per_second, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
        })
    }
}

/// One client task's latency histogram, successes, failures, and 429s among them.
type TaskFigures = (Histogram<u64>, u64, u64, u64);

/// Merges the client tasks' figures into one step's result.
async fn merge(
    tasks: Vec<tokio::task::JoinHandle<TaskFigures>>,
    started: Instant,
    concurrency: usize,
) -> anyhow::Result<Figures> {
    let mut hist = histogram();
    let (mut ok, mut errors, mut limited) = (0, 0, 0);
    for t in tasks {
        let (h, o, e, l) = t.await?;
        hist.add(h).ok();
        ok += o;
        errors += e;
        limited += l;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Figures {
        concurrency,
        ok,
        errors,
        limited,
        per_second: ok as f64 / secs,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// `writes`: `writers` clients each propose one command at a time (one Raft
/// entry per command) to the leader for `duration`; every acknowledged
/// proposal is a commit replicated to a majority and applied.
pub async fn writes(cluster: &ProcCluster, writers: usize, duration: Duration, run: &str) -> anyhow::Result<Figures> {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = cluster.raft_client(leader)?;
        let run = run.to_string();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut seq = 0u64;
            // The client's own ids from a user-space RNG: the load generator
            // shares the machine with the cluster and should cost it little.
            let mut rng = rand::rngs::StdRng::from_entropy();
            let mut id = || format!("{:032x}", rng.gen::<u128>());
            while Instant::now() < deadline {
                seq += 1;
                let cmd = Command {
                    proposed_at: gatehouse_api::cluster::now_ms(),
                    origin_node: 0,
                    request_id: id(),
                    traceparent: String::new(),
                    payload: Some(Payload::CreateUser(CreateUser {
                        user_id: id(),
                        username: format!("{run}-w{w}-{seq}"),
                        email: format!("w{w}-{seq}@bench.example"),
                        password_hash: String::new(),
                        roles: vec!["viewer".into()],
                    })),
                };
                let t = Instant::now();
                let req = ProposeRequest { batch: Some(CommandBatch { commands: vec![cmd] }) };
                match client.propose(req).await {
                    Ok(r) if r.get_ref().results.first().is_some_and(|r| r.code == 0) => {
                        ok += 1;
                        hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                    }
                    _ => errors += 1,
                }
            }
            (hist, ok, errors, 0)
        }));
    }
    merge(tasks, started, writers).await
}

/// `verify`: `connections` keep-alive HTTP/1.1 connections send `GET path`
/// with `header` for `duration` to `addr`; every 200 counts.
pub async fn http_get(
    addr: &str,
    path: &str,
    header: Option<(&str, String)>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;

    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let uri = format!("http://{addr}{path}");
        let header = header.clone().map(|(k, v)| (k.to_string(), v));
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut errors, mut limited) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let mut req = hyper::Request::get(&uri);
                if let Some((k, v)) = &header {
                    req = req.header(k.as_str(), v.as_str());
                }
                let req = req.body(Empty::<bytes::Bytes>::new()).expect("valid request");
                let t = Instant::now();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        if status == hyper::StatusCode::OK {
                            ok += 1;
                            hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                        } else {
                            errors += 1;
                            limited += u64::from(status == hyper::StatusCode::TOO_MANY_REQUESTS);
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (hist, ok, errors, limited)
        }));
    }
    merge(tasks, started, connections).await
}

/// The ceiling: a bare hyper HTTP/1.1 server answering 200 with an empty
/// body, on the same machine, in its own process (see `gatehouse-load baseline-server`).
pub async fn serve_baseline(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    use http_body_util::Empty;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<bytes::Bytes>::new()))
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// Creates `users` users, `keys` API keys and `sessions` sessions through
/// the log in batches of `batch` commands per entry (the secrets are random
/// and thrown away: only their hashes are stored, as always).
pub async fn bulk_load(
    cluster: &ProcCluster,
    users: usize,
    keys: usize,
    sessions: usize,
    batch: usize,
) -> anyhow::Result<()> {
    use base64::Engine;
    use gatehouse_proto::events::{CreateApiKey, CreateSession};
    use rand::RngCore;

    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut client = cluster.raft_client(leader)?;
    let now = gatehouse_api::cluster::now_ms();
    let command = |payload| Command {
        proposed_at: now,
        origin_node: 0,
        request_id: String::new(),
        traceparent: String::new(),
        payload: Some(payload),
    };
    let user_ids: Vec<String> = (0..users).map(|_| gatehouse_api::credentials::new_id()).collect();
    let mut pending = Vec::new();
    let flush = |pending: &mut Vec<Command>| {
        let cmds = std::mem::take(pending);
        let mut client = client.clone();
        async move {
            let resp =
                client.propose(ProposeRequest { batch: Some(CommandBatch { commands: cmds }) }).await?.into_inner();
            anyhow::ensure!(
                resp.results.iter().all(|r| r.code == 0),
                "bulk load refused: {:?}",
                resp.results.iter().find(|r| r.code != 0)
            );
            Ok::<(), anyhow::Error>(())
        }
    };
    for (i, id) in user_ids.iter().enumerate() {
        pending.push(command(Payload::CreateUser(CreateUser {
            user_id: id.clone(),
            username: format!("bulk-{i}"),
            email: format!("bulk-{i}@bench.example"),
            password_hash: String::new(),
            roles: vec!["viewer".into()],
        })));
        if pending.len() >= batch {
            flush(&mut pending).await?;
        }
    }
    flush(&mut pending).await?;
    for i in 0..keys {
        let k = gatehouse_api::credentials::new_api_key();
        pending.push(command(Payload::CreateApiKey(CreateApiKey {
            key_id: k.key_id,
            user_id: user_ids[i % users].clone(),
            name: "bulk".into(),
            secret_sha256: k.secret_sha256.to_vec(),
            expires_at: 0,
            roles: vec![],
        })));
        if pending.len() >= batch {
            flush(&mut pending).await?;
        }
    }
    flush(&mut pending).await?;
    for i in 0..sessions {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let token = format!("gs_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
        pending.push(command(Payload::CreateSession(CreateSession {
            session_id: gatehouse_api::credentials::new_id(),
            user_id: user_ids[i % users].clone(),
            token_sha256: gatehouse_domain::sessions::token_hash(&token).to_vec(),
            expires_at: now + 24 * 3600 * 1000,
            idle_timeout_ms: 3600 * 1000,
            client_ip: "127.0.0.1".into(),
            user_agent: "gatehouse-load".into(),
        })));
        if pending.len() >= batch {
            flush(&mut pending).await?;
        }
    }
    flush(&mut pending).await?;
    let _ = client.local_status(gatehouse_proto::raft::LocalStatusRequest {}).await;
    Ok(())
}

/// Resident memory of a process, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
