//! NodePort and traffic from outside the cluster, on two nodes in
//! namespaces: an agent per node (own pin directory, `--node-name`, the
//! node's uplink as `--node-interfaces`), all fed the same manifests, and an
//! external client on the node network. Needs root and a bpffs;
//! LB_SKIP_PRIVILEGED=1 skips.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use lb_testbed::{
    agent::AgentProcess,
    client::{Client, RequestResult, DEFAULT_TIMEOUT},
    http_get as http,
    multinode::MultiNodeTopology,
    privileged::require_privileged,
    scratch::ScratchDir,
    servers::{Servers, TCP_PORT},
    wait_until,
};

const REQUESTS: usize = 200;
/// Services of the manifests below.
const CLUSTER_POLICY_PORT: u16 = 30080;
const LOCAL_POLICY_PORT: u16 = 30081;
const HEALTH_CHECK_PORT: u16 = 30200;

/// Two Services whose only endpoints are node-b's pods: `remote`
/// (externalTrafficPolicy Cluster) and `local` (Local, with a health check
/// port).
fn manifests(topo: &MultiNodeTopology) -> String {
    let endpoints: String = topo
        .pods(1)
        .iter()
        .map(|p| {
            format!(
                "  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n    nodeName: {}\n",
                p.ip,
                topo.node_name(1)
            )
        })
        .collect();
    // Health check node ports are for load balancers: the Local Service is
    // of type LoadBalancer (which has node ports too).
    let service = |name: &str, ip: &str, node_port: u16, local: bool| {
        let kind = if local { "LoadBalancer" } else { "NodePort" };
        let policy = if local {
            format!("  externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_CHECK_PORT}\n")
        } else {
            "  externalTrafficPolicy: Cluster\n".to_string()
        };
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: {kind}\n  clusterIP: {ip}\n{policy}  ports:\n  - {{name: http, port: 80, protocol: TCP, nodePort: {node_port}}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n  - {{name: http, port: {TCP_PORT}, protocol: TCP}}\nendpoints:\n{endpoints}---\n"
        )
    };
    service("remote", "10.96.0.20", CLUSTER_POLICY_PORT, false)
        + &service("local", "10.96.0.21", LOCAL_POLICY_PORT, true)
        + &load_balancer(
            "lb-open",
            "10.96.0.22",
            LB_OPEN,
            "192.168.50.100/32",
            &endpoints,
        )
        + &load_balancer(
            "lb-closed",
            "10.96.0.23",
            LB_CLOSED,
            "10.0.0.0/8",
            &endpoints,
        )
        + &external_ip("ext", "10.96.0.24", EXTERNAL_IP, &endpoints)
        + &hairpin(topo)
}

/// A Service whose only endpoint is node-a's first pod, for that pod to
/// reach itself through its ClusterIP.
const HAIRPIN_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 25);

fn hairpin(topo: &MultiNodeTopology) -> String {
    let pod = &topo.pods(0)[0];
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: self, namespace: default}}\nspec:\n  clusterIP: {HAIRPIN_VIP}\n  ports:\n  - {{name: http, port: 80, protocol: TCP}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: self-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: self}}\naddressType: IPv4\nports:\n  - {{name: http, port: {TCP_PORT}, protocol: TCP}}\nendpoints:\n  - addresses: [\"{}\"]\n    nodeName: {}\n---\n",
        pod.ip,
        topo.node_name(0)
    )
}

/// An externalIP routed to the nodes by the network (here: a route on the
/// client).
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 202);

/// A ClusterIP Service that is also served on `external_ip`:81.
fn external_ip(name: &str, ip: &str, external_ip: Ipv4Addr, endpoints: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n  externalIPs: [\"{external_ip}\"]\n  ports:\n  - {{name: http, port: 81, protocol: TCP}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n  - {{name: http, port: {TCP_PORT}, protocol: TCP}}\nendpoints:\n{endpoints}---\n"
    )
}

/// Load-balancer IPs, as a cloud controller writes them into the status.
const LB_OPEN: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 200);
const LB_CLOSED: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 201);

