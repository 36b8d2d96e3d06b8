//! The flow hash both sides compute: the datapath to pick a new flow's
//! backend, `lbctl explain` to tell which backend a flow gets.

/// A hash of the packet's 5-tuple, the choice for a new flow. Random would
/// spread flows as well, but a hash gives a flow whose conntrack entry was
/// lost (evicted from a full map, expired while idle) the same backend
/// again, so the connection survives as long as the backends stay the
/// same. Each word is mixed in with a 32-bit finaliser (multiply-xorshift,
/// the constants of Wellons' `lowbias32`), so that flows differing in one
/// source port spread evenly.
#[inline(always)]
pub const fn flow_hash(
    saddr_be: u32,
    daddr_be: u32,
    sport_be: u16,
    dport_be: u16,
    proto: u8,
) -> u32 {
    let ports = ((sport_be as u32) << 16) | dport_be as u32;
    let mut h = mix(FLOW_HASH_SEED ^ saddr_be);
    h = mix(h ^ daddr_be);
    h = mix(h ^ ports);
    mix(h ^ proto as u32)
}

/// Any constant: the hash only needs to be the same on every packet and
/// across agent restarts.
const FLOW_HASH_SEED: u32 = 0x6c62_5f31;

#[inline(always)]
const fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_source_ports_spread_evenly() {
        let mut slots = [0u32; 7];
        for port in 30_000u16..37_000 {
            let h = flow_hash(0x0204_f40a, 0x0a00_600a, port.to_be(), 80u16.to_be(), 6);
            slots[(h % 7) as usize] += 1;
        }
        for n in slots {
            assert!((900..=1100).contains(&n), "{slots:?}");
        }
    }

    #[test]
    fn every_field_matters() {
        let base = flow_hash(1, 2, 3, 4, 6);
        for other in [
            flow_hash(9, 2, 3, 4, 6),
            flow_hash(1, 9, 3, 4, 6),
            flow_hash(1, 2, 9, 4, 6),
            flow_hash(1, 2, 3, 9, 6),
            flow_hash(1, 2, 3, 4, 17),
        ] {
            assert_ne!(base, other);
        }
    }
}
