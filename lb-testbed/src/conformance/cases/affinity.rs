//! §4 Session affinity (ClientIP).
//!
//! Upstream's checks: 3 serve-hostname pods; the client makes 16 requests
//! and passes when the last 15 (AffinityConfirmCount) came from one pod,
//! polled every 30 s for up to 2 min. We ask for more: all 16 from one pod
//! on the first round, right after the Service answers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, ensure, Result};

use super::policies::{names, route_lb, with_ingress};
use crate::client::Transport;
use crate::conformance::cluster::eventually;
use crate::conformance::objects::{http, service, slice, Endpoint, HTTP};
use crate::conformance::{Binaries, Case, Cluster, ClusterSpec, NotRun, Outcome, Speed};

const SECTION: &str = "4 Affinity";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 4, 10);
const NODE_PORT: u16 = 30410;
const HC_PORT: u16 = 30411;
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 204);
/// Upstream: 16 requests, the last 15 (AffinityConfirmCount) identical.
const REQUESTS: usize = 16;
const CONFIRM: usize = 15;
/// Upstream's bound for switching affinity (KubeProxyLagTimeout).
const SWITCH_WITHIN: Duration = Duration::from_secs(120);

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "affinity_clusterip",
            section: SECTION,
            upstream: "[C] should have session affinity work for service with type clusterIP (16 curls, last 15 identical, 2 min)",
            speed: Speed::Fast,
            run: |b| sticky_case(b, Via::ClusterIp),
        },
        Case {
            id: "affinity_nodeport",
            section: SECTION,
            upstream: "[C] should have session affinity work for NodePort service (16 curls, last 15 identical, 2 min)",
            speed: Speed::Fast,
            run: |b| sticky_case(b, Via::NodePort),
        },
        Case {
            id: "affinity_switch_clusterip",
            section: SECTION,
            upstream: "[C] should be able to switch session affinity for service with type clusterIP (None: >1 host within 2 min; ClientIP again: 15 identical)",
            speed: Speed::Fast,
            run: |b| switch_case(b, Via::ClusterIp),
        },
        Case {
            id: "affinity_switch_nodeport",
            section: SECTION,
            upstream: "[C] should be able to switch session affinity for NodePort service (None: >1 host within 2 min; ClientIP again: 15 identical)",
            speed: Speed::Fast,
            run: |b| switch_case(b, Via::NodePort),
        },
        Case {
            id: "affinity_timeout_clusterip_fast",
            section: SECTION,
            upstream: "should have session affinity timeout work for service with type clusterIP (timeoutSeconds 125, 130 s sleeps; here 3 s and 4.5 s)",
            speed: Speed::Fast,
            run: |b| timeout_case(b, Via::ClusterIp, FAST_TIMEOUT),
        },
        Case {
            id: "affinity_timeout_nodeport_fast",
            section: SECTION,
            upstream: "should have session affinity timeout work for NodePort service (timeoutSeconds 125, 130 s sleeps; here 3 s and 4.5 s)",
            speed: Speed::Fast,
            run: |b| timeout_case(b, Via::NodePort, FAST_TIMEOUT),
        },
        Case {
            id: "affinity_timeout_clusterip",
            section: SECTION,
            upstream: "should have session affinity timeout work for service with type clusterIP (timeoutSeconds 125; up to 10 curls 130 s apart must reach another pod)",
            speed: Speed::Slow,
            run: |b| timeout_case(b, Via::ClusterIp, UPSTREAM_TIMEOUT),
        },
        Case {
            id: "affinity_timeout_nodeport",
            section: SECTION,
            upstream: "should have session affinity timeout work for NodePort service (timeoutSeconds 125; up to 10 curls 130 s apart must reach another pod)",
            speed: Speed::Slow,
            run: |b| timeout_case(b, Via::NodePort, UPSTREAM_TIMEOUT),
        },
        Case {
            id: "affinity_lb_esipp_off",
            section: SECTION,
            upstream: "[Slow] should have session affinity work for LoadBalancer service with ESIPP off (runner -> LB ingress IP)",
            speed: Speed::Fast,
            run: |b| sticky_case(b, Via::Lb { local: false }),
        },
        Case {
            id: "affinity_lb_esipp_on",
            section: SECTION,
            upstream: "[Slow] should have session affinity work for LoadBalancer service with ESIPP on (runner -> LB ingress IP)",
            speed: Speed::Fast,
            run: |b| sticky_case(b, Via::Lb { local: true }),
        },
        Case {
            id: "affinity_switch_lb_esipp_off",
            section: SECTION,
            upstream: "[Slow] should be able to switch session affinity for LoadBalancer service with ESIPP off",
            speed: Speed::Fast,
            run: |b| switch_case(b, Via::Lb { local: false }),
        },
        Case {
            id: "affinity_switch_lb_esipp_on",
            section: SECTION,
            upstream: "[Slow] should be able to switch session affinity for LoadBalancer service with ESIPP on",
            speed: Speed::Fast,
            run: |b| switch_case(b, Via::Lb { local: true }),
        },
    ]
}

