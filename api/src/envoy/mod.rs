//! Envoy's protocols, on a listener of their own (`ext_authz_addr`), on
//! voters and stateless fronts alike (never on the peer port):
//!
//! - [`ext_authz`]: `envoy.service.auth.v3.Authorization/Check`, the same
//!   decision as `GET /auth/verify`.
//! - [`rls`]: the rate limit service (`ShouldRateLimit` of
//!   `envoy.service.ratelimit.v3.RateLimitService`), counted by the limiter
//!   (strict or global, fail closed).
//!
//! The protos are Envoy's own, from the `envoy-types` crate.

pub mod ext_authz;
pub mod rls;
