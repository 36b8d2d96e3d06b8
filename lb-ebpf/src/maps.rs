//! The maps, declared once. Names and layouts come from `lb-common`; the
//! literals here must equal its `MAP_*` constants (the agent opens the maps
//! by those names, so a mismatch fails loudly at load time).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use lb_common::{
    stats, AffinityKey, AffinityValue, Backend, CtKey, CtValue, FragKey, FragValue, NodeConfig,
    RevNat, RevNatId, ServiceKey, ServiceValue, SockRevNatKey, SockRevNatValue, SourceRange,
    StatsCounter, SvcName, AFFINITY_MAX_ENTRIES, BACKENDS_MAX_ENTRIES, CONNTRACK_MAX_ENTRIES,
    FILTER_MAX_ENTRIES, FRAGMENTS_MAX_ENTRIES, NODE_ADDRS_MAX_ENTRIES, REVNAT_MAX_ENTRIES,
    SERVICES_MAX_ENTRIES, SOCK_REVNAT_MAX_ENTRIES, SOURCE_RANGES_MAX_ENTRIES,
};

#[map(name = "lb_svc_v4")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(SERVICES_MAX_ENTRIES, 0);

#[map(name = "lb_backend_v1")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(BACKENDS_MAX_ENTRIES, 0);

#[map(name = "lb_revnat_v2")]
pub static REVNAT: HashMap<RevNatId, RevNat> = HashMap::pinned(REVNAT_MAX_ENTRIES, 0);

/// LRU: under pressure the least recently used flows go first, never new ones.
#[map(name = "lb_ct_v4")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CONNTRACK_MAX_ENTRIES, 0);

/// Allowed client ranges per frontend (loadBalancerSourceRanges).
#[map(name = "lb_srcrange_v1")]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u32> = LpmTrie::pinned(SOURCE_RANGES_MAX_ENTRIES, 0);

/// Node addresses: this node's NodePort addresses and its peers'.
#[map(name = "lb_nodeaddr_v2")]
pub static NODE_ADDRS: HashMap<u32, u32> = HashMap::pinned(NODE_ADDRS_MAX_ENTRIES, 0);

/// sessionAffinity ClientIP: the last backend per (frontend, client).
#[map(name = "lb_affinity_v1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(AFFINITY_MAX_ENTRIES, 0);

/// IPv4 fragments: the ports of datagrams whose first fragment we rewrote.
#[map(name = "lb_frag_v1")]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAGMENTS_MAX_ENTRIES, 0);

#[map(name = "lb_config_v1")]
pub static CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

/// The cookie of the namespace whose sockets are balanced (see `sock.rs`).
#[map(name = "lb_sock_netns_v1")]
pub static SOCK_NETNS: Array<u64> = Array::pinned(1, 0);

/// Per socket and backend, the frontend it stands for.
#[map(name = "lb_sock_revnat_v1")]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(SOCK_REVNAT_MAX_ENTRIES, 0);

/// Frontend -> `namespace/name` of its Service, for lbctl only. Not
/// preallocated (BPF_F_NO_PREALLOC): 128 bytes per possible frontend.
#[map(name = "lb_svcname_v1")]
pub static SVC_NAMES: HashMap<RevNatId, SvcName> = HashMap::pinned(REVNAT_MAX_ENTRIES, 1);

/// Per frontend: packets and bytes at `2 * rev-NAT id`, the dropped or
/// refused ones at `2 * id + 1` (see `svc_stats.rs`).
#[map(name = "lb_svcstats_v1")]
pub static SVC_STATS: PerCpuArray<StatsCounter> = PerCpuArray::pinned(2 * REVNAT_MAX_ENTRIES, 0);

/// Per backend id: packets and bytes forwarded to it. Entries come and go
/// with the backends (the agent's); the datapath only increments.
#[map(name = "lb_backendstats_v1")]
pub static BACKEND_STATS: PerCpuHashMap<u32, StatsCounter> =
    PerCpuHashMap::pinned(BACKENDS_MAX_ENTRIES, 0);

#[map(name = "lb_stats_v6")]
pub static STATS: PerCpuArray<StatsCounter> = PerCpuArray::pinned(stats::COUNT, 0);

/// Frontend filter: one bit per frontend hash (see `lb_common::filter`).
#[map(name = "lb_filter_v1")]
pub static FILTER: Array<u64> = Array::pinned(FILTER_MAX_ENTRIES, 0);
