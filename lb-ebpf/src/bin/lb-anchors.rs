//! Benchmark anchors, built into their own object (never attached by the
//! agent): the cheapest possible XDP program, and the floor of any map-based
//! load balancer (parse Ethernet/IPv4/L4, one hash lookup). Measured side by
//! side with the real datapath so that its cost is read as a ratio.

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::HashMap,
    programs::XdpContext,
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
    let (data, end) = (ctx.data(), ctx.data_end());
    // Ethernet (14) + minimal IPv4 (20) + ports (4).
    if data + 38 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let b = unsafe { core::slice::from_raw_parts(data as *const u8, 38) };
    if b[12] != 0x08 || b[13] != 0x00 || b[14] >> 4 != 4 {
        return xdp_action::XDP_PASS;
    }
    let ihl = ((b[14] & 0x0f) as usize) * 4;
    let l4 = 14 + ihl;
    if ihl < 20 || data + l4 + 4 > end {
        return xdp_action::XDP_PASS;
    }
    let ports = unsafe { core::slice::from_raw_parts((data + l4) as *const u8, 4) };
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&b[30..34]);
    key[4] = ports[2];
    key[5] = ports[3];
    key[8] = b[23];
    match unsafe { LOOKUP.get(&key) } {
        Some(_) => xdp_action::XDP_PASS,
        None => xdp_action::XDP_PASS,
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
