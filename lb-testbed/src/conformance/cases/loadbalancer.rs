//! §9 LoadBalancer frontends (loadbalancer.go): ingress IPs written into
//! the Service status, as a cloud controller would, and reached from the
//! client outside the cluster through a route to a node, as the cloud load
//! balancer would deliver them (VIP mode: the packet still carries the
//! load-balancer IP). For the rolling updates a small "cloud load
//! balancer" in the external client's namespace health-checks the nodes
//! and spreads new connections over the healthy ones.
//!
//! Upstream's bounds are the LB lag (~2 min) per step; we require 5 s.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::nodeport::tools::{
    add_external_address, at, converge, endpoint_names, endpoints, node_ports, requests,
    route_via_node, secs, tcp_request_from, until_all_by, verify_down, verify_up, Answers,
    EchoServer, Path, Vantage, CONVERGE, SHORT,
};
use crate::client::{RequestError, RequestResult, Transport};
use crate::conformance::objects::{
    dns, http, service, slice, Endpoint, Port, SlicePort, DNS, HTTP,
};
use crate::conformance::{Binaries, Case, Cluster, ClusterSpec, NotRun, Outcome, Speed};
use crate::netns::NsThread;

const SECTION: &str = "9 LoadBalancer";

const fn vip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 9, last)
}

/// Load-balancer IPs (TEST-NET-2), one per scenario.
const fn lb_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, last)
}

pub fn cases() -> Vec<Case> {
    let case = |id, speed, upstream, run| Case {
        id,
        section: SECTION,
        upstream,
        speed,
        run,
    };
    vec![
        case(
            "lb_change_type_and_ports_tcp",
            Speed::Fast,
            "should be able to change the type and ports of a TCP service [Slow] (ClusterIP -> NodePort -> LoadBalancer, change nodePort, change port, scale 0: unreachable, scale 1, back to ClusterIP: LB closed)",
            change_type_and_ports_tcp,
        ),
        case(
            "lb_change_type_and_ports_udp",
            Speed::Fast,
            "should be able to change the type and ports of a UDP service [Slow] (same steps; scale 0: ICMP reject)",
            change_type_and_ports_udp,
        ),
        case(
            "lb_source_ranges",
            Speed::Fast,
            "should only allow access from service loadbalancer source ranges [Slow] (accept /32 allowed, drop blocked; swap; remove the field: both allowed)",
            source_ranges,
        ),
        case(
            "lb_allocate_node_ports_false_then_true",
            Speed::Fast,
            "should be able to create LoadBalancer Service without NodePort and change it [Slow] (allocateLoadBalancerNodePorts false, then true; LB reachable throughout)",
            allocate_node_ports,
        ),
        case(
            "lb_rolling_update_etp_cluster",
            Speed::Fast,
            "should not have connectivity disruption during rolling update with externalTrafficPolicy=Cluster [Slow] (success >= 95%; shortened: 2 updates of 2 nodes, 1.5 s terminating)",
            rolling_update_cluster_fast,
        ),
        case(
            "lb_rolling_update_etp_local",
            Speed::Fast,
            "should not have connectivity disruption during rolling update with externalTrafficPolicy=Local [Slow] (success >= 95%; shortened: 2 updates of 2 nodes, 1.5 s terminating)",
            rolling_update_local_fast,
        ),
        case(
            "lb_rolling_update_etp_cluster_slow",
            Speed::Slow,
            "should not have connectivity disruption during rolling update with externalTrafficPolicy=Cluster [Slow] (5 rolling updates, success >= 95%)",
            rolling_update_cluster_slow,
        ),
        case(
            "lb_rolling_update_etp_local_slow",
            Speed::Slow,
            "should not have connectivity disruption during rolling update with externalTrafficPolicy=Local [Slow] (5 rolling updates, success >= 95%)",
            rolling_update_local_slow,
        ),
    ]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}

/// `yaml` (one Service document) with `status.loadBalancer.ingress` set to
/// `ip`, as a cloud controller writes it.
fn with_ingress(yaml: &str, ip: Ipv4Addr) -> String {
    let doc = yaml.strip_suffix("---\n").unwrap_or(yaml);
    format!("{doc}status:\n  loadBalancer:\n    ingress: [{{ip: \"{ip}\"}}]\n---\n")
}

fn change_type_and_ports_tcp(bins: &Binaries) -> Result<Outcome> {
    change_type_and_ports(bins, Transport::Tcp)
}

