//! What `AddLearner` checks before it changes the membership, and how it
//! knows the learner caught up.
//!
//! - The id and address must be ones the cluster can use: not another
//!   member's address, not a member's id at another address, not a voter.
//! - A Gatehouse node of this cluster must answer at the address (a Raft
//!   `LocalStatus` call with the cluster secret), and say it is that id. So
//!   a typo, a port of something else, or a node started with another id is
//!   refused before the leader starts sending it the log. Its build must
//!   understand the cluster's command version (an old binary is refused).
//! - The call returns once the learner holds the log up to its own
//!   membership entry (openraft's own wait gives up after 500 ms), or says
//!   how far it got.

use std::time::Duration;

use gatehouse_proto::control as pb;
use gatehouse_storage::types::{Membership, NodeId};
use tonic::Status;

use gatehouse_cluster::Cluster;

use crate::ApiError;

/// How long the node at the address has to answer one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an address where nothing listens yet is tried again: a node
/// started a moment before `add-learner` may still be opening its store.
const PROBE_WINDOW: Duration = Duration::from_secs(5);
/// How long `AddLearner` waits for the learner to catch up (inside the
/// timeout of a call forwarded to the leader).
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(45);

/// Whether adding `id` at `addr` fits the current membership. Adding a
/// learner again at its own address is allowed (a retried call).
pub fn fits(m: &Membership, id: NodeId, addr: &str, client_addr: &str) -> Result<(), ApiError> {
    if let Some(node) = m.get_node(&id) {
        if node.addr != addr {
            return Err(ApiError::FailedPrecondition(format!(
                "node {id} is a member at {}; remove it before adding it at another address",
                node.addr
            )));
        }
        // A retried call is the same call: the membership cannot change a
        // member's addresses in place.
        if node.client_addr() != gatehouse_storage::Member::split(addr, client_addr).client_addr() {
            return Err(ApiError::FailedPrecondition(format!(
                "node {id} is a member with client address {}; remove it before adding it with another",
                node.client_addr()
            )));
        }
        if m.voter_ids().any(|v| v == id) {
            return Err(ApiError::FailedPrecondition(format!("node {id} is already a voter")));
        }
    }
    if let Some((other, _)) = m.nodes().find(|(other, n)| **other != id && n.addr == addr) {
        return Err(ApiError::FailedPrecondition(format!("{addr} is the address of node {other}")));
    }
    Ok(())
}

/// Asks the node at `addr` who it is, as the leader will reach it. An
/// address where nothing listens is tried again for [`PROBE_WINDOW`].
pub async fn probe(cluster: &Cluster, id: NodeId, addr: &str) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + PROBE_WINDOW;
    // Over TLS, only node `id`'s certificate is taken at the address.
    cluster.peers().expect(addr, id);
    let status = loop {
        let mut client = cluster.peers().control_client_once(addr)?;
        let mut req = tonic::Request::new(pb::LocalStatusRequest {});
        req.set_timeout(PROBE_TIMEOUT);
        match tokio::time::timeout(PROBE_TIMEOUT, client.local_status(req)).await {
            Ok(Ok(r)) => break r.into_inner(),
            Ok(Err(s)) if why(&s) == UNREACHABLE && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(Err(s)) => return Err(refused(addr, why(&s))),
            Err(_) => return Err(refused(addr, "no answer within 3s")),
        }
    };
    if status.node_id != id {
        return Err(ApiError::InvalidArgument(format!("the node at {addr} is node {}, not node {id}", status.node_id)));
    }
    // It would meet commands it does not understand (docs/operations.md, rolling upgrades).
    let (understands, runs) = (gatehouse_cluster::version::reported(status.command_version), cluster.cluster_version());
    if understands < runs {
        return Err(ApiError::FailedPrecondition(format!(
            "node {id} runs a Gatehouse that understands command version {understands}, and the cluster runs \
             version {runs}: upgrade it first"
        )));
    }
    Ok(())
}

const UNREACHABLE: &str = "unreachable";

fn refused(addr: &str, why: &str) -> ApiError {
    ApiError::FailedPrecondition(format!("no Gatehouse node of this cluster answered at {addr}: {why}"))
}

/// What a failed probe says, without the transport's detail.
fn why(s: &Status) -> &'static str {
    match s.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => "it refused this cluster's secret",
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => UNREACHABLE,
        // Its lineage is another's (docs/operations.md).
        tonic::Code::FailedPrecondition => {
            "it belongs to another cluster or epoch (its data is another cluster's, or a node of an old \
             epoch reached it first): stop every old node, wipe its data directory and start it again"
        }
        _ => "it did not answer as a Gatehouse node",
    }
}

/// Waits until the leader knows `id` holds the log through `index`;
/// otherwise says how far it got.
pub async fn wait_caught_up(cluster: &Cluster, id: NodeId, index: u64, within: Duration) -> Result<(), Status> {
    let mut metrics = cluster.raft().metrics();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let held = metrics
            .borrow_and_update()
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).copied().flatten())
            .map_or(0, |l| l.index);
        if held >= index {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, metrics.changed()).await {
            Ok(Ok(())) => {}
            // Raft stopped, or the time is up.
            _ => {
                return Err(Status::failed_precondition(format!(
                    "node {id} was added as a learner but had not caught up within {}s (it holds index {held} of \
                     {index}); it keeps receiving the log: check `cluster status` before promoting it",
                    within.as_secs()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use gatehouse_storage::Member;

    use super::*;

    fn membership() -> Membership {
        let nodes = BTreeMap::from([
            (1, Member::new("127.0.0.1:7001")),
            (2, Member::new("127.0.0.1:7002")),
            (4, Member::new("127.0.0.1:7004")),
        ]);
        Membership::new(vec![BTreeSet::from([1, 2])], nodes)
    }

    #[test]
    fn only_ids_and_addresses_the_cluster_can_use_fit() {
        let m = membership();
        assert!(fits(&m, 5, "127.0.0.1:7005", "").is_ok(), "a new node");
        assert!(fits(&m, 4, "127.0.0.1:7004", "").is_ok(), "a learner added again (a retry)");
        assert!(fits(&m, 4, "127.0.0.1:7004", "127.0.0.1:7004").is_ok(), "the same address spelled out");
        let e = fits(&m, 4, "127.0.0.1:7004", "10.0.0.4:9090").unwrap_err().to_string();
        assert!(e.contains("client address"), "{e}");
        let refused = |id, addr: &str| fits(&m, id, addr, "").unwrap_err().to_string();
        assert!(refused(1, "127.0.0.1:7001").contains("already a voter"));
        assert!(refused(4, "127.0.0.1:7009").contains("remove it before"));
        assert!(refused(5, "127.0.0.1:7002").contains("address of node 2"));
    }

    #[test]
    fn a_failed_probe_names_a_cause_not_the_transport_detail() {
        assert_eq!(why(&Status::unauthenticated("bad secret")), "it refused this cluster's secret");
        assert_eq!(why(&Status::unavailable("tcp connect error: 10.0.0.1")), "unreachable");
        assert_eq!(
            why(&Status::internal("h2 protocol error: frame with invalid size")),
            "it did not answer as a Gatehouse node"
        );
        assert_eq!(why(&Status::unimplemented("")), "it did not answer as a Gatehouse node");
        // Something took the connection and closed it with no gRPC answer.
        assert_eq!(why(&Status::unknown("transport error")), "it did not answer as a Gatehouse node");
        assert!(why(&Status::failed_precondition("the caller is of epoch 1")).contains("another cluster or epoch"));
    }
}
