//! §1 ClusterIP basics and endpoint churn.
//!
//! Upstream's `verifyServeHostnameServiceUp` ("verifyUp": from a hostNetwork
//! pod and from a normal pod, 50 requests per backend, the backends seen
//! must be the Service's pods) and `verifyServeHostnameServiceDown`
//! ("verifyDown": the hostNetwork pod's requests fail) are [`verify_up`] and
//! [`verify_down`] here. Ours are stricter: every one of the requests must
//! be answered, exactly the expected pods must answer, and verifyDown also
//! requires a pod's requests to fail. Upstream waits up to 2 min
//! (KubeProxyLagTimeout) for either; we require [`CONVERGE`].
//!
//! Service names: upstream reaches `svc-name:port` and `ClusterIP:port`;
//! there is no cluster DNS here, so the ClusterIP is used throughout.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{ServiceKey, ServiceValue};

use crate::client::{parse_result, RequestError, RequestResult, Transport};
use crate::conformance::cluster::eventually;
use crate::conformance::objects::{
    dns, http, service, slice, Endpoint, Port, SlicePort, DNS, HTTP,
};
use crate::conformance::{Binaries, Case, Cluster, ClusterSpec, NotRun, Outcome, Speed};
use crate::links::detach_pinned;
use crate::servers::{LINE_PORT, TCP_PORT};
use crate::stream::RequestStream;
use crate::topology::Pod;

const SECTION: &str = "1 ClusterIP";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 10);
const MULTIPORT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 11);
const PORTS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 12);
const UP_DOWN_VIPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 96, 1, 21),
    Ipv4Addr::new(10, 96, 1, 22),
    Ipv4Addr::new(10, 96, 1, 23),
];
const RECREATED_VIPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 96, 1, 31), Ipv4Addr::new(10, 96, 1, 32)];
const AGENT_RESTART_VIPS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(10, 96, 1, 41), Ipv4Addr::new(10, 96, 1, 42)];
const API_RESTART_VIPS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(10, 96, 1, 51), Ipv4Addr::new(10, 96, 1, 52)];
const PROTOCOLS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 61);
const LB_PROTOCOLS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 62);
/// The load-balancer ingress IP a cloud controller would write into the
/// Service's status (TEST-NET-2: routed to node-a by the external client,
/// as a cloud load balancer forwards to a node).
const LB_INGRESS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 62);
const LB_NODE_PORTS: (u16, u16) = (30161, 30162);
const UNREADY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 71);
const LABEL_VIPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 96, 1, 81), Ipv4Addr::new(10, 96, 1, 82)];
const RESTORE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 91);

/// How fast a change must show, from every vantage point. Upstream allows
/// 30 s (KubeProxyEndpointLagTimeout) to 2-3 min (KubeProxyLagTimeout,
/// ServiceStartTimeout); this is generous for a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(5);
/// The agent's full read-back period for the fast drift-repair scenario
/// (`--resync-interval-secs`).
const FAST_RESYNC: Duration = Duration::from_secs(3);
/// The agent's default `--resync-interval-secs` (lb-agent.rs).
const DEFAULT_RESYNC: Duration = Duration::from_secs(90);
/// Upstream's bound for the rules to come back: KubeProxyLagTimeout.
const UPSTREAM_LAG: Duration = Duration::from_secs(120);

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "clusterip_basic_endpoint_churn",
            section: SECTION,
            upstream: "[C] should serve a basic endpoint from pods (add pod1, pod2, delete pod1; reachable by ClusterIP:80 after each)",
            speed: Speed::Fast,
            run: basic_endpoint_churn,
        },
        Case {
            id: "clusterip_multiport_named_target_ports",
            section: SECTION,
            upstream: "[C] should serve multiport endpoints from pods (ports 80/81 -> named targetPorts svc1/svc2 on different pods)",
            speed: Speed::Fast,
            run: multiport_named_target_ports,
        },
        Case {
            id: "clusterip_ports_added_and_removed",
            section: SECTION,
            upstream: "should be updated after adding or deleting ports (80 -> add 81 -> remove 81; reachability after each edit)",
            speed: Speed::Fast,
            run: ports_added_and_removed,
        },
        Case {
            id: "clusterip_up_and_down_services",
            section: SECTION,
            upstream: "should be able to up and down services (3 svcs x 3 pods: verifyUp 1,2; delete 1 -> verifyDown 1, 2 up; add 3 -> 2,3 up)",
            speed: Speed::Fast,
            run: up_and_down_services,
        },
        Case {
            id: "clusterip_service_recreated_new_ip",
            section: SECTION,
            upstream: "should work after the service has been recreated (verifyUp; delete; recreate with a new ClusterIP -> verifyUp)",
            speed: Speed::Fast,
            run: service_recreated,
        },
        Case {
            id: "clusterip_agent_kill9_restart",
            section: SECTION,
            upstream: "should work after restarting kube-proxy [Disruptive] (2 svcs x 3 pods up; kube-proxy pods deleted; both fully up again)",
            speed: Speed::Fast,
            run: agent_restart,
        },
        Case {
            id: "clusterip_apiserver_restart",
            section: SECTION,
            upstream: "should work after restarting apiserver [Disruptive] (svc stays up; a new svc gets a distinct VIP and works)",
            speed: Speed::Fast,
            run: apiserver_restart,
        },
        Case {
            id: "clusterip_same_port_tcp_udp_protocol_switch",
            section: SECTION,
            upstream: "[C] should serve endpoints on same port and different protocols (TCP+UDP/80 reachable; TCP-only -> UDP stops within 30 s; UDP-only -> TCP stops within 30 s)",
            speed: Speed::Fast,
            run: same_port_protocol_switch,
        },
        Case {
            id: "clusterip_lb_same_port_tcp_udp",
            section: SECTION,
            upstream: "should serve endpoints on same port and different protocol for internal traffic on Type LoadBalancer (TCP+UDP/80 via ClusterIP and nodePorts)",
            speed: Speed::Fast,
            run: lb_same_port_protocols,
        },
        Case {
            id: "clusterip_unready_pods_publish_not_ready",
            section: SECTION,
            upstream: "should create endpoints for unready pods (PNRA=true: reachable; scale 0 + PNRA=false: must fail; PNRA=true: terminating pod reachable again; ~2 min each)",
            speed: Speed::Fast,
            run: unready_publish_not_ready,
        },
        Case {
            id: "clusterip_service_proxy_name_label",
            section: SECTION,
            upstream: "should implement service.kubernetes.io/service-proxy-name (labelled svc never served; toggling the label: down, removing it: verifyUp)",
            speed: Speed::Fast,
            run: service_proxy_name_label,
        },
        Case {
            id: "clusterip_headless_label",
            section: SECTION,
            upstream: "should implement service.kubernetes.io/headless (labelled svc never served; toggling the label: down, removing it: verifyUp)",
            speed: Speed::Fast,
            run: headless_label,
        },
        Case {
            id: "clusterip_map_entries_restored_fast_resync",
            section: SECTION,
            upstream: "Networking should recreate its iptables rules if they are deleted [Disruptive] (rules flushed on every node; verifyUp must recover)",
            speed: Speed::Fast,
            run: map_entries_restored_fast,
        },
        Case {
            id: "clusterip_programs_restored_after_detach",
            section: SECTION,
            upstream: "Networking should recreate its iptables rules if they are deleted [Disruptive]: our other half of the rules, the attached programs, detached behind the agents' backs",
            speed: Speed::Fast,
            run: programs_restored_after_detach,
        },
        Case {
            id: "clusterip_map_entries_restored_default_resync",
            section: SECTION,
            upstream: "Networking should recreate its iptables rules if they are deleted [Disruptive] (with the agent's default resync period)",
            speed: Speed::Slow,
            run: map_entries_restored_default,
        },
    ]
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

