use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use lb_common::{Backend, RevNat, ServiceKey, ServiceValue};

use super::*;
use crate::model::{BackendAddr, Desired, DesiredFrontend, Frontend, ObjectRef, Proto};
use check::{assert_consistent, assert_ranges_kept, decode, expected};
use random::{random_desired, Rng};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn http() -> Frontend {
    Frontend {
        vip: VIP,
        port: 80,
        proto: Proto::Tcp,
    }
}

fn dns() -> Frontend {
    Frontend {
        vip: VIP,
        port: 53,
        proto: Proto::Udp,
    }
}

fn pod(n: u8, port: u16) -> BackendAddr {
    BackendAddr {
        ip: Ipv4Addr::new(10, 244, n, 2),
        port,
        remote: false,
    }
}

fn wanted(backends: impl IntoIterator<Item = BackendAddr>) -> DesiredFrontend {
    DesiredFrontend {
        service: ObjectRef {
            namespace: "default".into(),
            name: "web".into(),
        },
        port_name: None,
        backends: backends.into_iter().collect(),
        internal_backends: Default::default(),
        external: false,
        local_only: false,
        source_ranges: Vec::new(),
        affinity_timeout_s: 0,
    }
}

/// The `examples/web.yaml` Service with pods `10.244.{n}.2` for each n.
fn web(pods: &[u8]) -> Desired {
    let mut desired = Desired::default();
    desired
        .frontends
        .insert(http(), wanted(pods.iter().map(|&n| pod(n, 8080))));
    desired
        .frontends
        .insert(dns(), wanted(pods.iter().map(|&n| pod(n, 5353))));
    desired
}

fn key(frontend: Frontend, slot: u16) -> ServiceKey {
    ServiceKey {
        vip_be: u32::from_ne_bytes(frontend.vip.octets()),
        port_be: frontend.port.to_be(),
        slot,
        proto: frontend.proto.number(),
        _pad: [0; 3],
    }
}

fn backend_id(state: &MapState, addr: BackendAddr, proto: Proto) -> u32 {
    let wanted = Backend {
        addr_be: u32::from_ne_bytes(addr.ip.octets()),
        port_be: addr.port.to_be(),
        proto: proto.number(),
        flags: if addr.remote {
            lb_common::BACKEND_F_REMOTE
        } else {
            0
        },
    };
    *state
        .backends
        .iter()
        .find(|(_, b)| **b == wanted)
        .unwrap_or_else(|| panic!("no backend {addr}"))
        .0
}

/// Syncs `desired` into `dp` and returns the ops of this sync only.
fn sync(reconciler: &mut Reconciler, desired: &Desired, dp: &mut FakeDataplane) -> Vec<MapOp> {
    let before = dp.applied.len();
    let report = reconciler.sync(desired, dp).unwrap();
    let ops = dp.applied[before..].to_vec();
    assert_eq!(report.total(), ops.len());
    ops
}

