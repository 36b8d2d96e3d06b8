//! Immediate refusal of new flows to a frontend without backends, the way
//! kube-proxy's REJECT rule does it: a SYN is answered with a RST and a UDP
//! datagram with an ICMP port unreachable, sent back out of the interface
//! it came in on. Clients then fail in milliseconds instead of
//! retransmitting into a timeout.
//!
//! Sending it back: XDP_TX fails silently on a veth in native mode unless
//! the pod's end has NAPI (an XDP program or GRO of its own), which the
//! node does not control. So the reply is marked in the XDP metadata and
//! passed up; `lb_tc_ingress` on the same interface redirects marked
//! frames out of it (see `bounce.rs`). Only where the driver cannot carry
//! metadata is XDP_TX used.
//!
//! The reply is written over the packet itself, resized with
//! `bpf_xdp_adjust_head`, and its checksums are computed from scratch.
//! Only packets without IP options (IHL 5) are answered; anything else is
//! dropped, as is TCP that does not open a connection.
//!
//! `reject` is a BPF subprogram of its own: its stack frame would not fit
//! in the callers', and rejections are rare enough not to miss the
//! inlining. Header fields are read and written in place, one by one: whole
//! header copies would cost stack they do not have either.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_meta},
    programs::XdpContext,
};
use lb_common::{csum, stats, IPPROTO_TCP, REJECT_BOUNCE_MARK};

use crate::parse::{ptr_at, Headers, Ipv4Hdr, ETH_HLEN};

const IP_HLEN: usize = 20;
const TCP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// What an ICMP error quotes: the offending IPv4 header and the first 8
/// bytes of its payload (the UDP header).
const QUOTE_LEN: usize = IP_HLEN + 8;
const L4_OFF: usize = ETH_HLEN + IP_HLEN;
const RST_LEN: usize = L4_OFF + TCP_HLEN;
const UNREACH_LEN: usize = L4_OFF + ICMP_HLEN + QUOTE_LEN;

/// Destination and source MAC addresses, as 16-bit words (cheaper to copy
/// than bytes).
type Macs = [u16; 6];

const ETH_P_IP: u16 = 0x0800;
const IPPROTO_ICMP: u8 = 1;
const IP_DF: u16 = 0x4000;
const REPLY_TTL: u8 = 64;
const TCP_RST_ACK: u8 = 0x14;
/// Data offset 5 (no options).
const TCP_DOFF_5: u8 = 0x50;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;

#[repr(C)]
struct TcpHdr {
    sport_be: u16,
    dport_be: u16,
    seq_be: u32,
    ack_be: u32,
    doff: u8,
    flags: u8,
    window_be: u16,
    check: u16,
    urg_ptr_be: u16,
}

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    unused: u32,
}

/// Answers a new flow's packet `h` to a frontend without backends. `Ok` is
/// a reason the entry point turns into XDP_PASS when the reply is marked
/// for `lb_tc_ingress` (see [`marked`]), else XDP_TX; `Err` a drop.
#[inline(never)]
pub fn reject(ctx: &XdpContext, h: &Headers) -> Result<u32, u32> {
    if h.l4_off != L4_OFF {
        return Err(stats::DROP_NO_BACKENDS);
    }
    let reason = if h.proto == IPPROTO_TCP {
        if !h.is_tcp_syn() {
            return Err(stats::DROP_NO_BACKENDS);
        }
        tcp_rst(ctx, h)?
    } else {
        icmp_unreachable(ctx, h)?
    };
    mark(ctx);
    Ok(reason)
}

/// Puts [`REJECT_BOUNCE_MARK`] in front of the frame as XDP metadata; a
/// driver without metadata support leaves the frame unmarked.
#[inline(always)]
fn mark(ctx: &XdpContext) {
    let len = core::mem::size_of::<u32>();
    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(len as i32)) } != 0 {
        return;
    }
    // SAFETY: the context's fields are valid; bounds checked below.
    let (meta, data) = unsafe { ((*ctx.ctx).data_meta as usize, ctx.data()) };
    if meta + len <= data {
        // SAFETY: within the metadata area just reserved.
        unsafe { *(meta as *mut u32) = REJECT_BOUNCE_MARK };
    }
}

