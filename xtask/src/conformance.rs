//! `cargo xtask conformance`: setup, release build, then `lb-testbed
//! conformance`, which runs the upstream Service e2e scenarios and writes
//! docs/conformance.md (a partial run with --only goes to target/).

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;

use crate::{build, setup, testbed};

pub fn run(extra: &[OsString]) -> Result<ExitCode> {
    setup::run()?;
    build::cargo_build(true)?;
    let mut args: Vec<OsString> = vec!["conformance".into()];
    let given = |flag: &str| {
        extra.iter().any(|a| {
            let a = a.to_string_lossy();
            a == flag || a.starts_with(&format!("{flag}="))
        })
    };
    if !given("--out") {
        let out = if given("--only") {
            "target/conformance-partial.md"
        } else {
            "docs/conformance.md"
        };
        args.extend(["--out".into(), out.into()]);
    }
    args.extend(extra.iter().cloned());
    testbed::run(args)
}
