//! What the tests hold the maps to: the invariants every single write must
//! keep, and the frontends the maps serve, decoded.

use lb_common::{BACKEND_F_REMOTE, SVC_F_LOCAL_ONLY, SVC_F_SOURCE_RANGES};

use super::*;

/// What a frontend serves, as decoded from the maps or as asked for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Served {
    /// In slot order.
    pub backends: Vec<BackendAddr>,
    /// Those after `backends`, for the node's own clients only.
    pub internal_backends: Vec<BackendAddr>,
    pub local_only: bool,
    /// Empty: any client.
    pub source_ranges: BTreeSet<Ipv4Net>,
}

/// The "no half-written Service" invariant: every master's slots exist
/// and point to existing backends, every rev-NAT id used exists, and a
/// master flagged `SVC_F_SOURCE_RANGES` has ranges (without any, the
/// datapath would drop every new flow).
pub(super) fn assert_consistent(state: &MapState, context: &str) {
    for (master, value) in state.services.iter().filter(|(k, _)| k.slot == 0) {
        assert!(
            state.revnat.contains_key(&value.rev_nat_id),
            "{context}: master {master:?} rev-nat missing"
        );
        assert!(
            value.flags & SVC_F_SOURCE_RANGES == 0
                || !ranges_of(state, value.rev_nat_id).is_empty(),
            "{context}: master {master:?} flagged without source ranges"
        );
        assert!(
            value.internal_count >= value.count,
            "{context}: master {master:?} has fewer slots for the node's clients than for others"
        );
        for slot in 1..=value.internal_count {
            let entry = state.services.get(&ServiceKey { slot, ..*master });
            let entry =
                entry.unwrap_or_else(|| panic!("{context}: {master:?} slot {slot} missing"));
            assert!(
                state.backends.contains_key(&entry.backend_id),
                "{context}: {master:?} slot {slot} backend missing"
            );
            assert!(
                state.revnat.contains_key(&entry.rev_nat_id),
                "{context}: {master:?} slot {slot} rev-nat missing"
            );
        }
    }
}

/// The source-range invariant of a sync from `before` to `after`, at the
/// write that left `now`: a master flagged `SVC_F_SOURCE_RANGES` finds all
/// the ranges it had before (if it was flagged then) or all it has after
/// (if it is flagged then), and no range from neither. So a client allowed
/// both before and after is never dropped, and no other is ever admitted.
pub(super) fn assert_ranges_kept(
    before: &MapState,
    after: &MapState,
    now: &MapState,
    context: &str,
) {
    let flagged = |state: &MapState, master: &ServiceKey, id| {
        (state.services.get(master))
            .is_some_and(|v| v.rev_nat_id == id && v.flags & SVC_F_SOURCE_RANGES != 0)
    };
    for (master, value) in now.services.iter().filter(|(k, _)| k.slot == 0) {
        if value.flags & SVC_F_SOURCE_RANGES == 0 {
            continue;
        }
        let id = value.rev_nat_id;
        let ranges = ranges_of(now, id);
        let (old, new) = (ranges_of(before, id), ranges_of(after, id));
        let keeps_old = flagged(before, master, id) && ranges.is_superset(&old);
        let keeps_new = flagged(after, master, id) && ranges.is_superset(&new);
        assert!(
            keeps_old || keeps_new,
            "{context}: {master:?} has ranges {ranges:?}, neither all of {old:?} nor of {new:?}"
        );
        let known: BTreeSet<Ipv4Net> = old.union(&new).copied().collect();
        assert!(
            ranges.is_subset(&known),
            "{context}: {master:?} admits {ranges:?}, more than {known:?}"
        );
    }
}

/// Applies `ops` to `before` one at a time, checking both invariants
/// after each.
pub(super) fn assert_every_prefix_consistent(before: &MapState, ops: &[MapOp], context: &str) {
    let mut after = before.clone();
    for op in ops {
        after.apply(op);
    }
    let mut state = before.clone();
    for (i, op) in ops.iter().enumerate() {
        assert!(state.apply(op), "{context}: op {i} ({op}) finds no entry");
        let context = format!("{context}, after op {i} ({op})");
        assert_consistent(&state, &context);
        assert_ranges_kept(before, &after, &state, &context);
    }
}

/// The client networks under a rev-NAT id.
pub(super) fn ranges_of(state: &MapState, id: lb_common::RevNatId) -> BTreeSet<Ipv4Net> {
    (state.source_ranges.iter())
        .filter(|(of, _)| *of == id)
        .map(|(_, net)| *net)
        .collect()
}

/// Reads the maps back as frontends with what they serve, checking that
/// they hold nothing else (no range outside a frontend, no unknown flag).
pub(super) fn decode(state: &MapState) -> BTreeMap<Frontend, Served> {
    let mut frontends = BTreeMap::new();
    for (master, value) in state.services.iter().filter(|(k, _)| k.slot == 0) {
        let proto = if master.proto == 6 {
            Proto::Tcp
        } else {
            Proto::Udp
        };
        let frontend = Frontend {
            vip: Ipv4Addr::from(master.vip_be.to_ne_bytes()),
            port: u16::from_be(master.port_be),
            proto,
        };
        assert_eq!(
            state.revnat[&value.rev_nat_id],
            RevNat {
                addr_be: master.vip_be,
                port_be: master.port_be,
                _pad: 0
            }
        );
        let mut backends: Vec<BackendAddr> = (1..=value.internal_count)
            .map(|slot| {
                let slot_value = state.services[&ServiceKey { slot, ..*master }];
                assert_eq!(
                    (slot_value.count, slot_value.rev_nat_id, slot_value.flags),
                    (0, value.rev_nat_id, 0)
                );
                let backend = state.backends[&slot_value.backend_id];
                assert_eq!(backend.proto, master.proto);
                assert_eq!(backend.flags & !BACKEND_F_REMOTE, 0);
                BackendAddr {
                    ip: Ipv4Addr::from(backend.addr_be.to_ne_bytes()),
                    port: u16::from_be(backend.port_be),
                    remote: backend.flags & BACKEND_F_REMOTE != 0,
                }
            })
            .collect();
        let internal_backends = backends.split_off(usize::from(value.count));
        assert_eq!(value.flags & !(SVC_F_LOCAL_ONLY | SVC_F_SOURCE_RANGES), 0);
        let source_ranges = ranges_of(state, value.rev_nat_id);
        assert_eq!(
            value.flags & SVC_F_SOURCE_RANGES != 0,
            !source_ranges.is_empty(),
            "{frontend}: flag and ranges disagree"
        );
        let served = Served {
            backends,
            internal_backends,
            local_only: value.flags & SVC_F_LOCAL_ONLY != 0,
            source_ranges,
        };
        frontends.insert(frontend, served);
    }
    for (id, net) in &state.source_ranges {
        assert!(
            state.services.values().any(|v| v.rev_nat_id == *id),
            "range {net} of rev-nat {id}: no such frontend"
        );
    }
    frontends
}

/// What `desired` asks each frontend to serve, as [`decode`] reads it.
pub(super) fn expected(desired: &Desired) -> BTreeMap<Frontend, Served> {
    (desired.frontends.iter())
        .map(|(f, d)| {
            let served = Served {
                backends: d.backends.iter().copied().collect(),
                internal_backends: d.internal_backends.iter().copied().collect(),
                local_only: d.local_only,
                source_ranges: d.source_ranges.iter().map(Ipv4Net::trunc).collect(),
            };
            (*f, served)
        })
        .collect()
}
