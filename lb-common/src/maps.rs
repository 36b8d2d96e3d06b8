//! Map names, sizes, keys and values.
//!
//! The service model follows Cilium's `lb4_service`: one hash map holds, per
//! frontend (VIP, port, protocol), a *master* entry at slot 0 carrying the
//! backend count, and one entry per backend at slots `1..=count` carrying a
//! backend id. Backends live in their own map by id, so a backend shared by
//! several frontends is stored once, and a Service update touches only the
//! slots that changed.

use bytemuck::{Pod, Zeroable};

pub const NODE_ADDRS_MAX_ENTRIES: u32 = 4096;
/// [`MapId::NodeAddrs`] value: this node's NodePort address. Packets from
/// outside to it and a NodePort are balanced here.
pub const NODE_ADDR_LOCAL: u32 = 1;
/// [`MapId::NodeAddrs`] value: another node's address. Only the node's own
/// sockets balance its NodePorts at `connect()` (as Cilium's socket LB
/// does), so that a node process reaches the backend directly: the kernel
/// then picks the source port for the backend's tuple, which a NodePort
/// flow DNATed on the other node (client address kept) could otherwise
/// share with a direct connection.
pub const NODE_ADDR_PEER: u32 = 2;
pub const AFFINITY_MAX_ENTRIES: u32 = 65_536;
/// Entries of [`MapId::Fragments`] (Cilium's default for its fragment map). An
/// entry only matters while its datagram's fragments are in flight, so the
/// LRU only needs room for the fragmented datagrams of a few milliseconds.
pub const FRAGMENTS_MAX_ENTRIES: u32 = 8_192;

/// Key of [`MapId::RevNat`]; 0 means "none". 32 bits, so that more than 65535
/// frontends (Cilium's limit with its 16-bit index) fit.
pub type RevNatId = u32;

/// Name of the TC ingress program on pod interfaces (DNAT of traffic to
/// frontends, the default pod hook).
pub const PROG_TC_POD_INGRESS: &str = "lb_tc_pod_ingress";
/// Name of the XDP program doing the same (`--pod-hook xdp` only).
pub const PROG_XDP_INGRESS: &str = "lb_xdp_ingress";
/// Name of the XDP program on the node's uplinks (NodePort, externalIPs and
/// load-balancer IPs reached from outside; un-SNAT of replies).
pub const PROG_XDP_NODE: &str = "lb_xdp_node";
/// Name of the TC egress program on the node's uplinks (reverse NAT of
/// local backends' replies, SNAT of flows to remote backends).
pub const PROG_TC_NODE_EGRESS: &str = "lb_tc_node_egress";
/// Name of the TC egress program (reverse NAT of backend replies, after the
/// node's netfilter has seen the un-NATed reply).
pub const PROG_TC_EGRESS: &str = "lb_tc_egress";
/// Names of the socket-level programs (cgroup sock_addr), which balance the
/// node's own sockets: `connect()` and `sendmsg()` to a frontend go to a
/// backend, `recvmsg()` and `getpeername()` show the frontend.
pub const PROG_SOCK_CONNECT4: &str = "lb_sock_connect4";
pub const PROG_SOCK_SENDMSG4: &str = "lb_sock_sendmsg4";
pub const PROG_SOCK_RECVMSG4: &str = "lb_sock_recvmsg4";
pub const PROG_SOCK_GETPEERNAME4: &str = "lb_sock_getpeername4";
/// Name of the TC ingress program beside each XDP program (uplinks, and
/// pod interfaces under `--pod-hook xdp`): sends the rejections the XDP
/// programs wrote back out of the interface they came in on.
pub const PROG_TC_INGRESS: &str = "lb_tc_ingress";

/// XDP metadata (4 bytes before the frame, native byte order) that marks a
/// frame the XDP program rewrote into a rejection (TCP RST, ICMP
/// unreachable) and passed up, for `lb_tc_ingress` to send back out. XDP_TX
/// cannot be used on a veth whose peer lacks NAPI: the kernel drops it.
pub const REJECT_BOUNCE_MARK: u32 = 0x4c42_5254;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of [`MapId::Services`]. Slot 0 is the frontend's master entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct ServiceKey {
    /// Frontend address (ClusterIP), network byte order.
    pub vip_be: u32,
    /// Frontend port, network byte order.
    pub port_be: u16,
    /// 0 = master entry; `1..=count` = backend slots.
    pub slot: u16,
    /// IP protocol number ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]).
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 12);

