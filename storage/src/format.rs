//! The store's format (`<data_dir>/store-format`): the newest record format
//! a store may hold. Checked before the database opens, so a build meets
//! data written by a newer one with a clear refusal and leaves it
//! untouched; raised (never lowered) to this build's at every open.

use std::path::Path;

use crate::StorageError;

/// The store's formats:
/// - 2: records in `gatehouse_domain::codec` formats 1 and 2.
/// - 3: format 2 and the `cluster` table (the cluster version). A format 2
///   store is read as it is (the table is created empty when it opens);
///   a build of format 2 refuses a format 3 store.
/// - 4: format 3 and the `sign_in_links` table, created empty when a format
///   3 store opens.
/// - 5: format 4 and the `upstream_identities` and `spent` tables, created
///   empty when a format 4 store opens.
/// - 6: format 5 and the `factors` and `settings` tables (second factors,
///   the MFA policy), created empty when a format 5 store opens.
pub const STORE_FORMAT: u32 = 6;

/// The file's name in the data directory.
pub const FORMAT_FILE: &str = "store-format";

/// Refuses a store of a newer format; marks an older or unmarked one as
/// this build's.
pub(crate) fn check_and_mark(data_dir: &Path) -> Result<(), StorageError> {
    let path = data_dir.join(FORMAT_FILE);
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse::<u32>().map_err(|_| StorageError::Corrupt {
            table: "store-format",
            reason: format!("{} holds no format number", path.display()),
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    match found {
        Some(n) if n > STORE_FORMAT => Err(StorageError::NewerFormat { found: n, known: STORE_FORMAT }),
        Some(n) if n == STORE_FORMAT => Ok(()),
        _ => {
            let aside = data_dir.join(format!("{FORMAT_FILE}.new"));
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&aside)?;
                writeln!(f, "{STORE_FORMAT}")?;
                f.sync_all()?;
            }
            std::fs::rename(&aside, &path)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_store_is_refused_and_left_alone_an_older_one_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let ours = STORE_FORMAT.to_string();
        check_and_mark(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap().trim(), ours);
        std::fs::write(dir.path().join(FORMAT_FILE), "2\n").unwrap();
        check_and_mark(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap().trim(), ours);
        let newer = format!("{}\n", STORE_FORMAT + 1);
        std::fs::write(dir.path().join(FORMAT_FILE), &newer).unwrap();
        let e = check_and_mark(dir.path()).unwrap_err().to_string();
        assert!(e.contains("newer Gatehouse") && e.contains(&format!("format {}", STORE_FORMAT + 1)), "{e}");
        assert_eq!(std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap(), newer, "untouched");
        std::fs::write(dir.path().join(FORMAT_FILE), "x").unwrap();
        assert!(check_and_mark(dir.path()).is_err());
    }
}
