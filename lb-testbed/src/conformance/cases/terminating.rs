//! §7 Terminating and unready endpoints (KEP-1669).
//!
//! A pod being deleted is expressed as the EndpointSlice controller writes
//! it: `terminating: true`, `serving` = the pod's readiness, `ready` false,
//! except under publishNotReadyAddresses, where `ready` is always true.
//! Upstream repeats each check 5 rounds, 5 s apart; we keep the 5 rounds,
//! 1 s apart, to stay fast.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};

use super::policies::{all_failed, hc_status, names, route_lb, with_ingress};
use crate::client::Transport;
use crate::conformance::cluster::eventually;
use crate::conformance::objects::{http, service, slice, Endpoint, HTTP};
use crate::conformance::{Binaries, Case, Cluster, ClusterSpec, NotRun, Outcome, Speed};
use crate::topology::Pod;

const SECTION: &str = "7 Terminating";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 207);
const NODE_PORT: u16 = 30710;
const HC_PORT: u16 = 30711;
const ROUNDS: usize = 5;
const ROUND_GAP: Duration = Duration::from_secs(1);

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "pnra_true_terminating_unready_reachable",
            section: SECTION,
            upstream: "should connect to the terminating and unready endpoints when PublishNotReadyAddresses is true (ClusterIP, node0:NP, node1:NP from the other node, 5 rounds)",
            speed: Speed::Fast,
            run: pnra_true,
        },
        Case {
            id: "pnra_false_terminating_unready_not_reachable",
            section: SECTION,
            upstream: "should not connect to the terminating and unready endpoints when PublishNotReadyAddresses is false (fail within ~30 s, then 5 rounds all fail)",
            speed: Speed::Fast,
            run: pnra_false,
        },
        Case {
            id: "fallback_terminating_itp_cluster",
            section: SECTION,
            upstream: "should fallback to terminating endpoints when there are no ready endpoints with internalTrafficPolicy=Cluster (node0 and node1 clients 5x)",
            speed: Speed::Fast,
            run: fallback_itp_cluster,
        },
        Case {
            id: "fallback_terminating_itp_local",
            section: SECTION,
            upstream: "should fallback to local terminating endpoints when there are no ready endpoints with internalTrafficPolicy=Local (node0 succeeds, node1 fails, 5 rounds)",
            speed: Speed::Fast,
            run: fallback_itp_local,
        },
        Case {
            id: "fallback_terminating_etp_cluster",
            section: SECTION,
            upstream: "should fallback to terminating endpoints when there are no ready endpoints with externallTrafficPolicy=Cluster (both clients -> node0:NP 5x)",
            speed: Speed::Fast,
            run: fallback_etp_cluster,
        },
        Case {
            id: "fallback_terminating_etp_local",
            section: SECTION,
            upstream: "should fallback to local terminating endpoints when there are no ready endpoints with externalTrafficPolicy=Local (node0 pod -> node1:NP fails; node0 and node1 pods -> node0:NP succeed)",
            speed: Speed::Fast,
            run: fallback_etp_local,
        },
        Case {
            id: "hc_503_with_only_terminating_endpoints",
            section: SECTION,
            upstream: "should fail health check node port if there are only terminating endpoints (HC 200 while ready; 503 within 1 min after delete; nodePort still serves)",
            speed: Speed::Fast,
            run: hc_only_terminating,
        },
    ]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}

/// The Service: `type_` with `extra` spec lines, nodePort when not ClusterIP.
fn apply_service(cluster: &Cluster, type_: &str, extra: &str) -> Result<()> {
    let port = if type_ == "ClusterIP" {
        http(80)
    } else {
        http(80).node_port(NODE_PORT)
    };
    cluster.apply(&service("term", type_, VIP, &[port], extra))
}

fn apply_endpoint(cluster: &Cluster, endpoint: Endpoint) -> Result<()> {
    cluster.apply(&slice("term-1", "term", &[HTTP], &[endpoint]))
}

