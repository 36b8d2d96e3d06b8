//! §5 Source IP preservation and hairpin.
//!
//! The echo servers answer with the peer address they saw, which is
//! upstream's `/clientip`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};

use super::policies::{names, route_lb, seen_ips, with_ingress};
use crate::client::Transport;
use crate::conformance::cluster::eventually;
use crate::conformance::objects::{dns, http, service, slice, Endpoint, DNS, HTTP};
use crate::conformance::{Binaries, Case, Cluster, ClusterSpec, NotRun, Outcome, Speed};

const SECTION: &str = "5 Source IP";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 5, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 205);
const NODE_PORT: u16 = 30510;
const HC_PORT: u16 = 30511;
const REQUESTS: usize = 10;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "source_ip_preserved_through_clusterip",
            section: SECTION,
            upstream: "should preserve source pod IP for traffic thru service cluster IP [LinuxOnly] (pods on 2 nodes, /clientip == pod IP)",
            speed: Speed::Fast,
            run: preserved_through_clusterip,
        },
        Case {
            id: "hairpin_through_own_service",
            section: SECTION,
            upstream: "should allow pods to hairpin back to themselves through services (the only backend reaches its own ClusterIP)",
            speed: Speed::Fast,
            run: hairpin,
        },
        Case {
            id: "esipp_nodeport_local_keeps_client_ip",
            section: SECTION,
            upstream: "ESIPP [Slow] should work for type=NodePort (eTP=Local: via each node with an endpoint, /clientip == test pod IP)",
            speed: Speed::Fast,
            run: esipp_nodeport,
        },
        Case {
            id: "esipp_lb_local_keeps_client_ip",
            section: SECTION,
            upstream: "ESIPP [Slow] should work for type=LoadBalancer (eTP=Local: /clientip via the LB not a node address)",
            speed: Speed::Fast,
            run: esipp_lb,
        },
        Case {
            id: "esipp_cluster_snats_to_node",
            section: SECTION,
            upstream: "ESIPP off (eTP=Cluster): traffic through a node without endpoints is SNATed, the backend sees a node address",
            speed: Speed::Fast,
            run: cluster_snats,
        },
        Case {
            id: "esipp_pod_to_lb_ip_keeps_pod_ip",
            section: SECTION,
            upstream: "ESIPP [Slow] should work from pods (pod -> LB ingress IP, /clientip == pod IP), endpoint on the pod's node",
            speed: Speed::Fast,
            run: |bins| pod_to_lb(bins, 0),
        },
        Case {
            id: "esipp_pod_to_lb_ip_from_node_without_endpoint",
            section: SECTION,
            upstream: "ESIPP [Slow] should work from pods (pod -> LB ingress IP, /clientip == pod IP), pod on a node without an endpoint: kube-proxy sends pods through the cluster policy",
            speed: Speed::Fast,
            run: |bins| pod_to_lb(bins, 1),
        },
    ]
}

pub fn not_run() -> Vec<NotRun> {
    Vec::new()
}

/// One TCP and one UDP port to the echo servers.
fn ports() -> [crate::conformance::objects::Port; 2] {
    [http(80), dns(53)]
}

/// Upstream: client pods on 2 nodes ask the backend (on one of them) for
/// /clientip through the ClusterIP; it must be the client pod's IP. TCP as
/// upstream, and UDP too.
fn preserved_through_clusterip(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let backend = &cluster.topo.pods(1)[0];
    cluster.apply(&service("srcip", "ClusterIP", VIP, &ports(), ""))?;
    cluster.apply(&slice(
        "srcip-1",
        "srcip",
        &[HTTP, DNS],
        &[Endpoint::ready(backend, cluster.topo.node_name(1))],
    ))?;
    eventually("the Service answers", Duration::from_secs(10), || {
        matches!(
            cluster
                .from_pod(
                    cluster.topo.client_pod(0),
                    Transport::Tcp,
                    SocketAddr::from((VIP, 80)),
                    1
                )
                .as_deref(),
            Ok([Ok(_)])
        )
    })?;
    let mut checked = 0;
    for node in 0..2 {
        let client = cluster.topo.client_pod(node);
        for (transport, port) in [(Transport::Tcp, 80), (Transport::Udp, 53)] {
            let results =
                cluster.from_pod(client, transport, SocketAddr::from((VIP, port)), REQUESTS)?;
            let seen =
                seen_ips(&results).with_context(|| format!("{} {transport:?}", client.name))?;
            ensure!(
                seen == BTreeSet::from([client.ip]),
                "{} ({}) {transport:?}: backend saw {seen:?}",
                client.name,
                client.ip
            );
            checked += results.len();
        }
    }
    Ok(Outcome::new(format!(
        "{checked}/{checked} requests (TCP and UDP, client pods on the backend's node and the other) seen from the client pod's own IP"
    )))
}