/// Upstream: Service ports 80 and 81 (`portname1`, `portname2`) with
/// targetPorts named `svc1` and `svc2`, which only some pods declare
/// (containerPort 100 on pod1, 101 on pod2). The EndpointSlice controller
/// then writes one slice per port set. Here the node-a pods name 8080 (the
/// one-shot server) `svc1` and the node-b pods name 8081 (the line echo)
/// `svc2`: port 80 must reach exactly the first set and port 81 exactly
/// the second, each on the right server (a one-shot answer on 81 or a line
/// echo on 80 fails the check). Upstream only checks reachability.
fn multiport_named_target_ports(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 2))?;
    let (set1, set2) = (cluster.topo.pods(0), cluster.topo.pods(1));
    let port = |name, number, target| Port {
        name,
        port: number,
        protocol: "TCP",
        target,
        node_port: 0,
    };
    cluster.apply(&service(
        "multi",
        "ClusterIP",
        MULTIPORT_VIP,
        &[port("portname1", 80, "svc1"), port("portname2", 81, "svc2")],
        "",
    ))?;
    let endpoints = |pods: &[Pod], node: usize| -> Vec<Endpoint> {
        pods.iter()
            .map(|p| Endpoint::ready(p, cluster.topo.node_name(node)))
            .collect()
    };
    let slice_port = |name, number| SlicePort {
        name,
        port: number,
        protocol: "TCP",
    };
    cluster.apply(&slice(
        "multi-svc1",
        "multi",
        &[slice_port("portname1", TCP_PORT)],
        &endpoints(set1, 0),
    ))?;
    cluster.apply(&slice(
        "multi-svc2",
        "multi",
        &[slice_port("portname2", LINE_PORT)],
        &endpoints(set2, 1),
    ))?;
    let names =
        |pods: &[Pod]| -> BTreeSet<String> { pods.iter().map(|p| p.name.clone()).collect() };
    let (want1, want2) = (names(set1), names(set2));
    let client = cluster.topo.client_pod(1);
    let to80 = SocketAddr::from((MULTIPORT_VIP, 80));
    let to81 = SocketAddr::from((MULTIPORT_VIP, 81));
    let mut last = String::new();
    let took = eventually("both ports served by their own pods", CONVERGE, || {
        let on80 = observe(cluster.from_pod(client, Transport::Tcp, to80, 20));
        let on81 = line_requests(client, to81, 20);
        match (on80, on81) {
            (Ok(a), Ok(b)) if a == want1 && b == want2 => true,
            (a, b) => {
                last = format!("port 80: {a:?}; port 81: {b:?}");
                false
            }
        }
    });
    let took = took.with_context(|| format!("last seen: {last}"))?;
    Ok(Outcome::new(format!(
        "port 80 -> svc1 (8080) answered by exactly {want1:?}, port 81 -> svc2 (8081, line echo) by exactly {want2:?}, 20/20 each, {:.1} s after the Service (upstream: reachability within 2 min)",
        took.as_secs_f64()
    )))
}

/// Upstream: port 80 (named target), add 81, remove 81, reachability
/// re-checked after each edit. Port 81 targets the line echo (8081) so a
/// wrong target shows; after its removal we also require that 81 stops
/// answering (upstream only re-checks 80).
fn ports_added_and_removed(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let pods = [&cluster.topo.pods(0)[0], &cluster.topo.pods(1)[0]];
    let endpoints: Vec<Endpoint> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| Endpoint::ready(p, cluster.topo.node_name(i)))
        .collect();
    let want: BTreeSet<String> = pods.iter().map(|p| p.name.clone()).collect();
    let port81 = Port {
        name: "lines",
        port: 81,
        protocol: "TCP",
        target: "lines",
        node_port: 0,
    };
    let lines = SlicePort {
        name: "lines",
        port: LINE_PORT,
        protocol: "TCP",
    };
    let client = cluster.topo.client_pod(1);
    let to80 = SocketAddr::from((PORTS_VIP, 80));
    let to81 = SocketAddr::from((PORTS_VIP, 81));
    let on80 = || observe(cluster.from_pod(client, Transport::Tcp, to80, 10));
    let on81 = || line_requests(client, to81, 10);

    cluster.apply(&service("ports", "ClusterIP", PORTS_VIP, &[http(80)], ""))?;
    cluster.apply(&slice("ports-1", "ports", &[HTTP], &endpoints))?;
    let first = eventually("port 80 served", CONVERGE, || {
        on80().is_ok_and(|by| by == want)
    })?;

    cluster.apply(&service(
        "ports",
        "ClusterIP",
        PORTS_VIP,
        &[http(80), port81],
        "",
    ))?;
    cluster.apply(&slice("ports-1", "ports", &[HTTP, lines], &endpoints))?;
    let added = eventually("port 81 served after it was added", CONVERGE, || {
        on81().is_ok_and(|by| by == want)
    })?;
    ensure!(
        on80().is_ok_and(|by| by == want),
        "port 80 broke when 81 was added"
    );

    cluster.apply(&service("ports", "ClusterIP", PORTS_VIP, &[http(80)], ""))?;
    cluster.apply(&slice("ports-1", "ports", &[HTTP], &endpoints))?;
    let removed = eventually_sent("port 81 stops after it was removed", CONVERGE, || {
        line_request_in(client, to81).is_ok_and(|r| r.is_err())
    })?;
    let after80 = on80().map_err(anyhow::Error::msg)?;
    ensure!(after80 == want, "port 80 after removing 81: {after80:?}");
    let after81 = line_request_in(client, to81)?;
    ensure!(after81.is_err(), "port 81 still answered: {after81:?}");
    Ok(Outcome::new(format!(
        "80 served {:.1} s after creation; 81 served {:.1} s after it was added; 81 stopped {:.1} s after its removal ({}) while 80 kept serving both pods (upstream: reachability within 2 min, removal not checked)",
        first.as_secs_f64(),
        added.as_secs_f64(),
        removed.as_secs_f64(),
        after81.err().unwrap_or_default()
    )))
}

