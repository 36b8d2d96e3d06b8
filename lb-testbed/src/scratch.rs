//! Temporary directories for the library and the `lb-testbed` binary, which
//! cannot use the `tempfile` dev-dependency.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// A fresh directory under the system temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new() -> Result<ScratchDir> {
        let path = std::env::temp_dir().join(super::unique_tag());
        // create_dir (not _all): fails rather than reuse a leftover directory.
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

/// Copies the manifests (`*.yaml`, `*.yml`) of `src` into `dst`, which must
/// exist, so a run can edit them without touching the originals. Returns how
/// many files it copied; none is an error.
pub fn copy_manifests(src: &Path, dst: &Path) -> Result<usize> {
    let mut copied = 0;
    for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if is_yaml && path.is_file() {
            let to = dst.join(
                path.file_name()
                    .expect("a file read from a directory has a name"),
            );
            fs::copy(&path, &to)
                .with_context(|| format!("copying {} to {}", path.display(), to.display()))?;
            copied += 1;
        }
    }
    anyhow::ensure!(
        copied > 0,
        "no *.yaml or *.yml manifests in {}",
        src.display()
    );
    Ok(copied)
}
