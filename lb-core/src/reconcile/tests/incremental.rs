//! Syncs after a complete one plan only the changed frontends: they must
//! write exactly what a sync from the maps read back would.

use super::check::assert_every_prefix_consistent;
use super::random::some_ranges;
use super::*;

/// A few small edits of `desired`, like endpoints coming and going: a
/// backend toggled, moved to another frontend, a pod found on another node,
/// a frontend added or removed, made Local or not, given other ranges.
fn edit(rng: &mut Rng, desired: &Desired) -> Desired {
    let mut desired = desired.clone();
    for _ in 0..=rng.next() % 3 {
        let frontends: Vec<Frontend> = desired.frontends.keys().copied().collect();
        let pick = |rng: &mut Rng| frontends[(rng.next() % frontends.len() as u64) as usize];
        let some_pod = |rng: &mut Rng| {
            pod(
                1 + (rng.next() % 6) as u8,
                [8080, 9090][(rng.next() % 2) as usize],
            )
        };
        match rng.next() % 7 {
            _ if frontends.is_empty() => {
                desired.frontends.insert(http(), wanted([some_pod(rng)]));
            }
            0 => {
                let addr = some_pod(rng);
                let backends = &mut desired.frontends.get_mut(&pick(rng)).unwrap().backends;
                if !backends.remove(&addr) {
                    backends.insert(addr);
                }
            }
            1 => {
                let (from, to) = (pick(rng), pick(rng));
                let moved = desired.frontends[&from].backends.first().copied();
                if let Some(addr) = moved {
                    desired
                        .frontends
                        .get_mut(&from)
                        .unwrap()
                        .backends
                        .remove(&addr);
                    desired
                        .frontends
                        .get_mut(&to)
                        .unwrap()
                        .backends
                        .insert(addr);
                }
            }
            2 => {
                desired.frontends.remove(&pick(rng));
            }
            3 => {
                let wanted = desired.frontends.get_mut(&pick(rng)).unwrap();
                wanted.local_only = !wanted.local_only;
            }
            4 => {
                desired.frontends.get_mut(&pick(rng)).unwrap().source_ranges = some_ranges(rng);
            }
            5 => {
                // The pod's node changes (e.g. its nodeName becomes known):
                // every frontend sees it move.
                let ip = some_pod(rng).ip;
                for wanted in desired.frontends.values_mut() {
                    wanted.backends = (wanted.backends.iter())
                        .map(|&addr| BackendAddr {
                            remote: addr.remote != (addr.ip == ip),
                            ..addr
                        })
                        .collect();
                }
            }
            _ => {
                let frontend = Frontend {
                    vip: Ipv4Addr::new(10, 96, 0, 1 + (rng.next() % 4) as u8),
                    port: [53, 80][(rng.next() % 2) as usize],
                    proto: [Proto::Tcp, Proto::Udp][(rng.next() % 2) as usize],
                };
                desired
                    .frontends
                    .insert(frontend, wanted([some_pod(rng), some_pod(rng)]));
            }
        }
    }
    desired
}

#[test]
fn incremental_syncs_write_exactly_what_full_syncs_write() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // `incremental` trusts what it programmed; `full` reads the maps back
    // and computes the whole target every time. Their allocators start
    // alike and, as long as they write the same ids, stay alike.
    let (mut incremental, mut full) = (Reconciler::new(), Reconciler::new());
    let (mut dp, mut full_dp) = (FakeDataplane::default(), FakeDataplane::default());
    let mut desired = Desired::default();
    let mut incremental_syncs = 0;
    for step in 0..300 {
        if step == 150 {
            // An agent restart: the maps stay, the reconcilers start afresh.
            (incremental, full) = (Reconciler::new(), Reconciler::new());
        }
        desired = match rng.next() % 10 {
            0 => Desired::default(),
            1 | 2 => random_desired(&mut rng),
            _ => edit(&mut rng, &desired),
        };
        let context = format!("step {step}");
        let before = dp.state.clone();
        let reads = dp.reads.get();
        let incremental_was_known = incremental.programmed().is_some();
        let ops = sync(&mut incremental, &desired, &mut dp);
        full.forget_maps();
        let full_ops = sync(&mut full, &desired, &mut full_dp);

        assert_eq!(ops, full_ops, "{context}");
        assert_eq!(dp.state, full_dp.state, "{context}");
        assert_eq!(incremental.programmed(), Some(&dp.state), "{context}");
        assert_eq!(decode(&dp.state), expected(&desired), "{context}");
        assert_every_prefix_consistent(&before, &ops, &context);
        if incremental_was_known {
            assert_eq!(dp.reads.get(), reads, "{context}: maps read back");
            incremental_syncs += 1;
        }
        // What a restarted agent would find is what it wants: it writes nothing.
        let mut restarted_dp = FakeDataplane::new(dp.state.clone());
        let restarted = sync(&mut Reconciler::new(), &desired, &mut restarted_dp);
        assert!(
            restarted.is_empty(),
            "{context}: restart rewrites {restarted:?}"
        );
    }
    assert_eq!(incremental_syncs, 298, "all but the two first syncs");
}

