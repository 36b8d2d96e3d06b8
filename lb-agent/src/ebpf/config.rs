//! The node's settings for the datapath (`lb_config_v1`, one entry): the
//! SNAT address and port range.

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use lb_common::{MapId, NodeConfig};

use super::writer::MapWriter;

pub struct ConfigMap {
    map: Array<MapData, NodeConfig>,
}

impl ConfigMap {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = (ebpf.take_map(MapId::Config.name()))
            .ok_or_else(|| anyhow!("map {} missing from the object", MapId::Config.name()))?;
        let map = Array::try_from(map).context(MapId::Config.name())?;
        Ok(Self { map })
    }
}

impl MapWriter for ConfigMap {
    type State = NodeConfig;
    const MAP: MapId = MapId::Config;

    fn write(&mut self, config: &NodeConfig) -> anyhow::Result<()> {
        Ok(self.map.set(0, config, 0)?)
    }
}
