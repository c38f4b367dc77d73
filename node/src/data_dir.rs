//! The node's data directory: created private, and refused when users other
//! than its owner and group can read or write it.
//!
//! The group is allowed on purpose: a Kubernetes volume mounted with
//! `fsGroup` is group-owned and group-writable. Files inside are private
//! because the binary runs with umask 077 ([`private_umask`]); the library
//! cannot set that for its host process, so it checks the directory only.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};

/// Creates `dir` (mode 0700) if missing; refuses a directory that other
/// users can read, write or enter.
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => bail!("data_dir {} is not a directory", dir.display()),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                bail!(
                    "data_dir {} is open to other users (mode {mode:03o}): the store holds credential hashes; \
                     run `chmod o-rwx {}` (owner and group access is fine)",
                    dir.display(),
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::DirBuilder::new().mode(0o700).create(dir).with_context(|| format!("creating {}", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Makes every file and directory this process creates private to its
/// owner (umask 077). Process-wide, so only the binary calls it.
pub fn private_umask() {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_directory_is_private_and_an_open_one_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/data");
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        prepare(&dir).unwrap();

        // Group access (a Kubernetes fsGroup volume) is fine.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
        prepare(&dir).unwrap();
        for open in [0o755, 0o744, 0o702, 0o701, 0o777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(open)).unwrap();
            let err = prepare(&dir).unwrap_err().to_string();
            assert!(err.contains("open to other users") && err.contains("chmod o-rwx"), "{open:o}: {err}");
        }
        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(prepare(&file).unwrap_err().to_string().contains("not a directory"));
    }
}
