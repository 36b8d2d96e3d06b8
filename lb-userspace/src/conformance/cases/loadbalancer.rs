//! §9 LoadBalancer frontends (ingress IPs written into the Service status, as a cloud controller would).

use crate::conformance::{Case, NotRun};

#[allow(dead_code)]
const SECTION: &str = "9 LoadBalancer";

pub fn cases() -> Vec<Case> {
    vec![]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}
