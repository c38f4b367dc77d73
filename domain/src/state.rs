//! The in-memory view of the replicated state and the one `match` that applies commands.

use std::collections::HashMap;

use gatehouse_proto::events::{command::Payload, Command, CommandResult};
use gatehouse_proto::state::{ApiKeyRecord, AuditChain, RoleRecord, SessionRecord, UserRecord};

use crate::codec::{self, DecodeError};
use crate::limits::Limits;
use crate::mutation::{Mutation, Table};
use crate::requests::Requests;
use crate::result::{to_result, ApplyError, Outcome};
use crate::sessions::{self, Sessions};
use crate::{audit, bounds, factors, keys, limits, links, roles, upstream, usage, users, version};

/// Everything the log has built so far, indexed for lookups that touch no disk.
///
/// Storage owns the durable copy (one table per [`Table`]); this view is
/// rebuilt from it at start-up with [`State::load`] and kept in step by
/// [`State::apply`].
#[derive(Debug, Default)]
pub struct State {
    pub(crate) users: HashMap<String, UserRecord>,
    /// username → user id; usernames are unique.
    pub(crate) usernames: HashMap<String, String>,
    pub(crate) keys: HashMap<String, ApiKeyRecord>,
    pub(crate) sessions: Sessions,
    /// Custom roles by name.
    pub(crate) roles: HashMap<String, RoleRecord>,
    pub(crate) requests: Requests,
    pub(crate) limits: Limits,
    /// Unspent sign-in links.
    pub(crate) links: links::Links,
    /// Links to upstream identities, spent flows and logout tokens.
    pub(crate) upstream: upstream::Upstream,
    /// Second factors by user.
    pub(crate) factors: factors::Factors,
    /// Keys that sign downstream JWTs.
    pub(crate) signing: crate::signing::SigningKeys,
    /// The audit chain's head and anchor (the records stay in storage).
    pub(crate) audit: AuditChain,
    /// The cluster version as raised by `SetClusterVersion` (0: never raised).
    pub(crate) cluster_version: u32,
}

/// Work for one command that [`State::prepare`] did ahead of apply.
#[derive(Debug, Default)]
pub struct Prepared {
    pub(crate) audit: Option<Result<audit::Chained, ApplyError>>,
}

impl State {
    /// Does the costly part of applying `commands` (one entry's, in order)
    /// that needs only shared access: chaining audit records. The view's
    /// readers keep going while this runs; [`State::apply_prepared`] then
    /// holds the write lock only to install the result. Any work prepared
    /// on a state that has changed since is redone by apply, so preparing
    /// is never wrong, only sometimes wasted.
    ///
    /// The result is in command order and empty (no allocation) when no
    /// command has anything to prepare; commands past its end have nothing.
    pub fn prepare(&self, commands: &[Command]) -> Vec<Prepared> {
        if !commands.iter().any(|c| matches!(c.payload, Some(Payload::AppendAudit(_)))) {
            return Vec::new();
        }
        // The chain as the commands before this one in the entry leave it.
        let mut head: Option<AuditChain> = None;
        let mut prepared = Vec::with_capacity(commands.len());
        for cmd in commands {
            let mut p = Prepared::default();
            if let Some(Payload::AppendAudit(c)) = &cmd.payload {
                if self.requests.get(&cmd.request_id).is_none() {
                    let chained =
                        audit::chain(head.as_ref().unwrap_or(&self.audit), cmd.origin_node, cmd.proposed_at, c);
                    if let Some(after) = audit::head_after(&chained) {
                        head = Some(after.clone());
                    }
                    p.audit = Some(chained);
                }
            }
            prepared.push(p);
        }
        prepared
    }

    /// Applies one command committed at `log_index`.
    ///
    /// A refused command changes nothing and adds no mutation but the
    /// idempotency record; a command whose request id was seen before returns
    /// the first result and changes nothing.
    pub fn apply(&mut self, log_index: u64, cmd: &Command, out: &mut Vec<Mutation>) -> CommandResult {
        self.apply_prepared(log_index, cmd, Prepared::default(), out)
    }

