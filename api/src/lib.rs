//! Gatehouse's transports: the HTTP front and the gRPC admin services. Each
//! turns a request into a domain decision or a proposal and the result into
//! a response; errors map to HTTP and gRPC statuses in one table ([`error`]).
//!
//! Consensus (Raft, proposing, freshness, leadership) is the layer below,
//! `gatehouse-cluster`; nothing there knows this crate.
//!
//! # Layout
//! - [`node`]: one node as the transports see it: the consensus handle, the
//!   audit recorder, last-use times and metrics; the seam a front implements.
//! - [`admin`]: the admin gRPC API: authentication, RBAC and the cluster
//!   service; the layer every gRPC call passes (metrics, call context).
//! - [`envoy`]: Envoy's ext_authz (and rate-limit) protocols, answered as the HTTP front answers.
//! - [`http`]: the HTTP front: health, forward-auth verify (and the strict reader of the forwarded request), login, sessions.
//! - [`rate_limit`]: cluster-wide rate limits (strict and global): policies, the limiter, the HTTP layer.
//! - [`audit`]: buffering security events into hash-chained audit batches; retention.
//! - [`front_writes`]: what a voter accepts in the writes a stateless front sends (limits as configured, no future use, audit stamped as the front's).
//! - [`identity`]: resolving an API key or session token to a caller, with read-your-writes.
//! - [`pages`]: the sign-in pages a person uses in a browser (HTML, CSP
//!   with nonces, CSRF tokens, checked return URLs).
//! - [`sign_in`]: logins, logouts and revoking one's own sessions: checked on a
//!   voter, sent on to one by a stateless front (`SignInService`).
//! - [`mfa`]: second factors on a voter: TOTP codes checked against sealed
//!   secrets, recovery codes, a waiting session paid, enrollment.
//! - [`reseal`]: after a key rotation, the leader moves secrets at rest to the current key through the log.
//! - [`jwt`]: signed identity for apps: signing keys in the log, the JWKS, tokens minted per credential and cached.
//! - [`proxy`]: reverse-proxy mode: each request verified as `/auth/verify` does, then streamed to its upstream with the identity injected.
//! - [`passwords`]: argon2id hashing on a bounded pool.
//! - [`mint`]: new API keys, session and sign-in link tokens, made on the proposing node.
//! - [`mail`]: SMTP (lettre over rustls) for sign-in links, sent off the request path.
//! - [`metrics`]: the Prometheus series of `GET /metrics` (the consensus ones registered in).
//! - [`error`]: one error type, one status table.

pub mod admin;
pub mod audit;
pub mod envoy;
pub mod error;
pub mod front_writes;
pub mod http;
pub mod identity;
pub mod jwt;
pub mod mail;
pub mod metrics;
pub mod mfa;
pub mod mint;
pub mod node;
pub mod pages;
pub mod passwords;
pub mod proxy;
pub mod rate_limit;
pub mod reseal;
pub mod seal;
pub mod sign_in;
pub mod sso;

pub use error::ApiError;
pub use node::Node;
