//! Topology hints (trafficDistribution, topology-mode Auto): which
//! endpoints a node uses, and kube-proxy's fallbacks, each rule on its own.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::*;

const NODE: &str = "node-a";

/// A ClusterIP Service with an internal-Local and an external NodePort
/// variant chosen by the tests.
const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  trafficDistribution: PreferClose
  ports: [{name: http, port: 80, nodePort: 30080}]
"#;

const CLUSTER_IP: Frontend = Frontend {
    vip: Ipv4Addr::new(10, 96, 0, 20),
    port: 80,
    proto: Proto::Tcp,
};

const NODE_PORT: Frontend = Frontend {
    vip: NODE_PORT_VIP,
    port: 30080,
    proto: Proto::Tcp,
};

/// One endpoint line: `(last octet, node, zone hints, node hints,
/// conditions)`, as the EndpointSlice controller writes them.
struct Ep(
    u8,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static str,
);

fn slice(endpoints: &[Ep]) -> EndpointSlice {
    let mut yaml = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n",
    );
    for Ep(octet, node, zones, nodes, conditions) in endpoints {
        let zones: Vec<String> = zones.iter().map(|z| format!("{{name: {z}}}")).collect();
        let nodes: Vec<String> = nodes.iter().map(|n| format!("{{name: {n}}}")).collect();
        let mut hints = Vec::new();
        if !zones.is_empty() {
            hints.push(format!("forZones: [{}]", zones.join(", ")));
        }
        if !nodes.is_empty() {
            hints.push(format!("forNodes: [{}]", nodes.join(", ")));
        }
        yaml += &format!("  - {{addresses: [10.244.0.{octet}], nodeName: {node}");
        if !hints.is_empty() {
            yaml += &format!(", hints: {{{}}}", hints.join(", "));
        }
        if !conditions.is_empty() {
            yaml += &format!(", conditions: {{{conditions}}}");
        }
        yaml += "}\n";
    }
    serde_yaml::from_str(&yaml).unwrap()
}

fn index(service: &str, slice: &EndpointSlice, zone: Option<&str>) -> DesiredIndex {
    let service: Service = serde_yaml::from_str(service).unwrap();
    let mut index = DesiredIndex::new(Some(NODE.into()));
    index.set_zone(zone.map(str::to_owned));
    index.replace_slices([(slice, None)]);
    index.replace_services([(&service, None)]);
    index
}

/// Last octets of the backends of `frontend`.
fn octets(index: &DesiredIndex, frontend: Frontend) -> Vec<u8> {
    let wanted = &index.desired().frontends[&frontend];
    wanted.backends.iter().map(|b| b.ip.octets()[3]).collect()
}

const READY: &str = "";
const TERMINATING: &str = "ready: false, serving: true, terminating: true";

/// Endpoints in zones a (.1 here, .2 on node-b), b (.3) and c (.4), each
/// hinted for its own zone, as PreferClose makes the controller write them.
fn zonal() -> EndpointSlice {
    slice(&[
        Ep(1, "node-a", &["a"], &[], READY),
        Ep(2, "node-b", &["a"], &[], READY),
        Ep(3, "node-c", &["b"], &[], READY),
        Ep(4, "node-d", &["c"], &[], READY),
    ])
}

#[test]
fn zone_hints_keep_traffic_in_the_nodes_zone() {
    let index = index(SVC, &zonal(), Some("a"));
    assert_eq!(octets(&index, CLUSTER_IP), [1, 2]);
    // kube-proxy applies hints to every cluster-wide frontend, NodePorts
    // with externalTrafficPolicy Cluster included.
    assert_eq!(octets(&index, NODE_PORT), [1, 2]);
}

#[test]
fn a_zone_without_hinted_endpoints_falls_back_cluster_wide() {
    let index = index(SVC, &zonal(), Some("d"));
    assert_eq!(octets(&index, CLUSTER_IP), [1, 2, 3, 4]);
}

#[test]
fn a_node_without_zone_ignores_zone_hints() {
    let index = index(SVC, &zonal(), None);
    assert_eq!(octets(&index, CLUSTER_IP), [1, 2, 3, 4]);
}

