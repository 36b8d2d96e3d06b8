//! `cargo xtask bench`: setup, release build, then the lb-testbed benchmarks.
//! Extra arguments go to `lb-testbed bench`, e.g. `--only sync
//! --sync-scales 10000` for a quick control-plane run.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;

use crate::{build, setup, testbed};

pub fn run(extra: &[OsString]) -> Result<ExitCode> {
    setup::run()?;
    build::cargo_build(true)?;
    let mut args: Vec<OsString> = vec!["bench".into()];
    // The report lands in docs/ unless the caller sends it elsewhere (a
    // partial run with --only would otherwise replace the full report).
    let has_out = extra.iter().any(|a| {
        let a = a.to_string_lossy();
        a == "--out" || a.starts_with("--out=")
    });
    if !has_out {
        args.extend(["--out".into(), "docs/benchmarks.md".into()]);
    }
    args.extend(extra.iter().cloned());
    testbed::run(args)
}
