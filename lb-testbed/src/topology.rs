//! A node with a routed CNI, in namespaces: each pod has its own namespace
//! and a veth to the node namespace, and the node routes between pods.
//!
//! Pod `i` (counting from 1) owns 10.244.i.0/24: its `eth0` is 10.244.i.2
//! and its default route goes via 10.244.i.1 on the node side of its veth,
//! `lbh<i>`. The backends come first; the client pod takes the next index.
//! The node forwards with netfilter conntrack dropping INVALID packets, as
//! real nodes do, so a load balancer that confuses conntrack gets caught.

use std::net::Ipv4Addr;

use anyhow::{anyhow, ensure, Result};

use super::netns::NetNs;

/// Prefix of every node-side pod interface (`lbh1`, `lbh2`, ...).
pub(super) const HOST_IF_PREFIX: &str = "lbh";

/// A pod: a namespace with one interface, `eth0`, behind the node.
#[derive(Debug)]
pub struct Pod {
    /// `pod-<i>` for backends, `client` for the client.
    pub name: String,
    /// The address of its `eth0`.
    pub ip: Ipv4Addr,
    /// Its veth's end in the node namespace.
    pub host_if: String,
    pub ns: NetNs,
}

/// The node, its backend pods and one client pod. Dropping it deletes all
/// the namespaces, and with them every veth.
#[derive(Debug)]
pub struct ClusterIpTopology {
    // Field order is drop order: pods first, the node they hang off last.
    backends: Vec<Pod>,
    client: Pod,
    node: NetNs,
}

impl ClusterIpTopology {
    /// Builds the node with `backends` backend pods (10.244.1.2, 10.244.2.2,
    /// ...) and the client pod after them.
    pub fn create(backends: usize) -> Result<ClusterIpTopology> {
        // The client takes index backends + 1, which must fit in an octet.
        ensure!(
            (1..=253).contains(&backends),
            "between 1 and 253 backends, not {backends}"
        );
        let tag = super::unique_tag();
        let node = NetNs::create(format!("{tag}-node"))?;
        node.ip(["link", "set", "lo", "up"])?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        drop_invalid(&node)?;

        let mut backend_pods = Vec::with_capacity(backends);
        for i in 1..=backends as u8 {
            backend_pods.push(Pod::create(
                &node,
                i,
                format!("pod-{i}"),
                format!("{tag}-pod{i}"),
            )?);
        }
        let client = Pod::create(
            &node,
            backends as u8 + 1,
            "client".into(),
            format!("{tag}-client"),
        )?;
        Ok(ClusterIpTopology {
            backends: backend_pods,
            client,
            node,
        })
    }

    /// The namespace the agent runs in.
    pub fn node(&self) -> &NetNs {
        &self.node
    }

    pub fn backends(&self) -> &[Pod] {
        &self.backends
    }

    pub fn client(&self) -> &Pod {
        &self.client
    }

    /// A glob matching every pod's node-side interface, the client's too:
    /// the value for the agent's `--pod-interfaces`.
    pub fn pod_interfaces(&self) -> String {
        format!("{HOST_IF_PREFIX}*")
    }
}

impl Pod {
    fn create(node: &NetNs, index: u8, name: String, ns_name: String) -> Result<Pod> {
        let host_if = format!("{HOST_IF_PREFIX}{index}");
        let gateway = Ipv4Addr::new(10, 244, index, 1);
        let ip = Ipv4Addr::new(10, 244, index, 2);
        Pod::create_routed(node, host_if, gateway, ip, name, ns_name)
    }

    /// A pod with its own /24 behind `node`: `eth0` gets `ip`/24, the node
    /// side `host_if` gets `gateway`/24, and the pod's default route goes via
    /// `gateway`. `ip` and `gateway` must share a /24 no other pod of `node`
    /// uses. Shared with [`super::multinode`], which plans other addresses.
    pub(super) fn create_routed(
        node: &NetNs,
        host_if: String,
        gateway: Ipv4Addr,
        ip: Ipv4Addr,
        name: String,
        ns_name: String,
    ) -> Result<Pod> {
        let ns = NetNs::create(ns_name)?;
        let gateway = gateway.to_string();

        // Created from inside the node namespace with the peer placed straight
        // into the pod's: neither end ever exists in the root namespace.
        node.ip([
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        node.ip(["addr", "add", &format!("{gateway}/24"), "dev", &host_if])?;
        node.ip(["link", "set", &host_if, "up"])?;

        ns.ip(["link", "set", "lo", "up"])?;
        ns.ip(["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(["link", "set", "eth0", "up"])?;
        ns.ip(["route", "add", "default", "via", &gateway])?;
        Ok(Pod {
            name,
            ip,
            host_if,
            ns,
        })
    }
}

/// `iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP` in `node`,
/// with whichever iptables backend works here.
pub(super) fn drop_invalid(node: &NetNs) -> Result<()> {
    // -w: the legacy backend takes a host-wide lock that parallel tests share.
    const RULE: [&str; 9] = [
        "-w",
        "-A",
        "FORWARD",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "DROP",
    ];
    let Err(nft) = node.exec(std::iter::once("iptables").chain(RULE)) else {
        return Ok(());
    };
    node.exec(std::iter::once("iptables-legacy").chain(RULE)).map(drop).map_err(|legacy| {
        anyhow!("cannot install the conntrack INVALID drop rule in {}: iptables: {nft:#}; iptables-legacy: {legacy:#}", node.name())
    })
}
