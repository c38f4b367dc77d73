//! Sending a call on to the leader: the one way a node hands over what only
//! the leader may do. Three kinds of call take it:
//!
//! - a write ([`Cluster::propose`] on a follower): `ControlService.Propose`,
//!   under the cluster secret;
//! - a membership change and a leadership transfer (the admin
//!   `ClusterService`): under the caller's own credentials, so that the
//!   leader authorizes and audits the call itself.
//!
//! Each goes the same way: to the leader's peer address (from Raft's
//! membership), on the one cached channel to it, with the caller's trace and
//! a deadline. A leader that cannot be reached, or does not answer in time,
//! becomes `UNAVAILABLE` naming its client address (so a client can go there
//! itself); the leader's own answer, a refusal or a newer leader it names,
//! passes through unchanged.

use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use gatehouse_storage::Member;

use crate::peers::SECRET_METADATA;
use crate::{Cluster, ClusterError};

/// Whose credentials a forwarded call carries.
pub enum Credentials<'a> {
    /// The cluster secret: a call between nodes (`ControlService`).
    Cluster,
    /// The caller's `authorization` metadata, taken from its request: an
    /// admin call the leader authorizes and audits as the caller's. The
    /// cluster secret goes along: the leader's peer listener admits only
    /// nodes of the cluster, then checks the caller's key.
    Caller(&'a MetadataMap),
}

impl Cluster {
    /// Sends `message` to `leader` through `call` (which makes the client on
    /// the channel and calls the method) and returns the leader's answer.
    /// `timeout` bounds the whole call.
    pub async fn to_leader<Req, Resp>(
        &self,
        leader: &Member,
        message: Req,
        credentials: Credentials<'_>,
        timeout: Duration,
        call: impl AsyncFnOnce(Channel, Request<Req>) -> Result<Response<Resp>, Status>,
    ) -> Result<Resp, Status> {
        let channel = self.inner.peers.channel(&leader.addr)?;
        let mut req = Request::new(message);
        match credentials {
            Credentials::Cluster => {
                req.metadata_mut().insert(SECRET_METADATA, self.inner.peers.secret().metadata_value());
            }
            Credentials::Caller(from) => {
                req.metadata_mut().insert(SECRET_METADATA, self.inner.peers.secret().metadata_value());
                if let Some(auth) = from.get("authorization") {
                    req.metadata_mut().insert("authorization", auth.clone());
                }
            }
        }
        if let Some(lineage) = self.inner.peers.lineage().and_then(|l| l.metadata()) {
            req.metadata_mut().insert(crate::lineage::LINEAGE_METADATA, lineage);
        }
        crate::trace::inject_current(req.metadata_mut());
        req.set_timeout(timeout);
        let answer = tokio::time::timeout(timeout, call(channel, req)).await;
        let answer = answer.unwrap_or_else(|_| Err(Status::deadline_exceeded("the leader did not answer in time")));
        unreachable_names(answer, leader.client_addr()).map(Response::into_inner)
    }
}

/// The leader's own answer passes through; a leader that could not be
/// reached (or did not answer in time) becomes `UNAVAILABLE` naming it.
fn unreachable_names<T>(r: Result<T, Status>, leader: &str) -> Result<T, Status> {
    use tonic::Code::{Cancelled, DeadlineExceeded, Unavailable, Unknown};
    r.map_err(|s| match s.code() {
        Unavailable | DeadlineExceeded | Cancelled | Unknown if crate::error::leader_named(&s).is_none() => {
            ClusterError::Unavailable { leader: Some(leader.to_string()) }.into()
        }
        _ => s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LEADER_METADATA;

    #[test]
    fn an_unreachable_leader_is_named_and_its_own_answers_pass_through() {
        let named = |r: Result<(), Status>| r.unwrap_err().metadata().get(LEADER_METADATA).cloned();
        let refused = Err(Status::unavailable("tcp connect error"));
        assert_eq!(named(unreachable_names(refused, "127.0.0.1:7001")).unwrap(), "127.0.0.1:7001");
        let late: Result<(), Status> = Err(Status::deadline_exceeded("timeout"));
        let e = unreachable_names(late, "127.0.0.1:7001").unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        // Nothing of the transport's failure reaches the caller.
        assert_eq!(e.message(), "the cluster cannot take writes right now");
        // The leader's own refusals are the caller's answer.
        let e =
            unreachable_names::<()>(Err(Status::not_found("node 9 is not a member")), "127.0.0.1:7001").unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "node 9 is not a member"));
        let denied = Status::permission_denied("missing permission cluster.admin");
        let e = unreachable_names::<()>(Err(denied), "127.0.0.1:7001").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        // A leader that named a newer leader is believed.
        let newer: Status = ClusterError::Unavailable { leader: Some("127.0.0.1:7003".into()) }.into();
        assert_eq!(named(unreachable_names(Err(newer), "127.0.0.1:7001")).unwrap(), "127.0.0.1:7003");
    }
}
