//! NodePort forwarding rate: a bounded UDP stream from the client outside
//! the cluster to nodeIP:NodePort, the backend pod behind that node; how
//! many packets per second reach the backend, and the machine's CPU time
//! per delivered packet, for our datapath and kube-proxy's iptables and
//! nftables layouts, alternating on one topology.
//!
//! Published anchor: Cilium reports its XDP NodePort forwarding about 5x
//! kube-proxy iptables' rate on bare metal. Here every "wire" is a veth,
//! so the figures say how the modes compare on this machine, not what a
//! NIC would do.

mod cpu;
mod flood;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};

use self::flood::{delivered, Sink, FLOWS};
use super::dataplanes::{Dataplanes, Mode};
use super::frontends::{synthetic, Cluster, Frontend, Proto};
use super::plot::{Bars, PlotError};
use super::stats::Spread;
use crate::multinode::{plan, MultiNodeTopology};

const NODE_PORT: u16 = 30090;
const BACKEND_PORT: u16 = 9000;
const PLOT_RATE: &str = "nodeport-rate.png";
const PLOT_CPU: &str = "nodeport-cpu.png";
/// The modes compared: a NodePort needs a proxy, so no "direct" here.
const MODES: [Mode; 3] = [Mode::Ours, Mode::Iptables, Mode::Nftables];

/// A mode's name here: ours serves NodePorts at XDP on the uplink.
fn label(mode: Mode) -> &'static str {
    match mode {
        Mode::Ours => "ours (XDP uplink)",
        other => other.label(),
    }
}

#[derive(Clone, Debug)]
pub struct Params {
    /// Datagrams per stream.
    pub packets: u64,
    pub runs: usize,
    /// Other ClusterIP Services installed (10 endpoints each).
    pub services: usize,
}

#[derive(Clone, Debug, Default)]
pub struct ModeSamples {
    pub delivered_pps: Vec<f64>,
    /// Share of the sent datagrams that reached the backend.
    pub delivered_share: Vec<f64>,
    /// Machine CPU ns per delivered packet.
    pub cpu_ns: Vec<f64>,
}

pub struct NodePortResult {
    pub params: Params,
    /// In [`MODES`] order.
    pub modes: Vec<ModeSamples>,
}

