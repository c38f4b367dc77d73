//! Which commands a build understands, and the cluster version that gates
//! new kinds of command during a rolling upgrade.
//!
//! Every kind of command belongs to the command version it first appeared
//! in ([`required`]); a build understands every version up to
//! [`COMMAND_VERSION`]. The cluster's version is replicated state
//! (`SetClusterVersion`, table `cluster`): the leader raises it only once
//! every voter, learner and front reports it understands the new version,
//! and a command newer than the cluster's version is refused before it is
//! proposed and again at apply. So while old and new builds run side by
//! side, no node meets a command that it would refuse or ignore where the
//! others apply it.
//!
//! A build that meets a `SetClusterVersion` beyond its own version (an old
//! binary started on a cluster that was upgraded without it) stops applying
//! instead of going on with a state the others no longer share
//! ([`understood`]).

use gatehouse_proto::events::command::Payload;
use gatehouse_proto::events::{Command, SetClusterVersion};
use gatehouse_proto::state::ClusterVersionRecord;

use crate::mutation::{Mutation, Table};
use crate::result::ApplyError;
use crate::{codec, State};

/// The newest command version this build understands.
///
/// - 1: every command of the builds from before the version gate.
/// - 2: `SetClusterVersion`.
/// - 3: `CreateSignInLink`, `SpendSignInLink` (sign-in links).
/// - 4: `UpstreamSignIn`, `UpstreamChecked`, `UpstreamEnd` (upstream OIDC sign-in).
/// - 5: `PresentFactor`, `EnrollTotp`, `SetRecoveryCodes`, `RemoveFactors`,
///   `CountFactorAttempt`, `SetMfaPolicy`, `IssueEnrollTicket` (second factors),
///   `ResealSecrets` (secrets at rest moved to a new key-encryption key).
/// - 6: `AddPasskey`, `RenamePasskey`, a passkey as a factor proof;
///   `ForgetDevices`, a trusted browser as a factor proof and a trust
///   asked for in `PresentFactor`.
/// - 7: `RotateSigningKey` (keys for downstream JWTs), and signing keys
///   moved in `ResealSecrets`.
pub const COMMAND_VERSION: u32 = 7;

/// What a node that reports no version understands (a build from before the gate).
pub const BASE_VERSION: u32 = 1;

/// The key of the one record in [`Table::Cluster`].
pub const VERSION_KEY: &[u8] = b"version";

/// Whether a proof is of a kind version 6 added (a passkey, a trusted browser).
fn newer_proof(p: &Option<gatehouse_proto::events::FactorProof>) -> bool {
    use gatehouse_proto::events::factor_proof::Proof;
    matches!(p.as_ref().and_then(|p| p.proof.as_ref()), Some(Proof::Passkey(_) | Proof::TrustedDeviceSha256(_)))
}

/// The command version `payload` first appeared in. Exhaustive on purpose:
/// a new kind of command must say which version it needs.
pub fn required(payload: &Payload) -> u32 {
    match payload {
        Payload::RotateSigningKey(_) => crate::signing::VERSION,
        Payload::ResealSecrets(c) if !c.signing_keys.is_empty() => crate::signing::VERSION,
        Payload::AddPasskey(_) | Payload::RenamePasskey(_) | Payload::ForgetDevices(_) => 6,
        // Older kinds carrying what version 6 added: a node that does not
        // know it would apply them differently.
        Payload::PresentFactor(c) if !c.trust_device_sha256.is_empty() => crate::devices::VERSION,
        Payload::CreateSession(c) if newer_proof(&c.factor) => crate::devices::VERSION,
        Payload::PresentFactor(_)
        | Payload::EnrollTotp(_)
        | Payload::SetRecoveryCodes(_)
        | Payload::RemoveFactors(_)
        | Payload::CountFactorAttempt(_)
        | Payload::SetMfaPolicy(_)
        | Payload::IssueEnrollTicket(_)
        | Payload::ResealSecrets(_) => 5,
        Payload::UpstreamSignIn(_) | Payload::UpstreamChecked(_) | Payload::UpstreamEnd(_) => 4,
        Payload::CreateSignInLink(_) | Payload::SpendSignInLink(_) => 3,
        Payload::SetClusterVersion(_) => 2,
        Payload::CreateUser(_)
        | Payload::SetUserStatus(_)
        | Payload::SetPassword(_)
        | Payload::RecordLoginFailure(_)
        | Payload::UpdateUser(_)
        | Payload::DeleteUser(_)
        | Payload::AssignRole(_)
        | Payload::UnassignRole(_)
        | Payload::CreateApiKey(_)
        | Payload::RevokeApiKey(_)
        | Payload::RotateApiKey(_)
        | Payload::CreateSession(_)
        | Payload::RevokeSession(_)
        | Payload::RevokeUserSessions(_)
        | Payload::RecordUse(_)
        | Payload::RevokeAllSessions(_)
        | Payload::PutRole(_)
        | Payload::DeleteRole(_)
        | Payload::RateHit(_)
        | Payload::RateDeltas(_)
        | Payload::AppendAudit(_)
        | Payload::PruneAudit(_) => 1,
    }
}

/// A committed command this build cannot apply the way newer nodes do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the cluster moved to command version {cluster}, and this build understands up to {known}: \
     run a newer Gatehouse on this node (docs/operations.md, rolling upgrades)"
)]
pub struct Unsupported {
    pub cluster: u32,
    pub known: u32,
}

/// Whether this build may apply `cmd` at all. Anything else a build from
/// before it could meet is refused alike on every node (apply's own checks).
pub fn understood(cmd: &Command) -> Result<(), Unsupported> {
    match &cmd.payload {
        Some(Payload::SetClusterVersion(c)) if c.version > COMMAND_VERSION => {
            Err(Unsupported { cluster: c.version, known: COMMAND_VERSION })
        }
        _ => Ok(()),
    }
}

