//! §6 Internal and external traffic policies, health check node port.
//!
//! Also the small helpers §4-§10 share: a Service's load-balancer status
//! (written as a cloud controller writes it), the cloud load balancer's
//! forwarding (a route on the external client to the node it picks),
//! reading who answered and whom they saw, and probing a health check
//! node port.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, ErrorKind, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

use crate::client::{RequestResult, Transport};
use crate::conformance::cluster::eventually;
use crate::conformance::objects::{http, service, slice, Endpoint, SlicePort, HTTP};
use crate::conformance::{Binaries, Case, Cluster, ClusterSpec, NotRun, Outcome, Speed};
use crate::http_get;
use crate::netns::NetNs;

const SECTION: &str = "6 Traffic policies";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 6, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 206);
const NODE_PORT: u16 = 30610;
const HC_PORT: u16 = 30611;
/// Upstream's hostNetwork backend port in the iTP=Local hostNetwork case.
const HOST_PORT: u16 = 10180;
/// Upstream's rounds of the iTP=Local cases.
const ROUNDS: usize = 5;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "itp_local_pod_to_pod",
            section: SECTION,
            upstream: "iTP=Local Pod to Pod: backend on node0; pod on node0 gets it 5/5, pod on node1 fails 5/5",
            speed: Speed::Fast,
            run: itp_local_pod_to_pod,
        },
        Case {
            id: "itp_local_host_network_client",
            section: SECTION,
            upstream: "iTP=Local hostNetwork client -> Pod: same with hostNetwork clients",
            speed: Speed::Fast,
            run: itp_local_host_network_client,
        },
        Case {
            id: "itp_local_to_host_network_pod",
            section: SECTION,
            upstream: "iTP=Local Pod and Node -> hostNetwork Pod (port 10180, hostname = node name): node0 clients succeed, node1 clients fail, 5 rounds",
            speed: Speed::Fast,
            run: itp_local_to_host_network_pod,
        },
        Case {
            id: "hc_node_port_only_nodes_with_endpoints",
            section: SECTION,
            upstream: "ESIPP only target nodes with endpoints: healthCheckNodePort /healthz 200 only on the node with endpoints, 503 elsewhere (2 consecutive, ~30 s); LB traffic still flows",
            speed: Speed::Fast,
            run: hc_only_nodes_with_endpoints,
        },
        Case {
            id: "etp_updates_local_to_cluster_and_back",
            section: SECTION,
            upstream: "handle updates to ExternalTrafficPolicy: Local->Cluster (HC port stops, nodes without endpoints proxy, source SNATed; 3x2 min); Cluster->Local with the same HC port (source preserved)",
            speed: Speed::Fast,
            run: etp_updates,
        },
        Case {
            id: "esipp_teardown_hc_port_closed",
            section: SECTION,
            upstream: "ESIPP teardown: after type->ClusterIP the HC port fails on all nodes (2 in a row, ~2 min)",
            speed: Speed::Fast,
            run: esipp_teardown,
        },
    ]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}

// ---- helpers shared by §4-§10 ----

/// `yaml` (one Service as [`service`] writes it) with the load-balancer
/// ingress IP a cloud controller writes into its status.
pub(super) fn with_ingress(yaml: &str, lb_ip: Ipv4Addr) -> String {
    let body = yaml.strip_suffix("---\n").unwrap_or(yaml);
    format!("{body}status:\n  loadBalancer:\n    ingress: [{{ip: \"{lb_ip}\"}}]\n---\n")
}

/// The cloud load balancer forwarding `lb_ip` to node `node`: a route on
/// the external client (replacing any earlier one).
pub(super) fn route_lb(cluster: &Cluster, lb_ip: Ipv4Addr, node: usize) -> Result<()> {
    let via = cluster.topo.node_ip(node).to_string();
    cluster
        .topo
        .external_client()
        .ns
        .ip(["route", "replace", &format!("{lb_ip}/32"), "via", &via])
        .with_context(|| format!("routing {lb_ip} via {via} on the external client"))?;
    Ok(())
}

/// The pods that answered, in order; an error naming the first failure.
pub(super) fn names(results: &[RequestResult]) -> Result<Vec<String>> {
    results
        .iter()
        .map(|r| match r {
            Ok(reply) => Ok(reply.backend.clone()),
            Err(e) => bail!("a request failed: {e}"),
        })
        .collect()
}

