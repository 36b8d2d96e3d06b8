//! Maps too small for the desired state: what does not fit is left out
//! before any write, the rest is programmed, nothing already programmed is
//! dropped, and no write ever meets a full map.

use super::check::{assert_consistent, decode, expected, Served};
use super::random::some_ranges;
use super::*;

const UNBOUNDED: usize = usize::MAX;

fn capacity(services: usize, backends: usize, revnat: usize, source_ranges: usize) -> Capacity {
    Capacity {
        services,
        backends,
        revnat,
        source_ranges,
    }
}

/// Room for `n` frontends (one rev-NAT id each), anything else unbounded.
fn frontends(n: usize) -> Capacity {
    capacity(UNBOUNDED, UNBOUNDED, n, UNBOUNDED)
}

/// A frontend of Service `default/<name>` at 10.96.1.<n>:80/TCP.
fn service(desired: &mut Desired, name: &str, n: u8, pods: &[u8]) -> Frontend {
    let frontend = Frontend {
        vip: Ipv4Addr::new(10, 96, 1, n),
        port: 80,
        proto: Proto::Tcp,
    };
    let mut wanted = wanted(pods.iter().map(|&p| pod(p, 8080)));
    wanted.service.name = name.into();
    desired.frontends.insert(frontend, wanted);
    frontend
}

fn fake(capacity: Capacity) -> FakeDataplane {
    FakeDataplane {
        capacity: Some(capacity),
        ..FakeDataplane::default()
    }
}

fn left_out_services(reconciler: &Reconciler) -> Vec<(String, Option<usize>)> {
    (reconciler.left_out().iter())
        .map(|l| (l.service.name.clone(), l.kept_backends))
        .collect()
}

#[test]
fn frontends_that_do_not_fit_are_left_out_by_name_and_the_rest_programmed() {
    let mut desired = Desired::default();
    let c = service(&mut desired, "c", 1, &[1]);
    let a = service(&mut desired, "a", 2, &[2]);
    let b = service(&mut desired, "b", 3, &[3]);
    let mut dp = fake(frontends(2));
    let mut reconciler = Reconciler::with_capacity(frontends(2));
    sync(&mut reconciler, &desired, &mut dp);

    assert_eq!(left_out_services(&reconciler), [("c".to_string(), None)]);
    let served = decode(&dp.state);
    assert_eq!(served.keys().copied().collect::<Vec<_>>(), [a, b]);
    assert!(!served.contains_key(&c));
    let message = reconciler.left_out()[0].to_string();
    assert!(
        message.starts_with("Service default/c: frontend 10.96.1.1:80/TCP is not programmed: map lb_revnat_v2 is full (2 entries)"),
        "{message}"
    );
}

#[test]
fn programmed_frontends_keep_their_place_before_new_ones_sorting_first() {
    let mut desired = Desired::default();
    service(&mut desired, "b", 1, &[1]);
    service(&mut desired, "c", 2, &[2]);
    let mut dp = fake(frontends(2));
    let mut reconciler = Reconciler::with_capacity(frontends(2));
    sync(&mut reconciler, &desired, &mut dp);
    let before = decode(&dp.state);

    let a = service(&mut desired, "a", 3, &[3]);
    sync(&mut reconciler, &desired, &mut dp);
    assert_eq!(left_out_services(&reconciler), [("a".to_string(), None)]);
    assert_eq!(decode(&dp.state), before);
    assert!(!decode(&dp.state).contains_key(&a));
}

#[test]
fn programmed_frontend_keeps_the_most_backends_that_fit() {
    let room = capacity(UNBOUNDED, 3, UNBOUNDED, UNBOUNDED);
    let mut dp = fake(room);
    let mut reconciler = Reconciler::with_capacity(room);
    let mut desired = Desired::default();
    let web = service(&mut desired, "web", 1, &[1, 2]);
    sync(&mut reconciler, &desired, &mut dp);

    service(&mut desired, "web", 1, &[1, 2, 3, 4, 5]);
    sync(&mut reconciler, &desired, &mut dp);
    assert_eq!(
        left_out_services(&reconciler),
        [("web".to_string(), Some(3))]
    );
    let kept: Vec<BackendAddr> = [1, 2, 3].map(|p| pod(p, 8080)).into();
    assert_eq!(decode(&dp.state)[&web].backends, kept);
    let message = reconciler.left_out()[0].to_string();
    assert!(
        message.contains("serves only 3 of its 5 backends: map lb_backend_v1 is full (3 entries)"),
        "{message}"
    );
}

