//! §1 ClusterIP basics and endpoint churn.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Result};

use crate::conformance::cluster::eventually;
use crate::conformance::objects::{http, service, slice, Endpoint, HTTP};
use crate::conformance::{Binaries, Case, Cluster, ClusterSpec, NotRun, Outcome, Speed};
use crate::testbed::client::{RequestResult, Transport};

const SECTION: &str = "1 ClusterIP";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 10);

pub fn cases() -> Vec<Case> {
    vec![Case {
        id: "clusterip_basic_endpoint_churn",
        section: SECTION,
        upstream: "[C] should serve a basic endpoint from pods (add pod1, pod2, delete pod1; reachable by ClusterIP:80 after each)",
        speed: Speed::Fast,
        run: basic_endpoint_churn,
    }]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}

/// Who answered `n` requests; an error if any failed.
pub fn answered_by(results: &[RequestResult]) -> Result<BTreeSet<String>> {
    let mut by = BTreeSet::new();
    for r in results {
        match r {
            Ok(reply) => {
                by.insert(reply.backend.clone());
            }
            Err(e) => anyhow::bail!("a request failed: {e}"),
        }
    }
    Ok(by)
}

/// Upstream creates the Service, then pod1, pod2, deletes pod1, checking
/// after each step that the ClusterIP serves exactly the current pods; we
/// also require that the removed pod never answers again and time each
/// step (upstream allows ~2 min each).
fn basic_endpoint_churn(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 2))?;
    let (pod1, pod2) = (&cluster.topo.pods(0)[0], &cluster.topo.pods(1)[0]);
    let (node_a, node_b) = (cluster.topo.node_name(0), cluster.topo.node_name(1));
    let client = cluster.topo.client_pod(1);
    let to = SocketAddr::from((VIP, 80));
    cluster.apply(&service("basic", "ClusterIP", VIP, &[http(80)], ""))?;
    let serves = |expected: &BTreeSet<String>| {
        cluster
            .from_pod(client, Transport::Tcp, to, 20)
            .ok()
            .and_then(|r| answered_by(&r).ok())
            .is_some_and(|by| by == *expected)
    };
    let mut steps = Vec::new();
    for (what, endpoints) in [
        ("pod1", vec![Endpoint::ready(pod1, node_a)]),
        (
            "pod1+pod2",
            vec![Endpoint::ready(pod1, node_a), Endpoint::ready(pod2, node_b)],
        ),
        ("pod2", vec![Endpoint::ready(pod2, node_b)]),
    ] {
        cluster.apply(&slice("basic-1", "basic", &[HTTP], &endpoints))?;
        let names: BTreeSet<String> = [pod1, pod2]
            .into_iter()
            .filter(|p| endpoints.iter().any(|e| e.ip == p.ip))
            .map(|p| p.name.clone())
            .collect();
        let took = eventually(what, Duration::from_secs(10), || serves(&names))?;
        steps.push(format!("{what} {:.1} s", took.as_secs_f64()));
    }
    // After the last step, pod1 never answers again.
    let after = answered_by(&cluster.from_pod(client, Transport::Tcp, to, 100)?)?;
    ensure!(
        after.iter().all(|b| *b == pod2.name),
        "a deleted endpoint still answered: {after:?}"
    );
    Ok(Outcome::new(format!(
        "served exactly the current pods within: {}; 100/100 by pod2 after pod1 left",
        steps.join(", ")
    )))
}
