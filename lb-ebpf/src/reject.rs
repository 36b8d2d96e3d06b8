//! Immediate refusal of new flows to a frontend without backends, the way
//! kube-proxy's REJECT rule does it: a SYN is answered with a RST and a UDP
//! datagram with an ICMP port unreachable, sent back out of the interface
//! it came in on. Clients then fail in milliseconds instead of
//! retransmitting into a timeout.
//!
//! Sending it back: from TC ingress (pod veths), the entry point redirects
//! the reply to the same interface's egress. From XDP, XDP_TX fails
//! silently on a veth in native mode unless the peer has NAPI (an XDP
//! program or GRO of its own), which the node does not control. So the
//! reply is marked and passed up; `lb_tc_ingress` on the same interface
//! redirects marked frames out of it (see `bounce.rs`). The mark is XDP
//! metadata; on kernels that refuse `bpf_xdp_adjust_meta` to XDP programs
//! it is a 4-byte trailer after the IP datagram instead (the IP stack would
//! trim it; `lb_tc_ingress` does before sending the frame). Only where the
//! driver cannot carry metadata is XDP_TX used.
//!
//! The reply is written over the packet itself, resized by the hook (see
//! `Packet::resize`), and its checksums are computed from scratch.
//! Only packets without IP options (IHL 5) are answered; anything else is
//! dropped, as is TCP that does not open a connection.
//!
//! `reject` is a BPF subprogram of its own: its stack frame would not fit
//! in the callers', and rejections are rare enough not to miss the
//! inlining. Header fields are read and written in place, one by one: whole
//! header copies would cost stack they do not have either.

use aya_ebpf::{helpers::bpf_xdp_adjust_meta, programs::XdpContext};
use lb_common::{csum, IPPROTO_TCP, REJECT_BOUNCE_MARK};

use crate::stats::{Reason, Step};
use crate::{
    packet::Packet,
    parse::{ptr_at, Headers, Ipv4Hdr, ETH_HLEN},
};

const IP_HLEN: usize = 20;
const TCP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// What an ICMP error quotes: the offending IPv4 header and the first 8
/// bytes of its payload (the UDP header).
const QUOTE_LEN: usize = IP_HLEN + 8;
const L4_OFF: usize = ETH_HLEN + IP_HLEN;
/// Lengths of the two refusals (frames without a trailer).
pub const RST_LEN: usize = L4_OFF + TCP_HLEN;
pub const UNREACH_LEN: usize = L4_OFF + ICMP_HLEN + QUOTE_LEN;

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

/// Answers a new flow's packet `h` to a frontend without backends: the
/// verdict is a rejection (action Tx), which TC redirects and XDP marks
/// for `lb_tc_ingress` (see [`mark`]) or sends with XDP_TX; or a drop where
/// no answer can be written.
#[inline(never)]
pub fn reject<P: Packet>(ctx: &P, h: &Headers) -> Step<Reason> {
    if h.l4_off != L4_OFF {
        return Err(Reason::DropNoBackends);
    }
    let reason = if h.proto == IPPROTO_TCP {
        if !h.is_tcp_syn() {
            return Err(Reason::DropNoBackends);
        }
        tcp_rst(ctx, h)?
    } else {
        icmp_unreachable(ctx, h)?
    };
    Ok(reason)
}

/// Set by the agent at load time (a read-only global the verifier reads as
/// a constant): 0 on kernels that refuse `bpf_xdp_adjust_meta` to XDP
/// programs, where the call below is then dead code it never checks.
#[no_mangle]
static XDP_META_SUPPORTED: u8 = 1;

/// Whether XDP rejections are marked with metadata (else with a trailer).
#[inline(always)]
pub fn xdp_meta_supported() -> bool {
    // SAFETY: a plain read of our own global.
    unsafe { core::ptr::read_volatile(&XDP_META_SUPPORTED) != 0 }
}

/// Length of the mark written after an XDP rejection's IP datagram, where
/// metadata cannot carry it.
pub const TRAILER_LEN: usize = 4;

/// XDP: marks a rejection for `lb_tc_ingress` to send back: the trailer
/// `reject` wrote, or [`REJECT_BOUNCE_MARK`] in front of it as metadata.
/// False where the driver cannot carry metadata: the caller then uses
/// XDP_TX. A subprogram: rejections are rare.
#[inline(never)]
pub fn mark(ctx: &XdpContext) -> bool {
    if !xdp_meta_supported() {
        return true;
    }
    let len = core::mem::size_of::<u32>();
    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(len as i32)) } != 0 {
        return false;
    }
    // SAFETY: the context's fields are valid; bounds checked below.
    let (meta, data) = unsafe { ((*ctx.ctx).data_meta as usize, ctx.data()) };
    if meta + len > data {
        return false;
    }
    // SAFETY: within the metadata area just reserved.
    unsafe { *(meta as *mut u32) = REJECT_BOUNCE_MARK };
    true
}

/// Rewrites a SYN into the RST|ACK its sender expects (RFC 9293 3.10.7.1:
/// seq 0, ack = SYN's seq + its length).
#[inline(always)]
fn tcp_rst<P: Packet>(ctx: &P, h: &Headers) -> Step<Reason> {
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
    Ok(Reason::RejectTcpRst)
}

/// Replaces a UDP datagram with the ICMP port unreachable that quotes it
/// (RFC 792), from the frontend's address, which the client sent to.
#[inline(always)]
fn icmp_unreachable<P: Packet>(ctx: &P, h: &Headers) -> Step<Reason> {
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
    Ok(Reason::RejectIcmpUnreachable)
}

/// Resizes the frame to `len` and writes the reply's Ethernet and IPv4
/// headers (see [`write_eth_ip`]); returns the new packet bounds (the old
/// pointers are invalid after the resize).
#[inline(always)]
fn reshape<P: Packet>(
    ctx: &P,
    macs: Macs,
    saddr_be: u32,
    daddr_be: u32,
    proto: u8,
    len: usize,
) -> Step<(usize, usize)> {
    let trailer = ctx.reject_trailer();
    ctx.resize(len + trailer)
        .map_err(|()| Reason::DropNoBackends)?;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    write_eth_ip(data, data_end, macs, saddr_be, daddr_be, proto, len)?;
    if trailer != 0 {
        let mark: *mut u32 = ptr(data, data_end, len)?;
        // SAFETY: bounds checked by `ptr`.
        unsafe { mark.write_unaligned(REJECT_BOUNCE_MARK) };
    }
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
) -> Step<()> {
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

/// `ptr_at`, failing with the reason these packets are dropped under.
#[inline(always)]
fn ptr<T>(data: usize, data_end: usize, off: usize) -> Step<*mut T> {
    ptr_at(data, data_end, off).ok_or(Reason::DropNoBackends)
}

#[inline(always)]
fn read<T: Copy>(data: usize, data_end: usize, off: usize) -> Step<T> {
    let p: *const T = ptr(data, data_end, off)?;
    // SAFETY: bounds checked by `ptr`.
    Ok(unsafe { *p })
}
