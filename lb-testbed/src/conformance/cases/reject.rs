//! §2 Reject when there are no endpoints.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::client::{RequestError, Transport};
use crate::conformance::cluster::eventually;
use crate::conformance::objects::{dns, http, service, slice, Endpoint, DNS, HTTP};
use crate::conformance::{Binaries, Case, Cluster, ClusterSpec, NotRun, Outcome, Speed};

const SECTION: &str = "2 Reject";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 2, 10);
const EVICTED_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 2, 11);
/// Upstream: REFUSED within KubeProxyEndpointLagTimeout (~30 s), connect
/// timeout 3 s. We require the rule within 2 s and each refusal in 100 ms.
const PROGRAMMED_WITHIN: Duration = Duration::from_secs(2);
const REFUSED_WITHIN: Duration = Duration::from_millis(100);

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "reject_without_endpoints",
            section: SECTION,
            upstream: "should be rejected when no endpoints exist (connect must fail REFUSED, not time out, within ~30 s)",
            speed: Speed::Fast,
            run: reject_without_endpoints,
        },
        Case {
            id: "reject_evicted_pods",
            section: SECTION,
            upstream: "should be rejected for evicted pods (PNRA=true svc whose only pod was Evicted: slice empty; connect REFUSED within ~30 s)",
            speed: Speed::Fast,
            run: reject_evicted_pods,
        },
    ]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}

/// From a pod on each node, TCP and UDP; and from a node process.
fn reject_without_endpoints(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    cluster.apply(&service(
        "nobody",
        "ClusterIP",
        VIP,
        &[http(80), dns(53)],
        "",
    ))?;
    let tcp = SocketAddr::from((VIP, 80));
    let udp = SocketAddr::from((VIP, 53));
    let client = cluster.topo.client_pod(0);
    let programmed = eventually("TCP refused", PROGRAMMED_WITHIN, || {
        matches!(
            cluster.from_pod(client, Transport::Tcp, tcp, 1).as_deref(),
            Ok([Err(RequestError::Refused)])
        )
    })?;
    let slowest = refused_everywhere(&cluster, tcp, udp, 0)?;
    Ok(Outcome::new(format!(
        "REFUSED (TCP RST, UDP ICMP) from pods on both nodes and a node process; rule in place {:.2} s after the Service (upstream: 30 s); slowest refusal {:.1} ms",
        programmed.as_secs_f64(),
        slowest.as_secs_f64() * 1e3
    )))
}

/// Upstream: a publishNotReadyAddresses Service whose only pod gets
/// Evicted (ephemeral storage exceeded); the EndpointSlice controller
/// publishes no endpoint for a terminal pod, even with PNRA, so the slice
/// is empty, and a connect must be REFUSED (not time out) within ~30 s.
/// We first check the pod is served (so the refusal is the eviction's
/// doing), then empty the slice, and require the refusal within
/// [`PROGRAMMED_WITHIN`] and each one in [`REFUSED_WITHIN`], TCP and
/// connected UDP, from pods on both nodes and a node process.
fn reject_evicted_pods(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let pod = &cluster.topo.pods(0)[0];
    cluster.apply(&service(
        "evicted",
        "ClusterIP",
        EVICTED_VIP,
        &[http(80), dns(53)],
        "  publishNotReadyAddresses: true\n",
    ))?;
    let endpoint = Endpoint::ready(pod, cluster.topo.node_name(0));
    cluster.apply(&slice("evicted-1", "evicted", &[HTTP, DNS], &[endpoint]))?;
    let tcp = SocketAddr::from((EVICTED_VIP, 80));
    let udp = SocketAddr::from((EVICTED_VIP, 53));
    let client = cluster.topo.client_pod(1);
    eventually(
        "the pod served before its eviction",
        PROGRAMMED_WITHIN,
        || {
            [(Transport::Tcp, tcp), (Transport::UdpConnected, udp)]
                .into_iter()
                .all(|(transport, to)| {
                    matches!(
                        cluster.from_pod(client, transport, to, 1).as_deref(),
                        Ok([Ok(reply)]) if reply.backend == pod.name
                    )
                })
        },
    )?;
    cluster.apply(&slice("evicted-1", "evicted", &[HTTP, DNS], &[]))?;
    let emptied = eventually("TCP refused after the eviction", PROGRAMMED_WITHIN, || {
        matches!(
            cluster.from_pod(client, Transport::Tcp, tcp, 1).as_deref(),
            Ok([Err(RequestError::Refused)])
        )
    })?;
    let slowest = refused_everywhere(&cluster, tcp, udp, 1)?;
    Ok(Outcome::new(format!(
        "served, then REFUSED (TCP RST, UDP ICMP) {:.2} s after the slice was emptied (upstream: 30 s), from pods on both nodes and a node process; slowest refusal {:.1} ms",
        emptied.as_secs_f64(),
        slowest.as_secs_f64() * 1e3
    )))
}

/// Every client refused at once: TCP and connected UDP (as upstream's
/// clients: only a connected socket hears the ICMP error) from the client
/// pods of both nodes, and TCP from a process of node `node`; returns the
/// slowest refusal. Each node's agent programs the change from its own
/// watch, so each node gets [`PROGRAMMED_WITHIN`] first: one node refusing
/// says nothing of the other's progress.
fn refused_everywhere(
    cluster: &Cluster,
    tcp: SocketAddr,
    udp: SocketAddr,
    node: usize,
) -> Result<Duration> {
    for i in 0..2 {
        let pod = cluster.topo.client_pod(i);
        let what = format!("TCP refused from {}", pod.name);
        eventually(&what, PROGRAMMED_WITHIN, || {
            matches!(
                cluster.from_pod(pod, Transport::Tcp, tcp, 1).as_deref(),
                Ok([Err(RequestError::Refused)])
            )
        })?;
    }
    let mut slowest = Duration::ZERO;
    for i in 0..2 {
        let pod = cluster.topo.client_pod(i);
        for (transport, to) in [(Transport::Tcp, tcp), (Transport::UdpConnected, udp)] {
            let start = Instant::now();
            let results = cluster.from_pod(pod, transport, to, 1)?;
            let took = start.elapsed();
            ensure!(
                results == [Err(RequestError::Refused)],
                "{} -> {to} ({transport:?}): {results:?}",
                pod.name
            );
            ensure!(
                took < REFUSED_WITHIN,
                "{} -> {to}: refused after {took:?}",
                pod.name
            );
            slowest = slowest.max(took);
        }
    }
    let results = cluster.from_node(node, Transport::Tcp, tcp, 1)?;
    ensure!(
        results == [Err(RequestError::Refused)],
        "node process -> {tcp}: {results:?}"
    );
    Ok(slowest)
}