#[test]
fn first_sync_from_empty_writes_everything_in_order() {
    let mut dp = FakeDataplane::default();
    let desired = web(&[1, 2, 3]);
    let ops = sync(&mut Reconciler::new(), &desired, &mut dp);

    assert_eq!(decode(&dp.state), expected(&desired));
    assert_eq!(
        (
            dp.state.backends.len(),
            dp.state.revnat.len(),
            dp.state.services.len()
        ),
        (6, 2, 8)
    );
    let kinds: Vec<&str> = ops
        .iter()
        .map(|op| match op {
            MapOp::UpsertBackend(..) => "backend",
            MapOp::UpsertRevNat(..) => "revnat",
            MapOp::UpsertService(k, _) if k.slot == 0 => "master",
            MapOp::UpsertService(..) => "slot",
            other => panic!("unexpected {other}"),
        })
        .collect();
    let frontend = ["slot", "slot", "slot", "master"];
    let order: Vec<&str> = [
        ["backend"; 6].as_slice(),
        &["revnat"; 2],
        &frontend,
        &frontend,
    ]
    .concat();
    assert_eq!(kinds, order);
    assert!(
        !dp.state.backends.contains_key(&0) && !dp.state.revnat.contains_key(&0),
        "id 0 is never used"
    );

    // Exact encoding of the http master and its first slot.
    let master = dp.state.services[&key(http(), 0)];
    assert_eq!((master.backend_id, master.count, master.flags), (0, 3, 0));
    let first = dp.state.services[&key(http(), 1)];
    let backend = dp.state.backends[&first.backend_id];
    assert_eq!(
        backend,
        Backend {
            addr_be: u32::from_ne_bytes([10, 244, 1, 2]),
            port_be: 8080u16.to_be(),
            proto: 6,
            flags: 0
        }
    );
    assert_eq!(
        dp.state.revnat[&master.rev_nat_id],
        RevNat {
            addr_be: u32::from_ne_bytes([10, 96, 0, 10]),
            port_be: 80u16.to_be(),
            _pad: 0
        }
    );
}

#[test]
fn identical_sync_applies_nothing() {
    let mut dp = FakeDataplane::default();
    let mut reconciler = Reconciler::new();
    sync(&mut reconciler, &web(&[1, 2, 3]), &mut dp);
    assert_eq!(
        reconciler.sync(&web(&[1, 2, 3]), &mut dp).unwrap(),
        SyncReport::default()
    );
}

#[test]
fn adding_a_backend_writes_backend_then_slot_then_master() {
    let mut dp = FakeDataplane::default();
    let mut reconciler = Reconciler::new();
    sync(&mut reconciler, &web(&[1, 2, 3]), &mut dp);
    let mut desired = web(&[1, 2, 3]);
    desired
        .frontends
        .get_mut(&http())
        .unwrap()
        .backends
        .insert(pod(4, 8080));
    let ops = sync(&mut reconciler, &desired, &mut dp);

    let new_id = backend_id(&dp.state, pod(4, 8080), Proto::Tcp);
    assert_eq!(new_id, 7, "next after the 6 existing ids");
    let master = dp.state.services[&key(http(), 0)];
    assert_eq!(
        ops,
        [
            MapOp::UpsertBackend(new_id, dp.state.backends[&new_id]),
            MapOp::UpsertService(
                key(http(), 4),
                ServiceValue {
                    backend_id: new_id,
                    rev_nat_id: master.rev_nat_id,
                    ..Default::default()
                }
            ),
            MapOp::UpsertService(
                key(http(), 0),
                ServiceValue {
                    count: 4,
                    internal_count: 4,
                    ..master
                }
            ),
        ]
    );
}

#[test]
fn removing_a_backend_shrinks_master_before_deleting_slot_and_backend() {
    let mut dp = FakeDataplane::default();
    let mut reconciler = Reconciler::new();
    sync(&mut reconciler, &web(&[1, 2, 3]), &mut dp);
    let gone = backend_id(&dp.state, pod(3, 8080), Proto::Tcp);
    let master = dp.state.services[&key(http(), 0)];
    let mut desired = web(&[1, 2, 3]);
    desired
        .frontends
        .get_mut(&http())
        .unwrap()
        .backends
        .remove(&pod(3, 8080));
    let ops = sync(&mut reconciler, &desired, &mut dp);
    assert_eq!(
        ops,
        [
            MapOp::UpsertService(
                key(http(), 0),
                ServiceValue {
                    count: 2,
                    internal_count: 2,
                    ..master
                }
            ),
            MapOp::DeleteService(key(http(), 3)),
            MapOp::DeleteBackend(gone),
        ]
    );

    // Removing the first backend moves a later one into its slot first.
    let moved = backend_id(&dp.state, pod(2, 5353), Proto::Udp);
    let gone = [pod(1, 5353), pod(3, 5353)].map(|p| backend_id(&dp.state, p, Proto::Udp));
    let master = dp.state.services[&key(dns(), 0)];
    let dns_backends = &mut desired.frontends.get_mut(&dns()).unwrap().backends;
    dns_backends.remove(&pod(1, 5353));
    dns_backends.remove(&pod(3, 5353));
    let ops = sync(&mut reconciler, &desired, &mut dp);
    assert_eq!(
        ops,
        [
            MapOp::UpsertService(
                key(dns(), 1),
                ServiceValue {
                    backend_id: moved,
                    rev_nat_id: master.rev_nat_id,
                    ..Default::default()
                }
            ),
            MapOp::UpsertService(
                key(dns(), 0),
                ServiceValue {
                    count: 1,
                    internal_count: 1,
                    ..master
                }
            ),
            MapOp::DeleteService(key(dns(), 2)),
            MapOp::DeleteService(key(dns(), 3)),
            MapOp::DeleteBackend(gone[0]),
            MapOp::DeleteBackend(gone[1]),
        ]
    );
}

