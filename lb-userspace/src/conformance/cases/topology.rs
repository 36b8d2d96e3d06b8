//! §10 Topology hints and trafficDistribution.

use crate::conformance::{Case, NotRun};

#[allow(dead_code)]
const SECTION: &str = "10 Topology";

pub fn cases() -> Vec<Case> {
    vec![]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}
