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
    if !status.success() || !args.is_empty() {
        return Ok(cmd::exit_code(status));
    }
    // The core end-to-end suites again with TC attached through netlink
    // (clsact + cls_bpf), the path kernels before 6.6 take: this kernel
    // would otherwise only ever run tcx links.
    println!("test: the core end-to-end suites again with LB_TC_ATTACH=netlink");
    let mut netlink = cmd::cargo()?;
    netlink
        .env("LB_TC_ATTACH", "netlink")
        .args(["test", "-p", "lb-testbed"]);
    for suite in NETLINK_SUITES {
        netlink.args(["--test", suite]);
    }
    let status = cmd::status(&mut netlink).context("running the netlink TC suites")?;
    Ok(cmd::exit_code(status))
}

/// The end-to-end suites run a second time with netlink TC attachment:
/// serving, refusals, adoption by a restarted agent, and `--cleanup`.
const NETLINK_SUITES: [&str; 4] = [
    "e2e_clusterip",
    "e2e_reject",
    "e2e_offloads",
    "e2e_operability",
];

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
