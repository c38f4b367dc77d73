//! Gatehouse's domain: what the replicated log means.
//!
//! Every node applies the same commands in the same order to a [`State`] and
//! gets the same result. Apply is deterministic and cheap: it never reads a
//! clock (the command's `proposed_at`, stamped by the leader, is "now"),
//! never draws randomness and never hashes a password. It validates the
//! command against the state, updates the in-memory view and returns the
//! [`Mutation`]s the storage layer must write to its projections in the same
//! atomic batch.
//!
//! Nothing here knows RocksDB, Raft or a transport.
//!
//! # Layout
//! - [`state`]: the in-memory view, the one `match` over commands, projection loading.
//! - [`bounds`]: how large a command may be (bytes, fields), checked before proposing and at apply.
//! - [`mutation`]: tables and the writes apply asks storage to make.
//! - [`codec`]: versioned encoding of stored records.
//! - [`users`]: user records and their commands.
//! - [`keys`]: API key records and their commands.
//! - [`sessions`]: sessions, their indexes, idle and absolute expiry.
//! - [`links`]: sign-in links mailed to users, bound to a browser, spent once.
//! - [`factors`]: second factors (TOTP, recovery codes), spent once cluster-wide; sessions that owe one.
//! - [`devices`]: browsers a person trusted to skip the second step for a while.
//! - [`passkeys`]: WebAuthn credentials (public keys), their challenges spent once, their counters.
//! - [`signing`]: keys that sign downstream JWTs: published, then signing, then retired, by log time.
//! - [`upstream`]: users linked to upstream OIDC identities, mapped roles, spent flows and logout tokens.
//! - [`roles`]: built-in roles and RBAC.
//! - [`usage`]: last use of sessions and keys, flushed by nodes in batches.
//! - [`requests`]: idempotency of retried commands (not of a node's own hits, deltas, uses and audit batches).
//! - [`limits`]: replicated rate-limit counts (strict hits, global deltas).
//! - [`audit`]: the hash-chained audit log, its prune and its verifier.
//! - [`redact`]: commands as the event stream shows them (no secret hashes).
//! - [`front`]: what a stateless front holds of the log and the view (no password hashes, no audit).
//! - [`quote`]: client input as errors and logs show it (escaped, a short prefix).
//! - [`result`]: command outcomes.
//! - [`version`]: the command versions a build understands and the cluster version that gates new kinds.

pub mod audit;
pub mod bounds;
pub mod codec;
pub mod devices;
pub mod factors;
pub mod front;
pub mod keys;
pub mod limits;
pub mod links;
pub mod mutation;
pub mod passkeys;
pub mod quote;
pub mod redact;
pub mod requests;
pub mod result;
pub mod roles;
pub mod sessions;
pub mod signing;
pub mod state;
pub mod upstream;
pub mod usage;
pub mod users;
pub mod version;

pub use gatehouse_proto::events::{command::Payload, Command, CommandBatch, CommandResult};
pub use mutation::{Mutation, Table};
pub use result::ApplyError;
pub use state::State;
