//! §6 Internal and external traffic policies, health check node port.

use crate::conformance::{Case, NotRun};

#[allow(dead_code)]
const SECTION: &str = "6 Policies";

pub fn cases() -> Vec<Case> {
    vec![]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}
