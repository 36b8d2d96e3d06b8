//! The per-backend counters' entries (`lb_backendstats_v1`): the datapath
//! only increments existing entries, so the agent adds one, zeroed, with
//! each backend and removes it with the backend. A backend id is never
//! reused while the agent runs, so an entry never counts for two backends.
//!
//! Backend ids only grow, so an upserted id above every id given counters
//! so far is a new backend, and one at or below it a backend rewritten in
//! place, which keeps what it counted. New ones get their entries in
//! batches (which cannot say "only if absent").

use std::io::ErrorKind;

use anyhow::Context as _;
use aya::maps::{IterableMap as _, MapData, MapError, PerCpuHashMap, PerCpuValues};
use lb_common::{MapId, StatsCounter};

use super::batch;

/// Backends per batch of zeroed counters.
const CHUNK: usize = 4096;
const BPF_NOEXIST: u64 = 1;

// A per-CPU value is laid out padded to 8 bytes per CPU: none needed here.
const _: () = assert!(std::mem::size_of::<StatsCounter>().is_multiple_of(8));

pub struct BackendCounters {
    map: PerCpuHashMap<MapData, u32, StatsCounter>,
    cpus: usize,
    /// The highest backend id given counters.
    highest: u32,
}

impl BackendCounters {
    pub fn new(map: aya::maps::Map) -> anyhow::Result<Self> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting the possible CPUs")?;
        let map = PerCpuHashMap::try_from(map).context(MapId::BackendStats.name())?;
        Ok(Self {
            map,
            cpus,
            highest: 0,
        })
    }

    #[cfg(test)]
    pub fn map(&self) -> &PerCpuHashMap<MapData, u32, StatsCounter> {
        &self.map
    }

    /// The backends a restarted agent found pinned: counters for those
    /// without (pinned by an agent before this map), the others kept.
    pub fn adopt(&mut self, ids: &[u32]) {
        let zeroes = vec![StatsCounter::default(); self.cpus];
        for &id in ids {
            let Ok(values) = PerCpuValues::try_from(zeroes.clone()) else {
                return;
            };
            match self.map.insert(id, values, BPF_NOEXIST) {
                Ok(()) => {}
                Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::AlreadyExists => {
                }
                Err(e) => warn_about(Some(&id), "adding counters", &e),
            }
        }
        self.highest = self.highest.max(ids.iter().copied().max().unwrap_or(0));
    }

    /// Gives the new backends among `ids` (upserted, in order) zeroed
    /// counters.
    pub fn add(&mut self, ids: &[u32]) {
        let new: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| id > self.highest)
            .collect();
        let Some(&highest) = new.iter().max() else {
            return;
        };
        self.highest = highest;
        let zeroes = vec![StatsCounter::default(); new.len().min(CHUNK) * self.cpus];
        for chunk in new.chunks(CHUNK) {
            let values = &zeroes[..chunk.len() * self.cpus];
            // Traffic to the backends still flows; it is just not counted.
            if let Err(e) = batch::update(self.map.map(), chunk, values) {
                warn_about(chunk.get(e.done), "adding counters", &e.error);
            }
        }
    }

    /// Drops the counters of `ids` (those without any are skipped).
    pub fn remove(&mut self, ids: &[u32]) {
        let mut rest = ids;
        while !rest.is_empty() {
            let Err(e) = batch::delete(self.map.map(), rest) else {
                break;
            };
            if e.error.kind() != ErrorKind::NotFound {
                warn_about(rest.get(e.done), "removing counters", &e.error);
            }
            rest = rest.get(e.done + 1..).unwrap_or_default();
        }
    }
}

fn warn_about(id: Option<&u32>, what: &str, e: &dyn std::fmt::Display) {
    tracing::warn!(?id, "{}: {what}: {e}", MapId::BackendStats.name());
}
