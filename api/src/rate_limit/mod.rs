//! Cluster-wide rate limits on the HTTP front.
//!
//! A [`Policy`] matches requests (Gatehouse's own path, the forwarded path
//! of `/auth/verify`, a key, a user, a client network), counts them in one
//! bucket per client IP, key, user or policy, and admits at most `limit`
//! per sliding `window_secs`:
//!
//! - **strict**: each hit is a `RateHit` command; apply decides, so the
//!   count is exact across the cluster. For rare, security-critical events
//!   (logins, credential failures).
//! - **global**: each node admits locally within its share of what is left
//!   (`⌈(limit − committed) / nodes⌉` per sync round) and proposes its
//!   admissions as `RateDeltas` every `sync_interval_ms`. Over-admission is
//!   bounded; see `docs/rate-limits-and-audit.md`.
//!
//! Policies that count `on = "failure"` (strict only) count credentials that
//! were presented and refused (401 to a request with an `Authorization`
//! header, or to a login); once full, the client gets 429 before any
//! credential of theirs is looked at.
//!
//! The client IP is the socket peer, or the first untrusted address of
//! `X-Forwarded-For` when the peer is a trusted proxy. IPv6 clients share a
//! bucket per /64, the block one subscriber usually holds.
//!
//! # Layout
//! - [`policy`]: `[rate_limits]`: policies, what they match, their validation.
//! - [`quota`]: what a response says of the tightest policy; the 429 answer.
//! - [`limiter`]: the node's limiter: strict hits through the log, global
//!   shares admitted locally and synced as deltas.
//! - [`layer`]: the HTTP layer around every handler, and the check once a
//!   handler knows its caller.

pub mod layer;
pub mod limiter;
pub mod policy;
pub mod quota;

pub use limiter::{Limiter, RequestLimits};
pub use policy::{LimitsConfig, Policy};
pub use quota::Quota;
