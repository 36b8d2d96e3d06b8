//! §8 UDP conntrack (conntrack.go).

use crate::conformance::{Case, NotRun};

#[allow(dead_code)]
const SECTION: &str = "8 UDP conntrack";

pub fn cases() -> Vec<Case> {
    vec![]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}
