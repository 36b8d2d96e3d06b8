//! What fits in the maps. A BPF hash map or trie holds a fixed number of
//! entries; a write beyond that fails (E2BIG), and since a sync stops at
//! its first failed write, one Service too many would leave every later
//! change unwritten and the sync retried forever. So the frontends that do
//! not fit are refused before anything is written, in a fixed order: the
//! frontends the maps already hold first (they keep working, with fewer
//! backends if their new ones do not fit), then the others by Service
//! namespace/name and frontend.
//!
//! Room is counted against the maps as they are when the sync starts: a
//! sync writes new entries before it deletes old ones, so the maps hold
//! the union of both at their fullest. Entries that the sync deletes make
//! room only for the next sync (see [`Reconciler::sync`](super::Reconciler::sync)).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use lb_common::{Backend, MapId};

use super::entries::{backend, service_key};
use super::index::{Change, Programmed};
use super::MapState;
use crate::model::{Desired, DesiredFrontend, Frontend, ObjectRef};

/// How many entries each map the reconciler writes can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub services: usize,
    pub backends: usize,
    pub revnat: usize,
    pub source_ranges: usize,
}

impl Capacity {
    /// The entries `map` holds; 0 for a map the reconciler does not write.
    pub fn of(&self, map: MapId) -> usize {
        match map {
            MapId::Services => self.services,
            MapId::Backends => self.backends,
            MapId::RevNat => self.revnat,
            MapId::SourceRanges => self.source_ranges,
            _ => 0,
        }
    }
}

/// A frontend that is not programmed, or programmed with fewer backends
/// than its Service has, because a map is full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub service: ObjectRef,
    pub frontend: Frontend,
    /// The map without room, and its size.
    pub map: MapId,
    pub capacity: usize,
    /// `Some(n)`: the frontend was programmed before and keeps serving
    /// with only `n` of its backends. `None`: not programmed.
    pub kept_backends: Option<usize>,
    /// How many backends the Service has for this frontend.
    pub backends: usize,
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Service {}: frontend {} ", self.service, self.frontend)?;
        match self.kept_backends {
            Some(kept) => write!(f, "serves only {kept} of its {} backends", self.backends)?,
            None => f.write_str("is not programmed")?,
        }
        write!(
            f,
            ": map {} is full ({} entries)",
            self.map.name(),
            self.capacity
        )?;
        match resize_flag(self.map) {
            Some(flag) => write!(
                f,
                "; raise lb-agent {flag} (a pinned map keeps its size: lb-agent --cleanup first)"
            ),
            None => Ok(()),
        }
    }
}

/// The lb-agent flag that sizes `map`, if one does.
fn resize_flag(map: MapId) -> Option<&'static str> {
    match map {
        MapId::Services => Some("--services-map-max"),
        MapId::Backends => Some("--backends-map-max"),
        MapId::RevNat => Some("--revnat-map-max"),
        _ => None,
    }
}

/// `desired` cut down to what fits beside what `current` holds, and what
/// was left out; `None` when all of it fits (no copy is made then: this
/// runs on every full sync).
pub(super) fn fit(
    desired: &Desired,
    current: &MapState,
    capacity: Capacity,
) -> Option<(Desired, Vec<LeftOut>)> {
    let held: HashSet<Backend> = current.backends.values().copied().collect();
    let mut room = Room::new(current, capacity, |b| held.contains(b));
    // Room is given out in order only when it runs short.
    let everything = desired.frontends.iter().all(|(frontend, wanted)| {
        room.need(frontend, wanted, wanted.slot_count())
            .map(|need| room.take(need))
            .is_ok()
    });
    if everything {
        return None;
    }
    let mut room = Room::new(current, capacity, |b| held.contains(b));
    let programmed = |fe: &Frontend| current.services.contains_key(&service_key(fe, 0));
    let mut order: Vec<(&Frontend, &DesiredFrontend)> = desired.frontends.iter().collect();
    order.sort_by_cached_key(|&(fe, wanted)| (!programmed(fe), &wanted.service, *fe));
    let mut fitted = Desired {
        frontends: BTreeMap::new(),
        errors: desired.errors.clone(),
        ipv6_skipped: desired.ipv6_skipped.clone(),
        health_checks: desired.health_checks.clone(),
    };
    let mut left_out = Vec::new();
    for (frontend, wanted) in order {
        let all = wanted.slot_count();
        let (kept, need) = match room.need(frontend, wanted, all) {
            Ok(need) => (all, need),
            Err(full) => {
                // One the maps hold keeps the most backends that fit.
                let kept = if programmed(frontend) {
                    room.most_that_fit(frontend, wanted, all)
                } else {
                    None
                };
                let kept_backends = kept.as_ref().map(|(n, _)| *n);
                left_out.push(room.left_out(frontend, wanted, full, kept_backends));
                let Some(kept) = kept else { continue };
                kept
            }
        };
        room.take(need);
        let mut wanted = wanted.clone();
        if kept < all {
            wanted.truncate_slots(kept);
        }
        fitted.frontends.insert(*frontend, wanted);
    }
    Some((fitted, left_out))
}

