//! How large a command may be: checked by the proposer before anything
//! reaches the log, and by apply again.
//!
//! A command the log takes must replicate to every node in time, whatever
//! the client sent. So each command is bounded twice: in bytes (the whole
//! encoded command, by kind: a write someone asked for is small; a node's
//! own batches of audit records, rate deltas and last uses are split by
//! their maker to fit [`MAX_COMMAND_BYTES`]), and per field (names, lists,
//! batch sizes), with the rules that need no state. The rules that need
//! state (does the role exist?) stay in apply.
//!
//! The batcher packs commands into entries of at most
//! [`MAX_ENTRY_BYTES`], so a replication message of one entry is bounded
//! as well.

use gatehouse_proto::events::command::Payload;
use gatehouse_proto::events::Command;
use prost::Message;

use crate::result::ApplyError;
use crate::{audit, devices, factors, limits, passkeys, requests, roles, sessions, upstream, usage, users};

/// Largest encoded command a client's write may make (a user, a key, a
/// role at their field limits are a few KiB).
pub const MAX_WRITE_BYTES: usize = 64 * 1024;
/// Largest encoded command of any kind (a node's own batches).
pub const MAX_COMMAND_BYTES: usize = 1 << 20;
/// What a node packs into one of its own batch commands: the command
/// limit, less room for the envelope (ids, trace context, counters).
pub const BATCH_BYTES: usize = MAX_COMMAND_BYTES - 4096;
/// Largest Raft entry the batcher makes: several commands of the largest
/// kind. A command over it is refused before it is queued, so an entry is
/// never larger.
pub const MAX_ENTRY_BYTES: usize = 4 << 20;

/// Whether `cmd` is within every bound that needs no state.
pub fn check(cmd: &Command) -> Result<(), ApplyError> {
    if cmd.request_id.len() > requests::MAX_REQUEST_ID_LEN {
        return Err(ApplyError::Invalid(format!("request id must be at most {} bytes", requests::MAX_REQUEST_ID_LEN)));
    }
    if cmd.traceparent.len() > 128 || cmd.request_digest.len() > 64 {
        return Err(ApplyError::Invalid("trace context or request digest too long".into()));
    }
    let Some(payload) = &cmd.payload else {
        return Err(ApplyError::Invalid("command has no payload".into()));
    };
    let limit = if is_batch(payload) { MAX_COMMAND_BYTES } else { MAX_WRITE_BYTES };
    let size = cmd.encoded_len();
    if size > limit {
        return Err(ApplyError::Invalid(format!("command of {size} bytes is over the limit of {limit}")));
    }
    fields(payload)
}

/// A node's own batch commands, the only kinds allowed past [`MAX_WRITE_BYTES`].
fn is_batch(p: &Payload) -> bool {
    matches!(p, Payload::AppendAudit(_) | Payload::RateDeltas(_) | Payload::RecordUse(_))
}

