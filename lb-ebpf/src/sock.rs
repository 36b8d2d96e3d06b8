//! Socket-level balancing for clients in the node's own network namespace
//! (node processes, hostNetwork pods). Their packets never cross a pod
//! veth, so the per-packet programs never see them; instead, `connect()`
//! and `sendmsg()` to a frontend are pointed at a backend before the first
//! packet exists, and `recvmsg()` / `getpeername()` show the frontend
//! again. No per-packet NAT, no conntrack entry, no reverse NAT: the
//! kernel's socket is simply connected to the backend.
//!
//! Sockets in other namespaces (pods) are left alone: their traffic takes
//! the per-packet path, which keeps their source address and conntrack
//! semantics. The agent writes its namespace's cookie to `SOCK_NETNS`; 0
//! turns this off.
//!
//! The node is one client for sessionAffinity (kube-proxy sees its sockets
//! come from the node's address too).

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    SockRevNatKey, SockRevNatValue, IPPROTO_TCP, IPPROTO_UDP, NODE_ADDR_PEER, SVC_F_LOCAL_ONLY,
    SVC_F_SOURCE_RANGES,
};

use crate::{
    affinity,
    maps::{CONFIG, SOCK_NETNS, SOCK_REVNAT},
    select,
};

const AF_INET: u32 = 2;
const ECONNREFUSED: i32 = 111;
/// What a cgroup sock_addr program returns to let the call go on.
const ALLOW: i32 = 1;
/// ... and to fail it (with the errno set by `bpf_set_retval`).
const REJECT: i32 = 0;

/// `connect()` (TCP, connected UDP) and `sendmsg()` with an address
/// (unconnected UDP): a frontend's address becomes one of its backends'.
/// A frontend without backends fails the call with ECONNREFUSED at once,
/// as the per-packet path's RST does.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: reading fields of our own context.
    let (family, proto, dst_be, port_be) = unsafe {
        (
            (*sa).user_family,
            (*sa).protocol as u8,
            (*sa).user_ip4,
            (*sa).user_port as u16,
        )
    };
    if family != AF_INET || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || !in_node_netns(sa) {
        return ALLOW;
    }
    let Some((master, kind)) = select::any_frontend(dst_be, port_be, proto) else {
        return ALLOW;
    };
    // Another node's NodePort with externalTrafficPolicy Local is that
    // node's to serve from its own endpoints: the connection goes there.
    if kind == NODE_ADDR_PEER && master.flags & SVC_F_LOCAL_ONLY != 0 {
        return ALLOW;
    }
    let wildcard = kind != select::FRONTEND_EXACT;
    // The node's own sockets may use every endpoint of an external
    // frontend with a Local policy (kube-proxy: `--src-type LOCAL`).
    let master = master.for_internal_clients();
    if master.count == 0 {
        // Also for a Local policy without local endpoints, where
        // kube-proxy drops: a refusal fails as surely, and at once.
        // SAFETY: plain helper call.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    let client_be = CONFIG.get(0).map_or(0, |c| c.snat_addr_be);
    // loadBalancerSourceRanges hold for the node's own connections too,
    // whose source is the node's address (kube-proxy applies them to all
    // traffic to the load-balancer IP).
    if master.flags & SVC_F_SOURCE_RANGES != 0
        && !crate::node::source_allowed(master.rev_nat_id, client_be)
    {
        // SAFETY: plain helper call.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    let vip_be = if wildcard { 0 } else { dst_be };
    let (backend_id, backend) = match affinity::recall(&master, client_be) {
        Some(chosen) => chosen,
        // No 5-tuple yet (the source port comes later): a random choice.
        // SAFETY: plain helper call.
        None => match select::pick_backend(vip_be, port_be, proto, &master, unsafe {
            bpf_get_prandom_u32()
        }) {
            Ok(chosen) => chosen,
            Err(_) => return ALLOW,
        },
    };
    affinity::remember(&master, client_be, backend_id);
    let key = SockRevNatKey {
        // SAFETY: plain helper call on our own context.
        cookie: unsafe { bpf_get_socket_cookie(sa.cast()) },
        backend_addr_be: backend.addr_be,
        backend_port_be: backend.port_be,
        _pad: 0,
    };
    let value = SockRevNatValue {
        frontend_addr_be: dst_be,
        frontend_port_be: port_be,
        _pad: 0,
    };
    // Without the entry, only replies read with recvmsg/getpeername show
    // the backend's address; the connection itself works.
    let _ = SOCK_REVNAT.insert(&key, &value, 0);
    // SAFETY: connect4 and sendmsg4 may write the destination.
    unsafe {
        (*sa).user_ip4 = backend.addr_be;
        (*sa).user_port = backend.port_be as u32;
    }
    ALLOW
}

/// `recvmsg()` (UDP) and `getpeername()`: a backend's address, for a socket
/// we pointed at it, shows as the frontend the application asked for.
#[inline(always)]
pub fn to_frontend(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: reading fields of our own context.
    let (family, addr_be, port_be) =
        unsafe { ((*sa).user_family, (*sa).user_ip4, (*sa).user_port as u16) };
    if family != AF_INET {
        return ALLOW;
    }
    let key = SockRevNatKey {
        // SAFETY: plain helper call on our own context.
        cookie: unsafe { bpf_get_socket_cookie(sa.cast()) },
        backend_addr_be: addr_be,
        backend_port_be: port_be,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(front) = unsafe { SOCK_REVNAT.get(&key).copied() } {
        // SAFETY: recvmsg4 and getpeername4 may write the address.
        unsafe {
            (*sa).user_ip4 = front.frontend_addr_be;
            (*sa).user_port = front.frontend_port_be as u32;
        }
    }
    ALLOW
}

/// The socket lives in the namespace the agent serves as the node's.
#[inline(always)]
fn in_node_netns(sa: *mut bpf_sock_addr) -> bool {
    let Some(&node) = SOCK_NETNS.get(0) else {
        return false;
    };
    // SAFETY: plain helper call on our own context.
    node != 0 && unsafe { bpf_get_netns_cookie(sa.cast()) } == node
}
