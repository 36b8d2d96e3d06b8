//! Topology-aware routing end to end, on three nodes in three zones: an
//! agent per node (`--zone`), Services whose EndpointSlices carry the zone
//! hints the EndpointSlice controller writes for trafficDistribution
//! PreferClose, backends in zones a and b only, a client pod on every node.
//! Mirrors upstream "Traffic Distribution ... PreferClose" (clients in a
//! zone with endpoints get 10 consecutive answers from their zone; a client
//! in a zone without one gets 10 consecutive answers from anywhere) and
//! "Topology Hints" (hints followed within ~2 min of being set; here within
//! seconds). Needs root and a bpffs; LB_SKIP_PRIVILEGED=1 skips.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use lb_testbed::{
    agent::AgentProcess,
    client::{Client, DEFAULT_TIMEOUT},
    multinode::MultiNodeTopology,
    privileged::require_privileged,
    scratch::ScratchDir,
    servers::{Servers, TCP_PORT},
    wait_until,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// Upstream's count of consecutive answers.
const CONSECUTIVE: usize = 10;

/// The Service and its slice: the pods of nodes a and b, each hinted for
/// its node's zone when `hinted` (PreferClose), without hints otherwise
/// (the controller removes them when trafficDistribution is unset).
fn manifests(topo: &MultiNodeTopology, hinted: bool) -> String {
    let mut endpoints = String::new();
    for (node, zone) in ZONES.iter().enumerate().take(2) {
        for pod in topo.pods(node) {
            endpoints += &format!(
                "  - addresses: [\"{}\"]\n    nodeName: {}\n    zone: {zone}\n",
                pod.ip,
                topo.node_name(node),
            );
            if hinted {
                endpoints += &format!("    hints: {{forZones: [{{name: {zone}}}]}}\n");
            }
        }
    }
    let distribution = if hinted {
        "  trafficDistribution: PreferClose\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: zonal, namespace: default}}\nspec:\n  clusterIP: {VIP}\n{distribution}  ports:\n  - {{name: http, port: 80, protocol: TCP}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: zonal-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: zonal}}\naddressType: IPv4\nports:\n  - {{name: http, port: {TCP_PORT}, protocol: TCP}}\nendpoints:\n{endpoints}"
    )
}

fn start_agent(topo: &MultiNodeTopology, i: usize, manifests: &Path) -> AgentProcess {
    AgentProcess::start(
        lb_testbed::bins::agent(),
        topo.node(i),
        manifests,
        &topo.pod_interfaces(),
        &["--node-name", topo.node_name(i), "--zone", ZONES[i]],
    )
    .unwrap()
}

/// Answers per node letter (the first letter of the answering pod's name)
/// to `n` consecutive connections; panics on any failure.
fn zones_answering(client: &Client, n: usize) -> BTreeMap<char, usize> {
    let mut by = BTreeMap::new();
    for r in client.tcp_requests(VIP, 80, n, DEFAULT_TIMEOUT).unwrap() {
        let reply = r.unwrap_or_else(|e| panic!("request to {VIP}:80 failed: {e}"));
        let letter = reply.backend.chars().next().expect("pod name");
        *by.entry(letter).or_default() += 1;
    }
    by
}

#[test]
fn prefer_close_keeps_traffic_in_zone_and_falls_back_cluster_wide() {
    if !require_privileged("prefer_close_keeps_traffic_in_zone_and_falls_back_cluster_wide") {
        return;
    }
    let topo = MultiNodeTopology::create(3, 2).unwrap();
    let _servers = Servers::start(topo.all_pods()).unwrap();
    let scratch = ScratchDir::new().unwrap();
    let file = scratch.path().join("zonal.yaml");
    std::fs::write(&file, manifests(&topo, true)).unwrap();
    let mut agents: Vec<AgentProcess> = (0..3)
        .map(|i| start_agent(&topo, i, scratch.path()))
        .collect();
    for (i, agent) in agents.iter_mut().enumerate() {
        let client = Client::new(topo.client_pod(i));
        agent
            .wait_ready(Duration::from_secs(15), || {
                client
                    .tcp_request(VIP, 80, DEFAULT_TIMEOUT)
                    .is_ok_and(|r| r.is_ok())
            })
            .unwrap();
    }

    // Zones with endpoints: every answer from the client's own zone.
    for (i, letter) in [(0, 'a'), (1, 'b')] {
        let by = zones_answering(&Client::new(topo.client_pod(i)), 3 * CONSECUTIVE);
        println!("client in {}: {by:?}", ZONES[i]);
        assert_eq!(
            by.keys().copied().collect::<Vec<_>>(),
            [letter],
            "client in {} reached other zones: {by:?}",
            ZONES[i]
        );
    }
    // Zone c has none: cluster-wide, every connection answered, by both
    // zones (30 connections all in one zone by chance: 2 * 2^-30).
    let by = zones_answering(&Client::new(topo.client_pod(2)), 3 * CONSECUTIVE);
    println!("client in {}: {by:?}", ZONES[2]);
    assert_eq!(
        by.keys().copied().collect::<Vec<_>>(),
        ['a', 'b'],
        "client in zone c: {by:?}"
    );

    // trafficDistribution removed: the hints go, and zone a's client is
    // balanced over both zones again.
    std::fs::write(&file, manifests(&topo, false)).unwrap();
    let changed = Instant::now();
    let client_a = Client::new(topo.client_pod(0));
    let spread = wait_until(changed + Duration::from_secs(10), || {
        zones_answering(&client_a, 2 * CONSECUTIVE).len() == 2
    });
    assert!(
        spread,
        "zone a still pinned 10 s after the hints were removed"
    );
    println!("hints removed: cluster-wide within {:?}", changed.elapsed());

    // And set again: back to its own zone (10 consecutive, as upstream).
    std::fs::write(&file, manifests(&topo, true)).unwrap();
    let changed = Instant::now();
    let zonal = wait_until(changed + Duration::from_secs(10), || {
        zones_answering(&client_a, CONSECUTIVE)
            .keys()
            .eq(['a'].iter())
    });
    assert!(zonal, "zone a not zonal 10 s after hints were set");
    println!("hints set: zonal within {:?}", changed.elapsed());
    for agent in &mut agents {
        agent.stop().unwrap();
    }
}
