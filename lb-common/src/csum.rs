//! Internet checksums: incremental updates (RFC 1624) and, for the packets
//! the datapath writes from scratch (rejections), full computations. Shared
//! by the XDP program and the tests that check its output.
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

/// One's-complement sum of raw 16-bit words, not yet folded. Bounded by
/// the slice length, which the callers fix at compile time.
#[inline(always)]
pub const fn sum(words: &[u16]) -> u32 {
    let mut acc: u32 = 0;
    let mut i = 0;
    while i < words.len() {
        acc += words[i] as u32;
        i += 1;
    }
    acc
}

/// Unfolded sum of the IPv4 pseudo-header of an L4 segment of `l4_len`
/// bytes. Addresses as the packet holds them; `proto` and `l4_len` are
/// host values, stored as the raw words they are on the wire.
#[inline(always)]
pub const fn pseudo_header(saddr_be: u32, daddr_be: u32, proto: u8, l4_len: u16) -> u32 {
    (saddr_be & 0xffff)
        + (saddr_be >> 16)
        + (daddr_be & 0xffff)
        + (daddr_be >> 16)
        + (proto as u16).to_be() as u32
        + l4_len.to_be() as u32
}

/// The checksum field value for covered data whose unfolded sum is `acc`
/// (computed with the field itself at 0).
#[inline(always)]
pub const fn finish(acc: u32) -> u16 {
    !fold(acc)
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

    /// Words of `bytes` read with `word` (raw: `from_ne_bytes`).
    fn words<const N: usize>(bytes: &[u8], word: fn([u8; 2]) -> u16) -> [u16; N] {
        core::array::from_fn(|i| word([bytes[2 * i], bytes[2 * i + 1]]))
    }

    fn raw<const N: usize>(bytes: &[u8]) -> [u16; N] {
        words(bytes, u16::from_ne_bytes)
    }

    #[test]
    fn ipv4_header_checksum_from_scratch() {
        // RFC 1071-style textbook header: 192.168.0.1 -> 192.168.0.199, UDP.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00,
            0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let check = finish(sum(&raw::<10>(&hdr)));
        assert_eq!(check.to_ne_bytes(), [0xb8, 0x61]);
    }

    #[test]
    fn tcp_checksum_with_pseudo_header_matches_reference() {
        // A 20-byte RST|ACK 10.96.0.10:80 -> 10.244.4.2:40000, ack 1001.
        let (saddr, daddr) = ([10u8, 96, 0, 10], [10u8, 244, 4, 2]);
        let mut seg = [0u8; 20];
        seg[0..2].copy_from_slice(&80u16.to_be_bytes());
        seg[2..4].copy_from_slice(&40000u16.to_be_bytes());
        seg[8..12].copy_from_slice(&1001u32.to_be_bytes());
        seg[12] = 0x50;
        seg[13] = 0x14;
        let acc = pseudo_header(u32::from_ne_bytes(saddr), u32::from_ne_bytes(daddr), 6, 20)
            + sum(&raw::<10>(&seg));
        // Reference: big-endian words of pseudo-header and segment.
        let mut bytes = [0u8; 32];
        bytes[0..4].copy_from_slice(&saddr);
        bytes[4..8].copy_from_slice(&daddr);
        bytes[8..12].copy_from_slice(&[0, 6, 0, 20]);
        bytes[12..].copy_from_slice(&seg);
        let reference = full(&words::<16>(&bytes, u16::from_be_bytes));
        assert_eq!(finish(acc).to_ne_bytes(), reference.to_be_bytes());
    }
}
