//! §4 Session affinity (ClientIP).

use crate::conformance::{Case, NotRun};

#[allow(dead_code)]
const SECTION: &str = "4 Affinity";

pub fn cases() -> Vec<Case> {
    vec![]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}
