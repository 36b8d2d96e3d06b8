//! Chain names in kube-proxy's shape: a prefix, then a base32 hash of the
//! Service port (and endpoint), so that every Service gets its own chains
//! whatever its name.
//!
//! kube-proxy hashes with SHA-256; we use FNV-1a, which gives names of the
//! same length and alphabet without a cryptographic dependency. Netfilter
//! never looks inside a name, so the rule sets cost the same.

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The first `len` (<= 25) base32 characters of a 128-bit hash of `text`.
pub fn hash(text: &str, len: usize) -> String {
    // Two FNV-1a 64 passes with different offsets make 128 bits.
    let fnv = |offset: u64| {
        text.bytes().fold(offset, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let bits =
        (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x8422_2325_cbf2_9ce4));
    (0..len)
        .map(|i| BASE32[((bits >> (123 - 5 * i)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_distinct_and_base32() {
        let a = hash("default/web:httpTCP", 16);
        assert_eq!(a, hash("default/web:httpTCP", 16));
        assert_ne!(a, hash("default/web:dnsUDP", 16));
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| BASE32.contains(&c)));
    }
}