/// Value of [`MapId::Services`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceValue {
    /// Backend slots: the backend id. Master entry: 0.
    pub backend_id: u32,
    /// Id in [`MapId::RevNat`] that restores this frontend on replies.
    pub rev_nat_id: RevNatId,
    /// Master entry: number of backend slots. Backend slots: 0.
    pub count: u16,
    /// `SVC_F_*` bits (master entry only).
    pub flags: u16,
    /// Master entry: sessionAffinity ClientIP timeout in seconds (0: no
    /// affinity). A new flow from a client that had one to this frontend
    /// less than this long ago goes to the same backend.
    pub affinity_timeout_s: u32,
    /// Master entry: number of backend slots for clients inside the node
    /// (its pods and its own sockets), `>= count`. An external frontend
    /// (NodePort, externalIP, load-balancer IP) with externalTrafficPolicy
    /// Local has its node's endpoints in slots `1..=count` and the
    /// cluster's other endpoints after them: traffic from outside uses the
    /// first `count`, the node's own clients all `internal_count`, as
    /// kube-proxy sends them through the cluster policy. Everywhere else
    /// equal to `count`. Backend slots: 0.
    pub internal_count: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 20);

impl ServiceValue {
    /// The master as the node's own clients see it: with all the slots
    /// they may use (see [`ServiceValue::internal_count`]).
    #[inline(always)]
    pub fn for_internal_clients(mut self) -> Self {
        if self.internal_count > self.count {
            self.count = self.internal_count;
        }
        self
    }
}

/// Value of [`MapId::Backends`], keyed by a `u32` backend id (never reused while
/// the agent runs, so a stale conntrack entry cannot reach a new pod).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Backend {
    /// Pod address, network byte order.
    pub addr_be: u32,
    /// Target port, network byte order.
    pub port_be: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 8);

/// Value of [`MapId::RevNat`], keyed by a [`RevNatId`]: what a reply's
/// source is rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct RevNat {
    /// Frontend address, network byte order.
    pub addr_be: u32,
    /// Frontend port, network byte order.
    pub port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<RevNat>() == 8);

/// Conntrack entry for a client -> frontend packet (before DNAT).
pub const CT_DIR_FORWARD: u8 = 0;
/// Conntrack entry for a backend -> client packet (before reverse NAT).
pub const CT_DIR_REPLY: u8 = 1;
/// Conntrack entry for a client -> remote backend packet leaving the node
/// (after DNAT, before SNAT): `nat_*` is the SNAT source to write.
pub const CT_DIR_SNAT_OUT: u8 = 2;
/// Conntrack entry for a remote backend -> node:SNAT-port reply arriving at
/// the node: `nat_*` is the client to restore as destination.
pub const CT_DIR_SNAT_IN: u8 = 3;

/// [`CtValue::flags`]: a FIN or RST was seen in this entry's direction; the
/// agent expires it after a short idle instead of the long TCP one.
pub const CT_F_CLOSING: u16 = 1;

/// [`ServiceValue::flags`]: externalTrafficPolicy Local (the slots hold
/// only this node's endpoints; none means drop, not forward).
pub const SVC_F_LOCAL_ONLY: u16 = 1;
/// [`ServiceValue::flags`]: new flows are only accepted from the client
/// ranges in [`MapId::SourceRanges`] under this frontend's rev-NAT id.
pub const SVC_F_SOURCE_RANGES: u16 = 2;
/// Entries of [`MapId::SourceRanges`].
pub const SOURCE_RANGES_MAX_ENTRIES: u32 = 16_384;
/// [`Backend::flags`]: the endpoint runs on another node (external traffic
/// to it is SNATed so that the reply returns through this node).
pub const BACKEND_F_REMOTE: u8 = 1;

/// Key of [`MapId::Conntrack`]: the 5-tuple as it appears in the packet, plus
/// which direction that tuple belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct CtKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// [`CT_DIR_FORWARD`] or [`CT_DIR_REPLY`].
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

