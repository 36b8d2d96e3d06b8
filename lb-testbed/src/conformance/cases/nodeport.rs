//! §3 NodePort, externalIPs, type changes and the Networking granular
//! checks (networking.go), and the kube-proxy URLs.
//!
//! Upstream reaches Services by DNS name and by ClusterIP; there is no
//! cluster DNS here, and a name only resolves to the ClusterIP, so every
//! scenario uses the ClusterIP (said once here rather than in each figure).
//! Upstream's bounds are KubeProxyLagTimeout (~2 min) or
//! KubeProxyEndpointLagTimeout (~30 s) per step; we require 5 s per step on
//! a loaded 2-core machine and report what we measured.

pub mod tools;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};

use self::tools::{
    at, endpoint_names, endpoints, node_ports, requests, route_via_node, secs, settle, tcp_echo,
    udp_echo, until_all_by, verify_down, verify_up, Answers, EchoServer, Vantage, CONVERGE, QUICK,
    SHORT, TRIES,
};
use crate::client::Transport;
use crate::conformance::objects::{
    dns, http, service, slice, Endpoint, Port, SlicePort, DNS, HTTP,
};
use crate::conformance::{Binaries, Case, Cluster, ClusterSpec, NotRun, Outcome, Speed};
use crate::http_get;
use crate::stream::{describe_failures, RequestStream};

const SECTION: &str = "3 NodePort";

const fn vip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 3, last)
}

pub fn cases() -> Vec<Case> {
    let case = |id, upstream, run| Case {
        id,
        section: SECTION,
        upstream,
        speed: Speed::Fast,
        run,
    };
    vec![
        case(
            "nodeport_functioning_service",
            "[C] should create a functioning NodePort service (2 pods; reachable via ClusterIP and every node IP:nodePort)",
            functioning_nodeport,
        ),
        case(
            "externalip_not_assigned_to_node",
            "should be possible to connect to a service via ExternalIP when the external IP is not assigned to a node (203.0.113.250:80 from a pod)",
            external_ip_not_on_a_node,
        ),
        case(
            "nodeport_type_update_same_port_different_protocols",
            "should be able to update service type to NodePort listening on same port number but different protocols (ClusterIP -> NodePort TCP/80 -> + UDP/80, two nodePorts)",
            type_update_same_port_different_protocols,
        ),
        case(
            "externalname_to_clusterip",
            "[C] should be able to change the type from ExternalName to ClusterIP (ClusterIP reachable, 2 pods)",
            externalname_to_clusterip,
        ),
        case(
            "externalname_to_nodeport",
            "[C] should be able to change the type from ExternalName to NodePort (ClusterIP and nodePort reachable, 2 pods)",
            externalname_to_nodeport,
        ),
        case(
            "clusterip_to_externalname",
            "[C] should be able to change the type from ClusterIP to ExternalName (the old ClusterIP must go)",
            clusterip_to_externalname,
        ),
        case(
            "nodeport_to_externalname",
            "[C] should be able to change the type from NodePort to ExternalName (the old ClusterIP and nodePort must go)",
            nodeport_to_externalname,
        ),
        case(
            "nodeport_released_on_delete",
            "should release NodePorts on delete (no LISTEN socket on the nodePort within ~2 min; the same nodePort re-creatable)",
            released_on_delete,
        ),
        case(
            "granular_pod_to_service",
            "Granular Checks: Services should function for pod-Service: http / udp (ClusterIP and NodeIP:nodePort, all endpoints seen)",
            granular_pod_to_service,
        ),
        case(
            "granular_node_to_service",
            "Granular Checks: Services should function for node-Service: http / udp (from a hostNetwork pod, all endpoints seen)",
            granular_node_to_service,
        ),
        case(
            "granular_endpoint_to_service",
            "Granular Checks: Services should function for endpoint-Service: http / udp (from an endpoint itself, hairpin, all endpoints incl. itself)",
            granular_endpoint_to_service,
        ),
        case(
            "granular_multiple_services_same_selector",
            "Granular Checks: Services should function for multiple endpoint-Services with same selector (delete the first; the second's ClusterIP and nodePort keep working)",
            granular_multiple_services,
        ),
        case(
            "granular_update_endpoints",
            "Granular Checks: Services should update endpoints: http / udp (delete a pod; exactly the remaining set answers)",
            granular_update_endpoints,
        ),
        case(
            "granular_update_nodeport",
            "Granular Checks: Services should update nodePort: http / udp [Slow] (delete the NodePort Service; 10 tries from a node get zero responses)",
            granular_update_nodeport,
        ),
        case(
            "granular_basic_nodeport_udp",
            "Granular Checks: Services should function for basic nodePort: udp functionality (dial from a node, all endpoints)",
            granular_basic_nodeport_udp,
        ),
        case(
            "granular_client_ip_affinity",
            "Granular Checks: Services should function for client IP based session affinity: http / udp (~10 requests, exactly 1 endpoint)",
            granular_session_affinity,
        ),
        case(
            "granular_large_requests",
            "Granular Checks: Services should be able to handle large requests: http (2000 bytes) / udp (2000-byte datagram), echoed intact via ClusterIP",
            granular_large_requests,
        ),
        case(
            "granular_hostnetwork_endpoints",
            "Granular Checks: Services should function for service endpoints using hostNetwork (pod and node clients, http + udp, ClusterIP + nodePort, large requests)",
            granular_hostnetwork_endpoints,
        ),
        case(
            "kube_proxy_urls",
            "should check kube-proxy urls (hostNetwork GET :10256/healthz 200 with lastUpdated; :10249/proxyMode 200)",
            kube_proxy_urls,
        ),
    ]
}

