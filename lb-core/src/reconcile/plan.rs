//! The order of writes that keeps every Service whole at every step.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{ServiceKey, ServiceValue};

use super::{MapOp, MapState, Reconciler};

impl Reconciler {
    /// Ordered ops turning `current` into `target`:
    /// 1. upsert new or changed backends, 2. upsert new rev-NAT entries,
    /// 3. add new source ranges,
    /// 4. per frontend: changed slots, then the master (new count and
    ///    flags), then slots beyond the new count; a removed frontend loses
    ///    its master before its slots,
    /// 5. delete old source ranges, 6. delete unused rev-NAT entries,
    /// 7. delete unused backends.
    ///
    /// Ranges around the masters: a master gets `SVC_F_SOURCE_RANGES`
    /// only once its ranges are in, and loses it before they go; ranges
    /// replaced by others are all added before any is deleted, so a client
    /// in both the old and the new ranges is admitted throughout. They go
    /// before the rev-NAT entries, so that a range never outlives the id
    /// it names (which a new frontend could get).
    ///
    /// Unchanged entries are not written.
    pub fn plan(current: &MapState, target: &MapState) -> Vec<MapOp> {
        let mut ops = Vec::new();
        Self::plan_into(current, target, &mut |op| {
            ops.push(op);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|never| match never {});
        ops
    }

    /// [`Self::plan`], handing each op to `sink` as it comes (a full sync's
    /// millions of ops are never held at once); stops at its first error.
    pub fn plan_into<E>(
        current: &MapState,
        target: &MapState,
        sink: &mut dyn FnMut(MapOp) -> Result<(), E>,
    ) -> Result<(), E> {
        for (id, b) in changed(&current.backends, &target.backends) {
            sink(MapOp::UpsertBackend(id, b))?;
        }
        for (id, r) in changed(&current.revnat, &target.revnat) {
            sink(MapOp::UpsertRevNat(id, r))?;
        }
        for &(id, net) in target.source_ranges.difference(&current.source_ranges) {
            sink(MapOp::UpsertSourceRange(id, net))?;
        }
        let masters = |services: &BTreeMap<ServiceKey, ServiceValue>| {
            let masters = services.keys().filter(|key| key.slot == 0).copied();
            masters.collect::<BTreeSet<_>>()
        };
        let masters = &masters(&current.services) | &masters(&target.services);
        let (mut current_slots, mut target_slots) = (Vec::new(), Vec::new());
        for master in masters {
            slots_of(&current.services, master, &mut current_slots);
            slots_of(&target.services, master, &mut target_slots);
            frontend_ops(master, &current_slots, &target_slots, sink)?;
        }
        for &(id, net) in current.source_ranges.difference(&target.source_ranges) {
            sink(MapOp::DeleteSourceRange(id, net))?;
        }
        for id in removed(&current.revnat, &target.revnat) {
            sink(MapOp::DeleteRevNat(id))?;
        }
        for id in removed(&current.backends, &target.backends) {
            sink(MapOp::DeleteBackend(id))?;
        }
        Ok(())
    }
}

/// The entries of `master`'s frontend, by slot (the master first), into
/// `slots`. A frontend's keys sit together but for its protocol, which
/// sorts after the slot: the other protocol's slots on the same address
/// and port are skipped.
fn slots_of(
    services: &BTreeMap<ServiceKey, ServiceValue>,
    master: ServiceKey,
    slots: &mut Vec<(u16, ServiceValue)>,
) {
    slots.clear();
    let last = ServiceKey {
        slot: u16::MAX,
        proto: u8::MAX,
        ..master
    };
    let first = ServiceKey { proto: 0, ..master };
    slots.extend(
        (services.range(first..=last))
            .filter(|(key, _)| key.proto == master.proto)
            .map(|(key, value)| (key.slot, *value)),
    );
}

/// The writes for one frontend, given its current and target slots
/// (slot 0 = master), each sorted by slot: slots first so the new count
/// only ever covers written slots, and deletions last so the old count
/// never covers a deleted slot. A removed frontend loses its master before
/// its slots, so it disappears for new packets first.
fn frontend_ops<E>(
    master: ServiceKey,
    current: &[(u16, ServiceValue)],
    target: &[(u16, ServiceValue)],
    sink: &mut dyn FnMut(MapOp) -> Result<(), E>,
) -> Result<(), E> {
    let key = |slot| ServiceKey { slot, ..master };
    let find = |slots: &[(u16, ServiceValue)], slot: u16| {
        let i = slots.binary_search_by_key(&slot, |&(s, _)| s).ok()?;
        Some(slots[i].1)
    };
    let changed = target
        .iter()
        .filter(|&&(slot, value)| find(current, slot) != Some(value));
    let mut master_upsert = None;
    for &(slot, value) in changed {
        match slot {
            0 => master_upsert = Some(value),
            _ => sink(MapOp::UpsertService(key(slot), value))?,
        }
    }
    if let Some(value) = master_upsert {
        sink(MapOp::UpsertService(key(0), value))?;
    }
    for &(slot, _) in current {
        if find(target, slot).is_none() {
            sink(MapOp::DeleteService(key(slot)))?;
        }
    }
    Ok(())
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
