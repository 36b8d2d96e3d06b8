//! The maps, from lb-common's registry (`for_each_map!`): one row there
//! declares the static here and everything userspace knows about the map.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use lb_common::MapSizes;

macro_rules! kernel_maps {
    ($(
        $(#[doc = $doc:literal])*
        $id:ident, $static:ident, $name:tt, $kind:ident<$($param:ty),+>, $sizing:expr, $flags:expr;
    )*) => {
        $(
            $(#[doc = $doc])*
            #[map(name = $name)]
            pub static $static: $kind<$($param),+> =
                $kind::pinned($sizing.entries(&MapSizes::DEFAULT), $flags);
        )*
    };
}

lb_common::for_each_map!(kernel_maps);