pub fn not_run() -> Vec<NotRun> {
    vec![
        NotRun {
            section: SECTION,
            upstream: "Granular Checks: Services should function for pod-Service: sctp / endpoint-Service: sctp [Feature:SCTPConnectivity]",
            reason: "no SCTP here: this kernel is built without it (CONFIG_IP_SCTP is not set, so no SCTP socket can be opened in any namespace), and the agent serves TCP and UDP only (an SCTP Service port is reported as an unsupported protocol and not programmed: model/tests.rs)",
        },
        NotRun {
            section: SECTION,
            upstream: "dual_stack.go: the granular checks on the secondary-family ClusterIP / NodeIP",
            reason: "the agent does not serve IPv6 yet: the datapath is IPv4-only and the IPv6 half of a dual-stack Service is logged as not supported (docs/kube-proxy-replacement.md, Status); the IPv4 half is what every other scenario here exercises",
        },
        NotRun {
            section: SECTION,
            upstream: "[C] ClusterIP / NodePort -> ExternalName: the name resolves (CNAME) via cluster DNS",
            reason: "answered by cluster DNS (CoreDNS), not by the Service proxy, and there is no DNS here; the proxy's half (the old ClusterIP and nodePort must stop being served) is run as clusterip_to_externalname and nodeport_to_externalname",
        },
    ]
}

/// Upstream: NodePort 80 -> 9376, two pods; reachable by name, ClusterIP
/// and every node's InternalIP:nodePort. We check each from a pod, a
/// hostNetwork process and the external client, 20 requests each, both
/// pods seen on every path.
fn functioning_nodeport(bins: &Binaries) -> Result<Outcome> {
    const NP: u16 = 30310;
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let start = Instant::now();
    cluster.apply(&service(
        "np",
        "NodePort",
        vip(10),
        &[http(80).node_port(NP)],
        "",
    ))?;
    cluster.apply(&slice("np-1", "np", &[HTTP], &endpoints(&cluster, 1)))?;
    let expected = endpoint_names(&cluster, 1);
    let pod = Vantage::Pod(cluster.topo.client_pod(1));
    let first = until_all_by(
        &cluster,
        pod,
        Transport::Tcp,
        at(vip(10), 80),
        20,
        &expected,
        CONVERGE,
    )?;
    let mut checks = Vec::new();
    for from in [pod, Vantage::Node(0), Vantage::Outside] {
        if !matches!(from, Vantage::Outside) {
            checks.push((from, Transport::Tcp, at(vip(10), 80)));
        }
        for to in node_ports(&cluster, NP) {
            checks.push((from, Transport::Tcp, to));
        }
    }
    let all = verify_up(&cluster, &checks, &expected, 20, start)?;
    Ok(Outcome::new(format!(
        "ClusterIP:80 and both node IPs:{NP} from a pod, a hostNetwork process and the external client: 20/20 answered on each of the {} paths, both pods seen on each; first path served {} after the objects, all verified by {} (upstream allows ~2 min)",
        checks.len(),
        secs(first),
        secs(all)
    )))
}

/// Upstream: externalIPs [203.0.113.250], an address no node owns; a pod
/// reaches it on :80. We also reach it from a hostNetwork process and from
/// outside (routed to a node, as the network would).
fn external_ip_not_on_a_node(bins: &Binaries) -> Result<Outcome> {
    const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 250);
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    cluster.apply(&service(
        "ext",
        "ClusterIP",
        vip(11),
        &[http(80)],
        &format!("  externalIPs: [\"{EXTERNAL}\"]\n"),
    ))?;
    cluster.apply(&slice("ext-1", "ext", &[HTTP], &endpoints(&cluster, 1)))?;
    route_via_node(&cluster, EXTERNAL, 1)?;
    let start = Instant::now();
    let expected = endpoint_names(&cluster, 1);
    let to = at(EXTERNAL, 80);
    let from_pod = until_all_by(
        &cluster,
        Vantage::Pod(cluster.topo.client_pod(0)),
        Transport::Tcp,
        to,
        20,
        &expected,
        CONVERGE,
    )?;
    let others = verify_up(
        &cluster,
        &[
            (Vantage::Node(0), Transport::Tcp, to),
            (Vantage::Outside, Transport::Tcp, to),
        ],
        &expected,
        20,
        start,
    )?;
    // No namespace of the cluster owns the address.
    for i in 0..cluster.topo.nodes() {
        let addrs = cluster.topo.node(i).ip(["-4", "-br", "addr"])?;
        ensure!(
            !addrs.contains(&EXTERNAL.to_string()),
            "{} owns {EXTERNAL}",
            cluster.topo.node_name(i)
        );
    }
    Ok(Outcome::new(format!(
        "{EXTERNAL}:80 (owned by no node) from a pod: 20/20, both pods, {} after the objects (upstream: ~2 min); also 20/20 from a hostNetwork process and from outside (routed via node-b), all verified by {}",
        secs(from_pod),
        secs(others)
    )))
}

