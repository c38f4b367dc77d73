//! The Raft gRPC service: requests from other nodes, refused without the
//! cluster secret (an interceptor checks it before any handler runs), and
//! refused if malformed, before openraft sees them.

use gatehouse_proto::events::NodeState;
use gatehouse_proto::raft as pb;
use gatehouse_proto::raft::raft_service_server::{RaftService, RaftServiceServer};
use gatehouse_storage::convert::{
    entry_from_pb, log_id_to_pb, opt_log_id_from_pb, opt_log_id_to_pb, req_vote_from_pb, snapshot_meta_from_pb,
    vote_to_pb,
};
use gatehouse_storage::types::NodeId;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::Snapshot;
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::MAX_SNAPSHOT_BYTES;
use crate::peers::MAX_RAFT_MESSAGE;
use crate::read_index::NotLeader;
use crate::{Cluster, ClusterError};

pub struct RaftRpc {
    cluster: Cluster,
    storage: gatehouse_storage::Storage,
}

/// The service, wrapped in the cluster-secret check.
pub fn server(
    cluster: Cluster,
    storage: gatehouse_storage::Storage,
) -> tonic::service::interceptor::InterceptedService<RaftServiceServer<RaftRpc>, impl tonic::service::Interceptor + Clone>
{
    let secret = cluster.peers().secret().clone();
    let svc = RaftServiceServer::new(RaftRpc { cluster, storage })
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE);
    tonic::service::interceptor::InterceptedService::new(svc, move |req| secret.check(req))
}

fn bad(what: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("malformed request: {what}"))
}

fn stopped<E: std::fmt::Display>(e: E) -> Status {
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
        let mut stream = req.into_inner();
        let head = stream.next().await.ok_or_else(|| bad("empty snapshot stream"))??;
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

    #[tracing::instrument(level = "debug", name = "propose.forwarded", skip_all)]
    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let batch = req.into_inner().batch.ok_or_else(|| bad("batch"))?;
        crate::propose::bounded(&batch.commands)?;
        match self.cluster.write_local(batch.commands).await {
            Ok((results, log_index)) => Ok(Response::new(pb::ProposeResponse { results, log_index })),
            // Not the leader (any more): the forwarding node tries again at the
            // leader its own Raft names next (the address here is for logs and clients).
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ClusterError::Unavailable { leader: f.leader_node.map(|n| n.addr) }.into())
            }
            Err(e) => Err(stopped(e)),
        }
    }

    /// A follower's read index (its freshness probe, its catch-up): the
    /// leader's own, so it waits out a leadership transfer like every other.
    async fn read_index(&self, _req: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        match self.cluster.leader_read_index().await {
            Ok(index) => Ok(Response::new(pb::ReadIndexResponse { index })),
            // The asker tries again at its next probe, at the leader its Raft names.
            Err(NotLeader::Follows(leader)) => Err(ClusterError::Unavailable { leader: Some(leader) }.into()),
            Err(NotLeader::Unavailable) => Err(ClusterError::Unavailable { leader: None }.into()),
        }
    }

    async fn local_status(
        &self,
        _req: Request<pb::LocalStatusRequest>,
    ) -> Result<Response<pb::LocalStatusResponse>, Status> {
        Ok(Response::new(local_status(&self.cluster)))
    }

    async fn pause_elections(
        &self,
        req: Request<pb::PauseElectionsRequest>,
    ) -> Result<Response<pb::PauseElectionsResponse>, Status> {
        let ms = req.into_inner().duration_ms;
        if ms > MAX_ELECTION_PAUSE_MS {
            return Err(bad(format!("an election pause is at most {MAX_ELECTION_PAUSE_MS} ms")));
        }
        tracing::info!(duration_ms = ms, "elections paused for a leadership transfer");
        self.cluster.pause_elections(std::time::Duration::from_millis(ms));
        Ok(Response::new(pb::PauseElectionsResponse {}))
    }

    async fn pre_vote(&self, _req: Request<pb::PreVoteRequest>) -> Result<Response<pb::PreVoteResponse>, Status> {
        Ok(Response::new(pb::PreVoteResponse { leader_silent: self.cluster.leader_silent() }))
    }

    async fn state_digest(
        &self,
        _req: Request<pb::StateDigestRequest>,
    ) -> Result<Response<pb::StateDigestResponse>, Status> {
        let storage = self.storage.clone();
        let (applied_index, sha256) =
            tokio::task::spawn_blocking(move || storage.state_digest()).await.map_err(stopped)?.map_err(|e| {
                tracing::error!(error = %e, "state digest failed");
                Status::internal("state digest failed")
            })?;
        Ok(Response::new(pb::StateDigestResponse { applied_index, sha256: sha256.to_vec() }))
    }

    async fn campaign(&self, _req: Request<pb::CampaignRequest>) -> Result<Response<pb::CampaignResponse>, Status> {
        let m = self.cluster.raft().metrics().borrow().clone();
        if !m.membership_config.membership().voter_ids().any(|v| v == self.cluster.id()) {
            return Err(Status::failed_precondition("this node is not a voter"));
        }
        tracing::info!(term = m.current_term, "campaigning for leadership on request");
        self.cluster.pause_elections(std::time::Duration::ZERO);
        self.cluster.raft().trigger().elect().await.map_err(|_| Status::unavailable("raft stopped"))?;
        Ok(Response::new(pb::CampaignResponse {}))
    }
}

