//! One error type for every transport, and the one table that maps it to
//! HTTP statuses, gRPC codes and stable snake_case codes.
//!
//! Messages are written for the caller and never carry internal detail:
//! storage and Raft failures are logged where they happen and surface as
//! `internal` or `unavailable`.

use axum::response::{IntoResponse, Response};
use gatehouse_proto::events::CommandResult;
use http::StatusCode;

use gatehouse_cluster::error::naming_leader;
use gatehouse_cluster::ClusterError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("authentication required")]
    Unauthenticated,
    /// A login with a wrong username or password (one answer for both).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The password was right and the user has a second factor: it must
    /// come with it (`totp` in the JSON login).
    #[error("this account needs its second factor: send the code as `totp`")]
    SecondFactorRequired,
    /// A wrong, spent or expired second factor.
    #[error("the second factor is wrong or was used already")]
    InvalidSecondFactor,
    /// Too many wrong second factors: locked for a while, on every node.
    #[error("the second factor is locked after too many wrong codes; try again later")]
    SecondFactorLocked,
    /// A cookie-authenticated state change without CSRF proof.
    #[error("missing CSRF proof: send X-Requested-With or a same-origin Origin header")]
    Csrf,
    #[error("{0}")]
    PermissionDenied(String),
    /// No leader could take the write; `leader` is the last one known.
    #[error("the cluster cannot take writes right now")]
    Unavailable { leader: Option<String> },
    /// This node cannot prove it is up to date, so it refuses to answer.
    #[error("this node is not up to date with the cluster")]
    Stale,
    /// Too much work queued (password hashing); try again shortly.
    #[error("the server is busy; try again")]
    Busy,
    /// A rate limit refused the request (429 with `Retry-After`).
    #[error("rate limit {} reached", .0.policy)]
    RateLimited(crate::rate_limit::quota::Quota),
    #[error("internal error")]
    Internal,
}

/// A domain refusal (a validator's, or apply's) as the API's error: the
/// same kind, the same message.
impl From<gatehouse_domain::ApplyError> for ApiError {
    fn from(e: gatehouse_domain::ApplyError) -> ApiError {
        use gatehouse_domain::ApplyError as E;
        match e {
            E::Invalid(m) => ApiError::InvalidArgument(m),
            E::NotFound(m) => ApiError::NotFound(m),
            E::AlreadyExists(m) => ApiError::AlreadyExists(m),
            // A strict hit's refusal reaches the client through the limiter.
            E::FailedPrecondition(m) | E::Limited(m) => ApiError::FailedPrecondition(m),
        }
    }
}

/// A consensus failure as the API's error: a refusal keeps its kind.
impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        match e {
            ClusterError::Refused(e) => ApiError::from(e),
            ClusterError::InvalidArgument(m) => ApiError::InvalidArgument(m),
            ClusterError::FailedPrecondition(m) => ApiError::FailedPrecondition(m),
            ClusterError::Unavailable { leader } => ApiError::Unavailable { leader },
            ClusterError::Internal => ApiError::Internal,
        }
    }
}

impl ApiError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        self.row().0
    }

    pub fn http_status(&self) -> StatusCode {
        self.row().1
    }

    pub fn grpc_code(&self) -> tonic::Code {
        self.row().2
    }

    fn row(&self) -> (&'static str, StatusCode, tonic::Code) {
        match self {
            ApiError::InvalidArgument(_) => ("invalid_argument", StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument),
            ApiError::NotFound(_) => ("not_found", StatusCode::NOT_FOUND, tonic::Code::NotFound),
            ApiError::AlreadyExists(_) => ("already_exists", StatusCode::CONFLICT, tonic::Code::AlreadyExists),
            ApiError::FailedPrecondition(_) => {
                ("failed_precondition", StatusCode::CONFLICT, tonic::Code::FailedPrecondition)
            }
            ApiError::Unauthenticated => ("unauthenticated", StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated),
            ApiError::InvalidCredentials => {
                ("invalid_credentials", StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated)
            }
            ApiError::SecondFactorRequired => {
                ("second_factor_required", StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated)
            }
            ApiError::InvalidSecondFactor => {
                ("invalid_second_factor", StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated)
            }
            ApiError::SecondFactorLocked => {
                ("second_factor_locked", StatusCode::FORBIDDEN, tonic::Code::PermissionDenied)
            }
            ApiError::Csrf => ("csrf_failed", StatusCode::FORBIDDEN, tonic::Code::PermissionDenied),
            ApiError::PermissionDenied(_) => {
                ("permission_denied", StatusCode::FORBIDDEN, tonic::Code::PermissionDenied)
            }
            ApiError::Unavailable { .. } => ("unavailable", StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable),
            ApiError::Stale => ("stale", StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable),
            ApiError::Busy => ("busy", StatusCode::SERVICE_UNAVAILABLE, tonic::Code::ResourceExhausted),
            ApiError::RateLimited(_) => ("rate_limited", StatusCode::TOO_MANY_REQUESTS, tonic::Code::ResourceExhausted),
            ApiError::Internal => ("internal", StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal),
        }
    }

    /// The error a refused command stands for, or `Ok` for an applied one
    /// (the same kind [`From<ApplyError>`] gives the same refusal).
    pub fn check(result: &CommandResult) -> Result<(), ApiError> {
        match gatehouse_domain::result::refusal(result) {
            Ok(None) => Ok(()),
            Ok(Some(refused)) => Err(refused.into()),
            Err(_) => Err(ApiError::Internal),
        }
    }
}

