//! `cargo xtask test`: setup, then `cargo test` for the default members.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::{cmd, setup};

pub fn run(args: &[OsString]) -> Result<ExitCode> {
    setup::run()?;
    if std::env::var_os("LB_SKIP_PRIVILEGED").is_some_and(|v| v == "1") {
        println!("test: LB_SKIP_PRIVILEGED=1; privileged tests are skipped");
    } else {
        check_privileges()?;
    }

    // Nothing is printed after cargo test: its summary ends the output.
    let status = cmd::status(cmd::cargo()?.arg("test").args(args)).context("running the tests")?;
    Ok(cmd::exit_code(status))
}

/// Warns when the privileged tests (XDP attach, namespaces, bpffs pins)
/// cannot run here; they then fail with their own message.
fn check_privileges() -> Result<()> {
    let mut problems = Vec::new();
    if !cmd::is_root() {
        problems.push("not running as root");
    }
    if !setup::bpffs_is_mounted()? {
        problems.push("no BPF filesystem is mounted at /sys/fs/bpf");
    }
    if problems.is_empty() {
        println!("test: root and bpffs present; privileged tests will run");
    } else {
        eprintln!(
            "test: WARNING: privileged tests cannot run here ({}); they will fail. \
             Run as root after `cargo xtask setup`, or set LB_SKIP_PRIVILEGED=1 to skip them.",
            problems.join("; ")
        );
    }
    Ok(())
}
