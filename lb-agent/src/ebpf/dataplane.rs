//! `Dataplane` over the pinned BPF maps.

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, IterableMap as _, MapData,
    },
    Ebpf,
};
use ipnet::Ipv4Net;
use lb_common::{Backend, MapId, RevNat, RevNatId, ServiceKey, ServiceValue, SourceRange};

use super::monitor::max_entries;
use super::{backend_stats::BackendCounters, batch};
use lb_core::reconcile::{Capacity, Dataplane, DataplaneError, MapOp, MapState};

/// The maps the reconciler writes (conntrack and stats are the datapath's
/// own), and the node's settings.
pub struct BpfDataplane {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    revnat: HashMap<MapData, RevNatId, RevNat>,
    source_ranges: LpmTrie<MapData, SourceRange, u32>,
    /// Follows the backend map's entries.
    counters: BackendCounters,
    /// What the maps hold, as created.
    capacity: Capacity,
}

impl BpfDataplane {
    /// Takes the maps out of a loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let mut take = |map: MapId| {
            ebpf.take_map(map.name())
                .ok_or_else(|| anyhow!("map {} missing from the object", map.name()))
        };
        let (services, backends, revnat, source_ranges) = (
            take(MapId::Services)?,
            take(MapId::Backends)?,
            take(MapId::RevNat)?,
            take(MapId::SourceRanges)?,
        );
        let size = |map: MapId, data: &aya::maps::Map| -> anyhow::Result<usize> {
            Ok(max_entries(data).context(map.name())? as usize)
        };
        let capacity = Capacity {
            services: size(MapId::Services, &services)?,
            backends: size(MapId::Backends, &backends)?,
            revnat: size(MapId::RevNat, &revnat)?,
            source_ranges: size(MapId::SourceRanges, &source_ranges)?,
        };
        let backends: HashMap<_, u32, Backend> =
            HashMap::try_from(backends).context(MapId::Backends.name())?;
        let mut counters = BackendCounters::new(take(MapId::BackendStats)?)?;
        // Backends pinned by an earlier agent (or one without this map).
        let adopted: Vec<u32> = (backends.keys())
            .collect::<Result<_, _>>()
            .context(MapId::Backends.name())?;
        counters.adopt(&adopted);
        Ok(Self {
            services: HashMap::try_from(services).context(MapId::Services.name())?,
            backends,
            counters,
            revnat: HashMap::try_from(revnat).context(MapId::RevNat.name())?,
            source_ranges: LpmTrie::try_from(source_ranges).context(MapId::SourceRanges.name())?,
            capacity,
        })
    }

    #[cfg(test)]
    fn counters_map(&self) -> &aya::maps::PerCpuHashMap<MapData, u32, lb_common::StatsCounter> {
        self.counters.map()
    }

    /// What the maps the reconciler writes can hold (as created: pinned
    /// maps keep the size they were created with).
    pub fn capacity(&self) -> Capacity {
        self.capacity
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
            let (k, v) = kv.map_err(|e| err(format!("reading {}", MapId::Services.name()), e))?;
            state.services.insert(k, v);
        }
        for kv in self.backends.iter() {
            let (k, v) = kv.map_err(|e| err(format!("reading {}", MapId::Backends.name()), e))?;
            state.backends.insert(k, v);
        }
        for kv in self.revnat.iter() {
            let (k, v) = kv.map_err(|e| err(format!("reading {}", MapId::RevNat.name()), e))?;
            state.revnat.insert(k, v);
        }
        for key in self.source_ranges.keys() {
            let key = key.map_err(|e| err(format!("reading {}", MapId::SourceRanges.name()), e))?;
            match source_range(&key) {
                Some(entry) => state.source_ranges.insert(entry),
                // Only a hand-written key can cover several frontends; it
                // cannot be told to a frontend, so it is left alone.
                None => {
                    let prefix_len = key.prefix_len();
                    tracing::warn!(
                        prefix_len,
                        "{}: ignoring a key shorter than a rev-NAT id",
                        MapId::SourceRanges.name()
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
            MapOp::UpsertBackend(id, _) => self.counters.add(&[*id]),
            MapOp::DeleteBackend(id) => self.counters.remove(&[*id]),
            _ => {}
        }
        Ok(())
    }

    /// Runs of writes to one map go in one batch each (in order, so the
    /// reconciler's ordering holds: a backend before the slot naming it, a
    /// frontend's slots before its master entry).
    fn apply_all(&mut self, ops: &[MapOp]) -> Result<(), DataplaneError> {
        let mut rest = ops;
        while let Some(first) = rest.first() {
            let kind = std::mem::discriminant(first);
            let len = rest
                .iter()
                .take_while(|op| std::mem::discriminant(*op) == kind)
                .count();
            let (run, later) = rest.split_at(len);
            // In pieces: the keys and values of one at a time are copied.
            for piece in run.chunks(batch::CHUNK) {
                self.apply_run(piece)?;
            }
            rest = later;
        }
        Ok(())
    }
}

/// The payloads of a run of ops of one kind.
macro_rules! payloads {
    ($run:expr, $op:pat => $payload:expr) => {
        $run.iter().filter_map(|op| match op {
            $op => Some($payload),
            _ => None,
        })
    };
}

impl BpfDataplane {
    /// One run of writes of the same kind.
    fn apply_run(&mut self, run: &[MapOp]) -> Result<(), DataplaneError> {
        let written = match &run[0] {
            MapOp::UpsertService(..) => {
                let (keys, values): (Vec<_>, Vec<_>) =
                    payloads!(run, MapOp::UpsertService(k, v) => (*k, *v)).unzip();
                batch::update(self.services.map(), &keys, &values)
            }
            MapOp::UpsertBackend(..) => {
                let (ids, backends): (Vec<_>, Vec<_>) =
                    payloads!(run, MapOp::UpsertBackend(id, b) => (*id, *b)).unzip();
                let written = batch::update(self.backends.map(), &ids, &backends);
                self.counters.add(&ids[..done(&written, ids.len())]);
                written
            }
            MapOp::UpsertRevNat(..) => {
                let (ids, targets): (Vec<_>, Vec<_>) =
                    payloads!(run, MapOp::UpsertRevNat(id, r) => (*id, *r)).unzip();
                batch::update(self.revnat.map(), &ids, &targets)
            }
            MapOp::DeleteService(..) => {
                let keys: Vec<_> = payloads!(run, MapOp::DeleteService(k) => *k).collect();
                batch::delete(self.services.map(), &keys)
            }
            MapOp::DeleteRevNat(..) => {
                let ids: Vec<_> = payloads!(run, MapOp::DeleteRevNat(id) => *id).collect();
                batch::delete(self.revnat.map(), &ids)
            }
            MapOp::DeleteBackend(..) => {
                let ids: Vec<_> = payloads!(run, MapOp::DeleteBackend(id) => *id).collect();
                let written = batch::delete(self.backends.map(), &ids);
                self.counters.remove(&ids[..done(&written, ids.len())]);
                written
            }
            // Source ranges: a few entries, and the trie has no batches.
            MapOp::UpsertSourceRange(..) | MapOp::DeleteSourceRange(..) => {
                return run.iter().try_for_each(|op| self.apply(op));
            }
        };
        written.map_err(|e| err(format!("{:?}", run[e.done.min(run.len() - 1)]), e.error))
    }
}

/// How many entries of a batch of `len` were written.
fn done(written: &Result<(), batch::BatchError>, len: usize) -> usize {
    written.as_ref().map_or_else(|e| e.done.min(len), |()| len)
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use lb_common::{Backend, MapSizes, IPPROTO_TCP};
    use lb_core::reconcile::{Dataplane, MapOp};

    use super::BpfDataplane;

    /// Unpins the test's maps, also when it fails.
    struct Pins(PathBuf);

    impl Drop for Pins {
        fn drop(&mut self) {
            crate::agent::unpin_maps(&self.0);
        }
    }

    fn backend(id: u32) -> Backend {
        Backend {
            addr_be: u32::from_be_bytes([10, 244, 0, id as u8]).to_be(),
            port_be: 8080u16.to_be(),
            proto: IPPROTO_TCP,
            flags: 0,
        }
    }

    fn ids(dp: &BpfDataplane) -> (Vec<u32>, Vec<u32>) {
        let state = dp.read_state().expect("reading the maps");
        let mut counted: Vec<u32> = (dp.counters_map().keys())
            .collect::<Result<_, _>>()
            .expect("reading the counters");
        counted.sort_unstable();
        (state.backends.keys().copied().collect(), counted)
    }

    /// Runs of writes go in batches that keep their order, stop at the
    /// first write that fails (the ones before it stay), and name it; the
    /// per-backend counters follow the backends written.
    #[test]
    fn batches_write_in_order_and_stop_at_the_first_failure() {
        if !lb_testbed::privileged::require_privileged("batched map writes") {
            return;
        }
        let pins = Pins(PathBuf::from(format!(
            "/sys/fs/bpf/lbbatch-{}",
            std::process::id()
        )));
        let sizes = MapSizes {
            backends: 4,
            ..MapSizes::DEFAULT
        };
        let mut ebpf = super::super::load(&pins.0, &sizes).expect("loading the object");
        let mut dp = BpfDataplane::from_ebpf(&mut ebpf).expect("taking the maps");

        // Six backends into a map of four: the fifth finds it full.
        let upserts: Vec<MapOp> = (1..=6)
            .map(|id| MapOp::UpsertBackend(id, backend(id)))
            .collect();
        let err = dp.apply_all(&upserts).expect_err("the map holds four");
        assert!(err.op.starts_with("UpsertBackend(5,"), "{err}");
        assert_eq!(ids(&dp), (vec![1, 2, 3, 4], vec![1, 2, 3, 4]));

        // A rewrite in place keeps its counters; deletes go in a batch
        // that stops at a missing key, naming it.
        dp.apply_all(&[MapOp::UpsertBackend(2, backend(7))])
            .unwrap();
        let deletes = [1, 9, 3].map(MapOp::DeleteBackend);
        let err = dp.apply_all(&deletes).expect_err("9 is not there");
        assert_eq!(err.op, "DeleteBackend(9)");
        assert_eq!(ids(&dp), (vec![2, 3, 4], vec![2, 3, 4]));
        drop(dp);
        drop(ebpf);
    }
}
