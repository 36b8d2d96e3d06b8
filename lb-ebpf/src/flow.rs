//! The two steps every frontend packet goes through, wherever it entered:
//! stay with the flow's backend, or balance a new flow.

use lb_common::{
    Backend, CtKey, CtValue, NodeConfig, ServiceValue, CT_DIR_FORWARD, CT_DIR_SNAT_IN, IPPROTO_TCP,
};

use crate::stats::{Reason, Step};
use crate::{affinity, conntrack, parse::Headers, select};

/// The forward conntrack key of the packet.
#[inline(always)]
pub fn forward_key(h: &Headers) -> CtKey {
    conntrack::key(
        h.saddr_be,
        h.daddr_be,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_FORWARD,
    )
}

/// The backend `(addr, port, id)` of the packet's tracked flow, if it
/// stays with it. A TCP connection stays with its backend even after the backend
/// left the Service: it is the pod's to finish (kube-proxy keeps it too). A
/// UDP flow, or a new TCP connection (SYN) reusing the tuple, whose backend
/// is gone falls through to a new pick, so that the next datagram (a DNS
/// retry) reaches a live backend. "Gone" compares the address too, so a
/// backend id that names another backend after the ids wrapped cannot
/// hold a flow.
#[inline(always)]
pub fn tracked(h: &Headers, fwd: &CtKey) -> Option<(u32, u16, u32)> {
    let (entry, refreshed) = conntrack::lookup(fwd, h.is_tcp_closing())?;
    let (addr_be, port_be) = (entry.backend_addr_be, entry.backend_port_be);
    let keep = (h.proto == IPPROTO_TCP && !h.is_tcp_syn())
        || select::backend(entry.backend_id)
            .is_some_and(|b| b.addr_be == addr_be && b.port_be == port_be);
    if !keep {
        return None;
    }
    if h.is_tcp_syn() {
        // A new connection (or its SYN again) on a tracked tuple: both
        // entries belong to it, fresh, so that its backend's SYN-ACK does
        // not look like a closed flow's stale reply (`egress::reverse_nat`).
        conntrack::reopen(fwd, &entry);
    } else {
        conntrack::keep_reply(fwd, addr_be, port_be, &entry, refreshed);
    }
    Some((addr_be, port_be, entry.backend_id))
}

/// Balances a new flow: picks a backend of `master` and prepares its
/// conntrack value. `wildcard`: the frontend is a NodePort, whose replies
/// must come from the node address the client used (the rev-NAT target
/// only knows the port).
#[inline(always)]
pub fn pick(h: &Headers, master: &ServiceValue, wildcard: bool) -> Step<(Backend, CtValue)> {
    let vip_be = if wildcard { 0 } else { h.daddr_be };
    let (backend_id, backend) = match affinity::recall(master, h.saddr_be) {
        Some(chosen) => chosen,
        None => {
            let hash =
                lb_common::hash::flow_hash(h.saddr_be, h.daddr_be, h.sport_be, h.dport_be, h.proto);
            select::pick_backend(vip_be, h.dport_be, h.proto, master, hash)?
        }
    };
    affinity::remember(master, h.saddr_be, backend_id);
    let mut value = conntrack::new_value(
        backend.addr_be,
        backend.port_be,
        backend_id,
        master.rev_nat_id,
    );
    if wildcard {
        value.nat_addr_be = h.daddr_be;
    }
    Ok((backend, value))
}

/// Records the new flow (forward and reply entries). A failed insert is
/// counted; the packet is still forwarded and the flow works until its
/// next packet re-picks.
#[inline(always)]
pub fn record(fwd: &CtKey, backend: &Backend, value: &CtValue) {
    if conntrack::create_with(fwd, backend.addr_be, backend.port_be, value).is_err() {
        crate::stats::count(Reason::CtInsertFailed, 0);
    }
}

/// A reply to a flow this node SNATed (a remote backend's reply arriving
/// at an uplink, or a hairpin pod's reply to itself): the client to
/// restore as destination. Only packets addressed to the SNAT address and
/// ports cost a lookup.
#[inline(always)]
pub fn snat_reply(h: &Headers, config: &NodeConfig) -> Option<(u32, u16)> {
    let dport = u16::from_be(h.dport_be);
    if h.daddr_be != config.snat_addr_be
        || config.snat_addr_be == 0
        || !(config.snat_port_first..=config.snat_port_last).contains(&dport)
    {
        return None;
    }
    let k = conntrack::key(
        h.saddr_be,
        h.daddr_be,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_SNAT_IN,
    );
    let (entry, _) = conntrack::lookup(&k, false)?;
    Some((entry.nat_addr_be, entry.nat_port_be))
}
