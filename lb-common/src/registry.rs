//! The map registry: every map of ours, declared once, in [`for_each_map!`].
//!
//! The kernel programs declare their map statics from it (`lb-ebpf`'s
//! `maps.rs`), and userspace gets [`MapId`] from it: the pin names, the map
//! types, key and value sizes, and the sizing rule the agent and the test
//! fixture apply at load time. Adding a map is one row here; renaming it
//! (a new layout version) is one edit.

/// The kind of BPF map, as the kernel program declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    Hash,
    LruHash,
    LpmTrie,
    Array,
    PerCpuArray,
    PerCpuHash,
}

/// The sizes an operator picks (`--services-map-max` and friends); every
/// other map's size follows from these or is fixed (see [`Sizing`]). A
/// pinned map keeps the size it was created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Service map entries: frontends x (1 + backends each).
    pub services: u32,
    pub backends: u32,
    /// Rev-NAT entries: one per frontend.
    pub revnat: u32,
    pub conntrack: u32,
}

impl MapSizes {
    pub const DEFAULT: MapSizes = MapSizes {
        services: 262_144,
        backends: 131_072,
        revnat: 65_536,
        conntrack: 262_144,
    };
}

impl Default for MapSizes {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a map's entries follow [`MapSizes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizing {
    Fixed(u32),
    Services,
    Backends,
    /// One entry per frontend (the rev-NAT map's size).
    Frontends,
    /// Two entries per frontend (per-Service counters).
    FrontendsTwice,
    Conntrack,
}

impl Sizing {
    pub const fn entries(self, sizes: &MapSizes) -> u32 {
        match self {
            Sizing::Fixed(n) => n,
            Sizing::Services => sizes.services,
            Sizing::Backends => sizes.backends,
            Sizing::Frontends => sizes.revnat,
            Sizing::FrontendsTwice => sizes.revnat.saturating_mul(2),
            Sizing::Conntrack => sizes.conntrack,
        }
    }
}

/// Hands the table of maps to `$callback!`, one row per map:
/// `Variant, STATIC, "pin name", KernelType<Key, Value>, sizing, flags;`
/// (array types name only their value). The order is `lbctl map list`'s.
#[macro_export]
macro_rules! for_each_map {
    ($callback:ident) => {
        $callback! {
            /// Frontends and their backend slots.
            Services, SERVICES, "lb_svc_v4",
                HashMap<$crate::ServiceKey, $crate::ServiceValue>, $crate::Sizing::Services, 0;
            /// Backends by id (`u32`).
            Backends, BACKENDS, "lb_backend_v1",
                HashMap<u32, $crate::Backend>, $crate::Sizing::Backends, 0;
            /// Reverse-NAT targets by rev-NAT id.
            RevNat, REVNAT, "lb_revnat_v2",
                HashMap<$crate::RevNatId, $crate::RevNat>, $crate::Sizing::Frontends, 0;
            /// Connection tracking. LRU: under pressure the least recently
            /// used flows go first, never new ones.
            Conntrack, CONNTRACK, "lb_ct_v4",
                LruHashMap<$crate::CtKey, $crate::CtValue>, $crate::Sizing::Conntrack, 0;
            /// The node's settings for the datapath (one entry).
            Config, CONFIG, "lb_config_v1",
                Array<$crate::NodeConfig>, $crate::Sizing::Fixed(1), 0;
            /// Allowed client ranges of frontends with
            /// loadBalancerSourceRanges (LPM trie, which the kernel only
            /// takes unpreallocated; value 1).
            SourceRanges, SOURCE_RANGES, "lb_srcrange_v1",
                LpmTrie<$crate::SourceRange, u32>,
                $crate::Sizing::Fixed($crate::SOURCE_RANGES_MAX_ENTRIES), 1;
            /// Node addresses by address: this node's NodePort addresses
            /// ([`NODE_ADDR_LOCAL`](crate::NODE_ADDR_LOCAL)) and its peers'
            /// ([`NODE_ADDR_PEER`](crate::NODE_ADDR_PEER)).
            NodeAddrs, NODE_ADDRS, "lb_nodeaddr_v2",
                HashMap<u32, u32>, $crate::Sizing::Fixed($crate::NODE_ADDRS_MAX_ENTRIES), 0;
            /// sessionAffinity ClientIP: the backend each client last got,
            /// per frontend (LRU).
            Affinity, AFFINITY, "lb_affinity_v1",
                LruHashMap<$crate::AffinityKey, $crate::AffinityValue>,
                $crate::Sizing::Fixed($crate::AFFINITY_MAX_ENTRIES), 0;
            /// IPv4 fragments: the ports of each fragmented datagram whose
            /// first fragment was rewritten, for its later fragments (LRU).
            Fragments, FRAGMENTS, "lb_frag_v1",
                LruHashMap<$crate::FragKey, $crate::FragValue>,
                $crate::Sizing::Fixed($crate::FRAGMENTS_MAX_ENTRIES), 0;
            /// Per-CPU counters by reason (see [`stats`](crate::stats)).
            Stats, STATS, "lb_stats_v6",
                PerCpuArray<$crate::StatsCounter>, $crate::Sizing::Fixed($crate::stats::COUNT), 0;
            /// The cookie of the network namespace whose sockets are
            /// balanced at connect() (0: none).
            SockNetns, SOCK_NETNS, "lb_sock_netns_v1",
                Array<u64>, $crate::Sizing::Fixed(1), 0;
            /// Per socket and backend, the frontend it stands for (LRU).
            SockRevNat, SOCK_REVNAT, "lb_sock_revnat_v1",
                LruHashMap<$crate::SockRevNatKey, $crate::SockRevNatValue>,
                $crate::Sizing::Fixed($crate::SOCK_REVNAT_MAX_ENTRIES), 0;
            /// Frontend -> `namespace/name` of its Service, for lbctl only.
            /// Not preallocated (BPF_F_NO_PREALLOC): 128 bytes per
            /// possible frontend.
            SvcNames, SVC_NAMES, "lb_svcname_v1",
                HashMap<$crate::RevNatId, $crate::SvcName>, $crate::Sizing::Frontends, 1;
            /// Per frontend: packets and bytes at `2 * rev-NAT id`, those
            /// dropped or refused at `2 * id + 1`.
            SvcStats, SVC_STATS, "lb_svcstats_v1",
                PerCpuArray<$crate::StatsCounter>, $crate::Sizing::FrontendsTwice, 0;
            /// Per backend id: packets and bytes forwarded to it. Entries
            /// come and go with the backends (the agent's); the datapath
            /// only increments.
            BackendStats, BACKEND_STATS, "lb_backendstats_v1",
                PerCpuHashMap<u32, $crate::StatsCounter>, $crate::Sizing::Backends, 0;
            /// Frontend filter: one bit per frontend or backend hash, then
            /// the valid word (see [`filter`](crate::filter)).
            Filter, FILTER, "lb_filter_v1",
                Array<u64>, $crate::Sizing::Fixed($crate::FILTER_MAX_ENTRIES), 0;
        }
    };
}