/// A LoadBalancer Service whose ingress IP admits only `source_range`.
fn load_balancer(
    name: &str,
    ip: &str,
    lb_ip: Ipv4Addr,
    source_range: &str,
    endpoints: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: LoadBalancer\n  clusterIP: {ip}\n  loadBalancerSourceRanges: [\"{source_range}\"]\n  ports:\n  - {{name: http, port: 80, protocol: TCP}}\nstatus:\n  loadBalancer:\n    ingress: [{{ip: \"{lb_ip}\"}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n  - {{name: http, port: {TCP_PORT}, protocol: TCP}}\nendpoints:\n{endpoints}---\n"
    )
}

struct Bed {
    topo: MultiNodeTopology,
    _servers: Servers,
    agents: Vec<AgentProcess>,
    _scratch: ScratchDir,
}

fn bed() -> Bed {
    let topo = MultiNodeTopology::create(2, 2).unwrap();
    let servers = Servers::start(topo.all_pods()).unwrap();
    let scratch = ScratchDir::new().unwrap();
    let dir = scratch.path().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("services.yaml"), manifests(&topo)).unwrap();
    let agents = (0..topo.nodes())
        .map(|i| start_agent(&topo, i, &dir))
        .collect();
    let mut bed = Bed {
        topo,
        _servers: servers,
        agents,
        _scratch: scratch,
    };
    for i in 0..bed.topo.nodes() {
        let node = bed.topo.node(i);
        let healthz: SocketAddr = "127.0.0.1:10256".parse().unwrap();
        bed.agents[i]
            .wait_ready(Duration::from_secs(15), || {
                matches!(http::get(node, healthz, "/healthz"), Ok((200, _)))
            })
            .unwrap();
    }
    bed
}

fn start_agent(topo: &MultiNodeTopology, i: usize, manifests: &Path) -> AgentProcess {
    AgentProcess::start(
        lb_testbed::bins::agent(),
        topo.node(i),
        manifests,
        &topo.pod_interfaces(),
        &[
            "--node-name",
            topo.node_name(i),
            "--node-interfaces",
            &topo.node_interfaces(),
        ],
    )
    .unwrap()
}

/// `n` TCP connections from `client` to `ip:port`, every one answered.
fn all_answered(client: &Client, ip: Ipv4Addr, port: u16, n: usize) {
    let results = client.tcp_requests(ip, port, n, DEFAULT_TIMEOUT).unwrap();
    let failed = results.iter().find(|r| r.is_err());
    assert_eq!(tally(&results).0, n, "{ip}:{port}: {failed:?}");
}

/// Who answered, and which client address the backends saw.
fn tally(results: &[RequestResult]) -> (usize, BTreeMap<String, usize>, BTreeMap<Ipv4Addr, usize>) {
    let mut backends = BTreeMap::new();
    let mut peers = BTreeMap::new();
    let mut ok = 0;
    for r in results.iter().flatten() {
        ok += 1;
        *backends.entry(r.backend.clone()).or_default() += 1;
        if let SocketAddr::V4(peer) = r.seen_peer {
            *peers.entry(*peer.ip()).or_default() += 1;
        }
    }
    (ok, backends, peers)
}

