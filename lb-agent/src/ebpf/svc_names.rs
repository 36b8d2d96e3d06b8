//! The frontend -> Service name map (`lb_svcname_v1`), which only `lbctl`
//! reads: kept equal to the programmed frontends, writing only what
//! changed since the last sync.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{HashMap, IterableMap as _, MapData, PerCpuArray},
    util::nr_cpus,
    Ebpf,
};
use lb_common::{MapId, RevNatId, StatsCounter, SvcName};

use super::batch;

pub struct SvcNameMap {
    map: HashMap<MapData, RevNatId, SvcName>,
    /// The per-frontend counters, zeroed when an id gets a new name (a
    /// rev-NAT id freed by one frontend may be reused by another).
    counters: PerCpuArray<MapData, StatsCounter>,
    /// What the map holds (read once at start: a previous agent's entries).
    written: BTreeMap<RevNatId, String>,
}

impl SvcNameMap {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(MapId::SvcNames.name())
            .ok_or_else(|| anyhow!("map {} missing from the object", MapId::SvcNames.name()))?;
        let map: HashMap<MapData, RevNatId, SvcName> =
            HashMap::try_from(map).context(MapId::SvcNames.name())?;
        let written = map
            .iter()
            .filter_map(Result::ok)
            .map(|(id, name)| (id, name.as_str().to_owned()))
            .collect();
        let counters = ebpf
            .take_map(MapId::SvcStats.name())
            .ok_or_else(|| anyhow!("map {} missing from the object", MapId::SvcStats.name()))?;
        let counters = PerCpuArray::try_from(counters).context(MapId::SvcStats.name())?;
        Ok(Self {
            map,
            counters,
            written,
        })
    }

    /// Makes the map hold exactly `wanted`; returns how many entries were
    /// written or removed.
    pub fn sync(&mut self, wanted: BTreeMap<RevNatId, String>) -> anyhow::Result<usize> {
        let keep: std::collections::BTreeSet<RevNatId> = wanted.keys().copied().collect();
        self.update(wanted.into_iter().collect(), true, |id| keep.contains(&id))
    }

    /// Names the frontends of a partial sync: `named` are the ids of the
    /// frontends it touched, with their names now; with `prune`, ids that
    /// `exists` no longer knows (their frontends went) are removed too.
    /// Returns how many entries were written or removed.
    pub fn update(
        &mut self,
        named: Vec<(RevNatId, String)>,
        prune: bool,
        exists: impl Fn(RevNatId) -> bool,
    ) -> anyhow::Result<usize> {
        let named: Vec<(RevNatId, String)> = (named.into_iter())
            .filter(|(id, name)| self.written.get(id) != Some(name))
            .collect();
        let mut changes = named.len();
        // In batches; the names' counters start from zero with them.
        for piece in named.chunks(batch::CHUNK) {
            let ids: Vec<RevNatId> = piece.iter().map(|(id, _)| *id).collect();
            let names: Vec<SvcName> = piece.iter().map(|(_, name)| SvcName::new(name)).collect();
            let written = batch::update(self.map.map(), &ids, &names);
            let done = written
                .as_ref()
                .map_or_else(|e| e.done.min(ids.len()), |()| ids.len());
            self.zero_counters(&ids[..done]);
            (self.written).extend(piece[..done].iter().cloned());
            if let Err(e) = written {
                let id = ids.get(e.done);
                return Err(e.error)
                    .with_context(|| format!("writing {}[{id:?}]", MapId::SvcNames.name()));
            }
        }
        if prune {
            let gone: Vec<RevNatId> = self
                .written
                .keys()
                .copied()
                .filter(|&id| !exists(id))
                .collect();
            for id in gone {
                // Gone already is fine.
                let _ = self.map.remove(&id);
                self.written.remove(&id);
                changes += 1;
            }
        }
        Ok(changes)
    }

    /// New frontends' counters start from zero (a rev-NAT id freed by one
    /// frontend may be reused by another). Out of range ids (a rev-NAT map
    /// resized since the counters were pinned) are not counted by the
    /// datapath either: their failure is ignored.
    fn zero_counters(&mut self, ids: &[RevNatId]) {
        let Ok(cpus) = nr_cpus() else { return };
        let slots: Vec<u32> = (ids.iter())
            .flat_map(|id| [id.wrapping_mul(2), id.wrapping_mul(2).wrapping_add(1)])
            .collect();
        let zeroes = vec![StatsCounter::default(); slots.len() * cpus];
        let mut rest = slots.as_slice();
        while let Err(e) = batch::update(self.counters.map(), rest, &zeroes[..rest.len() * cpus]) {
            rest = rest.get(e.done + 1..).unwrap_or_default();
        }
    }
}
