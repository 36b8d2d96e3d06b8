//! Endpoint churn soak, one minute (issue 9; `cargo xtask soak` runs ten):
//! the EndpointSlices of 100 Services rewritten every 100 ms through the
//! fake API server while a client pod connects to them in turn. No request
//! may fail, the agent's memory must not grow more than 5% after warm-up,
//! and conntrack and affinity occupancy must stay within their bounds (see
//! `lb_testbed::soak`). Needs root and a bpffs; LB_SKIP_PRIVILEGED=1
//! skips.

use std::time::Duration;

use lb_testbed::{privileged::require_privileged, soak};

#[test]
fn endpoint_churn_loses_no_request_and_no_memory() {
    if !require_privileged("endpoint_churn_loses_no_request_and_no_memory") {
        return;
    }
    let report = soak::run(
        lb_testbed::bins::agent(),
        &soak::Params::new(Duration::from_secs(60)),
    )
    .unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(
        report.requests > 2000 && report.slice_updates > 50_000,
        "{report}"
    );
}