/// Upstream: three Services of three serve-hostname pods each; verifyUp
/// 1 and 2; delete 1: verifyDown 1 and 2 still up; create 3: 2 and 3 up.
/// Here Service `i` has the `i`th pod of each of three nodes.
fn up_and_down_services(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(3, 3))?;
    let to = |i: usize| SocketAddr::from((UP_DOWN_VIPS[i], 80));
    let create = |i: usize| -> Result<BTreeSet<String>> {
        let name = format!("up-down-{}", i + 1);
        cluster.apply(&service(
            &name,
            "ClusterIP",
            UP_DOWN_VIPS[i],
            &[http(80)],
            "",
        ))?;
        apply_spread_slice(&cluster, &name, i)
    };
    let mut figures = Vec::new();
    let want1 = create(0)?;
    let want2 = create(1)?;
    let up1 = verify_up(&cluster, to(0), &want1, CONVERGE)?;
    let up2 = verify_up(&cluster, to(1), &want2, CONVERGE)?;
    figures.push(format!(
        "svc1, svc2 up in {:.1} s, {:.1} s",
        up1.as_secs_f64(),
        up2.as_secs_f64()
    ));

    cluster.delete_service("up-down-1");
    cluster.delete_slice("up-down-1-1");
    let (down1, errors) = verify_down(&cluster, to(0), CONVERGE)?;
    verify_up(&cluster, to(1), &want2, Duration::ZERO).context("svc2 after svc1 went")?;
    figures.push(format!(
        "svc1 down {:.1} s after its deletion ({}) with svc2 still up",
        down1.as_secs_f64(),
        join(&errors)
    ));

    let want3 = create(2)?;
    let up3 = verify_up(&cluster, to(2), &want3, CONVERGE)?;
    verify_up(&cluster, to(1), &want2, Duration::ZERO).context("svc2 after svc3 came")?;
    verify_down(&cluster, to(0), Duration::ZERO).context("svc1 after svc3 came")?;
    figures.push(format!(
        "svc3 up in {:.1} s with svc2 up and svc1 still down",
        up3.as_secs_f64()
    ));
    Ok(Outcome::new(format!(
        "{} (verifyUp: 150/150 answered from a hostNetwork client and from a pod, exactly the 3 pods; verifyDown: hostNetwork client and pod both fail; upstream allows 2 min each)",
        figures.join("; ")
    )))
}

/// Upstream: one backend; verifyUp; delete the Service; recreate it, which
/// gives it a new ClusterIP; verifyUp on it. We also require the old
/// ClusterIP to go down.
fn service_recreated(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let pod = &cluster.topo.pods(0)[0];
    let want = BTreeSet::from([pod.name.clone()]);
    let endpoints = [Endpoint::ready(pod, cluster.topo.node_name(0))];
    let [old, new] = RECREATED_VIPS.map(|vip| SocketAddr::from((vip, 80)));
    cluster.apply(&service(
        "again",
        "ClusterIP",
        RECREATED_VIPS[0],
        &[http(80)],
        "",
    ))?;
    cluster.apply(&slice("again-1", "again", &[HTTP], &endpoints))?;
    let first = verify_up(&cluster, old, &want, CONVERGE)?;
    cluster.delete_service("again");
    cluster.delete_slice("again-1");
    let (gone, errors) = verify_down(&cluster, old, CONVERGE)?;
    cluster.apply(&service(
        "again",
        "ClusterIP",
        RECREATED_VIPS[1],
        &[http(80)],
        "",
    ))?;
    cluster.apply(&slice("again-1", "again", &[HTTP], &endpoints))?;
    let second = verify_up(&cluster, new, &want, CONVERGE)?;
    verify_down(&cluster, old, Duration::ZERO).context("the old ClusterIP after recreation")?;
    Ok(Outcome::new(format!(
        "up {:.1} s after creation; old ClusterIP down {:.1} s after deletion ({}); recreated on {} up in {:.1} s, old one still down (upstream: 2 min each)",
        first.as_secs_f64(),
        gone.as_secs_f64(),
        join(&errors),
        RECREATED_VIPS[1],
        second.as_secs_f64()
    )))
}

