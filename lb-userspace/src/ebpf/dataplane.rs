//! `Dataplane` over the pinned BPF maps.

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Array, HashMap, MapData},
    Ebpf,
};
use lb_common::{
    Backend, NodeConfig, RevNat, RevNatId, ServiceKey, ServiceValue, MAP_BACKENDS, MAP_CONFIG,
    MAP_REVNAT, MAP_SERVICES,
};

use super::monitor::max_entries;
use crate::reconcile::{Dataplane, DataplaneError, MapOp, MapState};

/// The three maps the reconciler writes (conntrack and stats are the
/// datapath's own).
pub struct BpfDataplane {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    revnat: HashMap<MapData, RevNatId, RevNat>,
    config: Array<MapData, NodeConfig>,
    /// Sizes of the three maps (services, backends, rev-NAT).
    max_entries: [u32; 3],
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
        Ok(Self {
            services: HashMap::try_from(services).context(MAP_SERVICES)?,
            backends: HashMap::try_from(backends).context(MAP_BACKENDS)?,
            revnat: HashMap::try_from(revnat).context(MAP_REVNAT)?,
            config: Array::try_from(take(MAP_CONFIG)?).context(MAP_CONFIG)?,
            max_entries,
        })
    }

    /// Writes the node's datapath settings.
    pub fn set_config(&mut self, config: NodeConfig) -> anyhow::Result<()> {
        self.config.set(0, config, 0).context(MAP_CONFIG)
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
        Ok(state)
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        let res = match op {
            MapOp::UpsertBackend(id, b) => self.backends.insert(id, b, 0),
            MapOp::UpsertRevNat(id, r) => self.revnat.insert(id, r, 0),
            MapOp::UpsertService(k, v) => self.services.insert(k, v, 0),
            MapOp::DeleteService(k) => self.services.remove(k),
            MapOp::DeleteRevNat(id) => self.revnat.remove(id),
            MapOp::DeleteBackend(id) => self.backends.remove(id),
        };
        res.map_err(|e| err(format!("{op:?}"), e))
    }
}
