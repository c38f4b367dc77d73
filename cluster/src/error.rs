//! What a consensus call can fail with. The transports turn it into their
//! own error (`gatehouse_api::ApiError` implements `From<ClusterError>`);
//! between nodes it travels as a gRPC status and back ([`ClusterError::from_status`]).
//!
//! Messages never carry internal detail: Raft and network failures are
//! logged where they happen and surface as `Unavailable` or `Internal`.

use gatehouse_domain::ApplyError;

/// gRPC metadata key naming the leader's address on `UNAVAILABLE`.
pub const LEADER_METADATA: &str = "x-gatehouse-leader";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The domain refused a command: over its bounds before it was
    /// proposed, or refused by apply (see [`crate::Cluster::propose_one`]).
    #[error("{0}")]
    Refused(ApplyError),
    /// A malformed argument to a consensus call (a node address).
    #[error("{0}")]
    InvalidArgument(String),
    /// The cluster is not in a state that allows the call (a transfer to a
    /// node that is no voter, traffic this node may not send).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No leader could take the write; `leader` is the last one known.
    #[error("the cluster cannot take writes right now")]
    Unavailable { leader: Option<String> },
    #[error("internal error")]
    Internal,
}

impl From<ApplyError> for ClusterError {
    fn from(e: ApplyError) -> ClusterError {
        ClusterError::Refused(e)
    }
}

impl ClusterError {
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ClusterError::Refused(ApplyError::Invalid(_)) | ClusterError::InvalidArgument(_) => {
                tonic::Code::InvalidArgument
            }
            ClusterError::Refused(ApplyError::NotFound(_)) => tonic::Code::NotFound,
            ClusterError::Refused(ApplyError::AlreadyExists(_)) => tonic::Code::AlreadyExists,
            ClusterError::Refused(ApplyError::FailedPrecondition(_) | ApplyError::Limited(_))
            | ClusterError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            ClusterError::Unavailable { .. } => tonic::Code::Unavailable,
            ClusterError::Internal => tonic::Code::Internal,
        }
    }

    /// Rebuilds an error from a peer's answer to a consensus RPC (a
    /// forwarded proposal, a read index, a campaign request).
    pub fn from_status(status: &tonic::Status) -> ClusterError {
        let msg = status.message().to_string();
        match status.code() {
            tonic::Code::InvalidArgument => ClusterError::Refused(ApplyError::Invalid(msg)),
            tonic::Code::NotFound => ClusterError::Refused(ApplyError::NotFound(msg)),
            tonic::Code::AlreadyExists => ClusterError::Refused(ApplyError::AlreadyExists(msg)),
            tonic::Code::FailedPrecondition => ClusterError::FailedPrecondition(msg),
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown => ClusterError::Unavailable { leader: leader_named(status) },
            code => {
                // A peer refusing our secret, or a bug: nothing the caller can act on.
                tracing::warn!(?code, message = %msg, "a peer refused a consensus call");
                ClusterError::Internal
            }
        }
    }
}

/// The leader a peer named on `UNAVAILABLE`, if any.
pub fn leader_named(status: &tonic::Status) -> Option<String> {
    status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `status` with the leader's address attached, if `leader` is one.
pub fn naming_leader(mut status: tonic::Status, leader: Option<&str>) -> tonic::Status {
    if let Some(v) = leader.and_then(|l| l.parse().ok()) {
        status.metadata_mut().insert(LEADER_METADATA, v);
    }
    status
}

impl From<ClusterError> for tonic::Status {
    fn from(e: ClusterError) -> Self {
        let leader = match &e {
            ClusterError::Unavailable { leader } => leader.clone(),
            _ => None,
        };
        naming_leader(tonic::Status::new(e.grpc_code(), e.to_string()), leader.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_survives_a_hop_between_nodes() {
        let errors = [
            ClusterError::Refused(ApplyError::Invalid("too big".into())),
            ClusterError::Refused(ApplyError::NotFound("no such user".into())),
            ClusterError::Refused(ApplyError::AlreadyExists("taken".into())),
            ClusterError::FailedPrecondition("not a voter".into()),
            ClusterError::Unavailable { leader: Some("127.0.0.1:9000".into()) },
            ClusterError::Unavailable { leader: None },
            ClusterError::Internal,
        ];
        for e in errors {
            assert_eq!(ClusterError::from_status(&tonic::Status::from(e.clone())), e);
        }
    }

    #[test]
    fn a_refused_secret_is_no_callers_fault() {
        let refused = tonic::Status::unauthenticated("cluster secret required");
        assert_eq!(ClusterError::from_status(&refused), ClusterError::Internal);
        assert_eq!(ClusterError::Internal.to_string(), "internal error");
    }
}
