//! Master flags (externalTrafficPolicy Local, loadBalancerSourceRanges),
//! the source-range trie, and backends on other nodes.

use lb_common::{BACKEND_F_REMOTE, SVC_F_LOCAL_ONLY, SVC_F_SOURCE_RANGES};

use super::check::{assert_every_prefix_consistent, ranges_of};
use super::*;

fn nets(nets: &[&str]) -> Vec<Ipv4Net> {
    nets.iter().map(|net| net.parse().unwrap()).collect()
}

fn net(net: &str) -> Ipv4Net {
    net.parse().unwrap()
}

/// Syncs `desired`, checks every write prefix and the result, and returns
/// the ops.
fn sync_checked(
    reconciler: &mut Reconciler,
    desired: &Desired,
    dp: &mut FakeDataplane,
) -> Vec<MapOp> {
    let before = dp.state.clone();
    let ops = sync(reconciler, desired, dp);
    assert_every_prefix_consistent(&before, &ops, "sync");
    assert_eq!(decode(&dp.state), expected(desired));
    ops
}

fn http_mut(desired: &mut Desired) -> &mut DesiredFrontend {
    desired.frontends.get_mut(&http()).unwrap()
}

#[test]
fn local_only_rewrites_only_the_master() {
    let mut reconciler = Reconciler::new();
    let mut dp = FakeDataplane::default();
    let mut desired = web(&[1, 2]);
    sync(&mut reconciler, &desired, &mut dp);
    let master = dp.state.services[&key(http(), 0)];

    http_mut(&mut desired).local_only = true;
    let local = ServiceValue {
        flags: SVC_F_LOCAL_ONLY,
        ..master
    };
    assert_eq!(
        sync_checked(&mut reconciler, &desired, &mut dp),
        [MapOp::UpsertService(key(http(), 0), local)]
    );

    http_mut(&mut desired).local_only = false;
    assert_eq!(
        sync_checked(&mut reconciler, &desired, &mut dp),
        [MapOp::UpsertService(key(http(), 0), master)]
    );
}

#[test]
fn ranges_go_in_before_the_flag_out_after_it_and_new_before_old() {
    let mut reconciler = Reconciler::new();
    let mut dp = FakeDataplane::default();
    let mut desired = web(&[1, 2]);
    sync(&mut reconciler, &desired, &mut dp);
    let master = dp.state.services[&key(http(), 0)];
    let id = master.rev_nat_id;
    let flagged = |flags| MapOp::UpsertService(key(http(), 0), ServiceValue { flags, ..master });

    http_mut(&mut desired).source_ranges = nets(&["10.0.0.0/8", "192.168.1.0/24"]);
    assert_eq!(
        sync_checked(&mut reconciler, &desired, &mut dp),
        [
            MapOp::UpsertSourceRange(id, net("10.0.0.0/8")),
            MapOp::UpsertSourceRange(id, net("192.168.1.0/24")),
            flagged(SVC_F_SOURCE_RANGES),
        ]
    );

    // Replaced: the master already has the flag; the range both keep stays.
    http_mut(&mut desired).source_ranges = nets(&["192.168.1.0/24", "172.16.0.0/12"]);
    assert_eq!(
        sync_checked(&mut reconciler, &desired, &mut dp),
        [
            MapOp::UpsertSourceRange(id, net("172.16.0.0/12")),
            MapOp::DeleteSourceRange(id, net("10.0.0.0/8")),
        ]
    );

    http_mut(&mut desired).local_only = true;
    assert_eq!(
        sync_checked(&mut reconciler, &desired, &mut dp),
        [flagged(SVC_F_LOCAL_ONLY | SVC_F_SOURCE_RANGES)]
    );

    http_mut(&mut desired).source_ranges.clear();
    assert_eq!(
        sync_checked(&mut reconciler, &desired, &mut dp),
        [
            flagged(SVC_F_LOCAL_ONLY),
            MapOp::DeleteSourceRange(id, net("172.16.0.0/12")),
            MapOp::DeleteSourceRange(id, net("192.168.1.0/24")),
        ]
    );
    assert!(dp.state.source_ranges.is_empty());
}

