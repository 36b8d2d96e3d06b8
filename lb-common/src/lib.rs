//! Plain data shared by the kernel programs (`lb-ebpf`) and userspace
//! (`lb-core`, `lb-agent`, `lbctl`): the map registry, map keys and values, stats reasons, and the
//! checksum arithmetic both sides must agree on.
//!
//! Conventions, so that neither side can misread the other:
//! * every type is `#[repr(C)]` with explicit padding and a size assertion;
//! * a field ending in `_be` holds a value in network byte order, exactly as
//!   it sits in the packet (an IPv4 address `a.b.c.d` is the `u32` whose
//!   in-memory bytes are `[a, b, c, d]`);
//! * no `bool`, `enum` or `Option` in map types: flags are integers;
//! * a map's name carries a version suffix, bumped whenever its key or value
//!   layout changes, so a new agent never reads an old pinned map as new.

#![no_std]

pub mod csum;
pub mod filter;
pub mod hash;
pub mod maps;
pub mod names;
pub mod registry;
pub mod sock;
pub mod stats;

pub use filter::*;
pub use maps::*;
pub use names::*;
pub use registry::*;
pub use sock::*;
