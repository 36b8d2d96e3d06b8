//! §7 Terminating and unready endpoints (KEP-1669).

use crate::conformance::{Case, NotRun};

#[allow(dead_code)]
const SECTION: &str = "7 Terminating";

pub fn cases() -> Vec<Case> {
    vec![]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}
