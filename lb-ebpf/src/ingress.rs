//! XDP ingress: DNAT of packets addressed to a frontend.

use aya_ebpf::programs::XdpContext;
use lb_common::{stats, SVC_F_LOCAL_ONLY};

use crate::{flow, nat, parse, reject, select};

/// `Ok(reason)`: pass the (possibly rewritten) packet to the stack, or send
/// a rejection back (`stats::is_tx`). `Err(reason)`: drop it.
#[inline(always)]
pub fn try_ingress(ctx: &XdpContext) -> Result<u32, u32> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let h = match parse::parse(data, data_end) {
        Ok(h) => h,
        Err(reason) => return Ok(reason),
    };
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
    flow::record(&fwd, &backend, &value);
    nat::dnat_xdp(data, data_end, &h, backend.addr_be, backend.port_be)?;
    Ok(stats::DNAT_NEW_FLOW)
}
