//! One frontend's map entries, derived from the ids it was given.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use lb_common::{
    Backend, RevNat, RevNatId, ServiceKey, ServiceValue, BACKEND_F_REMOTE, SVC_F_LOCAL_ONLY,
    SVC_F_SOURCE_RANGES,
};

use super::ids::Ids;
use super::index::BackendRefs;
use super::MapState;
use crate::model::{BackendAddr, DesiredFrontend, Frontend};

/// The count is a u16: more backends than that cannot be addressed.
const MAX_SLOTS: usize = u16::MAX as usize;

/// The ids a programmed frontend uses, and its master's settings. Its map
/// entries follow from these alone, so this is all a sync needs to
/// remember per frontend to write (or delete) them again.
#[derive(Debug)]
pub(super) struct FrontendIds {
    pub rev_nat_id: RevNatId,
    /// Backends in slot order (slot 1 first), with their ids: those for
    /// every client, then those for the node's own clients only (see
    /// [`DesiredFrontend::internal_backends`]).
    pub backends: Vec<(BackendAddr, u32)>,
    /// How many of `backends` serve every client (the master's `count`).
    pub external_count: usize,
    /// `SVC_F_*` bits of the master entry.
    pub flags: u16,
    /// Client networks admitted (see [`source_ranges`]); empty: any client.
    pub source_ranges: BTreeSet<Ipv4Net>,
    /// sessionAffinity ClientIP timeout of the master (0: none).
    pub affinity_timeout_s: u32,
}

impl FrontendIds {
    /// Ids for `wanted`'s backends: those `refs` knows, new ones for the
    /// others; each counts as one more use in `refs`.
    pub(super) fn assign(
        frontend: &Frontend,
        wanted: &DesiredFrontend,
        rev_nat_id: RevNatId,
        refs: &mut BackendRefs,
        ids: &mut Ids,
    ) -> Self {
        let total = wanted.slot_count();
        if total > MAX_SLOTS {
            tracing::warn!(%frontend, backends = total, "too many backends; using the first {MAX_SLOTS}");
        }
        let backends = wanted
            .slots()
            .take(MAX_SLOTS)
            .map(|&addr| (addr, refs.acquire(&backend(frontend, addr), ids)))
            .collect();
        FrontendIds {
            rev_nat_id,
            backends,
            external_count: wanted.backends.len().min(MAX_SLOTS),
            flags: flags(wanted),
            source_ranges: source_ranges(wanted),
            affinity_timeout_s: wanted.affinity_timeout_s,
        }
    }

    /// Whether these entries already serve what `wanted` asks for. Runs
    /// for every frontend on every sync, so the cheap comparisons go first.
    pub(super) fn serves(&self, wanted: &DesiredFrontend) -> bool {
        // `zip` stops after the programmed backends, at most MAX_SLOTS.
        wanted.slot_count().min(MAX_SLOTS) == self.backends.len()
            && wanted.backends.len().min(MAX_SLOTS) == self.external_count
            && self.flags == flags(wanted)
            && self.affinity_timeout_s == wanted.affinity_timeout_s
            && (wanted.slots().zip(&self.backends)).all(|(new, (old, _))| new == old)
            // Equal flags: both have ranges or neither, so only frontends
            // with ranges pay for collecting them.
            && (self.source_ranges.is_empty() || self.source_ranges == source_ranges(wanted))
    }

    /// Adds the frontend's entries to `maps`: its rev-NAT target, its
    /// source ranges, its backends, its slots and its master.
    pub(super) fn write(&self, frontend: &Frontend, maps: &mut MapState) {
        maps.revnat.insert(self.rev_nat_id, rev_nat(frontend));
        maps.source_ranges
            .extend((self.source_ranges.iter()).map(|&net| (self.rev_nat_id, net)));
        for (slot, &(addr, id)) in (1..).zip(&self.backends) {
            maps.backends.insert(id, backend(frontend, addr));
            let entry = ServiceValue {
                backend_id: id,
                rev_nat_id: self.rev_nat_id,
                ..ServiceValue::default()
            };
            maps.services.insert(service_key(frontend, slot), entry);
        }
        // At most MAX_SLOTS backends.
        let master = ServiceValue {
            backend_id: 0,
            rev_nat_id: self.rev_nat_id,
            count: self.external_count as u16,
            flags: self.flags,
            affinity_timeout_s: self.affinity_timeout_s,
            internal_count: self.backends.len() as u16,
            _pad: [0; 2],
        };
        maps.services.insert(service_key(frontend, 0), master);
    }
}

/// The master's `SVC_F_*` bits for what `wanted` asks.
fn flags(wanted: &DesiredFrontend) -> u16 {
    let mut flags = 0;
    if wanted.local_only {
        flags |= SVC_F_LOCAL_ONLY;
    }
    if !wanted.source_ranges.is_empty() {
        flags |= SVC_F_SOURCE_RANGES;
    }
    flags
}

/// `wanted`'s client networks as the trie holds them: host bits cleared
/// (the trie ignores them, so `10.1.2.3/8` and `10.0.0.0/8` are one entry)
/// and each once.
fn source_ranges(wanted: &DesiredFrontend) -> BTreeSet<Ipv4Net> {
    wanted.source_ranges.iter().map(Ipv4Net::trunc).collect()
}

pub(super) fn service_key(frontend: &Frontend, slot: u16) -> ServiceKey {
    ServiceKey {
        vip_be: ip_be(frontend.vip),
        port_be: frontend.port.to_be(),
        slot,
        proto: frontend.proto.number(),
        _pad: [0; 3],
    }
}

pub(super) fn backend(frontend: &Frontend, addr: BackendAddr) -> Backend {
    Backend {
        addr_be: ip_be(addr.ip),
        port_be: addr.port.to_be(),
        proto: frontend.proto.number(),
        flags: if addr.remote { BACKEND_F_REMOTE } else { 0 },
    }
}

fn rev_nat(frontend: &Frontend) -> RevNat {
    RevNat {
        addr_be: ip_be(frontend.vip),
        port_be: frontend.port.to_be(),
        _pad: 0,
    }
}

/// `a.b.c.d` as the `u32` whose bytes in memory are `[a, b, c, d]`, as in packets.
fn ip_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}