#[test]
fn a_removed_frontend_loses_its_ranges_after_its_master_before_its_rev_nat() {
    let mut reconciler = Reconciler::new();
    let mut dp = FakeDataplane::default();
    let mut desired = web(&[1]);
    http_mut(&mut desired).source_ranges = nets(&["10.0.0.0/8"]);
    sync_checked(&mut reconciler, &desired, &mut dp);
    let id = dp.state.services[&key(http(), 0)].rev_nat_id;
    let backend = backend_id(&dp.state, pod(1, 8080), Proto::Tcp);

    desired.frontends.remove(&http());
    assert_eq!(
        sync_checked(&mut reconciler, &desired, &mut dp),
        [
            MapOp::DeleteService(key(http(), 0)),
            MapOp::DeleteService(key(http(), 1)),
            MapOp::DeleteSourceRange(id, net("10.0.0.0/8")),
            MapOp::DeleteRevNat(id),
            MapOp::DeleteBackend(backend),
        ]
    );
}

#[test]
fn host_bits_and_repeats_make_one_range() {
    let mut reconciler = Reconciler::new();
    let mut dp = FakeDataplane::default();
    let mut desired = web(&[1]);
    http_mut(&mut desired).source_ranges = nets(&["10.1.2.3/8", "10.0.0.0/8", "10.9.9.9/8"]);
    sync_checked(&mut reconciler, &desired, &mut dp);
    let id = dp.state.services[&key(http(), 0)].rev_nat_id;
    assert_eq!(
        dp.state.source_ranges,
        BTreeSet::from([(id, net("10.0.0.0/8"))])
    );

    http_mut(&mut desired).source_ranges = nets(&["10.0.0.0/8"]);
    assert!(sync_checked(&mut reconciler, &desired, &mut dp).is_empty());
}

/// From Services without ranges or Local to ones with, the other way
/// round, ranges replaced, frontends with ranges added and removed.
fn range_changes() -> (Desired, Desired) {
    let mut from = web(&[1, 2, 3]);
    http_mut(&mut from).source_ranges = nets(&["10.0.0.0/8", "192.168.0.0/16"]);
    let other = Frontend {
        vip: Ipv4Addr::new(10, 96, 0, 11),
        port: 443,
        proto: Proto::Tcp,
    };
    let mut gone = wanted([pod(4, 8443)]);
    gone.source_ranges = nets(&["172.16.0.0/12"]);
    from.frontends.insert(other, gone);

    let mut to = web(&[2, 3, 4]);
    http_mut(&mut to).source_ranges = nets(&["10.1.0.0/16", "192.168.0.0/16", "0.0.0.0/0"]);
    http_mut(&mut to).local_only = true;
    let dns = to.frontends.get_mut(&dns()).unwrap();
    dns.source_ranges = nets(&["10.2.0.0/16"]);
    let new = Frontend {
        vip: Ipv4Addr::new(10, 96, 0, 12),
        port: 443,
        proto: Proto::Tcp,
    };
    let mut added = wanted([pod(5, 8443)]);
    added.source_ranges = nets(&["172.16.0.0/12"]);
    to.frontends.insert(new, added);
    (from, to)
}

#[test]
fn range_changes_keep_clients_at_every_write_and_finish_after_any_failure() {
    let (from, to) = range_changes();
    let plan_length = {
        let mut reconciler = Reconciler::new();
        let mut dp = FakeDataplane::default();
        sync_checked(&mut reconciler, &from, &mut dp);
        let ops = sync_checked(&mut reconciler, &to, &mut dp);
        let back = sync_checked(&mut reconciler, &from, &mut dp);
        assert!(back.len() > 10, "{back:?}");
        ops.len()
    };
    assert!(plan_length > 10, "{plan_length}");
    for fail_at in 0..plan_length {
        let context = format!("failing write {fail_at}");
        let mut reconciler = Reconciler::new();
        let mut dp = FakeDataplane::default();
        sync(&mut reconciler, &from, &mut dp);
        dp.fail_at = Some(dp.applied.len() + fail_at);
        reconciler.sync(&to, &mut dp).unwrap_err();
        assert_consistent(&dp.state, &context);

        dp.fail_at = None;
        let before = dp.state.clone();
        let ops = sync(&mut reconciler, &to, &mut dp);
        assert_every_prefix_consistent(&before, &ops, &context);
        assert_eq!(decode(&dp.state), expected(&to), "{context}");
    }
}

