//! The filter: bitmaps that answer "certainly not a frontend" for most
//! packets before the Service map is looked up, and "certainly no
//! conntrack entry" before the egress programs look one up. A pod's traffic to
//! other pods, the node or the internet is not for a Service, and without
//! the filter every such packet pays a miss in the Service map (a hash
//! table of up to 262 144 buckets: a cache miss per packet), then one in
//! the node address map.
//!
//! One bit per `(address, port, protocol)` hash: set for every frontend
//! (a NodePort's wildcard `0.0.0.0:port` included) and backend before the
//! agent writes it, cleared only when the agent rewrites the whole filter
//! from what it serves and what conntrack still holds. A set bit may be another frontend's (then the lookups run as
//! before); a clear bit is never a frontend's. Until the agent has written
//! the filter once, [`FILTER_VALID_WORD`] is 0 and every packet is looked
//! up, so an agent upgrade that creates the map serves as before.

/// Words per region: 262 144 bits, 32 KiB.
pub const FILTER_REGION_WORDS: u32 = 4096;
/// Region of frontends `(VIP, port, proto)`, the NodePort wildcard's
/// `(0.0.0.0, port, proto)` included.
pub const FILTER_FRONTENDS: u32 = 0;
/// Region of backends `(pod IP, target port, proto)`: those of the Services
/// and those conntrack entries still name. A packet from one (a reply)
/// or to one (a flow SNATed on its way) may have a conntrack entry; any
/// other packet has none, and the egress programs skip their lookups.
pub const FILTER_BACKENDS: u32 = FILTER_REGION_WORDS;
/// Index of the word that is [`FILTER_VALID`] once the bits are written.
pub const FILTER_VALID_WORD: u32 = 2 * FILTER_REGION_WORDS;
pub const FILTER_MAX_ENTRIES: u32 = FILTER_VALID_WORD + 1;
pub const FILTER_VALID: u64 = 1;

/// The word (map index) and the bit in it for `(addr, port, proto)` in
/// the region starting at word `region`.
#[inline(always)]
pub const fn filter_slot(region: u32, addr_be: u32, port_be: u16, proto: u8) -> (u32, u64) {
    let key = ((addr_be as u64) << 32) | ((port_be as u64) << 8) | proto as u64;
    // Fibonacci hashing: the top 18 bits of the product.
    let bit = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - 18)) as u32;
    (region + bit / 64, 1u64 << (bit % 64))
}

const _: () = assert!(FILTER_REGION_WORDS * 64 == 1 << 18);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stay_in_range_and_spread() {
        let mut words = [0u64; FILTER_REGION_WORDS as usize];
        let mut collisions = 0;
        for i in 0..10_000u32 {
            let addr = u32::from_be_bytes([10, 96, (i >> 8) as u8, i as u8]);
            let (w, mask) = filter_slot(FILTER_FRONTENDS, addr, 80u16.to_be(), 6);
            assert!(w < FILTER_REGION_WORDS);
            if words[w as usize] & mask != 0 {
                collisions += 1;
            }
            words[w as usize] |= mask;
        }
        // 10k keys in 262k bits: ~2% collide if spread uniformly.
        assert!(collisions < 400, "{collisions} collisions");
    }
}
