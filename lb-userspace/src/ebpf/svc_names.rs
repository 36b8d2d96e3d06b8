//! The frontend -> Service name map (`lb_svcname_v1`), which only `lbctl`
//! reads: kept equal to the programmed frontends, writing only what
//! changed since the last sync.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use lb_common::{RevNatId, SvcName, MAP_SVC_NAMES};

pub struct SvcNameMap {
    map: HashMap<MapData, RevNatId, SvcName>,
    /// What the map holds (read once at start: a previous agent's entries).
    written: BTreeMap<RevNatId, String>,
}

impl SvcNameMap {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(MAP_SVC_NAMES)
            .ok_or_else(|| anyhow!("map {MAP_SVC_NAMES} missing from the object"))?;
        let map: HashMap<MapData, RevNatId, SvcName> =
            HashMap::try_from(map).context(MAP_SVC_NAMES)?;
        let written = map
            .iter()
            .filter_map(Result::ok)
            .map(|(id, name)| (id, name.as_str().to_owned()))
            .collect();
        Ok(Self { map, written })
    }

    /// Makes the map hold exactly `wanted`; returns how many entries were
    /// written or removed.
    pub fn sync(&mut self, wanted: BTreeMap<RevNatId, String>) -> anyhow::Result<usize> {
        let mut changes = 0;
        for (id, name) in &wanted {
            if self.written.get(id) != Some(name) {
                self.map
                    .insert(id, SvcName::new(name), 0)
                    .with_context(|| format!("writing {MAP_SVC_NAMES}[{id}]"))?;
                changes += 1;
            }
        }
        for id in self.written.keys().filter(|id| !wanted.contains_key(id)) {
            // Gone already is fine.
            let _ = self.map.remove(id);
            changes += 1;
        }
        self.written = wanted;
        Ok(changes)
    }
}