impl CtKey {
    /// The key of the tuple in direction `dir` (byte orders as the fields).
    pub const fn new(
        saddr_be: u32,
        daddr_be: u32,
        sport_be: u16,
        dport_be: u16,
        proto: u8,
        dir: u8,
    ) -> CtKey {
        CtKey {
            saddr_be,
            daddr_be,
            sport_be,
            dport_be,
            proto,
            dir,
            _pad: [0; 2],
        }
    }
}

/// Value of [`MapId::Conntrack`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtValue {
    /// Backend chosen for the flow.
    pub backend_id: u32,
    /// Frontend to restore on replies.
    pub rev_nat_id: RevNatId,
    /// CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns()`) when the flow
    /// was first seen.
    pub created_ns: u64,
    /// Same clock, last packet (refreshed at most once a second).
    pub last_seen_ns: u64,
    /// The backend's address and port when the flow was balanced, network
    /// byte order. An established TCP flow keeps going there after its
    /// backend left the Service (as with kube-proxy, whose conntrack keeps
    /// the DNAT); only UDP flows are re-balanced then.
    pub backend_addr_be: u32,
    pub backend_port_be: u16,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// SNAT_OUT entries: the source to write (node address, SNAT port).
    /// SNAT_IN entries: the client to restore. Others: 0. Network order.
    pub nat_addr_be: u32,
    pub nat_port_be: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 40);

/// Data of a [`MapId::SourceRanges`] key. The LPM prefix length counts the
/// 32 bits of `rev_nat_id` (always matched whole) plus the range's bits of
/// `addr_be`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct SourceRange {
    /// The frontend, by its rev-NAT id, network byte order (so that its bits
    /// come first in the trie's big-endian matching).
    pub rev_nat_id_be: u32,
    /// Client network address, network byte order.
    pub addr_be: u32,
}
const _: () = assert!(core::mem::size_of::<SourceRange>() == 8);

/// Key of [`MapId::Affinity`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct AffinityKey {
    /// The frontend.
    pub rev_nat_id: RevNatId,
    /// The client, network byte order.
    pub client_addr_be: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 8);

/// Value of [`MapId::Affinity`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC_COARSE of the client's last new flow.
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// Key of [`MapId::Fragments`]: what every fragment of one IPv4 datagram
/// carries, as the fragment arrived at the program (before any rewrite).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct FragKey {
    /// Source address, network byte order.
    pub saddr_be: u32,
    /// Destination address, network byte order.
    pub daddr_be: u32,
    /// The IPv4 identification field, network byte order.
    pub id_be: u16,
    /// IP protocol number ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

/// Value of [`MapId::Fragments`]: the datagram's L4 ports as its first
/// fragment carried them when it arrived (before any rewrite).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragValue {
    /// Source port, network byte order.
    pub sport_be: u16,
    /// Destination port, network byte order.
    pub dport_be: u16,
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 4);

/// Value of [`MapId::Config`] (index 0), written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct NodeConfig {
    /// Source address of SNATed flows (the node's address on the node
    /// network), network byte order. 0: no SNAT (flows to remote backends
    /// from outside are dropped as ports exhausted).
    pub snat_addr_be: u32,
    /// SNAT source ports, inclusive, host byte order. A range the node's
    /// own sockets do not use (see `ip_local_port_range`).
    pub snat_port_first: u16,
    pub snat_port_last: u16,
}
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 8);

/// Counter of [`MapId::Stats`] (per CPU; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct StatsCounter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<StatsCounter>() == 16);

impl StatsCounter {
    /// The counters added up: a per-CPU counter's total.
    pub fn total<'a>(counters: impl IntoIterator<Item = &'a StatsCounter>) -> StatsCounter {
        counters
            .into_iter()
            .fold(StatsCounter::default(), |sum, c| StatsCounter {
                packets: sum.packets + c.packets,
                bytes: sum.bytes + c.bytes,
            })
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are repr(C), fully initialised plain data without padding
    // holes (padding is explicit), as bytemuck::Pod already proves.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::RevNat {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::StatsCounter {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::SourceRange {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragValue {}
}
