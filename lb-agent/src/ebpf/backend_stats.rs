//! The per-backend counters' entries (`lb_backendstats_v1`): the datapath
//! only increments existing entries, so the agent adds one, zeroed, with
//! each backend and removes it with the backend. A backend id is never
//! reused while the agent runs, so an entry never counts for two backends.

use std::io::ErrorKind;

use anyhow::Context as _;
use aya::maps::{MapData, MapError, PerCpuHashMap, PerCpuValues};
use lb_common::{MapId, StatsCounter};

pub struct BackendCounters {
    map: PerCpuHashMap<MapData, u32, StatsCounter>,
    cpus: usize,
}

impl BackendCounters {
    pub fn new(map: aya::maps::Map) -> anyhow::Result<Self> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting the possible CPUs")?;
        let map = PerCpuHashMap::try_from(map).context(MapId::BackendStats.name())?;
        Ok(Self { map, cpus })
    }

    /// Gives backend `id` zeroed counters, unless it has some: a backend
    /// rewritten in place (or adopted from the pins by a restarted agent)
    /// keeps what it counted.
    pub fn add(&mut self, id: u32) {
        let zeroes = match PerCpuValues::try_from(vec![StatsCounter::default(); self.cpus]) {
            Ok(values) => values,
            Err(e) => return tracing::warn!(id, "{}: {e}", MapId::BackendStats.name()),
        };
        const BPF_NOEXIST: u64 = 1;
        match self.map.insert(id, zeroes, BPF_NOEXIST) {
            Ok(()) => {}
            Err(e) if errno_is(&e, ErrorKind::AlreadyExists) => {}
            // Traffic to the backend still flows; it is just not counted.
            Err(e) => tracing::warn!(id, "{}: adding counters: {e}", MapId::BackendStats.name()),
        }
    }

    /// Drops backend `id`'s counters.
    pub fn remove(&mut self, id: u32) {
        match self.map.remove(&id) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) if errno_is(&e, ErrorKind::NotFound) => {}
            Err(e) => tracing::warn!(id, "{}: removing counters: {e}", MapId::BackendStats.name()),
        }
    }
}

fn errno_is(e: &MapError, kind: ErrorKind) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.kind() == kind)
}
