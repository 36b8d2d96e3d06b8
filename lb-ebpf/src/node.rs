//! XDP on the node's uplinks: traffic from outside the node to NodePorts,
//! externalIPs and load-balancer IPs, and replies to flows this node
//! SNATed.
//!
//! External flows to a backend on this node are only DNATed (the reply is
//! reverse-NATed at the uplink's TC egress, after netfilter saw it). Flows
//! to a backend on another node are DNATed here and SNATed to the node's
//! address at the uplink's TC egress (after routing and netfilter), so that
//! the backend's reply comes back here: it arrives addressed to
//! node:SNAT-port and is un-SNATed here, before netfilter, which then sees
//! the backend -> client reply of the client -> backend connection it
//! tracked. The stack does all routing and neighbour resolution. The
//! program body is `ingress.rs` (`Side::Uplink`); this module holds the
//! loadBalancerSourceRanges lookup (which the pod side makes too: a pod
//! reaching a load-balancer IP is held to its ranges, as with kube-proxy).

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::SourceRange;

use crate::maps::SOURCE_RANGES;

/// Whether the frontend's loadBalancerSourceRanges admit `saddr`.
#[inline(always)]
pub fn source_allowed(rev_nat_id: lb_common::RevNatId, saddr_be: u32) -> bool {
    let key = Key::new(
        64,
        SourceRange {
            rev_nat_id_be: rev_nat_id.to_be(),
            addr_be: saddr_be,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}