/// Key and value sizes of a kernel map type's parameters.
macro_rules! key_value_sizes {
    (Array, $value:ty) => {
        (4, core::mem::size_of::<$value>())
    };
    (PerCpuArray, $value:ty) => {
        (4, core::mem::size_of::<$value>())
    };
    // The trie's key is the prefix length, then the data.
    (LpmTrie, $key:ty, $value:ty) => {
        (
            4 + core::mem::size_of::<$key>(),
            core::mem::size_of::<$value>(),
        )
    };
    ($kind:ident, $key:ty, $value:ty) => {
        (core::mem::size_of::<$key>(), core::mem::size_of::<$value>())
    };
}

macro_rules! map_type {
    (HashMap) => {
        MapType::Hash
    };
    (LruHashMap) => {
        MapType::LruHash
    };
    (LpmTrie) => {
        MapType::LpmTrie
    };
    (Array) => {
        MapType::Array
    };
    (PerCpuArray) => {
        MapType::PerCpuArray
    };
    (PerCpuHashMap) => {
        MapType::PerCpuHash
    };
}

macro_rules! map_ids {
    ($(
        $(#[doc = $doc:literal])*
        $id:ident, $static:ident, $name:tt, $kind:ident<$($param:ty),+>, $sizing:expr, $flags:expr;
    )*) => {
        /// One of our maps; its [`name`](Self::name) is also its pin's file name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum MapId {
            $( $(#[doc = $doc])* $id, )*
        }

        impl MapId {
            /// Every map, in the order `lbctl map list` shows them.
            pub const ALL: &'static [MapId] = &[$(MapId::$id),*];

            pub const fn name(self) -> &'static str {
                match self { $(MapId::$id => $name,)* }
            }

            pub const fn map_type(self) -> MapType {
                match self { $(MapId::$id => map_type!($kind),)* }
            }

            /// Key and value sizes in bytes, as the kernel sees them.
            pub const fn key_value_sizes(self) -> (usize, usize) {
                match self { $(MapId::$id => key_value_sizes!($kind, $($param),+),)* }
            }

            pub const fn sizing(self) -> Sizing {
                match self { $(MapId::$id => $sizing,)* }
            }

            /// `map_flags` at creation (BPF_F_NO_PREALLOC = 1).
            pub const fn flags(self) -> u32 {
                match self { $(MapId::$id => $flags,)* }
            }

            /// Entries the map is created with under `sizes`.
            pub const fn max_entries(self, sizes: &MapSizes) -> u32 {
                self.sizing().entries(sizes)
            }

            pub fn from_name(name: &str) -> Option<MapId> {
                MapId::ALL.iter().copied().find(|id| id.name() == name)
            }
        }
    };
}

crate::for_each_map!(map_ids);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_versioned() {
        for (i, a) in MapId::ALL.iter().enumerate() {
            assert!(a.name().starts_with("lb_"), "{a:?}");
            let version = a.name().rsplit_once("_v").map(|(_, v)| v);
            assert!(
                version.is_some_and(|v| v.parse::<u32>().is_ok()),
                "{} has no layout version",
                a.name()
            );
            for b in &MapId::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
            assert_eq!(MapId::from_name(a.name()), Some(*a));
        }
    }

    #[test]
    fn sizes_follow_the_operators_choice() {
        let sizes = MapSizes {
            services: 10,
            backends: 20,
            revnat: 30,
            conntrack: 40,
        };
        assert_eq!(MapId::Services.max_entries(&sizes), 10);
        assert_eq!(MapId::BackendStats.max_entries(&sizes), 20);
        assert_eq!(MapId::SvcNames.max_entries(&sizes), 30);
        assert_eq!(MapId::SvcStats.max_entries(&sizes), 60);
        assert_eq!(MapId::Conntrack.max_entries(&sizes), 40);
        assert_eq!(MapId::Config.max_entries(&sizes), 1);
        assert_eq!(MapId::SourceRanges.key_value_sizes(), (4 + 8, 4));
    }
}
