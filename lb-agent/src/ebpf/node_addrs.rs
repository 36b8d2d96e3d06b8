//! Node addresses as the datapath sees them: a packet from outside
//! addressed to one of this node's and a NodePort is balanced; a node
//! socket connecting to a peer's NodePort is balanced at `connect()`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use lb_common::{MapId, NODE_ADDR_LOCAL, NODE_ADDR_PEER};

use super::writer::MapWriter;

pub struct NodeAddrMap {
    map: HashMap<MapData, u32, u32>,
}

/// What the map holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    /// This node's NodePort addresses (`--nodeport-addresses`).
    pub nodeport: BTreeSet<Ipv4Addr>,
    /// The other Nodes' addresses (their NodePorts are balanced at
    /// `connect()` by the node's own sockets).
    pub peers: BTreeSet<Ipv4Addr>,
}

impl NodeAddrMap {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(MapId::NodeAddrs.name())
            .ok_or_else(|| anyhow!("map {} missing from the object", MapId::NodeAddrs.name()))?;
        Ok(Self {
            map: HashMap::try_from(map).context(MapId::NodeAddrs.name())?,
        })
    }
}

impl MapWriter for NodeAddrMap {
    type State = NodeAddresses;
    const MAP: MapId = MapId::NodeAddrs;

    /// Makes the map hold exactly the NodePort addresses (value
    /// [`NODE_ADDR_LOCAL`]) and the peers' (value [`NODE_ADDR_PEER`]; an
    /// address in both is local): new and changed entries first, so that a
    /// renumbering never leaves a moment with none.
    fn write(&mut self, state: &NodeAddresses) -> anyhow::Result<()> {
        let key = |a: &Ipv4Addr| u32::from_ne_bytes(a.octets());
        let wanted = wanted(&state.nodeport, &state.peers);
        let present: BTreeMap<u32, u32> = self.map.iter().filter_map(Result::ok).collect();
        for (addr, kind) in &wanted {
            if present.get(&key(addr)) != Some(kind) {
                self.map
                    .insert(key(addr), kind, 0)
                    .with_context(|| format!("adding node address {addr}"))?;
            }
        }
        for stale in present.keys() {
            let addr = Ipv4Addr::from(stale.to_ne_bytes());
            if !wanted.contains_key(&addr) {
                self.map
                    .remove(stale)
                    .with_context(|| format!("removing node address {addr}"))?;
            }
        }
        Ok(())
    }
}

/// The map's content for `local` and `peers`.
fn wanted(local: &BTreeSet<Ipv4Addr>, peers: &BTreeSet<Ipv4Addr>) -> BTreeMap<Ipv4Addr, u32> {
    let mut all: BTreeMap<Ipv4Addr, u32> = peers.iter().map(|a| (*a, NODE_ADDR_PEER)).collect();
    all.extend(local.iter().map(|a| (*a, NODE_ADDR_LOCAL)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_address_wins_over_a_peer_listing_it() {
        let a = Ipv4Addr::new(192, 168, 50, 10);
        let b = Ipv4Addr::new(192, 168, 50, 11);
        let got = wanted(&[a].into(), &[a, b].into());
        assert_eq!(
            got,
            BTreeMap::from([(a, NODE_ADDR_LOCAL), (b, NODE_ADDR_PEER)])
        );
    }
}
