//! Turns the desired frontends into BPF map contents and writes only the
//! difference, in an order that never lets a packet see a half-written
//! Service.
//!
//! The maps (see `lb_common::maps`): a frontend is a *master* entry (slot 0,
//! holding the backend count) plus slots `1..=count` holding backend ids;
//! backends and rev-NAT targets live in their own maps by id. The datapath
//! reads the master, picks a slot below its count and follows the backend
//! id, so the invariant kept after *every single write* is: each master's
//! slots exist and point to existing backends, and every rev-NAT id in use
//! exists. A master flagged `SVC_F_SOURCE_RANGES` admits new flows only
//! from the client ranges under its rev-NAT id, so it must also find, after
//! every write, either all of its ranges from before the sync or all of
//! those after it: a flag never shows up before its ranges, and a client
//! allowed both before and after a change of ranges is never dropped.
//! [`Reconciler::plan`] orders writes to keep all this, which also makes a
//! sync that fails halfway safe: the next sync carries on from there.
//!
//! A sync costs the size of the change, not of the cluster: after a
//! complete sync the reconciler remembers what it programmed per frontend
//! (`index`), and the next sync compares the desired frontends with that
//! and computes entries for the changed ones only (`target`). Whenever the
//! maps may differ from that memory (at start, after a failed write, when
//! asked) it reads them back and computes the whole target instead.

mod capacity;
mod display;
mod entries;
mod fake;
mod ids;
mod index;
mod plan;
mod target;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use lb_common::{Backend, RevNat, RevNatId, ServiceKey, ServiceValue};

use crate::model::{Desired, Frontend};
pub use capacity::{Capacity, LeftOut};
pub use fake::FakeDataplane;

/// The key of `frontend`'s master entry (slot 0) in the service map.
pub fn master_key(frontend: &Frontend) -> lb_common::ServiceKey {
    entries::service_key(frontend, 0)
}
use ids::Ids;
use index::Programmed;

/// Contents of the service, backend, rev-NAT and source-range maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapState {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub revnat: BTreeMap<RevNatId, RevNat>,
    /// The trie's entries: a frontend (by rev-NAT id) and a client network
    /// with its host bits cleared (the trie ignores them, so this is the
    /// one spelling of each entry). Every value is 1.
    pub source_ranges: BTreeSet<(RevNatId, Ipv4Net)>,
}

impl MapState {
    /// Applies one write as a map would. Returns false, changing nothing,
    /// when a delete finds no entry.
    pub fn apply(&mut self, op: &MapOp) -> bool {
        match *op {
            MapOp::UpsertBackend(id, backend) => {
                self.backends.insert(id, backend);
                true
            }
            MapOp::UpsertRevNat(id, rev_nat) => {
                self.revnat.insert(id, rev_nat);
                true
            }
            MapOp::UpsertService(key, value) => {
                self.services.insert(key, value);
                true
            }
            MapOp::UpsertSourceRange(id, net) => {
                self.source_ranges.insert((id, net));
                true
            }
            MapOp::DeleteService(key) => self.services.remove(&key).is_some(),
            MapOp::DeleteSourceRange(id, net) => self.source_ranges.remove(&(id, net)),
            MapOp::DeleteRevNat(id) => self.revnat.remove(&id).is_some(),
            MapOp::DeleteBackend(id) => self.backends.remove(&id).is_some(),
        }
    }
}

/// One map write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOp {
    UpsertBackend(u32, Backend),
    UpsertRevNat(RevNatId, RevNat),
    /// Admits clients in the network (host bits cleared) to the frontend
    /// with this rev-NAT id.
    UpsertSourceRange(RevNatId, Ipv4Net),
    UpsertService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    DeleteSourceRange(RevNatId, Ipv4Net),
    DeleteRevNat(RevNatId),
    DeleteBackend(u32),
}

/// A failed map read or write.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct DataplaneError {
    /// What was being done, e.g. `upsert service 10.96.0.10:80/TCP slot 1 -> backend 3`.
    pub op: String,
    pub message: String,
}

/// Where map writes go: the pinned BPF maps, or [`FakeDataplane`] in tests.
pub trait Dataplane {
    /// Reads what the maps hold now (services, backends, revnat, source
    /// ranges).
    fn read_state(&self) -> Result<MapState, DataplaneError>;
    /// Applies one write.
    fn apply(&mut self, op: &MapOp) -> Result<(), DataplaneError>;
    /// Applies `ops` in order, stopping at the first that fails (those
    /// before it stay applied). A dataplane that can write runs of entries
    /// at once overrides it.
    fn apply_all(&mut self, ops: &[MapOp]) -> Result<(), DataplaneError> {
        ops.iter().try_for_each(|op| self.apply(op))
    }
}

/// What a sync wrote, per kind of write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub upserted_backends: usize,
    pub upserted_revnat: usize,
    pub upserted_source_ranges: usize,
    pub upserted_services: usize,
    pub deleted_services: usize,
    pub deleted_source_ranges: usize,
    pub deleted_revnat: usize,
    pub deleted_backends: usize,
}

