//! The cluster lineage a node's data belongs to: a small file beside the
//! database (`<data_dir>/cluster-lineage`, `<id>.<epoch>`), so that holding
//! it never holds the database open. Written once when the node initialises
//! a cluster or first hears from one, and again by a forced recovery;
//! replaced whole and synced, so a crash leaves the old or the new.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::db::meta;
use crate::{Storage, StorageError};

/// The file's name in the data directory.
pub const LINEAGE_FILE: &str = "cluster-lineage";

/// Where `data_dir`'s lineage lives.
pub fn lineage_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LINEAGE_FILE)
}

/// The lineage text stored under `data_dir`, if any (trimmed; parsing is
/// the caller's).
pub fn read_lineage(data_dir: &Path) -> Result<Option<String>, StorageError> {
    match std::fs::read_to_string(lineage_path(data_dir)) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Stores `text` as `data_dir`'s lineage, durable before this returns.
pub fn write_lineage(data_dir: &Path, text: &str) -> Result<(), StorageError> {
    let path = lineage_path(data_dir);
    let aside = data_dir.join(format!("{LINEAGE_FILE}.new"));
    {
        let mut f = std::fs::File::create(&aside)?;
        f.write_all(format!("{text}\n").as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&aside, &path)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}

impl Storage {
    /// Whether this store has ever taken part in a cluster: a vote cast or
    /// a membership seen.
    pub fn has_raft_state(&self) -> Result<bool, StorageError> {
        let cf = self.cf(crate::db::CF_META);
        Ok(self.db.get_pinned_cf(cf, meta::VOTE)?.is_some()
            || self.db.get_pinned_cf(cf, meta::LAST_MEMBERSHIP)?.is_some())
    }

    /// The data directory the store is in.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lineage_is_replaced_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_lineage(dir.path()).unwrap(), None);
        write_lineage(dir.path(), "ab.1").unwrap();
        write_lineage(dir.path(), "ab.2").unwrap();
        assert_eq!(read_lineage(dir.path()).unwrap().as_deref(), Some("ab.2"));
        assert!(!dir.path().join("cluster-lineage.new").exists());
        let s = crate::db::open_db(dir.path()).unwrap();
        assert!(!s.has_raft_state().unwrap());
    }
}
