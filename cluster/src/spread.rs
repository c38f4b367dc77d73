//! How far a write has spread: which voters report they applied a log
//! index. An operator who revokes a credential with `wait_all` gets the
//! answer only once every reachable voter refuses it.

use std::time::{Duration, Instant};

use gatehouse_proto::control::LocalStatusRequest;
use gatehouse_storage::NodeId;

use crate::Cluster;

/// How long one voter has to answer one status call.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

impl Cluster {
    /// Waits (up to `within`) until every voter reports it applied
    /// `log_index`; returns the voters that did and those that did not
    /// (unreachable, or still behind when the time was up).
    pub async fn applied_on_voters(&self, log_index: u64, within: Duration) -> (Vec<NodeId>, Vec<NodeId>) {
        let (mut applied_on, mut behind) = (Vec::new(), Vec::new());
        let membership = self.inner.raft.metrics().borrow().membership_config.membership().clone();
        let deadline = Instant::now() + within;
        for id in membership.voter_ids() {
            let addr = membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
            let applied = loop {
                let index = if id == self.inner.id {
                    Some(self.inner.view.applied_index())
                } else {
                    let call = async {
                        let mut client = self.inner.peers.control_client(&addr).ok()?;
                        let mut req = tonic::Request::new(LocalStatusRequest {});
                        req.set_timeout(ASK_TIMEOUT);
                        client.local_status(req).await.ok().map(|r| r.into_inner().applied_index)
                    };
                    call.await
                };
                match index {
                    Some(i) if i >= log_index => break true,
                    None => break false,
                    Some(_) if Instant::now() >= deadline => break false,
                    Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
            if applied {
                applied_on.push(id);
            } else {
                behind.push(id);
            }
        }
        (applied_on, behind)
    }
}
