//! The main datapath cases again at several table sizes (10, 1k, 10k, 100k
//! Services x 10 backends, maps sized to fit), each next to the anchors
//! measured at the same time: hash-map lookups do not grow with the table,
//! but cache misses do, and this shows by how much.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use lb_common::{MapSizes, IPPROTO_TCP};

use super::{install_others, new_flow_ns, single_ns, Anchors, Params, TimeFn, CLIENT, VIP};
use crate::bench::plot::{Bars, PlotError};
use crate::bench::stats::Spread;
use crate::fixture::DatapathFixture;
use crate::packets::{frame, L4};

const PLOT: &str = "datapath-sweep.png";
/// The cases of each scale, in table order, each with the index of the
/// anchor it is read against.
pub const CASES: [(&str, usize); 12] = [
    ("anchor: TC_ACT_OK only", 0),
    ("anchor: TC parse + 1 hash lookup", 0),
    ("TC ingress (pod hook) established-flow hit", 0),
    ("TC ingress (pod hook) miss", 0),
    ("TC egress reply reverse-NAT", 0),
    ("anchor: XDP_PASS only", 5),
    ("XDP (--pod-hook xdp) established-flow hit", 5),
    ("XDP (--pod-hook xdp) miss", 5),
    ("anchor: TC_ACT_OK, single runs", 8),
    ("TC ingress new-flow hit, single runs", 8),
    ("anchor: XDP_PASS, single runs", 10),
    ("XDP new-flow hit, single runs", 10),
];

pub struct Scale {
    pub services: u32,
    /// ns/packet, in [`CASES`] order.
    pub ns: Vec<Spread>,
}

/// Measures [`CASES`] at each of `scales`; the caller has pinned the CPU.
pub(super) fn run(p: &Params, scales: &[u32]) -> anyhow::Result<Vec<Scale>> {
    let anchors = Anchors::load()?;
    let mut out = Vec::new();
    for &n in scales {
        println!("  {n} Services x 10 backends…");
        let slack = 1024;
        let mut f = DatapathFixture::with_sizes(MapSizes {
            services: (n + 1) * 11 + slack,
            backends: (n + 1) * 10 + slack,
            revnat: n + 1 + slack,
            ..MapSizes::DEFAULT
        })?;
        f.add_service(VIP, 80, IPPROTO_TCP, &[(VIP, 80)])?;
        install_others(&mut f, n)?;
        let hit = frame(
            L4::TcpAck,
            CLIENT,
            SocketAddrV4::new(VIP, 80),
            &[],
            &[0u8; 64],
        );
        f.run_pod_tc(&hit)?;
        let reply = frame(
            L4::TcpAck,
            SocketAddrV4::new(VIP, 80),
            CLIENT,
            &[],
            &[0u8; 64],
        );
        let miss_to = SocketAddrV4::new(Ipv4Addr::new(10, 96, 99, 99), 80);
        let miss = frame(L4::TcpAck, CLIENT, miss_to, &[], &[0u8; 64]);
        let timed = |one: &mut dyn FnMut() -> anyhow::Result<std::time::Duration>| {
            let samples: anyhow::Result<Vec<f64>> = (0..p.runs)
                .map(|_| Ok(one()?.as_secs_f64() * 1e9))
                .collect();
            samples.map(|s| Spread::of(&s))
        };
        let pod_tc: TimeFn = DatapathFixture::time_pod_tc;
        let xdp: TimeFn = DatapathFixture::time_xdp;
        let mut port = 1024u16;
        let ns = vec![
            timed(&mut || anchors.time("anchor_tc_ok", &hit, p.repeat))?,
            timed(&mut || anchors.time("anchor_tc_parse_lookup", &hit, p.repeat))?,
            timed(&mut || f.time_pod_tc(&hit, p.repeat))?,
            timed(&mut || f.time_pod_tc(&miss, p.repeat))?,
            timed(&mut || f.time_tc(&reply, p.repeat))?,
            timed(&mut || anchors.time("anchor_xdp_pass", &hit, p.repeat))?,
            timed(&mut || f.time_xdp(&hit, p.repeat))?,
            timed(&mut || f.time_xdp(&miss, p.repeat))?,
            timed(&mut || single_ns(&anchors, "anchor_tc_ok", &hit, p.new_flows))?,
            timed(&mut || new_flow_ns(&mut f, pod_tc, &mut port, p.new_flows))?,
            timed(&mut || single_ns(&anchors, "anchor_xdp_pass", &hit, p.new_flows))?,
            timed(&mut || new_flow_ns(&mut f, xdp, &mut port, p.new_flows))?,
        ];
        out.push(Scale { services: n, ns });
    }
    Ok(out)
}

pub fn report(p: &Params, scales: &[Scale], plot_dir_link: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### By table size\n\nThe same cases with N other Services x 10 backends installed (maps sized \
         for N), {} repetitions x {} runs ({} tuples per single-run figure), pinned to CPU 0; \
         ns/packet, median (min–max), and the ratio to the XDP_PASS anchor measured at the same \
         scale: TC rows to the TC_ACT_OK anchor, XDP rows to the XDP_PASS anchor, single-run rows to \
         the same anchor timed in single runs.\n\n\
         ![datapath by table size]({plot_dir_link}/{PLOT})\n",
        p.repeat, p.runs, p.new_flows
    );
    let _ = writeln!(
        out,
        "| case | {} |\n|---|{}",
        scales
            .iter()
            .map(|s| format!("{} Services", s.services))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(scales.len())
    );
    for (i, (case, anchor)) in CASES.iter().enumerate() {
        let cells: Vec<String> = scales
            .iter()
            .map(|s| format!("{}, {:.2}x", s.ns[i], s.ns[i].median / s.ns[*anchor].median))
            .collect();
        let _ = writeln!(out, "| {case} | {} |", cells.join(" | "));
    }
    out
}

pub fn plot(scales: &[Scale], dir: &Path) -> Result<(), PlotError> {
    Bars {
        title: "Datapath ns/packet by table size (BPF_PROG_TEST_RUN)",
        y_label: "ns/packet (log scale)",
        groups: scales
            .iter()
            .map(|s| format!("{} Services", s.services))
            .collect(),
        series: [0, 1, 2, 3, 4, 6, 9]
            .iter()
            .map(|&i| (CASES[i].0, scales.iter().map(|s| s.ns[i]).collect()))
            .collect(),
        log_y: true,
        first_colour: 0,
    }
    .draw(&dir.join(PLOT))
}
