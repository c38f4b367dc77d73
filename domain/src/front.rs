//! What a stateless front holds: what verification needs, and nothing a
//! stolen front could use to sign anyone in.
//!
//! A front applies the committed log with the same [`crate::State::apply`]
//! as a voter, to a view it keeps in memory. It receives:
//!
//! - key and session token hashes, users, roles, rate-limit counts and the
//!   idempotency records (apply needs them to give the same results);
//! - **not** password hashes: a user's hash is replaced by [`WITHHELD`], a
//!   marker that passes apply's "argon2id only" check and matches no
//!   password (it is no PHC string an argon2 verifier accepts). Logins on a
//!   front are checked by a voter;
//! - **not** audit batches, their prune or the audit chain: a front never
//!   reads them, and events name people and addresses. A dropped command
//!   changes nothing a later command depends on: apply's time-based pruning
//!   runs again, with a later time, at the next command the front applies.
//!
//! The matches are exhaustive on purpose: a new command or table must
//! decide what a front sees of it.

use gatehouse_proto::events::command::Payload;
use gatehouse_proto::events::Command;
use gatehouse_proto::state::UserRecord;

use crate::codec::{self, DecodeError};
use crate::mutation::Table;

/// Stands in for a password hash on a front: "this user has a password,
/// and a voter holds it".
pub const WITHHELD: &str = "$argon2id$(withheld)";

/// `cmd` as a front applies it, or `None` when a front does not see it.
pub fn command(mut cmd: Command) -> Option<Command> {
    match &mut cmd.payload {
        Some(Payload::CreateUser(c)) => withhold(&mut c.password_hash),
        Some(Payload::SetPassword(c)) => withhold(&mut c.password_hash),
        Some(Payload::AppendAudit(_) | Payload::PruneAudit(_)) => return None,
        // Sealed secrets a front holds only stand-ins for, or nothing of.
        Some(Payload::ResealSecrets(_)) => return None,
        // A provider's refresh token (sealed) is for the voters' re-checks.
        Some(Payload::UpstreamSignIn(c)) => c.refresh_token = None,
        Some(Payload::UpstreamChecked(c)) => c.refresh_token = None,
        // A TOTP secret (sealed) is for the voters, which check codes; the
        // front applies the enrollment with a stand-in, so its view says
        // the same about who owes a second factor.
        Some(Payload::EnrollTotp(c)) => c.secret = c.secret.as_ref().map(withheld_secret),
        // A signing key's private half is for the voters, which sign; the
        // front publishes the public half and hands on voters' tokens.
        Some(Payload::RotateSigningKey(c)) => c.private_key = c.private_key.as_ref().map(withheld_secret),
        Some(
            Payload::SetUserStatus(_)
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
            | Payload::RevokeAllSessions(_)
            | Payload::RecordUse(_)
            | Payload::PutRole(_)
            | Payload::DeleteRole(_)
            | Payload::RateHit(_)
            | Payload::RateDeltas(_)
            | Payload::SetClusterVersion(_)
            | Payload::CreateSignInLink(_)
            | Payload::SpendSignInLink(_)
            | Payload::UpstreamEnd(_)
            | Payload::PresentFactor(_)
            | Payload::SetRecoveryCodes(_)
            | Payload::RemoveFactors(_)
            | Payload::CountFactorAttempt(_)
            | Payload::SetMfaPolicy(_)
            | Payload::IssueEnrollTicket(_)
            | Payload::AddPasskey(_)
            | Payload::RenamePasskey(_)
            | Payload::ForgetDevices(_),
        )
        | None => {}
    }
    Some(cmd)
}

/// A stored record of `table` as a front's snapshot carries it, or `None`
/// when a front does not hold that table.
pub fn record(table: Table, value: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
    match table {
        Table::Users => {
            let mut user: UserRecord = codec::decode(value)?;
            withhold(&mut user.password_hash);
            // The version byte is kept: a record an older build must not
            // read stays that way.
            Ok(Some([&value[..1], &prost::Message::encode_to_vec(&user)[..]].concat()))
        }
        Table::UpstreamIdentities => {
            let mut identity: gatehouse_proto::state::UpstreamIdentityRecord = codec::decode(value)?;
            identity.refresh_token = None;
            Ok(Some([&value[..1], &prost::Message::encode_to_vec(&identity)[..]].concat()))
        }
        Table::SigningKeys => {
            let mut key: gatehouse_proto::state::SigningKeyRecord = codec::decode(value)?;
            key.private_key = key.private_key.as_ref().map(withheld_secret);
            Ok(Some([&value[..1], &prost::Message::encode_to_vec(&key)[..]].concat()))
        }
        Table::Factors => {
            let mut factors: gatehouse_proto::state::FactorsRecord = codec::decode(value)?;
            if let Some(t) = &mut factors.totp {
                t.secret = t.secret.as_ref().map(withheld_secret);
            }
            Ok(Some([&value[..1], &prost::Message::encode_to_vec(&factors)[..]].concat()))
        }
        // Links and spent values: hashes, which a front needs to apply a
        // spend as the voters do.
        Table::ApiKeys
        | Table::Sessions
        | Table::Roles
        | Table::Requests
        | Table::Limits
        | Table::Cluster
        | Table::SignInLinks
        | Table::Settings
        | Table::Spent => Ok(Some(value.to_vec())),
        Table::Audit | Table::AuditChain => Ok(None),
    }
}