#[test]
fn nodeport_external_traffic_on_two_nodes() {
    if !require_privileged("nodeport_external_traffic_on_two_nodes") {
        return;
    }
    let bed = bed();
    let topo = &bed.topo;
    let external = Client::new(topo.external_client());
    let (node_a, node_b) = (topo.node_ip(0), topo.node_ip(1));

    // Cluster policy, entering node-a, backends only on node-b: SNATed, so
    // the backends see node-a's address, and every request is answered.
    let results = external
        .tcp_requests(node_a, CLUSTER_POLICY_PORT, REQUESTS, DEFAULT_TIMEOUT)
        .unwrap();
    let (ok, backends, peers) = tally(&results);
    println!("node-a:{CLUSTER_POLICY_PORT}: {ok}/{REQUESTS} answered by {backends:?}, seen from {peers:?}");
    assert_eq!(
        ok,
        REQUESTS,
        "{:?}\n{}",
        results.iter().find(|r| r.is_err()),
        bed.agents[0].log()
    );
    assert_eq!(backends.len(), topo.pods(1).len(), "{backends:?}");
    assert_eq!(peers.keys().copied().collect::<Vec<_>>(), [node_a]);

    // Local policy: node-b answers and the client's own address is kept;
    // node-a has no local endpoint and drops.
    let results = external
        .tcp_requests(node_b, LOCAL_POLICY_PORT, REQUESTS, DEFAULT_TIMEOUT)
        .unwrap();
    let (ok, _, peers) = tally(&results);
    println!("node-b:{LOCAL_POLICY_PORT}: {ok}/{REQUESTS}, seen from {peers:?}");
    assert_eq!(ok, REQUESTS);
    assert_eq!(
        peers.keys().copied().collect::<Vec<_>>(),
        [topo.external_client().ip]
    );
    let results = external
        .tcp_requests(node_a, LOCAL_POLICY_PORT, 5, Duration::from_millis(300))
        .unwrap();
    assert!(
        results.iter().all(|r| r.is_err()),
        "node-a answered a Local NodePort without local endpoints: {results:?}"
    );

    // healthCheckNodePort: 200 where there are local endpoints, 503 elsewhere.
    let probe = |node: Ipv4Addr| {
        let addr = SocketAddr::from((node, HEALTH_CHECK_PORT));
        http::get(&topo.external_client().ns, addr, "/")
    };
    let (code, body) = probe(node_b).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!("\"localEndpoints\":{}", topo.pods(1).len())),
        "{body}"
    );
    let (code, body) = probe(node_a).unwrap();
    assert_eq!(code, 503, "{body}");

    // loadBalancerSourceRanges: the cloud load balancer (here: a route on
    // the client) sends its IPs' traffic to node-b; a client inside the
    // range is served, one outside is refused.
    for lb in [LB_OPEN, LB_CLOSED, EXTERNAL_IP] {
        topo.external_client()
            .ns
            .ip([
                "route",
                "add",
                &format!("{lb}/32"),
                "via",
                &node_b.to_string(),
            ])
            .unwrap();
    }
    all_answered(&external, LB_OPEN, 80, 50);
    let results = external
        .tcp_requests(LB_CLOSED, 80, 5, Duration::from_millis(300))
        .unwrap();
    assert!(
        results.iter().all(|r| r.is_err()),
        "a source outside loadBalancerSourceRanges was served: {results:?}"
    );
    // ... refused by the range check, not for want of a frontend.
    let metrics: SocketAddr = "127.0.0.1:10249".parse().unwrap();
    let counted = wait_until(Instant::now() + Duration::from_secs(10), || {
        http::get(topo.node(1), metrics, "/metrics").is_ok_and(|(_, text)| {
            text.lines().any(|l| {
                l.starts_with(r#"lb_datapath_packets_total{reason="drop_source_range"}"#)
                    && !l.ends_with(" 0")
            })
        })
    });
    assert!(counted, "no drop_source_range counted on node-b");

    // externalIPs: served like a load-balancer IP, without source ranges.
    all_answered(&external, EXTERNAL_IP, 81, 50);

    // A pod on node-a reaches node-b's NodePort.
    let pod = Client::new(topo.client_pod(0));
    all_answered(&pod, node_b, CLUSTER_POLICY_PORT, 50);

    // Hairpin: a pod reaching itself through its Service's ClusterIP; the
    // node SNATs the flow (the pod sees node-a's address) so the answer
    // comes back through the node.
    let own = Client::new(&topo.pods(0)[0]);
    let results = own
        .tcp_requests(HAIRPIN_VIP, 80, 20, DEFAULT_TIMEOUT)
        .unwrap();
    let (ok, backends, peers) = tally(&results);
    println!("hairpin: {ok}/20 by {backends:?}, seen from {peers:?}");
    assert_eq!(ok, 20, "{:?}", results.iter().find(|r| r.is_err()));
    assert_eq!(peers.keys().copied().collect::<Vec<_>>(), [node_a]);

    // ... and a pod on node-b its own node's NodePort (balanced by the
    // pod-side program).
    let pod = Client::new(topo.client_pod(1));
    all_answered(&pod, node_b, CLUSTER_POLICY_PORT, 50);
}