impl SyncReport {
    /// Number of writes.
    pub fn total(&self) -> usize {
        self.upserted_backends
            + self.upserted_revnat
            + self.upserted_source_ranges
            + self.upserted_services
            + self.deleted_services
            + self.deleted_source_ranges
            + self.deleted_revnat
            + self.deleted_backends
    }

    /// Number of deletions (each frees an entry).
    pub fn deleted(&self) -> usize {
        self.deleted_services
            + self.deleted_source_ranges
            + self.deleted_revnat
            + self.deleted_backends
    }

    fn count(&mut self, op: &MapOp) {
        *match op {
            MapOp::UpsertBackend(..) => &mut self.upserted_backends,
            MapOp::UpsertRevNat(..) => &mut self.upserted_revnat,
            MapOp::UpsertSourceRange(..) => &mut self.upserted_source_ranges,
            MapOp::UpsertService(..) => &mut self.upserted_services,
            MapOp::DeleteService(..) => &mut self.deleted_services,
            MapOp::DeleteSourceRange(..) => &mut self.deleted_source_ranges,
            MapOp::DeleteRevNat(..) => &mut self.deleted_revnat,
            MapOp::DeleteBackend(..) => &mut self.deleted_backends,
        } += 1;
    }
}

impl std::ops::Add for SyncReport {
    type Output = SyncReport;

    fn add(self, other: SyncReport) -> SyncReport {
        SyncReport {
            upserted_backends: self.upserted_backends + other.upserted_backends,
            upserted_revnat: self.upserted_revnat + other.upserted_revnat,
            upserted_source_ranges: self.upserted_source_ranges + other.upserted_source_ranges,
            upserted_services: self.upserted_services + other.upserted_services,
            deleted_services: self.deleted_services + other.deleted_services,
            deleted_source_ranges: self.deleted_source_ranges + other.deleted_source_ranges,
            deleted_revnat: self.deleted_revnat + other.deleted_revnat,
            deleted_backends: self.deleted_backends + other.deleted_backends,
        }
    }
}

/// Computes and applies map updates. Holds the id allocators, so one
/// instance should live as long as the agent.
#[derive(Debug)]
pub struct Reconciler {
    ids: Ids,
    /// What the maps hold after our last complete sync, with the ids of
    /// every frontend and backend, so that a sync costs the size of the
    /// change rather than a read of every map and a full target (seconds
    /// at 100k Services). `None` means "read them back first": at start
    /// (the adopted maps), after a failed write, and after
    /// [`Self::forget_maps`].
    known: Option<Programmed>,
    /// The maps' sizes (`None`: unbounded, as in most tests).
    capacity: Option<Capacity>,
    /// What the last sync could not program for lack of room.
    left_out: Vec<LeftOut>,
}

impl Default for Reconciler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reconciler {
    pub fn new() -> Self {
        Reconciler {
            ids: Ids::new(),
            known: None,
            capacity: None,
            left_out: Vec::new(),
        }
    }

    /// A reconciler for maps of these sizes: frontends that do not fit
    /// are left out before anything is written (see [`capacity`]).
    pub fn with_capacity(capacity: Capacity) -> Self {
        Reconciler {
            capacity: Some(capacity),
            ..Self::new()
        }
    }

    /// The frontends the last sync left out, or kept with fewer backends,
    /// because a map was full; in the order room was given out.
    pub fn left_out(&self) -> &[LeftOut] {
        &self.left_out
    }

    /// Brings the maps to `desired`: from what the last complete sync
    /// left, or else from the maps read back (then the whole target is
    /// computed, reusing the ids found). Stops at the first failed write:
    /// later writes may depend on it (a master on its slots), and thanks to
    /// the write order the maps are consistent at that point, so the next
    /// sync (which reads the maps back) simply continues.
    ///
    /// With a capacity, what does not fit is left out ([`Self::left_out`]).
    /// Room is counted with the entries the sync deletes, which it frees
    /// only at its end; so when it left something out and deleted
    /// anything, one more sync gives the freed room out at once.
    pub fn sync(
        &mut self,
        desired: &Desired,
        dp: &mut dyn Dataplane,
    ) -> Result<SyncReport, DataplaneError> {
        self.sync_hinted(desired, None, dp)
    }

    /// [`Self::sync`] when only `touched` frontends can differ from the
    /// `desired` the last complete sync programmed (kube-proxy's partial
    /// sync): the walk over every frontend is skipped, so a change costs
    /// what it touches. A sync that has to read the maps back, or that
    /// gives out room after leaving frontends out, still looks at all.
    pub fn sync_partial(
        &mut self,
        desired: &Desired,
        touched: &BTreeSet<Frontend>,
        dp: &mut dyn Dataplane,
    ) -> Result<SyncReport, DataplaneError> {
        self.sync_hinted(desired, Some(touched), dp)
    }

