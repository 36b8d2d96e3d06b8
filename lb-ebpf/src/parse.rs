//! Header parsing over a packet's linear bytes `[data, data_end)`, shared by
//! the XDP and TC programs. Every access is bounds-checked the way the
//! verifier wants: pointer + size <= data_end before the read.
//!
//! IPv4 fragments: a first fragment (offset 0, more-fragments set) carries
//! the L4 header and parses like a whole datagram. A later fragment
//! (offset != 0) carries none: it is marked so that rewrites touch its IP
//! header only, and its ports are left for `frag::headers` to find (those
//! its first fragment had, if we rewrote that one). Parsing reads the
//! packet and nothing else.

use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

use crate::stats::{Reason, Step};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// IPv4 "more fragments" flag of `frag_off`.
const IP_MF: u16 = 0x2000;
/// IPv4 fragment offset bits of `frag_off` (in 8-byte units).
const IP_OFFSET_MASK: u16 = 0x1fff;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type_be: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr_be: u32,
    pub daddr_be: u32,
}

/// Where a packet sits in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    None,
    /// The first fragment: offset 0, more fragments follow. It has the L4
    /// header, whose checksum covers the whole datagram.
    First,
    /// A later fragment: no L4 header in the packet. The ports are the
    /// first fragment's, from the fragment map.
    Later,
}

/// What the programs need to know about an IPv4 TCP/UDP packet.
pub struct Headers {
    /// Offset of the L4 header (14 + IHL * 4; IP options are allowed).
    /// For a later fragment: where its payload starts (no L4 header there).
    pub l4_off: usize,
    pub proto: u8,
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP flags byte (0 for UDP and later fragments).
    pub tcp_flags: u8,
    /// The IPv4 identification field, which all fragments of a datagram share.
    pub ip_id_be: u16,
    pub fragment: Fragment,
}

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;

impl Headers {
    /// Whether the packet holds an L4 header (false for a later fragment):
    /// rewrites of ports and L4 checksums apply only then.
    #[inline(always)]
    pub fn has_l4(&self) -> bool {
        self.fragment != Fragment::Later
    }

    /// A TCP FIN or RST: the connection is closing.
    #[inline(always)]
    pub fn is_tcp_closing(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0
    }

    /// A TCP SYN without ACK: the first packet of a new connection (or its
    /// retransmission).
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }

    /// A TCP SYN-ACK: a server accepting a new connection.
    #[inline(always)]
    pub fn is_tcp_syn_ack(&self) -> bool {
        self.proto == IPPROTO_TCP
            && self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN | TCP_FLAG_ACK
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.proto == IPPROTO_TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }
}

/// Largest offset we read at: Ethernet, IPv4 with options, the fixed
/// TCP header and then some.
const MAX_OFF: usize = 255;

/// Pointer to a `T` at `off`, or `None` if the packet is too short.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, off: usize) -> Option<*mut T> {
    // Free for constant offsets; for a variable one (an L4 offset kept on
    // the stack, where the verifier may lose its bounds) the bound the
    // verifier needs before adding it to a packet pointer.
    if off > MAX_OFF {
        return None;
    }
    let start = data + off;
    if start + core::mem::size_of::<T>() > data_end {
        return None;
    }
    Some(start as *mut T)
}

/// Parses Ethernet + IPv4 + the TCP/UDP ports. `Err` carries the stats
/// reason under which the packet passes untouched.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Step<Headers> {
    let eth: *const EthHdr = ptr_at(data, data_end, 0).ok_or(Reason::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).ether_type_be } != ETH_P_IP.to_be() {
        return Err(Reason::PassNotIpv4);
    }
    let ip: *const Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::PassTruncated)?;
    let ip = unsafe { &*ip };
    if ip.version_ihl >> 4 != 4 {
        return Err(Reason::PassNotIpv4);
    }
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Reason::PassTruncated);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Err(Reason::PassNotTcpUdp);
    }
    let l4_off = ETH_HLEN + ihl;
    let frag_off = u16::from_be(ip.frag_off_be);
    if frag_off & IP_OFFSET_MASK != 0 {
        // The ports are the first fragment's: `frag::headers` finds them.
        return Ok(Headers {
            l4_off,
            proto: ip.proto,
            saddr_be: ip.saddr_be,
            daddr_be: ip.daddr_be,
            sport_be: 0,
            dport_be: 0,
            tcp_flags: 0,
            ip_id_be: ip.id_be,
            fragment: Fragment::Later,
        });
    }
    let fragment = if frag_off & IP_MF != 0 {
        Fragment::First
    } else {
        Fragment::None
    };
    // The whole fixed L4 header must be there: the checksum field we may
    // rewrite is at its end for TCP.
    let l4_len = if ip.proto == IPPROTO_TCP { 20 } else { 8 };
    if data + l4_off + l4_len > data_end {
        return Err(Reason::PassTruncated);
    }
    let ports: *const [u16; 2] = ptr_at(data, data_end, l4_off).ok_or(Reason::PassTruncated)?;
    let ports = unsafe { *ports };
    let tcp_flags = if ip.proto == IPPROTO_TCP {
        let flags: *const u8 = ptr_at(data, data_end, l4_off + 13).ok_or(Reason::PassTruncated)?;
        unsafe { *flags }
    } else {
        0
    };
    Ok(Headers {
        l4_off,
        proto: ip.proto,
        saddr_be: ip.saddr_be,
        daddr_be: ip.daddr_be,
        sport_be: ports[0],
        dport_be: ports[1],
        tcp_flags,
        ip_id_be: ip.id_be,
        fragment,
    })
}