fn change_type_and_ports_udp(bins: &Binaries) -> Result<Outcome> {
    change_type_and_ports(bins, Transport::Udp)
}

/// Upstream, for a TCP and for a UDP Service with one pod: ClusterIP ->
/// NodePort -> LoadBalancer (ingress IP), change the nodePort (the old one
/// must close), change the Service port, scale to 0 (TCP: not reachable;
/// UDP: ICMP reject, testRejectedUDP), scale to 1, back to ClusterIP (the
/// LB IP and nodePort must close). Reachability is checked at every step,
/// from outside for the nodePorts (on both nodes) and the LB IP (routed
/// via node-b; the one pod is on node-a). Scaled to 0 we require TCP
/// REFUSED too, not only "not reachable". Back to ClusterIP we leave the
/// stale ingress status in place (stricter: only the type says not to
/// serve it).
fn change_type_and_ports(bins: &Binaries, transport: Transport) -> Result<Outcome> {
    let udp = transport == Transport::Udp;
    let (last, np1, np2) = if udp {
        (11, 30911, 30921)
    } else {
        (10, 30910, 30920)
    };
    let (name, ports): (&str, [SlicePort; 1]) = if udp {
        ("mutable-udp", [DNS])
    } else {
        ("mutable-tcp", [HTTP])
    };
    let port = |p: u16| if udp { dns(p) } else { http(p) };
    let lb = lb_ip(last);
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    route_via_node(&cluster, lb, 1)?; // the cloud LB delivers via node-b
    let one = vec![Endpoint::ready(
        &cluster.topo.pods(0)[0],
        cluster.topo.node_name(0),
    )];
    let expected = BTreeSet::from([cluster.topo.pods(0)[0].name.clone()]);
    let slice_name = format!("{name}-1");
    let pod = Vantage::Pod(cluster.topo.client_pod(1));
    let outside = |to: SocketAddr| (Vantage::Outside, transport, to);
    let mut steps = Vec::new();

    let start = Instant::now();
    cluster.apply(&service(name, "ClusterIP", vip(last), &[port(80)], ""))?;
    cluster.apply(&slice(&slice_name, name, &ports, &one))?;
    let t = verify_up(
        &cluster,
        &[(pod, transport, at(vip(last), 80))],
        &expected,
        10,
        start,
    )?;
    steps.push(format!("ClusterIP {}", secs(t)));

    let start = Instant::now();
    cluster.apply(&service(
        name,
        "NodePort",
        vip(last),
        &[port(80).node_port(np1)],
        "",
    ))?;
    let np1_paths: Vec<_> = node_ports(&cluster, np1).into_iter().map(outside).collect();
    let t = verify_up(&cluster, &np1_paths, &expected, 10, start)?;
    steps.push(format!("NodePort {}", secs(t)));

    let start = Instant::now();
    let lb_service = |p: u16, np: u16| {
        with_ingress(
            &service(
                name,
                "LoadBalancer",
                vip(last),
                &[port(p).node_port(np)],
                "",
            ),
            lb,
        )
    };
    cluster.apply(&lb_service(80, np1))?;
    let mut paths = np1_paths.clone();
    paths.push(outside(at(lb, 80)));
    let t = verify_up(&cluster, &paths, &expected, 10, start)?;
    steps.push(format!("LoadBalancer {}", secs(t)));

    let start = Instant::now();
    cluster.apply(&lb_service(80, np2))?;
    let np2_paths: Vec<_> = node_ports(&cluster, np2).into_iter().map(outside).collect();
    let mut paths = np2_paths.clone();
    paths.push(outside(at(lb, 80)));
    let up = verify_up(&cluster, &paths, &expected, 10, start)?;
    let down = verify_down(&cluster, &closing(&np1_paths), 5, start)?;
    steps.push(format!(
        "nodePort {np1}->{np2} new served {}, old closed {}",
        secs(up),
        secs(down)
    ));

    let start = Instant::now();
    cluster.apply(&lb_service(81, np2))?;
    let mut paths = np2_paths.clone();
    paths.push(outside(at(lb, 81)));
    let up = verify_up(&cluster, &paths, &expected, 10, start)?;
    let down = verify_down(&cluster, &closing(&[outside(at(lb, 80))]), 5, start)?;
    steps.push(format!(
        "port 80->81 new served {}, old closed {}",
        secs(up),
        secs(down)
    ));

    // Scaled to 0: refused (TCP RST; UDP ICMP port unreachable, which only
    // a connected socket hears).
    let start = Instant::now();
    cluster.apply(&slice(&slice_name, name, &ports, &[]))?;
    let rejecting = if udp {
        Transport::UdpConnected
    } else {
        Transport::Tcp
    };
    let mut refused = Vec::new();
    for to in node_ports(&cluster, np2).into_iter().chain([at(lb, 81)]) {
        refused.push(until_refused(&cluster, rejecting, to, start)?);
    }
    let slowest = refused.iter().max().copied().unwrap_or_default();
    steps.push(format!(
        "scaled to 0: {} REFUSED on the LB IP and both nodePorts by {}",
        if udp { "ICMP reject," } else { "TCP" },
        secs(slowest)
    ));

    let start = Instant::now();
    cluster.apply(&slice(&slice_name, name, &ports, &one))?;
    let t = verify_up(&cluster, &paths, &expected, 10, start)?;
    steps.push(format!("scaled to 1 {}", secs(t)));

    let start = Instant::now();
    cluster.apply(&with_ingress(
        &service(name, "ClusterIP", vip(last), &[port(81)], ""),
        lb,
    ))?;
    let down = verify_down(&cluster, &closing(&paths), 5, start)?;
    verify_up(
        &cluster,
        &[(pod, transport, at(vip(last), 81))],
        &expected,
        10,
        start,
    )?;
    steps.push(format!(
        "back to ClusterIP (stale ingress status left): LB IP and nodePorts closed {}, ClusterIP still served 10/10",
        secs(down),
    ));
    Ok(Outcome::new(format!(
        "{}, 10/10 per path from outside (LB IP via node-b, nodePorts on both nodes), each step verified after the change by: {} (upstream: LB lag ~2 min per step)",
        if udp { "UDP" } else { "TCP" },
        steps.join("; ")
    )))
}

