//! `ClusterService`: status, membership, snapshots and backups
//! ([`super::backup`]).
//!
//! Membership changes and leadership transfers run on the leader: a node
//! that is not the leader sends the call on with the caller's credentials
//! (`gatehouse_cluster::forward`), and the leader's admin API authorizes and
//! audits it.

use std::collections::BTreeSet;
use std::time::Duration;

use gatehouse_domain::roles::Permission;
use gatehouse_proto::admin::cluster_service_client::ClusterServiceClient;
use gatehouse_proto::admin::cluster_service_server::{ClusterService, ClusterServiceServer};
use gatehouse_proto::admin::*;
use gatehouse_storage::types::NodeId;
use gatehouse_storage::Member;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use super::auth::{authorize, authorize_stale};
use super::learner;
use crate::{ApiError, Node};
use gatehouse_cluster::forward::Credentials;
use gatehouse_cluster::Cluster;

pub struct ClusterAdmin {
    /// Authorization and audit.
    node: Node,
    /// The membership, Raft and the other voters.
    cluster: Cluster,
    backups: super::backup::Backups,
}

pub fn server(node: Node, cluster: Cluster, storage: gatehouse_storage::Storage) -> ClusterServiceServer<ClusterAdmin> {
    ClusterServiceServer::new(ClusterAdmin { node, cluster, backups: super::backup::Backups::new(storage) })
}

/// How long a status call waits for each node.
const STATUS_TIMEOUT: Duration = Duration::from_millis(700);

fn validate_id(id: NodeId) -> Result<(), ApiError> {
    if id == 0 {
        return Err(ApiError::InvalidArgument("node id must be a positive integer".into()));
    }
    Ok(())
}

fn validate_addr(addr: &str) -> Result<(), ApiError> {
    let ok = addr.len() <= 255
        && addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
        && addr.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "node address must be host:port, got {}",
            gatehouse_domain::quote::quote(addr)
        )))
    }
}

/// The membership after a change, for the response.
pub fn membership_response(log_index: u64, m: &gatehouse_storage::types::Membership) -> MembershipResponse {
    let voters: BTreeSet<NodeId> = m.voter_ids().collect();
    MembershipResponse { log_index, voters: voters.iter().copied().collect(), learners: m.learner_ids().collect() }
}

