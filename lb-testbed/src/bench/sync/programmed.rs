//! What the agent has programmed for one frontend, read from its pinned maps
//! by point lookups: a full dump of a 1M-entry map would take longer than
//! the change it is meant to time.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData, MapError};
use lb_common::{Backend, MapId, ServiceKey, ServiceValue, IPPROTO_TCP};

/// The agent's service and backend maps, opened by their pins.
pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
}

impl PinnedMaps {
    /// Opens the maps pinned in `pin_dir`; fails if their key or value
    /// sizes differ from lb-common's.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            services: open(pin_dir, MapId::Services.name())?,
            backends: open(pin_dir, MapId::Backends.name())?,
        })
    }

    /// The backend addresses the datapath would pick from for TCP
    /// `vip:port`: master slot 0 gives the slot count, each slot a backend
    /// id, each backend its address. An entry missing midway (the agent is
    /// rewriting the frontend) just leaves its address out.
    pub fn backend_addrs(&self, vip: Ipv4Addr, port: u16) -> Result<Vec<Ipv4Addr>> {
        let key = |slot| ServiceKey {
            vip_be: u32::from_ne_bytes(vip.octets()),
            port_be: port.to_be(),
            slot,
            proto: IPPROTO_TCP,
            ..Default::default()
        };
        let Some(master) = found(self.services.get(&key(0), 0))? else {
            return Ok(Vec::new());
        };
        let mut addrs = Vec::with_capacity(master.count.into());
        for slot in 1..=master.count {
            let Some(entry) = found(self.services.get(&key(slot), 0))? else {
                continue;
            };
            if let Some(backend) = found(self.backends.get(&entry.backend_id, 0))? {
                addrs.push(Ipv4Addr::from(backend.addr_be.to_ne_bytes()));
            }
        }
        Ok(addrs)
    }
}

fn open<K: aya::Pod, V: aya::Pod>(pin_dir: &Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("inspecting {name}"))?;
    HashMap::try_from(map).with_context(|| format!("{name} as lb-common lays it out"))
}

/// A lookup's value, `None` for a missing key.
fn found<V>(lookup: Result<V, MapError>) -> Result<Option<V>> {
    match lookup {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e).context("looking up a pinned map"),
    }
}
