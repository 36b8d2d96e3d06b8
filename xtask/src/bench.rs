//! `cargo xtask bench`: setup, release build, then the lb-testbed benchmarks.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;

use crate::{build, setup, testbed};

pub fn run(extra: &[OsString]) -> Result<ExitCode> {
    setup::run()?;
    build::cargo_build(true)?;
    let mut args: Vec<OsString> = ["bench", "--out", "docs/benchmarks.md"]
        .into_iter()
        .map(OsString::from)
        .collect();
    args.extend(extra.iter().cloned());
    testbed::run(args)
}