    /// [`State::apply`] with the work [`State::prepare`] did for `cmd`.
    pub fn apply_prepared(
        &mut self,
        log_index: u64,
        cmd: &Command,
        prepared: Prepared,
        out: &mut Vec<Mutation>,
    ) -> CommandResult {
        self.requests.prune(cmd.proposed_at, out);
        self.sessions.prune(cmd.proposed_at, out);
        self.limits.prune(cmd.proposed_at, out);
        self.links.prune(cmd.proposed_at, out);
        self.upstream.prune(cmd.proposed_at, out);
        self.signing.prune(cmd.proposed_at, out);
        if let Some(first) = self.requests.record(&cmd.request_id) {
            // The same id for another request: the client reused its
            // idempotency key. Refused, not answered with the first result
            // (which would say "done" for something never done).
            let reused = !cmd.request_digest.is_empty()
                && !first.request_digest.is_empty()
                && cmd.request_digest != first.request_digest;
            if reused {
                let refused = ApplyError::FailedPrecondition("idempotency key reused with different parameters".into());
                return to_result(Err(refused), log_index);
            }
            return first.result.clone().unwrap_or_default();
        }
        // Bounded before it was proposed; refused here all the same, so an
        // entry from a node that skipped the check changes nothing.
        // A kind of command newer than the cluster's version is refused on
        // every node alike (it never gets this far on a node that checks
        // before proposing).
        let outcome = bounds::check(cmd)
            .and_then(|()| cmd.payload.as_ref().map_or(Ok(()), |p| version::gate(self, p)))
            .and_then(|()| self.dispatch(cmd, prepared, out));
        let result = to_result(outcome, log_index);
        // Commands a node makes for itself keep no idempotency record: they
        // come at the rate of traffic (a flood of logins is a flood of
        // `RateHit`s), and a record each would grow every node for 24 h.
        // A retry of one is harmless (a hit or delta counted twice errs on
        // the side of the limit; a use time only moves forward) or caught
        // by its own rule (an audit batch's number).
        if !is_internal(cmd) {
            self.requests.remember(cmd, &result, out);
        }
        result
    }

    /// The one `match` over commands.
    fn dispatch(&mut self, cmd: &Command, prepared: Prepared, out: &mut Vec<Mutation>) -> Result<Outcome, ApplyError> {
        match &cmd.payload {
            None => Err(ApplyError::Invalid("command has no payload".into())),
            Some(Payload::CreateUser(c)) => users::create(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::SetUserStatus(c)) => users::set_status(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::SetPassword(c)) => users::set_password(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::RecordLoginFailure(c)) => {
                users::record_login_failure(self, cmd.proposed_at, c, out).map(Outcome::from)
            }
            Some(Payload::UpdateUser(c)) => users::update_user(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::DeleteUser(c)) => users::delete_user(self, c, out).map(Outcome::from),
            Some(Payload::AssignRole(c)) => users::assign_role(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::UnassignRole(c)) => users::unassign_role(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::CreateApiKey(c)) => keys::create(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::RevokeApiKey(c)) => keys::revoke(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::RotateApiKey(c)) => keys::rotate(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::CreateSession(c)) => sessions::create(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::RevokeSession(c)) => sessions::revoke(self, c, out).map(Outcome::from),
            Some(Payload::RevokeUserSessions(c)) => sessions::revoke_user(self, c, out).map(Outcome::from),
            Some(Payload::RevokeAllSessions(_)) => sessions::revoke_all(self, out).map(Outcome::from),
            Some(Payload::RecordUse(c)) => usage::record(self, c, out).map(Outcome::from),
            Some(Payload::PutRole(c)) => roles::put_role(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::DeleteRole(c)) => roles::delete_role(self, c, out).map(Outcome::from),
            Some(Payload::RateHit(c)) => {
                limits::hit(self, cmd.proposed_at, c, out).map(|remaining| Outcome { remaining, ..Default::default() })
            }
            Some(Payload::RateDeltas(c)) => limits::add(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::AppendAudit(c)) => {
                audit::append(self, cmd.origin_node, cmd.proposed_at, c, prepared.audit, out)
            }
            Some(Payload::PruneAudit(c)) => audit::prune(self, c, out).map(Outcome::from),
            Some(Payload::SetClusterVersion(c)) => version::set(self, c, out).map(Outcome::from),
            Some(Payload::CreateSignInLink(c)) => links::create(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::SpendSignInLink(c)) => links::spend(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::UpstreamSignIn(c)) => upstream::sign_in(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::UpstreamChecked(c)) => upstream::checked(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::UpstreamEnd(c)) => upstream::end(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::PresentFactor(c)) => factors::present(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::EnrollTotp(c)) => factors::enroll_totp(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::SetRecoveryCodes(c)) => factors::set_recovery(self, c, out).map(Outcome::from),
            Some(Payload::RemoveFactors(c)) => factors::remove(self, c, out).map(Outcome::from),
            Some(Payload::SetMfaPolicy(c)) => factors::set_policy(self, c, out).map(Outcome::from),
            Some(Payload::ResealSecrets(c)) => factors::reseal(self, c, out).map(Outcome::from),
            Some(Payload::AddPasskey(c)) => crate::passkeys::add(self, cmd.proposed_at, c, out).map(Outcome::from),
            Some(Payload::RenamePasskey(c)) => crate::passkeys::rename(self, c, out).map(Outcome::from),
            Some(Payload::ForgetDevices(c)) => crate::devices::forget(self, c, out).map(Outcome::from),
            Some(Payload::RotateSigningKey(c)) => {
                crate::signing::rotate(self, cmd.proposed_at, c, out).map(Outcome::from)
            }
            Some(Payload::IssueEnrollTicket(c)) => {
                factors::issue_ticket(self, cmd.proposed_at, c, out).map(Outcome::from)
            }
            Some(Payload::CountFactorAttempt(c)) => {
                factors::count_attempt(self, cmd.proposed_at, c, out).map(Outcome::from)
            }
        }
    }

