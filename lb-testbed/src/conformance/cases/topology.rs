//! §10 Topology aware routing: topology hints and trafficDistribution.
//!
//! Each node's zone is its Node object's `topology.kubernetes.io/zone`
//! label (ClusterSpec.zones), which the agents read from the API, as
//! kube-proxy does; the EndpointSlices carry the zone hints the
//! EndpointSlice controller writes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Result};

use super::policies::names;
use crate::client::Transport;
use crate::conformance::cluster::eventually;
use crate::conformance::objects::{http, service, slice, Endpoint, HTTP};
use crate::conformance::{Binaries, Case, Cluster, ClusterSpec, NotRun, Outcome, Speed};

const SECTION: &str = "10 Topology";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 10, 10);
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "topology_hints_same_zone",
            section: SECTION,
            upstream: "Topology Hints should distribute endpoints evenly (3 zones, topology-mode Auto, hint = own zone; client per zone: last 5 responses from its zone within ~2 min)",
            speed: Speed::Fast,
            run: topology_hints,
        },
        Case {
            id: "traffic_distribution_prefer_close",
            section: SECTION,
            upstream: "Traffic Distribution PreferClose should route to endpoints in the same zone (backends in A,B: clients there 10 consecutive from own zone; client in C: 10 consecutive successes from anywhere)",
            speed: Speed::Fast,
            run: prefer_close,
        },
    ]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}

fn cluster(bins: &Binaries) -> Result<Cluster> {
    let mut spec = ClusterSpec::new(3, 2);
    spec.zones = ZONES.to_vec();
    Cluster::start(bins, &spec)
}

/// The zone each answer of `n` consecutive requests from node `node`'s
/// client pod came from (pods are named after their node's letter).
fn zones_answering(cluster: &Cluster, node: usize, n: usize) -> Result<Vec<&'static str>> {
    let results = cluster.from_pod(
        cluster.topo.client_pod(node),
        Transport::Tcp,
        SocketAddr::from((VIP, 80)),
        n,
    )?;
    Ok(names(&results)?
        .iter()
        .map(|pod| match pod.chars().next() {
            Some('a') => ZONES[0],
            Some('b') => ZONES[1],
            Some('c') => ZONES[2],
            _ => "unknown",
        })
        .collect())
}

fn count(zones: &[&'static str]) -> BTreeMap<&'static str, usize> {
    let mut by = BTreeMap::new();
    for z in zones {
        *by.entry(*z).or_default() += 1;
    }
    by
}

/// Upstream: a DaemonSet backend in every zone, the Service annotated
/// topology-mode Auto, so every endpoint gets one hint, its own zone; a
/// client in each zone curls every 1 s until its last 5 responses came
/// from its zone (~2 min). We ask for 30 consecutive from the first round.
fn topology_hints(bins: &Binaries) -> Result<Outcome> {
    let cluster = cluster(bins)?;
    let topo = &cluster.topo;
    cluster.apply(
        &service("hints", "ClusterIP", VIP, &[http(80)], "").replacen(
            "namespace: default}",
            "namespace: default, annotations: {service.kubernetes.io/topology-mode: Auto}}",
            1,
        ),
    )?;
    let endpoints: Vec<Endpoint> = (0..3)
        .flat_map(|node| {
            topo.pods(node).iter().map(move |pod| {
                Endpoint::ready(pod, topo.node_name(node)).in_zone(ZONES[node], true)
            })
        })
        .collect();
    cluster.apply(&slice("hints-1", "hints", &[HTTP], &endpoints))?;
    let mut figures = Vec::new();
    for (node, zone) in ZONES.iter().enumerate() {
        let took = eventually("the Service answers", Duration::from_secs(10), || {
            zones_answering(&cluster, node, 1).is_ok()
        })?;
        let zones = zones_answering(&cluster, node, 30)?;
        ensure!(
            zones.iter().all(|z| z == zone),
            "client in {zone}: {:?}",
            count(&zones)
        );
        figures.push(format!("{zone} 30/30 ({:.1} s)", took.as_secs_f64()));
    }
    Ok(Outcome::new(format!(
        "30 consecutive from the client's own zone, first round: {} (upstream: last 5, within ~2 min)",
        figures.join(", ")
    )))
}

/// Upstream (>= 3 zones): trafficDistribution PreferClose, backends in
/// zones A and B only; clients in A and B get 10 consecutive responses
/// from their zone; the client in C (no local backend) 10 consecutive
/// successes from any. We take 30 each, and for C require both zones.
fn prefer_close(bins: &Binaries) -> Result<Outcome> {
    let cluster = cluster(bins)?;
    let topo = &cluster.topo;
    cluster.apply(&service(
        "close",
        "ClusterIP",
        VIP,
        &[http(80)],
        "  trafficDistribution: PreferClose\n",
    ))?;
    let endpoints: Vec<Endpoint> = (0..2)
        .flat_map(|node| {
            topo.pods(node).iter().map(move |pod| {
                Endpoint::ready(pod, topo.node_name(node)).in_zone(ZONES[node], true)
            })
        })
        .collect();
    cluster.apply(&slice("close-1", "close", &[HTTP], &endpoints))?;
    let mut figures = Vec::new();
    for (node, zone) in ZONES.iter().enumerate() {
        eventually("the Service answers", Duration::from_secs(10), || {
            zones_answering(&cluster, node, 1).is_ok()
        })?;
        let zones = zones_answering(&cluster, node, 30)?;
        let by = count(&zones);
        if node < 2 {
            ensure!(zones.iter().all(|z| z == zone), "client in {zone}: {by:?}");
            figures.push(format!("{zone} 30/30 own zone"));
        } else {
            // 30 answers all from one zone by chance: 2 * 2^-30.
            ensure!(
                by.len() == 2 && by.contains_key(ZONES[0]) && by.contains_key(ZONES[1]),
                "client in {zone}: {by:?}"
            );
            figures.push(format!("{zone} 30/30 answered, {by:?}"));
        }
    }
    Ok(Outcome::new(format!(
        "{} (upstream: 10 consecutive each)",
        figures.join("; ")
    )))
}