/// Whether the new entries of `changes` fit beside everything the maps
/// hold after the last complete sync: the common case, checked at the
/// cost of the change only.
pub(super) fn changes_fit(changes: &[Change<'_>], known: &Programmed, capacity: Capacity) -> bool {
    let mut room = Room::new(&known.maps, capacity, |b| known.backends.is_used(b));
    changes.iter().all(|(frontend, wanted)| match wanted {
        Some(wanted) => match room.need(frontend, wanted, wanted.slot_count()) {
            Ok(need) => {
                room.take(need);
                true
            }
            Err(_) => false,
        },
        None => true,
    })
}

/// Entries in use (the maps' and those taken since), against capacity.
struct Room<'c, H> {
    current: &'c MapState,
    /// Whether the maps hold a backend (its id is kept, so it costs no
    /// new entry).
    held: H,
    capacity: Capacity,
    used: Counts,
    new_backends: HashSet<Backend>,
}

/// What one frontend takes: the counts with it, and the backends it adds.
struct Need {
    after: Counts,
    new_backends: HashSet<Backend>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    services: usize,
    backends: usize,
    revnat: usize,
    source_ranges: usize,
}

impl<'c, H: Fn(&Backend) -> bool> Room<'c, H> {
    fn new(current: &'c MapState, capacity: Capacity, held: H) -> Self {
        let used = Counts {
            services: current.services.len(),
            backends: current.backends.len(),
            revnat: current.revnat.len(),
            source_ranges: current.source_ranges.len(),
        };
        Room {
            current,
            held,
            capacity,
            used,
            new_backends: HashSet::new(),
        }
    }

    /// The room `frontend` with the first `n` of its backends needs, or
    /// the first map without enough.
    fn need(&self, frontend: &Frontend, wanted: &DesiredFrontend, n: usize) -> Result<Need, MapId> {
        let current = self.current;
        // The count is a u16 (see `entries`): more slots are never written.
        let n = n.min(usize::from(u16::MAX));
        let master = current.services.get(&service_key(frontend, 0));
        let slots = (0..=n as u16)
            .filter(|&slot| !current.services.contains_key(&service_key(frontend, slot)))
            .count();
        let rev_nat = master.filter(|m| current.revnat.contains_key(&m.rev_nat_id));
        let new_backends: HashSet<Backend> = (wanted.slots().take(n))
            .map(|&addr| backend(frontend, addr))
            .filter(|b| !(self.held)(b) && !self.new_backends.contains(b))
            .collect();
        let nets: BTreeSet<_> = wanted.source_ranges.iter().map(|net| net.trunc()).collect();
        let ranges = (nets.iter())
            .filter(|&&net| {
                rev_nat.is_none_or(|m| !current.source_ranges.contains(&(m.rev_nat_id, net)))
            })
            .count();
        let after = Counts {
            services: self.used.services + slots,
            backends: self.used.backends + new_backends.len(),
            revnat: self.used.revnat + usize::from(rev_nat.is_none()),
            source_ranges: self.used.source_ranges + ranges,
        };
        let cap = self.capacity;
        let full = [
            (after.services > cap.services, MapId::Services),
            (after.backends > cap.backends, MapId::Backends),
            (after.revnat > cap.revnat, MapId::RevNat),
            (after.source_ranges > cap.source_ranges, MapId::SourceRanges),
        ];
        match full.iter().find(|(over, _)| *over) {
            Some(&(_, map)) => Err(map),
            None => Ok(Need {
                after,
                new_backends,
            }),
        }
    }

    fn take(&mut self, need: Need) {
        self.used = need.after;
        self.new_backends.extend(need.new_backends);
    }

    /// The most of the first backends (fewer than `all`, which do not fit)
    /// that fit, by bisection: each one more needs at least as much room.
    fn most_that_fit(
        &self,
        frontend: &Frontend,
        wanted: &DesiredFrontend,
        all: usize,
    ) -> Option<(usize, Need)> {
        let mut best = None;
        let (mut low, mut high) = (0, all);
        while low < high {
            let mid = low + (high - low) / 2;
            match self.need(frontend, wanted, mid) {
                Ok(need) => {
                    best = Some((mid, need));
                    low = mid + 1;
                }
                Err(_) => high = mid,
            }
        }
        best
    }

    fn left_out(
        &self,
        frontend: &Frontend,
        wanted: &DesiredFrontend,
        map: MapId,
        kept_backends: Option<usize>,
    ) -> LeftOut {
        LeftOut {
            service: wanted.service.clone(),
            frontend: *frontend,
            map,
            capacity: self.capacity.of(map),
            kept_backends,
            backends: wanted.slot_count(),
        }
    }
}
