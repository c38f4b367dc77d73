//! Envoy's protocols, on a listener of their own (`ext_authz_addr`), on
//! voters and stateless fronts alike (never on the peer port):
//!
//! - [`ext_authz`]: `envoy.service.auth.v3.Authorization/Check`, the same
//!   decision as `GET /auth/verify`.
//! - [`rls`]: the rate limit service (`ShouldRateLimit` of
//!   `envoy.service.ratelimit.v3.RateLimitService`), counted by the limiter
//!   (strict or global, fail closed).
//!
//! The protos are Envoy's own, from the `envoy-types` crate. With a secret
//! (`ext_authz_secret_file`, required in production), every call must carry
//! it in [`SECRET_METADATA`] (Envoy's `initial_metadata`): no other process
//! on the machine can ask on a client's behalf, choose the client's address,
//! fill its limits or forge its audit address.

pub mod ext_authz;
pub mod rls;

use gatehouse_cluster::ClusterSecret;

/// gRPC metadata key carrying the secret Envoy's calls must present.
pub const SECRET_METADATA: &str = "x-gatehouse-envoy-secret";

/// Admits an Envoy call: with a secret configured, only one that presents
/// it (compared as SHA-256 digests in constant time; several accepted
/// during a rotation, as for the cluster secret).
#[allow(clippy::result_large_err)]
pub fn admit<T>(secret: Option<&ClusterSecret>, req: tonic::Request<T>) -> Result<tonic::Request<T>, tonic::Status> {
    let Some(secret) = secret else { return Ok(req) };
    match req.metadata().get(SECRET_METADATA) {
        Some(v) if secret.matches(v.as_bytes()) => Ok(req),
        _ => {
            static REFUSED: gatehouse_cluster::throttle::Throttle = gatehouse_cluster::throttle::Throttle::new(1_000);
            if let Some(suppressed) = REFUSED.allow() {
                tracing::warn!(peer = ?req.remote_addr(), suppressed, "Envoy call refused: missing or wrong secret");
            }
            Err(tonic::Status::unauthenticated("the Envoy secret is required"))
        }
    }
}