pub fn not_run() -> Vec<NotRun> {
    vec![]
}

/// The frontend the client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// A pod on node-a to the ClusterIP.
    ClusterIp,
    /// A pod on node-a to node-b's IP:nodePort (upstream: exec pod to a
    /// node IP:nodePort).
    NodePort,
    /// The external client to the LB ingress IP, which the cloud load
    /// balancer forwards to node-a; `local`: externalTrafficPolicy Local
    /// (ESIPP on), which leaves node-a's two pods.
    Lb { local: bool },
}

/// timeoutSeconds, the idle gap that must not expire an entry, and the
/// sleep before each try that must reach another pod.
#[derive(Clone, Copy)]
struct Timeouts {
    seconds: u32,
    short_gap: Duration,
    sleep: Duration,
}

const FAST_TIMEOUT: Timeouts = Timeouts {
    seconds: 3,
    short_gap: Duration::from_secs(1),
    sleep: Duration::from_millis(4500),
};
/// Upstream's numbers: timeoutSeconds 125, 130 s sleeps.
const UPSTREAM_TIMEOUT: Timeouts = Timeouts {
    seconds: 125,
    short_gap: Duration::from_secs(60),
    sleep: Duration::from_secs(130),
};
/// Upstream: up to 10 tries after the sleep.
const EXPIRY_TRIES: usize = 10;

/// The affinity Service: 3 endpoints (node-a's two pods, node-b's first);
/// `affinity` None is sessionAffinity None, Some(t) ClientIP with
/// timeoutSeconds t (0: the default).
fn apply(cluster: &Cluster, via: Via, affinity: Option<u32>) -> Result<()> {
    let mut extra = match affinity {
        None => "  sessionAffinity: None\n".to_string(),
        Some(0) => "  sessionAffinity: ClientIP\n".to_string(),
        Some(t) => format!(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {t}}}}}\n"
        ),
    };
    let yaml = match via {
        Via::ClusterIp => service("affinity", "ClusterIP", VIP, &[http(80)], &extra),
        Via::NodePort => service(
            "affinity",
            "NodePort",
            VIP,
            &[http(80).node_port(NODE_PORT)],
            &extra,
        ),
        Via::Lb { local } => {
            extra += if local {
                "  externalTrafficPolicy: Local\n"
            } else {
                "  externalTrafficPolicy: Cluster\n"
            };
            if local {
                extra += &format!("  healthCheckNodePort: {HC_PORT}\n");
            }
            with_ingress(
                &service(
                    "affinity",
                    "LoadBalancer",
                    VIP,
                    &[http(80).node_port(NODE_PORT)],
                    &extra,
                ),
                LB_IP,
            )
        }
    };
    cluster.apply(&yaml)
}

fn start(bins: &Binaries, via: Via, affinity: Option<u32>) -> Result<Cluster> {
    let cluster = Cluster::start(bins, &ClusterSpec::new(2, 2))?;
    let topo = &cluster.topo;
    let (a, b) = (topo.node_name(0), topo.node_name(1));
    let endpoints = [
        Endpoint::ready(&topo.pods(0)[0], a),
        Endpoint::ready(&topo.pods(0)[1], a),
        Endpoint::ready(&topo.pods(1)[0], b),
    ];
    apply(&cluster, via, affinity)?;
    cluster.apply(&slice("affinity-1", "affinity", &[HTTP], &endpoints))?;
    if let Via::Lb { .. } = via {
        route_lb(&cluster, LB_IP, 0)?;
    }
    eventually("the Service answers", Duration::from_secs(10), || {
        requests(&cluster, via, 1).is_ok()
    })?;
    Ok(cluster)
}