#[test]
fn restart_keeps_ids_and_new_ids_continue_after_the_highest() {
    let mut dp = FakeDataplane::default();
    sync(&mut Reconciler::new(), &web(&[1, 2, 3]), &mut dp);
    let before = dp.state.clone();

    // The pinned maps survive the agent; the Reconciler starts afresh.
    let mut dp = FakeDataplane::new(before.clone());
    let mut restarted = Reconciler::new();
    assert_eq!(restarted.target_state(&web(&[1, 2, 3]), &before), before);
    assert!(sync(&mut restarted, &web(&[1, 2, 3]), &mut dp).is_empty());

    sync(&mut restarted, &web(&[1, 2, 3, 4]), &mut dp);
    assert_eq!(
        backend_id(&dp.state, pod(1, 8080), Proto::Tcp),
        backend_id(&before, pod(1, 8080), Proto::Tcp)
    );
    let highest_before = *before.backends.keys().max().unwrap();
    assert!(backend_id(&dp.state, pod(4, 8080), Proto::Tcp) > highest_before);
    let old_rev_nats: BTreeSet<lb_common::RevNatId> = before.revnat.keys().copied().collect();
    let rev_nats: BTreeSet<lb_common::RevNatId> = dp.state.revnat.keys().copied().collect();
    assert_eq!(rev_nats, old_rev_nats);
}

#[test]
fn removing_a_service_deletes_master_before_slots_then_rev_nat_then_backends() {
    let mut dp = FakeDataplane::default();
    let mut reconciler = Reconciler::new();
    sync(&mut reconciler, &web(&[1, 2]), &mut dp);
    let rev_nat = dp.state.services[&key(dns(), 0)].rev_nat_id;
    let (b1, b2) = (
        backend_id(&dp.state, pod(1, 5353), Proto::Udp),
        backend_id(&dp.state, pod(2, 5353), Proto::Udp),
    );
    let mut desired = web(&[1, 2]);
    desired.frontends.remove(&dns());
    let ops = sync(&mut reconciler, &desired, &mut dp);
    assert_eq!(
        ops,
        [
            MapOp::DeleteService(key(dns(), 0)),
            MapOp::DeleteService(key(dns(), 1)),
            MapOp::DeleteService(key(dns(), 2)),
            MapOp::DeleteRevNat(rev_nat),
            MapOp::DeleteBackend(b1),
            MapOp::DeleteBackend(b2),
        ]
    );
    assert_eq!(decode(&dp.state), expected(&desired));
}

#[test]
fn frontend_without_backends_has_master_with_zero_count() {
    let mut dp = FakeDataplane::default();
    sync(&mut Reconciler::new(), &web(&[]), &mut dp);
    assert_eq!(dp.state.services.len(), 2);
    assert_eq!(dp.state.services[&key(http(), 0)].count, 0);
    assert!(dp.state.backends.is_empty());
    assert_eq!(dp.state.revnat.len(), 2);
}