/// Upstream: ClusterIP TCP/80 -> NodePort TCP/80 -> add UDP/80; two
/// distinct nodePorts; TCP and UDP both reachable.
fn type_update_same_port_different_protocols(bins: &Binaries) -> Result<Outcome> {
    const NP_TCP: u16 = 30312;
    const NP_UDP: u16 = 30313;
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let expected = endpoint_names(&cluster, 1);
    let pod = Vantage::Pod(cluster.topo.client_pod(0));
    let (tcp, udp) = (at(vip(12), 80), at(vip(12), 80));
    cluster.apply(&slice(
        "proto-1",
        "proto",
        &[HTTP, DNS],
        &endpoints(&cluster, 1),
    ))?;
    cluster.apply(&service("proto", "ClusterIP", vip(12), &[http(80)], ""))?;
    let t1 = until_all_by(&cluster, pod, Transport::Tcp, tcp, 20, &expected, CONVERGE)?;

    let start = Instant::now();
    cluster.apply(&service(
        "proto",
        "NodePort",
        vip(12),
        &[http(80).node_port(NP_TCP)],
        "",
    ))?;
    let mut checks: Vec<_> = node_ports(&cluster, NP_TCP)
        .into_iter()
        .map(|to| (Vantage::Outside, Transport::Tcp, to))
        .collect();
    let t2 = verify_up(&cluster, &checks, &expected, 20, start)?;

    let start = Instant::now();
    cluster.apply(&service(
        "proto",
        "NodePort",
        vip(12),
        &[http(80).node_port(NP_TCP), dns(80).node_port(NP_UDP)],
        "",
    ))?;
    checks.push((pod, Transport::Tcp, tcp));
    checks.push((pod, Transport::Udp, udp));
    for to in node_ports(&cluster, NP_UDP) {
        checks.push((Vantage::Outside, Transport::Udp, to));
    }
    let t3 = verify_up(&cluster, &checks, &expected, 20, start)?;
    Ok(Outcome::new(format!(
        "ClusterIP TCP/80 served in {}; as NodePort TCP {NP_TCP} on both nodes (from outside) by {}; with UDP/80 added (nodePort {NP_UDP}): ClusterIP TCP+UDP/80 from a pod and both nodes' TCP {NP_TCP} + UDP {NP_UDP} from outside, 20/20 each, both pods, all verified by {} after the change (upstream: ~2 min per step)",
        secs(t1),
        secs(t2),
        secs(t3)
    )))
}

/// An ExternalName Service: no cluster IP (the API server clears it).
fn external_name(name: &str, ports: &[Port]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  type: ExternalName\n  externalName: web.lb.invalid\n  ports:\n"
    );
    for p in ports {
        yaml.push_str(&format!(
            "  - {{name: {}, port: {}, protocol: {}, targetPort: {}}}\n",
            p.name, p.port, p.protocol, p.target
        ));
    }
    yaml.push_str("---\n");
    yaml
}

fn externalname_to_clusterip(bins: &Binaries) -> Result<Outcome> {
    externalname_to(bins, "ClusterIP", 14, 0)
}

fn externalname_to_nodeport(bins: &Binaries) -> Result<Outcome> {
    externalname_to(bins, "NodePort", 15, 30315)
}

/// Upstream: an ExternalName Service becomes `type_` (with a selector
/// matching 2 pods); its ClusterIP (and nodePort) must become reachable.
/// The agent leaves ExternalName Services alone, as kube-proxy does; the
/// EndpointSlice is there from the start, so only the type change can make
/// the Service served.
fn externalname_to(bins: &Binaries, type_: &str, last: u8, np: u16) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let expected = endpoint_names(&cluster, 1);
    let pod = Vantage::Pod(cluster.topo.client_pod(0));
    cluster.apply(&external_name("ename", &[http(80)]))?;
    cluster.apply(&slice("ename-1", "ename", &[HTTP], &endpoints(&cluster, 1)))?;
    let start = Instant::now();
    let port = if np == 0 {
        http(80)
    } else {
        http(80).node_port(np)
    };
    cluster.apply(&service("ename", type_, vip(last), &[port], ""))?;
    let mut checks = vec![
        (pod, Transport::Tcp, at(vip(last), 80)),
        (Vantage::Node(1), Transport::Tcp, at(vip(last), 80)),
    ];
    if np != 0 {
        for to in node_ports(&cluster, np) {
            checks.push((Vantage::Outside, Transport::Tcp, to));
        }
    }
    let took = verify_up(&cluster, &checks, &expected, 20, start)?;
    let what = if np == 0 {
        "ClusterIP:80".to_string()
    } else {
        format!("ClusterIP:80 and both node IPs:{np}")
    };
    Ok(Outcome::new(format!(
        "ExternalName -> {type_} (its EndpointSlice there all along): {what} answered 20/20 by both pods from a pod{}, all verified by {} after the change (upstream: ~2 min)",
        if np != 0 { ", a hostNetwork process and outside" } else { " and a hostNetwork process" },
        secs(took)
    )))
}

fn clusterip_to_externalname(bins: &Binaries) -> Result<Outcome> {
    to_externalname(bins, "ClusterIP", 16, 0)
}

fn nodeport_to_externalname(bins: &Binaries) -> Result<Outcome> {
    to_externalname(bins, "NodePort", 17, 30317)
}

/// Upstream: a served `type_` Service becomes ExternalName (clusterIP
/// cleared); the old VIP (and nodePort) must stop being served. We keep
/// its EndpointSlice in place (stricter: only the type says not to serve).
fn to_externalname(bins: &Binaries, type_: &str, last: u8, np: u16) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let expected = endpoint_names(&cluster, 1);
    let pod = Vantage::Pod(cluster.topo.client_pod(0));
    let port = if np == 0 {
        http(80)
    } else {
        http(80).node_port(np)
    };
    cluster.apply(&service("ename", type_, vip(last), &[port], ""))?;
    cluster.apply(&slice("ename-1", "ename", &[HTTP], &endpoints(&cluster, 1)))?;
    let mut checks = vec![
        (pod, Transport::Tcp, at(vip(last), 80)),
        (Vantage::Node(1), Transport::Tcp, at(vip(last), 80)),
    ];
    if np != 0 {
        for to in node_ports(&cluster, np) {
            checks.push((Vantage::Outside, Transport::Tcp, to));
        }
    }
    verify_up(&cluster, &checks, &expected, 20, Instant::now())?;
    let start = Instant::now();
    cluster.apply(&external_name("ename", &[http(80)]))?;
    let gone = verify_down(&cluster, &checks, 10, start)?;
    // And it stays gone.
    std::thread::sleep(Duration::from_secs(1));
    for &(from, transport, to) in &checks {
        let a = Answers::of(&requests(&cluster, from, transport, to, 10, SHORT)?);
        ensure!(a.ok == 0, "{to} answered again after the change: {a:?}");
    }
    let what = if np == 0 {
        "the old ClusterIP:80".to_string()
    } else {
        format!("the old ClusterIP:80 and both node IPs:{np}")
    };
    Ok(Outcome::new(format!(
        "{type_} -> ExternalName (EndpointSlice left in place): {what} answered 0/10 from a pod{}, all verified by {} after the change, and still 0/10 a second later (upstream: ~2 min)",
        if np != 0 { ", a hostNetwork process and outside" } else { " and a hostNetwork process" },
        secs(gone)
    )))
}

