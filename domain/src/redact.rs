//! What a command looks like to someone following the log from outside
//! (the admin `Watch` stream): the hashes of secrets are removed.
//!
//! The log never holds a plaintext secret, but password hashes and the
//! SHA-256 of keys and session tokens are still worth attacking offline, and
//! a session token hash is enough to find a session. The match is
//! exhaustive on purpose: a new command must decide what it hides.

use gatehouse_proto::events::command::Payload;
use gatehouse_proto::events::Command;

/// `cmd` without any password hash, key hash or session token hash.
pub fn redacted(mut cmd: Command) -> Command {
    match &mut cmd.payload {
        Some(Payload::CreateUser(c)) => c.password_hash.clear(),
        Some(Payload::SetPassword(c)) => c.password_hash.clear(),
        Some(Payload::CreateApiKey(c)) => c.secret_sha256.clear(),
        Some(Payload::RotateApiKey(c)) => {
            if let Some(k) = &mut c.new_key {
                k.secret_sha256.clear();
            }
        }
        Some(Payload::CreateSession(c)) => {
            c.token_sha256.clear();
            c.factor = None;
        }
        Some(Payload::PresentFactor(c)) => {
            c.new_token_sha256.clear();
            c.proof = None;
            c.trust_device_sha256.clear();
        }
        Some(Payload::ForgetDevices(c)) => c.device_sha256.clear(),
        Some(Payload::RotateSigningKey(c)) => c.private_key = None,
        Some(Payload::EnrollTotp(c)) => {
            c.secret = None;
            c.recovery_sha256.clear();
            c.new_token_sha256.clear();
            c.ticket_sha256.clear();
        }
        Some(Payload::IssueEnrollTicket(c)) => c.ticket_sha256.clear(),
        Some(Payload::ResealSecrets(c)) => {
            c.totp.iter_mut().for_each(|t| t.secret = None);
            c.tokens.iter_mut().for_each(|t| t.refresh_token = None);
            c.signing_keys.iter_mut().for_each(|k| k.private_key = None);
        }
        Some(Payload::SetRecoveryCodes(c)) => c.recovery_sha256.clear(),
        Some(Payload::AddPasskey(c)) => c.recovery_sha256.clear(),
        Some(Payload::CreateSignInLink(c)) => {
            c.token_sha256.clear();
            c.browser_sha256.clear();
        }
        Some(Payload::SpendSignInLink(c)) => {
            c.token_sha256.clear();
            c.browser_sha256.clear();
            if let Some(s) = &mut c.session {
                s.token_sha256.clear();
            }
        }
        Some(Payload::UpstreamSignIn(c)) => {
            c.flow_sha256.clear();
            c.refresh_token = None;
            if let Some(s) = &mut c.session {
                s.token_sha256.clear();
            }
        }
        Some(Payload::UpstreamChecked(c)) => c.refresh_token = None,
        Some(Payload::UpstreamEnd(c)) => c.token_sha256.clear(),
        Some(
            Payload::SetUserStatus(_)
            | Payload::RecordLoginFailure(_)
            | Payload::UpdateUser(_)
            | Payload::DeleteUser(_)
            | Payload::AssignRole(_)
            | Payload::UnassignRole(_)
            | Payload::RevokeApiKey(_)
            | Payload::RenamePasskey(_)
            | Payload::RevokeSession(_)
            | Payload::RevokeUserSessions(_)
            | Payload::RevokeAllSessions(_)
            | Payload::RecordUse(_)
            | Payload::PutRole(_)
            | Payload::DeleteRole(_)
            | Payload::RateHit(_)
            | Payload::RateDeltas(_)
            | Payload::AppendAudit(_)
            | Payload::PruneAudit(_)
            | Payload::SetClusterVersion(_)
            | Payload::RemoveFactors(_)
            | Payload::CountFactorAttempt(_)
            | Payload::SetMfaPolicy(_),
        )
        | None => {}
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_proto::events::{AddPasskey, CreateApiKey, CreateSession, CreateUser, RotateApiKey, SetPassword};
    use prost::Message;

    #[test]
    fn no_hash_survives() {
        let hash = b"SECRETHASHSECRETHASHSECRETHASH!!".to_vec();
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$SECRETHASH".to_string();
        let key = CreateApiKey { key_id: "k".into(), secret_sha256: hash.clone(), ..Default::default() };
        for payload in [
            Payload::CreateUser(CreateUser {
                username: "ann".into(),
                password_hash: phc.clone(),
                ..Default::default()
            }),
            Payload::SetPassword(SetPassword { user_id: "u".into(), password_hash: phc.clone() }),
            Payload::CreateApiKey(key.clone()),
            Payload::RotateApiKey(RotateApiKey { old_key_id: "o".into(), new_key: Some(key), old_expires_at: 0 }),
            Payload::CreateSession(CreateSession {
                session_id: "s".into(),
                token_sha256: hash.clone(),
                ..Default::default()
            }),
            // A first passkey's new recovery codes.
            Payload::AddPasskey(AddPasskey { recovery_sha256: vec![hash.clone()], ..Default::default() }),
        ] {
            let bytes = redacted(Command { payload: Some(payload), ..Default::default() }).encode_to_vec();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("SECRETHASH"), "{text}");
        }
    }
}
