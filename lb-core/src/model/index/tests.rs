//! The index after any sequence of changes equals `desired_state` over the
//! objects present then: random changes over a small world where conflicts,
//! label moves, skipped and broken objects are common.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::*;
use crate::model::{
    desired_state, LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, NODE_PORT_VIP,
};
use crate::reconcile::{FakeDataplane, MapState, Reconciler};

const NAMESPACES: [&str; 2] = ["default", "prod"];
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
const SLICE_NAMES: [&str; 4] = ["a-1", "a-2", "x-1", "x-2"];
const FILE: &str = "objects.yaml";
/// This node; endpoints name it, another node or none.
const NODE: &str = "node-a";

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Whether to set an optional field: leaving it out has a meaning in the
/// API too.
fn set(rng: &mut StdRng) -> bool {
    rng.random_bool(0.7)
}

fn random_service(rng: &mut StdRng, name: &str, namespace: &str) -> Service {
    // Few addresses, so that Services often claim the same frontends.
    let ips = [
        "10.96.0.1",
        "10.96.0.2",
        "10.96.0.1",
        "10.96.0.2",
        "None",
        "",
        "10.96.0.300",
        "127.0.0.1",
        "fd00::1",
    ];
    let mut spec = json!({});
    let primary = *pick(rng, &ips);
    if rng.random_bool(0.9) {
        spec["clusterIP"] = json!(primary);
    }
    if rng.random_bool(0.3) {
        spec["clusterIPs"] = json!([primary, pick(rng, &ips)]);
    }
    let types = [
        "ClusterIP",
        "NodePort",
        "LoadBalancer",
        "LoadBalancer",
        "ExternalName",
        "Weird",
    ];
    if rng.random_bool(0.6) {
        spec["type"] = json!(pick(rng, &types));
    }
    let ports: Vec<Value> = (0..rng.random_range(0..4))
        .map(|_| {
            let mut port = json!({"port": pick(rng, &[80, 81, 53, 0])});
            if set(rng) {
                port["name"] = json!(pick(rng, &["http", "dns", ""]));
            }
            if set(rng) {
                port["protocol"] = json!(pick(rng, &["TCP", "UDP", "SCTP"]));
            }
            if rng.random_bool(0.5) {
                // Few node ports, so that Services collide on them.
                port["nodePort"] = json!(pick(rng, &[30080, 30081, 30080, 0, 70000]));
            }
            port
        })
        .collect();
    spec["ports"] = json!(ports);
    // External IPs that collide with each other and with cluster IPs.
    let external = [
        "192.0.2.1",
        "192.0.2.2",
        "10.96.0.1",
        "fd00::2",
        "0.0.0.0",
        "bad",
    ];
    if rng.random_bool(0.3) {
        let ips: Vec<&str> = (0..rng.random_range(1..3))
            .map(|_| *pick(rng, &external))
            .collect();
        spec["externalIPs"] = json!(ips);
    }
    let ranges = [
        "10.0.0.0/8",
        " 192.168.1.7/24",
        "fd00::/8",
        "10.0.0.0/33",
        "10.1.0.0/16",
    ];
    if rng.random_bool(0.3) {
        let texts: Vec<&str> = (0..rng.random_range(1..3))
            .map(|_| *pick(rng, &ranges))
            .collect();
        spec["loadBalancerSourceRanges"] = json!(texts);
    }
    if set(rng) {
        spec["externalTrafficPolicy"] = json!(pick(rng, &["Local", "Local", "Cluster"]));
    }
    if rng.random_bool(0.5) {
        spec["healthCheckNodePort"] = json!(pick(rng, &[32000, 32001, 32000, 0, -1]));
    }
    let mut metadata = json!({"name": name, "namespace": namespace});
    if rng.random_bool(0.1) {
        metadata["labels"] = {
            let label = *pick(rng, &[LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME]);
            json!({ label: "" })
        };
    }
    let mut service = json!({"metadata": metadata});
    if rng.random_bool(0.95) {
        service["spec"] = spec;
    }
    if rng.random_bool(0.4) {
        service["status"] = json!({"loadBalancer": {"ingress": random_ingress(rng)}});
    }
    serde_json::from_value(service).unwrap()
}

