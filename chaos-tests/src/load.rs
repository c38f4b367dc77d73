//! Benchmark scenarios. Each reports throughput and latency percentiles from
//! an HDR histogram, measured by the client.

use std::time::{Duration, Instant};

use gatehouse_cluster::peers::ControlClient;
use gatehouse_domain::{Command, CommandBatch, Payload};
use gatehouse_proto::control::ProposeRequest;
use gatehouse_proto::events::CreateUser;
use rand::{Rng, SeedableRng};

use crate::cluster::ProcCluster;

/// A child process killed and reaped however the scenario that started it
/// ends, an early error included (it would otherwise outlive the load
/// generator and hold its output pipe open).
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub use crate::figures::Figures;
use crate::figures::{histogram, merge};

/// CPU time (user + system) the cluster's running node processes have used
/// so far, in seconds.
pub fn node_cpu_seconds(cluster: &ProcCluster) -> f64 {
    let pids: Vec<u32> = cluster.nodes.keys().filter_map(|&id| cluster.pid(id)).collect();
    cpu_seconds(&pids)
}

/// CPU time (user + system) the running processes `pids` and their running
/// children (nginx's workers) have used so far, in seconds, from
/// `/proc/<pid>/stat` (Linux).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    /// `/proc` counts in USER_HZ ticks, 100 per second on Linux.
    const TICKS_PER_SECOND: f64 = 100.0;
    // The name, in parentheses, may hold spaces; fields 3.. follow it: the
    // parent is field 4, utime and stime are fields 14 and 15.
    let stat = |pid: &str| -> Option<(u32, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((fields.get(1)?.parse().ok()?, ticks))
    };
    let children: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| stat(e.file_name().to_str()?))
        .filter(|(parent, _)| pids.contains(parent))
        .map(|(_, ticks)| ticks)
        .sum();
    let own: u64 = pids.iter().filter_map(|p| stat(&p.to_string())).map(|(_, ticks)| ticks).sum();
    (own + children) as f64 / TICKS_PER_SECOND
}

/// A route's request-duration histogram as a node exports it on `/metrics`
/// (`gatehouse_http_request_duration_seconds`): cumulative counts per upper
/// bound in seconds, `+Inf` last. What the node itself measured, from the
/// request's arrival in its handler to the response, without the time the
/// request waited for the node to be scheduled or the client to read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeTimings(Vec<(f64, u64)>);

