//! Conntrack flood (issue 9): with the conntrack map sized 65 536 entries,
//! 100 long-lived TCP connections exchanging a line every 100 ms must all
//! survive a flood of 1 000 000 new UDP 5-tuples through a Service from
//! the same client pod (two entries per flow: 30 times the map), and new
//! connections must keep succeeding meanwhile. The LRU keeps recently used
//! flows; a connection whose entries are evicted anyway keeps its backend,
//! since new flows are balanced by a hash of the 5-tuple
//! (`ct_miss_midflow`). Needs root and a bpffs; LB_SKIP_PRIVILEGED=1 skips.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lb_testbed::{
    flood::udp_flood,
    lbctl_run as lbctl,
    privileged::require_privileged,
    servers::LINE_PORT,
    stream::{describe_failures, ConnectionStream, RequestStream},
    web_bed::{WebBed, WEB_YAML},
    WEB_TCP_PORT, WEB_VIP,
};

const CT_MAX: &str = "65536";
const FLOWS: u64 = 1_000_000;
const CONNECTIONS: usize = 100;
const EXCHANGE_EVERY: Duration = Duration::from_millis(100);
/// A new connection to the `web` Service this often during the flood.
const REQUEST_EVERY: Duration = Duration::from_millis(20);
/// Datagrams per second: what the client's veth delivers without loss
/// here (faster, the veth drops some before the datapath sees them).
const FLOOD_RATE: u32 = 150_000;
/// Datagrams per flood call, between looks at the datapath's counters.
const CHUNK: u64 = 100_000;
/// Never more than the 5-tuples the flood ports give.
const MAX_SENT: u64 = 20 * 64_512 - CHUNK;

const LINES_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const LINES_PORT: u16 = 81;
const FLOOD_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
/// 20 UDP ports x 64 512 source ports: 1 290 240 distinct 5-tuples.
const FLOOD_PORTS: std::ops::Range<u16> = 9000..9020;
/// Nothing listens there: the pods' kernels discard the datagrams.
const DISCARD_PORT: u16 = 9;

#[test]
fn long_lived_connections_survive_a_million_new_flows() {
    if !require_privileged("long_lived_connections_survive_a_million_new_flows") {
        return;
    }
    let files = [("web.yaml", WEB_YAML), ("flood.yaml", &flood_yaml())];
    let bed = WebBed::start(lb_testbed::bins::agent(), &files, &["--ct-map-max", CT_MAX]).unwrap();
    let client = bed.topo.client();
    let conns =
        ConnectionStream::open(client, LINES_VIP, LINES_PORT, CONNECTIONS, EXCHANGE_EVERY).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let before = conns.snapshot();
    assert_eq!(
        before.failed(),
        0,
        "before the flood:\n{}",
        before.summary()
    );
    assert!(
        before.stalled(3).is_empty(),
        "before the flood:\n{}",
        before.summary()
    );

    let requests = RequestStream::start(client, WEB_VIP, WEB_TCP_PORT, REQUEST_EVERY).unwrap();
    let origin = Instant::now();
    // In chunks until a million new flows reached the datapath: on a busy
    // machine the client's veth drops some of what it is given.
    let ports: Vec<u16> = FLOOD_PORTS.collect();
    let new_flows = || {
        let stats = lbctl::reason_counts(lb_testbed::bins::lbctl(), bed.agent.pin_dir()).unwrap();
        stats.get("dnat_new_flow").copied().unwrap_or(0)
    };
    let (baseline, mut sent) = (new_flows(), 0);
    while new_flows() - baseline < FLOWS && sent < MAX_SENT {
        let chunk = udp_flood(
            &client.ns, client.ip, FLOOD_VIP, &ports, sent, CHUNK, FLOOD_RATE,
        );
        sent += chunk.unwrap().sent;
    }
    let flood_took = origin.elapsed();
    let balanced = new_flows() - baseline;
    std::thread::sleep(Duration::from_secs(1));
    let outcomes = requests.stop();
    let window = conns.snapshot().since(&before);
    let stats = lbctl::reason_counts(lb_testbed::bins::lbctl(), bed.agent.pin_dir()).unwrap();

    let survived = (window.connections.iter())
        .filter(|c| c.failed == 0 && c.ok > 0)
        .count();
    let requests_failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    println!(
        "flood: {sent} datagrams sent, {balanced} new flows balanced in {:.1} s ({:.0}/s); \
         {survived}/{CONNECTIONS} long-lived connections survived ({} exchanges ok, {} failed); \
         new connections meanwhile: {} of {} failed; datapath: {stats:?}",
        flood_took.as_secs_f64(),
        balanced as f64 / flood_took.as_secs_f64(),
        window.ok(),
        window.failed(),
        requests_failed,
        outcomes.len(),
    );
    assert!(
        balanced >= FLOWS,
        "only {balanced} new flows reached the datapath"
    );
    assert_eq!(
        survived,
        CONNECTIONS,
        "during the flood:\n{}",
        window.summary()
    );
    let min_ok = (flood_took.as_millis() / EXCHANGE_EVERY.as_millis() / 2) as u64;
    assert!(
        window.stalled(min_ok).is_empty(),
        "stalled:\n{}",
        window.summary()
    );
    // The flood shares the client's veth with its new connections: a SYN
    // the veth drops costs a retransmission (1 s, the request timeout).
    let failed_share = requests_failed as f64 / outcomes.len() as f64;
    assert!(
        failed_share <= 0.02,
        "{}",
        describe_failures(&outcomes, origin)
    );
}

/// `lines` (81/TCP -> the line-echo servers) and `flood` (16 UDP ports ->
/// port 9, where nothing listens) on the three pods of `examples/web.yaml`.
fn flood_yaml() -> String {
    let pods = ["10.244.1.2", "10.244.2.2", "10.244.3.2"];
    let endpoints: String = pods
        .iter()
        .map(|ip| {
            format!("- {{addresses: [\"{ip}\"], conditions: {{ready: true}}, nodeName: node-a}}\n")
        })
        .collect();
    let flood_ports: String = FLOOD_PORTS
        .map(|p| {
            format!("  - {{name: u{p}, port: {p}, protocol: UDP, targetPort: {DISCARD_PORT}}}\n")
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: lines, namespace: default}}
spec:
  clusterIP: {LINES_VIP}
  ports:
  - {{name: lines, port: {LINES_PORT}, protocol: TCP, targetPort: {LINE_PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: lines-1, namespace: default, labels: {{kubernetes.io/service-name: lines}}}}
addressType: IPv4
ports:
- {{name: lines, port: {LINE_PORT}, protocol: TCP}}
endpoints:
{endpoints}---
apiVersion: v1
kind: Service
metadata: {{name: flood, namespace: default}}
spec:
  clusterIP: {FLOOD_VIP}
  ports:
{flood_ports}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: flood-1, namespace: default, labels: {{kubernetes.io/service-name: flood}}}}
addressType: IPv4
ports:
{slice_ports}endpoints:
{endpoints}",
        slice_ports = FLOOD_PORTS
            .map(|p| format!("- {{name: u{p}, port: {DISCARD_PORT}, protocol: UDP}}\n"))
            .collect::<String>(),
    )
}
