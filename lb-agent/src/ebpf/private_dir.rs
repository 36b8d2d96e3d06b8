//! Directories under the pin directory. Pinned maps steer all Service
//! traffic and pinned links keep programs attached: only root may reach
//! them. The kernel creates each pin mode 0600; the directories holding
//! them are made (or made again) mode 0700, whatever the umask.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;

/// Creates `dir` and any missing parent mode 0700, and sets `dir` itself
/// to 0700 if it existed with another mode.
pub fn create(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_and_existing_directories_end_up_0700() {
        let scratch = tempfile::tempdir().unwrap();
        let nested = scratch.path().join("pins/links");
        create(&nested).unwrap();
        let existing = scratch.path().join("open");
        fs::create_dir(&existing).unwrap();
        fs::set_permissions(&existing, Permissions::from_mode(0o755)).unwrap();
        create(&existing).unwrap();
        for dir in [scratch.path().join("pins"), nested, existing] {
            let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
    }
}
