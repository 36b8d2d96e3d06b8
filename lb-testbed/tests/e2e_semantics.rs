//! Service semantics end to end, as a client sees them: ports resolved per
//! EndpointSlice (a named targetPort may be a different number on different
//! pods), TCP and UDP on one port number, large transfers that must arrive
//! byte for byte, and the client pod's own address reaching backends on
//! other nodes. Needs root and a bpffs; LB_SKIP_PRIVILEGED=1 skips.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lb_testbed::{
    agent::AgentProcess,
    bulk::{self, BulkServers, BULK_PORT},
    client::{Client, RequestResult, DEFAULT_TIMEOUT},
    http_get as http,
    multinode::MultiNodeTopology,
    port_servers::{Listen, PortServers},
    privileged::require_privileged,
    scratch::ScratchDir,
    servers::{Servers, TCP_PORT, UDP_PORT},
    tally::Tally,
    topology::{ClusterIpTopology, Pod},
    wait_until,
};
use serde_json::Value;

/// A Service port whose targetPort is the name `web`: pods 1 and 2 (slice
/// `multi-a`) call port 8080 that, pods 3 and 4 (slice `multi-b`) 9090.
/// Each pod listens on its own number only.
const MULTI_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// The second port of the multi-port Service, targetPort `alt`: only the
/// pods of slice `multi-b` have it (9091).
const ALT_PORT: u16 = 81;
const B_WEB_PORT: u16 = 9090;
const B_ALT_PORT: u16 = 9091;

/// Several ports per Service, named targetPorts resolved per EndpointSlice.
/// `multi` has `http` (80, targetPort `web`) and `alt` (81, targetPort
/// `alt`). Its two slices resolve `web` differently: 8080 for pods 1-2,
/// 9090 for pods 3-4, each pod listening on its own number only; only
/// slice B has `alt`. Every connection to port 80 must be answered, by all
/// four pods (a slice's port applied to another slice's pods would be
/// refused); port 81 by pods 3-4 only.
///
/// Upstream: "should serve multiport endpoints from pods [Conformance]"
/// (test/e2e/network/service.go: ports 80 and 81 with named targetPorts
/// svc1/svc2 served by different pods on container ports 100 and 101).
#[test]
fn named_target_ports_resolve_per_endpoint_slice() {
    if !require_privileged("named_target_ports_resolve_per_endpoint_slice") {
        return;
    }
    let topo = ClusterIpTopology::create(4).unwrap();
    let (a, b) = topo.backends().split_at(2);
    let _a_servers = Servers::start(a).unwrap();
    let _b_servers =
        PortServers::start(b, &[Listen::Tcp(B_WEB_PORT), Listen::Tcp(B_ALT_PORT)]).unwrap();
    let slice = |name: &str, pods: &[Pod], ports: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{kubernetes.io/service-name: multi}}\naddressType: IPv4\nports:\n{ports}endpoints:\n{}---\n",
            endpoints(pods)
        )
    };
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: multi, namespace: default}}\nspec:\n  clusterIP: {MULTI_VIP}\n  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: web}}\n  - {{name: alt, port: {ALT_PORT}, protocol: TCP, targetPort: alt}}\n---\n{}{}",
        slice("multi-a", a, &format!("- {{name: http, port: {TCP_PORT}, protocol: TCP}}\n")),
        slice(
            "multi-b",
            b,
            &format!("- {{name: http, port: {B_WEB_PORT}, protocol: TCP}}\n- {{name: alt, port: {B_ALT_PORT}, protocol: TCP}}\n")
        ),
    );
    let (mut agent, _scratch) = start_agent(&topo, &manifest, &[]);
    let client = Client::new(topo.client());
    agent
        .wait_ready(Duration::from_secs(15), || answered(&client, MULTI_VIP, 80))
        .unwrap();

    let names: Vec<&str> = topo.backends().iter().map(|p| p.name.as_str()).collect();
    let http = tcp_tally(&topo, &client, MULTI_VIP, 80, 200, &names);
    println!("{}", http.render("http (targetPort web)"));
    assert!(
        http.problems().is_empty(),
        "port 80: {:?}\n{}",
        http.problems(),
        agent.log()
    );
    for name in &names {
        assert!(
            http.count(name) > 0,
            "port 80: {name} never answered: the slices' port numbers were not each applied to their own pods"
        );
    }
    let alt = tcp_tally(&topo, &client, MULTI_VIP, ALT_PORT, 100, &names);
    println!("{}", alt.render("alt (targetPort alt)"));
    assert!(
        alt.problems().is_empty(),
        "port {ALT_PORT}: {:?}",
        alt.problems()
    );
    assert!(
        alt.count("pod-1") + alt.count("pod-2") == 0
            && alt.count("pod-3") > 0
            && alt.count("pod-4") > 0,
        "port {ALT_PORT} is only in slice multi-b (pods 3 and 4)"
    );
    agent.stop().unwrap();
}

