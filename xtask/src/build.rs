//! `cargo xtask build`: setup, then build the default members' binaries.

use anyhow::{Context as _, Result};

use crate::{cmd, setup};

pub fn run(release: bool) -> Result<()> {
    setup::run()?;
    cargo_build(release)
}

/// `cargo build [--release] --bins` for the default workspace members.
pub fn cargo_build(release: bool) -> Result<()> {
    let mut cargo = cmd::cargo()?;
    cargo.arg("build");
    if release {
        cargo.arg("--release");
    }
    cargo.arg("--bins");
    cmd::run(&mut cargo).context("building the workspace binaries")
}