/// Upstream: the Service's only backend reaches it by name and ClusterIP
/// (no DNS here: the ClusterIP). TCP as upstream, and UDP too.
fn hairpin(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let pod = &cluster.topo.pods(0)[0];
    cluster.apply(&service("hairpin", "ClusterIP", VIP, &ports(), ""))?;
    cluster.apply(&slice(
        "hairpin-1",
        "hairpin",
        &[HTTP, DNS],
        &[Endpoint::ready(pod, cluster.topo.node_name(0))],
    ))?;
    eventually("the pod reaches itself", Duration::from_secs(10), || {
        matches!(
            cluster
                .from_pod(pod, Transport::Tcp, SocketAddr::from((VIP, 80)), 1)
                .as_deref(),
            Ok([Ok(_)])
        )
    })?;
    let mut seen = BTreeSet::new();
    for (transport, port) in [(Transport::Tcp, 80), (Transport::Udp, 53)] {
        let results = cluster.from_pod(pod, transport, SocketAddr::from((VIP, port)), REQUESTS)?;
        let by = names(&results).with_context(|| format!("{transport:?}"))?;
        ensure!(
            by.iter().all(|n| *n == pod.name),
            "{transport:?} answered by {by:?}"
        );
        seen.extend(seen_ips(&results)?);
    }
    Ok(Outcome::new(format!(
        "{}/{} (TCP and UDP) answered by the pod itself through its ClusterIP, seen from {seen:?} (the node: hairpin SNAT)",
        2 * REQUESTS,
        2 * REQUESTS
    )))
}

/// An externally reachable Service with one endpoint on each node.
fn external_service(cluster: &Cluster, type_: &str, local: bool) -> Result<()> {
    let mut extra = if local {
        "  externalTrafficPolicy: Local\n".to_string()
    } else {
        "  externalTrafficPolicy: Cluster\n".to_string()
    };
    if local && type_ == "LoadBalancer" {
        extra += &format!("  healthCheckNodePort: {HC_PORT}\n");
    }
    let mut yaml = service(
        "esipp",
        type_,
        VIP,
        &[http(80).node_port(NODE_PORT)],
        &extra,
    );
    if type_ == "LoadBalancer" {
        yaml = with_ingress(&yaml, LB_IP);
    }
    cluster.apply(&yaml)
}

/// Upstream (type=NodePort, eTP=Local): for each node with an endpoint,
/// /clientip through nodeIP:nodePort from a test pod is the pod's IP. Here
/// both nodes have one; the test pod is on node-a. We add the external
/// client through both nodes: its own address too.
fn esipp_nodeport(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let topo = &cluster.topo;
    external_service(&cluster, "NodePort", true)?;
    cluster.apply(&slice(
        "esipp-1",
        "esipp",
        &[HTTP],
        &[
            Endpoint::ready(&topo.pods(0)[0], topo.node_name(0)),
            Endpoint::ready(&topo.pods(1)[0], topo.node_name(1)),
        ],
    ))?;
    let pod = topo.client_pod(0);
    let external = topo.external_client();
    let mut figures = Vec::new();
    for node in 0..2 {
        let to = SocketAddr::from((topo.node_ip(node), NODE_PORT));
        eventually("the nodePort answers", Duration::from_secs(10), || {
            matches!(
                cluster.from_pod(pod, Transport::Tcp, to, 1).as_deref(),
                Ok([Ok(_)])
            )
        })?;
        let results = cluster.from_pod(pod, Transport::Tcp, to, REQUESTS)?;
        let seen = seen_ips(&results)?;
        ensure!(
            seen == BTreeSet::from([pod.ip]),
            "test pod via {to}: seen {seen:?}"
        );
        // Through another node's NodePort the pod is an external client
        // there, held to that node's endpoint; through its own node's, it
        // may reach any endpoint (kube-proxy sends pods through the
        // cluster policy; upstream leaves this path untested).
        if node != 0 {
            only_local(&results, &topo.pods(node)[0].name, "test pod", to)?;
        }
        let results = cluster.from_outside(Transport::Tcp, to, REQUESTS)?;
        let seen = seen_ips(&results)?;
        ensure!(
            seen == BTreeSet::from([external.ip]),
            "external client via {to}: seen {seen:?}"
        );
        only_local(&results, &topo.pods(node)[0].name, "external client", to)?;
        figures.push(format!("node-{}", ["a", "b"][node]));
    }
    Ok(Outcome::new(format!(
        "via {}: {REQUESTS}/{REQUESTS} from the test pod seen as its own IP and {REQUESTS}/{REQUESTS} from the external client as its own IP, served by the node's local endpoint (the pod through its own node: by any endpoint, as with kube-proxy)",
        figures.join(" and ")
    )))
}

