//! Real traffic through namespaces: sequential TCP connections from the
//! client pod, straight to a pod IP (no NAT: the limit) and to the ClusterIP
//! through our XDP/TC datapath, alternating in the same run.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};

use super::stats::Spread;
use crate::testbed::{
    agent::AgentProcess,
    client::{Client, DEFAULT_TIMEOUT},
    scratch::{copy_manifests, ScratchDir},
    servers::{Servers, TCP_PORT},
    topology::ClusterIpTopology,
    WEB_TCP_PORT, WEB_VIP,
};

/// Connections per timed run.
pub const CONNECTIONS: usize = 500;

pub struct TrafficResult {
    /// Connections per second, direct to a pod.
    pub direct: Spread,
    /// Connections per second, to the ClusterIP.
    pub clusterip: Spread,
    pub runs: usize,
    /// Failed connections over all runs, direct and to the ClusterIP, with
    /// the first error of each.
    pub failed: [(usize, Option<String>); 2],
}

/// Measures `runs` rounds of [`CONNECTIONS`] connections each way.
pub fn run(agent_bin: &Path, manifests: &Path, runs: usize) -> anyhow::Result<TrafficResult> {
    let scratch = ScratchDir::new()?;
    copy_manifests(manifests, scratch.path())?;
    let topo = ClusterIpTopology::create(3).context("building the topology")?;
    let _servers = Servers::start(topo.backends())?;
    let mut agent = AgentProcess::start(
        agent_bin,
        topo.node(),
        scratch.path(),
        &topo.pod_interfaces(),
        &[],
    )?;
    let client = Client::new(topo.client());
    agent.wait_ready(Duration::from_secs(15), || {
        matches!(
            client.tcp_request(WEB_VIP, WEB_TCP_PORT, DEFAULT_TIMEOUT),
            Ok(Ok(_))
        )
    })?;
    let pod = topo.backends()[0].ip;
    let mut failed: [(usize, Option<String>); 2] = Default::default();
    let mut rate = |which: usize, ip, port| -> anyhow::Result<f64> {
        let start = Instant::now();
        let results = client.tcp_requests(ip, port, CONNECTIONS, DEFAULT_TIMEOUT)?;
        let elapsed = start.elapsed();
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            failed[which].0 += 1;
            failed[which].1.get_or_insert_with(|| format!("{e:?}"));
        }
        // A run that mostly failed measures nothing worth reporting.
        ensure!(
            failed[which].0 < CONNECTIONS / 10,
            "connections to {ip}:{port} fail: {:?}",
            failed[which].1
        );
        Ok(CONNECTIONS as f64 / elapsed.as_secs_f64())
    };
    let (mut direct, mut vip) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        direct.push(rate(0, pod, TCP_PORT)?);
        vip.push(rate(1, WEB_VIP, WEB_TCP_PORT)?);
    }
    agent.stop()?;
    Ok(TrafficResult {
        direct: Spread::of(&direct),
        clusterip: Spread::of(&vip),
        runs,
        failed,
    })
}

pub fn report(r: &TrafficResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Sequential TCP connections (connect, one request line, reply, close) from the client pod, \
         {CONNECTIONS} per run, {} runs alternating, median (min–max). Both paths cross the node \
         namespace with its conntrack INVALID-drop rule.\n",
        r.runs
    );
    let _ = writeln!(
        out,
        "| path | connections/s | ratio to direct | failed (timeout 1 s) |\n|---|---|---|---|"
    );
    let failed = |i: usize| match &r.failed[i] {
        (0, _) => "0".to_string(),
        (n, first) => format!("{n} (first: {})", first.as_deref().unwrap_or("?")),
    };
    let rows = [
        ("client -> pod IP (no NAT, the limit)", r.direct),
        (
            "client -> ClusterIP (XDP DNAT + TC reverse NAT)",
            r.clusterip,
        ),
    ];
    for (i, (path, s)) in rows.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {path} | {:.0} ({:.0}–{:.0}) | {:.2}x | {} |",
            s.median,
            s.min,
            s.max,
            s.median / r.direct.median,
            failed(i)
        );
    }
    out
}
