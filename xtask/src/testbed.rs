//! Running the release `lb-testbed` binary (shared by `demo` and `bench`).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Result};

use crate::cmd;

/// A release binary's path, relative to the workspace root when it is under it.
pub fn release_bin(name: &str) -> Result<PathBuf> {
    Ok(cmd::relative_to_root(
        &cmd::target_dir()?.join("release").join(name),
    ))
}

/// Runs `lb-testbed <args>` from the workspace root; returns its exit code.
pub fn run<I, S>(args: I) -> Result<ExitCode>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let root = cmd::workspace_root();
    let testbed = root.join(release_bin("lb-testbed")?);
    if !testbed.is_file() {
        bail!("{} is missing after the release build", testbed.display());
    }
    let mut command = Command::new(&testbed);
    command.current_dir(&root).args(args);
    let status = cmd::status(&mut command)?;
    Ok(cmd::exit_code(status))
}

/// `--flag <path>` pairs as OS strings.
pub fn path_arg(flag: &str, path: PathBuf) -> [OsString; 2] {
    [OsString::from(flag), path.into_os_string()]
}
