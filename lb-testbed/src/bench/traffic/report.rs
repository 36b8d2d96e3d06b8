//! The traffic section of the report: a table per figure, one row per
//! scale and mode, ratios against no NAT at the same scale, and its plots.

use std::fmt::Write as _;
use std::path::Path;

use super::{ModeSamples, TrafficResult};
use crate::bench::dataplanes::Mode;
use crate::bench::plot::{Bars, PlotError};
use crate::bench::stats::Spread;

/// A figure of [`ModeSamples`]: its name, unit, how to print it, whether
/// lower is better, and its samples.
struct Figure {
    title: &'static str,
    file: &'static str,
    unit: &'static str,
    scale: f64,
    samples: fn(&ModeSamples) -> &[f64],
}

const FIGURES: [Figure; 4] = [
    Figure {
        title: "New connections per second",
        file: "traffic-conns.png",
        unit: "connections/s",
        scale: 1.0,
        samples: |s| &s.conns_per_s,
    },
    Figure {
        title: "Connection latency p50 (connect, request, answer, close)",
        file: "traffic-p50.png",
        unit: "µs",
        scale: 1.0,
        samples: |s| &s.p50_us,
    },
    Figure {
        title: "Connection latency p99",
        file: "traffic-p99.png",
        unit: "µs",
        scale: 1.0,
        samples: |s| &s.p99_us,
    },
    Figure {
        title: "Bulk TCP throughput (iperf3)",
        file: "traffic-iperf.png",
        unit: "Gbit/s",
        scale: 1e-9,
        samples: |s| &s.bits_per_s,
    },
];

fn spread(f: &Figure, s: &ModeSamples) -> Spread {
    let scaled: Vec<f64> = (f.samples)(s).iter().map(|v| v * f.scale).collect();
    Spread::of(&scaled)
}

pub fn report(r: &TrafficResult, plot_dir_link: &str) -> String {
    let p = &r.params;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Client pod -> node -> backend pods, all namespaces on one machine. The measured Service \
         (ClusterIP, 3 backend pods) sits among N other ClusterIP Services x 10 endpoints, installed \
         for every mode in the same topology: in the fake API server our agent watches, and as \
         kube-proxy's iptables and nftables rule sets (`lb-testbed/src/bench/anchors/`), loaded \
         once and hooked into netfilter only while their mode runs; our agent runs only in its \
         mode and detaches on exit. No NAT: the client connects to a pod IP directly, the limit. \
         Per mode and run: {} sequential new TCP connections (connect, one request line, the pod's \
         answer, close; timeout 1 s), then one {} s iperf3 run to a one-endpoint Service (iperf3's \
         control and data connections must reach the same server). {} runs, the modes in rotating \
         order within each run; median (min–max) over the runs, ratio = median / no-NAT median at \
         the same scale. The client pod runs with `net.ipv4.tcp_timestamps = 2` (timestamps \
         without per-destination offsets): the modes reuse the client's ports, and with offsets \
         the backends' TIME_WAIT sockets from another mode's connections refused some SYNs, \
         adding ~10 ms retries to the no-NAT and our modes only. \
         \"pod IP, our agent attached\": the client connects to a pod IP while our agent serves, \
         what every pod pays for the agent whether it uses a Service or not. Our default pod hook \
         is TC ingress; `--pod-hook xdp` puts the DNAT at XDP instead, and while an XDP program \
         is attached to a pod's node-side veth the kernel turns TCP segmentation offload off on \
         the pod's eth0 (veth clears the peer's software GSO features when it has an XDP \
         program), so the pod sends MTU-sized segments: the iperf3 row of that mode measures \
         this, not the NAT.\n",
        p.connections, p.iperf_secs, p.runs
    );
    for f in &FIGURES {
        let _ = writeln!(
            out,
            "### {}\n\n![{}]({plot_dir_link}/{})\n\n| Services | {} |\n|---|{}",
            f.title,
            f.title,
            f.file,
            Mode::ALL.map(Mode::label).join(" | "),
            "---|".repeat(Mode::ALL.len())
        );
        for s in &r.scales {
            let direct = spread(f, &s.modes[0]).median;
            let cells: Vec<String> = s
                .modes
                .iter()
                .map(|m| {
                    let v = spread(f, m);
                    format!(
                        "{} {} ({}–{}), {:.2}x",
                        fmt(v.median),
                        f.unit,
                        fmt(v.min),
                        fmt(v.max),
                        v.median / direct
                    )
                })
                .collect();
            let _ = writeln!(out, "| {} | {} |", s.services, cells.join(" | "));
        }
        out.push('\n');
    }
    out += &paired_table(r);
    let failures: Vec<String> = r
        .scales
        .iter()
        .flat_map(|s| {
            s.modes
                .iter()
                .zip(Mode::ALL)
                .filter(|(m, _)| m.failed > 0)
                .map(|(m, mode)| {
                    format!(
                        "{} at {} Services: {} (first: {})",
                        mode.label(),
                        s.services,
                        m.failed,
                        m.first_error.as_deref().unwrap_or("?")
                    )
                })
        })
        .collect();
    let _ = writeln!(
        out,
        "Failed connections: {}.\n",
        if failures.is_empty() {
            "none".to_string()
        } else {
            failures.join("; ")
        }
    );
    out
}

