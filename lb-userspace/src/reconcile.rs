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
//! exists. [`Reconciler::plan`] orders writes to keep it, which also makes
//! a sync that fails halfway safe: the next sync carries on from there.

mod fake;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use lb_common::{Backend, RevNat, RevNatId, ServiceKey, ServiceValue, IPPROTO_TCP, IPPROTO_UDP};

use crate::model::{Desired, DesiredFrontend, Frontend};
pub use fake::FakeDataplane;

/// Contents of the service, backend and rev-NAT maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapState {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub revnat: BTreeMap<RevNatId, RevNat>,
}

/// One map write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOp {
    UpsertBackend(u32, Backend),
    UpsertRevNat(RevNatId, RevNat),
    UpsertService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
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
    /// Reads what the maps hold now (services, backends, revnat).
    fn read_state(&self) -> Result<MapState, DataplaneError>;
    /// Applies one write.
    fn apply(&mut self, op: &MapOp) -> Result<(), DataplaneError>;
}

/// What a sync wrote, per kind of write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub upserted_backends: usize,
    pub upserted_revnat: usize,
    pub upserted_services: usize,
    pub deleted_services: usize,
    pub deleted_revnat: usize,
    pub deleted_backends: usize,
}

impl SyncReport {
    /// Number of writes.
    pub fn total(&self) -> usize {
        self.upserted_backends
            + self.upserted_revnat
            + self.upserted_services
            + self.deleted_services
            + self.deleted_revnat
            + self.deleted_backends
    }

    fn count(&mut self, op: &MapOp) {
        *match op {
            MapOp::UpsertBackend(..) => &mut self.upserted_backends,
            MapOp::UpsertRevNat(..) => &mut self.upserted_revnat,
            MapOp::UpsertService(..) => &mut self.upserted_services,
            MapOp::DeleteService(..) => &mut self.deleted_services,
            MapOp::DeleteRevNat(..) => &mut self.deleted_revnat,
            MapOp::DeleteBackend(..) => &mut self.deleted_backends,
        } += 1;
    }
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} writes: backends +{} -{}, rev-nat +{} -{}, service entries +{} -{}",
            self.total(),
            self.upserted_backends,
            self.deleted_backends,
            self.upserted_revnat,
            self.deleted_revnat,
            self.upserted_services,
            self.deleted_services,
        )
    }
}

/// Computes and applies map updates. Holds the id allocators, so one
/// instance should live as long as the agent.
#[derive(Debug)]
pub struct Reconciler {
    /// Next new backend id. It only grows, so an id is never reused while
    /// the agent runs and a stale conntrack entry cannot reach a new pod.
    next_backend_id: u32,
    /// Where the search for a free rev-NAT id starts; it moves on (wrapping)
    /// so a just-freed id, which old conntrack entries may still carry, is
    /// handed out again as late as possible. `None` until the first target
    /// is computed, then it starts after the highest id found in the maps.
    next_rev_nat_id: Option<RevNatId>,
    /// What the maps hold after our last complete sync, so that a sync costs
    /// the size of the change rather than a read of every map (seconds at
    /// 100k Services). `None` means "read them back first": at start (the
    /// adopted maps), after a failed write, and after [`Self::forget_maps`].
    known: Option<MapState>,
}

impl Default for Reconciler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reconciler {
    pub fn new() -> Self {
        Reconciler {
            next_backend_id: 1,
            next_rev_nat_id: None,
            known: None,
        }
    }

