//! Real traffic through namespaces (client pod -> ClusterIP -> 3 backend
//! pods), for each way a node can carry Services ([`Mode`]), with N other
//! Services installed: new connections per second and their latency, and
//! bulk throughput with iperf3. Modes alternate within each run, on one
//! topology per scale.

mod latency;
mod report;

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context as _, Result};

use self::latency::ConnRun;
use super::dataplanes::{Dataplanes, Mode};
use super::frontends::{synthetic, Cluster, Frontend, Proto};
use super::iperf::{self, IperfServer};
use crate::{
    client::{request, Transport},
    servers::{Servers, TCP_PORT},
    topology::ClusterIpTopology,
};

pub use self::latency::CONNECT_TIMEOUT;
pub use self::report::{plots, report};

/// The measured Service: connections spread over the 3 backend pods.
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB_PORT: u16 = 80;
/// The bulk Service: one endpoint, since iperf3's control and data
/// connections must reach the same server.
const BULK_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);

/// What to measure.
#[derive(Clone, Debug)]
pub struct Params {
    /// Other Services (10 endpoints each) installed, one topology each.
    pub scales: Vec<usize>,
    pub runs: usize,
    /// Sequential connections per mode and run.
    pub connections: usize,
    /// Length of each iperf3 run.
    pub iperf_secs: u32,
}

/// One mode's samples at one scale, one per run.
#[derive(Clone, Debug, Default)]
pub struct ModeSamples {
    pub conns_per_s: Vec<f64>,
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
    pub bits_per_s: Vec<f64>,
    pub failed: usize,
    pub first_error: Option<String>,
}

pub struct ScaleResult {
    pub services: usize,
    /// In [`Mode::ALL`] order.
    pub modes: Vec<ModeSamples>,
}

pub struct TrafficResult {
    pub params: Params,
    pub scales: Vec<ScaleResult>,
}

pub fn run(agent_bin: &Path, p: &Params) -> Result<TrafficResult> {
    let mut scales = Vec::new();
    for &n in &p.scales {
        println!("  {n} other Services installed…");
        scales.push(measure_scale(agent_bin, p, n).with_context(|| format!("at {n} Services"))?);
    }
    Ok(TrafficResult {
        params: p.clone(),
        scales,
    })
}

fn measure_scale(agent_bin: &Path, p: &Params, n: usize) -> Result<ScaleResult> {
    let topo = ClusterIpTopology::create(3).context("building the topology")?;
    // The modes share the client's ports, so a backend still holds
    // TIME_WAIT sockets of earlier modes' connections when a port comes
    // round again. With per-destination timestamp offsets (the default, 1)
    // a connection to a pod IP and one to the ClusterIP carry unrelated
    // timestamps, the TIME_WAIT socket refuses the newer SYN half the time,
    // and the connection waits for a retry: a cost of the benchmark's own
    // mode switching. Timestamps without offsets (2) keep them comparable.
    topo.client().ns.sysctl("net.ipv4.tcp_timestamps", "2")?;
    let _servers = Servers::start(topo.backends())?;
    let bulk_pod = &topo.backends()[0];
    let _iperf = IperfServer::start(bulk_pod)?;
    let mut cluster = Cluster {
        cluster_cidr: "10.244.0.0/16".parse().expect("a valid CIDR"),
        node_ips: Vec::new(),
        frontends: synthetic(n).collect(),
    };
    let measured = |name: &str, vip, port, target_port, pods: &[Ipv4Addr]| Frontend {
        namespace: "bench".into(),
        name: name.into(),
        port_name: "tcp".into(),
        proto: Proto::Tcp,
        cluster_ip: vip,
        port,
        node_port: None,
        target_port,
        endpoints: pods.to_vec(),
    };
    let pods: Vec<Ipv4Addr> = topo.backends().iter().map(|p| p.ip).collect();
    cluster
        .frontends
        .push(measured("web", WEB_VIP, WEB_PORT, TCP_PORT, &pods));
    cluster.frontends.push(measured(
        "bulk",
        BULK_VIP,
        iperf::PORT,
        iperf::PORT,
        &[bulk_pod.ip],
    ));
    let mut planes = Dataplanes::install(
        topo.node(),
        agent_bin,
        &cluster,
        &topo.pod_interfaces(),
        &[],
    )?;
    let client = topo.client();
    let mut modes = vec![ModeSamples::default(); Mode::ALL.len()];
    for run in 0..p.runs {
        // Rotate the order so that no mode always runs right after another.
        for k in 0..Mode::ALL.len() {
            let i = (k + run) % Mode::ALL.len();
            let mode = Mode::ALL[i];
            let (web, bulk) = match mode.to_pod_ip() {
                true => ((pods[0], TCP_PORT), bulk_pod.ip),
                false => ((WEB_VIP, WEB_PORT), BULK_VIP),
            };
            // With the agent attached, the Service answering says its
            // programs are in place, also when the client uses a pod IP.
            let probe = match mode.agent_args() {
                Some(_) => (WEB_VIP, WEB_PORT),
                None => web,
            };
            planes.switch(mode, || {
                client
                    .ns
                    .run(move || request(Transport::Tcp, probe.into(), CONNECT_TIMEOUT).is_ok())
                    .unwrap_or(false)
            })?;
            let conns = ConnRun::measure(client, web.into(), p.connections)
                .with_context(|| format!("connections, {}", mode.label()))?;
            let bits = iperf::throughput(client, bulk, p.iperf_secs)
                .with_context(|| format!("iperf3, {}", mode.label()))?;
            let s = &mut modes[i];
            s.conns_per_s.push(conns.per_second);
            s.p50_us.push(conns.p50_us);
            s.p99_us.push(conns.p99_us);
            s.bits_per_s.push(bits);
            s.failed += conns.failed;
            if s.first_error.is_none() {
                s.first_error = conns.first_error;
            }
            println!(
                "    run {} {:<22} {:>7.0} conn/s  p50 {:>5.0} µs  p99 {:>6.0} µs  {:>5.1} Gbit/s",
                run + 1,
                mode.label(),
                conns.per_second,
                conns.p50_us,
                conns.p99_us,
                bits / 1e9
            );
        }
    }
    planes.switch(Mode::Direct, || true)?;
    Ok(ScaleResult { services: n, modes })
}