impl NodeTimings {
    /// The `route` series from a Prometheus text exposition.
    pub fn parse(exposition: &str, route: &str) -> NodeTimings {
        const BUCKET: &str = "gatehouse_http_request_duration_seconds_bucket{";
        let route = format!("route=\"{route}\"");
        let mut buckets: Vec<(f64, u64)> = exposition
            .lines()
            .filter(|l| l.starts_with(BUCKET) && l.contains(&route))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((bound, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        NodeTimings(buckets)
    }

    /// Reads `route`'s histogram from the node serving HTTP on `http`.
    pub async fn fetch(http: &str, route: &str) -> anyhow::Result<NodeTimings> {
        let text = reqwest::get(format!("http://{http}/metrics")).await?.error_for_status()?.text().await?;
        Ok(NodeTimings::parse(&text, route))
    }

    /// The upper bound, in ms, of the bucket that holds the `q` quantile of
    /// the requests counted between `earlier` and `self`; `None` if there
    /// were none. An upper bound, as fine as the buckets (100 µs, doubling).
    pub fn quantile_bound_ms_since(&self, earlier: &NodeTimings, q: f64) -> Option<f64> {
        let count = |t: &NodeTimings, bound: f64| t.0.iter().find(|b| b.0 == bound).map_or(0, |b| b.1);
        let total = self.0.last().map(|&(bound, n)| n.saturating_sub(count(earlier, bound)))?;
        if total == 0 {
            return None;
        }
        let wanted = (total as f64 * q).ceil() as u64;
        self.0.iter().find(|&&(bound, n)| n.saturating_sub(count(earlier, bound)) >= wanted).map(|b| b.0 * 1000.0)
    }
}

/// `writes`: `writers` clients each propose one command at a time (one Raft
/// entry per command) to the leader for `duration`; every acknowledged
/// proposal is a commit replicated to a majority and applied.
pub async fn writes(cluster: &ProcCluster, writers: usize, duration: Duration, run: &str) -> anyhow::Result<Figures> {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let cpu_before = node_cpu_seconds(cluster);
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = cluster.control_client(leader)?;
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
                    proposed_at: gatehouse_cluster::clock::now_ms(),
                    origin_node: 0,
                    request_id: id(),
                    traceparent: String::new(),
                    request_digest: Vec::new(),
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
    let mut figures = merge(tasks, started, writers).await?;
    figures.node_cpu_s = Some(node_cpu_seconds(cluster) - cpu_before);
    Ok(figures)
}

/// `verify`: `connections` keep-alive HTTP/1.1 connections send `GET path`
/// with `header` for `duration` to `addr`; every 200 counts.
///
/// With `rate` (requests per second, all connections together) each
/// connection sends on a schedule, staggered against the others, instead
/// of as fast as it can: the server is then loaded below its capacity, and
/// the latency is what a steady client sees. Latency is timed from the
/// send; a connection that falls behind its schedule sends at once.
pub async fn http_get(
    addr: &str,
    path: &str,
    header: Option<(&str, String)>,
    connections: usize,
    rate: Option<f64>,
    duration: Duration,
) -> anyhow::Result<Figures> {
    http_get_over(None, addr, path, header, connections, rate, duration).await
}

/// [`http_get`], over TLS with `tls` (each keep-alive connection handshakes once).
pub async fn http_get_over(
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    addr: &str,
    path: &str,
    header: Option<(&str, String)>,
    connections: usize,
    rate: Option<f64>,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let header = header.map(|(k, v)| (k, std::sync::Arc::new(vec![v])));
    http_get_each(tls, addr, path, header, connections, rate, duration).await
}

/// [`http_get_over`] with a header whose value changes with every request,
/// through `values` in turn (connection `c` starts at the `c`-th), so that
/// no two requests within `values.len()` carry the same one.
pub async fn http_get_each(
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    addr: &str,
    path: &str,
    header: Option<(&str, std::sync::Arc<Vec<String>>)>,
    connections: usize,
    rate: Option<f64>,
    duration: Duration,
) -> anyhow::Result<Figures> {
    use http_body_util::{BodyExt, Empty};

    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let mut sender = crate::load_tls::connect(addr, tls).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let uri = format!("{scheme}://{addr}{path}");
        let host = addr.to_string();
        let header = header.clone().map(|(k, v)| (k.to_string(), v));
        let mut schedule = rate.map(|r| {
            let period = Duration::from_secs_f64(connections as f64 / r);
            let first = tokio::time::Instant::now() + period.mul_f64(c as f64 / connections as f64);
            tokio::time::interval_at(first, period)
        });
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut errors, mut limited) = (0u64, 0u64, 0u64);
            let mut next = c;
            while Instant::now() < deadline {
                if let Some(s) = &mut schedule {
                    s.tick().await;
                }
                // HTTP/1.1 requires Host (nginx refuses a request without it).
                let mut req = hyper::Request::get(&uri).header("host", host.as_str());
                if let Some((k, values)) = &header {
                    req = req.header(k.as_str(), values[next % values.len()].as_str());
                    next += connections;
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

/// `audit-ingest`'s event source: every node's audit recorder, as the log
/// sees it. For each node, one `AppendAudit` command of `rate / nodes / 10`
/// events every 100 ms (the recorders' default `flush_ms`), proposed to the
/// leader, until `stop` is set. The events are shaped like the ones a
/// refused admin call records (ids, address, request and trace ids).
/// Returns the events the log acknowledged.
///
/// The batches are built, encoded and sent from a thread with a runtime of
/// its own: building 600 events and encoding 150 KB takes the better part of
/// a millisecond, and on the measuring client's runtime that time would be
/// counted as verify latency. (It still competes for the CPU, like the
/// recorders it stands in for.)
pub async fn audit_batches(
    cluster: &ProcCluster,
    rate: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<u64> {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let per_batch = (rate / cluster.nodes.len() as u64 / 10).max(1) as usize;
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    let (peers, addr) = (cluster.peers.clone(), cluster.nodes[&leader].peer.clone());
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("audit-batches".into()).spawn(move || {
        let run = || -> anyhow::Result<u64> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let mut sources = Vec::new();
                for node in nodes {
                    let client = peers.control_client(&addr)?;
                    sources.push(tokio::spawn(audit_source(client, node, per_batch, stop.clone())));
                }
                let mut acknowledged = 0;
                for s in sources {
                    acknowledged += s.await?;
                }
                Ok(acknowledged)
            })
        };
        let _ = done.send(run());
    })?;
    result.await?
}

/// One node's recorder for [`audit_batches`]: a batch of `per_batch` events
/// every 100 ms until `stop`; returns the events acknowledged.
async fn audit_source(
    mut client: ControlClient,
    node: u64,
    per_batch: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    use gatehouse_proto::events::{AppendAudit, AuditEvent};
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut hex = || format!("{:032x}", rng.gen::<u128>());
    let template: Vec<AuditEvent> = (0..per_batch)
        .map(|i| AuditEvent {
            action: "rbac.denied".into(),
            outcome: "denied".into(),
            actor_user_id: hex(),
            actor_key_id: hex()[..16].to_string(),
            client_ip: format!("10.0.{}.{}", i / 250, i % 250 + 1),
            node_id: node,
            request_id: hex(),
            trace_id: hex(),
            resource: "rpc:UserService/Get".into(),
            ..Default::default()
        })
        .collect();
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    let mut acknowledged = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        flush.tick().await;
        let at = gatehouse_cluster::clock::now_ms();
        let events = template.iter().map(|e| AuditEvent { at, ..e.clone() }).collect();
        let cmd = Command {
            proposed_at: at,
            origin_node: node,
            request_id: hex(),
            traceparent: String::new(),
            request_digest: Vec::new(),
            payload: Some(Payload::AppendAudit(AppendAudit { events, dropped: 0, batch: 0 })),
        };
        let req = ProposeRequest { batch: Some(CommandBatch { commands: vec![cmd] }) };
        if let Ok(r) = client.propose(req).await {
            if r.get_ref().results.first().is_some_and(|r| r.code == 0) {
                acknowledged += per_batch as u64;
            }
        }
    }
    acknowledged
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
/// the log in batches of `batch` commands per entry; returns the sessions'
/// tokens (the keys' secrets are random and thrown away: only hashes are
/// stored, as always).
pub async fn bulk_load(
    cluster: &ProcCluster,
    users: usize,
    keys: usize,
    sessions: usize,
    batch: usize,
) -> anyhow::Result<Vec<String>> {
    use base64::Engine;
    use gatehouse_proto::events::{CreateApiKey, CreateSession};
    use rand::RngCore;

    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut client = cluster.control_client(leader)?;
    let now = gatehouse_cluster::clock::now_ms();
    let command = |payload| Command {
        proposed_at: now,
        origin_node: 0,
        request_id: String::new(),
        traceparent: String::new(),
        request_digest: Vec::new(),
        payload: Some(payload),
    };
    let user_ids: Vec<String> = (0..users).map(|_| gatehouse_cluster::ids::new_id()).collect();
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
        let k = gatehouse_api::mint::new_api_key();
        pending.push(command(Payload::CreateApiKey(CreateApiKey {
            key_id: k.key_id,
            user_id: user_ids[i % users].clone(),
            name: "bulk".into(),
            secret_sha256: k.secret_sha256.to_vec(),
            expires_at: 0,
            roles: vec!["viewer".into()],
            roles_exact: true,
        })));
        if pending.len() >= batch {
            flush(&mut pending).await?;
        }
    }
    flush(&mut pending).await?;
    let mut tokens = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let token = format!("gs_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
        pending.push(command(Payload::CreateSession(CreateSession {
            session_id: gatehouse_cluster::ids::new_id(),
            user_id: user_ids[i % users].clone(),
            token_sha256: gatehouse_domain::sessions::token_hash(&token).to_vec(),
            expires_at: now + 24 * 3600 * 1000,
            idle_timeout_ms: 3600 * 1000,
            client_ip: "127.0.0.1".into(),
            user_agent: "gatehouse-load".into(),
            factor: None,
            method: "pwd".into(),
        })));
        tokens.push(token);
        if pending.len() >= batch {
            flush(&mut pending).await?;
        }
    }
    flush(&mut pending).await?;
    let _ = client.local_status(gatehouse_proto::control::LocalStatusRequest {}).await;
    Ok(tokens)
}

/// Resident memory of a process, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::NodeTimings;

