//! What nodes ask of each other beyond Raft (`ControlService`, in
//! `control.proto`): a write sent on to the leader, the leader's read index,
//! a node's own status, the election pauses and the campaign of a leadership
//! transfer, the pre-vote, and the state digest the chaos checkers compare.
//! Refused without the cluster secret, like the Raft service.

use gatehouse_proto::control as pb;
use gatehouse_proto::control::control_service_server::{ControlService, ControlServiceServer};
use gatehouse_proto::events::NodeState;
use gatehouse_storage::convert::log_id_to_pb;
use gatehouse_storage::types::NodeId;
use openraft::error::{ClientWriteError, RaftError};
use tonic::{Request, Response, Status};

use crate::peers::MAX_RAFT_MESSAGE;
use crate::raft::service::{bad, stopped};
use crate::read_index::NotLeader;
use crate::{Cluster, ClusterError};

pub struct ControlRpc {
    cluster: Cluster,
    storage: gatehouse_storage::Storage,
}

/// The service, behind [`Cluster::admit`] like the Raft service.
pub fn server(
    cluster: Cluster,
    storage: gatehouse_storage::Storage,
) -> tonic::service::interceptor::InterceptedService<
    ControlServiceServer<ControlRpc>,
    impl tonic::service::Interceptor + Clone,
> {
    let gate = cluster.clone();
    let svc = ControlServiceServer::new(ControlRpc { cluster, storage })
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE);
    tonic::service::interceptor::InterceptedService::new(svc, move |req| gate.admit_control(req))
}

#[tonic::async_trait]
impl ControlService for ControlRpc {
    #[tracing::instrument(level = "debug", name = "propose.forwarded", skip_all)]
    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let batch = req.into_inner().batch.ok_or_else(|| bad("batch"))?;
        crate::propose::bounded(&batch.commands)?;
        // Only a leader raises the cluster version, from what it asked
        // every member itself: never one forwarded to it.
        if batch.commands.iter().any(|c| matches!(c.payload, Some(gatehouse_domain::Payload::SetClusterVersion(_)))) {
            return Err(Status::permission_denied("the cluster version is raised by the leader alone"));
        }
        match self.cluster.write_local(batch.commands).await {
            Ok((results, log_index)) => Ok(Response::new(pb::ProposeResponse { results, log_index })),
            // Not the leader (any more): the forwarding node tries again at the
            // leader its own Raft names next (the address here is for logs and clients).
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ClusterError::Unavailable { leader: f.leader_node.map(|n| n.client_addr().to_string()) }.into())
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
            Err(NotLeader::Follows(leader)) => {
                Err(ClusterError::Unavailable { leader: Some(leader.client_addr().to_string()) }.into())
            }
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
        // Only the leader pauses others (a transfer); anyone may lift a pause.
        if req.get_ref().duration_ms > 0 {
            from_the_leader(&self.cluster, &req)?;
        }
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

    async fn campaign(&self, req: Request<pb::CampaignRequest>) -> Result<Response<pb::CampaignResponse>, Status> {
        // Only the leader hands its leadership over.
        from_the_leader(&self.cluster, &req)?;
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

/// Over mutual TLS: refuses a call that only the current leader may make
/// (an election pause, a campaign) from any other node.
#[allow(clippy::result_large_err)]
fn from_the_leader<T>(cluster: &Cluster, req: &Request<T>) -> Result<(), Status> {
    match req.extensions().get::<crate::peer_tls::PeerNode>() {
        Some(crate::peer_tls::PeerNode(id)) if cluster.raft().metrics().borrow().current_leader != Some(*id) => {
            tracing::warn!(peer = id, "a node that does not lead asked for an election pause or a campaign");
            Err(Status::permission_denied("only the leader may ask that"))
        }
        _ => Ok(()),
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

/// Every member's status (this node's own without a call), asked at once;
/// `None` for a member that did not answer within `timeout`.
pub async fn ask_members(
    cluster: &Cluster,
    timeout: std::time::Duration,
) -> Vec<(NodeId, gatehouse_storage::Member, Option<pb::LocalStatusResponse>)> {
    let membership = cluster.raft().metrics().borrow().membership_config.membership().clone();
    let calls = membership.nodes().map(|(id, member)| {
        let (id, member) = (*id, member.clone());
        async move {
            if id == cluster.id() {
                return (id, member, Some(local_status(cluster)));
            }
            let status = async {
                let mut client = cluster.peers().control_client(&member.addr).ok()?;
                let mut r = Request::new(pb::LocalStatusRequest {});
                r.set_timeout(timeout);
                client.local_status(r).await.ok().map(|r| r.into_inner())
            };
            let status = tokio::time::timeout(timeout, status).await.ok().flatten();
            (id, member, status)
        }
    });
    futures::future::join_all(calls).await
}

/// This node's own status.
pub fn local_status(cluster: &Cluster) -> pb::LocalStatusResponse {
    let m = cluster.raft().metrics().borrow().clone();
    let index = |l: Option<openraft::LogId<NodeId>>| l.map_or(0, |l| log_id_to_pb(&l).index);
    let lineage = cluster.peers().lineage().and_then(|l| l.get());
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
        peer_cert_not_after: cluster.peers().tls().map_or(0, |t| t.not_after()),
        fronts: cluster.fronts_seen().report(),
        cluster_id: lineage.as_ref().map(|l| l.cluster_id.clone()).unwrap_or_default(),
        epoch: lineage.map_or(0, |l| l.epoch),
        command_version: gatehouse_domain::version::COMMAND_VERSION,
        store_format: gatehouse_storage::format::STORE_FORMAT,
        cluster_version: cluster.cluster_version(),
        started_at_ms: cluster.inner.started_at_ms,
        ready: cluster.is_fresh(),
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
