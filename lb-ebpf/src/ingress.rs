//! The forward path, on pod veths (TC ingress, or XDP on `--pod-hook xdp`)
//! and on uplinks (XDP): DNAT of packets addressed to a frontend, un-SNAT
//! of replies, rejection when there is no endpoint. Written once over
//! [`Packet`]; each entry point gets its own copy.

use lb_common::{BACKEND_F_REMOTE, IPPROTO_TCP, SVC_F_LOCAL_ONLY, SVC_F_SOURCE_RANGES};

use crate::stats::{verdict, Reason, Step};
use crate::{
    conntrack, flow, frag,
    maps::CONFIG,
    node,
    packet::Packet,
    parse::{Fragment, Headers},
    reject, select, svc_stats,
};

/// Where the program sits, which decides the two things that differ.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The node side of a pod veth: traffic from pods.
    Pod,
    /// A node uplink: traffic from outside the node (see `node.rs`).
    Uplink,
}

/// The packet's verdict. The entry points pass a constant `side`, so each
/// program keeps only its branches.
#[inline(always)]
pub fn try_ingress<P: Packet>(ctx: &P, side: Side) -> Reason {
    let h = match frag::headers(ctx) {
        Ok(h) => h,
        Err(reason) => return reason,
    };
    frag::follow(&h, verdict(steps(ctx, side, &h)))
}

/// The steps after parsing. A later fragment takes them like its first
/// fragment did, with the first fragment's ports, up to the conntrack
/// lookups: it never starts a flow.
#[inline(always)]
fn steps<P: Packet>(ctx: &P, side: Side, h: &Headers) -> Step<Reason> {
    // A reply to a flow this node SNATed (a remote backend's, or a hairpin
    // pod's to itself): back to the client it came from.
    let config = CONFIG.get(0).copied().unwrap_or_default();
    if let Some((addr_be, port_be)) = flow::snat_reply(h, &config) {
        ctx.dnat(h, addr_be, port_be)?;
        return Ok(Reason::Unsnat);
    }
    // One lookup decides for most traffic that is not for a Service (a
    // second only for traffic to the node's own NodePort addresses).
    let Some((master, wildcard)) = select::external_frontend(h.daddr_be, h.dport_be, h.proto)
    else {
        return Ok(Reason::PassNoService);
    };
    // A pod reaching an external frontend with a Local policy is not
    // external traffic: it may use the whole cluster's endpoints.
    let master = match side {
        Side::Pod => master.for_internal_clients(),
        Side::Uplink => master,
    };

    // Per-frontend counters: what reached it, and what of it was refused.
    let len = ctx.len();
    let fwd = flow::forward_key(h);
    if let Some((addr_be, port_be, backend_id)) = flow::tracked(h, &fwd) {
        ctx.dnat(h, addr_be, port_be)?;
        svc_stats::count(master.rev_nat_id, len, false);
        svc_stats::count_backend(backend_id, len);
        return Ok(Reason::DnatEstablished);
    }
    // The first fragment's flow is gone (or its backend, for UDP): the
    // datagram cannot be completed; leave the fragment to the stack.
    if h.fragment == Fragment::Later {
        return Ok(Reason::PassFragment);
    }

    // loadBalancerSourceRanges guard load-balancer IPs, from outside and
    // from pods alike: kube-proxy's firewall chain sees both, and upstream's
    // e2e test uses pods as the allowed and the refused clients.
    if master.flags & SVC_F_SOURCE_RANGES != 0
        && !node::source_allowed(master.rev_nat_id, h.saddr_be)
    {
        svc_stats::count(master.rev_nat_id, len, true);
        return Ok(Reason::DropSourceRange);
    }
    // A Local traffic policy without an endpoint on this node: drop, as
    // kube-proxy does (never forward to another node's endpoints).
    if master.count == 0 {
        svc_stats::count(master.rev_nat_id, len, true);
        if master.flags & SVC_F_LOCAL_ONLY != 0 {
            return Ok(Reason::DropNoLocalBackends);
        }
        // No endpoints at all: refuse at once (RST / ICMP unreachable).
        return reject::reject(ctx, h);
    }
    // A connection whose entry is gone: balanced again, to the same backend
    // (see `select::flow_hash`), but worth a counter.
    if h.proto == IPPROTO_TCP && !h.is_tcp_syn() {
        crate::stats::count(Reason::CtMissMidflow, 0);
    }
    let (backend, value) = flow::pick(h, &master, wildcard)?;
    // SNAT to the node, at TC egress, so that the reply comes back here:
    // from outside, for a backend on another node (unless the policy is
    // Local); from a pod, when it picked itself (hairpin: its reply would
    // otherwise never leave the pod).
    let snat = match side {
        Side::Uplink => {
            backend.flags & BACKEND_F_REMOTE != 0 && master.flags & SVC_F_LOCAL_ONLY == 0
        }
        Side::Pod => backend.addr_be == h.saddr_be,
    };
    if snat {
        conntrack::create_snat(&fwd, &value, &config)
            .map_err(|()| Reason::DropSnatPortsExhausted)?;
    }
    flow::record(&fwd, &backend, &value);
    ctx.dnat(h, backend.addr_be, backend.port_be)?;
    svc_stats::count(master.rev_nat_id, len, false);
    svc_stats::count_backend(value.backend_id, len);
    Ok(if snat {
        Reason::DnatSnatNewFlow
    } else {
        Reason::DnatNewFlow
    })
}