/// Refuses `payload` while the cluster's version is older than the one it needs.
/// (`SetClusterVersion` is what raises it, and needs no raise itself.)
pub fn gate(state: &State, payload: &Payload) -> Result<(), ApplyError> {
    if matches!(payload, Payload::SetClusterVersion(_)) {
        return Ok(());
    }
    refuse_newer(required(payload), state.cluster_version())
}

fn refuse_newer(needs: u32, runs: u32) -> Result<(), ApplyError> {
    if needs > runs {
        return Err(ApplyError::FailedPrecondition(format!(
            "this request needs cluster version {needs}, and the cluster runs version {runs} until every node \
             is upgraded (see `cluster status`)"
        )));
    }
    Ok(())
}

/// Applies `SetClusterVersion`: only ever upwards.
pub(crate) fn set(state: &mut State, c: &SetClusterVersion, out: &mut Vec<Mutation>) -> Result<String, ApplyError> {
    let runs = state.cluster_version();
    if c.version <= runs {
        return Err(ApplyError::FailedPrecondition(format!(
            "the cluster already runs version {runs}; it is never lowered"
        )));
    }
    state.cluster_version = c.version;
    out.push(Mutation::Put {
        table: Table::Cluster,
        key: VERSION_KEY.to_vec(),
        value: codec::encode(&ClusterVersionRecord { version: c.version }),
    });
    Ok(c.version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_proto::events::{CreateUser, RevokeAllSessions};

    fn command(payload: Payload) -> Command {
        Command { proposed_at: 1_000, origin_node: 1, payload: Some(payload), ..Default::default() }
    }

    #[test]
    fn the_version_only_rises_and_is_stored() {
        let mut state = State::default();
        assert_eq!(state.cluster_version(), BASE_VERSION);
        let mut out = Vec::new();
        let raise = command(Payload::SetClusterVersion(SetClusterVersion { version: 2 }));
        assert_eq!(state.apply(1, &raise, &mut out).message, "");
        assert_eq!(state.cluster_version(), 2);
        assert!(out
            .iter()
            .any(|m| matches!(m, Mutation::Put { table: Table::Cluster, key, .. } if key == VERSION_KEY)));
        for version in [2, 1, 0] {
            let again = command(Payload::SetClusterVersion(SetClusterVersion { version }));
            let result = state.apply(2, &again, &mut Vec::new());
            assert!(result.message.contains("never lowered"), "{version}: {result:?}");
        }
        assert_eq!(state.cluster_version(), 2);

        // Loaded back from the stored record.
        let Mutation::Put { value, .. } =
            out.into_iter().find(|m| matches!(m, Mutation::Put { table: Table::Cluster, .. })).unwrap()
        else {
            unreachable!()
        };
        let mut loaded = State::default();
        loaded.load(Table::Cluster, &value).unwrap();
        assert_eq!(loaded.cluster_version(), 2);
    }

    #[test]
    fn a_kind_newer_than_the_cluster_is_refused() {
        let state = State::default();
        let newer = Payload::SetClusterVersion(SetClusterVersion { version: 2 });
        assert!(gate(&state, &newer).is_ok(), "the raise itself is what lets newer commands in");
        for old in [Payload::CreateUser(CreateUser::default()), Payload::RevokeAllSessions(RevokeAllSessions {})] {
            assert_eq!(required(&old), BASE_VERSION);
            assert!(gate(&state, &old).is_ok());
        }
        // A kind of a later version, on a cluster that has not reached it.
        let e = refuse_newer(COMMAND_VERSION + 1, COMMAND_VERSION).unwrap_err();
        assert!(
            matches!(&e, ApplyError::FailedPrecondition(m) if m.contains(&format!("needs cluster version {}", COMMAND_VERSION + 1))),
            "{e:?}"
        );
        assert!(refuse_newer(COMMAND_VERSION, COMMAND_VERSION).is_ok());
    }

    #[test]
    fn sign_in_links_wait_for_version_3_on_every_node() {
        use gatehouse_proto::events::{CreateSignInLink, SpendSignInLink};
        let mut state = State::default();
        state.apply(1, &command(Payload::SetClusterVersion(SetClusterVersion { version: 2 })), &mut Vec::new());
        for kind in [
            Payload::CreateSignInLink(CreateSignInLink::default()),
            Payload::SpendSignInLink(SpendSignInLink::default()),
        ] {
            assert_eq!(required(&kind), 3);
            // Refused at apply, alike on every node, before any check of its own.
            let mut out = Vec::new();
            let r = state.apply(2, &command(kind), &mut out);
            assert!(r.message.contains("needs cluster version 3"), "{r:?}");
            assert!(out.iter().all(|m| !matches!(m, Mutation::Put { table: Table::SignInLinks, .. })));
        }
    }

    #[test]
    fn a_version_beyond_this_build_is_not_understood() {
        let beyond = command(Payload::SetClusterVersion(SetClusterVersion { version: COMMAND_VERSION + 1 }));
        let e = understood(&beyond).unwrap_err();
        assert_eq!(e, Unsupported { cluster: COMMAND_VERSION + 1, known: COMMAND_VERSION });
        assert!(e.to_string().contains("run a newer Gatehouse"), "{e}");
        let ours = command(Payload::SetClusterVersion(SetClusterVersion { version: COMMAND_VERSION }));
        assert!(understood(&ours).is_ok());
        assert!(understood(&Command::default()).is_ok(), "no payload is refused by apply, alike everywhere");
    }
}
