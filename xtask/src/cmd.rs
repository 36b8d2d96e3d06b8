//! Shared helpers: running commands with useful error context, and the
//! workspace paths every task needs.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Output};

use anyhow::{bail, Context as _, Result};

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo target directory: `$CARGO_TARGET_DIR` (relative values are taken
/// relative to the current directory, as cargo does) or `<root>/target`.
pub fn target_dir() -> Result<PathBuf> {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                Ok(dir)
            } else {
                let cwd = std::env::current_dir().context("reading the current directory")?;
                Ok(cwd.join(dir))
            }
        }
        None => Ok(workspace_root().join("target")),
    }
}

/// `path` relative to the workspace root when it lies under it, else as is.
pub fn relative_to_root(path: &Path) -> PathBuf {
    path.strip_prefix(workspace_root())
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}

/// A `cargo` command (the one running xtask when known) run from the workspace
/// root, with the target directory pinned to the one xtask resolved.
pub fn cargo() -> Result<Command> {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    if std::env::var_os("CARGO_TARGET_DIR").is_some_and(|v| !v.is_empty()) {
        cmd.env("CARGO_TARGET_DIR", target_dir()?);
    }
    Ok(cmd)
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(euid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
        {
            return euid == "0";
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A printable form of `cmd`: explicit environment, program and arguments.
pub fn describe(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Error context for a command that could not be started.
fn spawn_error(cmd: &Command, err: io::Error) -> anyhow::Error {
    let what = if err.kind() == io::ErrorKind::NotFound {
        format!(
            "cannot run `{}`: `{}` was not found on PATH",
            describe(cmd),
            cmd.get_program().to_string_lossy()
        )
    } else {
        format!("cannot run `{}`", describe(cmd))
    };
    anyhow::Error::new(err).context(what)
}

/// Runs `cmd` with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("==> {}", describe(cmd));
    cmd.status().map_err(|e| spawn_error(cmd, e))
}

/// Runs `cmd` with inherited stdio; fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its captured output, whatever its status.
/// `Ok(None)` means the program does not exist.
pub fn try_output(cmd: &mut Command) -> Result<Option<Output>> {
    match cmd.output() {
        Ok(output) => Ok(Some(output)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(spawn_error(cmd, e)),
    }
}

/// Runs `cmd` quietly and returns its stdout; fails (quoting stderr) unless it
/// exits successfully.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| spawn_error(cmd, e))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{}` printed non-UTF-8 output", describe(cmd)))
}

/// The exit code to hand on for a child's `status` (128 + signal if killed).
pub fn exit_code(status: ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(signal) = status.signal() {
            return ExitCode::from(u8::try_from(128 + signal).unwrap_or(1));
        }
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_and_shows_env() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/a b").args(["install", "it's"]);
        assert_eq!(
            describe(&cmd),
            r"LLVM_PREFIX='/a b' cargo install 'it'\''s'"
        );
    }

    #[test]
    fn root_is_parent_of_xtask() {
        assert!(workspace_root().join("xtask").join("Cargo.toml").is_file());
    }
}
