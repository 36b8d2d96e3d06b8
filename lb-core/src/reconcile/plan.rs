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
        let mut ops: Vec<MapOp> = changed(&current.backends, &target.backends)
            .map(|(id, b)| MapOp::UpsertBackend(id, b))
            .collect();
        ops.extend(
            changed(&current.revnat, &target.revnat).map(|(id, r)| MapOp::UpsertRevNat(id, r)),
        );
        ops.extend(
            (target.source_ranges.difference(&current.source_ranges))
                .map(|&(id, net)| MapOp::UpsertSourceRange(id, net)),
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
        ops.extend(
            (current.source_ranges.difference(&target.source_ranges))
                .map(|&(id, net)| MapOp::DeleteSourceRange(id, net)),
        );
        ops.extend(removed(&current.revnat, &target.revnat).map(MapOp::DeleteRevNat));
        ops.extend(removed(&current.backends, &target.backends).map(MapOp::DeleteBackend));
        ops
    }
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