/// The per-field limits: sizes and counts. Whether a value is well formed
/// and what it refers to is apply's to say, with the state at hand.
fn fields(p: &Payload) -> Result<(), ApplyError> {
    match p {
        Payload::CreateUser(c) => {
            id(&c.user_id)?;
            short("username", &c.username, 64)?;
            short("email", &c.email, 254)?;
            short("password hash", &c.password_hash, 512)?;
            role_list(&c.roles)
        }
        Payload::SetUserStatus(c) => id(&c.user_id),
        Payload::SetPassword(c) => {
            id(&c.user_id)?;
            short("password hash", &c.password_hash, 512)
        }
        Payload::RecordLoginFailure(c) => {
            id(&c.user_id)?;
            short("source", &c.source, 64)
        }
        Payload::UpdateUser(c) => {
            id(&c.user_id)?;
            short("email", &c.email, 254)?;
            role_list(&c.roles)
        }
        Payload::DeleteUser(c) => id(&c.user_id),
        Payload::AssignRole(c) => {
            id(&c.user_id)?;
            short("role", &c.role, roles::MAX_NAME)
        }
        Payload::UnassignRole(c) => {
            id(&c.user_id)?;
            short("role", &c.role, roles::MAX_NAME)
        }
        Payload::CreateApiKey(c) => key(c),
        Payload::RevokeApiKey(c) => id(&c.key_id),
        Payload::RotateApiKey(c) => {
            id(&c.old_key_id)?;
            c.new_key.as_ref().map_or(Ok(()), key)
        }
        Payload::CreateSession(c) => {
            id(&c.session_id)?;
            id(&c.user_id)?;
            factors::check_proof_fields(&c.factor)?;
            short("client ip", &c.client_ip, 64)?;
            short("user agent", &c.user_agent, sessions::MAX_USER_AGENT)
        }
        Payload::CreateSignInLink(c) => {
            id(&c.link_id)?;
            id(&c.user_id)
        }
        Payload::SpendSignInLink(c) => c.session.as_ref().map_or(Ok(()), |s| {
            id(&s.session_id)?;
            short("client ip", &s.client_ip, 64)?;
            short("user agent", &s.user_agent, sessions::MAX_USER_AGENT)
        }),
        Payload::UpstreamSignIn(c) => {
            id(&c.new_user_id)?;
            upstream::check_sign_in(c)?;
            c.session.as_ref().map_or(Ok(()), |s| {
                id(&s.session_id)?;
                short("client ip", &s.client_ip, 64)?;
                short("user agent", &s.user_agent, sessions::MAX_USER_AGENT)
            })
        }
        Payload::UpstreamChecked(c) => upstream::check_checked(c),
        Payload::PresentFactor(c) => {
            id(&c.session_id)?;
            id(&c.user_id)?;
            factors::check_proof_fields(&c.proof)?;
            if c.new_token_sha256.len() > 32 {
                return Err(ApplyError::Invalid("token hash must be 32 bytes".into()));
            }
            devices::check_trust(c)
        }
        Payload::EnrollTotp(c) => {
            id(&c.user_id)?;
            id(&c.session_id)?;
            short("token hash", &c.new_token_sha256, 32)?;
            short("ticket hash", &c.ticket_sha256, 32)?;
            factors::check_enroll(c)
        }
        Payload::SetRecoveryCodes(c) => {
            id(&c.user_id)?;
            if c.recovery_sha256.len() > factors::MAX_RECOVERY || c.recovery_sha256.iter().any(|h| h.len() != 32) {
                return Err(ApplyError::Invalid("at most 10 recovery code hashes of 32 bytes".into()));
            }
            Ok(())
        }
        Payload::RemoveFactors(c) => {
            id(&c.user_id)?;
            short("factor kind", &c.kind, 16)?;
            short("credential id", &c.credential_id, passkeys::MAX_CREDENTIAL_ID)
        }
        Payload::AddPasskey(c) => {
            id(&c.user_id)?;
            id(&c.session_id)?;
            passkeys::check_add(c)
        }
        Payload::RenamePasskey(c) => {
            id(&c.user_id)?;
            passkeys::check_rename(c)
        }
        Payload::ForgetDevices(c) => {
            id(&c.user_id)?;
            devices::check_forget(c)
        }
        Payload::CountFactorAttempt(c) => id(&c.user_id),
        Payload::ResealSecrets(c) => factors::check_reseal(c),
        Payload::RotateSigningKey(c) => crate::signing::check_rotate(c),
        Payload::SetMfaPolicy(c) => {
            role_list(&c.required_roles)?;
            role_list(&c.expected_roles)
        }
        Payload::IssueEnrollTicket(c) => {
            id(&c.user_id)?;
            short("ticket hash", &c.ticket_sha256, 32)
        }
        Payload::UpstreamEnd(c) => upstream::check_end(c),
        Payload::RevokeSession(c) => id(&c.session_id),
        Payload::RevokeUserSessions(c) => id(&c.user_id),
        Payload::RevokeAllSessions(_) | Payload::PruneAudit(_) | Payload::SetClusterVersion(_) => Ok(()),
        Payload::RecordUse(c) => {
            if c.sessions.len() + c.keys.len() > usage::MAX_USES {
                return Err(ApplyError::Invalid(format!("at most {} uses in one batch", usage::MAX_USES)));
            }
            Ok(())
        }
        Payload::PutRole(c) => roles::validate_definition(c),
        Payload::DeleteRole(c) => short("role", &c.name, roles::MAX_NAME),
        Payload::RateHit(c) => {
            short("policy", &c.policy, limits::MAX_NAME)?;
            short("bucket", &c.bucket, limits::MAX_BUCKET)
        }
        Payload::RateDeltas(c) => {
            if c.deltas.len() > limits::MAX_DELTAS {
                return Err(ApplyError::Invalid(format!("at most {} deltas in one batch", limits::MAX_DELTAS)));
            }
            Ok(())
        }
        Payload::AppendAudit(c) => audit::check_batch(c),
    }
}

fn key(c: &gatehouse_proto::events::CreateApiKey) -> Result<(), ApplyError> {
    id(&c.key_id)?;
    id(&c.user_id)?;
    short("key name", &c.name, 256)?;
    short("key secret hash", &c.secret_sha256, 32)?;
    role_list(&c.roles)
}

/// A role list's length and name sizes; whether each exists is apply's to say.
fn role_list(list: &[String]) -> Result<(), ApplyError> {
    if list.len() > users::MAX_ROLES {
        return Err(ApplyError::Invalid(format!("at most {} roles", users::MAX_ROLES)));
    }
    list.iter().try_for_each(|r| short("role", r, roles::MAX_NAME))
}

/// An id (user, key, session): generated ones are 16 or 32 characters.
fn id(value: &str) -> Result<(), ApplyError> {
    short("id", value, 64)
}