const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
const DNS_PORT: u16 = 53;

/// TCP and UDP on one port number (53, both to target port 5353, as DNS
/// has it): both answered, by every pod. Then, as upstream, the Service is
/// updated to TCP only (UDP must stop being served, TCP keeps working), and
/// then to UDP only (the reverse).
///
/// Upstream: "should serve endpoints on same port and different protocols
/// [Conformance]" (test/e2e/network/service.go: TCP/80 and UDP/80 to one
/// pod, both reachable; after updating the Service to TCP only, UDP must
/// stop within 30 s, and after UDP only, TCP must stop).
#[test]
fn tcp_and_udp_share_a_port_number() {
    if !require_privileged("tcp_and_udp_share_a_port_number") {
        return;
    }
    let topo = ClusterIpTopology::create(3).unwrap();
    // UDP 5353 from Servers, TCP 5353 from PortServers.
    let _servers = Servers::start(topo.backends()).unwrap();
    let _tcp_5353 = PortServers::start(topo.backends(), &[Listen::Tcp(UDP_PORT)]).unwrap();
    let manifest = |protocols: &[&str]| {
        let ports: String = protocols
            .iter()
            .map(|p| format!("  - {{name: dns-{}, port: {DNS_PORT}, protocol: {p}, targetPort: {UDP_PORT}}}\n", p.to_lowercase()))
            .collect();
        let slice_ports: String = protocols
            .iter()
            .map(|p| {
                format!(
                    "- {{name: dns-{}, port: {UDP_PORT}, protocol: {p}}}\n",
                    p.to_lowercase()
                )
            })
            .collect();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: default}}\nspec:\n  clusterIP: {DNS_VIP}\n  ports:\n{ports}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: dns-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: dns}}\naddressType: IPv4\nports:\n{slice_ports}endpoints:\n{}",
            endpoints(topo.backends())
        )
    };
    let (mut agent, scratch) = start_agent(&topo, &manifest(&["TCP", "UDP"]), &[]);
    let client = Client::new(topo.client());
    agent
        .wait_ready(Duration::from_secs(15), || {
            answered(&client, DNS_VIP, DNS_PORT)
        })
        .unwrap();

    let names: Vec<&str> = topo.backends().iter().map(|p| p.name.as_str()).collect();
    let tcp = tcp_tally(&topo, &client, DNS_VIP, DNS_PORT, 100, &names);
    let udp = udp_tally(&topo, &client, DNS_VIP, DNS_PORT, 100, &names);
    println!("{}{}", tcp.render("53/TCP"), udp.render("53/UDP"));
    for (proto, tally) in [("TCP", &tcp), ("UDP", &udp)] {
        assert!(
            tally.problems().is_empty(),
            "{proto}: {:?}",
            tally.problems()
        );
        for name in &names {
            assert!(tally.count(name) > 0, "{proto}: {name} never answered");
        }
    }

    // TCP only: UDP stops, TCP goes on; then UDP only: the reverse.
    let udp_answers = || {
        client
            .udp_requests(DNS_VIP, DNS_PORT, 1, Duration::from_millis(300))
            .unwrap()[0]
            .is_ok()
    };
    let tcp_answers = || {
        client
            .tcp_request(DNS_VIP, DNS_PORT, Duration::from_millis(300))
            .unwrap()
            .is_ok()
    };
    for (only, served, stopped) in [
        (
            "TCP",
            &tcp_answers as &dyn Fn() -> bool,
            &udp_answers as &dyn Fn() -> bool,
        ),
        ("UDP", &udp_answers, &tcp_answers),
    ] {
        write_manifest(scratch.path(), &manifest(&[only]));
        let changed = Instant::now();
        assert!(
            wait_until(changed + Duration::from_secs(5), || !stopped()),
            "the Service became {only}-only, but the other protocol was still served after 5 s\n{}",
            agent.log()
        );
        let took = changed.elapsed();
        let still: Vec<bool> = (0..10).map(|_| stopped()).collect();
        assert!(
            still.iter().all(|answered| !answered),
            "{only}-only: the other protocol answered again: {still:?}"
        );
        let kept: Vec<bool> = (0..20).map(|_| served()).collect();
        assert!(
            kept.iter().all(|&answered| answered),
            "{only}-only: {only} not always answered: {kept:?}"
        );
        println!("updated to {only} only: the other protocol stopped within {took:?}, {only} still answered");
    }
    agent.stop().unwrap();
}