    /// Computes the target MapState for `desired`, reusing ids already in
    /// `current`, so that a restart or a resync does not renumber anything.
    pub fn target_state(&mut self, desired: &Desired, current: &MapState) -> MapState {
        self.skip_ids_in_use(current);
        let mut ids = IdLookup::new(current);
        let mut target = MapState::default();
        for (frontend, wanted) in &desired.frontends {
            let master = service_key(frontend, 0);
            let Some(rev_nat_id) = ids
                .rev_nat(master)
                .or_else(|| self.alloc_rev_nat(current, &target))
            else {
                tracing::error!(%frontend, "no free rev-NAT id; frontend not programmed");
                continue;
            };
            target.revnat.insert(rev_nat_id, rev_nat(frontend));
            let backend_ids = self.backend_ids(frontend, wanted, &mut ids, &mut target);
            let entry = |backend_id, count| ServiceValue {
                backend_id,
                count,
                rev_nat_id,
                flags: 0,
            };
            for (slot, &backend_id) in (1..).zip(&backend_ids) {
                target
                    .services
                    .insert(service_key(frontend, slot), entry(backend_id, 0));
            }
            // backend_ids has at most u16::MAX entries.
            let count = backend_ids.len() as u16;
            target.services.insert(master, entry(0, count));
        }
        target
    }

    /// Ordered ops turning `current` into `target`:
    /// 1. upsert new or changed backends, 2. upsert new rev-NAT entries,
    /// 3. per frontend: changed slots, then the master (new count), then
    ///    slots beyond the new count; a removed frontend loses its master
    ///    before its slots,
    /// 4. delete unused rev-NAT entries, 5. delete unused backends.
    ///
    /// Unchanged entries are not written.
    pub fn plan(current: &MapState, target: &MapState) -> Vec<MapOp> {
        let mut ops: Vec<MapOp> = changed(&current.backends, &target.backends)
            .map(|(id, b)| MapOp::UpsertBackend(id, b))
            .collect();
        ops.extend(
            changed(&current.revnat, &target.revnat).map(|(id, r)| MapOp::UpsertRevNat(id, r)),
        );
        let current_frontends = by_frontend(&current.services);
        let target_frontends = by_frontend(&target.services);
        let masters: BTreeSet<ServiceKey> = current_frontends
            .keys()
            .chain(target_frontends.keys())
            .copied()
            .collect();
        let empty = BTreeMap::new();
        for master in masters {
            let current_slots = current_frontends.get(&master).unwrap_or(&empty);
            let target_slots = target_frontends.get(&master).unwrap_or(&empty);
            frontend_ops(master, current_slots, target_slots, &mut ops);
        }
        ops.extend(removed(&current.revnat, &target.revnat).map(MapOp::DeleteRevNat));
        ops.extend(removed(&current.backends, &target.backends).map(MapOp::DeleteBackend));
        ops
    }

    /// (read_state unless known) -> target_state -> plan -> apply all.
    /// Stops at the first failed write: later writes may depend on it (a
    /// master on its slots), and thanks to the write order the maps are
    /// consistent at that point, so the next sync (which reads the maps
    /// back) simply continues.
    pub fn sync(
        &mut self,
        desired: &Desired,
        dp: &mut dyn Dataplane,
    ) -> Result<SyncReport, DataplaneError> {
        let current = match self.known.take() {
            Some(known) => known,
            None => dp.read_state()?,
        };
        let target = self.target_state(desired, &current);
        let mut report = SyncReport::default();
        for op in Self::plan(&current, &target) {
            dp.apply(&op)?;
            report.count(&op);
        }
        self.known = Some(target);
        Ok(report)
    }

    /// Makes the next sync read the maps back instead of trusting what it
    /// last wrote, so that entries changed behind our back (by hand, or by
    /// another process) are repaired.
    pub fn forget_maps(&mut self) {
        self.known = None;
    }

    /// What the maps hold, as of the last complete sync.
    pub fn programmed(&self) -> Option<&MapState> {
        self.known.as_ref()
    }

    /// After a restart the allocators know nothing of the ids in the maps:
    /// new backend ids go above all of them, and the rev-NAT search starts
    /// after the highest (once; later it just moves on).
    fn skip_ids_in_use(&mut self, current: &MapState) {
        let max_backend = current.backends.keys().next_back().copied().unwrap_or(0);
        self.next_backend_id = self.next_backend_id.max(max_backend.saturating_add(1));
        let max_rev_nat = current.revnat.keys().next_back().copied().unwrap_or(0);
        self.next_rev_nat_id
            .get_or_insert(max_rev_nat.wrapping_add(1));
    }

