//! Indexes of [`crate::MapId::Stats`]: every verdict the programs reach is
//! counted under exactly one reason, so that no packet is passed or dropped
//! without a trace.

/// XDP: not an IPv4 frame (ARP, IPv6, VLAN-tagged, ...): passed untouched.
pub const PASS_NOT_IPV4: u32 = 0;
/// XDP: IPv4 but neither TCP nor UDP: passed untouched.
pub const PASS_NOT_TCP_UDP: u32 = 1;
/// XDP/TC: headers shorter than they claim: passed untouched.
pub const PASS_TRUNCATED: u32 = 2;
/// XDP/TC: a later IP fragment (no L4 header) of a datagram whose first
/// fragment was not rewritten here, or has not been seen (yet): passed
/// untouched.
pub const PASS_FRAGMENT: u32 = 3;
/// XDP: TCP/UDP to an address:port that is no frontend: passed untouched.
pub const PASS_NO_SERVICE: u32 = 4;
/// XDP: first packet of a flow to a frontend: backend picked, DNATed.
pub const DNAT_NEW_FLOW: u32 = 5;
/// XDP: packet of a tracked flow: DNATed to the flow's backend.
pub const DNAT_ESTABLISHED: u32 = 6;
/// TC egress: backend reply rewritten to come from the frontend.
pub const REVNAT: u32 = 7;
/// TC egress: not a tracked reply: passed untouched.
pub const TC_PASS_NOT_REPLY: u32 = 8;
/// XDP: frontend with no backends: dropped.
pub const DROP_NO_BACKENDS: u32 = 9;
/// XDP: a slot names a backend id that is not in the backend map (the agent
/// is mid-update or the maps are inconsistent): dropped.
pub const DROP_BACKEND_MISSING: u32 = 10;
/// TC: a skb helper refused to rewrite the packet: dropped.
pub const DROP_REWRITE_FAILED: u32 = 11;
/// XDP: conntrack insert failed; the packet was still forwarded.
pub const CT_INSERT_FAILED: u32 = 12;
/// TC: reply whose rev-NAT id is unknown: passed untouched.
pub const TC_PASS_REVNAT_MISSING: u32 = 13;

/// Node XDP: first packet of an external flow to a backend on another node:
/// DNATed here, SNATed to the node's address at the uplink's TC egress (so
/// the reply comes back through this node).
pub const DNAT_SNAT_NEW_FLOW: u32 = 14;
/// Node XDP: reply to an SNATed flow: destination restored to the client.
pub const UNSNAT: u32 = 15;
/// Node TC egress: an external flow's packet to a remote backend: source
/// rewritten to the node's address and an SNAT port.
pub const SNAT: u32 = 16;
/// Node XDP: no free SNAT port for a new flow to a remote backend: dropped.
pub const DROP_SNAT_PORTS_EXHAUSTED: u32 = 17;
/// XDP: externalTrafficPolicy Local (uplinks) or internalTrafficPolicy
/// Local (pods) and no endpoint on this node: dropped, never forwarded to
/// another node (kube-proxy's rule).
pub const DROP_NO_LOCAL_BACKENDS: u32 = 18;

/// Node XDP: new flow from a source outside the frontend's
/// loadBalancerSourceRanges: dropped.
pub const DROP_SOURCE_RANGE: u32 = 19;
/// XDP: SYN to a frontend without backends: answered with a RST (XDP_TX),
/// so that the client fails at once instead of retrying into a timeout.
pub const REJECT_TCP_RST: u32 = 20;
/// XDP: UDP to a frontend without backends: answered with an ICMP port
/// unreachable (XDP_TX).
pub const REJECT_ICMP_UNREACHABLE: u32 = 21;
/// XDP/TC: a later IP fragment (no L4 header) of a datagram whose first
/// fragment was rewritten here: its IP header got the same rewrite, found
/// through the first fragment's ports (see `MapId::Fragments`).
pub const FRAG_REWRITTEN: u32 = 22;
/// XDP/TC: recording a rewritten first fragment's ports failed; the packet
/// was still forwarded, but its later fragments will pass untouched.
pub const FRAG_INSERT_FAILED: u32 = 23;
/// XDP: a TCP packet other than a SYN to a frontend, without a conntrack
/// entry: its entry expired, was evicted from a full map, or predates the
/// map. The flow is balanced again, and since the choice is a hash of the
/// 5-tuple it lands on the same backend as before unless the frontend's
/// backends changed. Counted besides the packet's own reason: a rising
/// count says the conntrack map is too small (`--ct-map-max`).
pub const CT_MISS_MIDFLOW: u32 = 24;

/// Number of reasons (the stats map's size).
pub const COUNT: u32 = 25;

/// Names in index order, for `lbctl stats` and metrics.
pub const NAMES: [&str; COUNT as usize] = [
    "pass_not_ipv4",
    "pass_not_tcp_udp",
    "pass_truncated",
    "pass_fragment",
    "pass_no_service",
    "dnat_new_flow",
    "dnat_established",
    "revnat",
    "tc_pass_not_reply",
    "drop_no_backends",
    "drop_backend_missing",
    "drop_rewrite_failed",
    "ct_insert_failed",
    "tc_pass_revnat_missing",
    "dnat_snat_new_flow",
    "unsnat",
    "snat",
    "drop_snat_ports_exhausted",
    "drop_no_local_backends",
    "drop_source_range",
    "reject_tcp_rst",
    "reject_icmp_unreachable",
    "frag_rewritten",
    "frag_insert_failed",
    "ct_miss_midflow",
];

/// True for the reasons that drop the packet.
pub const fn is_drop(reason: u32) -> bool {
    matches!(
        reason,
        DROP_NO_BACKENDS
            | DROP_BACKEND_MISSING
            | DROP_REWRITE_FAILED
            | DROP_SNAT_PORTS_EXHAUSTED
            | DROP_NO_LOCAL_BACKENDS
            | DROP_SOURCE_RANGE
    )
}

/// True for the reasons that send the rewritten packet back out of the
/// interface it came in on: through `lb_tc_ingress` when the XDP program
/// could mark it (see [`crate::REJECT_BOUNCE_MARK`]), else XDP_TX.
pub const fn is_tx(reason: u32) -> bool {
    matches!(reason, REJECT_TCP_RST | REJECT_ICMP_UNREACHABLE)
}

/// True for the reasons under which a packet goes on with its addresses or
/// ports rewritten (NAT), as opposed to passed as it came, dropped, or
/// answered. The later fragments of a datagram follow its first fragment
/// only when that one was rewritten.
pub const fn is_rewrite(reason: u32) -> bool {
    matches!(
        reason,
        DNAT_NEW_FLOW
            | DNAT_ESTABLISHED
            | DNAT_SNAT_NEW_FLOW
            | UNSNAT
            | REVNAT
            | SNAT
            | FRAG_REWRITTEN
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_at_most_one_of_drop_tx_rewrite() {
        for reason in 0..COUNT {
            let kinds = [is_drop(reason), is_tx(reason), is_rewrite(reason)];
            assert!(
                kinds.iter().filter(|&&k| k).count() <= 1,
                "{}",
                NAMES[reason as usize]
            );
        }
        assert!(is_rewrite(REVNAT) && !is_rewrite(PASS_FRAGMENT));
    }
}
