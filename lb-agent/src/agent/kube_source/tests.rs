//! The source against the in-process API server: changes reach the handed
//! out state, and a re-list after 410 Gone converges without ever handing
//! out a state that lacks objects still in the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Client, Config};
use serde_json::json;

use super::*;
use lb_core::model::Desired;
use lb_testbed::apiserver::FakeApiServer;

/// Service name -> its frontend's backend IPs, in a handed-out state.
type Served = BTreeMap<String, BTreeSet<String>>;

fn service(name: &str, ip: &str) -> Service {
    let spec = json!({"clusterIP": ip, "ports": [{"name": "http", "port": 80}]});
    let object = json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec});
    serde_json::from_value(object).unwrap()
}

fn slice(service: &str, ips: &[&str]) -> EndpointSlice {
    let labels = json!({"kubernetes.io/service-name": service});
    let metadata =
        json!({"name": format!("{service}-1"), "namespace": "default", "labels": labels});
    let endpoints: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
    serde_json::from_value(json!({
        "metadata": metadata,
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn served(desired: &Desired) -> Served {
    let mut served = Served::new();
    for wanted in desired.frontends.values() {
        let ips = wanted.backends.iter().map(|b| b.ip.to_string());
        served
            .entry(wanted.service.name.clone())
            .or_default()
            .extend(ips);
    }
    served
}

fn expect(pairs: &[(&str, &[&str])]) -> Served {
    let set = |ips: &[&str]| ips.iter().map(ToString::to_string).collect();
    pairs
        .iter()
        .map(|(s, ips)| (s.to_string(), set(ips)))
        .collect()
}

/// Takes each state the source hands out, checks it with `each`, and
/// returns once one equals `goal`.
async fn follow(source: &mut KubeSource, goal: &Served, each: impl Fn(&Served)) {
    let wait = Duration::from_secs(15);
    loop {
        let woken = tokio::time::timeout(wait, source.changed()).await;
        woken.unwrap_or_else(|_| panic!("no state {goal:?} within {wait:?}"));
        let Some(pending) = source.take_pending() else {
            continue;
        };
        let now = served(pending.state.desired());
        let seen = pending.seen;
        each(&now);
        source.done(true, seen);
        if now == *goal {
            return;
        }
    }
}

fn service_lists(server: &FakeApiServer) -> usize {
    let requests = server.requests().into_iter();
    requests
        .filter(|r| r.path == "/api/v1/services" && !r.is_watch())
        .count()
}

#[tokio::test]
async fn changes_arrive_and_a_relist_after_410_never_drops_present_services() {
    let server = FakeApiServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    for (name, n) in [("a", 1), ("b", 2), ("c", 3)] {
        server.apply_service(service(name, &format!("10.96.0.{n}")));
        server.apply_slice(slice(name, &[&format!("10.244.0.{n}")]));
    }
    let client = Client::try_from(Config::new(server.url().parse().unwrap())).unwrap();
    let mut source = KubeSource::start(client, "node-a", None);
    let first = expect(&[
        ("a", &["10.244.0.1"]),
        ("b", &["10.244.0.2"]),
        ("c", &["10.244.0.3"]),
    ]);
    follow(&mut source, &first, |_| {}).await;

    server.apply_slice(slice("a", &["10.244.0.11"]));
    let updated = expect(&[
        ("a", &["10.244.0.11"]),
        ("b", &["10.244.0.2"]),
        ("c", &["10.244.0.3"]),
    ]);
    follow(&mut source, &updated, |now| assert_eq!(now.len(), 3)).await;

    // Changes the watches miss, then history they cannot resume from: the
    // only way to learn of them is a re-list.
    server.set_unavailable(true);
    server.delete_service("default", "b");
    server.apply_slice(slice("c", &["10.244.0.33"]));
    server.apply_service(service("d", "10.96.0.4"));
    server.apply_slice(slice("d", &["10.244.0.4"]));
    server.compact_history();
    let lists = service_lists(&server);
    server.set_unavailable(false);
    let relisted = expect(&[
        ("a", &["10.244.0.11"]),
        ("c", &["10.244.0.33"]),
        ("d", &["10.244.0.4"]),
    ]);
    follow(&mut source, &relisted, |now| {
        // a and c stay in the cluster throughout: no state may lack them.
        assert_eq!(now["a"], updated["a"], "{now:?}");
        assert!(now.contains_key("c"), "{now:?}");
    })
    .await;
    assert!(
        service_lists(&server) > lists,
        "converged without a re-list"
    );
}

fn node(name: &str, ip: &str) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z1"}},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name}
            ],
            "images": [{"names": ["registry.example/big:1"], "sizeBytes": 1}]
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn this_node_and_its_peers_addresses_from_every_node_kept_small() {
    let server = FakeApiServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    server.apply_node(node("node-a", "192.168.50.10"));
    server.apply_node(node("node-b", "192.168.50.11"));
    server.apply_node(node("node-c", "192.168.50.12"));
    let client = Client::try_from(Config::new(server.url().parse().unwrap())).unwrap();
    let mut source = KubeSource::start(client, "node-a", None);
    follow(&mut source, &Served::new(), |_| {}).await;

    let me = source.node().expect("node-a seen");
    assert_eq!(me.addresses, ["192.168.50.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(me.zone.as_deref(), Some("z1"));
    let peers: Vec<String> = source
        .peer_addresses()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(peers, ["192.168.50.11", "192.168.50.12"]);
    // The store keeps addresses and labels, not the image lists.
    for n in source.nodes.state() {
        let status = n.status.as_ref().unwrap();
        assert!(status.images.is_none(), "{n:?}");
        assert!(n.metadata.labels.is_some());
    }
}
