//! §3 NodePort, externalIPs, type changes and the Networking granular checks (networking.go), and the kube-proxy URLs.

use crate::conformance::{Case, NotRun};

#[allow(dead_code)]
const SECTION: &str = "3 NodePort";

pub fn cases() -> Vec<Case> {
    vec![]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}
