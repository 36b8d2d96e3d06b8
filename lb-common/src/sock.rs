//! Maps of the socket-level programs (`cgroup/connect4` and friends), which
//! balance the node's own sockets (see `lb-ebpf/src/sock.rs`).

use bytemuck::{Pod, Zeroable};

/// The network namespace whose sockets are balanced at the socket level:
/// index 0, its cookie (`SO_NETNS_COOKIE`); 0 turns socket balancing off.
pub const MAP_SOCK_NETNS: &str = "lb_sock_netns_v1";
/// Per socket, the frontend each backend it was pointed at stands for, so
/// that `recvmsg()` and `getpeername()` show the frontend (LRU: sockets
/// come and go without telling us). Key [`SockRevNatKey`], value
/// [`SockRevNatValue`].
pub const MAP_SOCK_REVNAT: &str = "lb_sock_revnat_v1";
pub const SOCK_REVNAT_MAX_ENTRIES: u32 = 65_536;

/// Key of [`MAP_SOCK_REVNAT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct SockRevNatKey {
    /// The socket (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// The backend it was pointed at, network byte order.
    pub backend_addr_be: u32,
    pub backend_port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevNatKey>() == 16);

/// Value of [`MAP_SOCK_REVNAT`]: the address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SockRevNatValue {
    /// Network byte order.
    pub frontend_addr_be: u32,
    pub frontend_port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevNatValue>() == 8);

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C) plain data with explicit padding (bytemuck::Pod).
    unsafe impl aya::Pod for super::SockRevNatKey {}
    unsafe impl aya::Pod for super::SockRevNatValue {}
}
