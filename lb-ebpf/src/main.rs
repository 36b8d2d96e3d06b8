//! Kernel programs of the load balancer.
//!
//! * `lb_tc_pod_ingress` (TC ingress, on the node side of every pod veth):
//!   DNATs a packet addressed to a Service frontend to one of its backends
//!   and records the flow in conntrack. Everything else passes untouched.
//!   `lb_xdp_ingress` is the same at XDP, for `--pod-hook xdp` only: an XDP
//!   program on a veth turns TSO off on its peer, the pod's eth0, and costs
//!   every pod on the node most of its TCP throughput.
//! * `lb_tc_egress` (TC egress, same interfaces): rewrites a backend's reply
//!   so that it comes from the frontend. It runs *after* the node's netfilter
//!   has seen the reply as the un-NATed backend -> client packet that
//!   conntrack expects; rewriting it at XDP ingress instead would make it an
//!   INVALID packet that real nodes drop.
//!
//! * `lb_xdp_node` and `lb_tc_node_egress` (the node's uplinks): the same
//!   for traffic from outside the node to NodePorts, externalIPs and
//!   load-balancer IPs, plus SNAT of such flows to backends on other nodes
//!   (see `node.rs`).
//!
//! * `lb_tc_ingress` (TC ingress, uplinks, and pod interfaces under XDP):
//!   sends the rejections the XDP programs wrote back out (see `reject.rs`).
//! * `lb_sock_*` (cgroup sock_addr hooks): the node's own sockets are
//!   pointed at a backend at `connect()` / `sendmsg()` (see `sock.rs`).
//!
//! All four follow IPv4 fragments: the later fragments of a datagram whose
//! first fragment they rewrote get the same rewrite (see `frag.rs`).
//!
//! Entry points are thin: the `try_*` functions (one body for XDP and TC,
//! see `packet.rs`) return the packet's verdict, a [`stats::Reason`]; the
//! entry point counts it in the stats map and turns its action (pass,
//! drop, or send back: rejections, see `reject.rs`) into the hook's.

#![no_std]
#![no_main]

mod affinity;
mod bounce;
mod conntrack;
mod egress;
mod flow;
mod frag;
mod ingress;
mod maps;
mod nat;
mod node;
mod node_egress;
mod packet;
mod parse;
mod reject;
mod select;
mod sock;
mod stats;
mod svc_stats;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use stats::{Action, Reason};

#[classifier]
pub fn lb_tc_pod_ingress(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, |ctx| ingress::try_ingress(ctx, ingress::Side::Pod))
}

#[xdp]
pub fn lb_xdp_ingress(ctx: XdpContext) -> u32 {
    xdp_verdict(&ctx, |ctx| ingress::try_ingress(ctx, ingress::Side::Pod))
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    // The steps of the uplinks: reverse NAT of replies, and SNAT of hairpin
    // flows (a pod balanced to itself).
    tc_verdict(&ctx, |ctx| node_egress::try_egress(ctx, ingress::Side::Pod))
}

#[xdp]
pub fn lb_xdp_node(ctx: XdpContext) -> u32 {
    xdp_verdict(&ctx, |ctx| ingress::try_ingress(ctx, ingress::Side::Uplink))
}

#[classifier]
pub fn lb_tc_node_egress(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, |ctx| {
        node_egress::try_egress(ctx, ingress::Side::Uplink)
    })
}

#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    bounce::bounce(&ctx)
}

#[cgroup_sock_addr(connect4)]
pub fn lb_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx)
}

/// Counts the verdict and turns it into an XDP action.
#[inline(always)]
fn xdp_verdict(ctx: &XdpContext, program: fn(&XdpContext) -> Reason) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let reason = program(ctx);
    let action = match reason.action() {
        Action::Drop => xdp_action::XDP_DROP,
        // A rejection: passed up, marked for `lb_tc_ingress`, which sends
        // it back out; XDP_TX where the driver cannot mark it.
        Action::Tx if !reject::mark(ctx) => xdp_action::XDP_TX,
        Action::Tx | Action::Pass | Action::Rewrite | Action::Note => xdp_action::XDP_PASS,
    };
    stats::count(reason, len);
    action
}

/// Counts the verdict and turns it into a TC action.
#[inline(always)]
fn tc_verdict(ctx: &TcContext, program: fn(&TcContext) -> Reason) -> i32 {
    let len = ctx.len() as u64;
    let reason = program(ctx);
    let action = match reason.action() {
        Action::Drop => TC_ACT_SHOT as i32,
        // A rejection: out of the interface it came in on (at a pod veth's
        // ingress: back to the pod).
        Action::Tx => {
            // SAFETY: reading a field of our own context; plain helper call.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        Action::Pass | Action::Rewrite | Action::Note => TC_ACT_OK as i32,
    };
    stats::count(reason, len);
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
