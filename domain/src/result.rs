//! Command outcomes.

use gatehouse_proto::events::{command_result::Code, CommandResult};

/// Why apply refused a command. The state is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A strict rate limit refused the hit.
    #[error("{0}")]
    Limited(String),
}

impl ApplyError {
    fn code(&self) -> Code {
        match self {
            ApplyError::Invalid(_) => Code::Invalid,
            ApplyError::NotFound(_) => Code::NotFound,
            ApplyError::AlreadyExists(_) => Code::AlreadyExists,
            ApplyError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApplyError::Limited(_) => Code::Limited,
        }
    }
}

/// What a result says, read back: `Ok` for an applied command, the refusal
/// for a refused one; `Err(code)` for a code this version does not know.
pub fn refusal(result: &CommandResult) -> Result<Option<ApplyError>, i32> {
    let msg = || result.message.clone();
    Ok(Some(match Code::try_from(result.code).map_err(|_| result.code)? {
        Code::Ok => return Ok(None),
        Code::Invalid => ApplyError::Invalid(msg()),
        Code::NotFound => ApplyError::NotFound(msg()),
        Code::AlreadyExists => ApplyError::AlreadyExists(msg()),
        Code::FailedPrecondition => ApplyError::FailedPrecondition(msg()),
        Code::Limited => ApplyError::Limited(msg()),
    }))
}

/// What an applied command returns: the id it created or changed, for a
/// strict rate-limit hit what its bucket has left, and for a retried audit
/// batch the last batch number its origin had appended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub id: String,
    pub remaining: u64,
    pub last_batch: u64,
}

impl From<String> for Outcome {
    fn from(id: String) -> Outcome {
        Outcome { id, ..Default::default() }
    }
}

/// The result of one command at `log_index`: what it did, or why it was refused.
pub fn to_result(outcome: Result<Outcome, ApplyError>, log_index: u64) -> CommandResult {
    match outcome {
        Ok(o) => CommandResult {
            code: Code::Ok as i32,
            message: String::new(),
            id: o.id,
            log_index,
            remaining: o.remaining,
            last_batch: o.last_batch,
        },
        Err(e) => CommandResult { code: e.code() as i32, message: e.to_string(), log_index, ..Default::default() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_reads_back_as_itself() {
        let refusals = [
            ApplyError::Invalid("a".into()),
            ApplyError::NotFound("b".into()),
            ApplyError::AlreadyExists("c".into()),
            ApplyError::FailedPrecondition("d".into()),
            ApplyError::Limited("e".into()),
        ];
        for e in refusals {
            assert_eq!(refusal(&to_result(Err(e.clone()), 7)), Ok(Some(e)));
        }
        assert_eq!(refusal(&to_result(Ok(String::from("id").into()), 7)), Ok(None));
        let unknown = CommandResult { code: 99, ..Default::default() };
        assert_eq!(refusal(&unknown), Err(99));
    }
}
