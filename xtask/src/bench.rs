//! `cargo xtask bench`: setup, release build, then the lb-testbed benchmarks.
//! Extra arguments go to `lb-testbed bench`, e.g. `--only sync
//! --sync-scales 10000` for a quick control-plane run, or `--only
//! traffic,nodeport` for the namespace traffic against kube-proxy's rule
//! sets.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;

use crate::{build, setup, testbed};

pub fn run(extra: &[OsString]) -> Result<ExitCode> {
    setup::run()?;
    build::cargo_build(true)?;
    let mut args: Vec<OsString> = vec!["bench".into()];
    // A full run's report lands in docs/, unless the caller sends it
    // elsewhere; a partial run (--only) would replace the full report with
    // one section, so it goes to target/ instead.
    let given = |flag: &str| {
        extra.iter().any(|a| {
            let a = a.to_string_lossy();
            a == flag || a.starts_with(&format!("{flag}="))
        })
    };
    if !given("--out") {
        let out = if given("--only") {
            "target/benchmarks-partial.md"
        } else {
            "docs/benchmarks.md"
        };
        args.extend(["--out".into(), out.into()]);
    }
    args.extend(extra.iter().cloned());
    testbed::run(args)
}
