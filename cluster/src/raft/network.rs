//! openraft's `RaftNetwork` over our gRPC Raft service.
//!
//! openraft 0.9 gives every AppendEntries the heartbeat period as its
//! timeout (100 ms by default). A large entry on a slow link takes longer
//! than that, and resending it from the start on every heartbeat would
//! never get it through. So a large AppendEntries is sent on a task of its
//! own, with a timeout that grows with its size ([`transfer_timeout`]);
//! when openraft gives up waiting and sends the same entries again, the
//! retry waits for the transfer already on its way instead of starting
//! another. Heartbeats and small requests go straight through meanwhile.
//! A request over the message limit is answered with `PayloadTooLarge`
//! and a count of entries that fits, so openraft sends fewer at a time.

use std::future::Future;
use std::time::Duration;

use gatehouse_proto::raft as pb;
use gatehouse_storage::convert::{
    entry_into_pb, log_id_from_pb, opt_log_id_from_pb, opt_log_id_to_pb, snapshot_meta_to_pb, vote_from_pb, vote_to_pb,
};
use gatehouse_storage::types::{LogId, NodeId, TypeConfig, Vote};
use gatehouse_storage::Member;
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::Snapshot;
use tokio::io::AsyncReadExt;

use super::SNAPSHOT_CHUNK;
use crate::peers::{Peers, RaftClient, MAX_RAFT_MESSAGE};
use gatehouse_domain::bounds::count_within;

/// An AppendEntries of at least this many bytes goes on a task of its own.
const LARGE: usize = 64 * 1024;
/// The slowest link a large transfer is given time for, in bytes a second.
/// (A dead connection ends sooner: HTTP/2 keepalive drops it in 15 s.)
const FLOOR_RATE: u64 = 256 << 10;
/// Room in a Raft message for everything but the entries.
const MESSAGE_SLACK: usize = 64 * 1024;

/// How long a transfer of `bytes` may take: openraft's own timeout, plus
/// the bytes at [`FLOOR_RATE`].
pub fn transfer_timeout(rpc_timeout: Duration, bytes: usize) -> Duration {
    rpc_timeout + Duration::from_millis(bytes as u64 * 1000 / FLOOR_RATE)
}

/// Makes one connection object per target; channels are cached in [`Peers`].
pub struct Network {
    peers: Peers,
}

impl Network {
    pub fn new(peers: Peers) -> Self {
        Network { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        // Over TLS, only `target`'s certificate is taken at its address.
        self.peers.expect(&node.addr, target);
        Connection { target, peers: self.peers.clone(), addr: node.addr.clone(), inflight: None }
    }
}

pub struct Connection {
    target: NodeId,
    /// The channel is looked up at each call, not kept: when this node's
    /// certificate or the cluster's trust changes, the cached channels are
    /// dropped and replication moves to a new connection with the rest.
    peers: Peers,
    addr: String,
    /// A large AppendEntries still on its way.
    inflight: Option<Transfer>,
}

type Answer = Result<pb::AppendEntriesResponse, tonic::Status>;

/// A large AppendEntries sent on a task of its own.
struct Transfer {
    vote: Vote,
    prev: Option<LogId>,
    last: LogId,
    task: tokio::task::JoinHandle<Answer>,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Member, RaftError<NodeId, E>>;

/// A failed call. Every failure counts as unreachable, so openraft backs
/// off before the next try: a peer that is down, one that answers with
/// something other than our gRPC (another service on that port), or one
/// that refuses our secret would otherwise be retried in a tight loop,
/// each try logged. Our Raft service answers with a status only when it
/// cannot serve (stopped, malformed, wrong secret): retrying at once
/// never helps.
fn status_err<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, Member, E> {
    RPCError::Unreachable(Unreachable::new(&status))
}

/// A response that is not what our service sends: backed off like a failure.
fn malformed_reply<E: std::error::Error>(what: &str) -> RPCError<NodeId, Member, E> {
    RPCError::Unreachable(Unreachable::new(&malformed(what)))
}

fn malformed(what: &str) -> std::io::Error {
    std::io::Error::other(format!("malformed response: {what}"))
}

fn to_pb(rpc: AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&rpc.vote)),
        prev_log_id: opt_log_id_to_pb(&rpc.prev_log_id),
        entries: rpc.entries.into_iter().map(entry_into_pb).collect(),
        leader_commit: opt_log_id_to_pb(&rpc.leader_commit),
    }
}

fn vote_from_pb_req(req: &pb::AppendEntriesRequest) -> Vote {
    req.vote.as_ref().map(vote_from_pb).unwrap_or_default()
}

