//! The fast conformance scenarios (see `lb_testbed::conformance`), one
//! test per section of the catalogue running that section's fast
//! scenarios; `cargo xtask conformance` runs them all and writes the table.
//! Needs root, a bpffs and cgroup v2; LB_SKIP_PRIVILEGED=1 skips.

use lb_testbed::conformance::{self, cases, Binaries, Case, Speed};
use lb_testbed::privileged::require_privileged;

fn bins() -> Binaries {
    Binaries {
        agent: lb_testbed::bins::agent().into(),
        testbed: env!("CARGO_BIN_EXE_lb-testbed").into(),
    }
}

/// Runs the fast scenarios of one section; fails naming every failed one.
fn run(section: &str, cases: Vec<Case>) {
    if !require_privileged(section) {
        return;
    }
    let mut failed = Vec::new();
    for case in cases.iter().filter(|c| c.speed == Speed::Fast) {
        let ran = conformance::run(case, &bins());
        match ran.result {
            Ok(o) => println!(
                "{}: pass in {:.1} s: {}",
                case.id,
                ran.took.as_secs_f64(),
                o.figure
            ),
            Err(e) => {
                println!("{}: FAIL in {:.1} s: {e}", case.id, ran.took.as_secs_f64());
                failed.push(format!("{} ({}): {e}", case.id, case.upstream));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn clusterip() {
    run("clusterip", cases::clusterip::cases());
}

#[test]
fn reject() {
    run("reject", cases::reject::cases());
}

#[test]
fn nodeport() {
    run("nodeport", cases::nodeport::cases());
}

#[test]
fn affinity() {
    run("affinity", cases::affinity::cases());
}

#[test]
fn source_ip() {
    run("source_ip", cases::source_ip::cases());
}

#[test]
fn policies() {
    run("policies", cases::policies::cases());
}

#[test]
fn terminating() {
    run("terminating", cases::terminating::cases());
}

#[test]
fn udp_conntrack() {
    run("udp_conntrack", cases::udp_conntrack::cases());
}

#[test]
fn loadbalancer() {
    run("loadbalancer", cases::loadbalancer::cases());
}

#[test]
fn topology() {
    run("topology", cases::topology::cases());
}
