//! Conntrack lifecycle end to end, with short timeouts so that it fits in
//! a test: a UDP flow's entries go after the UDP idle timeout, a closed
//! TCP connection's soon after its FIN, an open but idle TCP connection's
//! after the TCP idle timeout, and a busy connection's never; each read
//! from the pinned map with `lbctl ct list --json` as an operator would.
//! The agent's timeouts are kube-proxy's `--conntrack-*` settings under
//! our names. Needs root and a bpffs; LB_SKIP_PRIVILEGED=1 skips.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lb_testbed::{
    client::DEFAULT_TIMEOUT,
    privileged::require_privileged,
    servers::LINE_PORT,
    stream::ConnectionStream,
    web_bed::{WebBed, WEB_YAML},
    WEB_TCP_PORT, WEB_UDP_PORT, WEB_VIP,
};

/// The Service port this test adds for long-lived connections.
const LINES_PORT: u16 = 81;

const UDP_TIMEOUT: u64 = 2;
const TCP_CLOSING_TIMEOUT: u64 = 1;
const TCP_TIMEOUT: u64 = 5;
/// The datapath refreshes an entry's last-seen stamp at most once a second,
/// so an entry may expire up to this much before its timeout has passed
/// since the flow's very last packet.
const STAMP_GRANULARITY: f64 = 1.0;
/// One GC interval (1 s) plus scheduling slack on a loaded machine.
const GC_LATENESS: f64 = 2.5;

/// examples/web.yaml plus a `lines` port served by the line-echo servers.
fn manifest() -> String {
    let service_port =
        "    - name: dns\n      port: 53\n      protocol: UDP\n      targetPort: 5353\n";
    let slice_port = "  - name: dns\n    port: 5353\n    protocol: UDP\n";
    assert!(
        WEB_YAML.contains(service_port) && WEB_YAML.contains(slice_port),
        "examples/web.yaml changed shape"
    );
    WEB_YAML.replacen(
        service_port,
        &format!("{service_port}    - name: lines\n      port: {LINES_PORT}\n      protocol: TCP\n      targetPort: {LINE_PORT}\n"),
        1,
    )
    .replacen(
        slice_port,
        &format!("{slice_port}  - name: lines\n    port: {LINE_PORT}\n    protocol: TCP\n"),
        1,
    )
}

/// Client ports of the forward conntrack entries of `client`, per protocol.
fn tracked_ports(pin_dir: &Path, client: Ipv4Addr) -> Vec<(String, u16)> {
    let out = Command::new(lb_testbed::bins::lbctl())
        .arg("--bpffs")
        .arg(pin_dir)
        .args(["--json", "ct", "list"])
        .output()
        .expect("running lbctl");
    assert!(
        out.status.success(),
        "lbctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("lbctl JSON");
    doc["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["direction"] == "forward" && e["src"]["ip"] == client.to_string())
        .map(|e| {
            let proto = e["proto"].as_str().expect("proto").to_owned();
            (proto, e["src"]["port"].as_u64().expect("port") as u16)
        })
        .collect()
}

#[test]
fn conntrack_entries_expire_by_state_and_busy_flows_stay() {
    if !require_privileged("conntrack_entries_expire_by_state_and_busy_flows_stay") {
        return;
    }
    let secs = |n: u64| n.to_string();
    let bed = WebBed::start(
        lb_testbed::bins::agent(),
        &[("web.yaml", &manifest())],
        &[
            "--ct-udp-timeout-secs",
            &secs(UDP_TIMEOUT),
            "--ct-tcp-closing-timeout-secs",
            &secs(TCP_CLOSING_TIMEOUT),
            "--ct-tcp-timeout-secs",
            &secs(TCP_TIMEOUT),
            "--ct-gc-interval-secs",
            "1",
        ],
    )
    .unwrap();
    let (agent, pod, client) = (&bed.agent, bed.topo.client(), bed.client());
    // Let the readiness probe's own connection expire first.
    std::thread::sleep(Duration::from_secs(TCP_CLOSING_TIMEOUT + 3));

    let busy =
        ConnectionStream::open(pod, WEB_VIP, LINES_PORT, 1, Duration::from_millis(300)).unwrap();
    let busy_port = busy.snapshot().connections[0].local.port();
    let idle = pod
        .ns
        .run(|| TcpStream::connect_timeout(&(WEB_VIP, LINES_PORT).into(), DEFAULT_TIMEOUT))
        .unwrap()
        .unwrap();
    let idle_port = idle.local_addr().unwrap().port();
    let udp = client
        .udp_requests(WEB_VIP, WEB_UDP_PORT, 1, DEFAULT_TIMEOUT)
        .unwrap();
    let udp_port = udp[0].as_ref().expect("UDP answered").seen_peer.port();
    let closed = client
        .tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT)
        .unwrap();
    let closed_port = closed.expect("TCP answered").seen_peer.port();
    let start = Instant::now();

    let flows = [
        ("udp", udp_port, "UDP flow", UDP_TIMEOUT),
        (
            "tcp",
            closed_port,
            "closed TCP connection",
            TCP_CLOSING_TIMEOUT,
        ),
        ("tcp", idle_port, "idle open TCP connection", TCP_TIMEOUT),
    ];
    let present = tracked_ports(agent.pin_dir(), pod.ip);
    for (proto, port, what, _) in &flows {
        assert!(
            present.contains(&(proto.to_string(), *port)),
            "{what} not tracked: {present:?}"
        );
    }
    let mut gone_after: BTreeMap<&str, f64> = BTreeMap::new();
    let observe_for = Duration::from_secs_f64(TCP_TIMEOUT as f64 + GC_LATENESS + 0.5);
    while start.elapsed() < observe_for {
        let now = tracked_ports(agent.pin_dir(), pod.ip);
        for (proto, port, what, _) in &flows {
            if !now.contains(&(proto.to_string(), *port)) {
                gone_after
                    .entry(what)
                    .or_insert(start.elapsed().as_secs_f64());
            }
        }
        assert!(
            now.contains(&("tcp".to_string(), busy_port)),
            "the busy connection's entry expired after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("entries gone after (s): {gone_after:?}");
    for (_, _, what, timeout) in &flows {
        let t = *gone_after
            .get(what)
            .unwrap_or_else(|| panic!("{what}: still tracked after {observe_for:?}"));
        let (early, late) = (
            *timeout as f64 - STAMP_GRANULARITY,
            *timeout as f64 + GC_LATENESS,
        );
        assert!(
            (early..=late).contains(&t),
            "{what}: expired after {t:.1} s, timeout {timeout} s (allowed {early}-{late} s)"
        );
    }
    let stats = busy.snapshot();
    assert_eq!(stats.failed(), 0, "busy connection: {}", stats.summary());
    assert!(
        stats.stalled(10).is_empty(),
        "busy connection: {}",
        stats.summary()
    );
    drop(idle);
}
