//! The programs the end-to-end suites run, built from this workspace: the
//! agent and lbctl live in their own packages, so cargo's
//! `CARGO_BIN_EXE_*` does not name them here. The first call builds both
//! (a no-op when they are up to date) with the profile and target
//! directory of the running test, so that a suite never runs a stale
//! agent after an edit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `lb-agent` binary.
pub fn agent() -> &'static Path {
    &built().0
}

/// The `lbctl` binary.
pub fn lbctl() -> &'static Path {
    &built().1
}

fn built() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| build().unwrap_or_else(|e| panic!("building lb-agent and lbctl: {e}")))
}

fn build() -> Result<(PathBuf, PathBuf), String> {
    // A test runs as <target>/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().map_err(|e| format!("finding this test: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in a cargo target directory", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .expect("a profile directory has a parent");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&workspace)
        .args(["build", "--quiet", "-p", "lb-agent", "-p", "lbctl"])
        .args(["--bin", "lb-agent", "--bin", "lbctl"])
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    let status = cargo
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    Ok((profile_dir.join("lb-agent"), profile_dir.join("lbctl")))
}
