//! The programming-cost section: per scale, ours (from the control-plane
//! benchmark) next to kube-proxy's iptables full restore and nftables
//! incremental transaction, and a log-scale plot of the three.

use std::fmt::Write as _;
use std::path::Path;

use super::{Kind, Layout, ProgrammingResult};
use crate::bench::nscmd::Timed;
use crate::bench::plot::{Bars, PlotError};
use crate::bench::stats::Spread;
use crate::bench::sync::SyncResult;

const PLOT: &str = "programming.png";

/// Our change-to-map samples (ms) at `services`, if the control-plane
/// benchmark ran that scale with changes.
fn ours(sync: Option<&SyncResult>, services: usize) -> Option<Spread> {
    sync?
        .scales
        .iter()
        .find(|s| s.services == services && !s.change_ms.is_empty())
        .map(|s| Spread::of(&s.change_ms))
}

fn ms(s: Spread) -> String {
    format!("{:.1} ms ({:.1}–{:.1})", s.median, s.min, s.max)
}

fn secs(t: Timed) -> String {
    match t {
        Timed::Done(t) => format!("{:.2} s", t.as_secs_f64()),
        Timed::TimedOut(t) => format!("killed after {:.0} s", t.as_secs_f64()),
    }
}

/// The change cell of a layout, with its ratio to ours.
fn change(l: &Layout, ours: Option<Spread>) -> String {
    if let Some(t) = l.change_timed_out {
        return format!("killed after {:.0} s", t.as_secs_f64());
    }
    if l.change_ms.is_empty() {
        return "not run (initial load killed)".into();
    }
    let s = Spread::of(&l.change_ms);
    match ours {
        Some(o) => format!("{}, {:.1}x ours", ms(s), s.median / o.median),
        None => ms(s),
    }
}

pub fn report(r: &ProgrammingResult, sync: Option<&SyncResult>, plot_dir_link: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "One endpoint of a random Service replaced, at N ClusterIP Services x 10 endpoints. \
         Ours: API write to the new address in the pinned maps (control-plane benchmark below, \
         its changes at the same scale). kube-proxy iptables: the full-sync `iptables-restore \
         --noflush` of both tables it issues per sync, with both iptables flavours (iptables-nft, \
         Debian's default, and iptables-legacy) (every chain rewritten, the stale KUBE-SEP \
         chain deleted), timed from spawn to exit. kube-proxy nftables: the partial-sync `nft -f` \
         transaction (the new endpoint chain, the Service chain rewritten, the stale endpoint \
         chain flushed and deleted), timed the same way. For kube-proxy only the kernel-facing \
         step is timed: its informer delay, Go-side rule generation and `--*-min-sync-period` \
         (1 s by default) come on top. {} changes per scale and layout, each in a fresh \
         namespace per scale (only loopback); median (min–max); the ratio is the anchor's median \
         over ours. A step still running after {} s is killed.\n\n![programming cost]({plot_dir_link}/{PLOT})\n",
        r.params.changes,
        r.params.deadline.as_secs()
    );
    let _ = writeln!(
        out,
        "| Services x 10 | ours, change to map | {} | {} |\n|---|---|{}",
        Kind::ALL.map(Kind::label).join(" | "),
        Kind::ALL
            .map(|k| format!("initial load, {}", k.label()))
            .join(" | "),
        "---|".repeat(2 * Kind::ALL.len())
    );
    for s in &r.scales {
        let o = ours(sync, s.services);
        let changes: Vec<String> = s.layouts.iter().map(|l| change(l, o)).collect();
        let initial: Vec<String> = s.layouts.iter().map(|l| secs(l.initial)).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            s.services,
            o.map_or("not run".into(), ms),
            changes.join(" | "),
            initial.join(" | ")
        );
    }
    out
}

pub fn plots(
    r: &ProgrammingResult,
    sync: Option<&SyncResult>,
    dir: &Path,
) -> Result<(), PlotError> {
    // A bar needs a figure at every scale; a missing one is drawn as 0.
    let none = Spread::of(&[0.0]);
    let layout = |l: &Layout| {
        if l.change_ms.is_empty() {
            none
        } else {
            Spread::of(&l.change_ms)
        }
    };
    Bars {
        title: "Endpoint change to dataplane updated",
        y_label: "ms (log scale)",
        groups: r
            .scales
            .iter()
            .map(|s| format!("{} Services", s.services))
            .collect(),
        series: std::iter::once((
            "ours (API to maps)",
            r.scales
                .iter()
                .map(|s| ours(sync, s.services).unwrap_or(none))
                .collect(),
        ))
        .chain(Kind::ALL.iter().enumerate().map(|(i, k)| {
            (
                k.label(),
                r.scales.iter().map(|s| layout(&s.layouts[i])).collect(),
            )
        }))
        .collect(),
        log_y: true,
        first_colour: 1,
    }
    .draw(&dir.join(PLOT))
}