/// The frame carries [`REJECT_BOUNCE_MARK`]: a rejection to pass up for
/// `lb_tc_ingress` rather than to XDP_TX.
#[inline(always)]
pub fn marked(ctx: &XdpContext) -> bool {
    // SAFETY: the context's fields are valid; bounds checked below.
    let (meta, data) = unsafe { ((*ctx.ctx).data_meta as usize, ctx.data()) };
    // SAFETY: four bytes of metadata, bounds checked first.
    meta + 4 <= data && unsafe { *(meta as *const u32) } == REJECT_BOUNCE_MARK
}

/// Rewrites a SYN into the RST|ACK its sender expects (RFC 9293 3.10.7.1:
/// seq 0, ack = SYN's seq + its length).
#[inline(always)]
fn tcp_rst(ctx: &XdpContext, h: &Headers) -> Result<u32, u32> {
    let (saddr_be, daddr_be) = (h.saddr_be, h.daddr_be);
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let macs = read::<Macs>(data, data_end, 0)?;
    let ip: *const Ipv4Hdr = ptr(data, data_end, ETH_HLEN)?;
    let syn: *const TcpHdr = ptr(data, data_end, L4_OFF)?;
    // SAFETY: bounds checked by `ptr`.
    let (tot_len, doff, seq) = unsafe {
        (
            u16::from_be((*ip).tot_len_be) as u32,
            (*syn).doff,
            u32::from_be((*syn).seq_be),
        )
    };
    // The SYN flag counts as one; any data it carried as its length.
    let headers = IP_HLEN as u32 + (doff >> 4) as u32 * 4;
    let ack = seq
        .wrapping_add(1)
        .wrapping_add(tot_len.saturating_sub(headers));

    let (data, data_end) = reshape(ctx, macs, daddr_be, saddr_be, IPPROTO_TCP, RST_LEN)?;
    let tcp: *mut TcpHdr = ptr(data, data_end, L4_OFF)?;
    // SAFETY: bounds checked by `ptr`.
    unsafe {
        (*tcp).sport_be = h.dport_be;
        (*tcp).dport_be = h.sport_be;
        (*tcp).seq_be = 0;
        (*tcp).ack_be = ack.to_be();
        (*tcp).doff = TCP_DOFF_5;
        (*tcp).flags = TCP_RST_ACK;
        (*tcp).window_be = 0;
        (*tcp).check = 0;
        (*tcp).urg_ptr_be = 0;
        let pseudo = csum::pseudo_header(daddr_be, saddr_be, IPPROTO_TCP, TCP_HLEN as u16);
        let words = &*(tcp as *const [u16; TCP_HLEN / 2]);
        (*tcp).check = csum::finish(pseudo + csum::sum(words));
    }
    Ok(stats::REJECT_TCP_RST)
}

/// Replaces a UDP datagram with the ICMP port unreachable that quotes it
/// (RFC 792), from the frontend's address, which the client sent to.
#[inline(always)]
fn icmp_unreachable(ctx: &XdpContext, h: &Headers) -> Result<u32, u32> {
    let (saddr_be, daddr_be) = (h.saddr_be, h.daddr_be);
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let macs = read::<Macs>(data, data_end, 0)?;
    // Copied out first: the resize invalidates every packet pointer.
    let quote = read::<[u16; QUOTE_LEN / 2]>(data, data_end, ETH_HLEN)?;

    let (data, data_end) = reshape(ctx, macs, daddr_be, saddr_be, IPPROTO_ICMP, UNREACH_LEN)?;
    let dst: *mut [u16; QUOTE_LEN / 2] = ptr(data, data_end, L4_OFF + ICMP_HLEN)?;
    let icmp: *mut IcmpHdr = ptr(data, data_end, L4_OFF)?;
    // SAFETY: bounds checked by `ptr`.
    unsafe {
        *dst = quote;
        (*icmp).kind = ICMP_DEST_UNREACH;
        (*icmp).code = ICMP_PORT_UNREACH;
        (*icmp).check = 0;
        (*icmp).unused = 0;
        let words = &*(icmp as *const [u16; ICMP_HLEN / 2]);
        (*icmp).check = csum::finish(csum::sum(words) + csum::sum(&quote));
    }
    Ok(stats::REJECT_ICMP_UNREACHABLE)
}

