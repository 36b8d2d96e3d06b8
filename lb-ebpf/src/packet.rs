//! What the forward path needs from a packet, for both hooks it runs at:
//! XDP (uplinks, and pod veths on `--pod-hook xdp`) and TC ingress (pod
//! veths). `ingress.rs` and `reject.rs` are written once against this
//! trait; each program gets its own copy, with no indirection left.
//!
//! The two differ in what a rewrite may assume. An XDP buffer has no skb:
//! the checksum state of a pod's packet must be guessed (`nat::dnat_xdp`).
//! A TC skb says it, and the kernel's checksum helpers update a
//! CHECKSUM_PARTIAL packet (a pod's offloaded TCP, GSO super-packets of
//! 64 KiB included) without touching its payload.

use aya_ebpf::{
    helpers::{bpf_skb_change_tail, bpf_skb_pull_data, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};

use crate::stats::Step;
use crate::{
    egress, nat,
    parse::{self, Headers},
    reject,
};

pub trait Packet {
    /// Start and end of the packet's linear bytes.
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The packet's length, for the byte counters.
    fn len(&self) -> u64;
    /// Parses the headers (`parse.rs`); `Err` is the reason the packet
    /// passes untouched.
    fn headers(&self) -> Step<Headers>;
    /// Rewrites the destination to `daddr:dport`, checksums kept right.
    fn dnat(&self, h: &Headers, daddr_be: u32, dport_be: u16) -> Step<()>;
    /// Makes the packet exactly `len` bytes long, at whichever end suits the
    /// hook (a refusal is written from scratch over it), with all of it in
    /// the linear area. Packet pointers taken before are invalid afterwards.
    fn resize(&self, len: usize) -> Result<(), ()>;
    /// Bytes a refusal carries after its IP datagram (see `reject.rs`).
    fn reject_trailer(&self) -> usize {
        0
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u64
    }

    #[inline(always)]
    fn headers(&self) -> Step<Headers> {
        parse::parse(XdpContext::data(self), XdpContext::data_end(self))
    }

    #[inline(always)]
    fn dnat(&self, h: &Headers, daddr_be: u32, dport_be: u16) -> Step<()> {
        nat::dnat_xdp(
            XdpContext::data(self),
            XdpContext::data_end(self),
            h,
            daddr_be,
            dport_be,
        )
    }

    /// At the front: every XDP buffer has headroom, while a veth's
    /// native-mode buffer may have no tailroom (a small datagram could not
    /// grow into its ICMP error).
    #[inline(always)]
    fn resize(&self, len: usize) -> Result<(), ()> {
        // Written as growth (new minus old length): the other way round, the
        // compiler turns it into pointer arithmetic the verifier refuses.
        let grow = len as i32 - (XdpContext::data_end(self) - XdpContext::data(self)) as i32;
        // SAFETY: plain helper call on our own context.
        if grow != 0 && unsafe { bpf_xdp_adjust_head(self.ctx, -grow) } != 0 {
            return Err(());
        }
        Ok(())
    }

    #[inline(always)]
    fn reject_trailer(&self) -> usize {
        if reject::xdp_meta_supported() {
            0
        } else {
            reject::TRAILER_LEN
        }
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        TcContext::len(self) as u64
    }

    #[inline(always)]
    fn headers(&self) -> Step<Headers> {
        egress::parse_skb(self)
    }

    #[inline(always)]
    fn dnat(&self, h: &Headers, daddr_be: u32, dport_be: u16) -> Step<()> {
        nat::dnat_tc(self, h, daddr_be, dport_be)
    }

    /// At the tail (an skb's head cannot shrink below its headers), then
    /// pulled linear. A GSO super-packet (a UDP_SEGMENT send) is not
    /// turned into one refusal: it is dropped instead.
    #[inline(always)]
    fn resize(&self, len: usize) -> Result<(), ()> {
        let skb = self.skb.skb;
        // SAFETY: reading a field of our own context; plain helper calls.
        unsafe {
            if (*skb).gso_segs > 1 {
                return Err(());
            }
            if bpf_skb_change_tail(skb, len as u32, 0) != 0
                || bpf_skb_pull_data(skb, len as u32) != 0
            {
                return Err(());
            }
        }
        Ok(())
    }
}