/// Its pod was deleted and is shutting down, still serving.
fn terminating(pod: &Pod, node: &str) -> Endpoint {
    Endpoint::ready(pod, node).terminating()
}

/// One request from `pod` to `to` succeeds, answered by `backend`.
fn served_by(cluster: &Cluster, pod: &Pod, to: SocketAddr, backend: &str) -> bool {
    cluster
        .from_pod(pod, Transport::Tcp, to, 1)
        .ok()
        .and_then(|r| names(&r).ok())
        .is_some_and(|n| n == [backend])
}

/// `ROUNDS` rounds over `checks` (client, destination, expect success),
/// `ROUND_GAP` apart; an error naming the first check that went wrong.
fn check_rounds(
    cluster: &Cluster,
    backend: &str,
    checks: &[(&Pod, SocketAddr, bool)],
) -> Result<()> {
    for round in 1..=ROUNDS {
        if round > 1 {
            std::thread::sleep(ROUND_GAP);
        }
        for &(pod, to, ok) in checks {
            let results = cluster.from_pod(pod, Transport::Tcp, to, 1)?;
            if ok {
                let by = names(&results)
                    .with_context(|| format!("round {round}: {} -> {to}", pod.name))?;
                ensure!(
                    by == [backend],
                    "round {round}: {} -> {to}: answered by {by:?}",
                    pod.name
                );
            } else {
                ensure!(
                    all_failed(&results),
                    "round {round}: {} -> {to} was served: {results:?}",
                    pod.name
                );
            }
        }
    }
    Ok(())
}

/// Upstream: NodePort Service with publishNotReadyAddresses; its pod on
/// node0 is deleted and turns unready; from a pod on the other node,
/// ClusterIP, node0:NP and node1:NP return the terminating pod, 5 rounds.
/// The controller writes that pod as ready: true, serving: false,
/// terminating: true.
fn pnra_true(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let topo = &cluster.topo;
    let (pod, node) = (&topo.pods(0)[0], topo.node_name(0));
    apply_service(&cluster, "NodePort", "  publishNotReadyAddresses: true\n")?;
    apply_endpoint(&cluster, Endpoint::ready(pod, node))?;
    let client = topo.client_pod(1);
    let vip = SocketAddr::from((VIP, 80));
    eventually("served", Duration::from_secs(10), || {
        served_by(&cluster, client, vip, &pod.name)
    })?;
    apply_endpoint(
        &cluster,
        Endpoint {
            ready: true,
            serving: false,
            terminating: true,
            ..Endpoint::ready(pod, node)
        },
    )?;
    // The rounds must see the change programmed (served the same either way).
    std::thread::sleep(Duration::from_secs(1));
    let checks = [
        (client, vip, true),
        (client, SocketAddr::from((topo.node_ip(0), NODE_PORT)), true),
        (client, SocketAddr::from((topo.node_ip(1), NODE_PORT)), true),
    ];
    check_rounds(&cluster, &pod.name, &checks)?;
    Ok(Outcome::new(format!(
        "{ROUNDS} rounds x (ClusterIP, node-a:NP, node-b:NP) from node-b's pod: all answered by the terminating, unready {}",
        pod.name
    )))
}

/// Upstream: the same without publishNotReadyAddresses: once the pod is
/// unready and terminating (ready false, serving false), both nodePorts
/// fail within ~30 s, then ClusterIP and both nodePorts fail 5 rounds.
fn pnra_false(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let topo = &cluster.topo;
    let (pod, node) = (&topo.pods(0)[0], topo.node_name(0));
    apply_service(&cluster, "NodePort", "")?;
    apply_endpoint(&cluster, Endpoint::ready(pod, node))?;
    let client = topo.client_pod(1);
    let vip = SocketAddr::from((VIP, 80));
    let np = [
        SocketAddr::from((topo.node_ip(0), NODE_PORT)),
        SocketAddr::from((topo.node_ip(1), NODE_PORT)),
    ];
    eventually("served", Duration::from_secs(10), || {
        served_by(&cluster, client, vip, &pod.name)
    })?;
    for to in np {
        ensure!(
            served_by(&cluster, client, to, &pod.name),
            "{to} not served while ready"
        );
    }
    apply_endpoint(&cluster, terminating(pod, node).unready())?;
    let took = eventually("both nodePorts fail", Duration::from_secs(30), || {
        np.iter().all(|&to| {
            cluster
                .from_pod(client, Transport::Tcp, to, 1)
                .is_ok_and(|r| all_failed(&r))
        })
    })?;
    let checks = [
        (client, vip, false),
        (client, np[0], false),
        (client, np[1], false),
    ];
    check_rounds(&cluster, &pod.name, &checks)?;
    Ok(Outcome::new(format!(
        "both nodePorts failed {:.1} s after the pod turned unready (upstream: ~30 s); then {ROUNDS} rounds x (ClusterIP, node-a:NP, node-b:NP) all failed",
        took.as_secs_f64()
    )))
}