/// Upstream deletes the kube-proxy pods and checks that two Services of
/// three pods each are (again) fully up. We kill -9 every node's agent
/// (no chance to clean up), leave the nodes without one for a second,
/// restart them on their pin directories, and require more than upstream:
/// traffic flowing all along, from pods and a hostNetwork client, with
/// zero failures, before verifyUp on both Services.
fn agent_restart(bins: &Binaries) -> Result<Outcome> {
    let mut cluster = Cluster::start(bins, &ClusterSpec::new(3, 2))?;
    let mut wants = Vec::new();
    for (i, vip) in AGENT_RESTART_VIPS.into_iter().enumerate() {
        let name = format!("restart-{}", i + 1);
        cluster.apply(&service(&name, "ClusterIP", vip, &[http(80)], ""))?;
        wants.push(apply_spread_slice(&cluster, &name, i)?);
    }
    let to = AGENT_RESTART_VIPS.map(|vip| SocketAddr::from((vip, 80)));
    for (to, want) in to.iter().zip(&wants) {
        verify_up(&cluster, *to, want, CONVERGE)?;
    }
    let interval = Duration::from_millis(20);
    let streams = [
        RequestStream::start(
            cluster.topo.client_pod(0),
            AGENT_RESTART_VIPS[0],
            80,
            interval,
        )?,
        RequestStream::start(
            cluster.topo.client_pod(1),
            AGENT_RESTART_VIPS[1],
            80,
            interval,
        )?,
    ];
    let host = NodeLoop::start(cluster.node_process(2, &bins.testbed)?, to[0]);
    thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    for i in 0..3 {
        cluster.agent(i).kill9()?;
    }
    // No agent on any node: the pinned programs and maps serve alone.
    thread::sleep(Duration::from_secs(1));
    let restarting = Instant::now();
    for i in 0..3 {
        cluster.restart_agent(i)?;
    }
    let healthy = restarting.elapsed();
    thread::sleep(Duration::from_millis(500));
    let outcomes: Vec<_> = streams.into_iter().flat_map(RequestStream::stop).collect();
    let host_results = host.stop();
    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    ensure!(
        failed.is_empty(),
        "{} of {} pod requests failed through the restart, first: {:?} at {:?} after the kill",
        failed.len(),
        outcomes.len(),
        failed[0].result,
        failed[0].at.saturating_duration_since(killed)
    );
    let host_failed: Vec<_> = host_results.iter().filter(|r| r.is_err()).collect();
    ensure!(
        host_failed.is_empty(),
        "{} of {} hostNetwork requests failed through the restart, first: {:?}",
        host_failed.len(),
        host_results.len(),
        host_failed[0]
    );
    let during = outcomes
        .iter()
        .filter(|o| o.at >= killed && o.at < restarting)
        .count();
    ensure!(during > 0, "no request ran while the agents were down");
    ensure!(
        !host_results.is_empty(),
        "the hostNetwork client made no request"
    );
    let mut ups = Vec::new();
    for (to, want) in to.iter().zip(&wants) {
        ups.push(verify_up(&cluster, *to, want, CONVERGE)?);
    }
    Ok(Outcome::new(format!(
        "kill -9 of all 3 agents, 1 s without any, restarted healthy in {:.1} s: 0 of {} pod requests ({during} while no agent ran) and 0 of {} hostNetwork requests failed; both Services verifyUp {:.1} s / {:.1} s after (upstream: only 'up again' within 2 min)",
        healthy.as_secs_f64(),
        outcomes.len(),
        host_results.len(),
        ups[0].as_secs_f64(),
        ups[1].as_secs_f64()
    )))
}

/// Upstream restarts kube-apiserver; the Service must stay up, and a new
/// Service must get a distinct VIP and work. The fake API server goes
/// down (every request 503, watches broken) for 3 s and loses its watch
/// history (a restarted API server's watch cache starts afresh, so
/// re-watches get 410 Gone and re-list). Better than upstream: zero
/// failed requests to the first Service during the outage. The new
/// Service's distinct VIP is ours to pick (no allocator here).
fn apiserver_restart(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 2))?;
    let to = API_RESTART_VIPS.map(|vip| SocketAddr::from((vip, 80)));
    cluster.apply(&service(
        "before",
        "ClusterIP",
        API_RESTART_VIPS[0],
        &[http(80)],
        "",
    ))?;
    let want1 = apply_spread_slice(&cluster, "before", 0)?;
    verify_up(&cluster, to[0], &want1, CONVERGE)?;
    let stream = RequestStream::start(
        cluster.topo.client_pod(1),
        API_RESTART_VIPS[0],
        80,
        Duration::from_millis(20),
    )?;
    cluster.api.set_unavailable(true);
    cluster.api.compact_history();
    thread::sleep(Duration::from_secs(3));
    verify_up(&cluster, to[0], &want1, Duration::ZERO).context("while the API server was down")?;
    cluster.api.set_unavailable(false);
    let back = Instant::now();
    cluster.apply(&service(
        "after",
        "ClusterIP",
        API_RESTART_VIPS[1],
        &[http(80)],
        "",
    ))?;
    let want2 = apply_spread_slice(&cluster, "after", 1)?;
    verify_up(&cluster, to[1], &want2, Duration::from_secs(15))
        .context("the Service created after the API server came back")?;
    let new_up = back.elapsed();
    verify_up(&cluster, to[0], &want1, Duration::ZERO).context("the first Service at the end")?;
    let outcomes = stream.stop();
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    ensure!(
        failed == 0,
        "{failed} of {} requests to the first Service failed around the outage",
        outcomes.len()
    );
    Ok(Outcome::new(format!(
        "3 s outage with history lost: first Service 0 of {} requests failed; a new Service on {} verifyUp {:.1} s after the API server came back (watch backoff included; upstream: ServiceStartTimeout 3 min)",
        outcomes.len(),
        API_RESTART_VIPS[1],
        new_up.as_secs_f64()
    )))
}

/// Upstream: TCP/80 and UDP/80 to one pod, both reachable (30 s); the
/// Service updated to TCP only: UDP must stop within 30 s; then UDP only:
/// TCP must stop within 30 s. We require [`CONVERGE`] for each.
fn same_port_protocol_switch(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let pod = &cluster.topo.pods(0)[0];
    let endpoints = [Endpoint::ready(pod, cluster.topo.node_name(0))];
    let client = cluster.topo.client_pod(1);
    let to = SocketAddr::from((PROTOCOLS_VIP, 80));
    let answers = |transport| {
        cluster
            .from_pod(client, transport, to, 1)
            .is_ok_and(|r| matches!(r.as_slice(), [Ok(reply)] if reply.backend == pod.name))
    };
    let stopped = |transport| {
        cluster
            .from_pod(client, transport, to, 1)
            .is_ok_and(|r| matches!(r.as_slice(), [Err(_)]))
    };
    let apply = |ports: &[crate::conformance::objects::Port], slice_ports: &[SlicePort]| {
        cluster.apply(&service("proto", "ClusterIP", PROTOCOLS_VIP, ports, ""))?;
        cluster.apply(&slice("proto-1", "proto", slice_ports, &endpoints))
    };
    apply(&[http(80), dns(80)], &[HTTP, DNS])?;
    let both = eventually("TCP and UDP on port 80", CONVERGE, || {
        answers(Transport::Tcp) && answers(Transport::Udp)
    })?;
    apply(&[http(80)], &[HTTP])?;
    let udp_stopped = eventually_sent("UDP stops once the Service is TCP only", CONVERGE, || {
        stopped(Transport::Udp)
    })?;
    ensure!(answers(Transport::Tcp), "TCP stopped with UDP");
    apply(&[dns(80)], &[DNS])?;
    let tcp_stopped = eventually_sent("TCP stops once the Service is UDP only", CONVERGE, || {
        stopped(Transport::Tcp)
    })?;
    let udp_back = eventually("UDP answers once the Service is UDP only", CONVERGE, || {
        answers(Transport::Udp)
    })?;
    Ok(Outcome::new(format!(
        "TCP+UDP/80 both answered in {:.1} s; TCP-only: UDP stopped in {:.1} s, TCP kept answering; UDP-only: TCP stopped in {:.1} s, UDP answered in {:.1} s (upstream: 30 s each)",
        both.as_secs_f64(),
        udp_stopped.as_secs_f64(),
        tcp_stopped.as_secs_f64(),
        udp_back.as_secs_f64()
    )))
}

