//! End to end: a Service whose endpoints are all unready refuses at once.
//! A TCP connect to its ClusterIP is refused by the datapath's RST and a
//! UDP request by its ICMP port unreachable, in milliseconds rather than
//! after a client timeout. All traffic stays inside the testbed's network
//! namespaces. Needs root and a bpffs; set LB_SKIP_PRIVILEGED=1 to skip.

use std::fs;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use lb_testbed::agent::AgentProcess;
use lb_testbed::privileged::require_privileged;
use lb_testbed::scratch::ScratchDir;
use lb_testbed::topology::ClusterIpTopology;
use lb_testbed::{WEB_TCP_PORT, WEB_UDP_PORT, WEB_VIP};

/// A refusal must come this fast: far below any retransmission timer.
const REFUSED_WITHIN: Duration = Duration::from_millis(100);
/// How long a client waits before calling it a timeout instead.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// `web`, as in `examples/web.yaml`, but its only endpoint is not ready.
const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs:
    - 10.96.0.10
  ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: 8080
    - name: dns
      port: 53
      protocol: UDP
      targetPort: 5353
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
  - name: http
    port: 8080
    protocol: TCP
  - name: dns
    port: 5353
    protocol: UDP
endpoints:
  - addresses: ["10.244.1.2"]
    conditions:
      ready: false
    nodeName: node-a
"#;

/// How a TCP connect to `addr` ended, and how long it took.
fn tcp_connect(addr: SocketAddr) -> (ErrorKind, Duration) {
    let start = Instant::now();
    let kind = match TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT) {
        Ok(_) => panic!("{addr} accepted a connection without endpoints"),
        Err(e) => e.kind(),
    };
    (kind, start.elapsed())
}

/// How a UDP request to `addr` from a connected socket ended (the ICMP
/// error surfaces as ECONNREFUSED on the next receive), and how long it took.
fn udp_request(addr: SocketAddr) -> (ErrorKind, Duration) {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect(addr).unwrap();
    socket.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    let start = Instant::now();
    socket.send(b"query").unwrap();
    let kind = match socket.recv(&mut [0u8; 64]) {
        Ok(_) => panic!("{addr} answered without endpoints"),
        Err(e) => e.kind(),
    };
    (kind, start.elapsed())
}

/// The default pod hook, TC ingress: the rejection is redirected back out
/// of the veth it came in on.
#[test]
fn service_without_ready_endpoints_refuses_at_once() {
    if !require_privileged("service_without_ready_endpoints_refuses_at_once") {
        return;
    }
    refuses_tcp_and_udp_at_once(&[]);
}

/// `--pod-hook xdp` in native mode: the rejection goes back through
/// `lb_tc_ingress` (XDP metadata), or XDP_TX on kernels that refuse XDP
/// metadata, which a veth delivers only to a pod end with NAPI (GRO on).
#[test]
fn service_without_ready_endpoints_refuses_at_once_with_native_xdp() {
    if !require_privileged("service_without_ready_endpoints_refuses_at_once_with_native_xdp") {
        return;
    }
    refuses_tcp_and_udp_at_once(&["--pod-hook", "xdp", "--xdp-mode", "native"]);
}

#[test]
fn service_without_ready_endpoints_refuses_at_once_with_generic_xdp() {
    if !require_privileged("service_without_ready_endpoints_refuses_at_once_with_generic_xdp") {
        return;
    }
    refuses_tcp_and_udp_at_once(&["--pod-hook", "xdp", "--xdp-mode", "generic"]);
}

fn refuses_tcp_and_udp_at_once(agent_args: &[&str]) {
    let scratch = ScratchDir::new().unwrap();
    let manifests = scratch.path().join("manifests");
    fs::create_dir(&manifests).unwrap();
    fs::write(manifests.join("web.yaml"), MANIFEST).unwrap();

    let topo = ClusterIpTopology::create(1).unwrap();
    let client = &topo.client().ns;
    let mut agent = AgentProcess::start(
        Path::new(lb_testbed::bins::agent()),
        topo.node(),
        &manifests,
        &topo.pod_interfaces(),
        agent_args,
    )
    .unwrap();
    let tcp = SocketAddr::from((WEB_VIP, WEB_TCP_PORT));
    let udp = SocketAddr::from((WEB_VIP, WEB_UDP_PORT));
    // Ready once the frontend exists: until then nothing answers the VIP.
    let ready = agent
        .wait_ready(Duration::from_secs(15), || {
            client.run(move || tcp_connect(tcp).0).unwrap() == ErrorKind::ConnectionRefused
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    println!("agent ready after {ready:?}");

    let (kind, tcp_time) = client.run(move || tcp_connect(tcp)).unwrap();
    println!("{agent_args:?}: TCP connect to {tcp}: {kind:?} after {tcp_time:?}");
    assert_eq!(kind, ErrorKind::ConnectionRefused);
    assert!(tcp_time < REFUSED_WITHIN, "TCP refused after {tcp_time:?}");

    let (kind, udp_time) = client.run(move || udp_request(udp)).unwrap();
    println!("{agent_args:?}: UDP request to {udp}: {kind:?} after {udp_time:?}");
    assert_eq!(kind, ErrorKind::ConnectionRefused);
    assert!(udp_time < REFUSED_WITHIN, "UDP refused after {udp_time:?}");
    assert!(agent.exited().is_none(), "{}", agent.log());
}