#[test]
fn a_restarted_agent_adopts_the_maps_then_writes_only_changes() {
    let mut dp = FakeDataplane::default();
    sync(&mut Reconciler::new(), &web(&[1, 2, 3]), &mut dp);
    let pod1 = backend_id(&dp.state, pod(1, 8080), Proto::Tcp);
    // Left behind by a crash: a backend nothing uses, and a second copy of
    // a used one under a higher id.
    let stray = Backend {
        addr_be: u32::from_ne_bytes([10, 244, 9, 2]),
        port_be: 8080u16.to_be(),
        proto: 6,
        flags: 0,
    };
    dp.state.backends.insert(100, stray);
    dp.state.backends.insert(101, dp.state.backends[&pod1]);
    let adopted = dp.state.clone();

    let mut dp = FakeDataplane::new(adopted.clone());
    let mut restarted = Reconciler::new();
    let ops = sync(&mut restarted, &web(&[1, 2, 3]), &mut dp);
    assert_eq!(ops, [MapOp::DeleteBackend(100), MapOp::DeleteBackend(101)]);
    assert_eq!(dp.reads.get(), 1);

    // pod 1 leaves the http frontend: its adopted id is released, but the
    // dns frontend's pod 1 (another backend) stays.
    let mut desired = web(&[1, 2, 3, 4]);
    let http_backends = &mut desired.frontends.get_mut(&http()).unwrap().backends;
    http_backends.remove(&pod(1, 8080));
    let before = dp.state.clone();
    let ops = sync(&mut restarted, &desired, &mut dp);
    assert_eq!(dp.reads.get(), 1, "the change is planned from memory");
    assert_every_prefix_consistent(&before, &ops, "after restart");
    assert_eq!(decode(&dp.state), expected(&desired));
    assert!(!dp.state.backends.contains_key(&pod1));
    for addr in [pod(2, 8080), pod(3, 8080), pod(1, 5353)] {
        let proto = if addr.port == 8080 {
            Proto::Tcp
        } else {
            Proto::Udp
        };
        assert_eq!(
            backend_id(&dp.state, addr, proto),
            backend_id(&adopted, addr, proto)
        );
    }
    let new_id = backend_id(&dp.state, pod(4, 8080), Proto::Tcp);
    assert!(new_id > 101, "new ids go above every id found in the maps");
}

#[test]
fn a_failed_incremental_sync_is_finished_by_the_next_at_any_write() {
    let (from, to) = (web(&[1, 2, 3]), {
        let mut to = web(&[2, 4]);
        to.frontends.remove(&dns());
        let other = Frontend {
            vip: Ipv4Addr::new(10, 96, 0, 11),
            port: 80,
            proto: Proto::Tcp,
        };
        to.frontends
            .insert(other, wanted([pod(3, 8080), pod(5, 8080)]));
        to
    });
    let plan_length = {
        let mut reconciler = Reconciler::new();
        let mut dp = FakeDataplane::default();
        sync(&mut reconciler, &from, &mut dp);
        sync(&mut reconciler, &to, &mut dp).len()
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
        assert_eq!(reconciler.programmed(), None, "{context}");

        dp.fail_at = None;
        let before = dp.state.clone();
        let ops = sync(&mut reconciler, &to, &mut dp);
        assert_every_prefix_consistent(&before, &ops, &context);
        assert_eq!(decode(&dp.state), expected(&to), "{context}");
        assert_eq!(dp.reads.get(), 2, "{context}: read back once");

        // From there on incremental again, and as good as a full sync.
        let back = sync(&mut reconciler, &from, &mut dp);
        assert_eq!(decode(&dp.state), expected(&from), "{context}");
        assert_eq!(dp.reads.get(), 2, "{context}");
        reconciler.forget_maps();
        assert!(
            sync(&mut reconciler, &from, &mut dp).is_empty(),
            "{context}: {back:?}"
        );
    }
}