/// Upstream: a type=LoadBalancer Service (internal) with TCP/80 and UDP/80
/// to named targets; both reachable via the ClusterIP and the nodePorts.
/// The ingress IP is written into the Service status as a cloud controller
/// would, and the external client routes it to node-a as a cloud load
/// balancer forwards to a node; we check it too, from outside, along with
/// every node's nodePorts.
fn lb_same_port_protocols(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let pods = [&cluster.topo.pods(0)[0], &cluster.topo.pods(1)[0]];
    let want: BTreeSet<String> = pods.iter().map(|p| p.name.clone()).collect();
    let endpoints: Vec<Endpoint> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| Endpoint::ready(p, cluster.topo.node_name(i)))
        .collect();
    let yaml = service(
        "lb-proto",
        "LoadBalancer",
        LB_PROTOCOLS_VIP,
        &[
            http(80).node_port(LB_NODE_PORTS.0),
            dns(80).node_port(LB_NODE_PORTS.1),
        ],
        "",
    );
    cluster.apply(&with_lb_ingress(&yaml, LB_INGRESS)?)?;
    cluster.apply(&slice("lb-proto-1", "lb-proto", &[HTTP, DNS], &endpoints))?;
    cluster.topo.external_client().ns.ip([
        "route",
        "add",
        &format!("{LB_INGRESS}/32"),
        "via",
        &cluster.topo.node_ip(0).to_string(),
    ])?;
    let mut checks: Vec<(String, bool, Transport, SocketAddr)> = Vec::new();
    for (transport, proto) in [(Transport::Tcp, "TCP"), (Transport::Udp, "UDP")] {
        checks.push((
            format!("pod -> ClusterIP {proto}"),
            false,
            transport,
            SocketAddr::from((LB_PROTOCOLS_VIP, 80)),
        ));
        let node_port = if proto == "TCP" {
            LB_NODE_PORTS.0
        } else {
            LB_NODE_PORTS.1
        };
        for node in 0..2 {
            checks.push((
                format!("outside -> node{node}:{node_port} {proto}"),
                true,
                transport,
                SocketAddr::from((cluster.topo.node_ip(node), node_port)),
            ));
        }
        checks.push((
            format!("outside -> LB {proto}"),
            true,
            transport,
            SocketAddr::from((LB_INGRESS, 80)),
        ));
    }
    let client = cluster.topo.client_pod(1);
    let mut last = String::new();
    let took = eventually("every frontend, TCP and UDP", CONVERGE, || {
        for (what, outside, transport, to) in &checks {
            let results = if *outside {
                cluster.from_outside(*transport, *to, 10)
            } else {
                cluster.from_pod(client, *transport, *to, 10)
            };
            match observe(results) {
                Ok(by) if by == want => {}
                other => {
                    last = format!("{what}: {other:?}");
                    return false;
                }
            }
        }
        true
    });
    let took = took.with_context(|| format!("last seen: {last}"))?;
    Ok(Outcome::new(format!(
        "{} frontends (ClusterIP from a pod; both nodePorts on both nodes and the LB ingress IP from outside; TCP and UDP on port 80) each answered 10/10 by both pods, {:.1} s after the Service (upstream: ClusterIP and nodePorts within 2 min)",
        checks.len(),
        took.as_secs_f64()
    )))
}

/// Upstream: publishNotReadyAddresses=true and a pod whose readiness
/// always fails (preStop sleep 100 s): reachable; scale to 0 and
/// PNRA=false: must fail; PNRA=true again: the terminating pod is
/// reachable again (~2 min each). The agent reads EndpointSlice
/// conditions, and this is what the EndpointSlice controller writes for
/// that pod: ready = PNRA || pod ready, serving = pod ready, terminating
/// once deleted. We require [`CONVERGE`] for each step, and REFUSED (not
/// a timeout) for the failing one.
fn unready_publish_not_ready(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let pod = &cluster.topo.pods(0)[0];
    let node = cluster.topo.node_name(0);
    let client = cluster.topo.client_pod(1);
    let to = SocketAddr::from((UNREADY_VIP, 80));
    let pnra = "  publishNotReadyAddresses: true\n";
    let step = |publish: bool, terminating: bool| -> Result<()> {
        let extra = if publish { pnra } else { "" };
        cluster.apply(&service(
            "unready",
            "ClusterIP",
            UNREADY_VIP,
            &[http(80)],
            extra,
        ))?;
        let endpoint = Endpoint {
            ready: publish,
            serving: false,
            terminating,
            ..Endpoint::ready(pod, node)
        };
        cluster.apply(&slice("unready-1", "unready", &[HTTP], &[endpoint]))
    };
    let reached = || {
        cluster
            .from_pod(client, Transport::Tcp, to, 5)
            .is_ok_and(|r| {
                r.iter()
                    .all(|r| r.as_ref().is_ok_and(|a| a.backend == pod.name))
            })
    };
    let refused = || {
        cluster
            .from_pod(client, Transport::Tcp, to, 5)
            .is_ok_and(|r| r.iter().all(|r| *r == Err(RequestError::Refused)))
    };
    step(true, false)?;
    let published = eventually("the unready pod reachable with PNRA", CONVERGE, reached)?;
    step(false, true)?;
    let dropped = eventually(
        "refused once scaled to 0 with PNRA=false",
        CONVERGE,
        refused,
    )?;
    step(true, true)?;
    let again = eventually(
        "the terminating pod reachable with PNRA again",
        CONVERGE,
        reached,
    )?;
    Ok(Outcome::new(format!(
        "unready pod reachable {:.1} s after PNRA=true; REFUSED {:.1} s after scale to 0 + PNRA=false; terminating pod reachable {:.1} s after PNRA=true again (5/5 each; upstream: ~2 min each, the failure any kind)",
        published.as_secs_f64(),
        dropped.as_secs_f64(),
        again.as_secs_f64()
    )))
}

