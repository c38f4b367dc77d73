//! openraft's `RaftNetwork` over our gRPC Raft service.

use std::future::Future;

use gatehouse_proto::raft as pb;
use gatehouse_storage::convert::{
    entry_into_pb, log_id_from_pb, opt_log_id_from_pb, opt_log_id_to_pb, snapshot_meta_to_pb, vote_from_pb, vote_to_pb,
};
use gatehouse_storage::types::{NodeId, TypeConfig, Vote};
use openraft::error::{Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, Snapshot};
use tokio::io::AsyncReadExt;

use super::SNAPSHOT_CHUNK;
use crate::peers::{Peers, RaftClient};

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

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection { target, client: self.peers.raft_client(&node.addr).map_err(|e| e.to_string()) }
    }
}

pub struct Connection {
    target: NodeId,
    client: Result<RaftClient, String>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

/// A failed call: unreachable peers make openraft back off.
fn status_err<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, BasicNode, E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn malformed(what: &str) -> NetworkError {
    NetworkError::new(&std::io::Error::other(format!("malformed response: {what}")))
}

impl Connection {
    // The error type is openraft's, as the trait methods return it.
    #[allow(clippy::result_large_err)]
    fn client<E: std::error::Error>(&self) -> Result<RaftClient, RPCError<NodeId, BasicNode, E>> {
        self.client.clone().map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let req = pb::AppendEntriesRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            prev_log_id: opt_log_id_to_pb(&rpc.prev_log_id),
            entries: rpc.entries.into_iter().map(entry_into_pb).collect(),
            leader_commit: opt_log_id_to_pb(&rpc.leader_commit),
        };
        let mut req = tonic::Request::new(req);
        req.set_timeout(option.hard_ttl());
        let resp = self.client()?.append_entries(req).await.map_err(status_err)?.into_inner();
        use pb::append_entries_response::Result as R;
        match resp.result {
            Some(R::Success(_)) => Ok(AppendEntriesResponse::Success),
            Some(R::PartialSuccess(p)) => Ok(AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(&p.matching))),
            Some(R::Conflict(_)) => Ok(AppendEntriesResponse::Conflict),
            Some(R::HigherVote(v)) => Ok(AppendEntriesResponse::HigherVote(vote_from_pb(&v))),
            None => Err(RPCError::Network(malformed("append entries result"))),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        let req =
            pb::VoteRequest { vote: Some(vote_to_pb(&rpc.vote)), last_log_id: opt_log_id_to_pb(&rpc.last_log_id) };
        let mut req = tonic::Request::new(req);
        req.set_timeout(option.hard_ttl());
        let resp = self.client()?.vote(req).await.map_err(status_err)?.into_inner();
        let vote = resp.vote.as_ref().ok_or_else(|| RPCError::Network(malformed("vote")))?;
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
        let mut client = self
            .client
            .clone()
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
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
            _ => StreamingError::Network(malformed("snapshot")),
        })?;
        let vote = resp.into_inner().vote.ok_or_else(|| StreamingError::Network(malformed("snapshot vote")))?;
        Ok(SnapshotResponse { vote: vote_from_pb(&vote) })
    }
}