impl ClusterAdmin {
    /// Runs a membership change here if leader, else forwards it with the caller's token.
    async fn on_leader<F, Fut, T>(
        &self,
        req: &Request<T>,
        local: F,
        forward: impl AsyncFnOnce(
            ClusterServiceClient<tonic::transport::Channel>,
            Request<T>,
        ) -> Result<Response<MembershipResponse>, Status>,
    ) -> Result<Response<MembershipResponse>, Status>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<
            Output = Result<
                openraft::raft::ClientWriteResponse<gatehouse_storage::TypeConfig>,
                RaftError<NodeId, ClientWriteError<NodeId, Member>>,
            >,
        >,
        T: Clone,
    {
        match local().await {
            Ok(resp) => {
                let m = resp
                    .membership
                    .clone()
                    .unwrap_or_else(|| self.cluster.raft().metrics().borrow().membership_config.membership().clone());
                Ok(Response::new(membership_response(resp.log_id.index, &m)))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let leader = f.leader_node.ok_or(ApiError::Unavailable { leader: None })?;
                let (message, caller) = (req.get_ref().clone(), Credentials::Caller(req.metadata()));
                let cluster = &self.cluster;
                let answer = cluster
                    .to_leader(&leader, message, caller, MEMBERSHIP_FORWARD_TIMEOUT, async |ch, fwd| {
                        forward(ClusterServiceClient::new(ch), fwd).await
                    })
                    .await;
                answer.map(Response::new)
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ApiError::FailedPrecondition(e.to_string()).into())
            }
            Err(RaftError::Fatal(e)) => {
                tracing::error!(error = %e, "raft stopped");
                Err(ApiError::Unavailable { leader: None }.into())
            }
        }
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterAdmin {
    #[tracing::instrument(level = "info", name = "admin.cluster.status", skip_all)]
    async fn status(&self, req: Request<ClusterStatusRequest>) -> Result<Response<ClusterStatusResponse>, Status> {
        // Status stays readable on a stale node: it is how operators find out why.
        authorize_stale(&self.node, req.metadata(), Permission::ClusterRead).await?;
        let metrics = self.cluster.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let me = self.node.id();
        let answers = gatehouse_cluster::control::ask_members(&self.cluster, STATUS_TIMEOUT).await;
        let holding = gatehouse_cluster::version::holding(
            answers.iter().map(|(id, _, s)| (*id, s.as_ref())),
            &self.cluster.fronts_listed(),
        );
        // The leader's answer says what it knows each node holds.
        let leader_view = answers.iter().find_map(|(id, _, s)| {
            s.as_ref().filter(|s| {
                Some(*id) == metrics.current_leader && s.state == gatehouse_proto::events::NodeState::Leader as i32
            })
        });
        let leader_last = leader_view.map_or(0, |s| s.last_log_index);
        let leader_commit = leader_view.map_or(0, |s| s.commit_index);
        let fronts = fronts_of(&answers, leader_commit);
        let matched: std::collections::BTreeMap<NodeId, u64> =
            leader_view.map(|s| s.matched.iter().map(|m| (m.node_id, m.index)).collect()).unwrap_or_default();
        let nodes = answers
            .into_iter()
            .map(|(id, member, s)| {
                let matched = matched.get(&id).copied();
                let s = s.unwrap_or_default();
                NodeStatus {
                    id,
                    client_addr: member.client_addr().to_string(),
                    addr: member.addr,
                    voter: voters.contains(&id),
                    reachable: s.node_id == id,
                    state: s.state,
                    term: s.term,
                    applied_index: s.applied_index,
                    last_log_index: s.last_log_index,
                    matched_index: matched.unwrap_or(0),
                    replication_lag: matched.map_or(0, |m| leader_last.saturating_sub(m)),
                    commit_index: s.commit_index,
                    peer_cert_not_after: s.peer_cert_not_after,
                    cluster_id: s.cluster_id,
                    epoch: s.epoch,
                    command_version: s.command_version,
                    store_format: s.store_format,
                    started_at_ms: s.started_at_ms,
                    ready: s.ready,
                }
            })
            .collect();
        let leader = self.node.leader();
        let lineage = self.cluster.peers().lineage().and_then(|l| l.get());
        Ok(Response::new(ClusterStatusResponse {
            node_id: me,
            leader_id: leader.as_ref().map_or(0, |l| l.0),
            leader_addr: leader.map(|l| l.1.client_addr().to_string()).unwrap_or_default(),
            term: metrics.current_term,
            nodes,
            fronts,
            cluster_id: lineage.as_ref().map(|l| l.cluster_id.clone()).unwrap_or_default(),
            epoch: lineage.map_or(0, |l| l.epoch),
            cluster_version: self.cluster.cluster_version(),
            understood_version: if holding.complete { holding.understood } else { 0 },
        }))
    }

    #[tracing::instrument(level = "info", name = "admin.cluster.add_learner", skip_all, fields(node_id = req.get_ref().node_id))]
    async fn add_learner(&self, req: Request<AddLearnerRequest>) -> Result<Response<MembershipResponse>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::ClusterAdmin).await?;
        let r = req.get_ref().clone();
        validate_id(r.node_id)?;
        validate_addr(&r.addr)?;
        if !r.client_addr.is_empty() {
            validate_addr(&r.client_addr)?;
        }
        // Refused before it enters the membership: the leader would send the
        // secret and the log there in plaintext.
        self.cluster.peers().check_dialable(&r.addr)?;
        let membership = self.cluster.raft().metrics().borrow().membership_config.membership().clone();
        learner::fits(&membership, r.node_id, &r.addr, &r.client_addr)?;
        let detail = format!(
            "addr={} client_addr={}",
            r.addr,
            Member::split(r.addr.clone(), r.client_addr.clone()).client_addr()
        );
        let audit = self.audit(&actor, "cluster.add_learner", r.node_id, detail);
        // From the version check to the membership change, the leader does
        // not raise the cluster version (a node it did not ask would join).
        let _versions = self.cluster.hold_versions().await;
        // The probe carries the cluster secret to the address: every one is
        // audited, refused or not.
        let audit = match learner::probe(&self.cluster, r.node_id, &r.addr).await {
            Ok(()) => audit,
            Err(e) => return Err(audit.done::<(), _>(Err(e)).unwrap_err().into()),
        };
        let (raft, cluster) = (self.cluster.raft().clone(), self.cluster.clone());
        // Set when this node (the leader) added it and it did not catch up in time.
        let behind = std::sync::Arc::new(std::sync::Mutex::new(None));
        let behind_here = behind.clone();
        let added = self
            .on_leader(
                &req,
                || async move {
                    let added = raft.add_learner(r.node_id, Member::split(r.addr, r.client_addr), false).await;
                    if let Ok(resp) = &added {
                        let caught_up =
                            learner::wait_caught_up(&cluster, r.node_id, resp.log_id.index, learner::CATCH_UP_TIMEOUT);
                        if let Err(status) = caught_up.await {
                            *behind_here.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                        }
                    }
                    audit.done(added)
                },
                async |mut c, f| c.add_learner(f).await,
            )
            .await?;
        let behind = behind.lock().unwrap_or_else(|p| p.into_inner()).take();
        match behind {
            Some(status) => Err(status),
            None => Ok(added),
        }
    }

    #[tracing::instrument(level = "info", name = "admin.cluster.promote", skip_all, fields(node_id = req.get_ref().node_id))]
    async fn promote(&self, req: Request<PromoteRequest>) -> Result<Response<MembershipResponse>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::ClusterAdmin).await?;
        let id = req.get_ref().node_id;
        validate_id(id)?;
        let m = self.cluster.raft().metrics().borrow().membership_config.membership().clone();
        if m.get_node(&id).is_none() {
            return Err(ApiError::NotFound(format!("node {id} is not a member; add it as a learner first")).into());
        }
        let raft = self.cluster.raft().clone();
        let audit = self.audit(&actor, "cluster.promote", id, String::new());
        self.on_leader(
            &req,
            || async move {
                audit.done(raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await)
            },
            async |mut c, f| c.promote(f).await,
        )
        .await
    }

    #[tracing::instrument(level = "info", name = "admin.cluster.remove", skip_all, fields(node_id = req.get_ref().node_id))]
    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Result<Response<MembershipResponse>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::ClusterAdmin).await?;
        let id = req.get_ref().node_id;
        validate_id(id)?;
        let m = self.cluster.raft().metrics().borrow().membership_config.membership().clone();
        if m.get_node(&id).is_none() {
            return Err(ApiError::NotFound(format!("node {id} is not a member")).into());
        }
        let is_voter = m.voter_ids().any(|v| v == id);
        if is_voter && m.voter_ids().count() == 1 {
            return Err(ApiError::FailedPrecondition("cannot remove the last voter".into()).into());
        }
        let raft = self.cluster.raft().clone();
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let audit = self.audit(&actor, "cluster.remove_node", id, String::new());
        self.on_leader(
            &req,
            || async move { audit.done(raft.change_membership(change, false).await) },
            async |mut c, f| c.remove_node(f).await,
        )
        .await
    }

    #[tracing::instrument(level = "info", name = "admin.cluster.snapshot", skip_all)]
    async fn trigger_snapshot(
        &self,
        req: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::ClusterAdmin).await?;
        let raft = self.cluster.raft();
        let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        raft.trigger().snapshot().await.map_err(|e| {
            tracing::error!(error = %e, "raft stopped");
            ApiError::Unavailable { leader: None }
        })?;
        let mut metrics = raft.metrics();
        let built = tokio::time::timeout(
            Duration::from_secs(60),
            metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= applied)),
        )
        .await;
        let result = match built {
            Ok(Ok(m)) => Ok(TriggerSnapshotResponse { snapshot_index: m.snapshot.map_or(0, |s| s.index) }),
            _ => Err(ApiError::Unavailable { leader: None }),
        };
        let result = self.audit(&actor, "cluster.snapshot", self.node.id(), String::new()).done(result);
        Ok(Response::new(result?))
    }

    type BackupStream = super::backup::BackupStream;

    #[tracing::instrument(level = "info", name = "admin.cluster.backup", skip_all)]
    async fn backup(&self, req: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::ClusterAdmin).await?;
        let audit = self.audit(&actor, "cluster.backup", self.node.id(), String::new());
        // Audited when it ends: whole (with the index copied) or not.
        let (refused, ended) = (audit.clone(), audit);
        let started = self.backups.start(&self.cluster, move |outcome| {
            let mut ended = ended;
            if let Ok(index) = &outcome {
                ended.event.detail = format!("index {index}");
            }
            let _ = ended.done(outcome);
        });
        match started {
            Ok(stream) => Ok(Response::new(stream)),
            Err(e) => Err(refused.done::<(), _>(Err(e)).unwrap_err().into()),
        }
    }

    #[tracing::instrument(level = "info", name = "admin.cluster.transfer_leadership", skip_all, fields(node_id = req.get_ref().node_id))]
    async fn transfer_leadership(
        &self,
        req: Request<TransferLeadershipRequest>,
    ) -> Result<Response<TransferLeadershipResponse>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::ClusterAdmin).await?;
        let target = req.get_ref().node_id;
        validate_id(target)?;
        let m = self.cluster.raft().metrics().borrow().membership_config.membership().clone();
        if m.get_node(&target).is_none() {
            return Err(ApiError::NotFound(format!("node {target} is not a member")).into());
        }
        match self.node.leader() {
            Some((id, _)) if id == self.node.id() => {
                let audit = self.audit(&actor, "cluster.transfer_leadership", target, String::new());
                let (leader_id, term) = audit.done(self.cluster.transfer_leadership(target).await)?;
                Ok(Response::new(TransferLeadershipResponse { leader_id, term }))
            }
            Some((_, leader)) => {
                let caller = Credentials::Caller(req.metadata());
                let answer = self
                    .cluster
                    .to_leader(&leader, *req.get_ref(), caller, TRANSFER_FORWARD_TIMEOUT, async |ch, fwd| {
                        ClusterServiceClient::new(ch).transfer_leadership(fwd).await
                    })
                    .await;
                answer.map(Response::new)
            }
            None => Err(ApiError::Unavailable { leader: None }.into()),
        }
    }
}

