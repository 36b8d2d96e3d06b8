//! Incremental Internet checksum updates (RFC 1624), shared by the XDP
//! program and the tests that check its output.
//!
//! All values are taken as they sit in the packet (network byte order), and
//! the arithmetic is done on those raw 16-bit words: one's-complement sums are
//! byte-order independent, so no swapping is needed on either side.

/// Folds a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after one 16-bit word of the covered data changed from
/// `old` to `new` (HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub const fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + (new as u32);
    !fold(sum)
}

/// New checksum after one 32-bit word (e.g. an IPv4 address) changed.
#[inline(always)]
pub const fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check as u32) + ((!old) & 0xffff) + ((!old) >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

/// UDP over IPv4 may carry no checksum (0). An update must keep it 0, and a
/// computed 0 must be sent as 0xffff (RFC 768).
#[inline(always)]
pub const fn udp_fixup(original: u16, updated: u16) -> u16 {
    if original == 0 {
        0
    } else if updated == 0 {
        0xffff
    } else {
        updated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full checksum over big-endian 16-bit words, the slow reference.
    fn full(words: &[u16]) -> u16 {
        let mut sum: u32 = 0;
        for w in words {
            sum += *w as u32;
        }
        !fold(sum)
    }

    #[test]
    fn replace_matches_full_recompute() {
        let mut words = [
            0x4500u16, 0x0054, 0x1c46, 0x4000, 0x4006, 0, 0xac10, 0x0a63, 0xac10, 0x0a0c,
        ];
        let check = full(&words);
        // Change the destination address (words 8, 9).
        let old = ((words[8] as u32) << 16) | words[9] as u32;
        let new = 0x0af4_0102u32;
        words[8] = (new >> 16) as u16;
        words[9] = new as u16;
        let expect = full(&words);
        // replace4 works on the raw word as the packet holds it; on a
        // big-endian view the halves are the same words, so the sum matches.
        assert_eq!(replace4(check, old, new), expect);
        // And a single 16-bit change.
        let old_w = words[2];
        words[2] = 0xbeef;
        assert_eq!(replace2(expect, old_w, 0xbeef), full(&words));
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(udp_fixup(0, 0x1234), 0);
        assert_eq!(udp_fixup(0x1111, 0), 0xffff);
        assert_eq!(udp_fixup(0x1111, 0x2222), 0x2222);
    }
}
