//! Maps of the socket-level programs (`cgroup/connect4` and friends), which
//! balance the node's own sockets (see `lb-ebpf/src/sock.rs`).

use bytemuck::{Pod, Zeroable};

pub const SOCK_REVNAT_MAX_ENTRIES: u32 = 65_536;

/// Key of [`MapId::SockRevNat`].
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

/// Value of [`MapId::SockRevNat`]: the address the application asked for.
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
