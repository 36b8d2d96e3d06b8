//! What the agent reads back from the datapath for its metrics: the
//! per-CPU verdict counters, conntrack occupancy, and every map's size.

use std::collections::BTreeSet;

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray},
    Ebpf,
};
use lb_common::{stats, CtKey, CtValue, MapId, StatsCounter};

/// Counters of one verdict reason, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonTotals {
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

pub struct DatapathMonitor {
    stats: PerCpuArray<MapData, StatsCounter>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    conntrack_max: u32,
}

impl DatapathMonitor {
    /// Takes the stats and conntrack maps out of a loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the object"))
        };
        let ct = take(MapId::Conntrack.name())?;
        let conntrack_max = max_entries(&ct).context(MapId::Conntrack.name())?;
        Ok(Self {
            stats: PerCpuArray::try_from(take(MapId::Stats.name())?)
                .context(MapId::Stats.name())?,
            conntrack: HashMap::try_from(ct).context(MapId::Conntrack.name())?,
            conntrack_max,
        })
    }

    /// Totals per reason, in index order.
    pub fn stats(&self) -> anyhow::Result<Vec<ReasonTotals>> {
        stats::Reason::ALL
            .iter()
            .enumerate()
            .map(|(i, reason)| {
                let reason = reason.name();
                let per_cpu = self
                    .stats
                    .get(&(i as u32), 0)
                    .with_context(|| format!("reading {}[{reason}]", MapId::Stats.name()))?;
                let (packets, bytes) = per_cpu
                    .iter()
                    .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
                Ok(ReasonTotals {
                    reason,
                    packets,
                    bytes,
                })
            })
            .collect()
    }

    /// Entries in the conntrack map (a walk over its keys: one syscall per
    /// entry, so call it every few seconds, not per packet).
    pub fn conntrack_entries(&self) -> u64 {
        self.conntrack.keys().filter(Result::is_ok).count() as u64
    }

    /// Removes the expired entries (and the reply entries of expired
    /// forward entries); returns (entries seen, entries removed).
    pub fn collect_garbage(
        &mut self,
        now_ns: u64,
        timeouts: &lb_core::conntrack::CtTimeouts,
    ) -> GcReport {
        use lb_core::conntrack::{expired, reply_of};
        let mut seen = 0;
        let mut doomed = Vec::new();
        let mut tracked = BTreeSet::new();
        for (key, value) in self.conntrack.iter().filter_map(Result::ok) {
            seen += 1;
            if expired(&key, &value, now_ns, timeouts) {
                doomed.push(key);
                doomed.extend(reply_of(&key, &value));
            } else {
                tracked.insert((value.backend_addr_be, value.backend_port_be, key.proto));
            }
        }
        let removed = doomed
            .iter()
            .filter(|k| self.conntrack.remove(k).is_ok())
            .count() as u64;
        GcReport {
            seen,
            removed,
            tracked,
        }
    }

    /// The backends `(addr_be, port_be, proto)` conntrack entries name.
    pub fn tracked_backends(&self) -> BTreeSet<(u32, u16, u8)> {
        self.conntrack
            .iter()
            .filter_map(Result::ok)
            .map(|(key, value)| (value.backend_addr_be, value.backend_port_be, key.proto))
            .collect()
    }

    pub fn conntrack_max(&self) -> u32 {
        self.conntrack_max
    }
}

/// What a conntrack walk found.
pub struct GcReport {
    pub seen: u64,
    pub removed: u64,
    /// The backends `(addr_be, port_be, proto)` the remaining entries name.
    pub tracked: BTreeSet<(u32, u16, u8)>,
}

/// The size a map was created with (a pinned map keeps its size even when
/// the agent now asks for another).
pub fn max_entries(map: &Map) -> anyhow::Result<u32> {
    let data: &MapData = match map {
        Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::Array(d)
        | Map::LpmTrie(d) => d,
        _ => return Err(anyhow!("unexpected map type")),
    };
    Ok(data.info()?.max_entries())
}
