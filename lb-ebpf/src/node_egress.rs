//! TC egress, on the node's uplinks and on pod veths alike: after routing
//! and netfilter, the last rewrite before the wire. A local backend's reply to an external client
//! gets its frontend (node address:nodePort) back as source; a packet of an
//! external flow to a remote backend gets the node's address and its SNAT
//! port as source, so the backend's node answers to us; on a pod veth, the
//! same SNAT brings a hairpin pod's reply to itself back through the node.

use aya_ebpf::programs::TcContext;
use lb_common::CT_DIR_SNAT_OUT;

use crate::stats::{verdict, Reason, Step};
use crate::{conntrack, egress, frag, ingress::Side, nat, parse::Headers, select::BackendFilter};

#[inline(always)]
pub fn try_egress(ctx: &TcContext, side: Side) -> Reason {
    let h = match frag::headers(ctx) {
        Ok(h) => h,
        Err(reason) => return reason,
    };
    frag::follow(&h, verdict(steps(ctx, side, &h)))
}

/// The steps after parsing (a later fragment takes them with its first
/// fragment's ports: only conntrack lookups, never a new entry).
#[inline(always)]
fn steps(ctx: &TcContext, side: Side, h: &Headers) -> Step<Reason> {
    let filter = BackendFilter::read();
    if let Some(reason) = egress::reverse_nat(ctx, h, filter)? {
        return Ok(reason);
    }
    // Into a pod, the only SNAT is a hairpin's (a pod balanced to itself:
    // source and destination are that pod); anywhere, an SNATed flow goes
    // to a backend. Every other packet is spared the lookup.
    if side == Side::Pod && h.saddr_be != h.daddr_be
        || !filter.maybe_backend(h.daddr_be, h.dport_be, h.proto)
    {
        return Ok(Reason::TcPassNotReply);
    }
    let out = conntrack::key(
        h.saddr_be,
        h.daddr_be,
        h.sport_be,
        h.dport_be,
        h.proto,
        CT_DIR_SNAT_OUT,
    );
    let Some((entry, _)) = conntrack::lookup(&out, false) else {
        return Ok(Reason::TcPassNotReply);
    };
    nat::snat_tc(ctx, h, entry.nat_addr_be, entry.nat_port_be)?;
    Ok(Reason::Snat)
}
