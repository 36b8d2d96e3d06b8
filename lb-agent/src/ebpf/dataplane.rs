//! `Dataplane` over the pinned BPF maps.

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData,
    },
    Ebpf,
};
use ipnet::Ipv4Net;
use lb_common::{
    Backend, NodeConfig, RevNat, RevNatId, ServiceKey, ServiceValue, SourceRange, MAP_BACKENDS,
    MAP_BACKEND_STATS, MAP_CONFIG, MAP_REVNAT, MAP_SERVICES, MAP_SOURCE_RANGES,
};

use super::backend_stats::BackendCounters;
use super::monitor::max_entries;
use lb_core::reconcile::{Capacity, Dataplane, DataplaneError, MapOp, MapState};

/// The maps the reconciler writes (conntrack and stats are the datapath's
/// own), and the node's settings.
pub struct BpfDataplane {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    revnat: HashMap<MapData, RevNatId, RevNat>,
    source_ranges: LpmTrie<MapData, SourceRange, u32>,
    config: Array<MapData, NodeConfig>,
    /// Follows the backend map's entries.
    counters: BackendCounters,
    /// Sizes of the three maps (services, backends, rev-NAT).
    max_entries: [u32; 3],
    /// Size of the source-range trie.
    source_ranges_max: u32,
}

impl BpfDataplane {
    /// Takes the maps out of a loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the object"))
        };
        let (services, backends, revnat) =
            (take(MAP_SERVICES)?, take(MAP_BACKENDS)?, take(MAP_REVNAT)?);
        let max_entries = [
            max_entries(&services).context(MAP_SERVICES)?,
            max_entries(&backends).context(MAP_BACKENDS)?,
            max_entries(&revnat).context(MAP_REVNAT)?,
        ];
        let backends: HashMap<_, u32, Backend> =
            HashMap::try_from(backends).context(MAP_BACKENDS)?;
        let mut counters = BackendCounters::new(take(MAP_BACKEND_STATS)?)?;
        // Backends pinned by an earlier agent (or one without this map).
        for id in backends.keys() {
            counters.add(id.context(MAP_BACKENDS)?);
        }
        let source_ranges = take(MAP_SOURCE_RANGES)?;
        let source_ranges_max =
            super::monitor::max_entries(&source_ranges).context(MAP_SOURCE_RANGES)?;
        Ok(Self {
            services: HashMap::try_from(services).context(MAP_SERVICES)?,
            backends,
            counters,
            revnat: HashMap::try_from(revnat).context(MAP_REVNAT)?,
            source_ranges: LpmTrie::try_from(source_ranges).context(MAP_SOURCE_RANGES)?,
            config: Array::try_from(take(MAP_CONFIG)?).context(MAP_CONFIG)?,
            max_entries,
            source_ranges_max,
        })
    }

    /// Writes the node's datapath settings.
    pub fn set_config(&mut self, config: NodeConfig) -> anyhow::Result<()> {
        self.config.set(0, config, 0).context(MAP_CONFIG)
    }

    /// What the maps the reconciler writes can hold (as created: pinned
    /// maps keep the size they were created with).
    pub fn capacity(&self) -> Capacity {
        let [services, backends, revnat] = self.max_entries.map(|n| n as usize);
        Capacity {
            services,
            backends,
            revnat,
            source_ranges: self.source_ranges_max as usize,
        }
    }

    /// (map name, size) of the services, backends and rev-NAT maps.
    pub fn max_entries(&self) -> [(&'static str, u32); 3] {
        let [s, b, r] = self.max_entries;
        [(MAP_SERVICES, s), (MAP_BACKENDS, b), (MAP_REVNAT, r)]
    }
}

fn err(op: impl Into<String>, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError {
        op: op.into(),
        message: e.to_string(),
    }
}

impl Dataplane for BpfDataplane {
    fn read_state(&self) -> Result<MapState, DataplaneError> {
        let mut state = MapState::default();
        for kv in self.services.iter() {
            let (k, v) = kv.map_err(|e| err(format!("reading {MAP_SERVICES}"), e))?;
            state.services.insert(k, v);
        }
        for kv in self.backends.iter() {
            let (k, v) = kv.map_err(|e| err(format!("reading {MAP_BACKENDS}"), e))?;
            state.backends.insert(k, v);
        }
        for kv in self.revnat.iter() {
            let (k, v) = kv.map_err(|e| err(format!("reading {MAP_REVNAT}"), e))?;
            state.revnat.insert(k, v);
        }
        for key in self.source_ranges.keys() {
            let key = key.map_err(|e| err(format!("reading {MAP_SOURCE_RANGES}"), e))?;
            match source_range(&key) {
                Some(entry) => state.source_ranges.insert(entry),
                // Only a hand-written key can cover several frontends; it
                // cannot be told to a frontend, so it is left alone.
                None => {
                    let prefix_len = key.prefix_len();
                    tracing::warn!(
                        prefix_len,
                        "{MAP_SOURCE_RANGES}: ignoring a key shorter than a rev-NAT id"
                    );
                    false
                }
            };
        }
        Ok(state)
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        let res = match op {
            MapOp::UpsertBackend(id, b) => self.backends.insert(id, b, 0),
            MapOp::UpsertRevNat(id, r) => self.revnat.insert(id, r, 0),
            MapOp::UpsertSourceRange(id, net) => {
                (self.source_ranges).insert(&trie_key(*id, *net), 1, 0)
            }
            MapOp::UpsertService(k, v) => self.services.insert(k, v, 0),
            MapOp::DeleteService(k) => self.services.remove(k),
            MapOp::DeleteSourceRange(id, net) => self.source_ranges.remove(&trie_key(*id, *net)),
            MapOp::DeleteRevNat(id) => self.revnat.remove(id),
            MapOp::DeleteBackend(id) => self.backends.remove(id),
        };
        res.map_err(|e| err(format!("{op:?}"), e))?;
        match op {
            MapOp::UpsertBackend(id, _) => self.counters.add(*id),
            MapOp::DeleteBackend(id) => self.counters.remove(*id),
            _ => {}
        }
        Ok(())
    }
}

/// The trie key of a frontend's client network: the rev-NAT id's 32 bits
/// are always matched, then the network's.
fn trie_key(rev_nat_id: RevNatId, net: Ipv4Net) -> Key<SourceRange> {
    let data = SourceRange {
        rev_nat_id_be: rev_nat_id.to_be(),
        addr_be: u32::from_ne_bytes(net.network().octets()),
    };
    Key::new(32 + u32::from(net.prefix_len()), data)
}

/// The frontend and client network of a trie key, host bits cleared as
/// the trie ignores them (as [`MapState::source_ranges`] holds them).
/// `None` for a key that does not match a whole rev-NAT id.
fn source_range(key: &Key<SourceRange>) -> Option<(RevNatId, Ipv4Net)> {
    let data = key.data();
    let bits = key.prefix_len().checked_sub(32)?;
    let addr = Ipv4Addr::from(data.addr_be.to_ne_bytes());
    let net = Ipv4Net::new(addr, u8::try_from(bits).ok()?).ok()?;
    Some((u32::from_be(data.rev_nat_id_be), net.trunc()))
}