/// Sockets listening on `port` (TCP or UDP) in node `i`, per `ss`.
fn listening(cluster: &Cluster, i: usize, port: u16) -> Result<String> {
    let filter = format!("sport = :{port}");
    let tcp = cluster.topo.node(i).exec(["ss", "-Htanl", &filter])?;
    let udp = cluster.topo.node(i).exec(["ss", "-Huanl", &filter])?;
    Ok(format!("{tcp}{udp}").trim().to_string())
}

/// Upstream: after the NodePort Service is deleted, `ss` on the node must
/// show no LISTEN socket on its nodePort (kube-proxy used to hold one)
/// within ~2 min, and the same nodePort must be usable again. The agent
/// never opens a socket for a nodePort, so we require none while the
/// Service exists either; and that traffic stops, and comes back with the
/// re-created Service.
fn released_on_delete(bins: &Binaries) -> Result<Outcome> {
    const NP: u16 = 30318;
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let expected = endpoint_names(&cluster, 1);
    let create = || -> Result<()> {
        cluster.apply(&service(
            "rel",
            "NodePort",
            vip(18),
            &[http(80).node_port(NP)],
            "",
        ))?;
        cluster.apply(&slice("rel-1", "rel", &[HTTP], &endpoints(&cluster, 1)))
    };
    let start = Instant::now();
    create()?;
    let mut checks: Vec<_> = node_ports(&cluster, NP)
        .into_iter()
        .map(|to| (Vantage::Outside, Transport::Tcp, to))
        .collect();
    checks.push((
        Vantage::Node(0),
        Transport::Tcp,
        at(cluster.topo.node_ip(0), NP),
    ));
    verify_up(&cluster, &checks, &expected, 20, start)?;
    for i in 0..2 {
        let held = listening(&cluster, i, NP)?;
        ensure!(
            held.is_empty(),
            "a socket on {NP} while the Service exists: {held}"
        );
    }
    let start = Instant::now();
    cluster.delete_service("rel");
    cluster.delete_slice("rel-1");
    let closed = verify_down(&cluster, &checks, 10, start)?;
    for i in 0..2 {
        let held = listening(&cluster, i, NP)?;
        ensure!(held.is_empty(), "a socket on {NP} after the delete: {held}");
    }
    let start = Instant::now();
    create()?;
    let again = verify_up(&cluster, &checks, &expected, 20, start)?;
    Ok(Outcome::new(format!(
        "no socket on nodePort {NP} on either node (ss), neither while the Service existed nor after its delete (upstream: none within ~2 min of the delete); 0/10 answered on both nodes' nodePort (from outside and a hostNetwork process) by {} after the delete; the same nodePort served again 20/20 by {} after re-creating",
        secs(closed),
        secs(again)
    )))
}

/// networking.go's NetworkingTestConfig: endpoints on both nodes, a
/// NodePort Service with http 80 and udp 90.
const G_NP_HTTP: u16 = 30320;
const G_NP_UDP: u16 = 30321;

/// The cluster and when its objects were applied.
fn granular_cluster(bins: &Binaries) -> Result<(Cluster, Instant)> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 2))?;
    let start = Instant::now();
    cluster.apply(&granular_service("netexec", 20, G_NP_HTTP, G_NP_UDP))?;
    cluster.apply(&slice(
        "netexec-1",
        "netexec",
        &[HTTP, DNS],
        &endpoints(&cluster, 2),
    ))?;
    Ok((cluster, start))
}

fn granular_service(name: &str, last: u8, np_http: u16, np_udp: u16) -> String {
    service(
        name,
        "NodePort",
        vip(last),
        &[http(80).node_port(np_http), dns(90).node_port(np_udp)],
        "",
    )
}

/// ClusterIP http/udp and every node IP's nodePorts, from `from`.
fn granular_checks<'a>(
    cluster: &Cluster,
    from: Vantage<'a>,
    last: u8,
    np_http: u16,
    np_udp: u16,
) -> Vec<(Vantage<'a>, Transport, SocketAddr)> {
    let mut checks = vec![
        (from, Transport::Tcp, at(vip(last), 80)),
        (from, Transport::Udp, at(vip(last), 90)),
    ];
    for i in 0..cluster.topo.nodes() {
        let ip = cluster.topo.node_ip(i);
        checks.push((from, Transport::Tcp, at(ip, np_http)));
        checks.push((from, Transport::Udp, at(ip, np_udp)));
    }
    checks
}

