//! Several nodes in namespaces: for NodePort and cross-node tests.
//!
//! ```text
//!                         lan namespace: bridge br0 (192.168.50.0/24, layer 2 only)
//!          ┌───────────────────────┬──────────────────────────┬────────────────┐
//!        lbn0 .10                lbn1 .11                    ...          eth0 .100
//!     node-a namespace        node-b namespace                         external client
//!     pods 10.244.16.0/20     pods 10.244.32.0/20                      (no route to pods)
//!      ├ lbh1 ─ a-pod-1 10.244.17.2   ├ lbh1 ─ b-pod-1 10.244.33.2
//!      ├ lbh2 ─ a-pod-2 10.244.18.2   ├ ...
//!      └ lbh<k+1> ─ a-client          └ lbh<k+1> ─ b-client
//! ```
//!
//! Each node is the single-node topology of [`super::topology`] (pods with
//! their own namespace and veth, node-side names `lbh*`, forwarding through
//! a conntrack INVALID drop rule) plus an uplink `lbn<i>` on a shared bridge.
//! Nodes reach each other's pods like a routed CNI in host-gateway mode
//! (flannel host-gw, kube-router, Calico without overlay): a static route
//! per other node, `<its pod CIDR> via <its node IP>`, so pod-to-pod traffic
//! across nodes keeps the pods' own addresses. The external client sits on
//! the node network and knows only that network, as a client outside the
//! cluster does: it reaches nodes, and pods only through a NodePort.
//! See [`plan`] for every address.
//!
//! Nodes run with `rp_filter` = 2 (loose), the systemd default on most
//! distributions and what Cilium and Calico ask for: a packet is accepted if
//! its source is routable through any interface. Strict mode (1) would drop
//! legitimate asymmetric NodePort traffic (a reply leaving by another
//! interface than the request came in on), which is a node misconfiguration
//! these tests should not hide behind.
//!
//! Same safety rule as the rest of [`super`]: every link is a veth created
//! inside one of these namespaces, nothing touches the root namespace, and
//! dropping the topology deletes every namespace (hence every link), also
//! when a test panics.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context as _, Result};
use ipnet::Ipv4Net;

use super::netns::NetNs;
use super::topology::{drop_invalid, Pod, HOST_IF_PREFIX};

mod lan;
pub mod plan;

/// Prefix of every node's uplink (`lbn0`, `lbn1`, ...).
const UPLINK_PREFIX: &str = "lbn";

/// One node: its namespace and what names it.
#[derive(Debug)]
struct Node {
    /// `node-a`, `node-b`, ...: the value for the agent's `--node-name`.
    name: String,
    /// `lbn<i>`, its interface on the node network.
    uplink: String,
    ns: NetNs,
}

/// Nodes with pods, one client pod per node and an external client, all on
/// one bridged node network. Dropping it deletes every namespace.
#[derive(Debug)]
pub struct MultiNodeTopology {
    // Field order is drop order: what hangs off a node before the node, the
    // nodes before the lan they are plugged into.
    /// Node 0's pods, then node 1's, ...: one slice for `Servers::start`.
    pods: Vec<Pod>,
    clients: Vec<Pod>,
    external: Pod,
    nodes: Vec<Node>,
    lan: NetNs,
    pods_per_node: usize,
    tag: String,
}

impl MultiNodeTopology {
    /// Builds `nodes` nodes (at most [`plan::MAX_NODES`]) with
    /// `pods_per_node` pods each (at most [`plan::MAX_PODS_PER_NODE`]), a
    /// client pod on each, and the external client.
    pub fn create(nodes: usize, pods_per_node: usize) -> Result<MultiNodeTopology> {
        ensure!(
            (1..=plan::MAX_NODES).contains(&nodes),
            "between 1 and {} nodes, not {nodes}",
            plan::MAX_NODES
        );
        ensure!(
            pods_per_node <= plan::MAX_PODS_PER_NODE,
            "at most {} pods per node, not {pods_per_node}",
            plan::MAX_PODS_PER_NODE
        );
        let tag = super::unique_tag();
        // Each guard is owned before the next step can fail, so an error
        // half-way deletes what was built so far.
        let lan = lan::create(format!("{tag}-lan"))?;
        let mut node_list = Vec::with_capacity(nodes);
        for i in 0..nodes {
            node_list.push(create_node(&tag, &lan, i)?);
        }
        for (i, node) in node_list.iter().enumerate() {
            route_to_other_nodes(node, i, nodes)?;
        }

        let mut pods = Vec::with_capacity(nodes * pods_per_node);
        let mut clients = Vec::with_capacity(nodes);
        for (i, node) in node_list.iter().enumerate() {
            let letter = plan::node_letter(i);
            for j in 1..=pods_per_node {
                let name = format!("{letter}-pod-{j}");
                pods.push(create_pod(&tag, node, i, j, name)?);
            }
            let name = format!("{letter}-client");
            clients.push(create_pod(&tag, node, i, pods_per_node + 1, name)?);
        }

        let external = create_external_client(&tag, &lan)?;
        Ok(MultiNodeTopology {
            pods,
            clients,
            external,
            nodes: node_list,
            lan,
            pods_per_node,
            tag,
        })
    }