/// The client addresses the backends saw; an error if a request failed.
pub(super) fn seen_ips(results: &[RequestResult]) -> Result<BTreeSet<Ipv4Addr>> {
    let mut ips = BTreeSet::new();
    for r in results {
        match r {
            Ok(reply) => match reply.seen_peer {
                SocketAddr::V4(peer) => {
                    ips.insert(*peer.ip());
                }
                SocketAddr::V6(peer) => bail!("a backend saw an IPv6 peer {peer}"),
            },
            Err(e) => bail!("a request failed: {e}"),
        }
    }
    Ok(ips)
}

/// Every request failed.
pub(super) fn all_failed(results: &[RequestResult]) -> bool {
    results.iter().all(|r| r.is_err())
}

/// Status code of `GET /healthz` on node `node`'s health check node port
/// `port`, from the external client (as a cloud load balancer probes it);
/// None if the connection fails.
pub(super) fn hc_status(cluster: &Cluster, node: usize, port: u16) -> Option<u16> {
    hc_get(cluster, node, port).map(|(code, _)| code)
}

pub(super) fn hc_get(cluster: &Cluster, node: usize, port: u16) -> Option<(u16, String)> {
    let addr = SocketAddr::from((cluster.topo.node_ip(node), port));
    http_get::get(&cluster.topo.external_client().ns, addr, "/healthz").ok()
}

/// `check` holds `times` times in a row (upstream's "2 consecutive"), with
/// 100 ms between probes.
pub(super) fn consecutive(times: usize, mut check: impl FnMut() -> bool) -> bool {
    for i in 0..times {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !check() {
            return false;
        }
    }
    true
}

/// Rounds of one request from `pod` to `to`, `interval` apart.
pub(super) fn rounds(
    cluster: &Cluster,
    pod: &crate::topology::Pod,
    transport: Transport,
    to: SocketAddr,
    n: usize,
    interval: Duration,
) -> Result<Vec<RequestResult>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if i > 0 {
            std::thread::sleep(interval);
        }
        out.extend(cluster.from_pod(pod, transport, to, 1)?);
    }
    Ok(out)
}