/// Every answer in `results` came from the endpoint named `local`.
fn only_local(
    results: &[crate::client::RequestResult],
    local: &str,
    who: &str,
    to: SocketAddr,
) -> Result<()> {
    let answered = names(results)?;
    ensure!(
        answered.iter().all(|n| n == local),
        "{who} via {to}: answered by {answered:?}, not only the local endpoint {local}"
    );
    Ok(())
}

/// Upstream (type=LoadBalancer, eTP=Local): /clientip through the LB is not
/// in the node subnet. Our external client is on the node network, so we
/// require exactly its own address (stricter).
fn esipp_lb(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let topo = &cluster.topo;
    external_service(&cluster, "LoadBalancer", true)?;
    cluster.apply(&slice(
        "esipp-1",
        "esipp",
        &[HTTP],
        &[Endpoint::ready(&topo.pods(1)[0], topo.node_name(1))],
    ))?;
    route_lb(&cluster, LB_IP, 1)?;
    let to = SocketAddr::from((LB_IP, 80));
    let took = eventually("the LB answers", Duration::from_secs(10), || {
        matches!(
            cluster.from_outside(Transport::Tcp, to, 1).as_deref(),
            Ok([Ok(_)])
        )
    })?;
    let seen = seen_ips(&cluster.from_outside(Transport::Tcp, to, 2 * REQUESTS)?)?;
    let external = topo.external_client().ip;
    ensure!(
        seen == BTreeSet::from([external]),
        "via the LB: seen {seen:?}"
    );
    Ok(Outcome::new(format!(
        "{}/{} through the LB IP seen as the client's own {external} (upstream: not a node address); served {:.1} s after the Service",
        2 * REQUESTS,
        2 * REQUESTS,
        took.as_secs_f64()
    )))
}

/// eTP=Cluster through a node without endpoints (node-a; the backend is on
/// node-b): NodePort and LB traffic is SNATed, the backend sees node-a.
fn cluster_snats(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let topo = &cluster.topo;
    external_service(&cluster, "LoadBalancer", false)?;
    cluster.apply(&slice(
        "esipp-1",
        "esipp",
        &[HTTP],
        &[Endpoint::ready(&topo.pods(1)[0], topo.node_name(1))],
    ))?;
    route_lb(&cluster, LB_IP, 0)?;
    let node_a = topo.node_ip(0);
    let mut n = 0;
    for to in [
        SocketAddr::from((node_a, NODE_PORT)),
        SocketAddr::from((LB_IP, 80)),
    ] {
        eventually("answers", Duration::from_secs(10), || {
            matches!(
                cluster.from_outside(Transport::Tcp, to, 1).as_deref(),
                Ok([Ok(_)])
            )
        })?;
        let results = cluster.from_outside(Transport::Tcp, to, REQUESTS)?;
        let seen = seen_ips(&results)?;
        ensure!(
            seen == BTreeSet::from([node_a]),
            "via {to}: seen {seen:?}, not node-a"
        );
        n += results.len();
    }
    Ok(Outcome::new(format!(
        "{n}/{n} (nodePort and LB IP via node-a, backend on node-b) seen from node-a's address {node_a}"
    )))
}

/// Upstream: a pod connects to the LB ingress IP of an eTP=Local Service;
/// /clientip must be the pod's IP. Upstream lets the scheduler place the
/// backend and the client pod; here both are on node-a. The pod on a node
/// without an endpoint is listed in `not_run` (the datapath drops it).
fn pod_to_lb(bins: &Binaries, endpoint_node: usize) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let topo = &cluster.topo;
    external_service(&cluster, "LoadBalancer", true)?;
    cluster.apply(&slice(
        "esipp-1",
        "esipp",
        &[HTTP],
        &[Endpoint::ready(
            &topo.pods(endpoint_node)[0],
            topo.node_name(endpoint_node),
        )],
    ))?;
    let pod = topo.client_pod(0);
    let to = SocketAddr::from((LB_IP, 80));
    let took = eventually("the LB IP answers the pod", Duration::from_secs(10), || {
        matches!(
            cluster.from_pod(pod, Transport::Tcp, to, 1).as_deref(),
            Ok([Ok(_)])
        )
    })?;
    let results = cluster.from_pod(pod, Transport::Tcp, to, 2 * REQUESTS)?;
    let seen = seen_ips(&results)?;
    ensure!(
        seen == BTreeSet::from([pod.ip]),
        "pod -> LB IP: seen {seen:?}"
    );
    let whose = if endpoint_node == 0 {
        "the pod's node"
    } else {
        "the other node"
    };
    Ok(Outcome::new(format!(
        "{}/{} pod -> LB IP (endpoint on {whose}) seen as the pod's own {}; served {:.1} s after the Service",
        results.len(),
        results.len(),
        pod.ip,
        took.as_secs_f64()
    )))
}
