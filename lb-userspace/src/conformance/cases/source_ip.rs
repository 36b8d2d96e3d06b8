//! §5 Source IP preservation and hairpin.

use crate::conformance::{Case, NotRun};

#[allow(dead_code)]
const SECTION: &str = "5 Source IP";

pub fn cases() -> Vec<Case> {
    vec![]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}