const BULK_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 32);
/// Bytes uploaded and downloaded per transfer.
const BULK_BYTES: u64 = 4 << 20;

/// Large TCP transfers through a ClusterIP: 4 MiB uploaded and then 4 MiB
/// downloaded on one connection arrive intact (same length, same FNV-1a
/// hash at both ends), three times, and the datapath counters show the
/// transfers went through it (DNAT on the way in, reverse NAT on the way
/// out).
///
/// Upstream: "Networking Granular Checks: Services should handle large
/// requests: http / udp" (test/e2e/network/networking.go: a 2000-byte
/// request echoed intact through a ClusterIP), scaled up to thousands of
/// segments in both directions.
#[test]
fn large_transfers_through_a_cluster_ip_arrive_intact() {
    if !require_privileged("large_transfers_through_a_cluster_ip_arrive_intact") {
        return;
    }
    let topo = ClusterIpTopology::create(3).unwrap();
    let _servers = BulkServers::start(topo.backends()).unwrap();
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: bulk, namespace: default}}\nspec:\n  clusterIP: {BULK_VIP}\n  ports:\n  - {{name: bulk, port: 80, protocol: TCP, targetPort: {BULK_PORT}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: bulk-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: bulk}}\naddressType: IPv4\nports:\n- {{name: bulk, port: {BULK_PORT}, protocol: TCP}}\nendpoints:\n{}",
        endpoints(topo.backends())
    );
    let (mut agent, _scratch) = start_agent(&topo, &manifest, &[]);
    let to = SocketAddr::from((BULK_VIP, 80));
    agent
        .wait_ready(Duration::from_secs(15), || {
            bulk::transfer(topo.client(), to, 1, 1).is_ok()
        })
        .unwrap();

    let before = datapath_stats(&agent);
    for _ in 0..3 {
        let t = bulk::transfer(topo.client(), to, BULK_BYTES, BULK_BYTES).unwrap();
        let mib_s = 2.0 * BULK_BYTES as f64 / (1 << 20) as f64 / t.took.as_secs_f64();
        println!(
            "{}: up {:?} sent / {:?} received, down {:?} sent / {:?} received (bytes, hash) in {:?}, {mib_s:.0} MiB/s",
            t.backend, t.upload_sent, t.upload_received, t.download_sent, t.download_received, t.took
        );
        assert!(
            t.intact(),
            "a transfer through {to} arrived corrupted: {t:?}"
        );
        assert_eq!(t.seen_peer.ip(), topo.client().ip, "{t:?}");
    }
    let after = datapath_stats(&agent);
    let delta = |reason: &str| after.get(reason).unwrap_or(&0) - before.get(reason).unwrap_or(&0);
    println!(
        "datapath during the transfers: dnat_established +{}, revnat +{}",
        delta("dnat_established"),
        delta("revnat")
    );
    // Even in 64 KiB super-packets, 3 x 4 MiB each way are 192 packets.
    assert!(
        delta("dnat_established") >= 192 && delta("revnat") >= 192,
        "the transfers did not go through the datapath: {before:?} -> {after:?}"
    );
    agent.stop().unwrap();
}