/// Paths that must close: UDP ones through a connected socket, which gets
/// an ICMP error at once rather than a timeout per try.
fn closing<'a>(paths: &[Path<'a>]) -> Vec<Path<'a>> {
    paths
        .iter()
        .map(|&(from, t, to)| {
            let t = if t == Transport::Udp {
                Transport::UdpConnected
            } else {
                t
            };
            (from, t, to)
        })
        .collect()
}

/// Until 5 requests from outside to `to` are all REFUSED (not timed out);
/// how long after `since`.
fn until_refused(
    cluster: &Cluster,
    transport: Transport,
    to: SocketAddr,
    since: Instant,
) -> Result<Duration> {
    let begun = since.elapsed();
    let took = converge(
        &format!("{transport:?} to {to} refused"),
        CONVERGE,
        || requests(cluster, Vantage::Outside, transport, to, 5, SHORT),
        |r| r.iter().all(|r| *r == Err(RequestError::Refused)),
    )?;
    Ok(begun + took)
}

/// Upstream: an accept pod's /32 in loadBalancerSourceRanges is served, a
/// drop pod is not; swap the ranges; remove the field: both are served.
/// We run it with two pods (on different nodes, upstream's clients) and
/// two addresses of the external client at once: the accept set is one
/// of each, the drop set the other two. Blocked means no answer (dropped,
/// as kube-proxy's firewall chain does).
fn source_ranges(bins: &Binaries) -> Result<Outcome> {
    const SECOND: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 150);
    let lb = lb_ip(12);
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    route_via_node(&cluster, lb, 1)?; // the cloud LB delivers via node-b
    add_external_address(&cluster, SECOND)?;
    let ext = cluster.topo.external_client().ip;
    let (pod_a, pod_b) = (cluster.topo.client_pod(0), cluster.topo.client_pod(1));
    let one: [(Vantage<'_>, Ipv4Addr); 2] = [
        (Vantage::Pod(pod_a), pod_a.ip),
        (Vantage::OutsideFrom(ext), ext),
    ];
    let other: [(Vantage<'_>, Ipv4Addr); 2] = [
        (Vantage::Pod(pod_b), pod_b.ip),
        (Vantage::OutsideFrom(SECOND), SECOND),
    ];
    let expected = endpoint_names(&cluster, 1);
    cluster.apply(&slice(
        "ranges-1",
        "ranges",
        &[HTTP],
        &endpoints(&cluster, 1),
    ))?;
    let to = at(lb, 80);
    let ranges_yaml = |allowed: &[(Vantage<'_>, Ipv4Addr)]| {
        let extra = if allowed.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = allowed
                .iter()
                .map(|(_, ip)| format!("\"{ip}/32\""))
                .collect();
            format!("  loadBalancerSourceRanges: [{}]\n", list.join(", "))
        };
        with_ingress(
            &service(
                "ranges",
                "LoadBalancer",
                vip(12),
                &[http(80).node_port(30912)],
                &extra,
            ),
            lb,
        )
    };
    let mut steps = Vec::new();
    for (what, allowed, blocked) in [
        ("accept set only", &one[..], &other[..]),
        ("swapped", &other[..], &one[..]),
        ("field removed", &[][..], &[][..]),
    ] {
        let start = Instant::now();
        cluster.apply(&ranges_yaml(allowed))?;
        let served: Vec<_> = if allowed.is_empty() {
            one.iter().chain(&other).collect()
        } else {
            allowed.iter().collect()
        };
        let ups: Vec<_> = served
            .iter()
            .map(|(v, _)| (*v, Transport::Tcp, to))
            .collect();
        let up = verify_up(&cluster, &ups, &expected, 20, start)?;
        let downs: Vec<_> = blocked
            .iter()
            .map(|(v, _)| (*v, Transport::Tcp, to))
            .collect();
        let down = verify_down(&cluster, &downs, 5, start)?;
        // And the blocked stay blocked once it settled.
        for &(from, _, to) in &downs {
            let a = Answers::of(&requests(&cluster, from, Transport::Tcp, to, 5, SHORT)?);
            ensure!(
                a.ok == 0,
                "{what}: {} was served: {a:?}",
                from.name(&cluster)
            );
        }
        let who = |set: &[&(Vantage<'_>, Ipv4Addr)]| {
            set.iter()
                .map(|(_, ip)| ip.to_string())
                .collect::<Vec<_>>()
                .join(" + ")
        };
        steps.push(if blocked.is_empty() {
            format!("{what}: {} served 20/20 by {}", who(&served), secs(up))
        } else {
            format!(
                "{what}: {} served 20/20 by {}, {} blocked (0/10) by {}",
                who(&served),
                secs(up),
                who(&blocked.iter().collect::<Vec<_>>()),
                secs(down)
            )
        });
    }
    Ok(Outcome::new(format!(
        "LB IP from two pods and two external addresses: {} (upstream: ~2 min per step)",
        steps.join("; ")
    )))
}

/// Upstream: a LoadBalancer with allocateLoadBalancerNodePorts false (no
/// nodePort) is reachable; set it true (a nodePort is allocated) and it
/// stays reachable. We hammer the LB IP with new connections across the
/// change and require every one to succeed, and the new nodePort served
/// on both nodes.
fn allocate_node_ports(bins: &Binaries) -> Result<Outcome> {
    const NP: u16 = 30913;
    let lb = lb_ip(13);
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    route_via_node(&cluster, lb, 1)?; // the cloud LB delivers via node-b
    let expected = endpoint_names(&cluster, 1);
    let start = Instant::now();
    cluster.apply(&with_ingress(
        &service(
            "no-np",
            "LoadBalancer",
            vip(13),
            &[http(80)],
            "  allocateLoadBalancerNodePorts: false\n",
        ),
        lb,
    ))?;
    cluster.apply(&slice("no-np-1", "no-np", &[HTTP], &endpoints(&cluster, 1)))?;
    let to = at(lb, 80);
    let first = verify_up(
        &cluster,
        &[(Vantage::Outside, Transport::Tcp, to)],
        &expected,
        20,
        start,
    )?;
    let hammer = Hammer::start(&cluster, None, to, Duration::from_millis(10))?;
    thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    cluster.apply(&with_ingress(
        &service(
            "no-np",
            "LoadBalancer",
            vip(13),
            &[http(80).node_port(NP)],
            "  allocateLoadBalancerNodePorts: true\n",
        ),
        lb,
    ))?;
    let paths: Vec<_> = node_ports(&cluster, NP)
        .into_iter()
        .map(|to| (Vantage::Outside, Transport::Tcp, to))
        .collect();
    let np = verify_up(&cluster, &paths, &expected, 20, start)?;
    thread::sleep(Duration::from_millis(500));
    let results = hammer.stop();
    let (ok, failed) = tally(&results);
    ensure!(
        failed.is_empty() && ok > 50,
        "{ok} of {} connections to the LB IP succeeded across the change: {}",
        results.len(),
        describe(&failed)
    );
    Ok(Outcome::new(format!(
        "without nodePorts the LB IP served 20/20 {} after the objects; across allocateLoadBalancerNodePorts false -> true {ok}/{ok} new connections to the LB IP succeeded, and nodePort {NP} was served on both nodes {} after the change (upstream: reachable, LB lag ~2 min)",
        secs(first),
        secs(np)
    )))
}

/// The rolling-update port: an [`EchoServer`] per pod, started and stopped
/// as the pod's container would be.
const ROLL_PORT: u16 = 8083;
const ROLL: SlicePort = SlicePort {
    name: "roll",
    port: ROLL_PORT,
    protocol: "TCP",
};
const HEALTH_CHECK_PORT: u16 = 30999;

fn rolling_update_cluster_fast(bins: &Binaries) -> Result<Outcome> {
    rolling_update(bins, false, 2, 2, Duration::from_millis(1500))
}

fn rolling_update_local_fast(bins: &Binaries) -> Result<Outcome> {
    rolling_update(bins, true, 2, 2, Duration::from_millis(1500))
}

fn rolling_update_cluster_slow(bins: &Binaries) -> Result<Outcome> {
    rolling_update(bins, false, 3, 5, Duration::from_secs(10))
}

fn rolling_update_local_slow(bins: &Binaries) -> Result<Outcome> {
    rolling_update(bins, true, 3, 5, Duration::from_secs(10))
}

/// Upstream: a DaemonSet of netexec pods behind a LoadBalancer Service
/// (eTP Cluster or Local); the runner hammers the LB with new connections
/// (no keepalive) during 5 rolling updates; >= 95% must succeed. We
/// require 100%.
///
/// The DaemonSet controller and kubelet are played through the
/// EndpointSlice, one node at a time, as they change it: the old pod goes
/// terminating (ready false, serving true, terminating true) and keeps
/// serving for `grace`; then its container stops and the endpoint is
/// removed; the replacement (the node's other pod) starts and is added
/// ready. The next node follows once the load balancer sees this one
/// healthy again (for Local: its healthCheckNodePort back to 200; for
/// Cluster the LB checks :10256/healthz, as cloud LBs do).
///
/// The load balancer spreads new connections round-robin over the nodes
/// its health checks (every 100 ms) find healthy; each node is reached
/// from its own source address of the external client, routed via that
/// node (policy routing), so a connection stays on its node.
fn rolling_update(
    bins: &Binaries,
    local: bool,
    nodes: usize,
    rounds: usize,
    grace: Duration,
) -> Result<Outcome> {
    let last = if local { 15 } else { 14 };
    let lb = lb_ip(last);
    let name = if local { "ds-local" } else { "ds-cluster" };
    let cluster = Cluster::start(bins, &ClusterSpec::new(nodes, 2))?;
    let pod = |node: usize, slot: usize| &cluster.topo.pods(node)[slot];
    let node_name = |node: usize| cluster.topo.node_name(node).to_string();
    // Slot 0 of every node runs at first.
    let mut servers: Vec<[Option<EchoServer>; 2]> = Vec::new();
    for i in 0..nodes {
        let p = pod(i, 0);
        servers.push([Some(EchoServer::start(&p.ns, &p.name, ROLL_PORT, 0)?), None]);
    }
    let mut active = vec![0usize; nodes];
    let mut state: Vec<Option<Endpoint>> = (0..nodes)
        .map(|i| Some(Endpoint::ready(pod(i, 0), &node_name(i))))
        .collect();
    let apply_slice = |state: &[Option<Endpoint>]| {
        let eps: Vec<Endpoint> = state.iter().flatten().cloned().collect();
        cluster.apply(&slice(&format!("{name}-1"), name, &[ROLL], &eps))
    };
    let policy = if local {
        format!("  externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_CHECK_PORT}\n")
    } else {
        "  externalTrafficPolicy: Cluster\n".to_string()
    };
    let roll_port = Port {
        name: "roll",
        port: 80,
        protocol: "TCP",
        target: "roll",
        node_port: if local { 30915 } else { 30914 },
    };
    cluster.apply(&with_ingress(
        &service(name, "LoadBalancer", vip(last), &[roll_port], &policy),
        lb,
    ))?;
    apply_slice(&state)?;
    let check = if local {
        (HEALTH_CHECK_PORT, "/")
    } else {
        (10256, "/healthz")
    };
    let cloud = CloudLb::start(&cluster, lb, check)?;
    // Every node healthy and serving its sources before the updates start.
    for i in 0..nodes {
        cloud.until_healthy(i, CONVERGE)?;
        let expected: BTreeSet<String> = if local {
            BTreeSet::from([pod(i, 0).name.clone()])
        } else {
            (0..nodes).map(|j| pod(j, 0).name.clone()).collect()
        };
        until_all_by(
            &cluster,
            Vantage::OutsideFrom(CloudLb::source(i)),
            Transport::Tcp,
            at(lb, 80),
            20,
            &expected,
            CONVERGE,
        )?;
    }
    let to = SocketAddrV4::new(lb, 80);
    let hammer = Hammer::start(
        &cluster,
        Some(Arc::clone(&cloud.healthy)),
        SocketAddr::V4(to),
        Duration::from_millis(5),
    )?;
    let began = Instant::now();
    let mut drained = Vec::new();
    for _ in 0..rounds {
        for i in 0..nodes {
            let (old, new) = (active[i], 1 - active[i]);
            // Deleted: terminating, still serving.
            state[i] = Some(Endpoint::ready(pod(i, old), &node_name(i)).terminating());
            apply_slice(&state)?;
            if local {
                let t = Instant::now();
                cloud.until(i, false, CONVERGE)?;
                drained.push(t.elapsed());
            }
            thread::sleep(grace);
            // The container stops; the pod object goes.
            servers[i][old] = None;
            state[i] = None;
            apply_slice(&state)?;
            // The replacement starts and becomes ready.
            let p = pod(i, new);
            servers[i][new] = Some(EchoServer::start(&p.ns, &p.name, ROLL_PORT, 0)?);
            state[i] = Some(Endpoint::ready(p, &node_name(i)));
            apply_slice(&state)?;
            active[i] = new;
            cloud.until_healthy(i, CONVERGE)?;
        }
    }
    thread::sleep(Duration::from_millis(500));
    let took = began.elapsed();
    let results = hammer.stop();
    drop(cloud);
    let (ok, failed) = tally(&results);
    let by: BTreeSet<&str> = results
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok().map(|r| r.backend.as_str()))
        .collect();
    ensure!(
        failed.is_empty(),
        "{ok} of {} new connections succeeded during the rolling updates (we require 100%; upstream 95%): {}",
        results.len(),
        describe(&failed)
    );
    let last_pods: BTreeSet<&str> = (0..nodes)
        .map(|i| pod(i, active[i]).name.as_str())
        .collect();
    ensure!(
        last_pods.is_subset(&by),
        "the replacements {last_pods:?} never answered: {by:?}"
    );
    ensure!(ok >= 100, "only {ok} connections in {took:?}");
    let drain = drained
        .iter()
        .max()
        .map(|d| {
            format!(
                "; the LB saw each node's health check fail within {} of its pod terminating",
                secs(*d)
            )
        })
        .unwrap_or_default();
    Ok(Outcome::new(format!(
        "eTP={}: {ok}/{ok} new connections via the LB IP succeeded (100%; upstream asks >= 95%) over {rounds} rolling updates of {nodes} nodes ({} pods replaced, each terminating-but-serving {} before it stopped) in {}{drain}",
        if local { "Local" } else { "Cluster" },
        rounds * nodes,
        secs(grace),
        secs(took)
    )))
}

/// One request of a [`Hammer`]: when, to which node, and the result.
type Shot = (Instant, usize, RequestResult);

fn tally(results: &[Shot]) -> (usize, Vec<&Shot>) {
    let failed: Vec<&Shot> = results.iter().filter(|(_, _, r)| r.is_err()).collect();
    (results.len() - failed.len(), failed)
}

fn describe(failed: &[&Shot]) -> String {
    let Some(first) = failed.first() else {
        return "none failed".into();
    };
    let mut text = format!("{} failed", failed.len());
    for (at, node, r) in failed.iter().take(5) {
        text += &format!(
            "\n  +{:.2} s via node {node}: {:?}",
            at.saturating_duration_since(first.0).as_secs_f64(),
            r.as_ref().err()
        );
    }
    text
}

/// New TCP connections from the external client, one every `interval`, to
/// `to`: through the node a [`CloudLb`] picks (round-robin over the healthy
/// ones, all if none is), or, without one, by the client's routes.
struct Hammer {
    stop: Arc<AtomicBool>,
    thread: Option<NsThread<Vec<Shot>>>,
}

impl Hammer {
    fn start(
        cluster: &Cluster,
        healthy: Option<Arc<Mutex<Vec<bool>>>>,
        to: SocketAddr,
        interval: Duration,
    ) -> Result<Hammer> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let SocketAddr::V4(to) = to else {
            anyhow::bail!("IPv4 only");
        };
        let thread = cluster.topo.external_client().ns.enter_thread(move || {
            let mut shots = Vec::new();
            let mut next = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let at = Instant::now();
                let (node, result) = match &healthy {
                    Some(h) => {
                        let h = lock(h).clone();
                        let pick: Vec<usize> =
                            match (0..h.len()).filter(|&i| h[i]).collect::<Vec<_>>() {
                                none if none.is_empty() => (0..h.len()).collect(),
                                some => some,
                            };
                        let node = pick[next % pick.len()];
                        next += 1;
                        (
                            node,
                            tcp_request_from(CloudLb::source(node), to, Duration::from_secs(2)),
                        )
                    }
                    None => (
                        usize::MAX,
                        crate::client::request(
                            Transport::Tcp,
                            SocketAddr::V4(to),
                            Duration::from_secs(2),
                        ),
                    ),
                };
                shots.push((at, node, result));
                thread::sleep(interval);
            }
            shots
        })?;
        Ok(Hammer {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(mut self) -> Vec<Shot> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(NsThread::join).unwrap_or_default()
    }
}

impl Drop for Hammer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

/// A cloud load balancer in front of the nodes, as far as the nodes can
/// tell: it health-checks each node (`check`: port and path, from the
/// external client) every 100 ms and keeps which are healthy; traffic for
/// node `i` leaves from [`CloudLb::source`]`(i)`, which policy routing
/// sends via node `i`.
struct CloudLb {
    healthy: Arc<Mutex<Vec<bool>>>,
    stop: Arc<AtomicBool>,
    thread: Option<NsThread<()>>,
}

impl CloudLb {
    /// The external client's source address for node `i`.
    fn source(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 50, 110 + i as u8)
    }

    fn start(cluster: &Cluster, lb: Ipv4Addr, check: (u16, &'static str)) -> Result<CloudLb> {
        let ext = &cluster.topo.external_client().ns;
        let nodes = cluster.topo.nodes();
        for i in 0..nodes {
            let src = CloudLb::source(i).to_string();
            let table = (100 + i).to_string();
            add_external_address(cluster, CloudLb::source(i))?;
            ext.ip(["rule", "add", "from", &src, "lookup", &table])?;
            ext.ip([
                "route",
                "add",
                &format!("{lb}/32"),
                "via",
                &cluster.topo.node_ip(i).to_string(),
                "table",
                &table,
            ])?;
        }
        let healthy = Arc::new(Mutex::new(vec![false; nodes]));
        let stop = Arc::new(AtomicBool::new(false));
        let node_ips: Vec<Ipv4Addr> = (0..nodes).map(|i| cluster.topo.node_ip(i)).collect();
        let (h, flag) = (Arc::clone(&healthy), Arc::clone(&stop));
        let thread = ext.enter_thread(move || {
            while !flag.load(Ordering::Relaxed) {
                for (i, ip) in node_ips.iter().enumerate() {
                    let ok = status(SocketAddr::from((*ip, check.0)), check.1) == Some(200);
                    lock(&h)[i] = ok;
                }
                thread::sleep(Duration::from_millis(100));
            }
        })?;
        Ok(CloudLb {
            healthy,
            stop,
            thread: Some(thread),
        })
    }

    fn until_healthy(&self, node: usize, timeout: Duration) -> Result<Duration> {
        self.until(node, true, timeout)
    }

    /// Until the LB sees `node` as `healthy` (or not).
    fn until(&self, node: usize, healthy: bool, timeout: Duration) -> Result<Duration> {
        converge(
            &format!("the load balancer seeing node {node} healthy={healthy}"),
            timeout,
            || Ok(lock(&self.healthy)[node]),
            |&h| h == healthy,
        )
    }
}

impl Drop for CloudLb {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

/// The status code of `GET http://<addr><path>`, or `None`.
fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    let timeout = Duration::from_millis(300);
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = String::new();
    s.read_to_string(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
