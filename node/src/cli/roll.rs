//! `gatehouse admin cluster roll`: restarts every member, one at a time,
//! with a command the operator gives (`systemctl restart gatehouse`, an
//! `ssh`, a `kubectl delete pod`), for a rolling restart or upgrade.
//!
//! It needs at least three voters (one may be down). Before each node: the
//! whole cluster must be healthy (a leader, every member answering, every
//! member caught up). The leader goes last, and hands its leadership to the
//! voter furthest along before its turn. After each restart the
//! roll waits until that node answers as a new process (its start time
//! changed), it is ready (what its `/readyz` says), and every member has
//! applied what the leader had committed when the node came back (zero
//! lag, under load too). Anything else stops the roll where it is, saying
//! which nodes are done.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gatehouse_proto::admin::cluster_service_client::ClusterServiceClient;
use gatehouse_proto::admin::{ClusterStatusRequest, ClusterStatusResponse, NodeStatus, TransferLeadershipRequest};
use std::io::Write;

use super::client::{connect, rpc_error, token, Connection};

/// How often the roll asks for status while it waits.
const POLL: Duration = Duration::from_millis(250);
/// How often the node is looked at while its restart command runs.
const WATCH: Duration = Duration::from_millis(100);
/// How long one status call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// What `roll` was asked to do.
pub struct Roll {
    /// Run with `sh -c`, with `GATEHOUSE_NODE_ID`, `GATEHOUSE_NODE_ADDR`
    /// (its peer address) and `GATEHOUSE_NODE_CLIENT_ADDR` set.
    pub restart: String,
    /// How long each node has to come back and catch up.
    pub timeout: Duration,
}

pub async fn run(args: &Connection, roll: &Roll, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    anyhow::ensure!(!roll.restart.trim().is_empty(), "--restart needs a command");
    // The key is read once (it may come from standard input).
    let args = Connection { token: Some(token(args)?), token_file: None, ..args.clone() };
    let first = status_at(&args, &args.endpoint).await?;
    tolerates_one(&first)?;
    settled(&args, &first, Instant::now() + CALL_TIMEOUT * 2).await.context("the roll did not start")?;
    let mut done = Vec::new();
    for id in order(&first) {
        let step = async {
            // Whole and caught up before each node, not only after the last.
            let s = current(&args, &first).await?;
            settled(&args, &s, Instant::now() + roll.timeout).await?;
            let s = if s.leader_id == id { hand_off(&args, &first, id, roll.timeout).await? } else { s };
            let node = row(&s, id)?.clone();
            let started = Instant::now();
            // Watched while the command runs: a node that reports no start
            // time must be seen down at some point to count as restarted.
            let endpoint = args.endpoint_of(&first, id)?;
            let watch = async {
                while status_at(&args, &endpoint).await.is_ok() {
                    tokio::time::sleep(WATCH).await;
                }
                true
            };
            let command = restart(&roll.restart, &node, roll.timeout);
            tokio::pin!(watch, command);
            let mut seen_down = false;
            let restarted = loop {
                tokio::select! {
                    done = &mut command => break done,
                    down = &mut watch, if !seen_down => seen_down = down,
                }
            };
            restarted?;
            let back = back(&args, &first, &node, roll, started, seen_down).await?;
            Ok::<_, anyhow::Error>((back, started.elapsed()))
        };
        match step.await {
            Ok((s, took)) => {
                let index = s.nodes.iter().find(|n| n.id == id).map_or(0, |n| n.applied_index);
                if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({ "node": id, "restarted": true, "applied_index": index, "took_ms": took.as_millis() as u64 })
                    )?;
                } else {
                    writeln!(out, "node {id}: restarted, caught up at index {index} in {:.1}s", took.as_secs_f64())?;
                }
                done.push(id);
            }
            Err(e) => bail!("{e:#}\nthe roll stopped at node {id}; restarted so far: {done:?}"),
        }
    }
    let last = status_at(&args, &args.endpoint).await?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "restarted": done, "cluster_version": last.cluster_version, "understood_version": last.understood_version })
        )?;
    } else {
        writeln!(
            out,
            "rolled {} nodes; cluster version {} (every member understands {})",
            done.len(),
            last.cluster_version,
            last.understood_version
        )?;
    }
    Ok(())
}

impl Connection {
    /// The admin endpoint of member `id`, with this connection's scheme.
    fn endpoint_of(&self, s: &ClusterStatusResponse, id: u64) -> anyhow::Result<String> {
        let addr = &row(s, id)?.client_addr;
        let tls = self.ca_file.is_some() || self.endpoint.starts_with("https://");
        Ok(format!("{}://{addr}", if tls { "https" } else { "http" }))
    }
}

fn row(s: &ClusterStatusResponse, id: u64) -> anyhow::Result<&NodeStatus> {
    s.nodes.iter().find(|n| n.id == id).with_context(|| format!("node {id} is no longer a member"))
}