#[test]
fn room_freed_by_a_removed_service_is_given_out_in_the_same_sync() {
    let mut desired = Desired::default();
    let a = service(&mut desired, "a", 1, &[1]);
    service(&mut desired, "b", 2, &[2]);
    let mut dp = fake(frontends(2));
    let mut reconciler = Reconciler::with_capacity(frontends(2));
    sync(&mut reconciler, &desired, &mut dp);

    desired.frontends.remove(&a);
    service(&mut desired, "c", 3, &[3]);
    sync(&mut reconciler, &desired, &mut dp);
    assert!(
        reconciler.left_out().is_empty(),
        "{:?}",
        reconciler.left_out()
    );
    assert_eq!(decode(&dp.state), expected(&desired));
}

#[test]
fn a_state_left_out_in_part_is_not_written_again_and_again() {
    let mut desired = Desired::default();
    for (n, name) in (1..).zip(["a", "b", "c", "d"]) {
        service(&mut desired, name, n, &[n]);
    }
    let mut dp = fake(frontends(2));
    let mut reconciler = Reconciler::with_capacity(frontends(2));
    sync(&mut reconciler, &desired, &mut dp);
    assert_eq!(reconciler.left_out().len(), 2);
    let reads = dp.reads.get();
    for _ in 0..3 {
        assert!(sync(&mut reconciler, &desired, &mut dp).is_empty());
    }
    assert_eq!(dp.reads.get(), reads, "no map read back");
    assert_eq!(reconciler.left_out().len(), 2);
}

/// Random states and edits into small maps: every sync succeeds (no write
/// meets a full map), the maps stay consistent, every frontend not left
/// out is served as asked, and one kept with fewer backends serves a
/// prefix of them.
#[test]
fn no_write_ever_meets_a_full_map() {
    let mut rng = Rng(0x5eed_cafe);
    let mut left_out_seen = 0;
    for round in 0..300 {
        let room = capacity(
            4 + (rng.next() % 30) as usize,
            1 + (rng.next() % 10) as usize,
            1 + (rng.next() % 8) as usize,
            1 + (rng.next() % 6) as usize,
        );
        let mut dp = fake(room);
        let mut reconciler = Reconciler::with_capacity(room);
        for step in 0..8 {
            let mut desired = random_desired(&mut rng);
            for wanted in desired.frontends.values_mut() {
                wanted.service.name = format!("s{}", rng.next() % 4);
                wanted.source_ranges = some_ranges(&mut rng);
            }
            let context = format!("round {round} step {step}");
            if rng.one_in(4) {
                reconciler.forget_maps();
            }
            reconciler
                .sync(&desired, &mut dp)
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_consistent(&dp.state, &context);
            let served = decode(&dp.state);
            let wanted = expected(&desired);
            for left in reconciler.left_out() {
                left_out_seen += 1;
                match left.kept_backends {
                    None => assert!(!served.contains_key(&left.frontend), "{context}"),
                    Some(n) => {
                        let slots = |s: &Served| -> Vec<BackendAddr> {
                            s.backends
                                .iter()
                                .chain(&s.internal_backends)
                                .copied()
                                .collect()
                        };
                        let kept = slots(&served[&left.frontend]);
                        assert_eq!(kept.len(), n, "{context}");
                        assert!(n < left.backends, "{context}");
                        assert_eq!(kept[..], slots(&wanted[&left.frontend])[..n], "{context}");
                    }
                }
            }
            let left: BTreeSet<Frontend> =
                reconciler.left_out().iter().map(|l| l.frontend).collect();
            for (frontend, asked) in &wanted {
                if !left.contains(frontend) {
                    assert_eq!(served.get(frontend), Some(asked), "{context}: {frontend}");
                }
            }
            assert_eq!(
                served.len() + left.iter().filter(|f| !served.contains_key(f)).count(),
                wanted.len(),
                "{context}"
            );
        }
    }
    assert!(
        left_out_seen > 100,
        "small maps left out only {left_out_seen} frontends"
    );
}