/// Upstream dials the ClusterIP and a NodeIP:nodePort from the test pod
/// and expects every endpoint's hostname. We dial both nodes' nodePorts.
fn granular_pod_to_service(bins: &Binaries) -> Result<Outcome> {
    let (cluster, start) = granular_cluster(bins)?;
    let from = Vantage::Pod(cluster.topo.client_pod(0));
    let checks = granular_checks(&cluster, from, 20, G_NP_HTTP, G_NP_UDP);
    let took = verify_up(
        &cluster,
        &checks,
        &endpoint_names(&cluster, 2),
        TRIES,
        start,
    )?;
    Ok(Outcome::new(format!(
        "from a pod: ClusterIP http:80/udp:90 and both node IPs' nodePorts http/udp: {TRIES}/{TRIES} answered on each of {} paths, all 4 endpoints (2 per node) seen on each, all verified by {} after the objects (upstream: ~2 min)",
        checks.len(),
        secs(took)
    )))
}

/// The same from hostNetwork processes of both nodes.
fn granular_node_to_service(bins: &Binaries) -> Result<Outcome> {
    let (cluster, start) = granular_cluster(bins)?;
    let mut checks = granular_checks(&cluster, Vantage::Node(0), 20, G_NP_HTTP, G_NP_UDP);
    checks.extend(granular_checks(
        &cluster,
        Vantage::Node(1),
        20,
        G_NP_HTTP,
        G_NP_UDP,
    ));
    let took = verify_up(
        &cluster,
        &checks,
        &endpoint_names(&cluster, 2),
        TRIES,
        start,
    )?;
    // A peer's nodePort is balanced at connect(), as the ClusterIP is: the
    // backend sees node-b itself, never node-a's SNAT. (Left to node-a, a
    // connection DNATed to its local pod keeps node-b's address and port,
    // and the same port towards the ClusterIP's pick of that pod would
    // meet the first connection's TIME_WAIT there.)
    // The agent learns its peers from their Node objects on its next tick.
    let peer_np = at(cluster.topo.node_ip(0), G_NP_HTTP);
    let balanced = Instant::now();
    loop {
        let replies = cluster.from_node(1, Transport::Tcp, peer_np, TRIES)?;
        let snat: Vec<_> = replies
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|r| r.seen_peer.ip() == std::net::IpAddr::V4(cluster.topo.node_ip(0)))
            .map(|r| format!("{} saw {}", r.backend, r.seen_peer))
            .collect();
        let answered = replies.iter().filter(|r| r.is_ok()).count();
        if answered == TRIES && snat.is_empty() {
            break;
        }
        ensure!(
            balanced.elapsed() < CONVERGE,
            "node-b -> node-a's nodePort {peer_np} not balanced at connect() within {CONVERGE:?}: {answered}/{TRIES} answered; SNATed by node-a: {snat:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Outcome::new(format!(
        "from hostNetwork processes on both nodes: ClusterIP http/udp and both node IPs' nodePorts http/udp: {TRIES}/{TRIES} on each of {} paths, all 4 endpoints seen on each, all verified by {} after the objects (upstream: ~2 min); the other node's nodePort is balanced at connect() ({TRIES}/{TRIES} with the node's own address, none SNATed by the other node)",
        checks.len(),
        secs(took)
    )))
}

/// From an endpoint pod itself: it must see every endpoint, itself
/// included (hairpin through the ClusterIP and through the nodePorts).
fn granular_endpoint_to_service(bins: &Binaries) -> Result<Outcome> {
    let (cluster, start) = granular_cluster(bins)?;
    let own = &cluster.topo.pods(0)[0];
    let checks = granular_checks(&cluster, Vantage::Pod(own), 20, G_NP_HTTP, G_NP_UDP);
    let expected = endpoint_names(&cluster, 2);
    ensure!(expected.contains(&own.name));
    let took = verify_up(&cluster, &checks, &expected, TRIES, start)?;
    Ok(Outcome::new(format!(
        "from endpoint {}: ClusterIP http/udp and both nodes' nodePorts http/udp: {TRIES}/{TRIES} on each of {} paths, all 4 endpoints seen on each, itself included (hairpin), all verified by {} after the objects (upstream: ~2 min)",
        own.name,
        checks.len(),
        secs(took)
    )))
}