    /// Backend ids for the frontend's backends in slot order, adding the
    /// backends to `target` and allocating ids for new ones.
    fn backend_ids(
        &mut self,
        frontend: &Frontend,
        wanted: &DesiredFrontend,
        ids: &mut IdLookup,
        target: &mut MapState,
    ) -> Vec<u32> {
        // The count is a u16: more backends than that cannot be addressed.
        let max = usize::from(u16::MAX);
        if wanted.backends.len() > max {
            tracing::warn!(%frontend, backends = wanted.backends.len(), "too many backends; using the first {max}");
        }
        let mut backend_ids = Vec::with_capacity(wanted.backends.len().min(max));
        for addr in wanted.backends.iter().take(max) {
            let backend = Backend {
                addr_be: ip_be(addr.ip),
                port_be: addr.port.to_be(),
                proto: frontend.proto.number(),
                flags: 0,
            };
            let id = ids.backend(backend).unwrap_or_else(|| {
                let id = self.alloc_backend_id();
                ids.add_backend(backend, id);
                id
            });
            target.backends.insert(id, backend);
            backend_ids.push(id);
        }
        backend_ids
    }

    fn alloc_backend_id(&mut self) -> u32 {
        let id = self.next_backend_id;
        // 4 billion backend changes in one agent's life would take centuries.
        self.next_backend_id = id.checked_add(1).expect("backend ids exhausted");
        id
    }

    /// A rev-NAT id not in the maps nor in the target, searching from the
    /// cursor (never 0, which the datapath reads as "none").
    fn alloc_rev_nat(&mut self, current: &MapState, target: &MapState) -> Option<RevNatId> {
        let start = self.next_rev_nat_id.unwrap_or(1);
        let free = (0..=RevNatId::MAX)
            .map(|offset| start.wrapping_add(offset))
            .find(|id| {
                *id != 0 && !current.revnat.contains_key(id) && !target.revnat.contains_key(id)
            })?;
        self.next_rev_nat_id = Some(free.wrapping_add(1));
        Some(free)
    }
}

/// Ids the maps already use, so identical entries keep them.
struct IdLookup {
    /// (address, port, protocol) -> backend id.
    backends: BTreeMap<(u32, u16, u8), u32>,
    /// Master key -> its rev-NAT id, where that id still holds this frontend.
    rev_nats: BTreeMap<ServiceKey, RevNatId>,
    /// Rev-NAT ids already handed to a frontend in this target.
    taken_rev_nats: BTreeSet<RevNatId>,
}

impl IdLookup {
    fn new(current: &MapState) -> Self {
        let mut backends = BTreeMap::new();
        // Iterating ids in descending order leaves the lowest id for a
        // backend that is (wrongly) stored twice.
        for (&id, backend) in current.backends.iter().rev() {
            backends.insert(backend_identity(backend), id);
        }
        let rev_nats = current
            .services
            .iter()
            .filter(|(key, value)| {
                key.slot == 0
                    && current
                        .revnat
                        .get(&value.rev_nat_id)
                        .is_some_and(|r| r.addr_be == key.vip_be && r.port_be == key.port_be)
            })
            .map(|(key, value)| (*key, value.rev_nat_id))
            .collect();
        IdLookup {
            backends,
            rev_nats,
            taken_rev_nats: BTreeSet::new(),
        }
    }

    fn backend(&self, backend: Backend) -> Option<u32> {
        self.backends.get(&backend_identity(&backend)).copied()
    }

    fn add_backend(&mut self, backend: Backend, id: u32) {
        self.backends.insert(backend_identity(&backend), id);
    }

    /// The frontend's current rev-NAT id, unless another frontend (TCP and
    /// UDP on one port have equal rev-NAT entries) already took it.
    fn rev_nat(&mut self, master: ServiceKey) -> Option<RevNatId> {
        let id = *self.rev_nats.get(&master)?;
        self.taken_rev_nats.insert(id).then_some(id)
    }
}

/// What makes two backends the same one; flags are not part of it.
fn backend_identity(backend: &Backend) -> (u32, u16, u8) {
    (backend.addr_be, backend.port_be, backend.proto)
}

