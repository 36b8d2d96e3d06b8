//! The address plan of [`super::MultiNodeTopology`], as plain functions so it
//! can be checked without root and read in one place.
//!
//! | what | address |
//! |---|---|
//! | node network (the `lan` bridge) | 192.168.50.0/24 |
//! | node `i` (0-based), its uplink `lbn<i>` | 192.168.50.(10+i)/24 |
//! | the external client | 192.168.50.100/24 |
//! | cluster (pod) CIDR | 10.244.0.0/16 |
//! | node `i`'s pod CIDR | 10.244.(16·(i+1)).0/20 |
//! | pod `j` (1-based) of node `i` | 10.244.(16·(i+1)+j).2/24, gateway .1 |
//!
//! Every pod keeps its own /24, exactly as in [`super::super::topology`], so
//! the pods are built by the same code; a node's pod CIDR is the /20 holding
//! its pods' /24s, which is what the other nodes route via its node IP.
//! Read the third octet in hex and it says where a pod lives: 0x11 = 17 is
//! node a's pod 1, 0x23 = 35 node b's pod 3. The ranges start at
//! 10.244.16.0, not 10.244.0.0, so no multi-node pod shares an address with
//! the single-node topology's (10.244.1.2, ...) that `examples/web.yaml`
//! points at: a test that forgets its own manifests fails instead of
//! half-working.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// 16 /20s fit in the /16 and the first is left out (see the module doc).
pub const MAX_NODES: usize = 15;
/// A /20 holds 16 /24s: the .0 one is left out and the client pod takes the
/// one after the last pod.
pub const MAX_PODS_PER_NODE: usize = 14;

/// The network the nodes and the external client share.
pub const NODE_NETWORK: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 50, 0), 24);
/// Every pod address of every node: the value for `--cluster-cidr`.
pub const CLUSTER_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 244, 0, 0), 16);
/// The external client: on the node network, far from the node addresses.
pub const EXTERNAL_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);

/// Node `node`'s address on the node network.
pub fn node_ip(node: usize) -> Ipv4Addr {
    assert!(node < MAX_NODES, "node {node} out of range");
    Ipv4Addr::new(192, 168, 50, 10 + node as u8)
}

/// The pod addresses node `node` owns; the other nodes route them via
/// [`node_ip`]`(node)`.
pub fn pod_cidr(node: usize) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(10, 244, third_octet(node, 0), 0), 20)
}

/// `(gateway, pod address)` of the `index`th (1-based) pod /24 of `node`:
/// the gateway sits on the node side of the pod's veth.
pub fn pod_addresses(node: usize, index: usize) -> (Ipv4Addr, Ipv4Addr) {
    assert!(
        (1..=MAX_PODS_PER_NODE + 1).contains(&index),
        "pod index {index} out of range"
    );
    let octet = third_octet(node, index);
    (
        Ipv4Addr::new(10, 244, octet, 1),
        Ipv4Addr::new(10, 244, octet, 2),
    )
}

/// `a` for node 0, `b` for node 1, ...: the prefix of its pods' names.
pub fn node_letter(node: usize) -> char {
    assert!(node < MAX_NODES, "node {node} out of range");
    (b'a' + node as u8) as char
}

fn third_octet(node: usize, index: usize) -> u8 {
    assert!(node < MAX_NODES, "node {node} out of range");
    (16 * (node + 1) + index) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_lie_in_their_nodes_range_and_ranges_do_not_overlap() {
        for node in 0..MAX_NODES {
            let cidr = pod_cidr(node);
            assert!(CLUSTER_CIDR.contains(&cidr));
            assert!(NODE_NETWORK.contains(&node_ip(node)));
            assert_ne!(node_ip(node), EXTERNAL_CLIENT_IP);
            for index in 1..=MAX_PODS_PER_NODE + 1 {
                let (gateway, ip) = pod_addresses(node, index);
                assert!(cidr.contains(&gateway) && cidr.contains(&ip));
            }
            for other in node + 1..MAX_NODES {
                let other = pod_cidr(other);
                assert!(!cidr.contains(&other) && !other.contains(&cidr));
            }
        }
    }

    #[test]
    fn addresses_read_as_documented() {
        assert_eq!(node_ip(0), Ipv4Addr::new(192, 168, 50, 10));
        assert_eq!(node_ip(1), Ipv4Addr::new(192, 168, 50, 11));
        assert_eq!(pod_cidr(0).to_string(), "10.244.16.0/20");
        assert_eq!(pod_cidr(1).to_string(), "10.244.32.0/20");
        assert_eq!(pod_addresses(0, 1).1, Ipv4Addr::new(10, 244, 17, 2));
        assert_eq!(
            pod_addresses(1, 3),
            (Ipv4Addr::new(10, 244, 35, 1), Ipv4Addr::new(10, 244, 35, 2))
        );
        assert_eq!(
            pod_addresses(MAX_NODES - 1, MAX_PODS_PER_NODE + 1).1,
            Ipv4Addr::new(10, 244, 255, 2)
        );
        assert_eq!(node_letter(1), 'b');
        // The single-node topology's pods are not in any node's range.
        let single_node_pod = Ipv4Addr::new(10, 244, 1, 2);
        assert!((0..MAX_NODES).all(|n| !pod_cidr(n).contains(&single_node_pod)));
    }
}
