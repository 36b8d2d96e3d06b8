//! What an operator sees of a running agent, end to end in namespaces:
//! /healthz and /livez on kube-proxy's port, /metrics, and the refusal to
//! start on an overlapping address plan. Needs root and a bpffs;
//! LB_SKIP_PRIVILEGED=1 skips.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_testbed::{
    agent::AgentProcess,
    apiserver::FakeApiServer,
    client::{Client, DEFAULT_TIMEOUT},
    http_get as http,
    netns::NetNs,
    privileged::require_privileged,
    scratch::ScratchDir,
    servers::Servers,
    topology::ClusterIpTopology,
    wait_until, WEB_TCP_PORT, WEB_VIP,
};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

/// The agent's defaults, inside the node namespace.
fn healthz() -> SocketAddr {
    "127.0.0.1:10256".parse().unwrap()
}
fn metrics() -> SocketAddr {
    "127.0.0.1:10249".parse().unwrap()
}

fn status(ns: &NetNs, addr: SocketAddr, path: &str) -> Option<u16> {
    http::get(ns, addr, path).ok().map(|(status, _)| status)
}

/// The value of the first sample line starting with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn health_and_metrics_follow_the_dataplane() {
    if !require_privileged("health_and_metrics_follow_the_dataplane") {
        return;
    }
    let topo = ClusterIpTopology::create(3).unwrap();
    let _servers = Servers::start(topo.backends()).unwrap();
    let mut agent = AgentProcess::start(
        lb_testbed::bins::agent(),
        topo.node(),
        EXAMPLES.as_ref(),
        &topo.pod_interfaces(),
        &[],
    )
    .unwrap();
    let node = topo.node();
    let ready = agent
        .wait_ready(Duration::from_secs(15), || {
            status(node, healthz(), "/healthz") == Some(200)
        })
        .unwrap();
    println!("/healthz 200 after {ready:?}");
    assert_eq!(status(node, healthz(), "/livez"), Some(200));
    assert_eq!(status(node, healthz(), "/nope"), Some(404));
    let (_, body) = http::get(node, healthz(), "/healthz").unwrap();
    assert!(body.contains("lastUpdated"), "{body}");

    // Traffic, then the counters the datapath keeps show up as metrics
    // within the agent's refresh period (5 s).
    let client = Client::new(topo.client());
    let answered = client
        .tcp_requests(WEB_VIP, WEB_TCP_PORT, 20, DEFAULT_TIMEOUT)
        .unwrap()
        .iter()
        .filter(|r| r.is_ok())
        .count();
    assert_eq!(answered, 20);
    let mut text = String::new();
    let counted = wait_until(Instant::now() + Duration::from_secs(10), || {
        text = http::get(node, metrics(), "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        sample(
            &text,
            r#"lb_datapath_packets_total{reason="dnat_new_flow"}"#,
        )
        .unwrap_or(0.0)
            >= 20.0
    });
    assert!(
        counted,
        "no datapath counters in /metrics:\n{text}\n{}",
        agent.log()
    );
    // examples/web.yaml: one Service, two frontends (80/TCP, 53/UDP), 3 pods.
    assert_eq!(sample(&text, "lb_services_programmed"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "lb_frontends_programmed"),
        Some(2.0),
        "{text}"
    );
    assert!(
        sample(&text, r#"lb_sync_total{result="success"}"#).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("# TYPE lb_network_programming_duration_seconds histogram"),
        "{text}"
    );
    // Map occupancy: 2 masters + 6 slots in the service map.
    let svc_entries = format!(
        r#"lb_map_entries{{map="{}"}}"#,
        lb_common::MapId::Services.name()
    );
    assert_eq!(sample(&text, &svc_entries), Some(8.0), "{text}");
    assert!(
        sample(&text, "lb_conntrack_entries").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    agent.stop().unwrap();
}

#[test]
fn healthz_fails_until_the_first_full_sync() {
    if !require_privileged("healthz_fails_until_the_first_full_sync") {
        return;
    }
    let topo = ClusterIpTopology::create(1).unwrap();
    let api = FakeApiServer::start_in(topo.node()).unwrap();
    api.set_unavailable(true);
    let scratch = ScratchDir::new().unwrap();
    let kubeconfig = scratch.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let source = [std::ffi::OsStr::new("--kubeconfig"), kubeconfig.as_os_str()];
    let mut agent = AgentProcess::start_with_source(
        lb_testbed::bins::agent(),
        topo.node(),
        &source,
        &topo.pod_interfaces(),
        &[],
    )
    .unwrap();
    let node = topo.node();
    // Serving, but not healthy: the Services cannot be listed.
    let answering = agent
        .wait_ready(Duration::from_secs(10), || {
            status(node, healthz(), "/healthz").is_some()
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (code, body) = http::get(node, healthz(), "/healthz").unwrap();
    assert_eq!(code, 503, "healthy before any sync: {body}");
    println!("/healthz answered 503 after {answering:?}: {body}");

    api.set_unavailable(false);
    let healthy = agent
        .wait_ready(Duration::from_secs(30), || {
            status(node, healthz(), "/healthz") == Some(200)
        })
        .unwrap();
    println!("/healthz 200 {healthy:?} after the API server came back");
    agent.stop().unwrap();
}

#[test]
fn overlapping_service_and_pod_ranges_are_refused() {
    if !require_privileged("overlapping_service_and_pod_ranges_are_refused") {
        return;
    }
    let topo = ClusterIpTopology::create(1).unwrap();
    let mut agent = AgentProcess::start(
        lb_testbed::bins::agent(),
        topo.node(),
        EXAMPLES.as_ref(),
        &topo.pod_interfaces(),
        &["--cluster-cidr=10.96.0.0/16", "--service-cidr=10.96.0.0/12"],
    )
    .unwrap();
    let exited = wait_until(Instant::now() + Duration::from_secs(10), || {
        agent.exited().is_some()
    });
    assert!(exited, "the agent kept running:\n{}", agent.log());
    assert!(!agent.exited().unwrap().success());
    let log = agent.log();
    assert!(
        log.contains("--service-cidr 10.96.0.0/12 overlaps --cluster-cidr 10.96.0.0/16"),
        "{log}"
    );
    // Nothing was attached: the refusal comes before the datapath loads.
    assert!(!log.contains("attached"), "{log}");
}

/// A rollout sends SIGTERM: without --unpin-on-exit (the DaemonSet's way)
/// the datapath keeps serving with no agent at all, and `lb-agent
/// --cleanup` is what detaches it.
#[test]
fn sigterm_leaves_the_datapath_serving_until_cleanup() {
    if !require_privileged("sigterm_leaves_the_datapath_serving_until_cleanup") {
        return;
    }
    // examples/web.yaml's three endpoints.
    let topo = ClusterIpTopology::create(3).unwrap();
    let _servers = Servers::start(topo.backends()).unwrap();
    let mut agent = AgentProcess::start_keeping_pins(
        lb_testbed::bins::agent(),
        topo.node(),
        EXAMPLES.as_ref(),
        &topo.pod_interfaces(),
    )
    .unwrap();
    let client = Client::new(topo.client());
    let all_answered = |n| {
        client
            .tcp_requests(WEB_VIP, WEB_TCP_PORT, n, DEFAULT_TIMEOUT)
            .map(|rs| rs.iter().all(|r| r.is_ok()))
            .unwrap_or(false)
    };
    agent
        .wait_ready(Duration::from_secs(15), || all_answered(1))
        .unwrap();
    let status = agent.terminate().unwrap();
    assert!(status.success(), "{status}\n{}", agent.log());
    assert!(
        all_answered(30),
        "no agent: the pinned datapath must keep serving"
    );

    // On the node, as an uninstall runs it: netlink TC filters are found
    // by interface.
    let cleanup = agent
        .node_process(topo.node(), lb_testbed::bins::agent())
        .unwrap()
        .args(["--cleanup", "--bpffs"])
        .arg(agent.pin_dir())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(!agent.pin_dir().exists(), "pins left after --cleanup");
    // The kernel releases an unpinned link asynchronously: allow it a moment.
    let mut answers = Vec::new();
    let detached = wait_until(Instant::now() + Duration::from_secs(3), || {
        answers = client
            .tcp_requests(WEB_VIP, WEB_TCP_PORT, 3, Duration::from_millis(300))
            .unwrap();
        answers.iter().all(|r| r.is_err())
    });
    assert!(
        detached,
        "the ClusterIP still answers 3 s after --cleanup: {answers:?}"
    );
}