#[test]
fn backends_shared_between_frontends_and_rev_nat_ids_distinct() {
    let mut desired = web(&[1]);
    let tcp_dns = Frontend {
        vip: VIP,
        port: 53,
        proto: Proto::Tcp,
    };
    let other = Frontend {
        vip: Ipv4Addr::new(10, 96, 0, 11),
        port: 80,
        proto: Proto::Tcp,
    };
    desired.frontends.insert(tcp_dns, wanted([pod(1, 8080)]));
    desired.frontends.insert(other, wanted([pod(1, 8080)]));
    let mut dp = FakeDataplane::default();
    sync(&mut Reconciler::new(), &desired, &mut dp);
    // pod 1 at 8080/TCP is one backend; 5353/UDP another.
    assert_eq!(dp.state.backends.len(), 2);
    let rev_nats: BTreeSet<lb_common::RevNatId> = [http(), dns(), tcp_dns, other]
        .iter()
        .map(|f| dp.state.services[&key(*f, 0)].rev_nat_id)
        .collect();
    assert_eq!(rev_nats.len(), 4);
}

#[test]
fn ids_are_not_reused_soon_after_being_freed() {
    let mut dp = FakeDataplane::default();
    let mut reconciler = Reconciler::new();
    sync(&mut reconciler, &web(&[1]), &mut dp);
    let old_backend = backend_id(&dp.state, pod(1, 8080), Proto::Tcp);
    let old_rev_nat = dp.state.services[&key(http(), 0)].rev_nat_id;
    sync(&mut reconciler, &Desired::default(), &mut dp);
    assert_eq!(dp.state, MapState::default());
    sync(&mut reconciler, &web(&[1]), &mut dp);
    assert!(backend_id(&dp.state, pod(1, 8080), Proto::Tcp) > old_backend);
    assert_ne!(dp.state.services[&key(http(), 0)].rev_nat_id, old_rev_nat);
}

#[test]
fn rev_nat_ids_wrap_and_skip_ids_in_use() {
    let mut current = MapState::default();
    for id in [lb_common::RevNatId::MAX, 1, 2] {
        current.revnat.insert(
            id,
            RevNat {
                addr_be: id,
                port_be: 1,
                _pad: 0,
            },
        );
    }
    let target = Reconciler::new().target_state(&web(&[]), &current);
    let ids: BTreeSet<lb_common::RevNatId> = target.revnat.keys().copied().collect();
    assert_eq!(ids, BTreeSet::from([3, 4]));
}

#[test]
fn failed_write_leaves_consistent_maps_and_next_sync_finishes() {
    let mut reconciler = Reconciler::new();
    let mut dp = FakeDataplane::default();
    sync(&mut reconciler, &web(&[1, 2, 3]), &mut dp);
    let desired = web(&[2, 4, 5]);
    dp.fail_at = Some(dp.applied.len() + 5);
    let error = reconciler.sync(&desired, &mut dp).unwrap_err();
    assert_eq!(error.message, "injected failure");
    assert_consistent(&dp.state, "after failure");
    dp.fail_at = None;
    reconciler.sync(&desired, &mut dp).unwrap();
    assert_eq!(decode(&dp.state), expected(&desired));
    assert_eq!(reconciler.sync(&desired, &mut dp).unwrap().total(), 0);
}

#[test]
fn map_op_display_is_readable() {
    let op = MapOp::UpsertService(
        key(http(), 2),
        ServiceValue {
            backend_id: 7,
            rev_nat_id: 1,
            ..Default::default()
        },
    );
    assert_eq!(
        op.to_string(),
        "upsert service 10.96.0.10:80/TCP slot 2 -> backend 7"
    );
    let backend = Backend {
        addr_be: u32::from_ne_bytes([10, 244, 1, 2]),
        port_be: 5353u16.to_be(),
        proto: 17,
        flags: 0,
    };
    assert_eq!(
        MapOp::UpsertBackend(3, backend).to_string(),
        "upsert backend 3 = 10.244.1.2:5353/UDP"
    );
}