/// Whether a front holds `table` at all.
pub fn holds(table: Table) -> bool {
    !matches!(table, Table::Audit | Table::AuditChain)
}

/// Stands in for a sealed second-factor secret on a front: the same key id
/// and sizes (so apply takes or refuses it as the voters do the real one),
/// and nothing of the secret.
pub fn withheld_secret(s: &gatehouse_proto::events::Sealed) -> gatehouse_proto::events::Sealed {
    gatehouse_proto::events::Sealed {
        key_id: s.key_id.clone(),
        nonce: vec![0; s.nonce.len()],
        ciphertext: vec![0; s.ciphertext.len()],
    }
}

/// Stands in for a "hash" the voters refused (not argon2id): apply
/// refuses it on a front too, and whatever it was does not leave the voter.
const REFUSED: &str = "(refused)";

fn withhold(hash: &mut String) {
    if hash.is_empty() {
        return;
    }
    *hash = if crate::users::validate_password_hash(hash).is_ok() { WITHHELD } else { REFUSED }.to_string();
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_proto::events::{AppendAudit, CreateUser, SetPassword};

    const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

    fn cmd(payload: Payload) -> Command {
        Command { payload: Some(payload), ..Default::default() }
    }

    #[test]
    fn password_hashes_are_withheld_and_still_pass_apply() {
        let create = cmd(Payload::CreateUser(CreateUser {
            user_id: "u".into(),
            username: "alice".into(),
            password_hash: PHC.into(),
            ..Default::default()
        }));
        let Some(Payload::CreateUser(c)) = command(create).and_then(|c| c.payload) else { panic!("kept") };
        assert_eq!(c.password_hash, WITHHELD);
        assert!(crate::users::validate_password_hash(&c.password_hash).is_ok());
        let set = cmd(Payload::SetPassword(SetPassword { user_id: "u".into(), password_hash: PHC.into() }));
        let Some(Payload::SetPassword(c)) = command(set).and_then(|c| c.payload) else { panic!("kept") };
        assert_eq!(c.password_hash, WITHHELD);
        // What the voters refused (say, a plaintext password by mistake) is
        // refused on a front too, and does not reach it.
        let plain = cmd(Payload::SetPassword(SetPassword { user_id: "u".into(), password_hash: "hunter2".into() }));
        let Some(Payload::SetPassword(c)) = command(plain).and_then(|c| c.payload) else { panic!("kept") };
        assert_ne!(c.password_hash, "hunter2");
        assert!(crate::users::validate_password_hash(&c.password_hash).is_err());
        // A user without a password stays without one.
        let bare = cmd(Payload::CreateUser(CreateUser { user_id: "u".into(), ..Default::default() }));
        let Some(Payload::CreateUser(c)) = command(bare).and_then(|c| c.payload) else { panic!("kept") };
        assert!(c.password_hash.is_empty());
    }

    #[test]
    fn the_withheld_marker_is_no_hash_a_verifier_accepts() {
        use argon2::password_hash::PasswordHash;
        // Not even parsed: a verifier refuses it before any work.
        assert!(PasswordHash::new(WITHHELD).is_err());
        assert!(WITHHELD.len() <= 512);
    }

    #[test]
    fn audit_batches_and_their_tables_stay_on_voters() {
        assert!(command(cmd(Payload::AppendAudit(AppendAudit::default()))).is_none());
        assert_eq!(record(Table::Audit, &[1]).unwrap(), None);
        assert_eq!(record(Table::AuditChain, &[1]).unwrap(), None);
        assert!(!holds(Table::Audit) && holds(Table::Sessions));
    }

    #[test]
    fn a_user_record_keeps_everything_but_its_hash() {
        let user = UserRecord {
            user_id: "u".into(),
            username: "alice".into(),
            password_hash: PHC.into(),
            roles: vec!["admin".into()],
            locked_until: 7,
            ..Default::default()
        };
        let stored = codec::encode_as(codec::FORMAT_V2, &user);
        let sent = record(Table::Users, &stored).unwrap().unwrap();
        assert_eq!(sent[0], codec::FORMAT_V2);
        let got: UserRecord = codec::decode(&sent).unwrap();
        assert_eq!(got, UserRecord { password_hash: WITHHELD.into(), ..user });
        assert!(!String::from_utf8_lossy(&sent).contains("c2FsdHNhbHQ"));
        assert!(record(Table::Users, &[]).is_err());
    }
}