/// gRPC metadata key carrying an error's stable code, so that a node that
/// passes an answer on (a stateless front) gives its client the same error.
pub const ERROR_CODE_METADATA: &str = "x-gatehouse-error";

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let leader = match &e {
            ApiError::Unavailable { leader } => leader.clone(),
            _ => None,
        };
        let mut status = naming_leader(tonic::Status::new(e.grpc_code(), e.to_string()), leader.as_deref());
        let m = status.metadata_mut();
        m.insert(ERROR_CODE_METADATA, tonic::metadata::MetadataValue::from_static(e.code()));
        if let ApiError::RateLimited(q) = &e {
            // The quota travels too: a front answers with the voter's numbers.
            m.insert("x-ratelimit-limit", q.limit.into());
            m.insert("x-ratelimit-remaining", q.remaining.into());
            m.insert("x-ratelimit-reset", q.reset_secs.into());
            if let Ok(policy) = q.policy.parse() {
                m.insert("x-gatehouse-policy", policy);
            }
        }
        status
    }
}

impl ApiError {
    /// The error a peer's answer stands for (see [`ERROR_CODE_METADATA`]).
    /// An answer without a code is not the peer's decision but a failure to
    /// reach it (a connection, a refused front secret): `unavailable`.
    pub fn from_status(status: &tonic::Status) -> ApiError {
        let code = status.metadata().get(ERROR_CODE_METADATA).and_then(|v| v.to_str().ok()).unwrap_or("");
        let msg = status.message().to_string();
        match code {
            "invalid_argument" => ApiError::InvalidArgument(msg),
            "not_found" => ApiError::NotFound(msg),
            "already_exists" => ApiError::AlreadyExists(msg),
            "failed_precondition" => ApiError::FailedPrecondition(msg),
            "unauthenticated" => ApiError::Unauthenticated,
            "invalid_credentials" => ApiError::InvalidCredentials,
            "second_factor_required" => ApiError::SecondFactorRequired,
            "invalid_second_factor" => ApiError::InvalidSecondFactor,
            "second_factor_locked" => ApiError::SecondFactorLocked,
            "csrf_failed" => ApiError::Csrf,
            "permission_denied" => ApiError::PermissionDenied(msg),
            "unavailable" => ApiError::Unavailable { leader: gatehouse_cluster::error::leader_named(status) },
            "stale" => ApiError::Stale,
            "busy" => ApiError::Busy,
            "rate_limited" => {
                let number = |k: &str| status.metadata().get(k).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let policy = status.metadata().get("x-gatehouse-policy").and_then(|v| v.to_str().ok());
                match (
                    number("x-ratelimit-limit"),
                    number("x-ratelimit-remaining"),
                    number("x-ratelimit-reset"),
                    policy,
                ) {
                    (Some(limit), Some(remaining), Some(reset_secs), Some(policy)) => {
                        ApiError::RateLimited(crate::rate_limit::quota::Quota {
                            policy: policy.into(),
                            limit: u32::try_from(limit).unwrap_or(u32::MAX),
                            remaining,
                            reset_secs,
                        })
                    }
                    _ => ApiError::Busy,
                }
            }
            "internal" => ApiError::Internal,
            _ => {
                tracing::warn!(code = ?status.code(), message = %gatehouse_domain::quote::quote(&msg), "a peer could not be asked");
                ApiError::Unavailable { leader: None }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::RateLimited(q) = self {
            return crate::rate_limit::quota::limited_response(q);
        }
        let body = serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } });
        (self.http_status(), axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_carries_the_leader_both_ways() {
        let status = tonic::Status::from(ApiError::Unavailable { leader: Some("127.0.0.1:9000".into()) });
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(gatehouse_cluster::error::leader_named(&status).as_deref(), Some("127.0.0.1:9000"));
    }

    #[test]
    fn every_error_survives_a_hop_to_a_front() {
        for e in [
            ApiError::InvalidArgument("bad".into()),
            ApiError::NotFound("no such session".into()),
            ApiError::AlreadyExists("x".into()),
            ApiError::FailedPrecondition("y".into()),
            ApiError::Unauthenticated,
            ApiError::InvalidCredentials,
            ApiError::Csrf,
            ApiError::PermissionDenied("user is disabled".into()),
            ApiError::Unavailable { leader: None },
            ApiError::Stale,
            ApiError::Busy,
            ApiError::Internal,
            ApiError::RateLimited(crate::rate_limit::quota::Quota {
                policy: "login".into(),
                limit: 5,
                remaining: 0,
                reset_secs: 42,
            }),
        ] {
            assert_eq!(ApiError::from_status(&tonic::Status::from(e.clone())), e);
        }
        // Not a peer's decision: a refused connection or front secret.
        let refused = tonic::Status::unauthenticated("a front's id and secret are required");
        assert_eq!(ApiError::from_status(&refused), ApiError::Unavailable { leader: None });
    }

    #[test]
    fn internal_errors_say_nothing() {
        assert_eq!(ApiError::Internal.to_string(), "internal error");
        assert_eq!(ApiError::Internal.http_status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
