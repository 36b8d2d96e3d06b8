//! The multi-node testbed on its own, without an agent: routed pod-to-pod
//! traffic across nodes, an external client that reaches the nodes but not
//! the pods, and a clean teardown. The NodePort and cross-node tests build
//! on these properties, so they are checked here first. Needs root; set
//! LB_SKIP_PRIVILEGED=1 to skip.

use std::fs;
use std::io::{BufRead as _, BufReader, ErrorKind, Write as _};
use std::net::TcpListener;
use std::panic::{self, AssertUnwindSafe};
use std::process::Command;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use lb_testbed::client::{Client, RequestError, DEFAULT_TIMEOUT};
use lb_testbed::multinode::plan::EXTERNAL_CLIENT_IP;
use lb_testbed::multinode::MultiNodeTopology;
use lb_testbed::privileged::require_privileged;
use lb_testbed::servers::{Servers, TCP_PORT, UDP_PORT};
use lb_testbed::topology::Pod;

/// Where the test's listener in a node namespace waits: any port no server
/// uses will do.
const NODE_PORT: u16 = 7000;

/// Pods on one node reach pods on the other through the two nodes' routes,
/// and the server sees the sender's own pod address: routed, no NAT.
#[test]
fn pods_reach_pods_on_other_nodes_without_nat() {
    if !require_privileged("pods_reach_pods_on_other_nodes_without_nat") {
        return;
    }
    let topo = MultiNodeTopology::create(2, 2).unwrap();
    let _servers = Servers::start(topo.all_pods()).unwrap();

    // Node a sends node b's pods to node b, over the uplink.
    let b_pod = &topo.pods(1)[0];
    let route = topo
        .node(0)
        .ip(["route", "get", &b_pod.ip.to_string()])
        .unwrap();
    let expected = format!("via {} dev {}", topo.node_ip(1), topo.uplink(0));
    assert!(route.contains(&expected), "route to {}: {route}", b_pod.ip);

    // A server pod as the sender: pod to pod, as the issue describes.
    let a_pod = &topo.pods(0)[0];
    expect_answers(a_pod, topo.pods(1));
    expect_answers(&topo.pods(1)[1], topo.pods(0));
    // And every client pod to every pod, its own node's and the other's.
    for i in 0..topo.nodes() {
        expect_answers(topo.client_pod(i), topo.all_pods());
    }
}

/// The external client reaches every node's address on the node network,
/// and the node sees the client's own address.
#[test]
fn external_client_reaches_every_node() {
    if !require_privileged("external_client_reaches_every_node") {
        return;
    }
    let topo = MultiNodeTopology::create(2, 1).unwrap();
    let client = Client::new(topo.external_client());
    for i in 0..topo.nodes() {
        let name = topo.node_name(i).to_owned();
        let ip = topo.node_ip(i);
        let listener = topo
            .node(i)
            .run(move || TcpListener::bind((ip, NODE_PORT)))
            .unwrap()
            .unwrap();
        let server = answer_once(listener, name.clone());

        let reply = client
            .tcp_request(ip, NODE_PORT, DEFAULT_TIMEOUT)
            .unwrap()
            .unwrap_or_else(|e| panic!("{name} at {ip}: {e}"));
        assert_eq!(reply.backend, name);
        assert_eq!(reply.seen_peer.ip(), EXTERNAL_CLIENT_IP);
        server.join().unwrap();
    }
}

/// The external client has no route to pod addresses: it only knows the node
/// network, like a client outside a cluster, which reaches pods through a
/// NodePort (or a load balancer in front of one). Were it routed through a
/// node, the NodePort tests could not tell a NodePort answer from a direct
/// one. The pods themselves answer, as a client pod shows.
#[test]
fn external_client_cannot_reach_pods() {
    if !require_privileged("external_client_cannot_reach_pods") {
        return;
    }
    let topo = MultiNodeTopology::create(2, 2).unwrap();
    let _servers = Servers::start(topo.all_pods()).unwrap();
    let external = topo.external_client();
    let client = Client::new(external);
    for pod in topo.all_pods() {
        let route = external.ns.ip(["route", "get", &pod.ip.to_string()]);
        let why = format!("{:#}", route.expect_err("a route to a pod"));
        assert!(why.contains("unreachable"), "route to {}: {why}", pod.ip);

        for replies in [
            client.tcp_requests(pod.ip, TCP_PORT, 1, DEFAULT_TIMEOUT),
            client.udp_requests(pod.ip, UDP_PORT, 1, DEFAULT_TIMEOUT),
        ] {
            match &replies.unwrap()[0] {
                Err(RequestError::Other(e)) if e.contains("unreachable") => {}
                other => panic!("external client to {} ({}): {other:?}", pod.name, pod.ip),
            }
        }
    }
    expect_answers(topo.client_pod(0), topo.all_pods());
}