/// Service map entries grouped by frontend: master key -> slot -> value.
fn by_frontend(
    services: &BTreeMap<ServiceKey, ServiceValue>,
) -> BTreeMap<ServiceKey, BTreeMap<u16, ServiceValue>> {
    let mut frontends: BTreeMap<ServiceKey, BTreeMap<u16, ServiceValue>> = BTreeMap::new();
    for (key, value) in services {
        let master = ServiceKey { slot: 0, ..*key };
        frontends
            .entry(master)
            .or_default()
            .insert(key.slot, *value);
    }
    frontends
}

/// The writes for one frontend, given its current and target slots
/// (slot 0 = master): slots first so the new count only ever covers
/// written slots, and deletions last so the old count never covers a
/// deleted slot. BTreeMap order puts the master before the slots, so a
/// removed frontend disappears for new packets before its slots go.
fn frontend_ops(
    master: ServiceKey,
    current: &BTreeMap<u16, ServiceValue>,
    target: &BTreeMap<u16, ServiceValue>,
    ops: &mut Vec<MapOp>,
) {
    let key = |slot| ServiceKey { slot, ..master };
    let upserts: Vec<(u16, ServiceValue)> = changed(current, target).collect();
    let (master_upsert, slot_upserts): (Vec<_>, Vec<_>) =
        upserts.into_iter().partition(|(slot, _)| *slot == 0);
    ops.extend(
        slot_upserts
            .into_iter()
            .chain(master_upsert)
            .map(|(slot, value)| MapOp::UpsertService(key(slot), value)),
    );
    ops.extend(removed(current, target).map(|slot| MapOp::DeleteService(key(slot))));
}

/// Entries of `target` that `current` lacks or holds with another value.
fn changed<'a, K: Ord + Copy, V: PartialEq + Copy>(
    current: &'a BTreeMap<K, V>,
    target: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (K, V)> + 'a {
    target
        .iter()
        .filter(move |(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (*k, *v))
}

/// Keys of `current` that `target` lacks.
fn removed<'a, K: Ord + Copy, V>(
    current: &'a BTreeMap<K, V>,
    target: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = K> + 'a {
    current
        .keys()
        .filter(move |k| !target.contains_key(*k))
        .copied()
}

fn service_key(frontend: &Frontend, slot: u16) -> ServiceKey {
    ServiceKey {
        vip_be: ip_be(frontend.vip),
        port_be: frontend.port.to_be(),
        slot,
        proto: frontend.proto.number(),
        _pad: [0; 3],
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

fn ip_from_be(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr_be.to_ne_bytes())
}

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "TCP".into(),
        IPPROTO_UDP => "UDP".into(),
        other => format!("proto {other}"),
    }
}

/// Human-readable, for logs and [`DataplaneError::op`].
impl fmt::Display for MapOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frontend = |k: &ServiceKey| {
            format!(
                "{}:{}/{} slot {}",
                ip_from_be(k.vip_be),
                u16::from_be(k.port_be),
                proto_name(k.proto),
                k.slot
            )
        };
        match self {
            MapOp::UpsertBackend(id, b) => {
                write!(
                    f,
                    "upsert backend {id} = {}:{}/{}",
                    ip_from_be(b.addr_be),
                    u16::from_be(b.port_be),
                    proto_name(b.proto)
                )
            }
            MapOp::UpsertRevNat(id, r) => write!(
                f,
                "upsert rev-nat {id} = {}:{}",
                ip_from_be(r.addr_be),
                u16::from_be(r.port_be)
            ),
            MapOp::UpsertService(k, v) if k.slot == 0 => {
                write!(
                    f,
                    "upsert service {} (count {}, rev-nat {})",
                    frontend(k),
                    v.count,
                    v.rev_nat_id
                )
            }
            MapOp::UpsertService(k, v) => write!(
                f,
                "upsert service {} -> backend {}",
                frontend(k),
                v.backend_id
            ),
            MapOp::DeleteService(k) => write!(f, "delete service {}", frontend(k)),
            MapOp::DeleteRevNat(id) => write!(f, "delete rev-nat {id}"),
            MapOp::DeleteBackend(id) => write!(f, "delete backend {id}"),
        }
    }
}