/// Upstream: a second NodePort Service with the same selector; after the
/// first is deleted, the second's ClusterIP and nodePort keep working.
fn granular_multiple_services(bins: &Binaries) -> Result<Outcome> {
    const NP2_HTTP: u16 = 30322;
    const NP2_UDP: u16 = 30323;
    let (cluster, start) = granular_cluster(bins)?;
    cluster.apply(&granular_service("netexec-2", 21, NP2_HTTP, NP2_UDP))?;
    cluster.apply(&slice(
        "netexec-2-1",
        "netexec-2",
        &[HTTP, DNS],
        &endpoints(&cluster, 2),
    ))?;
    let expected = endpoint_names(&cluster, 2);
    let pod = Vantage::Pod(cluster.topo.client_pod(0));
    let first = granular_checks(&cluster, pod, 20, G_NP_HTTP, G_NP_UDP);
    let mut second = granular_checks(&cluster, pod, 21, NP2_HTTP, NP2_UDP);
    second.push((
        Vantage::Outside,
        Transport::Tcp,
        at(cluster.topo.node_ip(0), NP2_HTTP),
    ));
    second.push((
        Vantage::Outside,
        Transport::Udp,
        at(cluster.topo.node_ip(1), NP2_UDP),
    ));
    verify_up(&cluster, &first, &expected, TRIES, start)?;
    verify_up(&cluster, &second, &expected, TRIES, start)?;
    // New connections to the second's ClusterIP, every 20 ms, across the
    // delete of the first: none may fail.
    let stream = RequestStream::start(
        cluster.topo.client_pod(1),
        vip(21),
        80,
        Duration::from_millis(20),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    cluster.delete_service("netexec");
    cluster.delete_slice("netexec-1");
    let first_paths = [
        (pod, Transport::Tcp, at(vip(20), 80)),
        (pod, Transport::Tcp, at(cluster.topo.node_ip(0), G_NP_HTTP)),
    ];
    let gone = verify_down(&cluster, &first_paths, 5, start)?;
    std::thread::sleep(Duration::from_millis(300));
    let outcomes = stream.stop();
    ensure!(
        outcomes.len() > 20 && outcomes.iter().all(|o| o.result.is_ok()),
        "the second Service during the delete of the first: {}",
        describe_failures(&outcomes, start)
    );
    let took = verify_up(&cluster, &second, &expected, TRIES, start)?;
    Ok(Outcome::new(format!(
        "two NodePort Services over the same 4 endpoints; deleting the first (its ClusterIP and nodePort unanswered by {} after the delete): {n}/{n} new connections to the second's ClusterIP succeeded across it, and afterwards its ClusterIP http/udp and nodePorts http/udp on both nodes (from a pod and outside) answered {TRIES}/{TRIES} on each of {} paths, all 4 endpoints (verified by {} after the delete)",
        secs(gone),
        second.len(),
        secs(took),
        n = outcomes.len()
    )))
}

/// Upstream deletes one netexec pod; afterwards MaxTries dials must return
/// exactly the remaining set. We also make 100 more requests on each path:
/// the removed endpoint must never answer.
fn granular_update_endpoints(bins: &Binaries) -> Result<Outcome> {
    let (cluster, start) = granular_cluster(bins)?;
    let pod = Vantage::Pod(cluster.topo.client_pod(1));
    let checks = granular_checks(&cluster, pod, 20, G_NP_HTTP, G_NP_UDP);
    verify_up(
        &cluster,
        &checks,
        &endpoint_names(&cluster, 2),
        TRIES,
        start,
    )?;
    let removed = &cluster.topo.pods(0)[0];
    let remaining: Vec<Endpoint> = endpoints(&cluster, 2)
        .into_iter()
        .filter(|e| e.ip != removed.ip)
        .collect();
    let mut expected = endpoint_names(&cluster, 2);
    expected.remove(&removed.name);
    let start = Instant::now();
    cluster.apply(&slice("netexec-1", "netexec", &[HTTP, DNS], &remaining))?;
    let took = verify_up(&cluster, &checks, &expected, TRIES, start)?;
    // 3 s per request, not 1: now and then (1 in ~600, twice in four runs
    // on a loaded 2-core machine) one connection took over a second, as a
    // SYN retransmission does; the cause is not pinned down yet. What this
    // checks is who answers: never the removed pod, every try answered.
    for &(from, transport, to) in &checks {
        let a = Answers::of(&requests(
            &cluster,
            from,
            transport,
            to,
            100,
            Duration::from_secs(3),
        )?);
        ensure!(
            a.all_by(&expected),
            "after {} left, {transport:?} {to}: {a:?}",
            removed.name
        );
    }
    Ok(Outcome::new(format!(
        "after {} left: exactly the 3 remaining endpoints, {TRIES}/{TRIES}, on ClusterIP http/udp and both nodePorts http/udp ({} paths), all verified by {} after the change (upstream: ~2 min), then 100/100 more on each path, none by {}",
        removed.name,
        checks.len(),
        secs(took),
        removed.name
    )))
}

/// Upstream [Slow]: delete the NodePort Service; 10 dials from a node must
/// get zero responses. Fast here: the close is measured, not waited for.
/// UDP from a connected socket, which hears the ICMP error at once
/// instead of waiting out a timeout per try.
fn granular_update_nodeport(bins: &Binaries) -> Result<Outcome> {
    let (cluster, start) = granular_cluster(bins)?;
    let ip = |i| cluster.topo.node_ip(i);
    let up: Vec<_> = (0..2)
        .flat_map(|i| {
            [
                (Vantage::Node(0), Transport::Tcp, at(ip(i), G_NP_HTTP)),
                (Vantage::Node(0), Transport::Udp, at(ip(i), G_NP_UDP)),
            ]
        })
        .collect();
    verify_up(&cluster, &up, &endpoint_names(&cluster, 2), TRIES, start)?;
    let start = Instant::now();
    cluster.delete_service("netexec");
    cluster.delete_slice("netexec-1");
    let mut down: Vec<_> = (0..2)
        .flat_map(|i| {
            [
                (Vantage::Node(0), Transport::Tcp, at(ip(i), G_NP_HTTP)),
                (
                    Vantage::Node(0),
                    Transport::UdpConnected,
                    at(ip(i), G_NP_UDP),
                ),
            ]
        })
        .collect();
    down.push((Vantage::Outside, Transport::Tcp, at(ip(0), G_NP_HTTP)));
    down.push((
        Vantage::Outside,
        Transport::UdpConnected,
        at(ip(1), G_NP_UDP),
    ));
    let took = verify_down(&cluster, &down, 10, start)?;
    Ok(Outcome::new(format!(
        "10 tries got zero responses on both nodes' http and udp nodePorts, from a hostNetwork process and from outside, all verified by {} after the delete (upstream: [Slow], up to ~2 min)",
        secs(took)
    )))
}

/// Upstream dials the udp nodePort from a node and expects all endpoints.
fn granular_basic_nodeport_udp(bins: &Binaries) -> Result<Outcome> {
    let (cluster, start) = granular_cluster(bins)?;
    let checks: Vec<_> = (0..2)
        .flat_map(|from| {
            (0..2).map(move |i| {
                (
                    Vantage::Node(from),
                    Transport::Udp,
                    at(crate::multinode::plan::node_ip(i), G_NP_UDP),
                )
            })
        })
        .collect();
    let took = verify_up(
        &cluster,
        &checks,
        &endpoint_names(&cluster, 2),
        TRIES,
        start,
    )?;
    Ok(Outcome::new(format!(
        "udp nodePort {G_NP_UDP} of both nodes, dialled from hostNetwork processes on both nodes: {TRIES}/{TRIES} on each of 4 paths, all 4 endpoints seen on each, all verified by {} after the objects (upstream: ~2 min)",
        secs(took)
    )))
}

/// Upstream: SessionAffinityChecks (~10) requests to the ClientIP-affinity
/// Service must reach exactly one endpoint. We make 30 per protocol from
/// two pods, and also check that the same endpoints without affinity are
/// spread (so the one endpoint is the affinity's doing).
fn granular_session_affinity(bins: &Binaries) -> Result<Outcome> {
    let (cluster, _) = granular_cluster(bins)?;
    let start = Instant::now();
    cluster.apply(&service(
        "affinity",
        "ClusterIP",
        vip(22),
        &[http(80), dns(90)],
        "  sessionAffinity: ClientIP\n",
    ))?;
    cluster.apply(&slice(
        "affinity-1",
        "affinity",
        &[HTTP, DNS],
        &endpoints(&cluster, 2),
    ))?;
    let mut slowest = Duration::ZERO;
    let mut picked = Vec::new();
    for from in [cluster.topo.client_pod(0), cluster.topo.client_pod(1)] {
        for (transport, port) in [(Transport::Tcp, 80), (Transport::Udp, 90)] {
            let mut by = BTreeSet::new();
            let to = at(vip(22), port);
            let begun = start.elapsed();
            let took = settle(
                &format!(
                    "30 {transport:?} requests from {} answered by one endpoint",
                    from.name
                ),
                CONVERGE,
                || {
                    let r = requests(&cluster, Vantage::Pod(from), transport, to, 1, QUICK)?;
                    Ok(r[0].is_ok())
                },
                || {
                    requests(
                        &cluster,
                        Vantage::Pod(from),
                        transport,
                        to,
                        30,
                        Duration::from_secs(1),
                    )
                    .map(|r| Answers::of(&r))
                },
                |a| {
                    by = a.by.clone();
                    a.failed == 0 && a.by.len() == 1
                },
            )?;
            slowest = slowest.max(begun + took);
            picked.push(format!(
                "{} {transport:?} -> {}",
                from.name,
                by.iter().next().map_or("", String::as_str)
            ));
        }
    }
    // Without affinity the same endpoints are spread.
    let spread = Answers::of(&requests(
        &cluster,
        Vantage::Pod(cluster.topo.client_pod(0)),
        Transport::Tcp,
        at(vip(20), 80),
        30,
        Duration::from_secs(1),
    )?);
    ensure!(
        spread.by.len() > 1,
        "without affinity one endpoint took all: {spread:?}"
    );
    Ok(Outcome::new(format!(
        "30/30 requests to one endpoint per client and protocol ({}), settled within {} of the Service, where the same endpoints without affinity gave {} distinct in 30",
        picked.join(", "),
        secs(slowest),
        spread.by.len()
    )))
}

/// The echo port of the large-request checks (an [`EchoServer`] per pod).
const ECHO_PORT: u16 = 8082;
const ECHO: SlicePort = SlicePort {
    name: "echo",
    port: ECHO_PORT,
    protocol: "TCP",
};
const fn echo(port: u16) -> Port {
    Port {
        name: "echo",
        port,
        protocol: "TCP",
        target: "echo",
        node_port: 0,
    }
}

/// `n` large requests of each kind from `from` to `to_tcp` / `to_udp`, each
/// echoed intact; the backends seen.
fn large_requests(
    from: &crate::topology::Pod,
    to_tcp: SocketAddr,
    to_udp: SocketAddr,
    n: usize,
) -> Result<Vec<Result<String, String>>> {
    // Upstream's payloads: 2000 bytes of "42" repeated, of "nooo" (ours
    // "no" then "o"s) for UDP.
    let tcp_payload = b"42".repeat(1000);
    let mut udp_payload = b"n".to_vec();
    udp_payload.resize(2000, b'o');
    from.ns.run(move || {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(tcp_echo(to_tcp, &tcp_payload, Duration::from_secs(1)));
            out.push(udp_echo(to_udp, &udp_payload, Duration::from_secs(1)));
        }
        out
    })
}

