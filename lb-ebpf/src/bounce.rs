//! Rejections written at XDP (see `reject.rs`), sent back out of the
//! interface they came in on. Runs at TC ingress on every interface the
//! XDP programs serve; any frame without the mark costs one comparison.

use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_redirect, programs::TcContext};
use lb_common::REJECT_BOUNCE_MARK;

/// TC_ACT_REDIRECT (from `bpf_redirect`) for a marked frame, else
/// TC_ACT_OK. Not counted: the XDP program counted the rejection.
#[inline(always)]
pub fn bounce(ctx: &TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: reading fields of our own context.
    let (meta, data, ifindex) = unsafe {
        (
            (*skb).data_meta as usize,
            (*skb).data as usize,
            (*skb).ifindex,
        )
    };
    // SAFETY: four bytes of metadata, bounds checked first.
    if meta + 4 > data || unsafe { *(meta as *const u32) } != REJECT_BOUNCE_MARK {
        return TC_ACT_OK as i32;
    }
    // Egress of the same interface: to the pod on a veth, to the wire on
    // an uplink. The frame already carries the swapped MAC addresses.
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}
