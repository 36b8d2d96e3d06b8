//! The dataplane cases of the upstream Kubernetes Service e2e suite
//! (`../shared/conformance/upstream-service-e2e.md`), re-expressed as
//! scenarios on our namespace clusters: each keeps the upstream check and
//! its numbers, names the case it mirrors, and reports the figure it
//! measured. Where we do better than upstream asks, the scenario asserts
//! the better figure and says so.
//!
//! `cargo xtask conformance` runs them and writes `docs/conformance.md`;
//! the fast ones also run in `cargo xtask test` (tests/conformance.rs).

pub mod cases;
pub mod cluster;
pub mod objects;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

pub use cluster::{Binaries, Cluster, ClusterSpec};

/// How long a scenario takes, which decides where it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speed {
    /// Seconds: part of `cargo xtask test`.
    Fast,
    /// Minutes (upstream's long timeouts kept): `cargo xtask conformance --all`.
    Slow,
}

/// What a passing scenario measured, for the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub figure: String,
}

impl Outcome {
    pub fn new(figure: impl Into<String>) -> Outcome {
        Outcome {
            figure: figure.into(),
        }
    }
}

/// One upstream case and our scenario for it.
pub struct Case {
    /// Our scenario's name (also the test's).
    pub id: &'static str,
    /// Section of the catalogue.
    pub section: &'static str,
    /// The upstream case, as the catalogue names it.
    pub upstream: &'static str,
    pub speed: Speed,
    pub run: fn(&Binaries) -> anyhow::Result<Outcome>,
}

/// An upstream case that cannot run here, and why.
pub struct NotRun {
    pub section: &'static str,
    pub upstream: &'static str,
    pub reason: &'static str,
}

/// Every scenario, in catalogue order.
pub fn catalogue() -> Vec<Case> {
    cases::all()
}

/// The catalogued cases no scenario runs, with the reason.
pub fn not_run() -> Vec<NotRun> {
    cases::not_run()
}

/// How one scenario went.
pub struct Ran {
    pub id: &'static str,
    pub section: &'static str,
    pub upstream: &'static str,
    pub result: Result<Outcome, String>,
    pub took: Duration,
}

/// Runs the scenario `case`, catching a panic as a failure.
pub fn run(case: &Case, bins: &Binaries) -> Ran {
    let start = Instant::now();
    let result = std::panic::catch_unwind(|| (case.run)(bins));
    let result = match result {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())),
    };
    Ran {
        id: case.id,
        section: case.section,
        upstream: case.upstream,
        result,
        took: start.elapsed(),
    }
}

/// The markdown report: the table of scenarios run, then the cases not run.
pub fn report(ran: &[Ran], not_run: &[NotRun], header: &str) -> String {
    let passed = ran.iter().filter(|r| r.result.is_ok()).count();
    let mut md = format!(
        "# Conformance: the upstream Service e2e cases, on our dataplane\n\n{header}\n\n\
         {passed} of {} scenarios passed; {} catalogued cases are not run here (reasons below).\n\n\
         | section | upstream case | our scenario | result | measured | time |\n|---|---|---|---|---|---|\n",
        ran.len(),
        not_run.len()
    );
    for r in ran {
        let (result, figure) = match &r.result {
            Ok(o) => ("pass", o.figure.clone()),
            Err(e) => ("**FAIL**", e.lines().next().unwrap_or("").to_string()),
        };
        let _ = writeln!(
            md,
            "| {} | {} | `{}` | {result} | {} | {:.1} s |",
            r.section,
            cell(r.upstream),
            r.id,
            cell(&figure),
            r.took.as_secs_f64()
        );
    }
    md.push_str("\n## Not run here\n\n| section | upstream case | why |\n|---|---|---|\n");
    for n in not_run {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            n.section,
            cell(n.upstream),
            cell(n.reason)
        );
    }
    md
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