    /// Adds one stored record to the view (start-up and snapshot install).
    /// Call [`State::finish_load`] once every record is in.
    pub fn load(&mut self, table: Table, value: &[u8]) -> Result<(), DecodeError> {
        match table {
            Table::Users => {
                let u: UserRecord = codec::decode(value)?;
                self.usernames.insert(u.username.clone(), u.user_id.clone());
                self.users.insert(u.user_id.clone(), u);
            }
            Table::ApiKeys => {
                let k: ApiKeyRecord = codec::decode(value)?;
                self.keys.insert(k.key_id.clone(), k);
            }
            Table::Sessions => {
                if !self.sessions.insert(codec::decode(value)?) {
                    return Err(DecodeError::Invalid("session record with malformed ids"));
                }
            }
            Table::Roles => {
                let r: RoleRecord = codec::decode(value)?;
                self.roles.insert(r.name.clone(), r);
            }
            Table::Requests => self.requests.load(codec::decode(value)?),
            Table::Limits => self.limits.load(codec::decode(value)?),
            // Records stay in storage; the chain record says where they stand.
            Table::Audit => {}
            Table::AuditChain => self.audit = codec::decode(value)?,
            Table::Cluster => {
                let r: gatehouse_proto::state::ClusterVersionRecord = codec::decode(value)?;
                self.cluster_version = r.version;
            }
            Table::SignInLinks => {
                if !self.links.insert(codec::decode(value)?) {
                    return Err(DecodeError::Invalid("sign-in link record with a malformed token hash"));
                }
            }
            Table::UpstreamIdentities => self.upstream.insert_identity(codec::decode(value)?),
            Table::Factors => self.factors.insert(codec::decode(value)?),
            Table::Settings => self.factors.load_policy(codec::decode(value)?),
            Table::SigningKeys => self.signing.insert(codec::decode(value)?),
            Table::Spent => {
                if !self.upstream.insert_spent(codec::decode(value)?) {
                    return Err(DecodeError::Invalid("spent record with a malformed hash"));
                }
            }
        }
        Ok(())
    }

    /// Restores the orders that loading record by record cannot know.
    pub fn finish_load(&mut self) {
        self.requests.finish_load();
    }

