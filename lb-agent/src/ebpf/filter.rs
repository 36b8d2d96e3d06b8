//! The filter as the agent writes it (see `lb_common::filter`): bits are
//! added for what a sync is about to write, and the whole filter is
//! rewritten from what the maps hold (Services, backends, and the backends
//! conntrack still names) once a sync succeeded, which is also when it
//! becomes valid, and after each conntrack walk.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Array, IterableMap as _, MapData},
    Ebpf,
};
use lb_common::{
    filter_slot, Backend, MapId, ServiceKey, ServiceValue, FILTER_BACKENDS, FILTER_FRONTENDS,
    FILTER_VALID, FILTER_VALID_WORD,
};
use lb_core::model::{Desired, DesiredFrontend, Frontend};

use super::batch;

pub struct FilterMap {
    map: Array<MapData, u64>,
    /// What the map holds (read at start: a pinned filter is adopted).
    words: Vec<u64>,
    valid: bool,
}

impl FilterMap {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(MapId::Filter.name())
            .ok_or_else(|| anyhow!("map {} missing from the object", MapId::Filter.name()))?;
        let map: Array<MapData, u64> = Array::try_from(map).context(MapId::Filter.name())?;
        let words = (0..FILTER_VALID_WORD)
            .map(|i| map.get(&i, 0))
            .collect::<Result<_, _>>()
            .context("reading the frontend filter")?;
        let valid = map
            .get(&FILTER_VALID_WORD, 0)
            .context(MapId::Filter.name())?
            == FILTER_VALID;
        Ok(Self { map, words, valid })
    }

    /// Whether the datapath uses the filter yet.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// Adds the bits of every frontend and backend `desired` has, before a
    /// sync writes them: neither is ever in the maps without its bit.
    pub fn cover(&mut self, desired: &Desired) -> anyhow::Result<()> {
        self.cover_frontends(desired.frontends.iter())
    }

    /// [`Self::cover`] for the `touched` frontends of `desired` only: a
    /// partial sync writes no other.
    pub fn cover_some(
        &mut self,
        desired: &Desired,
        touched: &BTreeSet<Frontend>,
    ) -> anyhow::Result<()> {
        self.cover_frontends(
            touched
                .iter()
                .filter_map(|f| desired.frontends.get_key_value(f)),
        )
    }

    fn cover_frontends<'d>(
        &mut self,
        frontends: impl Iterator<Item = (&'d Frontend, &'d DesiredFrontend)>,
    ) -> anyhow::Result<()> {
        let mut wanted = self.words.clone();
        for (f, d) in frontends {
            let proto = f.proto.number();
            let (word, mask) = slot(FILTER_FRONTENDS, f.vip.octets(), f.port, proto);
            wanted[word as usize] |= mask;
            for b in d.slots() {
                let (word, mask) = slot(FILTER_BACKENDS, b.ip.octets(), b.port, proto);
                wanted[word as usize] |= mask;
            }
        }
        self.write(wanted)
    }

    /// Rewrites the filter to hold exactly the frontends of `services` (the
    /// Service map's content), `backends` (the backend map's) and the
    /// backends conntrack entries name, `(addr_be, port_be, proto)`; makes
    /// it valid.
    pub fn rebuild(
        &mut self,
        services: &BTreeMap<ServiceKey, ServiceValue>,
        backends: &BTreeMap<u32, Backend>,
        tracked: &BTreeSet<(u32, u16, u8)>,
    ) -> anyhow::Result<()> {
        self.write(bits(services.keys(), backends.values(), tracked))?;
        if !self.valid {
            self.map
                .set(FILTER_VALID_WORD, FILTER_VALID, 0)
                .context("marking the filter valid")?;
            self.valid = true;
        }
        Ok(())
    }

    /// Writes the words that differ, in one batch.
    fn write(&mut self, wanted: Vec<u64>) -> anyhow::Result<()> {
        let (indexes, words): (Vec<u32>, Vec<u64>) = (wanted.iter().zip(&self.words))
            .enumerate()
            .filter(|(_, (want, have))| want != have)
            .map(|(i, (&want, _))| (i as u32, want))
            .unzip();
        let written = batch::update(self.map.map(), &indexes, &words);
        let done = written
            .as_ref()
            .map_or_else(|e| e.done.min(indexes.len()), |()| indexes.len());
        for (&i, &word) in indexes.iter().zip(&words).take(done) {
            self.words[i as usize] = word;
        }
        written.map_err(|e| {
            let word = indexes.get(e.done);
            anyhow::Error::from(e.error)
                .context(format!("writing word {word:?} of {}", MapId::Filter.name()))
        })
    }
}

/// The word and bit of `(addr, port, proto)` in `region`.
fn slot(region: u32, addr: [u8; 4], port: u16, proto: u8) -> (u32, u64) {
    filter_slot(region, u32::from_ne_bytes(addr), port.to_be(), proto)
}

/// The filter's words: the master entries among `keys`, the backends and
/// the backends conntrack names.
pub fn bits<'a>(
    keys: impl IntoIterator<Item = &'a ServiceKey>,
    backends: impl IntoIterator<Item = &'a Backend>,
    tracked: &BTreeSet<(u32, u16, u8)>,
) -> Vec<u64> {
    let mut words = vec![0u64; FILTER_VALID_WORD as usize];
    let mut put = |region, addr_be, port_be, proto| {
        let (w, mask) = filter_slot(region, addr_be, port_be, proto);
        words[w as usize] |= mask;
    };
    for k in keys.into_iter().filter(|k| k.slot == 0) {
        put(FILTER_FRONTENDS, k.vip_be, k.port_be, k.proto);
    }
    for b in backends {
        put(FILTER_BACKENDS, b.addr_be, b.port_be, b.proto);
    }
    for &(addr_be, port_be, proto) in tracked {
        put(FILTER_BACKENDS, addr_be, port_be, proto);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_backends_and_tracked_backends_set_bits() {
        let key = |vip_be, slot| ServiceKey {
            vip_be,
            port_be: 80u16.to_be(),
            slot,
            proto: 6,
            _pad: [0; 3],
        };
        let backend = Backend {
            addr_be: 7,
            port_be: 8080u16.to_be(),
            proto: 6,
            flags: 0,
        };
        let tracked = BTreeSet::from([(9, 8080u16.to_be(), 6)]);
        let words = bits(&[key(1, 0), key(2, 1)], [&backend], &tracked);
        let (w, mask) = filter_slot(FILTER_FRONTENDS, 1, 80u16.to_be(), 6);
        assert_ne!(words[w as usize] & mask, 0);
        for addr_be in [7, 9] {
            let (w, mask) = filter_slot(FILTER_BACKENDS, addr_be, 8080u16.to_be(), 6);
            assert_ne!(words[w as usize] & mask, 0);
        }
        assert_eq!(words.iter().map(|w| w.count_ones()).sum::<u32>(), 3);
    }
}