    /// Whether the next sync starts from what the last one programmed and
    /// may take a partial view ([`Self::sync_partial`]); otherwise it
    /// writes whatever the maps lack of the whole desired state.
    pub fn is_partial(&self) -> bool {
        self.known.is_some() && self.left_out.is_empty()
    }

    fn sync_hinted(
        &mut self,
        desired: &Desired,
        touched: Option<&BTreeSet<Frontend>>,
        dp: &mut dyn Dataplane,
    ) -> Result<SyncReport, DataplaneError> {
        let first = self.sync_once(desired, touched, dp)?;
        if self.left_out.is_empty() || first.deleted() == 0 {
            return Ok(first);
        }
        let second = self.sync_once(desired, None, dp)?;
        Ok(first + second)
    }

    fn sync_once(
        &mut self,
        desired: &Desired,
        touched: Option<&BTreeSet<Frontend>>,
        dp: &mut dyn Dataplane,
    ) -> Result<SyncReport, DataplaneError> {
        match self.known.take() {
            Some(known) => {
                // Left-out frontends may get room now: they are not touched.
                let touched = touched.filter(|_| self.left_out.is_empty());
                self.sync_changes(desired, touched, known, dp)
            }
            None => self.sync_all(desired, dp),
        }
    }

    /// Makes the next sync read the maps back instead of trusting what it
    /// last wrote, so that entries changed behind our back (by hand, or by
    /// another process) are repaired.
    pub fn forget_maps(&mut self) {
        self.known = None;
    }

    /// What the maps hold, as of the last complete sync.
    pub fn programmed(&self) -> Option<&MapState> {
        self.known.as_ref().map(|known| &known.maps)
    }

    fn sync_all(
        &mut self,
        desired: &Desired,
        dp: &mut dyn Dataplane,
    ) -> Result<SyncReport, DataplaneError> {
        let current = dp.read_state()?;
        let fitted = self.fit(desired, &current);
        let target = self.full_target(fitted.as_ref().unwrap_or(desired), &current);
        let report = apply_streamed(dp, &current, &target.maps)?;
        self.known = Some(target);
        Ok(report)
    }

    /// `known` stays out of `self` until every write succeeded: a failed
    /// sync leaves it `None`, so the next one reads the maps back.
    fn sync_changes(
        &mut self,
        desired: &Desired,
        touched: Option<&BTreeSet<Frontend>>,
        mut known: Programmed,
        dp: &mut dyn Dataplane,
    ) -> Result<SyncReport, DataplaneError> {
        let mut changes = match touched {
            Some(touched) => {
                let changes = known.changes_among(desired, touched);
                debug_assert_eq!(
                    changes,
                    known.changes(desired),
                    "a change outside {touched:?}"
                );
                changes
            }
            None => known.changes(desired),
        };
        let fitted = match self.capacity {
            // The common case costs the change only: no room was short
            // last time and the change fits.
            Some(capacity)
                if !self.left_out.is_empty()
                    || !capacity::changes_fit(&changes, &known, capacity) =>
            {
                self.fit(desired, &known.maps)
            }
            _ => None,
        };
        if let Some(fitted) = &fitted {
            changes = known.changes(fitted);
        }
        let delta = self.delta(&changes, &mut known);
        let ops = Self::plan(&delta.current, &delta.target);
        let report = apply(dp, &ops)?;
        known.commit(delta.frontends, &ops);
        self.known = Some(known);
        Ok(report)
    }
}

impl Reconciler {
    /// `desired` cut down to what fits beside `current` (`None`: all of
    /// it fits, or no capacity is set), remembering what was left out.
    fn fit(&mut self, desired: &Desired, current: &MapState) -> Option<Desired> {
        let fitted = capacity::fit(desired, current, self.capacity?);
        let (fitted, left_out) = fitted.unzip();
        self.left_out = left_out.unwrap_or_default();
        fitted
    }
}

/// Applies `ops` in order, stopping at the first failure.
/// Applies the plan from `current` to `target` as it is made, in pieces
/// (a first sync at 100k Services makes millions of ops).
fn apply_streamed(
    dp: &mut dyn Dataplane,
    current: &MapState,
    target: &MapState,
) -> Result<SyncReport, DataplaneError> {
    const PIECE: usize = 4096;
    let mut report = SyncReport::default();
    let mut piece = Vec::with_capacity(PIECE);
    Reconciler::plan_into(current, target, &mut |op| {
        report.count(&op);
        piece.push(op);
        if piece.len() == PIECE {
            dp.apply_all(&piece)?;
            piece.clear();
        }
        Ok(())
    })?;
    dp.apply_all(&piece)?;
    Ok(report)
}

fn apply(dp: &mut dyn Dataplane, ops: &[MapOp]) -> Result<SyncReport, DataplaneError> {
    dp.apply_all(ops)?;
    let mut report = SyncReport::default();
    ops.iter().for_each(|op| report.count(op));
    Ok(report)
}
