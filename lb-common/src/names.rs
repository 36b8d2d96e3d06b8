//! Which Kubernetes Service each frontend comes from, for `lbctl` (the
//! datapath never reads it): kept in a pinned map so that the answer is
//! there with or without a running agent, like the rest of the state.

use bytemuck::{Pod, Zeroable};

/// `namespace/name` of a Service, or `namespace/name:port` for a named
/// port: UTF-8, NUL-padded, cut at 128 bytes (namespace and name are at
/// most 63 bytes each, so only a long port name can be cut short).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SvcName {
    pub name: [u8; 128],
}
const _: () = assert!(core::mem::size_of::<SvcName>() == 128);

impl SvcName {
    /// `text`, cut at 128 bytes (on a character boundary).
    pub fn new(text: &str) -> SvcName {
        let mut end = text.len().min(128);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut name = [0u8; 128];
        name[..end].copy_from_slice(&text.as_bytes()[..end]);
        SvcName { name }
    }

    /// The text, without its padding.
    pub fn as_str(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(128);
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C) plain bytes (bytemuck::Pod).
    unsafe impl aya::Pod for super::SvcName {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_cuts_long_names_on_a_character_boundary() {
        assert_eq!(
            SvcName::new("default/web:http").as_str(),
            "default/web:http"
        );
        let long = "é".repeat(100);
        let cut = SvcName::new(&long);
        assert_eq!(cut.as_str(), "é".repeat(64));
    }
}