/// Upstream: a 2000-byte http request and a 2000-byte UDP datagram, echoed
/// intact through the ClusterIP. The datagram is larger than the 1500-byte
/// MTU, so it crosses as IPv4 fragments.
fn granular_large_requests(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 2))?;
    let _echo: Vec<EchoServer> = cluster
        .topo
        .all_pods()
        .iter()
        .map(|p| EchoServer::start(&p.ns, &p.name, ECHO_PORT, 0))
        .collect::<Result<_>>()?;
    cluster.apply(&service(
        "large",
        "ClusterIP",
        vip(23),
        &[echo(80), dns(90)],
        "",
    ))?;
    cluster.apply(&slice(
        "large-1",
        "large",
        &[ECHO, DNS],
        &endpoints(&cluster, 2),
    ))?;
    let from = cluster.topo.client_pod(0);
    let (tcp, udp) = (at(vip(23), 80), at(vip(23), 90));
    let took = settle(
        "a large request echoed",
        CONVERGE,
        || {
            let payload = b"42".repeat(1000);
            Ok(from.ns.run(move || tcp_echo(tcp, &payload, QUICK))?.is_ok())
        },
        || large_requests(from, tcp, udp, 1),
        |r| r.iter().all(|x| x.is_ok()),
    )?;
    const N: usize = 20;
    let results = large_requests(from, tcp, udp, N)?;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure!(
        failed.is_empty(),
        "{} of {} large requests failed: {:?}",
        failed.len(),
        results.len(),
        failed
    );
    let by: BTreeSet<_> = results.iter().flatten().collect();
    ensure!(by.len() > 1, "one endpoint answered all: {by:?}");
    Ok(Outcome::new(format!(
        "{N}/{N} 2000-byte http requests and {N}/{N} 2000-byte UDP datagrams (fragmented: MTU 1500) echoed intact through the ClusterIP, by {} endpoints; served {} after the objects (upstream: one of each, ~2 min)",
        by.len(),
        secs(took)
    )))
}