/// Starts a cluster whose only endpoint, a-pod-1 on node-a, is ready, then
/// turns terminating (still serving) once `probe` has seen it served.
fn with_terminating_endpoint(
    bins: &Binaries,
    type_: &str,
    extra: &str,
    probe: impl Fn(&Cluster) -> bool,
) -> Result<Cluster> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let (pod, node) = (&cluster.topo.pods(0)[0], cluster.topo.node_name(0));
    apply_service(&cluster, type_, extra)?;
    apply_endpoint(&cluster, Endpoint::ready(pod, node))?;
    eventually("served while ready", Duration::from_secs(10), || {
        probe(&cluster)
    })?;
    apply_endpoint(&cluster, terminating(pod, node))?;
    // Give the change time to be programmed before the rounds start: the
    // rounds must see the fallback, not the state before it.
    std::thread::sleep(Duration::from_secs(1));
    Ok(cluster)
}

fn fallback_itp_cluster(bins: &Binaries) -> Result<Outcome> {
    let vip = SocketAddr::from((VIP, 80));
    let cluster = with_terminating_endpoint(bins, "ClusterIP", "", |c| {
        served_by(c, c.topo.client_pod(0), vip, &c.topo.pods(0)[0].name)
    })?;
    let topo = &cluster.topo;
    let backend = &topo.pods(0)[0].name;
    check_rounds(
        &cluster,
        backend,
        &[
            (topo.client_pod(0), vip, true),
            (topo.client_pod(1), vip, true),
        ],
    )?;
    Ok(Outcome::new(format!(
        "{ROUNDS} rounds: node-a and node-b pods -> ClusterIP all answered by the terminating {backend}"
    )))
}

fn fallback_itp_local(bins: &Binaries) -> Result<Outcome> {
    let vip = SocketAddr::from((VIP, 80));
    let cluster =
        with_terminating_endpoint(bins, "ClusterIP", "  internalTrafficPolicy: Local\n", |c| {
            served_by(c, c.topo.client_pod(0), vip, &c.topo.pods(0)[0].name)
        })?;
    let topo = &cluster.topo;
    let backend = &topo.pods(0)[0].name;
    check_rounds(
        &cluster,
        backend,
        &[
            (topo.client_pod(0), vip, true),
            (topo.client_pod(1), vip, false),
        ],
    )?;
    Ok(Outcome::new(format!(
        "{ROUNDS} rounds: node-a pod -> ClusterIP answered by the terminating {backend}, node-b pod failed"
    )))
}

fn fallback_etp_cluster(bins: &Binaries) -> Result<Outcome> {
    let cluster = with_terminating_endpoint(
        bins,
        "NodePort",
        "  externalTrafficPolicy: Cluster\n",
        |c| {
            let np = SocketAddr::from((c.topo.node_ip(0), NODE_PORT));
            served_by(c, c.topo.client_pod(1), np, &c.topo.pods(0)[0].name)
        },
    )?;
    let topo = &cluster.topo;
    let backend = &topo.pods(0)[0].name;
    let np = SocketAddr::from((topo.node_ip(0), NODE_PORT));
    check_rounds(
        &cluster,
        backend,
        &[
            (topo.client_pod(0), np, true),
            (topo.client_pod(1), np, true),
        ],
    )?;
    Ok(Outcome::new(format!(
        "{ROUNDS} rounds: node-a and node-b pods -> node-a:NP all answered by the terminating {backend}"
    )))
}