pub fn run(agent_bin: &Path, p: &Params) -> Result<NodePortResult> {
    let topo = MultiNodeTopology::create(1, 1).context("building the topology")?;
    let pod = &topo.pods(0)[0];
    let _sink = Sink::bind(pod, BACKEND_PORT)?;
    let mut frontends: Vec<Frontend> = synthetic(p.services).collect();
    frontends.push(Frontend {
        namespace: "bench".into(),
        name: "flood".into(),
        port_name: "udp".into(),
        proto: Proto::Udp,
        cluster_ip: Ipv4Addr::new(10, 96, 0, 12),
        port: BACKEND_PORT,
        node_port: Some(NODE_PORT),
        target_port: BACKEND_PORT,
        endpoints: vec![pod.ip],
    });
    let cluster = Cluster {
        cluster_cidr: plan::CLUSTER_CIDR,
        node_ips: vec![topo.node_ip(0)],
        frontends,
    };
    let node_interfaces = topo.node_interfaces();
    let mut planes = Dataplanes::install(
        topo.node(0),
        agent_bin,
        &cluster,
        &topo.pod_interfaces(),
        &[
            "--node-name",
            topo.node_name(0),
            "--node-interfaces",
            &node_interfaces,
        ],
    )?;
    let to = SocketAddr::from((topo.node_ip(0), NODE_PORT));
    let external = topo.external_client();
    // A few datagrams that arrive mean the mode forwards.
    let forwards = || -> bool {
        let Ok(before) = delivered(pod) else {
            return false;
        };
        if flood::send(external, to, 8).is_err() {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
        delivered(pod).is_ok_and(|after| after >= before + 8)
    };
    let mut modes = vec![ModeSamples::default(); MODES.len()];
    for run in 0..p.runs {
        for k in 0..MODES.len() {
            let i = (k + run) % MODES.len();
            planes.switch(MODES[i], forwards)?;
            let s = stream(external, pod, to, p.packets)
                .with_context(|| format!("the stream, {}", label(MODES[i])))?;
            println!(
                "    run {} {:<30} {:>6.0} kpps delivered ({:>3.0}% of sent), {:>5.0} ns CPU/packet",
                run + 1,
                label(MODES[i]),
                s.pps / 1e3,
                s.share * 100.0,
                s.cpu_ns
            );
            modes[i].delivered_pps.push(s.pps);
            modes[i].delivered_share.push(s.share);
            modes[i].cpu_ns.push(s.cpu_ns);
        }
    }
    planes.switch(Mode::Direct, || true)?;
    Ok(NodePortResult {
        params: p.clone(),
        modes,
    })
}

struct Stream {
    pps: f64,
    share: f64,
    cpu_ns: f64,
}

/// Sends the stream, waits until the backend's count settles, and returns
/// the delivered rate (over the time from the first send to the last
/// arrival) and the CPU time per delivered packet.
fn stream(
    external: &crate::topology::Pod,
    pod: &crate::topology::Pod,
    to: SocketAddr,
    packets: u64,
) -> Result<Stream> {
    let before = delivered(pod)?;
    let busy_before = cpu::busy_ticks()?;
    let start = Instant::now();
    flood::send(external, to, packets)?;
    // Settled: no new arrival for 50 ms.
    let (mut last, mut last_change) = (delivered(pod)?, Instant::now());
    while last_change.elapsed() < Duration::from_millis(50) {
        thread::sleep(Duration::from_millis(5));
        let now = delivered(pod)?;
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
    }
    let busy = cpu::busy_ticks()? - busy_before;
    let got = last - before;
    ensure!(got > 0, "no datagram reached the backend");
    let took = last_change.duration_since(start).as_secs_f64();
    Ok(Stream {
        pps: got as f64 / took,
        share: got as f64 / packets as f64,
        cpu_ns: busy as f64 * cpu::ns_per_tick() / got as f64,
    })
}

pub fn report(r: &NodePortResult, plot_dir_link: &str) -> String {
    let p = &r.params;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "One node with one backend pod, and a client outside the cluster on the node network \
         (all veths). The client sends {} UDP datagrams ({FLOWS} flows, 18-byte payloads) with \
         sendmmsg as fast as one thread can to nodeIP:{NODE_PORT}, a NodePort Service \
         (externalTrafficPolicy Cluster) among {} other Services x 10 endpoints; the backend's \
         socket is never read, and a datagram counts as delivered when it reaches the pod's UDP \
         layer (InDatagrams + RcvbufErrors). Rate: delivered / (first send to last arrival). CPU: \
         the machine's busy time (all cores, /proc/stat, the sender's own system calls included, \
         the same in every mode) per delivered packet. kube-proxy's layouts masquerade the \
         NodePort traffic (KUBE-EXT / external chains), as externalTrafficPolicy Cluster does. \
         {} runs, modes in rotating order; median (min–max); ratio to ours. Published anchor: \
         Cilium's XDP NodePort forwards about 5x kube-proxy iptables on bare metal, where XDP \
         runs on the NIC's receive buffer before any socket buffer exists. Here the node's uplink \
         is a veth: its native XDP converts every arriving socket buffer into an XDP buffer \
         (copying packets with less than 256 bytes of headroom, as locally sent ones have) and \
         builds a new one for the stack, work netfilter does not pay.\n\n![rate]({plot_dir_link}/{PLOT_RATE}) \
         ![cpu]({plot_dir_link}/{PLOT_CPU})\n",
        p.packets, p.services, p.runs
    );
    let _ = writeln!(
        out,
        "| mode | delivered kpps | ratio to ours | delivered share of sent | CPU ns per delivered packet | ratio to ours |\n|---|---|---|---|---|---|"
    );
    let ours_pps = Spread::of(&r.modes[0].delivered_pps).median;
    let ours_cpu = Spread::of(&r.modes[0].cpu_ns).median;
    for (mode, s) in MODES.iter().zip(&r.modes) {
        let pps = Spread::of(&s.delivered_pps);
        let share = Spread::of(&s.delivered_share);
        let cpu = Spread::of(&s.cpu_ns);
        let _ = writeln!(
            out,
            "| {} | {:.0} ({:.0}–{:.0}) | {:.2}x | {:.0}% ({:.0}–{:.0}%) | {:.0} ({:.0}–{:.0}) | {:.2}x |",
            label(*mode),
            pps.median / 1e3,
            pps.min / 1e3,
            pps.max / 1e3,
            pps.median / ours_pps,
            share.median * 100.0,
            share.min * 100.0,
            share.max * 100.0,
            cpu.median,
            cpu.min,
            cpu.max,
            cpu.median / ours_cpu,
        );
    }
    out
}

pub fn plots(r: &NodePortResult, dir: &Path) -> Result<(), PlotError> {
    let chart = |title, y_label, file, f: fn(&ModeSamples) -> Vec<f64>| {
        Bars {
            title,
            y_label,
            groups: vec![format!("{} packets", r.params.packets)],
            series: MODES
                .iter()
                .zip(&r.modes)
                .map(|(m, s)| (label(*m), vec![Spread::of(&f(s))]))
                .collect(),
            log_y: false,
            first_colour: 1,
        }
        .draw(&dir.join(file))
    };
    chart(
        "NodePort UDP packets delivered per second",
        "kpps",
        PLOT_RATE,
        |s| s.delivered_pps.iter().map(|v| v / 1e3).collect(),
    )?;
    chart("Machine CPU per delivered packet", "ns", PLOT_CPU, |s| {
        s.cpu_ns.clone()
    })
}