fn short(what: &str, value: impl AsRef<[u8]>, max: usize) -> Result<(), ApplyError> {
    let value = value.as_ref();
    if value.len() > max {
        return Err(ApplyError::Invalid(format!("{what} must be at most {max} bytes")));
    }
    Ok(())
}

/// Takes items from the front of `items` while their encoded size stays
/// within `budget` bytes (at least one, if any), at most `max_count`: how a
/// node splits its own batches into commands that fit [`MAX_COMMAND_BYTES`].
pub fn take_within<T: Message>(items: &mut Vec<T>, budget: usize, max_count: usize) -> Vec<T> {
    let n = count_within(&items[..items.len().min(max_count)], budget);
    items.drain(..n).collect()
}

/// How many items from the front of `items` fit in `budget` bytes as
/// repeated fields (at least one, if any).
pub fn count_within<T: Message>(items: &[T], budget: usize) -> usize {
    let mut used = 0;
    let mut n = 0;
    for item in items {
        let len = framed_len(item);
        if n > 0 && used + len > budget {
            break;
        }
        used += len;
        n += 1;
    }
    n
}

/// Bytes `item` takes as a repeated field of a message: the tag, the
/// length prefix and the item.
pub fn framed_len<T: Message>(item: &T) -> usize {
    let len = item.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Bytes `commands` take in one entry's batch.
pub fn entry_bytes(commands: &[Command]) -> usize {
    commands.iter().map(framed_len).sum()
}

#[cfg(test)]
mod tests {
    use gatehouse_proto::events::{AppendAudit, AuditEvent, CreateUser, PutRole, RateDeltas};

    use super::*;

    fn cmd(payload: Payload) -> Command {
        Command { request_id: "r1".into(), payload: Some(payload), ..Default::default() }
    }

    fn user(username: &str) -> Payload {
        Payload::CreateUser(CreateUser {
            user_id: "0".repeat(32),
            username: username.into(),
            email: "a@example.com".into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_write_within_its_fields_passes() {
        assert_eq!(check(&cmd(user("alice"))), Ok(()));
    }

    #[test]
    fn oversized_and_malformed_fields_are_refused() {
        let role = |permissions: Vec<String>| {
            Payload::PutRole(PutRole { name: "ops".into(), permissions, ..Default::default() })
        };
        let all: Vec<String> = roles::Permission::ALL.iter().map(|p| p.name().to_string()).collect();
        assert_eq!(check(&cmd(role(all))), Ok(()));
        // The attack of issue 16: millions of permissions in one role.
        assert!(check(&cmd(role(vec!["users.read".into(); 2_000_000]))).is_err());
        assert!(check(&cmd(user(&"a".repeat(65)))).is_err());
        let mut long_id = cmd(user("alice"));
        long_id.request_id = "r".repeat(requests::MAX_REQUEST_ID_LEN + 1);
        assert!(check(&long_id).is_err());
        assert!(check(&Command { request_id: "r".into(), ..Default::default() }).is_err(), "no payload");
    }

    #[test]
    fn a_write_over_its_byte_limit_is_refused_whatever_its_fields() {
        let mut c = cmd(user("alice"));
        c.traceparent = "x".repeat(MAX_WRITE_BYTES);
        let err = check(&c).unwrap_err().to_string();
        assert!(err.contains("too long") || err.contains("over the limit"), "{err}");
    }

    #[test]
    fn batches_may_be_larger_but_not_past_the_command_limit() {
        let event = |n: usize| AuditEvent { action: "a".into(), detail: "x".repeat(n), ..Default::default() };
        let fits = AppendAudit { events: (0..60).map(|_| event(16_000)).collect(), ..Default::default() };
        assert!(fits.encoded_len() > MAX_WRITE_BYTES);
        assert_eq!(check(&cmd(Payload::AppendAudit(fits))), Ok(()));
        let over = AppendAudit { events: (0..70).map(|_| event(16_000)).collect(), ..Default::default() };
        assert!(check(&cmd(Payload::AppendAudit(over))).is_err());
        let deltas = RateDeltas { deltas: vec![Default::default(); limits::MAX_DELTAS + 1] };
        assert!(check(&cmd(Payload::RateDeltas(deltas))).is_err());
    }

    #[test]
    fn take_within_splits_by_bytes_and_count() {
        let event = AuditEvent { action: "a".into(), detail: "x".repeat(1000), ..Default::default() };
        let mut items = vec![event; 100];
        let first = take_within(&mut items, 10_000, usize::MAX);
        assert!((8..=10).contains(&first.len()), "{}", first.len());
        let within: usize = first.iter().map(framed_len).sum();
        assert!(within <= 10_000);
        assert_eq!(take_within(&mut items, usize::MAX, 5).len(), 5);
        // One item over the budget still goes alone: the caller's own
        // bounds keep an item under the budget.
        assert_eq!(take_within(&mut items, 10, usize::MAX).len(), 1);
        let mut none: Vec<AuditEvent> = Vec::new();
        assert!(take_within(&mut none, 10, 10).is_empty());
    }
}