/// Upstream: eTP=Local NodePort, the only (terminating) endpoint on node0;
/// a pod on node0 -> node1:NP fails (node1 has no local endpoint for
/// external traffic), pods on node0 and node1 -> node0:NP succeed.
fn fallback_etp_local(bins: &Binaries) -> Result<Outcome> {
    let cluster =
        with_terminating_endpoint(bins, "NodePort", "  externalTrafficPolicy: Local\n", |c| {
            let np = SocketAddr::from((c.topo.node_ip(0), NODE_PORT));
            served_by(c, c.topo.client_pod(1), np, &c.topo.pods(0)[0].name)
        })?;
    let topo = &cluster.topo;
    let backend = &topo.pods(0)[0].name;
    let (np0, np1) = (
        SocketAddr::from((topo.node_ip(0), NODE_PORT)),
        SocketAddr::from((topo.node_ip(1), NODE_PORT)),
    );
    check_rounds(
        &cluster,
        backend,
        &[
            (topo.client_pod(0), np1, false),
            (topo.client_pod(0), np0, true),
            (topo.client_pod(1), np0, true),
        ],
    )?;
    Ok(Outcome::new(format!(
        "{ROUNDS} rounds: node-a pod -> node-b:NP failed; node-a and node-b pods -> node-a:NP answered by the terminating {backend}"
    )))
}

/// Upstream: LB with eTP=Local; the HC node port answers 200 while the pod
/// is ready (polled every 1 s for up to 1 min); the pod is deleted: HC 503
/// within 1 min, and the nodePort still serves the terminating pod.
fn hc_only_terminating(bins: &Binaries) -> Result<Outcome> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 1))?;
    let topo = &cluster.topo;
    let (pod, node) = (&topo.pods(0)[0], topo.node_name(0));
    cluster.apply(&with_ingress(
        &service(
            "term",
            "LoadBalancer",
            VIP,
            &[http(80).node_port(NODE_PORT)],
            &format!("  externalTrafficPolicy: Local\n  healthCheckNodePort: {HC_PORT}\n"),
        ),
        LB_IP,
    ))?;
    apply_endpoint(&cluster, Endpoint::ready(pod, node))?;
    let ready = eventually("HC 200 while ready", Duration::from_secs(60), || {
        hc_status(&cluster, 0, HC_PORT) == Some(200)
    })?;
    apply_endpoint(&cluster, terminating(pod, node))?;
    let changed = Instant::now();
    let failing = eventually(
        "HC 503 with only a terminating endpoint",
        Duration::from_secs(60),
        || hc_status(&cluster, 0, HC_PORT) == Some(503),
    )?;
    let np = SocketAddr::from((topo.node_ip(0), NODE_PORT));
    let results = cluster.from_outside(Transport::Tcp, np, 10)?;
    let by = names(&results).context("node-a:NP with only a terminating endpoint")?;
    ensure!(
        by.iter().all(|n| *n == pod.name),
        "node-a:NP answered by {by:?}"
    );
    route_lb(&cluster, LB_IP, 0)?;
    let results = cluster.from_outside(Transport::Tcp, SocketAddr::from((LB_IP, 80)), 10)?;
    let lb = names(&results).context("LB IP with only a terminating endpoint")?;
    ensure!(lb.iter().all(|n| *n == pod.name), "LB answered by {lb:?}");
    Ok(Outcome::new(format!(
        "HC 200 {:.1} s after the Service; 503 {:.1} s after the pod turned terminating (upstream: 1 min); node-a:NP and the LB IP still 10/10 by the terminating pod ({} ms since the change)",
        ready.as_secs_f64(),
        failing.as_secs_f64(),
        changed.elapsed().as_millis()
    )))
}