    /// How many nodes there are.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s namespace, where its agent runs.
    pub fn node(&self, i: usize) -> &NetNs {
        &self.nodes[i].ns
    }

    /// Node `i`'s name, `node-a`, `node-b`, ...: for `--node-name` and the
    /// `nodeName` of EndpointSlice endpoints.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Node `i`'s address on the node network (its NodePort address).
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        self.check_node(i);
        plan::node_ip(i)
    }

    /// The pod addresses node `i` owns.
    pub fn pod_cidr(&self, i: usize) -> Ipv4Net {
        self.check_node(i);
        plan::pod_cidr(i)
    }

    /// Node `i`'s interface on the node network, `lbn<i>`.
    pub fn uplink(&self, i: usize) -> &str {
        &self.nodes[i].uplink
    }

    /// Node `i`'s server pods (`<letter>-pod-<j>`), without its client pod.
    pub fn pods(&self, i: usize) -> &[Pod] {
        self.check_node(i);
        &self.pods[i * self.pods_per_node..(i + 1) * self.pods_per_node]
    }

    /// Every node's server pods, node by node.
    pub fn all_pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Node `i`'s client pod, `<letter>-client`: for traffic that starts on
    /// a node, e.g. to another node's NodePort.
    pub fn client_pod(&self, i: usize) -> &Pod {
        &self.clients[i]
    }

    /// The client outside the cluster, `external`, at
    /// [`plan::EXTERNAL_CLIENT_IP`] on the node network. Its `host_if` is its
    /// port on the lan bridge, not an interface of a node.
    pub fn external_client(&self) -> &Pod {
        &self.external
    }

    /// The bridge namespace, for looking at the wire (`tcpdump -i br0`).
    pub fn lan(&self) -> &NetNs {
        &self.lan
    }

    /// A glob matching every pod's node-side interface, the client pods'
    /// too: the value for the agent's `--pod-interfaces` on any node.
    pub fn pod_interfaces(&self) -> String {
        format!("{HOST_IF_PREFIX}*")
    }

    /// A glob matching every node's uplink: the value for the agent's
    /// `--node-interfaces` on any node.
    pub fn node_interfaces(&self) -> String {
        format!("{UPLINK_PREFIX}*")
    }

    /// The tag in every namespace name of this topology.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    fn check_node(&self, i: usize) {
        assert!(i < self.nodes.len(), "node {i} of {}", self.nodes.len());
    }
}

/// Node `i`: forwarding like a real node, plugged into the lan.
fn create_node(tag: &str, lan: &NetNs, i: usize) -> Result<Node> {
    let name = format!("node-{}", plan::node_letter(i));
    let ns = NetNs::create(format!("{tag}-{name}"))?;
    let uplink = format!("{UPLINK_PREFIX}{i}");
    let setup = || -> Result<()> {
        ns.ip(["link", "set", "lo", "up"])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        // `all` and `default` both: the kernel applies the larger of `all`
        // and the interface's own value, and `default` seeds interfaces
        // created later (the uplink and the pod veths).
        ns.sysctl("net.ipv4.conf.all.rp_filter", "2")?;
        ns.sysctl("net.ipv4.conf.default.rp_filter", "2")?;
        drop_invalid(&ns)?;
        let port = format!("lan-{}", plan::node_letter(i));
        lan::plug(lan, &port, &ns, &uplink, plan::node_ip(i))
    };
    setup().with_context(|| format!("building {name}"))?;
    Ok(Node { name, uplink, ns })
}

/// Static routes to every other node's pods via that node, as a routed CNI
/// installs them.
fn route_to_other_nodes(node: &Node, i: usize, nodes: usize) -> Result<()> {
    for other in (0..nodes).filter(|&other| other != i) {
        let (cidr, via) = (plan::pod_cidr(other), plan::node_ip(other));
        node.ns
            .ip([
                "route",
                "add",
                &cidr.to_string(),
                "via",
                &via.to_string(),
                "dev",
                &node.uplink,
            ])
            .with_context(|| format!("routing {cidr} via {via} on {}", node.name))?;
    }
    Ok(())
}

/// The `index`th (1-based) pod of node `i`, behind `lbh<index>`.
fn create_pod(tag: &str, node: &Node, i: usize, index: usize, name: String) -> Result<Pod> {
    let (gateway, ip) = plan::pod_addresses(i, index);
    let host_if = format!("{HOST_IF_PREFIX}{index}");
    let ns_name = format!("{tag}-{name}");
    Pod::create_routed(&node.ns, host_if, gateway, ip, name.clone(), ns_name)
        .with_context(|| format!("creating pod {name} on {}", node.name))
}

/// The external client: one interface on the node network and no other
/// route, so pod addresses are unreachable from it by design.
fn create_external_client(tag: &str, lan: &NetNs) -> Result<Pod> {
    let ns = NetNs::create(format!("{tag}-external"))?;
    ns.ip(["link", "set", "lo", "up"])
        .context("setting lo up in the external client")?;
    let port = "lan-ext";
    lan::plug(lan, port, &ns, "eth0", plan::EXTERNAL_CLIENT_IP)?;
    Ok(Pod {
        name: "external".into(),
        ip: plan::EXTERNAL_CLIENT_IP,
        host_if: port.into(),
        ns,
    })
}
