//! Maps too small for the Services, end to end: the agent runs with a
//! rev-NAT map of 3 entries (one per frontend), serves `examples/web.yaml`
//! (2 frontends), and is then given two more Services. The one that sorts
//! first by name gets the last entry; the other is left out with one error
//! naming it and a metric, the Services already programmed keep working,
//! and the agent neither crashes nor spins. Removing a Service gives its
//! room to the one left out. Needs root and a bpffs; LB_SKIP_PRIVILEGED=1
//! skips.

use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lb_testbed::{
    client::DEFAULT_TIMEOUT,
    http_get as http,
    privileged::require_privileged,
    wait_until,
    web_bed::{WebBed, WEB_YAML},
    WEB_TCP_PORT, WEB_VIP,
};

const FIRST_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const LAST_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

/// A one-port Service `default/<name>` at `vip`:80 served by pod-1.
fn one_port_service(name: &str, vip: Ipv4Addr) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {vip}
  ports: [{{name: http, port: 80, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
  - addresses: ["10.244.1.2"]
    conditions: {{ready: true}}
    nodeName: node-a
"#
    )
}

/// The agent's /metrics, read inside the node namespace.
fn metrics(bed: &WebBed) -> String {
    let addr = "127.0.0.1:10249".parse().unwrap();
    http::get(bed.topo.node(), addr, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("{series} ")))?;
    line.rsplit(' ').next()?.parse().ok()
}

fn answers(bed: &WebBed, vip: Ipv4Addr) -> bool {
    (bed.client().tcp_request(vip, WEB_TCP_PORT, DEFAULT_TIMEOUT)).is_ok_and(|r| r.is_ok())
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: fields 14 and 15 (utime, stime).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn services_beyond_the_maps_are_left_out_and_named_the_rest_keep_working() {
    if !require_privileged("services_beyond_the_maps_are_left_out_and_named_the_rest_keep_working")
    {
        return;
    }
    let mut bed = WebBed::start(
        lb_testbed::bins::agent(),
        &[("web.yaml", WEB_YAML)],
        &["--revnat-map-max", "3"],
    )
    .unwrap();
    let more =
        one_port_service("a-first", FIRST_VIP) + "---" + &one_port_service("zz-last", LAST_VIP);
    bed.write("more.yaml", &more).unwrap();

    let ten_s = || Instant::now() + Duration::from_secs(10);
    assert!(
        wait_until(ten_s(), || answers(&bed, FIRST_VIP)),
        "{}",
        bed.agent.log()
    );
    assert!(
        answers(&bed, WEB_VIP),
        "the Service programmed before still answers"
    );
    assert!(
        !answers(&bed, LAST_VIP),
        "{LAST_VIP} answered: it cannot fit"
    );
    let mut text = String::new();
    let counted = wait_until(ten_s(), || {
        text = metrics(&bed);
        sample(&text, "lb_frontends_left_out") == Some(1.0)
    });
    assert!(counted, "{text}");
    assert_eq!(sample(&text, "lb_services_left_out"), Some(1.0), "{text}");
    // web's two frontends and a-first's.
    assert_eq!(
        sample(&text, "lb_frontends_programmed"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(sample(&text, "lb_services_programmed"), Some(2.0), "{text}");

    // No crash, no busy loop, and the error said once.
    let pid = bed.agent.pid();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let spent = cpu_ticks(pid) - before;
    assert!(bed.agent.exited().is_none(), "{}", bed.agent.log());
    assert!(
        spent < 75,
        "the agent used {spent} ticks of CPU in 3 s while over capacity"
    );
    let error = "Service default/zz-last: frontend 10.96.0.30:80/TCP is not programmed: map lb_revnat_v2 is full (3 entries)";
    let log = bed.agent.log();
    assert_eq!(log.matches(error).count(), 1, "{log}");

    // a-first goes: its entry is zz-last's now.
    bed.write("more.yaml", &one_port_service("zz-last", LAST_VIP))
        .unwrap();
    assert!(
        wait_until(ten_s(), || answers(&bed, LAST_VIP)),
        "{}",
        bed.agent.log()
    );
    assert!(answers(&bed, WEB_VIP));
    assert!(wait_until(ten_s(), || sample(
        &metrics(&bed),
        "lb_frontends_left_out"
    ) == Some(0.0)));
    bed.agent.stop().unwrap();
}