    const EXPOSITION: &str = r#"# TYPE gatehouse_http_request_duration_seconds histogram
gatehouse_http_request_duration_seconds_sum{route="/auth/verify"} 0.5
gatehouse_http_request_duration_seconds_count{route="/auth/verify"} 1000
gatehouse_http_request_duration_seconds_bucket{le="0.0001",route="/auth/verify"} 980
gatehouse_http_request_duration_seconds_bucket{le="0.0002",route="/auth/verify"} 995
gatehouse_http_request_duration_seconds_bucket{le="0.0004",route="/auth/verify"} 1000
gatehouse_http_request_duration_seconds_bucket{le="+Inf",route="/auth/verify"} 1000
gatehouse_http_request_duration_seconds_bucket{le="0.0001",route="/api/v1/login"} 1
gatehouse_http_request_duration_seconds_bucket{le="+Inf",route="/api/v1/login"} 7
"#;

    #[test]
    fn parses_only_the_route_asked_for() {
        let t = NodeTimings::parse(EXPOSITION, "/auth/verify");
        assert_eq!(t.0, vec![(0.0001, 980), (0.0002, 995), (0.0004, 1000), (f64::INFINITY, 1000)]);
        assert_eq!(NodeTimings::parse(EXPOSITION, "/auth/none"), NodeTimings::default());
        assert_eq!(NodeTimings::parse("garbage\n{le=\"x\"} y", "/auth/verify"), NodeTimings::default());
    }

    #[test]
    fn quantiles_count_only_the_requests_in_between() {
        let after = NodeTimings::parse(EXPOSITION, "/auth/verify");
        // From nothing: 99% of 1000 is 990, first reached in the 0.2 ms bucket.
        assert_eq!(after.quantile_bound_ms_since(&NodeTimings::default(), 0.99), Some(0.2));
        assert_eq!(after.quantile_bound_ms_since(&NodeTimings::default(), 0.5), Some(0.1));
        // Since a reading where the first 980 (all fast) were counted: the 20
        // in between are slower, and their p99 is in the 0.4 ms bucket.
        let earlier = NodeTimings(vec![(0.0001, 980), (0.0002, 980), (0.0004, 980), (f64::INFINITY, 980)]);
        assert_eq!(after.quantile_bound_ms_since(&earlier, 0.99), Some(0.4));
        // Nothing in between: no quantile.
        assert_eq!(after.quantile_bound_ms_since(&after, 0.99), None);
    }
}
