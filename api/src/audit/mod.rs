//! Recording security events into the replicated audit log.
//!
//! Handlers call [`crate::Node::audit`] (or [`crate::Node::audit_count`]);
//! it never waits and never fails. Events wait in a bounded buffer and a
//! background task proposes them every `flush_ms` as `AppendAudit`
//! commands. While the log cannot take them the buffer keeps them; once it
//! is full new events are dropped and counted, and the count travels with
//! the next batch, so the audit log itself says that something is missing.
//! Frequent events (rate-limit refusals, forward-auth denials) are
//! aggregated per flush into one event with a count.
//!
//! The leader also enforces retention: it verifies the chain up to the
//! first record younger than the cutoff and proposes a `PruneAudit`
//! through the last older one.
//!
//! # Layout
//! - [`config`]: the `[audit]` settings.
//! - [`event`]: who did what ([`Actor`], [`event()`]).
//! - [`recorder`]: the node's bounded buffer, aggregation of frequent events, clipping.
//! - [`flush`]: the task that proposes buffered events as `AppendAudit` batches.
//! - [`retention`]: the leader's pruning of records past retention.
//! - [`write`]: proposing an admin change and auditing it, before and after.

pub mod config;
pub mod event;
pub mod flush;
pub mod recorder;
pub mod retention;
pub mod write;

pub use config::AuditConfig;
pub use event::{event, Actor};
pub use flush::{flush, flush_all, start, start_flushes};
pub use recorder::{clip, Recorder};
pub use retention::prune;
pub use write::write;
