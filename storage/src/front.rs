//! The view as a stateless front copies it: every record of the tables a
//! front holds, as [`gatehouse_domain::front::record`] leaves it (no password
//! hash, no audit), read from one RocksDB point-in-time view, with the log
//! index that view reflects. Apply goes on meanwhile: the copy holds no lock.

use gatehouse_proto::state::SnapshotRecord;

use crate::copy::Copy;
use crate::db::Storage;
use crate::StorageError;

impl Storage {
    /// Reads the front's copy of the view in chunks of about `chunk_bytes`,
    /// handing each to `send` with the index they reflect and whether it is
    /// the last; stops early when `send` returns false (the front went
    /// away). Returns the index.
    /// Blocking: run it off the async workers.
    pub fn front_snapshot(
        &self,
        chunk_bytes: usize,
        mut send: impl FnMut(u64, Vec<SnapshotRecord>, bool) -> bool,
    ) -> Result<u64, StorageError> {
        let at = self.copy_view(Copy::Front, chunk_bytes, |at, records, last| send(at.index, records, last))?;
        Ok(at.index)
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_domain::{Command, Payload, State};
    use gatehouse_proto::events::{AppendAudit, AuditEvent, CreateApiKey, CreateUser};
    use openraft::storage::RaftStateMachine;

    use crate::state_machine::tests::entry;

    fn cmd(id: &str, payload: Payload) -> Command {
        Command { request_id: id.into(), proposed_at: 1_700_000_000_000, payload: Some(payload), ..Default::default() }
    }

    #[tokio::test]
    async fn a_front_copy_holds_no_password_hash_and_no_audit_and_loads_into_a_state() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = crate::open(dir.path()).unwrap();
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".to_string();
        let user = "0123456789abcdef0123456789abcdef".to_string();
        let commands = vec![
            cmd(
                "r1",
                Payload::CreateUser(CreateUser {
                    user_id: user.clone(),
                    username: "alice".into(),
                    email: "alice@example.com".into(),
                    password_hash: phc.clone(),
                    ..Default::default()
                }),
            ),
            cmd(
                "r2",
                Payload::CreateApiKey(CreateApiKey {
                    key_id: "0123456789abcdef".to_string(),
                    user_id: user.clone(),
                    name: "ci".into(),
                    secret_sha256: vec![7; 32],
                    ..Default::default()
                }),
            ),
            cmd(
                "r3",
                Payload::AppendAudit(AppendAudit {
                    batch: 1,
                    events: vec![AuditEvent { action: "login".into(), ..Default::default() }],
                    dropped: 0,
                }),
            ),
        ];
        let results = sm.apply(vec![entry(1, commands)]).await.unwrap();
        assert!(results[0].iter().all(|r| r.code == 0), "{results:?}");
        let storage = _log.storage();
        let mut records = Vec::new();
        let index = storage
            .front_snapshot(64, |i, chunk, _| {
                assert_eq!(i, 1);
                records.extend(chunk);
                true
            })
            .unwrap();
        assert_eq!(index, 1);
        assert!(records.iter().all(|r| r.table != "audit" && r.table != "audit_chain"));
        let all: Vec<u8> = records.iter().flat_map(|r| r.value.clone()).collect();
        assert!(!all.windows(phc.len()).any(|w| w == phc.as_bytes()), "no password hash leaves the voter");
        let mut state = State::default();
        for r in &records {
            state.load(gatehouse_domain::Table::from_name(&r.table).unwrap(), &r.value).unwrap();
        }
        state.finish_load();
        assert_eq!(state.user(&user).unwrap().password_hash, gatehouse_domain::front::WITHHELD);
        assert!(state.api_key("0123456789abcdef").is_some());
        // Stopping early stops the copy.
        let mut chunks = 0;
        storage
            .front_snapshot(1, |_, _, _| {
                chunks += 1;
                false
            })
            .unwrap();
        assert_eq!(chunks, 1);
    }
}