/// How long a forwarded membership change may take on the leader (adding a
/// learner waits until it has caught up).
const MEMBERSHIP_FORWARD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a forwarded leadership transfer may take (the leader gives up
/// after its own deadline, well inside this).
const TRANSFER_FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

/// A membership change to audit once it is done (on the node that does it;
/// a follower that forwards the call records nothing).
#[derive(Clone)]
struct Audit {
    node: Node,
    cluster: Cluster,
    event: gatehouse_proto::events::AuditEvent,
}

impl Audit {
    fn done<T, E: std::fmt::Display>(mut self, result: Result<T, E>) -> Result<T, E> {
        self.event.after = membership_snapshot(&self.cluster);
        match &result {
            Ok(_) => self.event.outcome = "ok".into(),
            Err(e) => {
                self.event.outcome = "failed".into();
                self.event.detail = format!("{} {e}", self.event.detail).trim().to_string();
            }
        }
        self.node.audit(self.event);
        result
    }
}

impl ClusterAdmin {
    fn audit(&self, actor: &crate::identity::Principal, action: &str, node: u64, detail: String) -> Audit {
        let who = crate::audit::Actor::of(actor, crate::admin::call::grpc_peer());
        let mut event = crate::audit::event(action, "", &who, format!("node:{node}"));
        event.detail = detail;
        event.before = membership_snapshot(&self.cluster);
        Audit { node: self.node.clone(), cluster: self.cluster.clone(), event }
    }
}

/// The cluster as an audit snapshot: members, leader, term, latest snapshot.
fn membership_snapshot(cluster: &Cluster) -> String {
    let m = cluster.raft().metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let nodes: Vec<_> = membership.nodes().map(|(id, n)| serde_json::json!({ "id": id, "addr": n.addr })).collect();
    serde_json::json!({
        "voters": membership.voter_ids().collect::<Vec<_>>(),
        "learners": membership.learner_ids().collect::<Vec<_>>(),
        "nodes": nodes,
        "leader": m.current_leader,
        "term": m.current_term,
        "snapshot_index": m.snapshot.map(|s| s.index),
    })
    .to_string()
}

/// The stateless fronts the voters reported, each once: as the voter that
/// heard from it last sees it (a front following one voter asks that one).
fn fronts_of(
    answers: &[(NodeId, gatehouse_storage::Member, Option<gatehouse_proto::control::LocalStatusResponse>)],
    leader_commit: u64,
) -> Vec<gatehouse_proto::admin::FrontStatus> {
    let mut fronts: std::collections::BTreeMap<u64, gatehouse_proto::admin::FrontStatus> = Default::default();
    for (via, _, status) in answers {
        for f in status.iter().flat_map(|s| &s.fronts) {
            let row = gatehouse_proto::admin::FrontStatus {
                id: f.front_id,
                addr: f.addr.clone(),
                applied_index: f.applied_index,
                lag: leader_commit.saturating_sub(f.applied_index),
                last_proof_ms_ago: f.asked_ms_ago,
                via_node: *via,
                following: f.following,
                command_version: gatehouse_cluster::version::reported(f.command_version),
            };
            let newer = fronts.get(&f.front_id).is_none_or(|old| {
                (row.following, std::cmp::Reverse(row.last_proof_ms_ago))
                    > (old.following, std::cmp::Reverse(old.last_proof_ms_ago))
            });
            if newer {
                fronts.insert(f.front_id, row);
            }
        }
    }
    fronts.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in ["127.0.0.1:9000", "node-1.example:1", "[::1]:80"] {
            assert!(validate_addr(ok).is_ok(), "{ok}");
        }
        for bad in ["", "127.0.0.1", ":80", "a:0", "a:70000", "a b:1", "http://a:1", &format!("{}:1", "a".repeat(300))]
        {
            assert!(validate_addr(bad).is_err(), "{bad}");
        }
    }
}