fn service_proxy_name_label(bins: &Binaries) -> Result<Outcome> {
    label_toggle(bins, "service.kubernetes.io/service-proxy-name", "foo-bar")
}

fn headless_label(bins: &Binaries) -> Result<Outcome> {
    label_toggle(bins, "service.kubernetes.io/headless", "")
}

/// Upstream: a Service created with the label is never served
/// (verifyDown), another one is up, goes down when it gets the label and
/// up when it loses it; the labelled one stays down. Both have
/// EndpointSlices, as the controller still writes them.
fn label_toggle(bins: &Binaries, key: &str, value: &str) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 2))?;
    let [toggled, disabled] = LABEL_VIPS.map(|vip| SocketAddr::from((vip, 80)));
    let label = [(key, value)];
    let toggled_svc = |labels: &[(&str, &str)]| -> Result<()> {
        let yaml = service("toggled", "ClusterIP", LABEL_VIPS[0], &[http(80)], "");
        cluster.apply(&with_labels(&yaml, labels)?)
    };
    toggled_svc(&[])?;
    let want = apply_spread_slice(&cluster, "toggled", 0)?;
    let yaml = service("disabled", "ClusterIP", LABEL_VIPS[1], &[http(80)], "");
    cluster.apply(&with_labels(&yaml, &label)?)?;
    apply_spread_slice(&cluster, "disabled", 1)?;
    let up = verify_up(&cluster, toggled, &want, CONVERGE)?;
    let (_, errors) = verify_down(&cluster, disabled, Duration::ZERO)
        .context("the Service created with the label")?;
    toggled_svc(&label)?;
    let (down, _) = verify_down(&cluster, toggled, CONVERGE).context("after adding the label")?;
    toggled_svc(&[])?;
    let up_again =
        verify_up(&cluster, toggled, &want, CONVERGE).context("after removing the label")?;
    verify_down(&cluster, disabled, Duration::ZERO).context("the labelled Service at the end")?;
    Ok(Outcome::new(format!(
        "labelled Service never served ({}); the other up in {:.1} s, down {:.1} s after gaining {key}={value:?}, verifyUp {:.1} s after losing it (upstream: 2 min each)",
        join(&errors),
        up.as_secs_f64(),
        down.as_secs_f64(),
        up_again.as_secs_f64()
    )))
}

fn map_entries_restored_fast(bins: &Binaries) -> Result<Outcome> {
    map_entries_restored(bins, Some(FAST_RESYNC))
}

fn map_entries_restored_default(bins: &Binaries) -> Result<Outcome> {
    map_entries_restored(bins, None)
}

/// Upstream flushes kube-proxy's iptables chains on every node behind its
/// back and waits (verifyUp, 2 min) for kube-proxy to notice and recreate
/// them. Our rules are the pinned service map: every entry of the
/// Service's ClusterIP is deleted from it on every node, behind the
/// agents' backs; the Service must be down at once (the deletion really
/// broke it) and back, by the agents' periodic full read-back, within one
/// resync period (`resync`, or the default). Fast: `--resync-interval-secs
/// 3`, far inside upstream's 2 min. Slow: the default period (90 s), inside
/// upstream's 2 min too.
fn map_entries_restored(bins: &Binaries, resync: Option<Duration>) -> Result<Outcome> {
    let mut spec = ClusterSpec::new(2, 2);
    if let Some(resync) = resync {
        spec.agent_args = vec![
            "--resync-interval-secs".into(),
            resync.as_secs().to_string(),
        ];
    }
    let period = resync.unwrap_or(DEFAULT_RESYNC);
    let mut cluster = Cluster::start(bins, &spec)?;
    let to = SocketAddr::from((RESTORE_VIP, 80));
    cluster.apply(&service(
        "restore",
        "ClusterIP",
        RESTORE_VIP,
        &[http(80)],
        "",
    ))?;
    let want = apply_spread_slice(&cluster, "restore", 0)?;
    verify_up(&cluster, to, &want, CONVERGE)?;
    let pin_dirs: Vec<_> = (0..2)
        .map(|node| cluster.agent(node).pin_dir().to_owned())
        .collect();
    let client = cluster.topo.client_pod(1);
    // A resync may run between the deletion and the check: then again.
    let mut deleted = 0;
    let mut flushed = None;
    for _ in 0..3 {
        deleted = 0;
        for pins in &pin_dirs {
            deleted += delete_service_entries(pins, RESTORE_VIP)?;
        }
        let at = Instant::now();
        let broken = cluster
            .from_pod(client, Transport::Tcp, to, 1)?
            .first()
            .is_some_and(|r| r.is_err());
        if broken {
            flushed = Some(at);
            break;
        }
    }
    let Some(flushed) = flushed else {
        bail!("deleting the Service's map entries ({deleted}) did not take it down");
    };
    ensure!(deleted > 0, "no map entry of {RESTORE_VIP} found to delete");
    let bound = period + Duration::from_secs(3);
    verify_up(&cluster, to, &want, bound.saturating_sub(flushed.elapsed()))
        .context("after the map entries were deleted")?;
    let restored = flushed.elapsed();
    let setting = if resync.is_some() {
        format!("--resync-interval-secs {}", period.as_secs())
    } else {
        format!(
            "the default resync period, {} s, whose first tick comes a period after the agent's start, hence about the longest wait",
            period.as_secs()
        )
    };
    let compared = if restored <= UPSTREAM_LAG {
        format!("upstream allows {} s", UPSTREAM_LAG.as_secs())
    } else {
        format!(
            "OVER upstream's {} s bound, which kube-proxy meets by checking its canary chain every 30 s (--iptables-sync-period); --resync-interval-secs <= {} meets it",
            UPSTREAM_LAG.as_secs(),
            UPSTREAM_LAG.as_secs() - 5
        )
    };
    Ok(Outcome::new(format!(
        "{deleted} service-map entries of the ClusterIP deleted on both nodes: down at once, verifyUp again {:.1} s later, within one resync ({setting}); {compared}",
        restored.as_secs_f64()
    )))
}

