//! The Raft gRPC service (vote, append, snapshots): requests from other
//! nodes, refused without the cluster secret (an interceptor checks it
//! before any handler runs), and refused if malformed, before openraft sees
//! them. What nodes ask each other beyond Raft is [`crate::control`].

use gatehouse_proto::raft as pb;
use gatehouse_proto::raft::raft_service_server::{RaftService, RaftServiceServer};
use gatehouse_storage::convert::{
    entry_from_pb, opt_log_id_from_pb, opt_log_id_to_pb, req_vote_from_pb, snapshot_meta_from_pb, vote_to_pb,
};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::Snapshot;
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::MAX_SNAPSHOT_BYTES;
use crate::peers::MAX_RAFT_MESSAGE;
use crate::Cluster;

pub struct RaftRpc {
    cluster: Cluster,
}

/// The service, behind [`Cluster::admit`]: the cluster secret, and a
/// member's certificate on a mutual-TLS listener.
pub fn server(
    cluster: Cluster,
) -> tonic::service::interceptor::InterceptedService<RaftServiceServer<RaftRpc>, impl tonic::service::Interceptor + Clone>
{
    let gate = cluster.clone();
    let svc = RaftServiceServer::new(RaftRpc { cluster })
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE);
    tonic::service::interceptor::InterceptedService::new(svc, move |req| gate.admit(req))
}

pub(crate) fn bad(what: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("malformed request: {what}"))
}

pub(crate) fn stopped<E: std::fmt::Display>(e: E) -> Status {
    tracing::warn!(error = %e, "raft refused an rpc");
    Status::unavailable("raft is not running")
}

#[tonic::async_trait]
impl RaftService for RaftRpc {
    #[tracing::instrument(level = "trace", skip_all)]
    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        crate::peer_tls::claims(&req, req.get_ref().vote.as_ref().map(|v| v.node_id))?;
        let req = req.into_inner();
        let leader_commit = opt_log_id_from_pb(&req.leader_commit);
        let entries = req.entries.into_iter().map(entry_from_pb).collect::<Result<Vec<_>, _>>().map_err(bad)?;
        let rpc = AppendEntriesRequest {
            vote: req_vote_from_pb(&req.vote).map_err(bad)?,
            prev_log_id: opt_log_id_from_pb(&req.prev_log_id),
            leader_commit,
            entries,
        };
        let resp = self.cluster.raft().append_entries(rpc).await.map_err(stopped)?;
        use pb::append_entries_response::Result as R;
        let result = match resp {
            AppendEntriesResponse::Success => R::Success(pb::Blank {}),
            AppendEntriesResponse::PartialSuccess(m) => {
                R::PartialSuccess(pb::append_entries_response::PartialSuccess { matching: opt_log_id_to_pb(&m) })
            }
            AppendEntriesResponse::Conflict => R::Conflict(pb::Blank {}),
            AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(&v)),
        };
        // Any answer but a higher vote means this node accepted the sender as
        // its leader; only a success says the reported commit applies here.
        match result {
            R::Success(_) | R::PartialSuccess(_) => {
                self.cluster.freshness().record_contact(leader_commit.map_or(0, |l| l.index))
            }
            R::Conflict(_) => self.cluster.freshness().record_heard(),
            R::HigherVote(_) => {}
        }
        Ok(Response::new(pb::AppendEntriesResponse { result: Some(result) }))
    }

    async fn vote(&self, req: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        crate::peer_tls::claims(&req, req.get_ref().vote.as_ref().map(|v| v.node_id))?;
        // Over mutual TLS, only a voter may campaign (a learner's certificate
        // is no way to take the lead).
        if let Some(crate::peer_tls::PeerNode(id)) = req.extensions().get::<crate::peer_tls::PeerNode>() {
            let m = self.cluster.raft().metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            if membership.nodes().next().is_some() && !membership.voter_ids().any(|v| v == *id) {
                tracing::warn!(peer = id, "a node that is no voter asked for a vote");
                return Err(Status::permission_denied("only a voter may ask for a vote"));
            }
        }
        let req = req.into_inner();
        let rpc = VoteRequest {
            vote: req_vote_from_pb(&req.vote).map_err(bad)?,
            last_log_id: opt_log_id_from_pb(&req.last_log_id),
        };
        let (candidate, candidate_log) = (rpc.vote.leader_id, rpc.last_log_id);
        let resp = self.cluster.raft().vote(rpc).await.map_err(stopped)?;
        if !resp.vote_granted && resp.last_log_id > candidate_log {
            self.cluster.outranked_candidate(candidate.term, candidate.voted_for().unwrap_or_default());
        }
        Ok(Response::new(pb::VoteResponse {
            vote: Some(vote_to_pb(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: opt_log_id_to_pb(&resp.last_log_id),
        }))
    }

    #[tracing::instrument(level = "info", name = "snapshot.receive", skip_all)]
    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let claimed_by = req.extensions().get::<crate::peer_tls::PeerNode>().copied();
        let mut stream = req.into_inner();
        let head = stream.next().await.ok_or_else(|| bad("empty snapshot stream"))??;
        if let Some(crate::peer_tls::PeerNode(id)) = claimed_by {
            if head.vote.as_ref().map(|v| v.node_id) != Some(id) {
                tracing::warn!(certificate = id, "a peer sent a snapshot in another node's name");
                return Err(Status::permission_denied("the message's sender is not the certificate's node"));
            }
        }
        let vote = req_vote_from_pb(&head.vote).map_err(bad)?;
        let meta = snapshot_meta_from_pb(head.meta.as_ref().ok_or_else(|| bad("snapshot meta"))?).map_err(bad)?;
        let raft = self.cluster.raft();
        let file = raft.begin_receiving_snapshot().await.map_err(stopped)?;
        let result = async {
            let mut out = tokio::fs::File::create(&file.path).await?;
            let mut total = head.data.len() as u64;
            out.write_all(&head.data).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(std::io::Error::other)?;
                total += chunk.data.len() as u64;
                if total > MAX_SNAPSHOT_BYTES {
                    return Err(std::io::Error::other("snapshot too large"));
                }
                out.write_all(&chunk.data).await?;
            }
            out.sync_all().await?;
            Ok::<u64, std::io::Error>(total)
        }
        .await;
        let bytes = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&file.path).await;
                tracing::warn!(error = %e, "snapshot transfer failed");
                return Err(bad("snapshot stream broken or too large"));
            }
        };
        tracing::info!(bytes, snapshot_id = %meta.snapshot_id, "snapshot received");
        let resp = raft.install_full_snapshot(vote, Snapshot { meta, snapshot: file }).await.map_err(stopped)?;
        if resp.vote == vote {
            self.cluster.freshness().record_heard();
        }
        Ok(Response::new(pb::SnapshotResponse { vote: Some(vote_to_pb(&resp.vote)) }))
    }
}
