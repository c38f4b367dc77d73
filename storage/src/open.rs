//! Opening a node's store: the database, then the log store and the state
//! machine on it, sharing one pool of background threads.

use std::path::Path;

use crate::background::{self, Background};
use crate::db::open_db;
use crate::log_store::LogStore;
use crate::state_machine::StateMachine;
use crate::StorageError;

/// Opens (or creates) the node's store under `dir` and loads the state machine's view.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), StorageError> {
    crate::backup::check_not_restoring(dir)?;
    let storage = open_db(dir)?;
    // One pool for both: heavy appends, decodes and applies run off the
    // async workers that answer requests.
    let background = Background::new("gatehouse-storage", background::THREADS, background::NICE);
    let log = LogStore::new(storage.clone(), background.clone());
    let sm = StateMachine::open(storage, background)?;
    Ok((log, sm))
}
