//! Project tasks for the lb workspace, run as `cargo xtask <command>`.
//!
//! Deliberately light (anyhow + clap only) so it builds on stable before
//! `cargo xtask setup` has installed the eBPF toolchain.

mod bench;
mod build;
mod cmd;
mod conformance;
mod demo;
mod setup;
mod test;
mod testbed;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Project tasks: setup, build, test, demo, bench, conformance, fuzz, soak.
#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check and install what building and testing need (idempotent).
    ///
    /// Checks the nightly toolchain, adds its rust-src, builds bpf-linker
    /// against the nightly's LLVM, installs the apt packages the tests use and
    /// mounts bpffs at /sys/fs/bpf. The last two need root and are skipped
    /// (and reported) otherwise.
    Setup,
    /// Run setup, then `cargo build --bins` for the default members.
    Build {
        /// Build with optimisations (`--release`).
        #[arg(long)]
        release: bool,
    },
    /// Run setup, then `cargo test` for the default members.
    ///
    /// Privileged tests need root and bpffs; set LB_SKIP_PRIVILEGED=1 to skip
    /// them. Exits with cargo test's exit code.
    Test {
        /// Extra arguments for `cargo test`, e.g. `-- some_test -- --nocapture`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run setup, build release binaries, then `lb-testbed demo` on examples/.
    Demo {
        /// Extra arguments for `lb-testbed demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run setup, build release binaries, then `lb-testbed bench`.
    ///
    /// Writes the results to docs/benchmarks.md.
    Bench {
        /// Extra arguments for `lb-testbed bench`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run setup, build release binaries, then the upstream Service e2e
    /// scenarios (`lb-testbed conformance`).
    ///
    /// Writes the table to docs/conformance.md; `--all` adds the slow
    /// scenarios, `--only ID,...` runs some (report in target/).
    Conformance {
        /// Extra arguments for `lb-testbed conformance`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run setup, build release binaries, then `lb-testbed soak`: endpoint
    /// churn for 10 minutes (`--duration-secs N` for another length).
    Soak {
        /// Extra arguments for `lb-testbed soak`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run setup, build release binaries, then `lb-testbed fuzz`: the
    /// datapath fuzzed through BPF_PROG_TEST_RUN.
    ///
    /// E.g. `cargo xtask fuzz --packets 1000000 --seed 7`.
    Fuzz {
        /// Extra arguments for `lb-testbed fuzz`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(err) => {
            // No backtrace: the context chain names the failing step.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Task::Build { release } => build::run(release).map(|()| ExitCode::SUCCESS),
        Task::Test { args } => test::run(&args),
        Task::Demo { args } => demo::run(&args),
        Task::Bench { args } => bench::run(&args),
        Task::Conformance { args } => conformance::run(&args),
        Task::Fuzz { args } => testbed_task("fuzz", args),
        Task::Soak { args } => testbed_task("soak", args),
    }
}

/// Setup, a release build, then `lb-testbed <command> <args>`.
fn testbed_task(command: &str, args: Vec<OsString>) -> Result<ExitCode> {
    setup::run()?;
    build::cargo_build(true)?;
    let mut all: Vec<OsString> = vec![command.into()];
    all.extend(args);
    testbed::run(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_args(argv: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from(argv).unwrap();
        match cli.command {
            Task::Test { args } => args.into_iter().map(|a| a.into_string().unwrap()).collect(),
            _ => panic!("not the test command"),
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_extra_args_through() {
        assert!(test_args(&["xtask", "test"]).is_empty());
        assert_eq!(
            test_args(&["xtask", "test", "--", "--nocapture"]),
            ["--nocapture"]
        );
        assert_eq!(
            test_args(&["xtask", "test", "--", "filter", "--", "--nocapture"]),
            ["filter", "--", "--nocapture"]
        );
        assert_eq!(
            test_args(&["xtask", "test", "filter", "--", "--nocapture"]),
            ["filter", "--", "--nocapture"]
        );
        assert_eq!(
            test_args(&["xtask", "test", "-p", "lb-common"]),
            ["-p", "lb-common"]
        );
    }
}
