//! Every verdict the programs reach is counted under exactly one reason
//! (the index of [`crate::MapId::Stats`]), so that no packet is passed or
//! dropped without a trace. The reason also decides what happens to the
//! packet ([`Reason::action`]): a program cannot count a drop as a pass.

/// What a program does with a packet under a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Passed on as it came.
    Pass,
    /// Passed on with its addresses or ports rewritten (NAT). The later
    /// fragments of a datagram follow its first fragment only then.
    Rewrite,
    /// Dropped.
    Drop,
    /// Rewritten into a refusal and sent back out of the interface it came
    /// in on: through `lb_tc_ingress` when an XDP program could mark it
    /// (see [`crate::REJECT_BOUNCE_MARK`]), else XDP_TX; redirected at TC.
    Tx,
    /// Not a verdict: counted beside the packet's own reason.
    Note,
}

/// Declares [`Reason`] from one table: variant, stats map index, name (for
/// `lbctl stats` and metrics), action.
macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $variant:ident = $index:literal, $name:literal, $action:ident; )*) => {
        /// Number of reasons (the stats map's size).
        pub const COUNT: u32 = [$($index),*].len() as u32;

        /// Why a program did what it did to a packet.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $( $(#[doc = $doc])* $variant = $index, )*
        }

        impl Reason {
            /// Every reason, in index order.
            pub const ALL: [Reason; COUNT as usize] = [$(Reason::$variant),*];

            pub const fn name(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }

            /// Inlined: the kernel programs call it on every packet.
            #[inline(always)]
            pub const fn action(self) -> Action {
                match self { $(Reason::$variant => Action::$action,)* }
            }
        }
    };
}

reasons! {
    /// XDP: not an IPv4 frame (ARP, IPv6, VLAN-tagged, ...): passed untouched.
    PassNotIpv4 = 0, "pass_not_ipv4", Pass;
    /// XDP: IPv4 but neither TCP nor UDP: passed untouched.
    PassNotTcpUdp = 1, "pass_not_tcp_udp", Pass;
    /// XDP/TC: headers shorter than they claim: passed untouched.
    PassTruncated = 2, "pass_truncated", Pass;
    /// XDP/TC: a later IP fragment (no L4 header) of a datagram whose first
    /// fragment was not rewritten here, or has not been seen (yet): passed
    /// untouched.
    PassFragment = 3, "pass_fragment", Pass;
    /// XDP: TCP/UDP to an address:port that is no frontend: passed untouched.
    PassNoService = 4, "pass_no_service", Pass;
    /// XDP: first packet of a flow to a frontend: backend picked, DNATed.
    DnatNewFlow = 5, "dnat_new_flow", Rewrite;
    /// XDP: packet of a tracked flow: DNATed to the flow's backend.
    DnatEstablished = 6, "dnat_established", Rewrite;
    /// TC egress: backend reply rewritten to come from the frontend.
    Revnat = 7, "revnat", Rewrite;
    /// TC egress: not a tracked reply: passed untouched.
    TcPassNotReply = 8, "tc_pass_not_reply", Pass;
    /// XDP: frontend with no backends: dropped.
    DropNoBackends = 9, "drop_no_backends", Drop;
    /// XDP: a slot names a backend id that is not in the backend map (the agent
    /// is mid-update or the maps are inconsistent): dropped.
    DropBackendMissing = 10, "drop_backend_missing", Drop;
    /// TC: a skb helper refused to rewrite the packet: dropped.
    DropRewriteFailed = 11, "drop_rewrite_failed", Drop;
    /// XDP: conntrack insert failed; the packet was still forwarded.
    CtInsertFailed = 12, "ct_insert_failed", Note;
    /// TC: reply whose rev-NAT id is unknown: passed untouched.
    TcPassRevnatMissing = 13, "tc_pass_revnat_missing", Pass;
    /// Node XDP: first packet of an external flow to a backend on another node:
    /// DNATed here, SNATed to the node's address at the uplink's TC egress (so
    /// the reply comes back through this node).
    DnatSnatNewFlow = 14, "dnat_snat_new_flow", Rewrite;
    /// Node XDP: reply to an SNATed flow: destination restored to the client.
    Unsnat = 15, "unsnat", Rewrite;
    /// Node TC egress: an external flow's packet to a remote backend: source
    /// rewritten to the node's address and an SNAT port.
    Snat = 16, "snat", Rewrite;
    /// Node XDP: no free SNAT port for a new flow to a remote backend: dropped.
    DropSnatPortsExhausted = 17, "drop_snat_ports_exhausted", Drop;
    /// XDP: externalTrafficPolicy Local (uplinks) or internalTrafficPolicy
    /// Local (pods) and no endpoint on this node: dropped, never forwarded to
    /// another node (kube-proxy's rule).
    DropNoLocalBackends = 18, "drop_no_local_backends", Drop;
    /// Node XDP: new flow from a source outside the frontend's
    /// loadBalancerSourceRanges: dropped.
    DropSourceRange = 19, "drop_source_range", Drop;
    /// XDP: SYN to a frontend without backends: answered with a RST (XDP_TX),
    /// so that the client fails at once instead of retrying into a timeout.
    RejectTcpRst = 20, "reject_tcp_rst", Tx;
    /// XDP: UDP to a frontend without backends: answered with an ICMP port
    /// unreachable (XDP_TX).
    RejectIcmpUnreachable = 21, "reject_icmp_unreachable", Tx;
    /// XDP/TC: a later IP fragment (no L4 header) of a datagram whose first
    /// fragment was rewritten here: its IP header got the same rewrite, found
    /// through the first fragment's ports (see `MapId::Fragments`).
    FragRewritten = 22, "frag_rewritten", Rewrite;
    /// XDP/TC: recording a rewritten first fragment's ports failed; the packet
    /// was still forwarded, but its later fragments will pass untouched.
    FragInsertFailed = 23, "frag_insert_failed", Note;
    /// XDP: a TCP packet other than a SYN to a frontend, without a conntrack
    /// entry: its entry expired, was evicted from a full map, or predates the
    /// map. The flow is balanced again, and since the choice is a hash of the
    /// 5-tuple it lands on the same backend as before unless the frontend's
    /// backends changed. Counted besides the packet's own reason: a rising
    /// count says the conntrack map is too small (`--ct-map-max`).
    CtMissMidflow = 24, "ct_miss_midflow", Note;
}

impl Reason {
    /// The reason's slot in the stats map.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    pub const fn from_index(index: u32) -> Option<Reason> {
        if index < COUNT {
            Some(Reason::ALL[index as usize])
        } else {
            None
        }
    }

    pub const fn is_drop(self) -> bool {
        matches!(self.action(), Action::Drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_dense_and_names_unique() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index() as usize, i, "{reason:?}");
            assert_eq!(Reason::from_index(i as u32), Some(*reason));
            for other in &Reason::ALL[i + 1..] {
                assert_ne!(reason.name(), other.name());
            }
        }
        assert_eq!(Reason::from_index(COUNT), None);
    }

    #[test]
    fn names_say_the_action() {
        for reason in Reason::ALL {
            let name = reason.name();
            match reason.action() {
                Action::Drop => assert!(name.starts_with("drop_"), "{name}"),
                Action::Tx => assert!(name.starts_with("reject_"), "{name}"),
                Action::Pass => assert!(name.contains("pass"), "{name}"),
                Action::Rewrite | Action::Note => assert!(!name.contains("pass"), "{name}"),
            }
        }
    }
}
