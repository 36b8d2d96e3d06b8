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
//! tracked. The stack does all routing and neighbour resolution.

use aya_ebpf::programs::XdpContext;
use lb_common::{stats, SourceRange, BACKEND_F_REMOTE, SVC_F_LOCAL_ONLY, SVC_F_SOURCE_RANGES};

use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    conntrack, flow,
    maps::{CONFIG, SOURCE_RANGES},
    nat, parse, reject, select,
};

/// Whether the frontend's loadBalancerSourceRanges admit `saddr`.
#[inline(always)]
fn source_allowed(rev_nat_id: lb_common::RevNatId, saddr_be: u32) -> bool {
    let key = Key::new(
        64,
        SourceRange {
            rev_nat_id_be: rev_nat_id.to_be(),
            addr_be: saddr_be,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

#[inline(always)]
pub fn try_node_ingress(ctx: &XdpContext) -> Result<u32, u32> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let h = match parse::parse(data, data_end) {
        Ok(h) => h,
        Err(reason) => return Ok(reason),
    };
    let config = CONFIG.get(0).copied().unwrap_or_default();

    if let Some((addr_be, port_be)) = flow::snat_reply(&h, &config) {
        nat::dnat_xdp(data, data_end, &h, addr_be, port_be)?;
        return Ok(stats::UNSNAT);
    }

    let Some((master, wildcard)) = select::external_frontend(h.daddr_be, h.dport_be, h.proto)
    else {
        return Ok(stats::PASS_NO_SERVICE);
    };
    let fwd = flow::forward_key(&h);
    if let Some((addr_be, port_be)) = flow::tracked(&h, &fwd) {
        nat::dnat_xdp(data, data_end, &h, addr_be, port_be)?;
        return Ok(stats::DNAT_ESTABLISHED);
    }

    if master.flags & SVC_F_SOURCE_RANGES != 0 && !source_allowed(master.rev_nat_id, h.saddr_be) {
        return Err(stats::DROP_SOURCE_RANGE);
    }
    if master.count == 0 && master.flags & SVC_F_LOCAL_ONLY != 0 {
        return Err(stats::DROP_NO_LOCAL_BACKENDS);
    }
    if master.count == 0 {
        return reject::reject(ctx, &h);
    }
    let (backend, value) = flow::pick(&h, &master, wildcard)?;
    let remote = backend.flags & BACKEND_F_REMOTE != 0 && master.flags & SVC_F_LOCAL_ONLY == 0;
    if remote {
        conntrack::create_snat(&fwd, &value, &config)
            .map_err(|()| stats::DROP_SNAT_PORTS_EXHAUSTED)?;
    }
    flow::record(&fwd, &backend, &value);
    nat::dnat_xdp(data, data_end, &h, backend.addr_be, backend.port_be)?;
    Ok(if remote {
        stats::DNAT_SNAT_NEW_FLOW
    } else {
        stats::DNAT_NEW_FLOW
    })
}