/// Resizes the frame to `len` and writes the reply's Ethernet and IPv4
/// headers (see [`write_eth_ip`]); returns the new packet bounds (the old
/// pointers are invalid after the resize).
#[inline(always)]
fn reshape(
    ctx: &XdpContext,
    macs: Macs,
    saddr_be: u32,
    daddr_be: u32,
    proto: u8,
    len: usize,
) -> Result<(usize, usize), u32> {
    resize(ctx, len)?;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    write_eth_ip(data, data_end, macs, saddr_be, daddr_be, proto, len)?;
    Ok((data, data_end))
}

/// Writes the reply's Ethernet header (back to the sender: `macs` are the
/// original destination and source) and a fresh IPv4 header without
/// options, with its checksum. `len` is the whole frame's.
#[inline(always)]
fn write_eth_ip(
    data: usize,
    data_end: usize,
    macs: Macs,
    saddr_be: u32,
    daddr_be: u32,
    proto: u8,
    len: usize,
) -> Result<(), u32> {
    let eth: *mut [u16; ETH_HLEN / 2] = ptr(data, data_end, 0)?;
    let ip: *mut Ipv4Hdr = ptr(data, data_end, ETH_HLEN)?;
    // SAFETY: bounds checked by `ptr`.
    unsafe {
        // The resize moved the frame's start: the EtherType is written too.
        *eth = [
            macs[3],
            macs[4],
            macs[5],
            macs[0],
            macs[1],
            macs[2],
            ETH_P_IP.to_be(),
        ];
        (*ip).version_ihl = 0x45;
        (*ip).tos = 0;
        (*ip).tot_len_be = ((len - ETH_HLEN) as u16).to_be();
        (*ip).id_be = 0;
        (*ip).frag_off_be = IP_DF.to_be();
        (*ip).ttl = REPLY_TTL;
        (*ip).proto = proto;
        (*ip).check = 0;
        (*ip).saddr_be = saddr_be;
        (*ip).daddr_be = daddr_be;
        let words = &*(ip as *const [u16; IP_HLEN / 2]);
        (*ip).check = csum::finish(csum::sum(words));
    }
    Ok(())
}

/// Grows or shrinks the packet to exactly `len` bytes, at its front: the
/// reply is written from scratch, so which end moves does not matter, and
/// every XDP buffer has headroom, while a veth's native-mode buffer may
/// have no tailroom (a small datagram could not grow into its ICMP error).
/// Packet pointers taken before are invalid afterwards.
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> Result<(), u32> {
    // Written as growth (new minus old length): the other way round, the
    // compiler turns it into pointer arithmetic the verifier refuses.
    let grow = len as i32 - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: plain helper call on our own context.
    if grow != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(stats::DROP_NO_BACKENDS);
    }
    Ok(())
}

/// `ptr_at`, failing with the reason these packets are dropped under.
#[inline(always)]
fn ptr<T>(data: usize, data_end: usize, off: usize) -> Result<*mut T, u32> {
    ptr_at(data, data_end, off).ok_or(stats::DROP_NO_BACKENDS)
}

#[inline(always)]
fn read<T: Copy>(data: usize, data_end: usize, off: usize) -> Result<T, u32> {
    let p: *const T = ptr(data, data_end, off)?;
    // SAFETY: bounds checked by `ptr`.
    Ok(unsafe { *p })
}