/// The comparisons the acceptance figures name, as the median (min–max)
/// of per-run ratios: the two modes of a pair ran minutes apart at most,
/// within one run, so a slow drift of the machine cancels out of each
/// ratio, which a ratio of medians over the whole run does not get.
const PAIRS: [(Mode, Mode); 4] = [
    (Mode::Ours, Mode::Direct),
    (Mode::Ours, Mode::Iptables),
    (Mode::Ours, Mode::Nftables),
    (Mode::DirectAgentAttached, Mode::Direct),
];

fn paired_table(r: &TrafficResult) -> String {
    let mut out = String::from(
        "### Side by side: per-run ratios

Each cell is the median (min–max) over the runs of one \
         run's ratio between two modes; for latency, below 1 is better.\n\n",
    );
    let heads: Vec<String> = PAIRS
        .iter()
        .map(|(a, b)| format!("{} / {}", a.label(), b.label()))
        .collect();
    let _ = writeln!(
        out,
        "| Services | figure | {} |\n|---|---|{}",
        heads.join(" | "),
        "---|".repeat(PAIRS.len())
    );
    let index = |m: Mode| Mode::ALL.iter().position(|&x| x == m).expect("in ALL");
    for s in &r.scales {
        for f in FIGURES.iter().filter(|f| f.file != "traffic-p50.png") {
            let cells: Vec<String> = PAIRS
                .iter()
                .map(|&(a, b)| {
                    let ratio = paired(
                        (f.samples)(&s.modes[index(a)]),
                        (f.samples)(&s.modes[index(b)]),
                    );
                    format!("{:.2}x ({:.2}–{:.2})", ratio.median, ratio.min, ratio.max)
                })
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                s.services,
                f.title,
                cells.join(" | ")
            );
        }
    }
    out.push('\n');
    out
}

/// The spread of `a[i] / b[i]` over the runs `i`.
fn paired(a: &[f64], b: &[f64]) -> Spread {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    Spread::of(&ratios)
}

/// Three significant digits or whole numbers.
fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Writes the section's charts into `dir`.
pub fn plots(r: &TrafficResult, dir: &Path) -> Result<(), PlotError> {
    for f in &FIGURES {
        let series = Mode::ALL
            .iter()
            .enumerate()
            .map(|(i, mode)| {
                (
                    mode.label(),
                    r.scales.iter().map(|s| spread(f, &s.modes[i])).collect(),
                )
            })
            .collect();
        Bars {
            title: f.title,
            y_label: f.unit,
            groups: r
                .scales
                .iter()
                .map(|s| format!("{} Services", s.services))
                .collect(),
            series,
            log_y: false,
            first_colour: 0,
        }
        .draw(&dir.join(f.file))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_run_ratios_cancel_a_drift_that_medians_keep() {
        // The machine slows down run after run; mode a is always 5% faster.
        let b = [100.0, 80.0, 60.0, 40.0];
        let a = b.map(|v| v * 1.05);
        let r = paired(&a, &b);
        assert!((r.median - 1.05).abs() < 1e-9 && (r.max - r.min).abs() < 1e-9);
        assert_eq!(paired(&[2.0, 9.0, 3.0], &[1.0, 3.0, 3.0]).median, 2.0);
    }
}