/// The cluster's status as the node at `endpoint` sees it.
async fn status_at(args: &Connection, endpoint: &str) -> anyhow::Result<ClusterStatusResponse> {
    let at = Connection { endpoint: endpoint.to_string(), ..args.clone() };
    let call = async {
        let mut client = ClusterServiceClient::new(connect(&at).await?);
        anyhow::Ok(client.status(ClusterStatusRequest {}).await.map_err(rpc_error)?.into_inner())
    };
    tokio::time::timeout(CALL_TIMEOUT, call).await.with_context(|| format!("{endpoint} did not answer"))?
}

/// Learners first, then followers by id, the leader last.
fn order(s: &ClusterStatusResponse) -> Vec<u64> {
    let mut ids: Vec<&NodeStatus> = s.nodes.iter().collect();
    ids.sort_by_key(|n| (n.id == s.leader_id, n.voter, n.id));
    ids.into_iter().map(|n| n.id).collect()
}

/// Whether one voter may be down without losing the quorum.
fn tolerates_one(s: &ClusterStatusResponse) -> anyhow::Result<()> {
    let voters = s.nodes.iter().filter(|n| n.voter).count();
    if voters < 3 {
        bail!("with {voters} voter(s), restarting one loses the quorum: a roll needs at least three voters");
    }
    Ok(())
}

/// The status from the endpoint given, or else from any member that answers.
async fn current(args: &Connection, first: &ClusterStatusResponse) -> anyhow::Result<ClusterStatusResponse> {
    if let Ok(s) = status_at(args, &args.endpoint).await {
        return Ok(s);
    }
    for n in &first.nodes {
        if let Ok(s) = status_at(args, &args.endpoint_of(first, n.id)?).await {
            return Ok(s);
        }
    }
    bail!("no member answers")
}

/// A leader, and every member answering.
fn whole(s: &ClusterStatusResponse) -> anyhow::Result<()> {
    if s.leader_id == 0 {
        bail!("the cluster has no leader");
    }
    if let Some(n) = s.nodes.iter().find(|n| !n.reachable) {
        bail!("node {} does not answer", n.id);
    }
    Ok(())
}

/// Every member has applied `commit` (a commit index the leader reported
/// earlier: under load the leader is always a little ahead of the rest).
fn caught_up(s: &ClusterStatusResponse, commit: u64) -> anyhow::Result<()> {
    match s.nodes.iter().find(|n| n.applied_index < commit) {
        Some(n) => bail!("node {} is behind the leader (applied {}, leader's commit {commit})", n.id, n.applied_index),
        None => Ok(()),
    }
}

fn leader_commit(s: &ClusterStatusResponse) -> u64 {
    s.nodes.iter().find(|n| n.id == s.leader_id).map_or(0, |n| n.commit_index)
}

