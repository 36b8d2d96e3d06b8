//! TC through netlink (`--tc-attach netlink`, what kernels 5.15 to 6.5
//! get): the pod programs sit as cls_bpf filters in direct-action mode at
//! our priority and handle, serve, survive a `kill -9`, are adopted in
//! place by the restarted agent, and go away on a clean exit with
//! `--unpin-on-exit`. Needs root; LB_SKIP_PRIVILEGED=1 skips.

use std::time::{Duration, Instant};

use lb_agent::ebpf::{TC_NL_HANDLE, TC_NL_PRIORITY};
use lb_testbed::{
    client::{Client, DEFAULT_TIMEOUT},
    netns::NetNs,
    privileged::require_privileged,
    wait_until,
    web_bed::{WebBed, WEB_YAML},
    WEB_TCP_PORT, WEB_VIP,
};

/// `tc filter show` of one hook: the lines of BPF filters (a priority's
/// own header line has no handle).
fn bpf_filters(node: &NetNs, ifname: &str, hook: &str) -> Vec<String> {
    let out = node
        .exec(["tc", "filter", "show", "dev", ifname, hook])
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.contains(" bpf ") && l.contains(" handle "))
        .map(str::to_owned)
        .collect()
}

/// Exactly one filter on the hook: ours, program `prog`, direct-action.
fn assert_ours(node: &NetNs, ifname: &str, hook: &str, prog: &str) {
    let filters = bpf_filters(node, ifname, hook);
    assert_eq!(filters.len(), 1, "{ifname} {hook}: {filters:?}");
    let f = &filters[0];
    let handle = format!("handle 0x{TC_NL_HANDLE:x}");
    assert!(
        f.contains(&format!("pref {TC_NL_PRIORITY} "))
            && f.contains(&handle)
            && f.contains(prog)
            && f.contains("direct-action"),
        "{ifname} {hook}: {f}"
    );
}

#[test]
fn netlink_filters_serve_survive_kill9_are_adopted_and_detached() {
    if !require_privileged("netlink_filters_serve_survive_kill9_are_adopted_and_detached") {
        return;
    }
    let mut bed = WebBed::start(
        lb_testbed::bins::agent(),
        &[("web.yaml", WEB_YAML)],
        &["--tc-attach", "netlink"],
    )
    .unwrap();
    let client = Client::new(bed.topo.client());
    let answered = || {
        client
            .tcp_requests(WEB_VIP, WEB_TCP_PORT, 5, DEFAULT_TIMEOUT)
            .is_ok_and(|rs| rs.iter().all(|r| r.is_ok()))
    };
    let (node, agent) = (bed.topo.node(), &mut bed.agent);
    let ifname = bed.topo.client().host_if.clone();
    agent
        .wait_ready(Duration::from_secs(15), answered)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    assert_ours(node, &ifname, "ingress", "lb_tc_pod_ingress");
    assert_ours(node, &ifname, "egress", "lb_tc_egress");
    assert!(
        node.exec(["bpftool", "link", "list"])
            .is_ok_and(|out| !out.contains("tcx")),
        "no tcx link with netlink attachment"
    );

    // No agent: the filters keep serving.
    agent.kill9().unwrap();
    assert!(answered(), "the filters must serve without an agent");

    // The restarted agent swaps its programs into the same filters.
    let before = bpf_filters(node, &ifname, "ingress");
    agent.restart(node).unwrap();
    let log = || agent.log();
    let adopted = wait_until(Instant::now() + Duration::from_secs(15), || {
        log()
            .split("lb-agent restarted")
            .nth(1)
            .is_some_and(|l| l.contains("adopted the attached programs"))
    });
    assert!(adopted, "not adopted\n{}", agent.log());
    let restarted = agent.log();
    assert!(
        !restarted.contains("attaching anew") && !restarted.contains("attach failed"),
        "{restarted}"
    );
    assert_ours(node, &ifname, "ingress", "lb_tc_pod_ingress");
    assert_ours(node, &ifname, "egress", "lb_tc_egress");
    assert_ne!(
        bpf_filters(node, &ifname, "ingress"),
        before,
        "a new program (id) in the filter"
    );
    assert!(answered(), "serving after the restart");

    // A clean exit with --unpin-on-exit removes the filters.
    let status = agent.terminate().unwrap();
    assert!(status.success(), "{status}\n{}", agent.log());
    for hook in ["ingress", "egress"] {
        let left = bpf_filters(node, &ifname, hook);
        assert!(left.is_empty(), "{hook} filters left: {left:?}");
    }
}