/// `n` new connections through `via`, the pods that answered.
fn requests(cluster: &Cluster, via: Via, n: usize) -> Result<Vec<String>> {
    let results = match via {
        Via::ClusterIp => cluster.from_pod(
            cluster.topo.client_pod(0),
            Transport::Tcp,
            SocketAddr::from((VIP, 80)),
            n,
        )?,
        Via::NodePort => cluster.from_pod(
            cluster.topo.client_pod(0),
            Transport::Tcp,
            SocketAddr::from((cluster.topo.node_ip(1), NODE_PORT)),
            n,
        )?,
        Via::Lb { .. } => cluster.from_outside(Transport::Tcp, SocketAddr::from((LB_IP, 80)), n)?,
    };
    names(&results)
}

/// Upstream's check on 16 answers: the last 15 identical; their pod.
fn last_identical(answers: &[String]) -> Option<&str> {
    let last = &answers[answers.len().saturating_sub(CONFIRM)..];
    last.iter()
        .all(|a| *a == last[0])
        .then_some(last[0].as_str())
}

/// Upstream's check, the first round passing with all 16 from one pod.
fn sticky_now(cluster: &Cluster, via: Via) -> Result<String> {
    let answers = requests(cluster, via, REQUESTS)?;
    match last_identical(&answers) {
        Some(pod) if answers.iter().all(|a| a == pod) => Ok(pod.to_string()),
        _ => bail!("not sticky: {answers:?}"),
    }
}

fn sticky_case(bins: &Binaries, via: Via) -> Result<Outcome> {
    let cluster = start(bins, via, Some(0))?;
    let pod = sticky_now(&cluster, via)?;
    // And again: 48 more new connections, still the same pod.
    let more = requests(&cluster, via, 3 * REQUESTS)?;
    ensure!(
        more.iter().all(|a| *a == pod),
        "later connections left {pod}: {more:?}"
    );
    Ok(Outcome::new(format!(
        "{}/{} new connections from {pod} on the first round (upstream: last 15 of 16, polled up to 2 min)",
        4 * REQUESTS,
        4 * REQUESTS
    )))
}

fn switch_case(bins: &Binaries, via: Via) -> Result<Outcome> {
    let cluster = start(bins, via, Some(0))?;
    let pod = sticky_now(&cluster, via)?;
    apply(&cluster, via, None)?;
    let spread = eventually(
        "more than one pod after sessionAffinity None",
        SWITCH_WITHIN,
        || requests(&cluster, via, REQUESTS).is_ok_and(|a| a.iter().any(|p| *p != a[0])),
    )?;
    apply(&cluster, via, Some(0))?;
    let sticky = eventually("15 identical after ClientIP again", SWITCH_WITHIN, || {
        requests(&cluster, via, REQUESTS).is_ok_and(|a| last_identical(&a).is_some())
    })?;
    let again = sticky_now(&cluster, via)?;
    Ok(Outcome::new(format!(
        "ClientIP: 16/16 {pod}; None: several pods within {:.1} s; ClientIP again: 15 identical within {:.1} s, then 16/16 {again} (upstream: 2 min each)",
        spread.as_secs_f64(),
        sticky.as_secs_f64()
    )))
}

/// Upstream: sticky first (15 in a row), then up to 10 tries, each after a
/// sleep longer than timeoutSeconds, until another pod answers. We also
/// check that idle gaps shorter than the timeout do not end the affinity.
fn timeout_case(bins: &Binaries, via: Via, t: Timeouts) -> Result<Outcome> {
    let cluster = start(bins, via, Some(t.seconds))?;
    let pod = sticky_now(&cluster, via)?;
    for _ in 0..3 {
        std::thread::sleep(t.short_gap);
        let answer = requests(&cluster, via, 1)?;
        ensure!(
            answer[0] == pod,
            "affinity lost after an idle gap of {:?} (timeout {} s): {pod} -> {}",
            t.short_gap,
            t.seconds,
            answer[0]
        );
    }
    for tries in 1..=EXPIRY_TRIES {
        std::thread::sleep(t.sleep);
        let answer = requests(&cluster, via, 1)?;
        if answer[0] != pod {
            return Ok(Outcome::new(format!(
                "16/16 {pod}; kept across 3 idle gaps of {:.1} s; another pod ({}) after {tries} sleep(s) of {:.1} s (timeoutSeconds {}; upstream: within 10 sleeps of 130 s, timeout 125)",
                t.short_gap.as_secs_f64(),
                answer[0],
                t.sleep.as_secs_f64(),
                t.seconds
            )));
        }
    }
    bail!(
        "{pod} still answered after {EXPIRY_TRIES} idle sleeps of {:?} (timeoutSeconds {})",
        t.sleep,
        t.seconds
    )
}