/// Longest election pause a peer may ask for.
const MAX_ELECTION_PAUSE_MS: u64 = 60_000;

/// openraft's server state as the protocols carry it.
pub fn node_state(s: openraft::ServerState) -> NodeState {
    use openraft::ServerState as S;
    match s {
        S::Learner => NodeState::Learner,
        S::Follower => NodeState::Follower,
        S::Candidate => NodeState::Candidate,
        S::Leader => NodeState::Leader,
        S::Shutdown => NodeState::Shutdown,
    }
}

/// A node state's name in the CLI's output and in logs: `leader`,
/// `follower`, `candidate`, `learner`, `shutdown` (`unknown` for a value
/// this version does not know).
pub fn node_state_name(state: i32) -> &'static str {
    match NodeState::try_from(state) {
        Ok(NodeState::Learner) => "learner",
        Ok(NodeState::Follower) => "follower",
        Ok(NodeState::Candidate) => "candidate",
        Ok(NodeState::Leader) => "leader",
        Ok(NodeState::Shutdown) => "shutdown",
        Ok(NodeState::Unspecified) | Err(_) => "unknown",
    }
}

/// This node's own status.
pub fn local_status(cluster: &Cluster) -> pb::LocalStatusResponse {
    let m = cluster.raft().metrics().borrow().clone();
    let index = |l: Option<openraft::LogId<NodeId>>| l.map_or(0, |l| log_id_to_pb(&l).index);
    pb::LocalStatusResponse {
        node_id: m.id,
        state: node_state(m.state) as i32,
        term: m.current_term,
        leader_id: m.current_leader.unwrap_or(0),
        applied_index: index(m.last_applied),
        last_log_index: m.last_log_index.unwrap_or(0),
        snapshot_index: index(m.snapshot),
        purged_index: index(m.purged),
        commit_index: cluster.commit_index(),
        matched: if m.current_leader == Some(m.id) {
            let last = m.last_log_index.unwrap_or(0);
            let replication = m.replication.iter().flatten();
            replication
                .map(|(id, l)| pb::MatchedIndex { node_id: *id, index: if *id == m.id { last } else { index(*l) } })
                .collect()
        } else {
            Vec::new()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_state_has_its_name_and_unknown_values_say_so() {
        use openraft::ServerState as S;
        let named: Vec<&str> = [S::Learner, S::Follower, S::Candidate, S::Leader, S::Shutdown]
            .into_iter()
            .map(|s| node_state_name(node_state(s) as i32))
            .collect();
        assert_eq!(named, ["learner", "follower", "candidate", "leader", "shutdown"]);
        assert_eq!(node_state_name(0), "unknown");
        assert_eq!(node_state_name(99), "unknown");
    }
}