/// The namespaces exist with the documented interfaces and sysctls while
/// the topology lives, the root namespace holds none of them, and dropping
/// the topology removes every namespace, also when a test panics with it.
#[test]
fn teardown_leaves_no_namespaces() {
    if !require_privileged("teardown_leaves_no_namespaces") {
        return;
    }
    let (nodes, pods_per_node) = (3, 2);
    let topo = MultiNodeTopology::create(nodes, pods_per_node).unwrap();
    let tag = topo.tag().to_owned();
    // lan + nodes + their pods + a client pod per node + the external client.
    let expected = 1 + nodes + nodes * pods_per_node + nodes + 1;
    assert_eq!(
        namespaces_with(&tag).len(),
        expected,
        "{:?}",
        namespaces_with(&tag)
    );

    for i in 0..nodes {
        let links = topo.node(i).ip(["-o", "link", "show"]).unwrap();
        assert!(links.contains(&format!(": {}@", topo.uplink(i))), "{links}");
        for index in 1..=pods_per_node + 1 {
            assert!(links.contains(&format!(": lbh{index}@")), "{links}");
        }
        // Forwarding, and loose reverse-path filtering on the interfaces
        // created after the namespace (the uplink, the pod veths).
        let uplink = topo.uplink(i).to_owned();
        let sysctls = topo
            .node(i)
            .run(move || {
                [
                    "ipv4/ip_forward",
                    &format!("ipv4/conf/{uplink}/rp_filter"),
                    "ipv4/conf/lbh1/rp_filter",
                ]
                .map(|key| fs::read_to_string(format!("/proc/sys/net/{key}")).unwrap())
            })
            .unwrap();
        assert_eq!(sysctls.map(|v| v.trim().to_owned()), ["1", "2", "2"]);
    }
    assert_eq!(topo.node_interfaces(), "lbn*");
    assert_eq!(topo.pod_interfaces(), "lbh*");
    let root_links = run(Command::new("ip").args(["-o", "link", "show"]));
    for line in root_links.lines() {
        let name = line.split(':').nth(1).unwrap_or_default().trim();
        assert!(
            !["lbn", "lbh", "lan-"].iter().any(|p| name.starts_with(p)),
            "a testbed link in the root namespace: {line}"
        );
    }
    drop(topo);
    assert_eq!(namespaces_with(&tag), Vec::<String>::new());

    // Unwinding drops it as well.
    let mut tag = String::new();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let topo = MultiNodeTopology::create(2, 1).unwrap();
        tag = topo.tag().to_owned();
        panic!("a test failing with the topology up");
    }));
    assert!(outcome.is_err());
    assert!(!tag.is_empty());
    assert_eq!(namespaces_with(&tag), Vec::<String>::new());
}

/// One TCP and one UDP request from `from` to each of `to`: each answered by
/// that pod, which saw `from`'s own address.
fn expect_answers(from: &Pod, to: &[Pod]) {
    let client = Client::new(from);
    for pod in to {
        for (proto, replies) in [
            (
                "tcp",
                client.tcp_requests(pod.ip, TCP_PORT, 1, DEFAULT_TIMEOUT),
            ),
            (
                "udp",
                client.udp_requests(pod.ip, UDP_PORT, 1, DEFAULT_TIMEOUT),
            ),
        ] {
            let reply = replies.unwrap().remove(0).unwrap_or_else(|e| {
                panic!("{proto} {} -> {} ({}): {e}", from.name, pod.name, pod.ip)
            });
            assert_eq!(
                reply.backend, pod.name,
                "{proto} {} -> {}",
                from.name, pod.ip
            );
            assert_eq!(
                reply.seen_peer.ip(),
                from.ip,
                "{proto} {} -> {}",
                from.name,
                pod.name
            );
        }
    }
}

/// Answers one connection on `listener` the way the pod servers do,
/// `"<name> <peer>\n"`, or gives up after a few seconds so a failed request
/// cannot hang the test.
fn answer_once(listener: TcpListener, name: String) -> JoinHandle<()> {
    thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (stream, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{name}: accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT)).unwrap();
        // Read the request line first: closing with unread data sends an RST.
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream)
            .write_all(format!("{name} {peer}\n").as_bytes())
            .unwrap();
    })
}

/// The names in `ip netns list` that contain `tag`.
fn namespaces_with(tag: &str) -> Vec<String> {
    let list = run(Command::new("ip").args(["netns", "list"]));
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.contains(tag))
        .map(str::to_owned)
        .collect()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}