/// Upstream's flush, applied to the other half of our rules: every
/// program link the agents pinned (XDP, TC egress and ingress on every
/// pod interface and uplink, the cgroup socket programs) is detached, as
/// `bpftool link detach` does, behind the agents' backs, on every node.
/// The Service must be down at once and back within the agents' check of
/// their links (the monitor tick, 5 s).
fn programs_restored_after_detach(bins: &Binaries) -> Result<Outcome> {
    let mut spec = ClusterSpec::new(2, 2);
    spec.agent_args = vec![
        "--resync-interval-secs".into(),
        FAST_RESYNC.as_secs().to_string(),
    ];
    let mut cluster = Cluster::start(bins, &spec)?;
    let to = SocketAddr::from((RESTORE_VIP, 80));
    cluster.apply(&service(
        "restore",
        "ClusterIP",
        RESTORE_VIP,
        &[http(80)],
        "",
    ))?;
    let want = apply_spread_slice(&cluster, "restore", 0)?;
    verify_up(&cluster, to, &want, CONVERGE)?;
    let pin_dirs: Vec<_> = (0..2)
        .map(|node| cluster.agent(node).pin_dir().to_owned())
        .collect();
    let mut links = Vec::new();
    for dir in &pin_dirs {
        links.extend(pinned_links(dir)?);
    }
    ensure!(!links.is_empty(), "no pinned link found under {pin_dirs:?}");
    for link in &links {
        detach_pinned(link).with_context(|| format!("detaching {}", link.display()))?;
    }
    let detached = Instant::now();
    let client = cluster.topo.client_pod(1);
    let broken = cluster.from_pod(client, Transport::Tcp, to, 1)?;
    ensure!(
        broken.iter().all(|r| r.is_err()),
        "still served with every program detached: {broken:?}"
    );
    let bound = Duration::from_secs(10);
    verify_up(&cluster, to, &want, bound).context("after the programs were detached")?;
    Ok(Outcome::new(format!(
        "{} program links detached on both nodes: down at once, verifyUp again {:.1} s later (the agents check their links every 5 s; upstream allows {} s)",
        links.len(),
        detached.elapsed().as_secs_f64(),
        UPSTREAM_LAG.as_secs()
    )))
}

/// Every file under the link directories of the pin directory `dir`.
fn pinned_links(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for sub in ["links", "node-links", "sock-links"] {
        let mut stack = vec![dir.join(sub)];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                } else {
                    found.push(entry.path());
                }
            }
        }
    }
    Ok(found)
}

/// Deletes every service-map entry (master and slots, every port) of
/// `vip` from the map pinned under `pins`; how many.
fn delete_service_entries(pins: &Path, vip: Ipv4Addr) -> Result<usize> {
    let path = pins.join(lb_common::MapId::Services.name());
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut map: BpfHashMap<MapData, ServiceKey, ServiceValue> =
        BpfHashMap::try_from(Map::from_map_data(data)?)?;
    let vip_be = u32::from_ne_bytes(vip.octets());
    let keys: Vec<ServiceKey> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.vip_be == vip_be)
        .collect();
    for key in &keys {
        map.remove(key)
            .with_context(|| format!("deleting an entry of {vip}"))?;
    }
    Ok(keys.len())
}

/// The slice `<service>-1` with the `i`th pod of every node; the pods'
/// names.
fn apply_spread_slice(cluster: &Cluster, service: &str, i: usize) -> Result<BTreeSet<String>> {
    let pods: Vec<(&Pod, &str)> = (0..cluster.topo.nodes())
        .map(|node| (&cluster.topo.pods(node)[i], cluster.topo.node_name(node)))
        .collect();
    let endpoints: Vec<Endpoint> = pods
        .iter()
        .map(|(pod, node)| Endpoint::ready(pod, node))
        .collect();
    cluster.apply(&slice(
        &format!("{service}-1"),
        service,
        &[HTTP],
        &endpoints,
    ))?;
    Ok(pods.iter().map(|(pod, _)| pod.name.clone()).collect())
}

/// The backends that answered, or what went wrong (for a message).
fn observe(results: Result<Vec<RequestResult>>) -> std::result::Result<BTreeSet<String>, String> {
    let results = results.map_err(|e| format!("{e:#}"))?;
    answered_by(&results).map_err(|e| e.to_string())
}

/// One verifyUp round: a request from a hostNetwork client (node-a) and
/// one from a pod (the last node's client) first, then 50 per backend
/// from each; all answered, by exactly `expected`.
fn up_once(
    cluster: &Cluster,
    to: SocketAddr,
    expected: &BTreeSet<String>,
) -> std::result::Result<(), String> {
    let pod = cluster.topo.client_pod(cluster.topo.nodes() - 1);
    for n in [1, 50 * expected.len()] {
        let host = observe(cluster.from_node(0, Transport::Tcp, to, n))
            .map_err(|e| format!("hostNetwork client: {e}"))?;
        let from_pod = observe(cluster.from_pod(pod, Transport::Tcp, to, n))
            .map_err(|e| format!("{}: {e}", pod.name))?;
        if n > 1 && (host != *expected || from_pod != *expected) {
            return Err(format!(
                "answered by {host:?} (hostNetwork client) and {from_pod:?} ({}), not {expected:?}",
                pod.name
            ));
        }
    }
    Ok(())
}

/// Upstream's verifyUp (see the module doc), polled for up to `within`;
/// how long it took.
fn verify_up(
    cluster: &Cluster,
    to: SocketAddr,
    expected: &BTreeSet<String>,
    within: Duration,
) -> Result<Duration> {
    let mut last = String::new();
    let took = eventually(&format!("verifyUp {to}"), within, || {
        match up_once(cluster, to, expected) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        }
    });
    took.with_context(|| format!("last seen: {last}"))
}