/// A TCP server in a node's own namespace (a hostNetwork pod) answering as
/// the testbed's echo servers do, `"<name> <peer>"`; stopped on drop.
pub(super) struct HostServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostServer {
    pub(super) fn start(ns: &NetNs, name: &str, port: u16) -> Result<HostServer> {
        let listener = ns
            .run(move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
            .with_context(|| format!("binding port {port} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name) = (Arc::clone(&stop), name.to_string());
        let thread = std::thread::Builder::new()
            .name(format!("{name} host server"))
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                            let mut line = String::new();
                            if BufReader::new(&stream).read_line(&mut line).is_ok() {
                                let _ = (&stream).write_all(format!("{name} {peer}\n").as_bytes());
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })?;
        Ok(HostServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---- the scenarios ----

/// The iTP=Local Service of the pod cases: backend a-pod-1 on node-a.
fn itp_local_cluster(bins: &Binaries) -> Result<Cluster> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let backend = &cluster.topo.pods(0)[0];
    cluster.apply(&service(
        "itp-local",
        "ClusterIP",
        VIP,
        &[http(80)],
        "  internalTrafficPolicy: Local\n",
    ))?;
    cluster.apply(&slice(
        "itp-local-1",
        "itp-local",
        &[HTTP],
        &[Endpoint::ready(backend, cluster.topo.node_name(0))],
    ))?;
    Ok(cluster)
}

/// Upstream: pod on node0 gets the backend 5/5, pod on node1 fails each of 5
/// `curl --connect-timeout 5`. Our failures are drops: each request times
/// out after 1 s (no answer from anyone).
fn itp_local_pod_to_pod(bins: &Binaries) -> Result<Outcome> {
    let cluster = itp_local_cluster(bins)?;
    let to = SocketAddr::from((VIP, 80));
    let backend = cluster.topo.pods(0)[0].name.clone();
    let (local, remote) = (cluster.topo.client_pod(0), cluster.topo.client_pod(1));
    let programmed = eventually("node-a's pod served", Duration::from_secs(10), || {
        matches!(
            cluster.from_pod(local, Transport::Tcp, to, 1).as_deref(),
            Ok([Ok(_)])
        )
    })?;
    let near = names(&rounds(
        &cluster,
        local,
        Transport::Tcp,
        to,
        ROUNDS,
        Duration::from_millis(200),
    )?)?;
    ensure!(
        near.iter().all(|n| *n == backend),
        "node-a's pod reached {near:?}, not only {backend}"
    );
    let far = rounds(
        &cluster,
        remote,
        Transport::Tcp,
        to,
        ROUNDS,
        Duration::from_millis(200),
    )?;
    ensure!(all_failed(&far), "node-b's pod was served: {far:?}");
    Ok(Outcome::new(format!(
        "node-a pod: {ROUNDS}/{ROUNDS} from {backend}; node-b pod: {ROUNDS}/{ROUNDS} failed ({:?}); served {:.1} s after the Service",
        far[0].as_ref().err(),
        programmed.as_secs_f64()
    )))
}

/// The same from hostNetwork clients: node processes, balanced at
/// connect() by the agent's socket programs.
fn itp_local_host_network_client(bins: &Binaries) -> Result<Outcome> {
    let cluster = itp_local_cluster(bins)?;
    let to = SocketAddr::from((VIP, 80));
    let backend = cluster.topo.pods(0)[0].name.clone();
    eventually("node-a's host served", Duration::from_secs(10), || {
        matches!(
            cluster.from_node(0, Transport::Tcp, to, 1).as_deref(),
            Ok([Ok(_)])
        )
    })?;
    let near = names(&cluster.from_node(0, Transport::Tcp, to, ROUNDS)?)?;
    ensure!(
        near.iter().all(|n| *n == backend),
        "node-a's host reached {near:?}"
    );
    let far = cluster.from_node(1, Transport::Tcp, to, ROUNDS)?;
    ensure!(all_failed(&far), "node-b's host was served: {far:?}");
    Ok(Outcome::new(format!(
        "node-a hostNetwork client: {ROUNDS}/{ROUNDS} from {backend}; node-b hostNetwork client: {ROUNDS}/{ROUNDS} failed ({:?})",
        far[0].as_ref().err()
    )))
}

/// The backend is a hostNetwork pod on node-a (a server in node-a's own
/// namespace on port 10180 answering with the node's name); pod and
/// hostNetwork clients on node-a succeed, on node-b fail, 5 rounds each.
fn itp_local_to_host_network_pod(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let node_a = cluster.topo.node_name(0).to_string();
    let _server = HostServer::start(cluster.topo.node(0), &node_a, HOST_PORT)?;
    cluster.apply(&service(
        "itp-host",
        "ClusterIP",
        VIP,
        &[crate::conformance::objects::Port {
            name: "host",
            port: 80,
            protocol: "TCP",
            target: "10180",
            node_port: 0,
        }],
        "  internalTrafficPolicy: Local\n",
    ))?;
    let endpoint = Endpoint {
        ip: cluster.topo.node_ip(0),
        ..Endpoint::ready(&cluster.topo.pods(0)[0], &node_a)
    };
    const HOST: SlicePort = SlicePort {
        name: "host",
        port: HOST_PORT,
        protocol: "TCP",
    };
    cluster.apply(&slice("itp-host-1", "itp-host", &[HOST], &[endpoint]))?;
    let to = SocketAddr::from((VIP, 80));
    let pod_a = cluster.topo.client_pod(0);
    eventually("node-a's pod served", Duration::from_secs(10), || {
        matches!(
            cluster.from_pod(pod_a, Transport::Tcp, to, 1).as_deref(),
            Ok([Ok(_)])
        )
    })?;
    let mut figures = Vec::new();
    for (who, results, served) in [
        (
            "node-a pod",
            rounds(
                &cluster,
                pod_a,
                Transport::Tcp,
                to,
                ROUNDS,
                Duration::from_millis(200),
            )?,
            true,
        ),
        (
            "node-a host",
            cluster.from_node(0, Transport::Tcp, to, ROUNDS)?,
            true,
        ),
        (
            "node-b pod",
            rounds(
                &cluster,
                cluster.topo.client_pod(1),
                Transport::Tcp,
                to,
                ROUNDS,
                Duration::from_millis(200),
            )?,
            false,
        ),
        (
            "node-b host",
            cluster.from_node(1, Transport::Tcp, to, ROUNDS)?,
            false,
        ),
    ] {
        if served {
            let by = names(&results).with_context(|| who.to_string())?;
            ensure!(by.iter().all(|n| *n == node_a), "{who}: answered by {by:?}");
            figures.push(format!("{who} {ROUNDS}/{ROUNDS} from {node_a}"));
        } else {
            ensure!(all_failed(&results), "{who} was served: {results:?}");
            figures.push(format!("{who} {ROUNDS}/{ROUNDS} failed"));
        }
    }
    Ok(Outcome::new(figures.join("; ")))
}

/// A LoadBalancer Service, eTP=`policy`, health check port when Local.
fn lb_service(name: &str, local: bool) -> String {
    let extra = if local {
        format!("  externalTrafficPolicy: Local\n  healthCheckNodePort: {HC_PORT}\n")
    } else {
        "  externalTrafficPolicy: Cluster\n".to_string()
    };
    with_ingress(
        &service(
            name,
            "LoadBalancer",
            VIP,
            &[http(80).node_port(NODE_PORT)],
            &extra,
        ),
        LB_IP,
    )
}

/// Upstream probes every node's healthCheckNodePort until the node with
/// endpoints answers 200 and the others 503, twice in a row (~30 s); and
/// the LB still serves. Our LB forwards to node-b, the node with the
/// endpoint; the JSON body must count its one local endpoint.
fn hc_only_nodes_with_endpoints(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let backend = &cluster.topo.pods(1)[0];
    cluster.apply(&lb_service("esipp", true))?;
    cluster.apply(&slice(
        "esipp-1",
        "esipp",
        &[HTTP],
        &[Endpoint::ready(backend, cluster.topo.node_name(1))],
    ))?;
    let took = eventually(
        "HC 200 on node-b, 503 on node-a",
        Duration::from_secs(30),
        || {
            consecutive(2, || {
                hc_status(&cluster, 1, HC_PORT) == Some(200)
                    && hc_status(&cluster, 0, HC_PORT) == Some(503)
            })
        },
    )?;
    let (_, body) = hc_get(&cluster, 1, HC_PORT).context("HC on node-b")?;
    ensure!(
        body.contains("\"localEndpoints\":1") && body.contains("\"name\":\"esipp\""),
        "node-b's HC body: {body}"
    );
    let (_, body_a) = hc_get(&cluster, 0, HC_PORT).context("HC on node-a")?;
    ensure!(
        body_a.contains("\"localEndpoints\":0"),
        "node-a's HC body: {body_a}"
    );
    route_lb(&cluster, LB_IP, 1)?;
    let results = cluster.from_outside(Transport::Tcp, SocketAddr::from((LB_IP, 80)), 20)?;
    let by = names(&results)?;
    ensure!(
        by.iter().all(|n| *n == backend.name),
        "LB answered by {by:?}"
    );
    Ok(Outcome::new(format!(
        "node-b 200 {{localEndpoints:1}}, node-a 503 {{localEndpoints:0}}, twice in a row {:.1} s after the Service (upstream: ~30 s); LB 20/20 served",
        took.as_secs_f64()
    )))
}

/// Upstream: an LB with eTP=Local; set Cluster: the HC node port stops
/// answering, nodes without endpoints proxy nodePort traffic and the
/// source is SNATed (each within 3 x KubeProxyLagTimeout = 6 min); set
/// Local again with the same healthCheckNodePort: the source is kept.
/// Endpoint on node-b; the cloud LB forwards to node-a (no endpoint) in
/// Cluster mode and to node-b in Local mode, as it would follow the HC.
fn etp_updates(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let backend = &cluster.topo.pods(1)[0];
    let external = cluster.topo.external_client().ip;
    let (node_a_ip, node_b_ip) = (cluster.topo.node_ip(0), cluster.topo.node_ip(1));
    cluster.apply(&lb_service("etp", true))?;
    cluster.apply(&slice(
        "etp-1",
        "etp",
        &[HTTP],
        &[Endpoint::ready(backend, cluster.topo.node_name(1))],
    ))?;
    eventually("HC 200 on node-b", Duration::from_secs(10), || {
        hc_status(&cluster, 1, HC_PORT) == Some(200)
    })?;
    route_lb(&cluster, LB_IP, 1)?;
    let lb = SocketAddr::from((LB_IP, 80));
    let kept = seen_ips(&cluster.from_outside(Transport::Tcp, lb, 10)?)?;
    ensure!(kept == BTreeSet::from([external]), "Local: seen {kept:?}");
    // node-a has no endpoint: its nodePort drops under Local.
    let np_a = SocketAddr::from((node_a_ip, NODE_PORT));
    ensure!(
        all_failed(&cluster.from_outside(Transport::Tcp, np_a, 2)?),
        "Local: node-a's nodePort served without a local endpoint"
    );

    // Local -> Cluster.
    cluster.apply(&lb_service("etp", false))?;
    let start = Instant::now();
    let hc_closed = eventually("HC port closed on node-b", Duration::from_secs(360), || {
        hc_status(&cluster, 1, HC_PORT).is_none()
    })?;
    let proxied = eventually(
        "node-a proxies its nodePort",
        Duration::from_secs(360),
        || {
            cluster
                .from_outside(Transport::Tcp, np_a, 1)
                .is_ok_and(|r| matches!(r.as_slice(), [Ok(_)]))
        },
    )?;
    let snat_np = seen_ips(&cluster.from_outside(Transport::Tcp, np_a, 10)?)?;
    ensure!(
        snat_np == BTreeSet::from([node_a_ip]),
        "Cluster: node-a's nodePort: backend saw {snat_np:?}, not node-a"
    );
    route_lb(&cluster, LB_IP, 0)?;
    let snat_lb = seen_ips(&cluster.from_outside(Transport::Tcp, lb, 10)?)?;
    ensure!(
        snat_lb == BTreeSet::from([node_a_ip]),
        "Cluster: LB via node-a: backend saw {snat_lb:?}"
    );
    let to_cluster = start.elapsed();

    // Cluster -> Local, same healthCheckNodePort.
    cluster.apply(&lb_service("etp", true))?;
    let hc_back = eventually("HC 200 on node-b again", Duration::from_secs(360), || {
        hc_status(&cluster, 1, HC_PORT) == Some(200) && hc_status(&cluster, 0, HC_PORT) == Some(503)
    })?;
    route_lb(&cluster, LB_IP, 1)?;
    let preserved = eventually("source preserved again", Duration::from_secs(360), || {
        cluster
            .from_outside(Transport::Tcp, lb, 5)
            .ok()
            .and_then(|r| seen_ips(&r).ok())
            .is_some_and(|ips| ips == BTreeSet::from([external]))
    })?;
    let np_b = SocketAddr::from((node_b_ip, NODE_PORT));
    let kept_np = seen_ips(&cluster.from_outside(Transport::Tcp, np_b, 10)?)?;
    ensure!(
        kept_np == BTreeSet::from([external]),
        "Local again: node-b's nodePort: seen {kept_np:?}"
    );
    Ok(Outcome::new(format!(
        "Local->Cluster: HC port closed in {:.1} s, node-a proxies in {:.1} s, source SNATed to node-a (all in {:.1} s; upstream: 6 min each); Cluster->Local: HC 200/503 in {:.1} s, client IP kept in {:.1} s",
        hc_closed.as_secs_f64(),
        proxied.as_secs_f64(),
        to_cluster.as_secs_f64(),
        hc_back.as_secs_f64(),
        preserved.as_secs_f64() + hc_back.as_secs_f64(),
    )))
}

/// Upstream: an ESIPP LB changed to type ClusterIP; its HC port must fail
/// on every node, twice in a row, within ~2 min.
fn esipp_teardown(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let backend = &cluster.topo.pods(0)[0];
    cluster.apply(&lb_service("teardown", true))?;
    cluster.apply(&slice(
        "teardown-1",
        "teardown",
        &[HTTP],
        &[Endpoint::ready(backend, cluster.topo.node_name(0))],
    ))?;
    eventually(
        "HC port open on both nodes",
        Duration::from_secs(10),
        || {
            hc_status(&cluster, 0, HC_PORT) == Some(200)
                && hc_status(&cluster, 1, HC_PORT) == Some(503)
        },
    )?;
    cluster.apply(&service("teardown", "ClusterIP", VIP, &[http(80)], ""))?;
    let took = eventually(
        "HC port closed on every node",
        Duration::from_secs(120),
        || {
            consecutive(2, || {
                (0..2).all(|n| hc_status(&cluster, n, HC_PORT).is_none())
            })
        },
    )?;
    // The ClusterIP still serves.
    let by = names(&cluster.from_pod(
        cluster.topo.client_pod(1),
        Transport::Tcp,
        SocketAddr::from((VIP, 80)),
        5,
    )?)?;
    ensure!(
        by.iter().all(|n| *n == backend.name),
        "ClusterIP answered by {by:?}"
    );
    Ok(Outcome::new(format!(
        "HC port refused on both nodes (twice in a row) {:.1} s after type -> ClusterIP (upstream: ~2 min); ClusterIP still 5/5",
        took.as_secs_f64()
    )))
}
