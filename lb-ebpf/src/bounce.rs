//! Rejections written at XDP (see `reject.rs`), sent back out of the
//! interface they came in on. Runs at TC ingress beside every XDP program;
//! a frame without the mark costs one or two comparisons.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use lb_common::REJECT_BOUNCE_MARK;

use crate::reject::{self, RST_LEN, TRAILER_LEN, UNREACH_LEN};

/// TC_ACT_REDIRECT (from `bpf_redirect`) for a marked frame, else
/// TC_ACT_OK. Not counted: the XDP program counted the rejection.
#[inline(always)]
pub fn bounce(ctx: &TcContext) -> i32 {
    let marked = if reject::xdp_meta_supported() {
        meta_marked(ctx)
    } else {
        trailer_marked(ctx)
    };
    if !marked {
        return TC_ACT_OK as i32;
    }
    // Egress of the same interface: to the pod on a veth, to the wire on
    // an uplink. The frame already carries the swapped MAC addresses.
    // SAFETY: reading a field of our own context; plain helper call.
    unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 }
}

/// The mark in front of the frame, as XDP metadata.
#[inline(always)]
fn meta_marked(ctx: &TcContext) -> bool {
    let skb = ctx.skb.skb;
    // SAFETY: reading fields of our own context.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    // SAFETY: four bytes of metadata, bounds checked first.
    meta + 4 <= data && unsafe { *(meta as *const u32) } == REJECT_BOUNCE_MARK
}

/// The mark after the IP datagram of a refusal-sized frame; removed when
/// found, so that the frame leaves as the refusal alone.
#[inline(always)]
fn trailer_marked(ctx: &TcContext) -> bool {
    let len = ctx.len();
    let trailer = TRAILER_LEN as u32;
    if len != RST_LEN as u32 + trailer && len != UNREACH_LEN as u32 + trailer {
        return false;
    }
    match ctx.load::<u32>((len - trailer) as usize) {
        Ok(mark) if mark == REJECT_BOUNCE_MARK => {}
        _ => return false,
    }
    // SAFETY: plain helper call on our own context.
    unsafe { bpf_skb_change_tail(ctx.skb.skb, len - trailer, 0) == 0 }
}