// The error type is openraft's, as the trait methods return it.
#[allow(clippy::result_large_err)]
fn from_answer(answer: Answer) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
    use pb::append_entries_response::Result as R;
    match answer.map_err(status_err)?.result {
        Some(R::Success(_)) => Ok(AppendEntriesResponse::Success),
        Some(R::PartialSuccess(p)) => Ok(AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(&p.matching))),
        Some(R::Conflict(_)) => Ok(AppendEntriesResponse::Conflict),
        Some(R::HigherVote(v)) => Ok(AppendEntriesResponse::HigherVote(vote_from_pb(&v))),
        None => Err(malformed_reply("append entries result")),
    }
}

impl Connection {
    async fn send(
        &self,
        req: pb::AppendEntriesRequest,
        timeout: Duration,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let mut req = tonic::Request::new(req);
        req.set_timeout(timeout);
        from_answer(self.client()?.append_entries(req).await.map(tonic::Response::into_inner))
    }

    /// Waits for the transfer in flight, for a request whose entries end at
    /// `last`. openraft may stop waiting (its own timeout drops this
    /// future): the transfer goes on, and the next send of the same
    /// entries waits again.
    async fn wait_inflight(&mut self, last: LogId) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let Some(t) = self.inflight.as_mut() else {
            return Err(malformed_reply("no transfer in flight"));
        };
        let answer = match (&mut t.task).await {
            Ok(answer) => answer,
            Err(e) => Err(tonic::Status::unavailable(format!("transfer ended: {e}"))),
        };
        let sent_last = t.last;
        self.inflight = None;
        match from_answer(answer)? {
            // The follower holds what was sent; more may follow in the next request.
            AppendEntriesResponse::Success if last > sent_last => {
                Ok(AppendEntriesResponse::PartialSuccess(Some(sent_last)))
            }
            // Never more than this request sent.
            AppendEntriesResponse::PartialSuccess(Some(m)) if m >= last => Ok(AppendEntriesResponse::Success),
            other => Ok(other),
        }
    }

    /// An answer that came from a transfer begun before this call may be
    /// older than the call, and openraft dates a leader's proof (its lease,
    /// our freshness) from when the call began. So it is confirmed with a
    /// heartbeat sent now: the answer stands if the follower still matches.
    async fn confirm(
        &self,
        answer: AppendEntriesResponse<NodeId>,
        rpc: &AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let matched = match &answer {
            AppendEntriesResponse::HigherVote(_) => return Ok(answer),
            AppendEntriesResponse::Success => rpc.entries.last().map(|e| e.log_id),
            AppendEntriesResponse::PartialSuccess(m) => *m,
            AppendEntriesResponse::Conflict => rpc.prev_log_id,
        };
        let heartbeat = pb::AppendEntriesRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            prev_log_id: opt_log_id_to_pb(&matched),
            entries: Vec::new(),
            leader_commit: opt_log_id_to_pb(&rpc.leader_commit),
        };
        match self.send(heartbeat, timeout).await? {
            AppendEntriesResponse::Success => Ok(answer),
            other => Ok(other),
        }
    }

    // The error type is openraft's, as the trait methods return it.
    #[allow(clippy::result_large_err)]
    fn client<E: std::error::Error>(&self) -> Result<RaftClient, RPCError<NodeId, Member, E>> {
        self.peers.raft_client(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    /// After a failed call: 50 ms, 100 ms, then 200 ms between tries, so a
    /// follower that comes back hears from the leader well inside its
    /// election timeout (openraft's own is 500 ms, longer than ours).
    fn backoff(&self) -> openraft::network::Backoff {
        let steps = [50, 100].into_iter().chain(std::iter::repeat(200)).map(Duration::from_millis);
        openraft::network::Backoff::new(steps)
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let Some(last) = rpc.entries.last().map(|e| e.log_id) else {
            // A heartbeat: straight through, whatever is in flight.
            return self.send(to_pb(rpc), option.hard_ttl()).await;
        };
        // openraft sends the same entries again (perhaps with more after
        // them) when it stopped waiting for an earlier send: wait for that.
        if let Some(t) = &self.inflight {
            if t.vote == rpc.vote && t.prev == rpc.prev_log_id {
                let answer = self.wait_inflight(last).await?;
                return self.confirm(answer, &rpc, option.hard_ttl()).await;
            }
            self.inflight = None;
        }
        let req = to_pb(rpc);
        let size = prost::Message::encoded_len(&req);
        if size > MAX_RAFT_MESSAGE - MESSAGE_SLACK {
            let fit = count_within(&req.entries, MAX_RAFT_MESSAGE - MESSAGE_SLACK);
            if fit >= req.entries.len() {
                // One entry alone is over the limit (none is made so now):
                // fewer entries would not help, and openraft retries a
                // too-large payload at once; back off instead.
                return Err(malformed_reply("an entry over the Raft message limit"));
            }
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit as u64)));
        }
        if size < LARGE {
            return self.send(req, option.hard_ttl()).await;
        }
        let timeout = transfer_timeout(option.hard_ttl(), size);
        let (vote, prev) = (vote_from_pb_req(&req), opt_log_id_from_pb(&req.prev_log_id));
        let mut client = self.client()?;
        tracing::debug!(target = self.target, bytes = size, ?timeout, "large append entries on a transfer of its own");
        let task = tokio::spawn(async move {
            let mut req = tonic::Request::new(req);
            req.set_timeout(timeout);
            match tokio::time::timeout(timeout, client.append_entries(req)).await {
                Ok(answer) => answer.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded("transfer timed out")),
            }
        });
        self.inflight = Some(Transfer { vote, prev, last, task });
        self.wait_inflight(last).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        let req =
            pb::VoteRequest { vote: Some(vote_to_pb(&rpc.vote)), last_log_id: opt_log_id_to_pb(&rpc.last_log_id) };
        let mut req = tonic::Request::new(req);
        req.set_timeout(option.hard_ttl());
        let resp = self.client()?.vote(req).await.map_err(status_err)?.into_inner();
        let vote = resp.vote.as_ref().ok_or_else(|| malformed_reply("vote"))?;
        Ok(VoteResponse {
            vote: vote_from_pb(vote),
            vote_granted: resp.vote_granted,
            last_log_id: resp.last_log_id.as_ref().map(log_id_from_pb),
        })
    }

    /// Streams the snapshot file in chunks; the first chunk carries the vote
    /// and the metadata. The receiver installs it only when the stream ends.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut client =
            self.peers.raft_client(&self.addr).map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let target = self.target;
        let path = snapshot.snapshot.path.clone();
        let meta = snapshot_meta_to_pb(&snapshot.meta);
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        let reader = tokio::spawn(async move {
            let mut file = tokio::fs::File::open(&path).await?;
            let mut first = Some((vote_to_pb(&vote), meta));
            loop {
                let mut data = vec![0u8; SNAPSHOT_CHUNK];
                let n = file.read(&mut data).await?;
                data.truncate(n);
                let (vote, meta) = first.take().map_or((None, None), |(v, m)| (Some(v), Some(m)));
                let is_head = vote.is_some();
                if n == 0 && !is_head {
                    return Ok::<(), std::io::Error>(());
                }
                if tx.send(pb::SnapshotChunk { vote, meta, data }).await.is_err() || n == 0 {
                    return Ok(());
                }
            }
        });
        let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let resp = tokio::select! {
            r = call => r,
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(target, error = %e, "reading the snapshot file failed");
                return Err(StreamingError::Network(NetworkError::new(&e)));
            }
            Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
        }
        let resp = resp.map_err(|s| match status_err::<Fatal<NodeId>>(s) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            _ => StreamingError::Network(NetworkError::new(&malformed("snapshot"))),
        })?;
        let vote = resp
            .into_inner()
            .vote
            .ok_or_else(|| StreamingError::Network(NetworkError::new(&malformed("snapshot vote"))))?;
        Ok(SnapshotResponse { vote: vote_from_pb(&vote) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_gets_time_for_its_size() {
        let rpc = Duration::from_millis(100);
        assert_eq!(transfer_timeout(rpc, 0), rpc);
        // 4 MiB at the floor rate of 256 KiB/s: sixteen seconds more.
        assert_eq!(transfer_timeout(rpc, 4 << 20), rpc + Duration::from_secs(16));
    }

    #[test]
    fn count_within_counts_entries_that_fit_and_at_least_one() {
        use gatehouse_proto::events::{Command, CommandBatch};
        let command = |n: usize| Command { request_id: "r".repeat(n), ..Default::default() };
        let batch = |n: usize| CommandBatch { commands: vec![command(n)] };
        let entry = |n: usize| pb::Entry { log_id: None, payload: Some(pb::entry::Payload::Normal(batch(n))) };
        let entries: Vec<pb::Entry> = (0..10).map(|_| entry(1000)).collect();
        assert_eq!(count_within(&entries, 3100), 3);
        assert_eq!(count_within(&entries, usize::MAX), 10);
        assert_eq!(count_within(&entries, 10), 1);
    }
}
