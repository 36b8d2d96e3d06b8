//! Running a rule-loading tool (`iptables-restore`, `nft`) inside a node
//! namespace, timed, with a deadline: at 100k Services kube-proxy's rule
//! sets can take minutes to load, and the report says so instead of
//! waiting forever.

use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::netns::NetNs;

/// How a timed command ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Timed {
    Done(Duration),
    /// Killed at the deadline.
    TimedOut(Duration),
}

/// Runs `program args... <file>` in `node`; fails if it exits non-zero.
pub fn run_file(node: &NetNs, program: &str, args: &[&str], file: &Path) -> Result<()> {
    match timed(node, program, args, file, Duration::from_secs(600))? {
        Timed::Done(_) => Ok(()),
        Timed::TimedOut(t) => bail!("{program} did not finish in {t:?}"),
    }
}

/// Runs `program args... <file>` in `node` and times it from spawn to
/// exit; kills it after `deadline`.
pub fn timed(
    node: &NetNs,
    program: &str,
    args: &[&str],
    file: &Path,
    deadline: Duration,
) -> Result<Timed> {
    let start = Instant::now();
    let mut child = node
        .command(program)?
        .args(args)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} in {}", node.name()))?;
    loop {
        if let Some(status) = child.try_wait()? {
            let took = start.elapsed();
            if !status.success() {
                let out = child.wait_with_output()?;
                bail!(
                    "{program} {} {} in {} failed ({status}): {}",
                    args.join(" "),
                    file.display(),
                    node.name(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            return Ok(Timed::Done(took));
        }
        if start.elapsed() > deadline {
            child
                .kill()
                .context("killing a rule loader past its deadline")?;
            child.wait()?;
            return Ok(Timed::TimedOut(start.elapsed()));
        }
        thread::sleep(Duration::from_micros(200));
    }
}