/// The same Service as the large transfers, with every node-side pod
/// interface computing checksums in software (`ethtool -K lbh* tx off`):
/// the node checksums each packet it sends to a pod from the checksum field
/// the pod left, exactly as a NIC with checksum offload does for a backend
/// on another node (or a tunnel device for its inner packet). Requests
/// over TCP and UDP and a 4 MiB transfer each way must still be answered
/// and intact.
///
/// Pods send with offloaded checksums (CHECKSUM_PARTIAL): their checksum
/// field holds only the pseudo-header sum, which a DNAT must update as a
/// sum, not as a checksum. Between veths alone a partial checksum is never
/// computed (the receiver trusts it), which is why every other test passes
/// whatever the datapath writes into that field.
///
/// Upstream: the "pod-Service: http/udp" Networking Granular Checks
/// (test/e2e/network/networking.go) with endpoints on other nodes, whose
/// packets leave through real NICs.
#[test]
fn checksums_hold_when_the_node_computes_them() {
    if !require_privileged("checksums_hold_when_the_node_computes_them") {
        return;
    }
    checksums_hold("native");
}

/// The same in generic XDP mode, where the program also sees the pods' GSO
/// super-packets (up to 64 KiB, one pseudo-header for all their segments).
#[test]
fn checksums_hold_when_the_node_computes_them_generic_xdp() {
    if !require_privileged("checksums_hold_when_the_node_computes_them_generic_xdp") {
        return;
    }
    checksums_hold("generic");
}

fn checksums_hold(xdp_mode: &str) {
    let topo = ClusterIpTopology::create(3).unwrap();
    let _servers = Servers::start(topo.backends()).unwrap();
    let _bulk = BulkServers::start(topo.backends()).unwrap();
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: sums, namespace: default}}\nspec:\n  clusterIP: {BULK_VIP}\n  ports:\n  - {{name: bulk, port: 80, protocol: TCP, targetPort: {BULK_PORT}}}\n  - {{name: http, port: 81, protocol: TCP, targetPort: {TCP_PORT}}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: {UDP_PORT}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: sums-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: sums}}\naddressType: IPv4\nports:\n- {{name: bulk, port: {BULK_PORT}, protocol: TCP}}\n- {{name: http, port: {TCP_PORT}, protocol: TCP}}\n- {{name: dns, port: {UDP_PORT}, protocol: UDP}}\nendpoints:\n{}",
        endpoints(topo.backends())
    );
    let (mut agent, _scratch) = start_agent(&topo, &manifest, &["--xdp-mode", xdp_mode]);
    let client = Client::new(topo.client());
    agent
        .wait_ready(Duration::from_secs(15), || answered(&client, BULK_VIP, 81))
        .unwrap();
    let pods: Vec<&Pod> = topo.backends().iter().chain([topo.client()]).collect();
    for pod in &pods {
        topo.node()
            .exec(["ethtool", "-K", &pod.host_if, "tx", "off"])
            .unwrap();
    }
    // The topology itself still works: pod to pod, no Service.
    let direct = client
        .tcp_requests(topo.backends()[0].ip, TCP_PORT, 5, DEFAULT_TIMEOUT)
        .unwrap();
    assert!(
        direct.iter().all(|r| r.is_ok()),
        "pod to pod with software checksums: {direct:?}"
    );

    let names: Vec<&str> = topo.backends().iter().map(|p| p.name.as_str()).collect();
    // A short timeout: answers take milliseconds, and a broken datapath
    // fails every request.
    let quick = Duration::from_millis(300);
    let results = client.tcp_requests(BULK_VIP, 81, 30, quick).unwrap();
    let tcp = Tally::new(
        (BULK_VIP, 81).into(),
        topo.client().ip,
        names.iter().copied(),
        &results,
    );
    let results = client.udp_requests(BULK_VIP, 53, 30, quick).unwrap();
    let udp = Tally::new(
        (BULK_VIP, 53).into(),
        topo.client().ip,
        names.iter().copied(),
        &results,
    );
    println!("{}{}", tcp.render("TCP"), udp.render("UDP"));
    let errors: Vec<String> = topo
        .backends()
        .iter()
        .map(|p| {
            let counters =
                p.ns.exec(["nstat", "-az", "TcpInCsumErrors", "UdpInCsumErrors"])
                    .unwrap_or_default();
            let counters: Vec<String> = counters
                .lines()
                .filter(|l| l.contains("CsumErrors"))
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .collect();
            format!("{}: {}", p.name, counters.join(", "))
        })
        .collect();
    println!("checksum errors seen by the pods: {errors:?}");
    for (proto, tally) in [("TCP", &tcp), ("UDP", &udp)] {
        assert!(
            tally.problems().is_empty(),
            "{proto} through the ClusterIP with checksums computed by the node: {:?}; checksum errors seen by the pods: {errors:?}",
            tally.problems()
        );
    }
    let t = bulk::transfer(topo.client(), (BULK_VIP, 80).into(), BULK_BYTES, BULK_BYTES).unwrap();
    println!(
        "{}: 4 MiB each way in {:?}, intact: {}",
        t.backend,
        t.took,
        t.intact()
    );
    assert!(t.intact(), "{t:?}");
    agent.stop().unwrap();
}