#[test]
fn a_restarted_agent_adopts_flags_and_ranges() {
    let (_, desired) = range_changes();
    let mut dp = FakeDataplane::default();
    sync_checked(&mut Reconciler::new(), &desired, &mut dp);
    assert_eq!(dp.state.source_ranges.len(), 5);

    let mut dp = FakeDataplane::new(dp.state.clone());
    let mut restarted = Reconciler::new();
    assert!(sync(&mut restarted, &desired, &mut dp).is_empty());
    assert_eq!(restarted.programmed(), Some(&dp.state));

    // From memory, a change of ranges writes only ranges.
    let mut changed = desired.clone();
    http_mut(&mut changed).source_ranges = nets(&["10.1.0.0/16"]);
    let id = dp.state.services[&key(http(), 0)].rev_nat_id;
    assert_eq!(
        sync_checked(&mut restarted, &changed, &mut dp),
        [
            MapOp::DeleteSourceRange(id, net("0.0.0.0/0")),
            MapOp::DeleteSourceRange(id, net("192.168.0.0/16")),
        ]
    );
    assert_eq!(dp.reads.get(), 1);
}

#[test]
fn a_pod_moving_to_another_node_is_a_new_backend() {
    let mut reconciler = Reconciler::new();
    let mut dp = FakeDataplane::default();
    let mut desired = web(&[1, 2]);
    sync(&mut reconciler, &desired, &mut dp);
    let old = backend_id(&dp.state, pod(1, 8080), Proto::Tcp);

    let moved = BackendAddr {
        remote: true,
        ..pod(1, 8080)
    };
    let backends = &mut http_mut(&mut desired).backends;
    backends.remove(&pod(1, 8080));
    backends.insert(moved);
    let ops = sync_checked(&mut reconciler, &desired, &mut dp);
    let new = backend_id(&dp.state, moved, Proto::Tcp);
    assert!(new > old);
    assert_eq!(dp.state.backends[&new].flags, BACKEND_F_REMOTE);
    let master = dp.state.services[&key(http(), 0)];
    let slot = ServiceValue {
        backend_id: new,
        rev_nat_id: master.rev_nat_id,
        ..Default::default()
    };
    // Slot 1 (pods in address order) gets the new backend; the old goes.
    assert_eq!(
        ops,
        [
            MapOp::UpsertBackend(new, dp.state.backends[&new]),
            MapOp::UpsertService(key(http(), 1), slot),
            MapOp::DeleteBackend(old),
        ]
    );
}

#[test]
fn ranges_no_frontend_owns_are_deleted_and_their_id_not_handed_out() {
    // Left by hand: a range under rev-NAT id 1, which no entry holds.
    let mut stray = MapState::default();
    stray.source_ranges.insert((1, net("0.0.0.0/0")));
    let mut dp = FakeDataplane::new(stray);
    let mut desired = web(&[1]);
    http_mut(&mut desired).source_ranges = nets(&["10.0.0.0/8"]);
    let ops = sync_checked(&mut Reconciler::new(), &desired, &mut dp);
    assert!(ops.contains(&MapOp::DeleteSourceRange(1, net("0.0.0.0/0"))));
    assert!(ranges_of(&dp.state, 1).is_empty());
    assert!(!dp.state.revnat.contains_key(&1));
}

#[test]
fn range_writes_and_flags_are_readable() {
    assert_eq!(
        MapOp::UpsertSourceRange(3, net("10.0.0.0/8")).to_string(),
        "upsert source range 10.0.0.0/8 of rev-nat 3"
    );
    assert_eq!(
        MapOp::DeleteSourceRange(3, net("10.0.0.0/8")).to_string(),
        "delete source range 10.0.0.0/8 of rev-nat 3"
    );
    let master = ServiceValue {
        rev_nat_id: 1,
        count: 2,
        flags: SVC_F_LOCAL_ONLY | SVC_F_SOURCE_RANGES,
        ..Default::default()
    };
    assert_eq!(
        MapOp::UpsertService(key(http(), 0), master).to_string(),
        "upsert service 10.96.0.10:80/TCP slot 0 (count 2, rev-nat 1, local-only, source-ranges)"
    );
}