/// Upstream's verifyDown, and the same from a pod: requests from a
/// hostNetwork client (node-a) and from a pod all fail, polled for up to
/// `within`. How long it took and the failures seen.
fn verify_down(
    cluster: &Cluster,
    to: SocketAddr,
    within: Duration,
) -> Result<(Duration, BTreeSet<String>)> {
    let pod = cluster.topo.client_pod(cluster.topo.nodes() - 1);
    let mut errors = BTreeSet::new();
    let mut last = String::new();
    let took = eventually_sent(&format!("verifyDown {to}"), within, || {
        let results: Vec<RequestResult> = [
            cluster.from_node(0, Transport::Tcp, to, 2),
            cluster.from_pod(pod, Transport::Tcp, to, 2),
        ]
        .into_iter()
        .flat_map(|r| r.unwrap_or_else(|e| vec![Ok(bogus_reply(e))]))
        .collect();
        if results.iter().all(Result::is_err) {
            errors = results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .map(ToString::to_string)
                .collect();
            true
        } else {
            last = format!("{results:?}");
            false
        }
    });
    let took = took.with_context(|| format!("last seen: {last}"))?;
    Ok((took, errors))
}

/// Stands for a client that could not run: not a failure of the Service,
/// so verifyDown must not count it as one.
fn bogus_reply(e: anyhow::Error) -> crate::client::Reply {
    crate::client::Reply {
        backend: format!("(client failed: {e:#})"),
        seen_peer: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        reply_from: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
    }
}

/// Like [`eventually`], but the time until the start of the attempt that
/// held: a check that something stopped answering waits out the client's
/// 1 s timeout before it can say so, and the requests that went
/// unanswered were sent at that start.
fn eventually_sent(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    let mut sent = start;
    eventually(what, within, || {
        sent = Instant::now();
        probe()
    })?;
    Ok(sent - start)
}

fn join(errors: &BTreeSet<String>) -> String {
    errors.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// `n` line-echo requests from `pod` ([`line_request`]): who answered, or
/// the first failure.
fn line_requests(
    pod: &Pod,
    to: SocketAddr,
    n: usize,
) -> std::result::Result<BTreeSet<String>, String> {
    let results = pod
        .ns
        .run(move || (0..n).map(|_| line_request(to)).collect::<Vec<_>>())
        .map_err(|e| format!("{e:#}"))?;
    results.into_iter().collect()
}

/// One [`line_request`] from `pod`.
fn line_request_in(pod: &Pod, to: SocketAddr) -> Result<std::result::Result<String, String>> {
    pod.ns.run(move || line_request(to))
}

/// Sends a line to the line-echo server (8081) behind `to` and reads the
/// answer, which must echo it (the one-shot server on 8080 does not):
/// the pod that answered.
fn line_request(to: SocketAddr) -> std::result::Result<String, String> {
    let timeout = Duration::from_secs(1);
    let fail = |e: std::io::Error| format!("{to}: {e}");
    let stream = TcpStream::connect_timeout(&to, timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    (&stream).write_all(b"ping\n").map_err(fail)?;
    let mut line = String::new();
    BufReader::new((&stream).take(1024))
        .read_line(&mut line)
        .map_err(fail)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [backend, _peer, "ping"] => Ok(backend.to_string()),
        _ => Err(format!("{to}: not a line echo: {line:?}")),
    }
}

/// `yaml` (one Service) with `labels` on its metadata.
fn with_labels(yaml: &str, labels: &[(&str, &str)]) -> Result<String> {
    edit_service(yaml, |service| {
        let mut map = serde_yaml::Mapping::new();
        for (k, v) in labels {
            map.insert((*k).into(), (*v).into());
        }
        service["metadata"]["labels"] = serde_yaml::Value::Mapping(map);
    })
}

/// `yaml` (one Service) with `ip` as its load-balancer ingress in the
/// status, as a cloud controller writes it.
fn with_lb_ingress(yaml: &str, ip: Ipv4Addr) -> Result<String> {
    let status: serde_yaml::Value =
        serde_yaml::from_str(&format!("loadBalancer: {{ingress: [{{ip: \"{ip}\"}}]}}"))?;
    edit_service(yaml, |service| service["status"] = status)
}

fn edit_service(yaml: &str, edit: impl FnOnce(&mut serde_yaml::Value)) -> Result<String> {
    let body = yaml.trim_end().trim_end_matches("---");
    let mut service: serde_yaml::Value = serde_yaml::from_str(body)?;
    ensure!(
        service.get("kind").and_then(|k| k.as_str()) == Some("Service"),
        "not one Service: {yaml}"
    );
    edit(&mut service);
    Ok(format!("{}---\n", serde_yaml::to_string(&service)?))
}

/// A hostNetwork client making requests in a loop (`lb-testbed probe`
/// runs of 10, as a node process), on its own thread, until stopped:
/// traffic that needs no borrow of the cluster while its agents restart.
struct NodeLoop {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<RequestResult>>>,
    thread: Option<JoinHandle<()>>,
}

impl NodeLoop {
    fn start(mut probe: Command, to: SocketAddr) -> NodeLoop {
        probe.args([
            "probe",
            "tcp",
            &to.to_string(),
            "--count",
            "10",
            "--timeout-ms",
            "1000",
        ]);
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (keep_stop, keep) = (Arc::clone(&stop), Arc::clone(&results));
        let thread = thread::spawn(move || {
            while !keep_stop.load(Ordering::Relaxed) {
                let batch: Vec<RequestResult> = match probe.output() {
                    Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(parse_result)
                        .collect(),
                    Ok(out) => vec![Err(RequestError::Other(format!(
                        "lb-testbed probe failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    )))],
                    Err(e) => vec![Err(RequestError::Other(format!("lb-testbed probe: {e}")))],
                };
                keep.lock().unwrap_or_else(|e| e.into_inner()).extend(batch);
                thread::sleep(Duration::from_millis(20));
            }
        });
        NodeLoop {
            stop,
            results,
            thread: Some(thread),
        }
    }

    /// Stops after the run in progress; every result.
    fn stop(mut self) -> Vec<RequestResult> {
        self.halt();
        std::mem::take(&mut *self.results.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for NodeLoop {
    fn drop(&mut self) {
        self.halt();
    }
}
