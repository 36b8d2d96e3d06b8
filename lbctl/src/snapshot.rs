//! What lbctl reads: plain data, no kernel needed (see [`super::maps`] for
//! the reading).

use std::collections::BTreeMap;

use lb_common::{
    filter_slot, AffinityKey, AffinityValue, Backend, CtKey, CtValue, FragKey, FragValue,
    NodeConfig, RevNat, RevNatId, ServiceKey, ServiceValue, SockRevNatKey, SockRevNatValue,
    SourceRange, StatsCounter, SvcName, FILTER_VALID, FILTER_VALID_WORD,
};

/// What the maps held when read. Keys and values are lb-common's, still in
/// the maps' byte order: decoding is the reports' job, so that a test can
/// build a snapshot exactly as the datapath would see the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `lb_svc_v4`: master entries (slot 0) and backend slots.
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// `lb_backend_v1` by backend id.
    pub backends: BTreeMap<u32, Backend>,
    /// `lb_revnat_v2` by rev-NAT id.
    pub revnat: BTreeMap<RevNatId, RevNat>,
    /// `lb_ct_v4`.
    pub ct: BTreeMap<CtKey, CtValue>,
    /// `lb_config_v1`'s one entry.
    pub config: Option<NodeConfig>,
    /// `lb_srcrange_v1`: (LPM prefix length, data).
    pub source_ranges: Vec<(u32, SourceRange)>,
    /// `lb_nodeaddr_v2`: node addresses (this node's NodePort addresses, value 1; peers', 2).
    pub node_addrs: BTreeMap<u32, u32>,
    /// `lb_affinity_v1`: sessionAffinity ClientIP memory.
    pub affinity: BTreeMap<AffinityKey, AffinityValue>,
    /// `lb_frag_v1`: ports of fragmented datagrams whose first fragment
    /// was rewritten.
    pub fragments: BTreeMap<FragKey, FragValue>,
    /// `lb_stats_v6` by reason index, summed over CPUs.
    pub stats: Vec<StatsCounter>,
    /// `lb_sock_netns_v1`'s one entry: the namespace balanced per socket.
    pub sock_netns: Option<u64>,
    /// `lb_sock_revnat_v1`: per socket and backend, the frontend.
    pub sock_revnat: BTreeMap<SockRevNatKey, SockRevNatValue>,
    /// `lb_svcname_v1`: the Service (namespace/name[:port]) of each
    /// frontend, by rev-NAT id.
    pub svc_names: BTreeMap<RevNatId, SvcName>,
    /// `lb_svcstats_v1`, summed over CPUs: per frontend, at `2 * id` what
    /// reached it, at `2 * id + 1` what of it was dropped or refused.
    pub svc_stats: Vec<StatsCounter>,
    /// `lb_backendstats_v1`, summed over CPUs: packets and bytes forwarded
    /// to each backend, by backend id.
    pub backend_stats: BTreeMap<u32, StatsCounter>,
    /// `lb_filter_v1`: the frontend filter's words, then its valid word.
    pub filter: Vec<u64>,
    /// CLOCK_MONOTONIC in ns when the read finished: the clock of
    /// `bpf_ktime_get_ns`, which conntrack timestamps come from.
    pub now_ns: u64,
}

impl Snapshot {
    /// What lbctl reads from maps holding `state` (the reconciler's view of
    /// the Service, backend, rev-NAT and source-range maps), encoded as
    /// the agent writes them: how golden tests go from objects to dumps
    /// without a kernel.
    pub fn of_state(state: &lb_core::reconcile::MapState) -> Snapshot {
        let source_ranges = (state.source_ranges.iter())
            .map(|&(id, net)| {
                let range = SourceRange {
                    rev_nat_id_be: id.to_be(),
                    addr_be: u32::from_ne_bytes(net.network().octets()),
                };
                (32 + u32::from(net.prefix_len()), range)
            })
            .collect();
        Snapshot {
            services: state.services.clone(),
            backends: state.backends.clone(),
            revnat: state.revnat.clone(),
            source_ranges,
            ..Snapshot::default()
        }
    }

    /// Whether the datapath's filter lets `(addr, port, proto)` of `region`
    /// (`FILTER_FRONTENDS` or `FILTER_BACKENDS`) through to the map
    /// lookups: yes when the filter is not in use (not read, or not valid
    /// yet), as in `lb-ebpf/src/select.rs`.
    pub fn in_filter(&self, region: u32, addr_be: u32, port_be: u16, proto: u8) -> bool {
        if self.filter.get(FILTER_VALID_WORD as usize) != Some(&FILTER_VALID) {
            return true;
        }
        let (word, mask) = filter_slot(region, addr_be, port_be, proto);
        self.filter
            .get(word as usize)
            .is_some_and(|w| w & mask != 0)
    }
}
