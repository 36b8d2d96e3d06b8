//! The node's NodePort addresses as the datapath sees them: a packet from
//! outside addressed to one of them and a NodePort is balanced.

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use lb_common::MAP_NODE_ADDRS;

pub struct NodeAddrMap {
    map: HashMap<MapData, u32, u32>,
}

impl NodeAddrMap {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(MAP_NODE_ADDRS)
            .ok_or_else(|| anyhow!("map {MAP_NODE_ADDRS} missing from the object"))?;
        Ok(Self {
            map: HashMap::try_from(map).context(MAP_NODE_ADDRS)?,
        })
    }

    /// Makes the map hold exactly `wanted`: new addresses first, so that a
    /// renumbering never leaves a moment with none.
    pub fn sync(&mut self, wanted: &BTreeSet<Ipv4Addr>) -> anyhow::Result<()> {
        let key = |a: &Ipv4Addr| u32::from_ne_bytes(a.octets());
        let present: BTreeSet<u32> = self.map.keys().filter_map(Result::ok).collect();
        for addr in wanted {
            if !present.contains(&key(addr)) {
                self.map
                    .insert(key(addr), 1, 0)
                    .with_context(|| format!("adding NodePort address {addr}"))?;
            }
        }
        let wanted: BTreeSet<u32> = wanted.iter().map(key).collect();
        for stale in present.difference(&wanted) {
            self.map.remove(stale).with_context(|| {
                format!(
                    "removing NodePort address {}",
                    Ipv4Addr::from(stale.to_ne_bytes())
                )
            })?;
        }
        Ok(())
    }
}
