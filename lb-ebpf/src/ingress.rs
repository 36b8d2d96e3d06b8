//! XDP ingress: DNAT of packets addressed to a frontend.

use aya_ebpf::programs::XdpContext;
use lb_common::{stats, CT_DIR_FORWARD, IPPROTO_TCP};

use crate::{conntrack, nat, parse, select};

/// `Ok(reason)`: pass the (possibly rewritten) packet to the stack.
/// `Err(reason)`: drop it.
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

    let fwd = conntrack::key(
        h.saddr_be,
        h.daddr_be,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_FORWARD,
    );
    if let Some((entry, refreshed)) = conntrack::lookup(&fwd) {
        // A TCP connection stays with its backend even after the backend
        // left the Service: it is the pod's to finish (kube-proxy keeps it
        // too). A UDP flow, or a new TCP connection (SYN) reusing the tuple,
        // whose backend is gone falls through to a new pick, so that the
        // next datagram (a DNS retry) reaches a live backend.
        let (addr_be, port_be) = (entry.backend_addr_be, entry.backend_port_be);
        let keep = (h.proto == IPPROTO_TCP && !h.is_tcp_syn())
            || select::backend(entry.backend_id).is_some();
        if keep {
            if refreshed {
                // Keeps the reply entry alive should the LRU have evicted it.
                let _ = conntrack::insert_reply(&fwd, addr_be, port_be, &entry);
            }
            nat::dnat_xdp(data, data_end, &h, addr_be, port_be)?;
            return Ok(stats::DNAT_ESTABLISHED);
        }
    }

    let vip_be = if wildcard { 0 } else { h.daddr_be };
    let (backend_id, backend) = select::pick_backend(vip_be, h.dport_be, h.proto, &master)?;
    let mut value = conntrack::new_value(
        backend.addr_be,
        backend.port_be,
        backend_id,
        master.rev_nat_id,
    );
    if wildcard {
        // A NodePort: the reply must come from the node address used.
        value.nat_addr_be = h.daddr_be;
    }
    if conntrack::create_with(&fwd, backend.addr_be, backend.port_be, &value).is_err() {
        // Still forwarded: the flow works until its next packet re-picks.
        crate::stats::count(stats::CT_INSERT_FAILED, 0);
    }
    nat::dnat_xdp(data, data_end, &h, backend.addr_be, backend.port_be)?;
    Ok(stats::DNAT_NEW_FLOW)
}