/// Waits (until `deadline`) for the cluster to be whole and every member
/// to have applied what the leader had committed in `from`.
async fn settled(args: &Connection, from: &ClusterStatusResponse, deadline: Instant) -> anyhow::Result<()> {
    whole(from)?;
    let commit = leader_commit(from);
    loop {
        let s = current(args, from).await?;
        let why = match whole(&s).and_then(|()| caught_up(&s, commit)) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(why);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Hands leadership from `id` to the voter furthest along (the transfer
/// itself lets it catch up); returns the status once another leads.
async fn hand_off(
    args: &Connection,
    first: &ClusterStatusResponse,
    id: u64,
    timeout: Duration,
) -> anyhow::Result<ClusterStatusResponse> {
    let s = current(args, first).await?;
    let target = s
        .nodes
        .iter()
        .filter(|n| n.voter && n.id != id && n.reachable)
        .max_by_key(|n| (n.matched_index, std::cmp::Reverse(n.id)))
        .map(|n| n.id)
        .context("no other voter answers to hand leadership to")?;
    // Any node takes the call: a follower forwards it to the leader.
    let transfer = async {
        let mut client = ClusterServiceClient::new(connect_any(args, first).await?);
        client.transfer_leadership(TransferLeadershipRequest { node_id: target }).await.map_err(rpc_error)
    };
    tokio::time::timeout(timeout, transfer)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {}s", timeout.as_secs()))
        .and_then(|r| r)
        .with_context(|| format!("handing leadership from node {id} to node {target}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = current(args, first).await {
            if s.leader_id != 0 && s.leader_id != id && whole(&s).is_ok() {
                return Ok(s);
            }
        }
        if Instant::now() > deadline {
            bail!("node {target} did not take over leadership within {}s", timeout.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A connection to the endpoint given, or else to any member that takes one.
async fn connect_any(args: &Connection, first: &ClusterStatusResponse) -> anyhow::Result<super::client::Authed> {
    if let Ok(c) = connect(args).await {
        return Ok(c);
    }
    for n in &first.nodes {
        if let Ok(c) = connect(&Connection { endpoint: args.endpoint_of(first, n.id)?, ..args.clone() }).await {
            return Ok(c);
        }
    }
    bail!("no member answers")
}

/// Runs the operator's restart command for `node`; it must succeed within
/// `timeout` (it is killed otherwise). It never sees the admin key.
async fn restart(command: &str, node: &NodeStatus, timeout: Duration) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("GATEHOUSE_NODE_ID", node.id.to_string())
        .env("GATEHOUSE_NODE_ADDR", &node.addr)
        .env("GATEHOUSE_NODE_CLIENT_ADDR", &node.client_addr)
        .env_remove("GATEHOUSE_TOKEN")
        .env_remove("GATEHOUSE_TOKEN_FILE")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("running the restart command")?;
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.context("running the restart command")?,
        Err(_) => bail!("the restart command for node {} did not finish within {}s", node.id, timeout.as_secs()),
    };
    if !status.success() {
        bail!("the restart command for node {} failed ({status})", node.id);
    }
    Ok(())
}

/// Waits until `before` answers as a new process and is ready, and every
/// member has applied what the leader had committed by then. Asked of the
/// node itself, or else of the endpoint given or any member.
async fn back(
    args: &Connection,
    first: &ClusterStatusResponse,
    before: &NodeStatus,
    roll: &Roll,
    started: Instant,
    mut seen_down: bool,
) -> anyhow::Result<ClusterStatusResponse> {
    let id = before.id;
    let endpoint = args.endpoint_of(first, id)?;
    let mut why = "it did not answer".to_string();
    // A build from before start times shows no new one: it must then be
    // seen down once (while its command ran, or since), or an asynchronous
    // restart command that has not stopped it yet would pass for a restart.
    // The leader's commit index once the node is back: everyone must reach it.
    let mut mark = None;
    loop {
        if started.elapsed() > roll.timeout {
            bail!("node {id} was not back within {}s: {why}", roll.timeout.as_secs());
        }
        tokio::time::sleep(POLL).await;
        let s = match status_at(args, &endpoint).await {
            Ok(s) => s,
            Err(e) => {
                seen_down = true;
                why = format!("{e:#}");
                match current(args, first).await {
                    Ok(s) => s,
                    Err(_) => continue,
                }
            }
        };
        let Ok(now) = row(&s, id) else { bail!("node {id} is no longer a member") };
        if !now.reachable {
            seen_down = true;
            why = "it does not answer".into();
            continue;
        }
        let reports = now.started_at_ms != 0;
        if before.started_at_ms != 0 && now.started_at_ms == before.started_at_ms {
            why = "it still runs as the same process (does the restart command restart it?)".into();
            continue;
        }
        if !reports && before.started_at_ms == 0 && !seen_down {
            why = "it was not seen to stop (a build that reports no start time)".into();
            continue;
        }
        if reports && !now.ready {
            why = "it is not ready yet".into();
            continue;
        }
        if let Err(e) = whole(&s) {
            why = e.to_string();
            continue;
        }
        let commit = *mark.get_or_insert(leader_commit(&s));
        if let Err(e) = caught_up(&s, commit) {
            why = e.to_string();
            continue;
        }
        return Ok(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, voter: bool, lag: u64) -> NodeStatus {
        NodeStatus {
            id,
            voter,
            reachable: true,
            replication_lag: lag,
            applied_index: 10,
            commit_index: 10,
            ..Default::default()
        }
    }

    #[test]
    fn learners_go_first_and_the_leader_last() {
        let s = ClusterStatusResponse {
            leader_id: 2,
            nodes: vec![node(1, true, 0), node(2, true, 0), node(3, true, 0), node(4, false, 0)],
            ..Default::default()
        };
        assert_eq!(order(&s), [4, 1, 3, 2]);
        assert!(tolerates_one(&s).is_ok());
        let two = ClusterStatusResponse {
            leader_id: 1,
            nodes: vec![node(1, true, 0), node(2, true, 0), node(3, false, 0)],
            ..Default::default()
        };
        assert!(tolerates_one(&two).unwrap_err().to_string().contains("loses the quorum"), "a learner is no voter");
    }

    #[test]
    fn a_node_waits_for_a_whole_caught_up_cluster() {
        let mut s = ClusterStatusResponse {
            leader_id: 1,
            nodes: vec![node(1, true, 0), node(2, true, 0)],
            ..Default::default()
        };
        s.nodes[0].commit_index = 12;
        assert!(whole(&s).is_ok());
        assert_eq!(leader_commit(&s), 12);
        assert!(caught_up(&s, 10).is_ok(), "what the leader had committed earlier is reached");
        assert!(caught_up(&s, 11).unwrap_err().to_string().contains("node 1 is behind"));
        s.nodes[1].reachable = false;
        assert!(whole(&s).unwrap_err().to_string().contains("node 2 does not answer"));
        s.leader_id = 0;
        assert!(whole(&s).unwrap_err().to_string().contains("no leader"));
    }
}
