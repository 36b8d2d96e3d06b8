//! A pod's segmentation and receive offloads are what they were before the
//! agent started (`ethtool -k` on the pod's eth0 while the agent runs):
//! the default pod hook (TC) leaves them alone. `--pod-hook xdp` is checked
//! too, and turns TSO off: an XDP program on a veth makes its peer
//! segment in software, which costs pods most of their TCP throughput
//! (docs/benchmarks.md). Needs root; LB_SKIP_PRIVILEGED=1 skips.

use std::collections::BTreeMap;

use lb_testbed::{
    netns::NetNs,
    privileged::require_privileged,
    topology::ClusterIpTopology,
    web_bed::{WebBed, WEB_YAML},
};

/// The offloads a pod's TCP throughput rests on.
const FEATURES: [&str; 4] = [
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
    "generic-receive-offload",
    "tx-checksumming",
];

/// `feature -> "on"/"off"` for [`FEATURES`] of `eth0` in `ns`.
fn offloads(ns: &NetNs) -> BTreeMap<String, String> {
    let out = ns.exec(["ethtool", "-k", "eth0"]).expect("ethtool -k eth0");
    out.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let state = value.split_whitespace().next()?;
            FEATURES
                .contains(&name.trim())
                .then(|| (name.trim().to_string(), state.to_string()))
        })
        .collect()
}

/// The client pod's offloads before the agent, and while it serves.
fn offloads_before_and_during(agent_args: &[&str]) -> [BTreeMap<String, String>; 2] {
    let topo = ClusterIpTopology::create(3).unwrap();
    let before = offloads(&topo.client().ns);
    assert_eq!(before.len(), FEATURES.len(), "{before:?}");
    let mut bed = WebBed::start_on(
        topo,
        lb_testbed::bins::agent(),
        &[("web.yaml", WEB_YAML)],
        agent_args,
    )
    .unwrap();
    let during = offloads(&bed.topo.client().ns);
    assert!(bed.agent.exited().is_none(), "{}", bed.agent.log());
    [before, during]
}

#[test]
fn tc_pod_hook_leaves_pod_offloads_alone() {
    if !require_privileged("tc_pod_hook_leaves_pod_offloads_alone") {
        return;
    }
    let [before, during] = offloads_before_and_during(&[]);
    assert_eq!(before["tcp-segmentation-offload"], "on", "{before:?}");
    assert_eq!(during, before, "offloads changed while the agent runs");
}

/// The reason TC is the default: the same check fails with XDP.
#[test]
fn xdp_pod_hook_turns_pod_tso_off() {
    if !require_privileged("xdp_pod_hook_turns_pod_tso_off") {
        return;
    }
    let [before, during] = offloads_before_and_during(&["--pod-hook", "xdp"]);
    assert_eq!(before["tcp-segmentation-offload"], "on", "{before:?}");
    assert_eq!(during["tcp-segmentation-offload"], "off", "{during:?}");
}