#[test]
fn one_ready_endpoint_without_hints_disables_them() {
    // The controller is part-way through: trusting partial hints could
    // overload the hinted endpoints.
    let partial = slice(&[
        Ep(1, "node-a", &["a"], &[], READY),
        Ep(3, "node-c", &["b"], &[], READY),
        Ep(5, "node-e", &[], &[], READY),
    ]);
    let index = index(SVC, &partial, Some("a"));
    assert_eq!(octets(&index, CLUSTER_IP), [1, 3, 5]);
}

#[test]
fn unready_endpoints_without_hints_do_not_disable_them() {
    let with_unready = slice(&[
        Ep(1, "node-a", &["a"], &[], READY),
        Ep(3, "node-c", &["b"], &[], READY),
        Ep(5, "node-e", &[], &[], "ready: false"),
    ]);
    let index = index(SVC, &with_unready, Some("a"));
    assert_eq!(octets(&index, CLUSTER_IP), [1]);
}

#[test]
fn node_hints_win_over_zone_hints() {
    // PreferSameNode: the controller writes both; this node's own
    // endpoint is used, not the rest of the zone.
    let same_node = slice(&[
        Ep(1, "node-a", &["a"], &["node-a"], READY),
        Ep(2, "node-b", &["a"], &["node-b"], READY),
        Ep(3, "node-c", &["b"], &["node-c"], READY),
    ]);
    let index = index(SVC, &same_node, Some("a"));
    assert_eq!(octets(&index, CLUSTER_IP), [1]);
}

#[test]
fn no_endpoint_for_this_node_falls_back_to_the_zone() {
    let elsewhere = slice(&[
        Ep(2, "node-b", &["a"], &["node-b"], READY),
        Ep(3, "node-c", &["b"], &["node-c"], READY),
    ]);
    let index = index(SVC, &elsewhere, Some("a"));
    assert_eq!(octets(&index, CLUSTER_IP), [2]);
}

#[test]
fn terminating_fallback_keeps_the_topology() {
    let draining = slice(&[
        Ep(1, "node-a", &["a"], &[], TERMINATING),
        Ep(3, "node-c", &["b"], &[], TERMINATING),
    ]);
    // No ready endpoint decides a mode: kube-proxy then uses every
    // serving-and-terminating endpoint.
    let index = index(SVC, &draining, Some("a"));
    assert_eq!(octets(&index, CLUSTER_IP), [1, 3]);

    let mixed = slice(&[
        Ep(1, "node-a", &["a"], &[], TERMINATING),
        Ep(3, "node-c", &["b"], &[], READY),
    ]);
    // Zone a has no ready endpoint, so the mode is cluster-wide: the ready
    // one in zone b serves, the terminating one in zone a is not needed.
    let index = self::index(SVC, &mixed, Some("a"));
    assert_eq!(octets(&index, CLUSTER_IP), [3]);
}

#[test]
fn traffic_policy_local_ignores_hints() {
    let local = SVC.replace(
        "  trafficDistribution: PreferClose\n",
        "  internalTrafficPolicy: Local\n  externalTrafficPolicy: Local\n",
    );
    let hinted_away = slice(&[
        Ep(1, "node-a", &["b"], &[], READY),
        Ep(2, "node-b", &["a"], &[], READY),
    ]);
    let index = index(&local, &hinted_away, Some("a"));
    assert_eq!(octets(&index, CLUSTER_IP), [1]);
    assert_eq!(octets(&index, NODE_PORT), [1]);
}

#[test]
fn a_zone_change_recomputes_every_service() {
    let mut index = index(SVC, &zonal(), Some("a"));
    index.clear_changed();
    index.set_zone(Some("b".into()));
    assert_eq!(octets(&index, CLUSTER_IP), [3]);
    assert!(index.changed_services().iter().any(|s| s.name == "web"));
    index.set_zone(None);
    assert_eq!(octets(&index, CLUSTER_IP), [1, 2, 3, 4]);
}
