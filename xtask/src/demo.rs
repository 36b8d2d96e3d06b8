//! `cargo xtask demo`: setup, release build, then the lb-testbed demo.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::{build, setup, testbed};

pub fn run(extra: &[OsString]) -> Result<ExitCode> {
    setup::run()?;
    build::cargo_build(true)?;
    let mut args = vec![OsString::from("demo")];
    args.extend(testbed::path_arg(
        "--agent",
        testbed::release_bin("lb-agent")?,
    ));
    args.extend(testbed::path_arg("--lbctl", testbed::release_bin("lbctl")?));
    args.extend(testbed::path_arg("--manifests", PathBuf::from("examples")));
    args.extend(extra.iter().cloned());
    testbed::run(args)
}