const SPREAD_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 33);

/// The backend sees the client pod's own address through a ClusterIP, also
/// when the client and the backend are on different nodes: pods on both
/// nodes reach backends on both nodes over TCP and UDP, and every backend
/// sees the client's pod IP, never a node's (the single-node case is
/// asserted by `e2e_clusterip.rs`, whose `Tally` checks the source of every
/// answer).
///
/// Upstream: "should preserve source pod IP for traffic thru service
/// cluster IP [LinuxOnly]" (test/e2e/network/service.go: pods on two nodes
/// request ClusterIP:8080/clientip, which must equal their own pod IP).
#[test]
fn client_pod_address_reaches_backends_on_other_nodes() {
    if !require_privileged("client_pod_address_reaches_backends_on_other_nodes") {
        return;
    }
    let topo = MultiNodeTopology::create(2, 2).unwrap();
    let _servers = Servers::start(topo.all_pods()).unwrap();
    let endpoints: String = (0..topo.nodes())
        .flat_map(|i| topo.pods(i).iter().map(move |p| (i, p)))
        .map(|(i, p)| {
            format!(
                "  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n    nodeName: {}\n",
                p.ip,
                topo.node_name(i)
            )
        })
        .collect();
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: spread, namespace: default}}\nspec:\n  clusterIP: {SPREAD_VIP}\n  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: {TCP_PORT}}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: {UDP_PORT}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: spread-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: spread}}\naddressType: IPv4\nports:\n- {{name: http, port: {TCP_PORT}, protocol: TCP}}\n- {{name: dns, port: {UDP_PORT}, protocol: UDP}}\nendpoints:\n{endpoints}"
    );
    let scratch = ScratchDir::new().unwrap();
    let dir = scratch.path().join("manifests");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("spread.yaml"), manifest).unwrap();
    let mut agents: Vec<AgentProcess> = (0..topo.nodes())
        .map(|i| {
            AgentProcess::start(
                lb_testbed::bins::agent(),
                topo.node(i),
                &dir,
                &topo.pod_interfaces(),
                &[
                    "--node-name",
                    topo.node_name(i),
                    "--node-interfaces",
                    &topo.node_interfaces(),
                ],
            )
            .unwrap()
        })
        .collect();
    for (i, agent) in agents.iter_mut().enumerate() {
        let node = topo.node(i);
        let healthz: SocketAddr = "127.0.0.1:10256".parse().unwrap();
        agent
            .wait_ready(Duration::from_secs(15), || {
                matches!(http::get(node, healthz, "/healthz"), Ok((200, _)))
            })
            .unwrap();
    }

    let names: Vec<&str> = topo.all_pods().iter().map(|p| p.name.as_str()).collect();
    for (i, agent) in agents.iter().enumerate() {
        let pod = topo.client_pod(i);
        let client = Client::new(pod);
        let tcp = client
            .tcp_requests(SPREAD_VIP, 80, 100, DEFAULT_TIMEOUT)
            .unwrap();
        let udp = client
            .udp_requests(SPREAD_VIP, 53, 100, DEFAULT_TIMEOUT)
            .unwrap();
        let tcp = Tally::new((SPREAD_VIP, 80).into(), pod.ip, names.iter().copied(), &tcp);
        let udp = Tally::new((SPREAD_VIP, 53).into(), pod.ip, names.iter().copied(), &udp);
        println!(
            "from {} ({}):\n{}{}",
            pod.name,
            pod.ip,
            tcp.render("TCP"),
            udp.render("UDP")
        );
        for (proto, tally) in [("TCP", &tcp), ("UDP", &udp)] {
            // Covers: all answered, the source the backends saw is the
            // client's pod IP, the answers come from the ClusterIP.
            assert!(
                tally.problems().is_empty(),
                "{proto} from {}: {:?}\n{}",
                pod.name,
                tally.problems(),
                agent.log()
            );
            for node in 0..topo.nodes() {
                let on_node: usize = topo.pods(node).iter().map(|p| tally.count(&p.name)).sum();
                assert!(
                    on_node > 0,
                    "{proto} from {}: no backend on {} answered",
                    pod.name,
                    topo.node_name(node)
                );
            }
        }
    }
    for agent in &mut agents {
        agent.stop().unwrap();
    }
}