    /// The command version the cluster runs ([`version`]).
    pub fn cluster_version(&self) -> u32 {
        self.cluster_version.max(version::BASE_VERSION)
    }

    pub fn user(&self, user_id: &str) -> Option<&UserRecord> {
        self.users.get(user_id)
    }

    pub fn user_by_name(&self, username: &str) -> Option<&UserRecord> {
        self.usernames.get(username).and_then(|id| self.users.get(id))
    }

    pub fn users(&self) -> impl Iterator<Item = &UserRecord> {
        self.users.values()
    }

    pub fn api_key(&self, key_id: &str) -> Option<&ApiKeyRecord> {
        self.keys.get(key_id)
    }

    pub fn api_keys(&self) -> impl Iterator<Item = &ApiKeyRecord> {
        self.keys.values()
    }

    pub fn role(&self, name: &str) -> Option<&RoleRecord> {
        self.roles.get(name)
    }

    /// Custom roles.
    pub fn roles(&self) -> impl Iterator<Item = &RoleRecord> {
        self.roles.values()
    }

    pub fn session(&self, session_id: &str) -> Option<SessionRecord> {
        self.sessions.get(session_id)
    }

    /// Every live session, in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = SessionRecord> + '_ {
        self.sessions.all()
    }

    /// How a session's first factor was given ("" unrecorded) and when it opened.
    pub fn session_origin(&self, session_id: &str) -> Option<(&'static str, u64)> {
        self.sessions.origin(session_id)
    }

    pub fn sessions_of(&self, user_id: &str) -> impl Iterator<Item = SessionRecord> + '_ {
        self.sessions.of_user(user_id)
    }

    /// The user linked to an upstream identity, if any.
    pub fn upstream_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Option<&gatehouse_proto::state::UpstreamIdentityRecord> {
        self.upstream.get(issuer, subject)
    }

    /// A user's links to upstream identities.
    pub fn upstream_identities_of<'a>(
        &'a self,
        user_id: &str,
    ) -> impl Iterator<Item = &'a gatehouse_proto::state::UpstreamIdentityRecord> + 'a {
        self.upstream.of_user(user_id)
    }

    /// A user's second factors, if any were ever enrolled.
    pub fn factors_of(&self, user_id: &str) -> Option<&gatehouse_proto::state::FactorsRecord> {
        self.factors.get(user_id)
    }

    /// The roles that require a second factor.
    pub fn mfa_required_roles(&self) -> &[String] {
        self.factors.required_roles()
    }

    /// Whether a role the user holds requires a second factor.
    pub fn factor_required(&self, user_id: &str) -> bool {
        factors::required(self, user_id)
    }

    /// Whether a user has a second factor to present.
    pub fn has_factor(&self, user_id: &str) -> bool {
        self.factors.enrolled(user_id)
    }

    /// Keys that sign downstream JWTs.
    pub fn signing_keys(&self) -> &crate::signing::SigningKeys {
        &self.signing
    }

    /// Rate-limit buckets.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The audit chain's head and anchor (genesis hashes while empty).
    pub fn audit_chain(&self) -> AuditChain {
        audit::normalized(self.audit.clone())
    }

    /// The first result of a command with this request id, if it was applied.
    pub fn request_result(&self, request_id: &str) -> Option<&CommandResult> {
        self.requests.get(request_id)
    }
}

/// A put of `record` under `key` in `table`.
/// Whether `cmd` is one a node proposes on its own (limits, last use,
/// audit), as opposed to a write someone asked for.
fn is_internal(cmd: &Command) -> bool {
    matches!(
        cmd.payload,
        Some(
            Payload::RateHit(_)
                | Payload::RateDeltas(_)
                | Payload::RecordUse(_)
                | Payload::AppendAudit(_)
                | Payload::ResealSecrets(_)
        )
    )
}

pub(crate) fn put<M: prost::Message>(table: Table, key: &str, record: &M) -> Mutation {
    Mutation::Put { table, key: key.as_bytes().to_vec(), value: codec::encode(record) }
}
