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

/// The result of one command at `log_index`: the id it created or changed, or why it was refused.
pub fn to_result(outcome: Result<String, ApplyError>, log_index: u64) -> CommandResult {
    match outcome {
        Ok(id) => CommandResult { code: Code::Ok as i32, message: String::new(), id, log_index },
        Err(e) => CommandResult { code: e.code() as i32, message: e.to_string(), id: String::new(), log_index },
    }
}