/// Endpoint lines of an EndpointSlice, one ready endpoint per pod.
fn endpoints(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            format!(
                "  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n    nodeName: node-a\n    targetRef: {{kind: Pod, namespace: default, name: {}}}\n",
                p.ip, p.name
            )
        })
        .collect()
}

/// Writes `manifest` and starts the agent on it in `topo`'s node; the
/// scratch directory holds the manifests (`<scratch>/manifests`).
fn start_agent(
    topo: &ClusterIpTopology,
    manifest: &str,
    extra: &[&str],
) -> (AgentProcess, ScratchDir) {
    let scratch = ScratchDir::new().unwrap();
    fs::create_dir(scratch.path().join("manifests")).unwrap();
    write_manifest(scratch.path(), manifest);
    let agent = AgentProcess::start(
        lb_testbed::bins::agent(),
        topo.node(),
        &scratch.path().join("manifests"),
        &topo.pod_interfaces(),
        extra,
    )
    .unwrap();
    (agent, scratch)
}

/// Replaces `<scratch>/manifests/services.yaml` atomically (written aside,
/// then renamed), so the agent never reads half a file.
fn write_manifest(scratch: &Path, manifest: &str) {
    let staged = scratch.join("services.yaml.new");
    fs::write(&staged, manifest).unwrap();
    fs::rename(&staged, scratch.join("manifests").join("services.yaml")).unwrap();
}

fn answered(client: &Client, ip: Ipv4Addr, port: u16) -> bool {
    matches!(client.tcp_request(ip, port, DEFAULT_TIMEOUT), Ok(Ok(_)))
}

/// `n` TCP requests from the client to `ip:port`, tallied. When the first
/// 10 all fail, the rest are not made: a broken datapath fails the test in
/// seconds rather than after `n` timeouts.
fn tcp_tally(
    topo: &ClusterIpTopology,
    client: &Client,
    ip: Ipv4Addr,
    port: u16,
    n: usize,
    names: &[&str],
) -> Tally {
    tally(topo, ip, port, n, names, |k| {
        client.tcp_requests(ip, port, k, DEFAULT_TIMEOUT).unwrap()
    })
}

/// The same over UDP, each request from a new socket.
fn udp_tally(
    topo: &ClusterIpTopology,
    client: &Client,
    ip: Ipv4Addr,
    port: u16,
    n: usize,
    names: &[&str],
) -> Tally {
    tally(topo, ip, port, n, names, |k| {
        client.udp_requests(ip, port, k, DEFAULT_TIMEOUT).unwrap()
    })
}

fn tally(
    topo: &ClusterIpTopology,
    ip: Ipv4Addr,
    port: u16,
    n: usize,
    names: &[&str],
    requests: impl Fn(usize) -> Vec<RequestResult>,
) -> Tally {
    let mut results = requests(n.min(10));
    if results.iter().any(|r| r.is_ok()) {
        results.extend(requests(n - results.len()));
    }
    Tally::new(
        (ip, port).into(),
        topo.client().ip,
        names.iter().copied(),
        &results,
    )
}

/// `lbctl stats --json` of the agent's maps: packets by reason.
fn datapath_stats(agent: &AgentProcess) -> BTreeMap<String, u64> {
    let out = Command::new(lb_testbed::bins::lbctl())
        .args(["stats", "--json", "--bpffs"])
        .arg(agent.pin_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lbctl stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    json["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["packets"].as_u64().unwrap(),
            )
        })
        .collect()
}
