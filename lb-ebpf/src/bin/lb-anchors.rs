//! Benchmark anchors, built into their own object (never attached by the
//! agent): the cheapest possible XDP and TC programs, and for each hook the
//! floor of any map-based load balancer (parse Ethernet/IPv4/L4, one hash
//! lookup). Measured side by side with the real datapath so that its cost
//! is read as a ratio.

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    macros::{classifier, map, xdp},
    maps::HashMap,
    programs::{TcContext, XdpContext},
};

/// Same key/value sizes as the service map, so the lookup costs the same.
#[map(name = "anchor_lookup")]
static LOOKUP: HashMap<[u8; 12], [u8; 12]> = HashMap::with_max_entries(65_536, 0);

#[xdp]
pub fn anchor_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn anchor_xdp_parse_lookup(ctx: XdpContext) -> u32 {
    parse_lookup(ctx.data(), ctx.data_end());
    xdp_action::XDP_PASS
}

#[classifier]
pub fn anchor_tc_ok(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

#[classifier]
pub fn anchor_tc_parse_lookup(ctx: TcContext) -> i32 {
    parse_lookup(ctx.data(), ctx.data_end());
    TC_ACT_OK as i32
}

/// Parses Ethernet, IPv4 and the L4 ports in `[data, end)` and looks the
/// destination up; the result is not used (nor is it by the callers).
#[inline(always)]
fn parse_lookup(data: usize, end: usize) {
    // Ethernet (14) + minimal IPv4 (20) + ports (4).
    if data + 38 > end {
        return;
    }
    // SAFETY: bounds checked above.
    let b = unsafe { core::slice::from_raw_parts(data as *const u8, 38) };
    if b[12] != 0x08 || b[13] != 0x00 || b[14] >> 4 != 4 {
        return;
    }
    let ihl = ((b[14] & 0x0f) as usize) * 4;
    let l4 = 14 + ihl;
    if ihl < 20 || data + l4 + 4 > end {
        return;
    }
    let ports = unsafe { core::slice::from_raw_parts((data + l4) as *const u8, 4) };
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&b[30..34]);
    key[4] = ports[2];
    key[5] = ports[3];
    key[8] = b[23];
    // SAFETY: a presence check; the helper call stays (the compiler cannot
    // tell it has no effect).
    let _ = unsafe { LOOKUP.get(&key) };
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