/// Load-balancer ingress entries: addresses shared with external IPs and
/// other Services, IPv6, broken, hostname-only and proxy-mode ones.
fn random_ingress(rng: &mut StdRng) -> Vec<Value> {
    let ips = [
        "198.51.100.1",
        "198.51.100.2",
        "192.0.2.1",
        "fd00::3",
        "300.1.1.1",
    ];
    (0..rng.random_range(0..3))
        .map(|_| {
            if rng.random_bool(0.1) {
                return json!({"hostname": "lb.invalid"});
            }
            let mut ingress = json!({"ip": pick(rng, &ips)});
            if rng.random_bool(0.2) {
                ingress["ipMode"] = json!(pick(rng, &["VIP", "Proxy"]));
            }
            ingress
        })
        .collect()
}

fn random_slice(rng: &mut StdRng, name: &str, namespace: &str) -> EndpointSlice {
    let mut metadata = json!({"name": name, "namespace": namespace});
    if set(rng) {
        metadata["labels"] = json!({LABEL_SERVICE_NAME: pick(rng, &NAMES)});
    }
    let ports: Vec<Value> = (0..rng.random_range(0..4))
        .map(|_| {
            let mut port = json!({});
            if rng.random_bool(0.9) {
                port["port"] = json!(pick(rng, &[8080, 5353, 8080, 0]));
            }
            if set(rng) {
                port["name"] = json!(pick(rng, &["http", "dns"]));
            }
            if set(rng) {
                port["protocol"] = json!(pick(rng, &["TCP", "UDP"]));
            }
            port
        })
        .collect();
    let addrs = ["10.244.0.1", "10.244.0.2", "10.244.0.3", "10.244.0.300"];
    let endpoints: Vec<Value> = (0..rng.random_range(0..6))
        .map(|_| {
            let mut endpoint = json!({"addresses": [pick(rng, &addrs)]});
            if set(rng) {
                endpoint["conditions"] = json!({"ready": rng.random_bool(0.8)});
            }
            if set(rng) {
                endpoint["nodeName"] = json!(pick(rng, &[NODE, NODE, "node-b"]));
            }
            endpoint
        })
        .collect();
    let address_type = if rng.random_bool(0.9) { "IPv4" } else { "IPv6" };
    serde_json::from_value(json!({
        "metadata": metadata,
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .unwrap()
}

/// The objects present, as a full computation would be given them.
#[derive(Default)]
struct World {
    services: BTreeMap<ObjectRef, (Service, Option<PathBuf>)>,
    slices: BTreeMap<ObjectRef, (EndpointSlice, Option<PathBuf>)>,
    /// Unnamed objects of the last replace: reported until the next one.
    unnamed_services: Vec<Service>,
    unnamed_slices: Vec<EndpointSlice>,
}

impl World {
    fn desired(&self) -> Desired {
        let services = self.services.values().map(|(s, f)| (s, f.as_deref()));
        let unnamed = self
            .unnamed_services
            .iter()
            .map(|s| (s, Some(Path::new(FILE))));
        let slices = self.slices.values().map(|(s, f)| (s, f.as_deref()));
        let unnamed_slices = self
            .unnamed_slices
            .iter()
            .map(|s| (s, Some(Path::new(FILE))));
        desired_state(
            Some(NODE),
            services.chain(unnamed),
            slices.chain(unnamed_slices),
        )
    }
}

fn random_ref(rng: &mut StdRng, names: &[&str]) -> ObjectRef {
    ObjectRef {
        namespace: pick(rng, &NAMESPACES).to_string(),
        name: pick(rng, names).to_string(),
    }
}

fn unnamed<T: serde::de::DeserializeOwned>() -> T {
    serde_json::from_value(json!({"metadata": {}, "addressType": "IPv4"})).unwrap()
}

/// One random change, to both the world and the index. Returns whether it
/// replaced a whole kind (a re-list).
/// One random change; `true` for a re-list. With `streamed`, re-lists
/// arrive as the API source applies them (every object named, applied one
/// by one, the missing ones deleted at the end); else as a manifest
/// directory re-read.
fn step(rng: &mut StdRng, world: &mut World, index: &mut DesiredIndex, streamed: bool) -> bool {
    match rng.random_range(0..10) {
        0..=2 => {
            let r = random_ref(rng, &NAMES);
            let service = random_service(rng, &r.name, &r.namespace);
            index.apply_service(&service);
            world.services.insert(r, (service, None));
            false
        }
        3 => {
            let r = random_ref(rng, &NAMES);
            index.delete_service(&r);
            world.services.remove(&r);
            false
        }
        4..=6 => {
            let r = random_ref(rng, &SLICE_NAMES);
            let slice = random_slice(rng, &r.name, &r.namespace);
            index.apply_slice(&slice);
            world.slices.insert(r, (slice, None));
            false
        }
        7 => {
            let r = random_ref(rng, &SLICE_NAMES);
            index.delete_slice(&r);
            world.slices.remove(&r);
            false
        }
        8 => {
            // A re-list: some objects kept as they are, some changed, some gone.
            let mut services = BTreeMap::new();
            for (r, kept) in &world.services {
                if rng.random_bool(0.5) {
                    services.insert(r.clone(), kept.clone());
                }
            }
            for _ in 0..rng.random_range(0..4) {
                let r = random_ref(rng, &NAMES);
                let service = random_service(rng, &r.name, &r.namespace);
                services.insert(r, (service, (!streamed).then(|| PathBuf::from(FILE))));
            }
            world.services = services;
            if streamed {
                for service in world.services.values() {
                    index.apply_service(&service.0);
                }
                index.retain_services(&world.services.keys().cloned().collect());
                return true;
            }
            world.unnamed_services = (0..rng.random_range(0..2)).map(|_| unnamed()).collect();
            let objects = world.services.values().map(|(s, f)| (s, f.as_deref()));
            let unnamed = world
                .unnamed_services
                .iter()
                .map(|s| (s, Some(Path::new(FILE))));
            index.replace_services(unnamed.chain(objects));
            true
        }
        _ => {
            let mut slices = BTreeMap::new();
            for (r, kept) in &world.slices {
                if rng.random_bool(0.5) {
                    slices.insert(r.clone(), kept.clone());
                }
            }
            for _ in 0..rng.random_range(0..4) {
                let r = random_ref(rng, &SLICE_NAMES);
                let slice = random_slice(rng, &r.name, &r.namespace);
                slices.insert(r, (slice, (!streamed).then(|| PathBuf::from(FILE))));
            }
            world.slices = slices;
            if streamed {
                for slice in world.slices.values() {
                    index.apply_slice(&slice.0);
                }
                index.retain_slices(&world.slices.keys().cloned().collect());
                return true;
            }
            world.unnamed_slices = (0..rng.random_range(0..2)).map(|_| unnamed()).collect();
            let objects = world.slices.values().map(|(s, f)| (s, f.as_deref()));
            let unnamed = world
                .unnamed_slices
                .iter()
                .map(|s| (s, Some(Path::new(FILE))));
            index.replace_slices(unnamed.chain(objects));
            true
        }
    }
}

/// Services whose frontends differ between `before` and `after`.
fn services_changed(before: &Desired, after: &Desired) -> BTreeSet<ObjectRef> {
    let changed = |a: &Desired, b: &Desired| {
        a.frontends
            .iter()
            .filter(|(f, w)| b.frontends.get(f) != Some(w))
            .map(|(_, w)| w.service.clone())
            .collect::<Vec<_>>()
    };
    let mut services: BTreeSet<ObjectRef> = changed(before, after).into_iter().collect();
    services.extend(changed(after, before));
    services
}

/// The frontends added, removed or serving something else.
fn frontends_changed(before: &Desired, after: &Desired) -> BTreeSet<Frontend> {
    let keys = before.frontends.keys().chain(after.frontends.keys());
    keys.filter(|f| before.frontends.get(f) != after.frontends.get(f))
        .copied()
        .collect()
}

#[test]
fn index_equals_full_computation_after_every_change() {
    let mut takeovers = 0;
    let mut seen = Seen::default();
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut world = World::default();
        let mut index = DesiredIndex::new(Some(NODE.into()));
        let mut before = Desired::default();
        // Partial syncs after every step: a frontend changed but not
        // touched fails the reconciler's debug assertion.
        let mut reconciler = Reconciler::new();
        let mut maps = FakeDataplane::new(MapState::default());
        for n in 0..60 {
            let relist = step(&mut rng, &mut world, &mut index, seed % 2 == 1);
            let expected = world.desired();
            let context = format!("seed {seed} step {n}");
            assert_eq!(index.desired(), &expected, "{context}");

            let serving: BTreeSet<&ObjectRef> =
                expected.frontends.values().map(|w| &w.service).collect();
            assert_eq!(index.serving_services(), serving.len(), "{context}");
            for service in serving {
                let listed: BTreeMap<_, _> = index.frontends_of(service).collect();
                let owned = expected
                    .frontends
                    .iter()
                    .filter(|(_, w)| w.service == *service);
                assert_eq!(listed, owned.collect(), "{context}: {service}");
            }
            // A re-list passes through intermediate states, which may
            // touch a Service that ends up as it was.
            let changed = services_changed(&before, &expected);
            // And every frontend whose entry differs is touched (a partial
            // sync looks at no other).
            let differ = frontends_changed(&before, &expected);
            if relist {
                assert!(index.changed_services().is_superset(&changed), "{context}");
                assert!(index.touched_frontends().is_superset(&differ), "{context}");
            } else {
                assert_eq!(index.changed_services(), &changed, "{context}");
                assert_eq!(index.touched_frontends(), &differ, "{context}");
            }
            let touched = index.touched_frontends();
            reconciler
                .sync_partial(index.desired(), touched, &mut maps)
                .unwrap();
            index.clear_changed();

            // A frontend passing from one Service to another: the case
            // that needs the losing claims remembered.
            takeovers += expected
                .frontends
                .iter()
                .filter(|(f, w)| {
                    before
                        .frontends
                        .get(f)
                        .is_some_and(|b| b.service != w.service)
                })
                .count();
            seen.note(&expected);
            before = expected;
        }
    }
    // The world is small enough for Services to fight over frontends.
    assert!(takeovers > 100, "only {takeovers} takeovers exercised");
    seen.assert_exercised();
}

/// How often the generated states show each kind of external frontend, so
/// that a generator change cannot quietly stop exercising them.
#[derive(Debug, Default)]
struct Seen {
    node_ports: usize,
    local_only_with_backends: usize,
    mixed_locality: usize,
    source_ranges: usize,
    health_checks: usize,
    health_check_conflicts: usize,
}

impl Seen {
    fn note(&mut self, desired: &Desired) {
        for (frontend, wanted) in &desired.frontends {
            self.node_ports += usize::from(frontend.vip == NODE_PORT_VIP);
            let local_only = wanted.local_only && !wanted.backends.is_empty();
            self.local_only_with_backends += usize::from(local_only);
            let remote = wanted.backends.iter().filter(|b| b.remote).count();
            let mixed = remote > 0 && remote < wanted.backends.len();
            self.mixed_locality += usize::from(mixed);
            self.source_ranges += usize::from(!wanted.source_ranges.is_empty());
        }
        self.health_checks += desired.health_checks.len();
        let conflicts = desired.errors.iter();
        let conflicts = conflicts.filter(|e| e.field == "spec.healthCheckNodePort");
        self.health_check_conflicts += conflicts.count();
    }

    fn assert_exercised(&self) {
        let counts = [
            self.node_ports,
            self.local_only_with_backends,
            self.mixed_locality,
            self.source_ranges,
            self.health_checks,
            self.health_check_conflicts,
        ];
        assert!(counts.iter().all(|&n| n > 40), "{self:?}");
    }
}
