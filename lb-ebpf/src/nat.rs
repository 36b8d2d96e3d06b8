//! Packet rewrites with incremental checksum updates.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_common::{csum, IPPROTO_UDP};

use crate::parse::{ptr_at, Headers, Ipv4Hdr, ETH_HLEN};
use crate::stats::{Reason, Step};

/// XDP: rewrites the destination to `daddr:dport` and fixes the IP and L4
/// checksums. A UDP checksum of 0 (none) stays 0. A later fragment has no
/// L4 header: only its destination address and IP checksum change (the
/// first fragment's L4 checksum covers the whole datagram).
///
/// The L4 field holds one of two things, and XDP has no skb to say which:
/// a complete checksum (packets from a NIC, or sent without offload), or,
/// for a packet a local stack sent with checksum offload (CHECKSUM_PARTIAL:
/// pods behind a veth, in both XDP modes), only the folded pseudo-header
/// sum, from which the NIC or the kernel computes the checksum later. The
/// latter must stay exactly the pseudo-header sum of the new addresses
/// (ports are not in it); updating it as a checksum leaves a seed from
/// which every later computation is wrong, and the packet is dropped by its
/// receiver as soon as it leaves through a device that computes checksums.
/// A field equal to the pseudo-header sum is taken for a partial checksum:
/// a complete checksum has that value with a probability of 1 in 65535,
/// and then that one packet gets a bad checksum and is dropped (a TCP
/// retransmission, whose timestamp differs, goes through).
#[inline(always)]
pub fn dnat_xdp(
    data: usize,
    data_end: usize,
    h: &Headers,
    daddr_be: u32,
    dport_be: u16,
) -> Step<()> {
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::DropRewriteFailed)?;
    if h.has_l4() {
        let ports: *mut [u16; 2] =
            ptr_at(data, data_end, h.l4_off).ok_or(Reason::DropRewriteFailed)?;
        let l4_check: *mut u16 =
            ptr_at(data, data_end, h.l4_csum_off()).ok_or(Reason::DropRewriteFailed)?;
        // SAFETY: all three pointers were bounds-checked above. The IP
        // header is still unchanged: the pseudo-header update reads its
        // old destination.
        unsafe {
            let old_daddr = (*ip).daddr_be;
            let l4_len = u16::from_be((*ip).tot_len_be).wrapping_sub((h.l4_off - ETH_HLEN) as u16);
            let old = *l4_check;
            let seed =
                |daddr_be| csum::fold(csum::pseudo_header(h.saddr_be, daddr_be, h.proto, l4_len));
            let new = if old == seed(old_daddr) {
                seed(daddr_be)
            } else {
                csum::replace2(
                    csum::replace4(old, old_daddr, daddr_be),
                    (*ports)[1],
                    dport_be,
                )
            };
            *l4_check = if h.proto == IPPROTO_UDP {
                csum::udp_fixup(old, new)
            } else {
                new
            };
            (*ports)[1] = dport_be;
        }
    }
    // SAFETY: bounds-checked above.
    unsafe {
        (*ip).check = csum::replace4((*ip).check, (*ip).daddr_be, daddr_be);
        (*ip).daddr_be = daddr_be;
    }
    Ok(())
}

/// TC: rewrites the source to `saddr:sport` (reverse NAT of a reply, SNAT).
#[inline(always)]
pub fn snat_tc(ctx: &TcContext, h: &Headers, saddr_be: u32, sport_be: u16) -> Step<()> {
    let old = (h.saddr_be, h.sport_be);
    rewrite_tc(ctx, h, Field::Source, old, (saddr_be, sport_be))
}

/// TC: rewrites the destination to `daddr:dport` (DNAT at a pod veth's
/// ingress).
#[inline(always)]
pub fn dnat_tc(ctx: &TcContext, h: &Headers, daddr_be: u32, dport_be: u16) -> Step<()> {
    let old = (h.daddr_be, h.dport_be);
    rewrite_tc(ctx, h, Field::Destination, old, (daddr_be, dport_be))
}

/// Which end of the flow a TC rewrite changes (its index among the ports).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Source = 0,
    Destination = 1,
}

/// Rewrites one end's address and port from `old` to `new`. The addresses,
/// ports and the IP checksum (never offloaded) are written directly; the L4
/// checksum goes through the skb helper, which handles CHECKSUM_PARTIAL
/// packets (offloaded checksums, GSO super-packets), where the L4 field
/// holds only the pseudo-header sum, and complete ones alike: no payload is
/// read, nothing is linearised. A later fragment gets its address and IP
/// checksum rewritten, nothing else.
#[inline(always)]
fn rewrite_tc(
    ctx: &TcContext,
    h: &Headers,
    field: Field,
    old: (u32, u16),
    new: (u32, u16),
) -> Step<()> {
    let fail = Reason::DropRewriteFailed;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(fail)?;
    let ports: Option<*mut [u16; 2]> = if h.has_l4() {
        Some(ptr_at(data, data_end, h.l4_off).ok_or(fail)?)
    } else {
        None
    };
    // SAFETY: both pointers were bounds-checked above; the checksum
    // helpers below (which invalidate packet pointers) come after.
    unsafe {
        (*ip).check = csum::replace4((*ip).check, old.0, new.0);
        match field {
            Field::Source => (*ip).saddr_be = new.0,
            Field::Destination => (*ip).daddr_be = new.0,
        }
        if let Some(ports) = ports {
            (*ports)[field as usize] = new.1;
        }
    }
    if ports.is_some() {
        let csum_off = h.l4_csum_off();
        let udp_flag = if h.proto == IPPROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        ctx.l4_csum_replace(
            csum_off,
            old.0 as u64,
            new.0 as u64,
            BPF_F_PSEUDO_HDR as u64 | udp_flag | 4,
        )
        .map_err(|_| fail)?;
        ctx.l4_csum_replace(csum_off, old.1 as u64, new.1 as u64, udp_flag | 2)
            .map_err(|_| fail)?;
    }
    Ok(())
}