#[test]
fn every_prefix_of_every_plan_keeps_services_whole() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut reconciler = Reconciler::new();
    let mut dp = FakeDataplane::default();
    let mut highest_backend_id = 0;
    for step in 0..200 {
        if step == 100 {
            // An agent restart: the maps survive, the allocators do not, so
            // only ids in the maps are known to be taken.
            reconciler = Reconciler::new();
            highest_backend_id = dp.state.backends.keys().copied().max().unwrap_or(0);
        }
        let desired = if rng.one_in(10) {
            Desired::default()
        } else {
            random_desired(&mut rng)
        };
        let current = dp.state.clone();
        let target = reconciler.target_state(&desired, &current);
        for (id, backend) in &target.backends {
            match current.backends.get(id) {
                Some(old) => {
                    assert_eq!(old, backend, "step {step}: backend id {id} changed meaning")
                }
                None => assert!(
                    *id > highest_backend_id,
                    "step {step}: backend id {id} reused"
                ),
            }
        }
        highest_backend_id =
            highest_backend_id.max(target.backends.keys().copied().max().unwrap_or(0));
        let ops = Reconciler::plan(&current, &target);
        for (i, op) in ops.iter().enumerate() {
            dp.apply(op).unwrap();
            let context = format!("step {step}, after op {i} ({op})");
            assert_consistent(&dp.state, &context);
            assert_ranges_kept(&current, &target, &dp.state, &context);
        }
        assert_eq!(dp.state, target, "step {step}");
        assert_eq!(decode(&dp.state), expected(&desired), "step {step}");
        assert!(
            Reconciler::plan(&dp.state, &reconciler.target_state(&desired, &dp.state)).is_empty(),
            "step {step}: resync not idle"
        );
    }
}

#[test]
fn maps_are_read_back_only_at_start_after_a_failure_and_when_asked() {
    let mut reconciler = Reconciler::new();
    let mut dp = FakeDataplane::default();
    sync(&mut reconciler, &web(&[1, 2, 3]), &mut dp);
    sync(&mut reconciler, &web(&[1, 2]), &mut dp);
    assert_eq!(
        dp.reads.get(),
        1,
        "a sync after a complete one trusts what it wrote"
    );
    assert_eq!(reconciler.programmed(), Some(&dp.state));

    dp.fail_at = Some(dp.applied.len());
    reconciler.sync(&web(&[4]), &mut dp).unwrap_err();
    assert_eq!(reconciler.programmed(), None);
    dp.fail_at = None;
    sync(&mut reconciler, &web(&[4]), &mut dp);
    assert_eq!(
        dp.reads.get(),
        2,
        "after a failed write the maps are read back"
    );
    assert_eq!(decode(&dp.state), expected(&web(&[4])));
}

#[test]
fn forgetting_the_maps_repairs_drift() {
    let mut reconciler = Reconciler::new();
    let mut dp = FakeDataplane::default();
    let desired = web(&[1, 2, 3]);
    sync(&mut reconciler, &desired, &mut dp);
    // Someone deletes an entry behind the agent's back.
    let slot = *dp.state.services.keys().find(|k| k.slot == 2).unwrap();
    dp.state.services.remove(&slot);
    assert!(
        sync(&mut reconciler, &desired, &mut dp).is_empty(),
        "trusted cache: not noticed"
    );
    reconciler.forget_maps();
    let repaired = sync(&mut reconciler, &desired, &mut dp);
    assert_eq!(repaired.len(), 1, "{repaired:?}");
    assert_eq!(decode(&dp.state), expected(&desired));
}

mod capacity;
mod check;
mod flags;
mod incremental;
mod random;