/// The port the hostNetwork endpoints listen on (TCP and UDP), upstream's.
const HOST_PORT: u16 = 10180;

/// Upstream: the endpoints are hostNetwork pods (one per node, answering
/// with the node's name); pod -> Service and node -> Service, http and udp,
/// ClusterIP and nodePort, and large requests, all work.
fn granular_hostnetwork_endpoints(bins: &Binaries) -> Result<Outcome> {
    const NP_HTTP: u16 = 30324;
    const NP_UDP: u16 = 30325;
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let _servers: Vec<EchoServer> = (0..2)
        .map(|i| {
            EchoServer::start(
                cluster.topo.node(i),
                cluster.topo.node_name(i),
                HOST_PORT,
                HOST_PORT,
            )
        })
        .collect::<Result<_>>()?;
    let host_ports = [
        SlicePort {
            name: "http",
            port: HOST_PORT,
            protocol: "TCP",
        },
        SlicePort {
            name: "dns",
            port: HOST_PORT,
            protocol: "UDP",
        },
        SlicePort {
            name: "echo",
            port: HOST_PORT,
            protocol: "TCP",
        },
    ];
    let hosts: Vec<Endpoint> = (0..2)
        .map(|i| Endpoint {
            ip: cluster.topo.node_ip(i),
            node: cluster.topo.node_name(i).to_string(),
            zone: None,
            ready: true,
            serving: true,
            terminating: false,
            zone_hints: Vec::new(),
        })
        .collect();
    let start = Instant::now();
    cluster.apply(&service(
        "hostnet",
        "NodePort",
        vip(24),
        &[
            http(80).node_port(NP_HTTP),
            dns(90).node_port(NP_UDP),
            echo(81),
        ],
        "",
    ))?;
    cluster.apply(&slice("hostnet-1", "hostnet", &host_ports, &hosts))?;
    let expected: BTreeSet<String> = (0..2)
        .map(|i| cluster.topo.node_name(i).to_string())
        .collect();
    let mut checks = Vec::new();
    for from in [
        Vantage::Pod(cluster.topo.client_pod(0)),
        Vantage::Node(0),
        Vantage::Node(1),
    ] {
        checks.extend(granular_checks(&cluster, from, 24, NP_HTTP, NP_UDP));
    }
    for i in 0..2 {
        checks.push((
            Vantage::Outside,
            Transport::Tcp,
            at(cluster.topo.node_ip(i), NP_HTTP),
        ));
        checks.push((
            Vantage::Outside,
            Transport::Udp,
            at(cluster.topo.node_ip(i), NP_UDP),
        ));
    }
    let took = verify_up(&cluster, &checks, &expected, 20, start)?;
    let from = cluster.topo.client_pod(1);
    let results = large_requests(from, at(vip(24), 81), at(vip(24), 90), 10)?;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure!(
        failed.is_empty(),
        "large requests to hostNetwork endpoints: {failed:?}"
    );
    Ok(Outcome::new(format!(
        "endpoints on the node IPs (:{HOST_PORT}): from a pod, hostNetwork processes on both nodes and outside, ClusterIP and both nodes' nodePorts, http and udp: 20/20 on each of {} paths, both nodes seen on each, all verified by {} after the objects; 10/10 2000-byte http and udp requests echoed intact (upstream: ~2 min)",
        checks.len(),
        secs(took)
    )))
}

/// Upstream, from a hostNetwork pod: `GET localhost:10256/healthz` is 200
/// with `lastUpdated`, `GET localhost:10249/proxyMode` is 200. On every
/// node; /healthz also on the node IP, where load balancers probe it.
fn kube_proxy_urls(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let mut mode = String::new();
    for i in 0..2 {
        let ns = cluster.topo.node(i);
        let node = cluster.topo.node_name(i);
        for addr in [
            at(Ipv4Addr::LOCALHOST, 10256),
            at(cluster.topo.node_ip(i), 10256),
        ] {
            let (code, body) = http_get::get(ns, addr, "/healthz")?;
            ensure!(code == 200, "{node}: {addr}/healthz: {code} {body}");
            let json: serde_json::Value =
                serde_json::from_str(&body).with_context(|| format!("{node}: {body}"))?;
            ensure!(
                json["lastUpdated"].as_str().is_some_and(|s| !s.is_empty()),
                "{node}: {addr}/healthz has no lastUpdated: {body}"
            );
        }
        let (code, body) = http_get::get(ns, at(Ipv4Addr::LOCALHOST, 10249), "/proxyMode")?;
        ensure!(code == 200, "{node}: /proxyMode: {code} {body}");
        ensure!(
            !body.trim().is_empty(),
            "{node}: /proxyMode answered an empty mode"
        );
        mode = body.trim().to_string();
    }
    Ok(Outcome::new(format!(
        "on both nodes: :10256/healthz (localhost and node IP) 200 with lastUpdated; localhost:10249/proxyMode 200 {mode:?} (kube-proxy answers its mode, e.g. \"iptables\")"
    )))
}
