//! XDP ingress: DNAT of packets addressed to a frontend.

use aya_ebpf::programs::XdpContext;
use lb_common::{stats, SVC_F_LOCAL_ONLY};

use crate::{conntrack, flow, maps::CONFIG, nat, parse, reject, select};

/// `Ok(reason)`: pass the (possibly rewritten) packet to the stack, or send
/// a rejection back (`stats::is_tx`). `Err(reason)`: drop it.
#[inline(always)]
pub fn try_ingress(ctx: &XdpContext) -> Result<u32, u32> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let h = match parse::parse(data, data_end) {
        Ok(h) => h,
        Err(reason) => return Ok(reason),
    };
    // A hairpin pod's reply to itself, addressed to the node's SNAT
    // address: back to the pod as the client it was.
    let config = CONFIG.get(0).copied().unwrap_or_default();
    if let Some((addr_be, port_be)) = flow::snat_reply(&h, &config) {
        nat::dnat_xdp(data, data_end, &h, addr_be, port_be)?;
        return Ok(stats::UNSNAT);
    }
    // One lookup decides for most traffic that is not for a Service (a
    // second only for traffic to the node's own NodePort addresses).
    let Some((master, wildcard)) = select::external_frontend(h.daddr_be, h.dport_be, h.proto)
    else {
        return Ok(stats::PASS_NO_SERVICE);
    };

    let fwd = flow::forward_key(&h);
    if let Some((addr_be, port_be)) = flow::tracked(&h, &fwd) {
        nat::dnat_xdp(data, data_end, &h, addr_be, port_be)?;
        return Ok(stats::DNAT_ESTABLISHED);
    }
    // internalTrafficPolicy Local without an endpoint on this node: drop,
    // as kube-proxy does (never forward to another node's endpoints).
    if master.count == 0 && master.flags & SVC_F_LOCAL_ONLY != 0 {
        return Err(stats::DROP_NO_LOCAL_BACKENDS);
    }
    // No endpoints at all: refuse at once (RST / ICMP unreachable).
    if master.count == 0 {
        return reject::reject(ctx, &h);
    }
    let (backend, value) = flow::pick(&h, &master, wildcard)?;
    // Hairpin: the pod picked itself. Its reply would never leave the pod
    // (it answers its own address locally), so the flow is SNATed to the
    // node at the pod's TC egress, like a remote backend's; the reply then
    // comes back through the node to be un-SNATed and reverse-NATed.
    let hairpin = backend.addr_be == h.saddr_be;
    if hairpin {
        conntrack::create_snat(&fwd, &value, &config)
            .map_err(|()| stats::DROP_SNAT_PORTS_EXHAUSTED)?;
    }
    flow::record(&fwd, &backend, &value);
    nat::dnat_xdp(data, data_end, &h, backend.addr_be, backend.port_be)?;
    Ok(if hairpin {
        stats::DNAT_SNAT_NEW_FLOW
    } else {
        stats::DNAT_NEW_FLOW
    })
}
